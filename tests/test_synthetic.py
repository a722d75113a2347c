"""Tests of the procedural RGB-D generator: determinism, exact depth, geometry variants, CLI."""
import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from distill.data import synthetic as syn
from distill.data.synthetic import MAX_DEPTH, render_scene, target_for


def _rays(scene):
    """World-frame rays R K^-1 [u, v, 1] (camera z = 1) of every pixel, (3, H, W), and the origin."""
    h, w = scene.depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    cam = np.linalg.inv(scene.intrinsics) @ np.stack([u.ravel(), v.ravel(), np.ones(h * w)])
    return (scene.pose[:3, :3] @ cam).reshape(3, h, w), scene.pose[:3, 3]


def _points(scene):
    """Back-project every pixel's depth to a world point, (3, H, W)."""
    d, o = _rays(scene)
    return o[:, None, None] + d * scene.depth.astype(np.float64)


def test_deterministic_by_seed():
    a, b, c = render_scene(7, 64, 96), render_scene(7, 64, 96), render_scene(8, 64, 96)
    for name in ("image", "depth", "valid", "intrinsics"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.depth, c.depth)


def test_fields_and_conventions():
    s = render_scene(3, 48, 80)
    assert s.image.shape == (48, 80, 3) and s.image.dtype == np.uint8
    assert s.depth.shape == (48, 80) and s.depth.dtype == np.float32
    assert s.valid.shape == (48, 80) and s.valid.dtype == bool
    K = s.intrinsics
    assert K.shape == (3, 3) and K.dtype == np.float64
    assert K[0, 2] == (80 - 1) / 2 and K[1, 2] == (48 - 1) / 2 and K[0, 1] == 0 and K[2, 2] == 1
    hfov = np.degrees(2 * np.arctan(80 / 2 / K[0, 0]))
    assert 45 <= hfov <= 90
    assert np.all(s.depth[s.valid] > 0) and np.all(s.depth[s.valid] <= MAX_DEPTH)
    assert np.all(s.depth[~s.valid] == 0)
    np.testing.assert_allclose(s.pose[:3, :3] @ s.pose[:3, :3].T, np.eye(3), atol=1e-12)
    with pytest.raises(ValueError):
        render_scene(0, kind="moon")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_floor_only_depth_is_the_analytic_plane_intersection(seed):
    s = render_scene(seed, 96, 128, kind="outdoor", num_objects=0)
    d, o = _rays(s)
    with np.errstate(divide="ignore"):
        t = np.where(d[1] < 0, -o[1] / d[1], np.inf)  # ray parameter = planar depth (camera z = 1)
    expect_valid = t <= MAX_DEPTH
    edge = np.abs(t - MAX_DEPTH) < 1e-6  # rounding may go either way exactly at the range limit
    assert np.array_equal(s.valid[~edge], expect_valid[~edge])
    assert (~s.valid).any() and s.valid.any()  # some sky, some ground
    np.testing.assert_allclose(s.depth[s.valid], t[s.valid], rtol=1e-6)
    # no hit (looking at or above the horizon) -> invalid, depth 0
    assert not s.valid[d[1] >= 0].any() and np.all(s.depth[d[1] >= 0] == 0)


def test_empty_room_points_lie_on_its_walls():
    s = render_scene(5, 64, 64, kind="room", num_objects=0)
    assert s.valid.all()
    room = s.primitives[0]
    sdf = room.sdf(*_points(s))
    assert np.abs(sdf).max() < 1e-5 * MAX_DEPTH


@pytest.mark.parametrize("seed,kind", [(10, "room"), (11, "room"), (12, "outdoor"), (13, "outdoor")])
def test_depth_is_exact_nearest_hit(seed, kind):
    """Every valid pixel back-projects onto some primitive's surface, inside none of the others."""
    s = render_scene(seed, 96, 96, kind=kind)
    assert len(s.primitives) > 2
    p = _points(s)[:, s.valid]
    sdf = np.stack([prim.sdf(*p) for prim in s.primitives])
    tol = 1e-4  # metres; the float32 depth rounds by at most ~3e-6 m at 40 m
    assert np.abs(sdf).min(axis=0).max() < tol
    # nearest hit: the point is not inside any solid (the room's sdf is >= 0 inside the room)
    assert sdf.min() > -tol
    # several primitives are visible
    owner = np.abs(sdf).argmin(axis=0)
    assert len(np.unique(owner)) >= 3


