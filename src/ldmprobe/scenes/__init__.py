"""The known-answer world's scenes: sampled from a seed, ray-cast in numpy, every map exact.

A scene is 1-3 objects (spheres, cubes, cylinders) in distinct saturated colours standing on a
warm grey ground plane under a pale sky, seen by a pinhole camera with a small pitch/height
jitter and lit by one directional light plus ambient light, with cast shadows. One ray per pixel
(no anti-aliasing), so every pixel belongs to exactly one surface and the foreground mask is
exact from the image by the palette rule (`palette_mask`): object colours are saturated, ground
and sky are not, and a scalar shading leaves saturation unchanged.

Coordinates: camera frame, metres. x to the right, y up, z forward along the ground; the camera
stands at (0, height, 0) and looks along +z, pitched down. Objects rest on the plane y = 0.

The package also holds the blob fit of a labeler's map to scenes (``fit``) and the world's
labeler and classifier networks (``nets``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (230, 200, 20),
    "green": (30, 180, 40),
    "cyan": (20, 190, 200),
    "blue": (30, 60, 220),
    "magenta": (200, 40, 200),
}
SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder")
# Unit vectors towards the light. "left"/"right" come slightly from the camera's side so the
# faces it sees are lit; "front" is behind the camera (shadows fall away from it); "above" is
# steep and slightly from behind the objects (short shadows towards the camera).
LIGHTS: dict[str, tuple[float, float, float]] = {
    "left": (-0.70, 0.60, -0.35),
    "right": (0.70, 0.60, -0.35),
    "front": (0.0, 0.60, -0.80),
    "above": (0.0, 0.94, 0.34),
}
AMBIENT = 0.35  # shading = AMBIENT + (1 - AMBIENT) * max(n.l, 0) * visible; sky: 1
GROUND_ALBEDO = (0.56, 0.53, 0.49)
SKY_HORIZON = (0.80, 0.85, 0.92)
SKY_ZENITH = (0.62, 0.72, 0.90)
FAR = 30.0  # depth of the sky, and the cap of the ground's depth near the horizon
# Saturation (max - min) / max of the palette is >= 0.83, of ground and sky <= 0.32; a shading
# multiplies all channels alike, so the rule holds in shadow too.
SATURATION_THRESHOLD = 0.55

CAMERA_HEIGHT = 1.5
CAMERA_PITCH_DEG = 12.0
FIELD_OF_VIEW_DEG = 50.0
JITTER_PITCH_DEG = 2.0
JITTER_HEIGHT = 0.1
DEPTH_RANGE = (3.0, 6.0)
SIZE_RANGE = (0.3, 0.6)
# Objects' footprints stay inside this fraction of the half-width visible at their depth.
LATERAL_FRACTION = 0.9
MAX_OVERLAP = 0.3  # of the narrower object's width in the image
MAX_OBJECTS = 3
_EPS = 1e-4


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    x: float  # position on the ground plane (camera frame, metres)
    z: float
    size: float  # radius (sphere, cylinder) or half-extent (cube); cylinders are 2*size tall


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # 1-3 of distinct colours (a fitted scene: up to 6, any)
    light: str  # a key of LIGHTS
    camera_jitter: tuple[float, float]  # (pitch offset in degrees, height offset in metres)


@dataclass
class Render:
    image: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W], metres along the view ray (sky: FAR)
    mask: np.ndarray  # bool [H, W], object pixels
    shading: np.ndarray  # float32 [H, W], diffuse shading incl. cast shadows
    albedo: np.ndarray  # float32 [H, W, 3]
    object_index: np.ndarray  # int8 [H, W], -1 = ground/sky, else index into scene.objects


def _footprint(obj_size: float) -> float:
    """Radius of the object's footprint on the plane (a cube's half-diagonal)."""
    return obj_size * np.sqrt(2.0)


def sample_scene(rng: np.random.Generator) -> Scene:
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    colours = rng.choice(len(PALETTE), size=count, replace=False)
    half_width = np.tan(np.radians(FIELD_OF_VIEW_DEG) / 2)
    objects: list[SceneObject] = []
    tries = 0
    while len(objects) < count:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = float(rng.uniform(*SIZE_RANGE))
        z = float(rng.uniform(*DEPTH_RANGE))
        x = float(rng.uniform(-1, 1) * (LATERAL_FRACTION * half_width * z - _footprint(size)))
        tries += 1
        if all(_apart(SceneObject(shape, "", x, z, size), o) for o in objects):
            colour = list(PALETTE)[int(colours[len(objects)])]
            objects.append(SceneObject(shape, colour, x, z, size))
        elif tries % 50 == 0:  # crowded: settle for fewer objects (still seeded)
            count -= 1
    light = list(LIGHTS)[int(rng.integers(len(LIGHTS)))]
    jitter = (
        float(rng.uniform(-JITTER_PITCH_DEG, JITTER_PITCH_DEG)),
        float(rng.uniform(-JITTER_HEIGHT, JITTER_HEIGHT)),
    )
    return Scene(tuple(objects), light, jitter)


def _apart(a: SceneObject, b: SceneObject) -> bool:
    """Footprints clear of each other on the plane, and at most partial occlusion in the image:
    their horizontal view angles overlap by less than MAX_OVERLAP of the narrower one."""
    if np.hypot(a.x - b.x, a.z - b.z) <= 1.1 * (_footprint(a.size) + _footprint(b.size)):
        return False
    half_a, half_b = _footprint(a.size) / a.z, _footprint(b.size) / b.z
    gap = abs(a.x / a.z - b.x / b.z) - half_a - half_b
    return -gap < MAX_OVERLAP * 2 * min(half_a, half_b)


def caption(scene: Scene) -> str:
    """Objects named left to right: "a red sphere left of a blue cube, light from the right"."""
    names = [f"a {o.colour} {o.shape}" for o in sorted(scene.objects, key=lambda o: o.x)]
    if len(names) == 1:
        things = names[0]
    elif len(names) == 2:
        things = f"{names[0]} left of {names[1]}"
    else:
        things = f"{', '.join(names[:-1])} and {names[-1]} from left to right"
    return f"{things}, light from {'above' if scene.light == 'above' else 'the ' + scene.light}"


def camera_rays(size: int, camera_jitter: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Origin [3] and unit directions [size, size, 3] through the pixel centres."""
    pitch = np.radians(CAMERA_PITCH_DEG + camera_jitter[0])
    origin = np.array([0.0, CAMERA_HEIGHT + camera_jitter[1], 0.0])
    half = np.tan(np.radians(FIELD_OF_VIEW_DEG) / 2)
    coords = ((np.arange(size) + 0.5) / size * 2 - 1) * half
    v, u = np.meshgrid(coords, coords, indexing="ij")  # v grows downwards
    forward = np.array([0.0, -np.sin(pitch), np.cos(pitch)])
    up = np.array([0.0, np.cos(pitch), np.sin(pitch)])
    right = np.array([1.0, 0.0, 0.0])
    d = u[..., None] * right + (-v)[..., None] * up + forward
    return origin, d / np.linalg.norm(d, axis=-1, keepdims=True)


