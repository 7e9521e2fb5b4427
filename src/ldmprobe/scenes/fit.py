"""Exact labels of a generated image (route (a)): the scene it shows, fitted and re-rendered.

A sample from Gaussian noise shows some scene, not necessarily its caption's. Its labels are
obtained from the image alone:

- the foreground mask is exact from the image by the palette rule (``scenes.palette_mask``);
- each connected blob of a palette colour is one object (a rendered scene's colours are
  distinct, but a model may draw a colour twice; ``blobs``). Its pixels fix the object: the
  camera pitch comes from the horizon row, the position on the plane from the blob's lowest
  row and centre column, the size from its width. Each shape is fitted by a few
  fixed-point steps that move and scale the object until its rendered silhouette has the blob's
  lowest row, centre and width; the shape whose silhouette best overlaps the blob wins, and
  the light is the one whose re-render is nearest the image;
- depth and shading are re-rendered from the fitted scene.

The fit's faithfulness is the re-render against the image: mask IoU and PSNR. A fit fails when
the image has no object, more blobs than ``MAX_FIT_OBJECTS``, or falls below the thresholds; the
failure says why, and the image gets no depth or shading label (it is excluded from those tasks,
never kept with a guess). Its saliency label needs no fit: the palette mask is exact on any
image (``label_kept`` decides, for the labeler and the faithfulness table alike). The
camera height is not identifiable from one image (a scene scaled about the camera looks the
same); the nominal height is used, so depths carry at most the jitter's scale error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.metrics import iou, psnr
from . import (
    CAMERA_HEIGHT,
    CAMERA_PITCH_DEG,
    FIELD_OF_VIEW_DEG,
    JITTER_PITCH_DEG,
    LIGHTS,
    MAX_OBJECTS,
    PALETTE,
    SHAPES,
    Render,
    Scene,
    SceneObject,
    camera_rays,
    intersect,
    palette_mask,
    render_lights,
)

MIN_IOU = 0.7
MIN_PSNR = 20.0
# A colour counts as an object from this share of the image's pixels (smaller specks are
# blending fringes; they stay in the mask and so in the IoU).
MIN_BLOB_FRACTION = 0.002
FIT_ITERATIONS = 6
# A rendered scene holds 1-3 objects of distinct colours, but a model's sample may draw more, or
# one colour twice: up to twice a scene's objects are fitted (each judged by the re-render's
# faithfulness); more blobs than that are no scene of this world.
MAX_FIT_OBJECTS = 2 * MAX_OBJECTS


@dataclass
class Fit:
    mask: np.ndarray  # bool [H, W]: the palette mask of the image (the exact saliency label)
    scene: Scene | None
    render: Render | None  # the fitted scene's re-render: depth and shading labels
    iou: float  # re-render's mask vs the image's palette mask
    psnr: float  # re-render vs the image, dB
    failure: str | None  # why the image gets no label; None when the fit holds

    @property
    def ok(self) -> bool:
        return self.failure is None


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of RGB values [..., 3]."""
    r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
    return np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360


PALETTE_HUES = _hue(np.array(list(PALETTE.values())))