def test_screen_space_culling_changes_nothing(monkeypatch):
    culled = render_scene(21, 80, 80)
    monkeypatch.setattr(syn, "_window", lambda *a: (slice(None), slice(None)))
    full = render_scene(21, 80, 80)
    np.testing.assert_array_equal(culled.depth, full.depth)
    np.testing.assert_array_equal(culled.image, full.image)


def test_uts_is_an_exact_scale_of_depth():
    s = render_scene(4, 64, 64)
    target, space = target_for(s, "uts", seed=1)
    assert space == "depth" and target.dtype == np.float32
    ratio = target[s.valid] / s.depth[s.valid]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    assert np.all(target[~s.valid] == 0)
    other, _ = target_for(s, "uts", seed=2)
    assert not np.allclose(other[s.valid] / s.depth[s.valid], ratio[0])
    metric, space = target_for(s, "metric")
    assert space == "depth" and np.array_equal(metric, s.depth)
    with pytest.raises(ValueError):
        target_for(s, "log")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_utss_is_affine_in_inverse_depth(seed):
    s = render_scene(6, 64, 64)
    target, space = target_for(s, "utss", seed=seed)
    assert space == "disparity" and target.dtype == np.float32
    x, y = 1.0 / s.depth[s.valid].astype(np.float64), target[s.valid].astype(np.float64)
    (a, b), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
    assert a > 0 and b >= -1e-6 * np.abs(y).max()
    assert np.abs(a * x + b - y).max() < 1e-5 * np.abs(y).max()
    assert np.all(y > 0) and np.all(target[~s.valid] == 0)