def intersect(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit distance [N] (inf on a miss) and unit normal [N, 3] of rays o + t d."""
    s = obj.size
    n = len(d)
    normal = np.zeros((n, 3))
    if obj.shape == "sphere":
        oc = o - np.array([obj.x, s, obj.z])
        b = np.einsum("ij,ij->i", oc, d)
        disc = b**2 - (np.einsum("ij,ij->i", oc, oc) - s**2)
        t = -b - np.sqrt(np.maximum(disc, 0))
        t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
        hit = np.isfinite(t)
        normal[hit] = (o[hit] + t[hit, None] * d[hit] - [obj.x, s, obj.z]) / s
        return t, normal
    if obj.shape == "cube":
        lo = np.array([obj.x - s, 0.0, obj.z - s])
        hi = np.array([obj.x + s, 2 * s, obj.z + s])
        safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1, t2 = (lo - o) / safe, (hi - o) / safe
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near, t_far = near.max(axis=1), far.min(axis=1)
        t = np.where((t_far >= t_near) & (t_near > _EPS), t_near, np.inf)
        hit = np.isfinite(t)
        axis = near.argmax(axis=1)
        normal[hit, axis[hit]] = -np.sign(d[hit, axis[hit]])
        return t, normal
    if obj.shape == "cylinder":
        ox, oz = o[:, 0] - obj.x, o[:, 2] - obj.z
        a = d[:, 0] ** 2 + d[:, 2] ** 2
        b = ox * d[:, 0] + oz * d[:, 2]
        disc = b**2 - a * (ox**2 + oz**2 - s**2)
        safe_a = np.where(a < 1e-12, 1e-12, a)
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / safe_a
        y_side = o[:, 1] + t_side * d[:, 1]
        t_side = np.where(
            (disc >= 0) & (a > 1e-12) & (t_side > _EPS) & (y_side >= 0) & (y_side <= 2 * s),
            t_side,
            np.inf,
        )
        safe_dy = np.where(np.abs(d[:, 1]) < 1e-12, 1e-12, d[:, 1])
        t_cap = (2 * s - o[:, 1]) / safe_dy
        cx, cz = ox + t_cap * d[:, 0], oz + t_cap * d[:, 2]
        t_cap = np.where((t_cap > _EPS) & (cx**2 + cz**2 <= s**2), t_cap, np.inf)
        t = np.minimum(t_side, t_cap)
        side = np.isfinite(t_side) & (t_side <= t_cap)
        cap = np.isfinite(t_cap) & (t_cap < t_side)
        p = o[side] + t_side[side, None] * d[side]
        normal[side, 0], normal[side, 2] = (p[:, 0] - obj.x) / s, (p[:, 2] - obj.z) / s
        normal[cap, 1] = 1.0
        return t, normal
    raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def render(scene: Scene, size: int) -> Render:
    return render_lights(scene, size, (scene.light,))[scene.light]


def render_lights(scene: Scene, size: int, lights: tuple[str, ...]) -> dict[str, Render]:
    """The scene under each of ``lights`` (``scene.light`` is ignored): the camera rays and
    surfaces are found once, the shading and shadows once per light."""
    origin, dirs = camera_rays(size, scene.camera_jitter)
    d = dirs.reshape(-1, 3)
    n = len(d)
    o = np.broadcast_to(origin, (n, 3))

    t_ground = np.where(d[:, 1] < -1e-9, -origin[1] / np.minimum(d[:, 1], -1e-9), np.inf)
    best_t = t_ground.copy()
    index = np.full(n, -1, dtype=np.int8)
    normal = np.tile([0.0, 1.0, 0.0], (n, 1))
    for i, obj in enumerate(scene.objects):
        t, nrm = intersect(obj, o, d)
        closer = t < best_t
        best_t[closer], index[closer], normal[closer] = t[closer], i, nrm[closer]

    sky = ~np.isfinite(best_t)
    surface = ~sky
    albedo = np.empty((n, 3))
    elevation = np.clip(d[:, 1], 0, 1)[:, None]
    albedo[sky] = ((1 - elevation) * SKY_HORIZON + elevation * SKY_ZENITH)[sky]
    albedo[(index == -1) & surface] = GROUND_ALBEDO
    colours = np.array([PALETTE[obj.colour] for obj in scene.objects], dtype=float).reshape(-1, 3)
    albedo[index >= 0] = colours[index[index >= 0]] / 255
    depth = np.minimum(np.where(sky, FAR, best_t), FAR)
    shape = (size, size)
    points = o[surface] + best_t[surface, None] * d[surface]
    shadow_origin = points + normal[surface] * 1e-3

    renders = {}
    for name in lights:
        light = np.array(LIGHTS[name])
        light = light / np.linalg.norm(light)
        lit = np.ones(len(points), dtype=bool)
        shadow_dir = np.broadcast_to(light, shadow_origin.shape)
        for obj in scene.objects:
            t, _ = intersect(obj, shadow_origin, shadow_dir)
            lit &= ~np.isfinite(t)
        shading = np.ones(n)
        lambert = np.clip(normal[surface] @ light, 0, None)
        shading[surface] = AMBIENT + (1 - AMBIENT) * lambert * lit
        image = np.round(np.clip(albedo * shading[:, None], 0, 1) * 255).astype(np.uint8)
        renders[name] = Render(
            image=image.reshape(*shape, 3),
            depth=depth.reshape(shape).astype(np.float32),
            mask=(index >= 0).reshape(shape),
            shading=shading.reshape(shape).astype(np.float32),
            albedo=albedo.reshape(*shape, 3).astype(np.float32),
            object_index=index.reshape(shape),
        )
    return renders


def palette_mask(image: np.ndarray) -> np.ndarray:
    """Foreground by the world's palette rule: saturated pixels are objects. [..., 3] -> bool."""
    rgb = image.astype(np.float32)
    top = rgb.max(axis=-1)
    return (top - rgb.min(axis=-1)) > SATURATION_THRESHOLD * np.maximum(top, 1.0)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """Scene `index` of a data set depends only on (seed, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def render_dataset(
    seed: int, count: int, size: int, processes: int = 1
) -> tuple[list[Scene], dict[str, np.ndarray]]:
    """Scenes and stacked arrays {"image": [n,H,W,3] uint8, "depth", "mask", "shading",
    "albedo", "object_index"}; deterministic from (seed, count, size); scene i depends only on
    (seed, i), so a larger count extends a smaller one, and ``processes`` > 1 (worker
    processes rendering consecutive chunks) gives the same arrays."""
    scenes = [sample_scene(scene_rng(seed, i)) for i in range(count)]
    processes = max(1, min(processes, count // 256))
    if processes > 1:
        import multiprocessing

        chunks = [scenes[i::processes] for i in range(processes)]
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.starmap(_render_all, [(chunk, size) for chunk in chunks])
        # chunk j holds scenes j, j + processes, ...: interleave back into scene order
        renders = [parts[i % processes][i // processes] for i in range(count)]
    else:
        renders = _render_all(scenes, size)
    fields = ("image", "depth", "mask", "shading", "albedo", "object_index")
    return scenes, {f: np.stack([getattr(r, f) for r in renders]) for f in fields}


def _render_all(scene_list: list[Scene], size: int) -> list[Render]:
    return [render(scene, size) for scene in scene_list]


SPEC_FILE = "world.json"


def world_spec() -> dict:
    """The constants that define this world's images: what an exact labeler must agree on."""
    return {
        "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
        "shapes": list(SHAPES),
        "lights": {name: list(v) for name, v in LIGHTS.items()},
        "ambient": AMBIENT,
        "ground_albedo": list(GROUND_ALBEDO),
        "sky": [list(SKY_HORIZON), list(SKY_ZENITH)],
        "far": FAR,
        "saturation_threshold": SATURATION_THRESHOLD,
        "camera": {
            "height": CAMERA_HEIGHT,
            "pitch_deg": CAMERA_PITCH_DEG,
            "field_of_view_deg": FIELD_OF_VIEW_DEG,
            "jitter_pitch_deg": JITTER_PITCH_DEG,
            "jitter_height": JITTER_HEIGHT,
        },
        "objects": {
            "max": MAX_OBJECTS,
            "depth_range": list(DEPTH_RANGE),
            "size_range": list(SIZE_RANGE),
            "lateral_fraction": LATERAL_FRACTION,
            "max_overlap": MAX_OVERLAP,
        },
    }
