"""The world's renderer: every map exact, checked against the geometry it claims."""

from __future__ import annotations

import numpy as np
import pytest

from ldmprobe.scenes import (
    AMBIENT,
    CAMERA_HEIGHT,
    FAR,
    LIGHTS,
    PALETTE,
    SHAPES,
    Scene,
    SceneObject,
    camera_rays,
    caption,
    palette_mask,
    render,
    render_dataset,
)

SIZE = 48


@pytest.fixture(scope="module")
def dataset():
    return render_dataset(seed=3, count=24, size=SIZE)


def test_deterministic_and_extends(dataset):
    scenes, arrays = dataset
    again_scenes, again = render_dataset(seed=3, count=24, size=SIZE)
    assert scenes == again_scenes
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, again[key])
    fewer_scenes, fewer = render_dataset(seed=3, count=5, size=SIZE)
    assert fewer_scenes == scenes[:5]
    np.testing.assert_array_equal(fewer["depth"], arrays["depth"][:5])
    other, _ = render_dataset(seed=4, count=5, size=SIZE)
    assert other != scenes[:5]


def test_shapes_and_types(dataset):
    scenes, a = dataset
    n = len(scenes)
    assert a["image"].shape == (n, SIZE, SIZE, 3) and a["image"].dtype == np.uint8
    assert a["albedo"].shape == (n, SIZE, SIZE, 3) and a["albedo"].dtype == np.float32
    for key, dtype in [("depth", np.float32), ("shading", np.float32), ("mask", bool)]:
        assert a[key].shape == (n, SIZE, SIZE) and a[key].dtype == dtype
    assert a["object_index"].dtype == np.int8
    for scene in scenes:
        assert 1 <= len(scene.objects) <= 3
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        assert {o.shape for o in scene.objects} <= set(SHAPES)
        assert scene.light in LIGHTS


def test_every_object_visible_and_mask_consistent(dataset):
    scenes, a = dataset
    np.testing.assert_array_equal(a["mask"], a["object_index"] >= 0)
    for i, scene in enumerate(scenes):
        seen = set(np.unique(a["object_index"][i])) - {-1}
        assert seen == set(range(len(scene.objects)))
    # Objects are nearer than FAR; only sky and the far ground reach it.
    assert (a["depth"][a["mask"]] < FAR).all()
    assert (a["depth"] > 0).all() and (a["depth"] <= FAR).all()


def test_palette_rule_gives_the_exact_mask(dataset):
    _, a = dataset
    np.testing.assert_array_equal(palette_mask(a["image"]), a["mask"])


def test_image_is_albedo_times_shading(dataset):
    _, a = dataset
    expected = np.round(np.clip(a["albedo"] * a["shading"][..., None], 0, 1) * 255)
    np.testing.assert_allclose(a["image"], expected, atol=1)
    assert a["shading"].min() >= AMBIENT - 1e-6 and a["shading"].max() <= 1 + 1e-6
    object_albedo = np.round(a["albedo"][a["mask"]] * 255).astype(int)
    assert {tuple(rgb) for rgb in object_albedo} <= set(PALETTE.values())


def _points(scene: Scene, depth: np.ndarray) -> np.ndarray:
    origin, dirs = camera_rays(depth.shape[0], scene.camera_jitter)
    return origin + depth[..., None] * dirs


def test_depth_is_distance_to_the_surface_hit():
    sphere = SceneObject("sphere", "red", x=-0.6, z=4.0, size=0.5)
    cube = SceneObject("cube", "blue", x=0.8, z=4.5, size=0.4)
    scene = Scene((sphere, cube), "left", (1.0, -0.05))
    r = render(scene, 64)
    p = _points(scene, r.depth.astype(np.float64))
    ground = (~r.mask) & (r.depth < FAR)
    np.testing.assert_allclose(p[ground][:, 1], 0, atol=1e-4)
    on_sphere = p[r.object_index == 0] - [sphere.x, sphere.size, sphere.z]
    np.testing.assert_allclose(np.linalg.norm(on_sphere, axis=1), sphere.size, atol=1e-4)
    on_cube = np.abs(p[r.object_index == 1] - [cube.x, cube.size, cube.z])
    assert (on_cube.max(axis=1) < cube.size + 1e-4).all()
    np.testing.assert_allclose(on_cube.max(axis=1), cube.size, atol=1e-4)
    # The bottom row sees the ground in front of the camera, farther than the camera is high.
    assert r.depth[-1, 32] > CAMERA_HEIGHT - 0.05


def test_shadows_fall_where_the_light_says():
    cylinder = SceneObject("cylinder", "green", x=0.0, z=4.0, size=0.5)
    columns = np.arange(64)
    dark_ground = {}
    for light in LIGHTS:
        r = render(Scene((cylinder,), light, (0.0, 0.0)), 64)
        ground = (~r.mask) & (r.depth < FAR)
        flat = r.shading[ground].max()  # unshadowed ground: one value for a directional light
        shadow = ground & (r.shading < flat - 1e-3)
        np.testing.assert_allclose(r.shading[shadow], AMBIENT, atol=1e-6)
        dark_ground[light] = shadow
    left, right = dark_ground["left"], dark_ground["right"]
    assert left.sum() > 20 and right.sum() > 20
    # Light from the left casts the shadow to the right of the object, and vice versa.
    centre = np.where(render(Scene((cylinder,), "left", (0.0, 0.0)), 64).mask)[1].mean()
    assert (columns[np.where(left)[1]] > centre).mean() > 0.9
    assert (columns[np.where(right)[1]] < centre).mean() > 0.9
    # No object, no shadow.
    empty = render(Scene((), "left", (0.0, 0.0)), 64)
    ground = empty.depth < FAR
    assert np.ptp(empty.shading[ground]) < 1e-6


def test_captions_name_the_objects_left_to_right():
    a = SceneObject("sphere", "red", x=-1.0, z=4.0, size=0.4)
    b = SceneObject("cube", "blue", x=1.0, z=4.0, size=0.4)
    c = SceneObject("cylinder", "green", x=0.0, z=5.0, size=0.4)
    assert caption(Scene((b, a), "right", (0, 0))) == (
        "a red sphere left of a blue cube, light from the right"
    )
    assert caption(Scene((a,), "above", (0, 0))) == "a red sphere, light from above"
    assert caption(Scene((b, c, a), "front", (0, 0))) == (
        "a red sphere, a green cylinder and a blue cube from left to right, light from the front"
    )


def test_captions_follow_the_sampled_scenes(dataset):
    scenes, _ = dataset
    for scene in scenes:
        text = caption(scene)
        for obj in scene.objects:
            assert f"{obj.colour} {obj.shape}" in text
    assert len({caption(s) for s in scenes}) > len(scenes) // 2


def test_rendering_in_worker_processes_gives_the_same_arrays():
    # 512 scenes: two workers (one per 256 scenes), each rendering every other scene.
    from ldmprobe.scenes import render_dataset

    one_scenes, one = render_dataset(3, 512, 16)
    two_scenes, two = render_dataset(3, 512, 16, processes=2)
    assert one_scenes == two_scenes
    assert one.keys() == two.keys()
    for field in one:
        np.testing.assert_array_equal(one[field], two[field], err_msg=field)