@pytest.mark.parametrize("seed", range(6))
def test_image_looks_like_a_scene_not_noise(seed):
    img = render_scene(seed).image.astype(np.float64)
    assert img.std() > 20  # not flat
    colours = np.unique((img // 16).reshape(-1, 3), axis=0)
    assert len(colours) >= 20  # several distinct colours
    shuffled = np.random.default_rng(0).permutation(img.reshape(-1, 3)).reshape(img.shape)
    def grad(x):
        return np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()
    assert grad(img) < 0.25 * grad(shuffled)  # neighbours are alike: smooth regions and edges


def _read_png(path):
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
        return np.array(im).astype(np.int64)


def test_cli_writes_metric_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert syn.main(["--out", str(out), "--num", "3", "--seed", "5", "--size", "40", "56"]) == 0
    info = yaml.safe_load((out / "dataset.yaml").read_text())
    assert info["space"] == "depth" and info["geometry"] == "metric" and info["depth_scale"] == 0.001
    assert info["name"] and info["format"] and info["num_samples"] == 3
    keys = sorted(f[:-4] for f in os.listdir(out / "rgb"))
    assert keys == [f"scene_{i:06d}" for i in range(3)] and not any("." in k for k in keys)
    for sub in ("rgb", "depth", "intrinsics"):  # nothing half-written left behind
        assert len(os.listdir(out / sub)) == 3
    for key in keys:
        meta = json.loads((out / "intrinsics" / f"{key}.json").read_text())
        scene = render_scene(meta["seed"], 40, 56)
        np.testing.assert_allclose([meta["fx"], meta["fy"], meta["cx"], meta["cy"]],
                                   scene.intrinsics[[0, 1, 0, 1], [0, 1, 2, 2]])
        with Image.open(out / "rgb" / f"{key}.png") as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.array(im), scene.image)
        mm = _read_png(out / "depth" / f"{key}.png")
        assert mm.shape == (40, 56)
        assert np.array_equal(mm > 0, scene.valid)
        err = np.abs(mm * info["depth_scale"] - scene.depth)[scene.valid]
        assert err.max() <= 1e-3


def test_cli_uts_and_utss(tmp_path):
    syn.main(["--out", str(tmp_path / "u"), "--num", "2", "--size", "32", "32", "--geometry", "uts"])
    info = yaml.safe_load((tmp_path / "u" / "dataset.yaml").read_text())
    assert (info["space"], info["geometry"]) == ("depth", "uts")
    meta = json.loads((tmp_path / "u" / "intrinsics" / "scene_000000.json").read_text())
    scene = render_scene(meta["seed"], 32, 32)
    ratio = _read_png(tmp_path / "u" / "depth" / "scene_000000.png")[scene.valid] / scene.depth[scene.valid]
    assert ratio.std() < 0.01 * ratio.mean()  # a constant scale, up to millimetre rounding

    syn.main(["--out", str(tmp_path / "s"), "--num", "2", "--size", "32", "32", "--geometry", "utss"])
    info = yaml.safe_load((tmp_path / "s" / "dataset.yaml").read_text())
    assert (info["space"], info["geometry"]) == ("disparity", "utss")
    disp = np.load(tmp_path / "s" / "depth" / "scene_000000.npy")
    expect, _ = target_for(scene, "utss", meta["seed"])
    assert disp.dtype == np.float32 and np.array_equal(disp, expect)


@pytest.mark.parametrize("argv", [
    ["--num", "2"],  # no --out
    ["--out", "x", "--num", "-1"],
    ["--out", "x", "--num", "2", "--geometry", "log"],
    ["--out", "x", "--num", "two"],
    ["--out", "x", "--num", "2", "--seed", "-1"],
    ["--out", "x", "--num", "2", "--size", "0", "8"],
])
def test_cli_bad_arguments_exit_2(argv, capsys):
    assert syn.main(argv) == 2
    message = capsys.readouterr().err
    assert "error:" in message and message.count("\n") == 1  # one line


def test_module_entry_point(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "distill.data.synthetic", "--out", str(tmp_path),
                          "--num", "1", "--size", "24", "24"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "dataset.yaml").exists() and (tmp_path / "depth" / "scene_000000.png").exists()
    bad = subprocess.run([sys.executable, "-m", "distill.data.synthetic", "--out", str(tmp_path),
                          "--num", "1", "--geometry", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


# ------------------------------------------------------------------------------ photo style
def test_photo_style_is_deterministic_and_differs_from_render():
    a, b = render_scene(4, 48, 64, style="photo"), render_scene(4, 48, 64, style="photo")
    for name in ("image", "depth", "valid", "intrinsics", "pose"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    r = render_scene(4, 48, 64, kind=a.kind, style="render")
    assert np.abs(a.image.astype(int) - r.image.astype(int)).mean() > 10  # another image domain
    with pytest.raises(ValueError, match="style"):
        render_scene(0, style="painting")
    with pytest.raises(ValueError, match="photo split"):
        render_scene(0, style="photo", photos="val")


@pytest.mark.parametrize("seed", [0, 5])
def test_photo_style_depth_is_exact_nearest_hit(seed):
    s = render_scene(seed, 40, 56, style="photo")
    d, o = _rays(s)
    t = np.full(s.depth.shape, np.inf)
    for prim in s.primitives:
        t = np.minimum(t, prim.intersect(tuple(o), tuple(d)))
    ok = s.valid & (t <= MAX_DEPTH)
    np.testing.assert_allclose(s.depth[ok], t[ok], rtol=1e-5)


def test_photo_splits_are_disjoint_and_test_scenes_use_only_test_photos(monkeypatch):
    train, test = syn.photo_names("train"), syn.photo_names("test")
    assert train and test and not set(train) & set(test)
    assert sorted(train + test) == sorted(syn.photo_names("all"))
    used = []
    real = syn._load_photo
    monkeypatch.setattr(syn, "_load_photo", lambda name: used.append(name) or real(name))
    for seed in range(4):
        render_scene(seed, 24, 32, style="photo", photos="test")
    assert used and set(used) <= set(test)
    used.clear()
    for seed in range(4):
        render_scene(seed, 24, 32, style="photo", photos="train")
    assert used and set(used) <= set(train)


def test_cli_photo_style(tmp_path):
    out = tmp_path / "p"
    assert syn.main(["--out", str(out), "--num", "2", "--seed", "3", "--size", "32", "40",
                     "--style", "photo", "--photos", "test"]) == 0
    info = yaml.safe_load((out / "dataset.yaml").read_text())
    assert info["style"] == "photo" and info["photos"] == syn.photo_names("test")
    meta = json.loads((out / "intrinsics" / "scene_000001.json").read_text())
    with Image.open(out / "rgb" / "scene_000001.png") as im:
        np.testing.assert_array_equal(np.array(im), render_scene(meta["seed"], 32, 40, style="photo",
                                                                 photos="test").image)
    assert syn.main(["--out", str(out), "--num", "2", "--style", "oil"]) == 2