def colour_index(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per pixel: index into PALETTE of the nearest hue where ``mask``, else -1. int [H, W]."""
    gap = np.abs(_hue(image)[..., None] - PALETTE_HUES)
    nearest = np.minimum(gap, 360 - gap).argmin(axis=-1)
    return np.where(mask, nearest, -1)


def horizon_pitch(image: np.ndarray, mask: np.ndarray) -> float:
    """Camera pitch jitter (degrees) from the horizon: the sky is bluer than red, the ground is
    not; the count of sky rows over the background gives the horizon's row edge."""
    size = image.shape[0]
    rgb = image.astype(np.float64)
    sky = (rgb[..., 2] > rgb[..., 0]) & ~mask
    background = (~mask).sum(axis=1)
    share = np.where(background > 0, sky.sum(axis=1) / np.maximum(background, 1), 0.0)
    rows = float(share.sum())
    if rows <= 0:
        return 0.0
    half = np.tan(np.radians(FIELD_OF_VIEW_DEG) / 2)
    v_edge = (rows / size * 2 - 1) * half
    pitch = np.degrees(np.arctan(-v_edge)) - CAMERA_PITCH_DEG
    bound = JITTER_PITCH_DEG + 1
    return float(np.clip(pitch, -bound, bound))


def _ground_point(row_edge: float, col: float, size: int, jitter: tuple[float, float]):
    """(x, z) where the ray through image point (row_edge, col), in pixel-edge units, meets
    the ground; None above the horizon."""
    pitch = np.radians(CAMERA_PITCH_DEG + jitter[0])
    half = np.tan(np.radians(FIELD_OF_VIEW_DEG) / 2)
    v = (row_edge / size * 2 - 1) * half
    u = (col / size * 2 - 1) * half
    d = np.array([u, -v * np.cos(pitch) - np.sin(pitch), -v * np.sin(pitch) + np.cos(pitch)])
    if d[1] >= -1e-6:
        return None
    t = (CAMERA_HEIGHT + jitter[1]) / -d[1]
    return t * d[0], t * d[2]


def _extent(pixels: np.ndarray):
    """(bottom row edge, centre column of the bottom rows, width) of a boolean [H, W] blob."""
    rows, cols = np.nonzero(pixels)
    bottom = rows.max()
    low = cols[rows >= bottom - 1]
    return bottom + 1.0, (low.min() + low.max() + 1) / 2.0, float(cols.max() - cols.min() + 1)


def blobs(colours: np.ndarray, min_pixels: float) -> list[tuple[int, np.ndarray]]:
    """The objects an image shows: each connected region (8-neighbour) of one palette colour
    with at least ``min_pixels`` pixels, as (palette index, bool mask [H, W]), in palette order.
    A rendered scene never repeats a colour, but a model's sample can (two green boxes): each
    region is one object, so a repeated colour is fitted as the objects it draws."""
    from scipy import ndimage

    found = []
    for index in np.unique(colours[colours >= 0]):
        regions, count = ndimage.label(colours == index, structure=np.ones((3, 3), bool))
        sizes = np.bincount(regions.ravel(), minlength=count + 1)
        for k in np.argsort(-sizes[1:], kind="stable") + 1:
            if sizes[k] >= min_pixels:
                found.append((int(index), regions == k))
    return found


def fit_object(
    blob: np.ndarray, others: np.ndarray, colour: str, rays, jitter
) -> tuple[SceneObject, float]:
    """The best shape and placement of one colour blob, and its silhouette IoU (pixels of
    other blobs, which may hide this object, are left out of the comparison). Silhouettes are
    cast only through a window around the blob, twice its size."""
    size = blob.shape[0]
    origin, dirs = rays
    bottom, centre, width = _extent(blob)
    ground = _ground_point(bottom, centre, size, jitter)
    if ground is None:
        return SceneObject(SHAPES[0], colour, 0.0, 1.0, 0.1), 0.0
    rows, cols = np.nonzero(blob)
    pad = max(np.ptp(rows), np.ptp(cols)) // 2 + 2
    r0, c0 = max(rows.min() - pad, 0), max(cols.min() - pad, 0)
    window = (slice(r0, rows.max() + pad + 1), slice(c0, cols.max() + pad + 1))
    blob, others = blob[window], others[window]
    flat = dirs[window].reshape(-1, 3)
    o = np.broadcast_to(origin, flat.shape)
    pixel = 2 * np.tan(np.radians(FIELD_OF_VIEW_DEG) / 2) / size
    best, best_iou = None, -1.0
    for shape in SHAPES:
        radius = max(0.5 * width * pixel * ground[1], 0.02)
        x, z = ground[0], ground[1] + radius
        for _ in range(FIT_ITERATIONS):
            candidate = SceneObject(shape, colour, x, z, radius)
            seen = np.isfinite(intersect(candidate, o, flat)[0]).reshape(blob.shape)
            if not seen.any():
                break
            c_bottom, c_centre, c_width = _extent(seen)
            c_ground = _ground_point(c_bottom + r0, c_centre + c0, size, jitter)
            if c_ground is None:
                break
            x += ground[0] - c_ground[0]
            z = max(z + ground[1] - c_ground[1], radius + 0.1)
            radius = float(np.clip(radius * width / c_width, 0.02, 3.0))
        candidate = SceneObject(shape, colour, float(x), float(z), float(radius))
        seen = np.isfinite(intersect(candidate, o, flat)[0]).reshape(blob.shape) & ~others
        overlap = iou(seen, blob)  # the blob is never empty
        if overlap > best_iou:
            best, best_iou = candidate, overlap
    return best, best_iou


# The tasks whose exact label is read off the image by the palette rule, with no fit.
FIT_FREE_TASKS = frozenset({"saliency"})


def label_kept(
    task: str, fit: Fit | None, min_iou: float = MIN_IOU, min_psnr: float = MIN_PSNR
) -> bool:
    """Whether the image ``fit`` was made of has an exact ``task`` label (the ``world``
    labeler's rule, written once): saliency, the palette mask, on any image and with no fit;
    depth and shading only when the fit found a scene whose re-render reaches ``min_iou`` and
    ``min_psnr``. ``fit`` None means no fit was made, so ``not label_kept(task, None)`` says
    that the task's label needs the fit."""
    if task in FIT_FREE_TASKS:
        return True
    return fit is not None and fit.scene is not None and fit.iou >= min_iou and fit.psnr >= min_psnr


def fit_scene(
    image: np.ndarray,
    min_iou: float = MIN_IOU,
    min_psnr: float = MIN_PSNR,
    min_blob_fraction: float = MIN_BLOB_FRACTION,
) -> Fit:
    """The scene a square uint8 RGB image [H, H, 3] shows, re-rendered, or why it fails."""
    size = image.shape[0]
    if image.shape != (size, size, 3):
        raise ValueError(f"fit_scene needs a square RGB image, got shape {image.shape}")
    mask = palette_mask(image)
    colours = colour_index(image, mask)
    found = blobs(colours, min_blob_fraction * size * size)
    if not found:
        return Fit(mask, None, None, 0.0, 0.0, "no object: no palette colour covers the image")
    if len(found) > MAX_FIT_OBJECTS:
        return Fit(
            mask,
            None,
            None,
            0.0,
            0.0,
            f"{len(found)} object blobs, a fit holds at most {MAX_FIT_OBJECTS}",
        )
    jitter = (horizon_pitch(image, mask), 0.0)
    rays = camera_rays(size, jitter)
    names = list(PALETTE)
    objects = []
    for index, blob in found:
        others = mask & ~blob
        obj, _ = fit_object(blob, others, names[index], rays, jitter)
        objects.append(obj)
    # Every light is tried on the fitted objects; the scene's own light is the nearest re-render.
    unlit = Scene(tuple(objects), next(iter(LIGHTS)), jitter)
    renders = render_lights(unlit, size, tuple(LIGHTS))
    light = max(renders, key=lambda name: psnr(renders[name].image, image))
    best = renders[light]
    overlap = iou(best.mask, mask)
    quality = psnr(best.image, image)
    failure = None
    if overlap < min_iou:
        failure = f"mask IoU {overlap:.2f} < {min_iou}"
    elif quality < min_psnr:
        failure = f"PSNR {quality:.1f} dB < {min_psnr}"
    return Fit(mask, Scene(tuple(objects), light, jitter), best, overlap, quality, failure)


def save_world_spec(out_dir) -> None:
    """The exact labeler's model folder: this world's definition (``scenes.world_spec``)."""
    from ..core.io import atomic_directory, write_json
    from . import SPEC_FILE, world_spec

    with atomic_directory(out_dir) as tmp:
        write_json(tmp / SPEC_FILE, world_spec())
