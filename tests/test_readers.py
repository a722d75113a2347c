"""Decoders (distill.data.formats) and dataset readers (distill.data.readers) on tiny fixtures
written in each dataset's real on-disk format."""
import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from distill.data import formats as F
from distill.data import readers as R
from distill.data.sample import Sample, SampleError

H, W = 8, 12
NYU_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyu2_sample"


# ------------------------------------------------------------------------------------- helpers
def rgb(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_rgb(path, seed=0, h=H, w=W):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb(seed, h, w)).save(path, quality=95)
    return path


def save_png16(path, values):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)  # PIL mode I;16
    return path


def mkparent(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def depth_map(fill, **pixels):
    """[H, W] float32 filled with ``fill``; ``pixels`` like p00=0 set (row, col) = value."""
    d = np.full((H, W), fill, np.float32)
    for name, v in pixels.items():
        d[int(name[1]), int(name[2])] = v
    return d


def check(sample, space, geometry, dataset):
    assert isinstance(sample, Sample)
    assert sample.image.dtype == np.uint8 and sample.image.shape == (H, W, 3)
    assert sample.target.dtype == np.float32 and sample.target.shape == (H, W)
    assert (sample.space, sample.geometry, sample.dataset) == (space, geometry, dataset)
    assert "." not in sample.key and "/" not in sample.key
    return sample


def cv2_has_exr(tmp_path):
    import cv2

    try:
        return bool(cv2.imwrite(str(tmp_path / "probe.exr"), np.ones((2, 2), np.float32)))
    except cv2.error:
        return False


# ----------------------------------------------------------------------------------- read_rgb
@pytest.mark.parametrize("mode,ext", [("L", "png"), ("LA", "png"), ("P", "png"), ("RGBA", "png"),
                                      ("CMYK", "jpg"), ("1", "png")])
def test_read_rgb_converts_modes(tmp_path, mode, ext):
    path = tmp_path / f"im.{ext}"
    Image.fromarray(rgb()).convert(mode).save(path)
    out = F.read_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)


def test_read_rgb_keeps_rgba_colour(tmp_path):
    a = np.dstack([rgb(), np.full((H, W), 7, np.uint8)])
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(F.read_rgb(tmp_path / "a.png"), a[..., :3])


def test_read_rgb_scales_16bit_and_float(tmp_path):
    ramp = np.linspace(0, 65535, H * W).astype(np.uint16).reshape(H, W)
    save_png16(tmp_path / "g16.png", ramp)
    out = F.read_rgb(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 0], (ramp >> 8).astype(np.uint8))
    assert out.max() == 255 and (out[..., 0] == out[..., 2]).all()
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "g32.tif")  # mode I
    np.testing.assert_array_equal(F.read_rgb(tmp_path / "g32.tif")[..., 1], (ramp >> 8).astype(np.uint8))
    Image.fromarray((ramp / 65535.0).astype(np.float32)).save(tmp_path / "f.tif")  # mode F in [0, 1]
    f = F.read_rgb(tmp_path / "f.tif")[..., 0].astype(int)
    assert abs(f - (ramp >> 8)).max() <= 1


def test_read_rgb_applies_exif_orientation(tmp_path):
    raw = np.zeros((16, 24, 3), np.uint8)
    raw[:, :12] = (255, 0, 0)  # left half red, right half blue
    raw[:, 12:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate the stored pixels 90 degrees clockwise
    Image.fromarray(raw).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    up = F.read_rgb(tmp_path / "rot.jpg")
    assert up.shape == (24, 16, 3)
    assert np.abs(up.astype(int) - np.rot90(raw, k=-1)).mean() < 10  # red on top after the turn
    assert up[2, 8, 0] > 200 and up[-3, 8, 2] > 200
    assert F.read_rgb(tmp_path / "rot.jpg", exif_transpose=False).shape == (16, 24, 3)


@pytest.mark.parametrize("reader", [F.read_rgb, F.read_png16])
def test_broken_images_raise_sample_error_naming_file(tmp_path, reader):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16)).save(good)
    data = good.read_bytes()
    cases = {"truncated.png": data[: len(data) // 2], "empty.png": b"", "text.png": b"not an image at all\n"}
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
    for name in [*cases, "missing.png"]:
        with pytest.raises(SampleError, match=name):
            reader(tmp_path / name)


def test_read_png16_rejects_rgb(tmp_path):
    Image.fromarray(rgb()).save(tmp_path / "c.png")
    with pytest.raises(SampleError, match="c.png.*single-channel"):
        F.read_png16(tmp_path / "c.png")


# ------------------------------------------------------------------------------- float formats
def test_pfm_roundtrip_and_big_endian(tmp_path):
    d = np.random.default_rng(1).random((H, W)).astype(np.float32)
    F.write_pfm(tmp_path / "d.pfm", d)
    np.testing.assert_array_equal(F.read_pfm(tmp_path / "d.pfm"), d)
    c = np.random.default_rng(2).random((H, W, 3)).astype(np.float32)
    F.write_pfm(tmp_path / "c.pfm", c)
    np.testing.assert_array_equal(F.read_pfm(tmp_path / "c.pfm"), c)
    # positive scale = big-endian; first stored row is the bottom one
    (tmp_path / "be.pfm").write_bytes(b"Pf\n12 8\n1.0\n" + np.flipud(d).astype(">f4").tobytes())
    np.testing.assert_array_equal(F.read_pfm(tmp_path / "be.pfm"), d)
    (tmp_path / "short.pfm").write_bytes((tmp_path / "d.pfm").read_bytes()[:-10])
    with pytest.raises(SampleError, match="short.pfm.*truncated"):
        F.read_pfm(tmp_path / "short.pfm")
    (tmp_path / "bad.pfm").write_bytes(b"P6\n12 8\n255\n" + bytes(300))
    with pytest.raises(SampleError, match="bad.pfm"):
        F.read_pfm(tmp_path / "bad.pfm")


def test_dpt_roundtrip_and_errors(tmp_path):
    d = np.random.default_rng(3).random((H, W)).astype(np.float32) * 50
    F.write_dpt(tmp_path / "d.dpt", d)
    raw = (tmp_path / "d.dpt").read_bytes()
    assert struct.unpack("<fii", raw[:12]) == (202021.25, W, H)
    np.testing.assert_array_equal(F.read_dpt(tmp_path / "d.dpt"), d)
    (tmp_path / "short.dpt").write_bytes(raw[:40])
    (tmp_path / "tag.dpt").write_bytes(struct.pack("<fii", 1.0, W, H) + raw[12:])
    for name in ("short.dpt", "tag.dpt"):
        with pytest.raises(SampleError, match=name):
            F.read_dpt(tmp_path / name)


def test_npy_hdf5_raw(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SampleError, match="obj.npy"):  # pickles refused
        F.read_npy(tmp_path / "obj.npy")
    np.save(tmp_path / "ok.npy", np.arange(6.0))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:-8])
    with pytest.raises(SampleError, match="cut.npy"):
        F.read_npy(tmp_path / "cut.npy")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["depth"] = np.ones((2, 3))
    with pytest.raises(SampleError, match="x.h5.*'dataset'"):
        F.read_hdf5(tmp_path / "x.h5", "dataset")
    (tmp_path / "junk.h5").write_bytes(b"junk" * 10)
    with pytest.raises(SampleError, match="junk.h5"):
        F.read_hdf5(tmp_path / "junk.h5", "depth")
    (tmp_path / "raw").write_bytes(np.ones(H * W, "<f4").tobytes())
    assert F.read_raw_float32(tmp_path / "raw", H, W).shape == (H, W)
    with pytest.raises(SampleError, match="raw.*bytes"):
        F.read_raw_float32(tmp_path / "raw", H, W + 1)


def test_exr_roundtrip(tmp_path):
    import cv2

    if not cv2_has_exr(tmp_path):
        pytest.skip("this OpenCV build cannot write OpenEXR")
    d = np.random.default_rng(4).random((H, W)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "d.exr"), d)
    np.testing.assert_allclose(F.read_exr(tmp_path / "d.exr"), d)


def test_exr_errors_name_file(tmp_path):
    (tmp_path / "bad.exr").write_bytes(b"not exr" * 20)
    for name in ("bad.exr", "missing.exr"):
        with pytest.raises(SampleError, match=name):
            F.read_exr(tmp_path / name)


# -------------------------------------------------------------------------- synthetic metric
def test_hypersim_ray_to_planar(tmp_path):
    scene = tmp_path / "ai_001_001" / "images"
    for n in range(2):
        save_rgb(scene / "scene_cam_00_final_preview" / f"frame.{n:04d}.tonemap.jpg", n)
        with h5py.File(mkparent(scene / "scene_cam_00_geometry_hdf5" / f"frame.{n:04d}.depth_meters.hdf5"), "w") as f:
            f["dataset"] = depth_map(5.0, p12=np.nan).astype(np.float16)  # Hypersim stores float16
    reader = R.build_reader("hypersim", root=tmp_path)
    assert len(reader) == 2
    s = check(reader[0], "depth", "metric", "hypersim")
    f = 886.81 * W / 1024
    x, y = -(W - 1) / 2, -(H - 1) / 2  # centre of pixel (0, 0)
    assert s.target[0, 0] == pytest.approx(5.0 * f / np.sqrt(x * x + y * y + f * f), rel=1e-5)
    assert s.target[H // 2, W // 2] == pytest.approx(5.0 * f / np.sqrt(0.25 + 0.25 + f * f), rel=1e-5)
    assert not s.valid[1, 2] and s.valid.sum() == H * W - 1
    assert s.intrinsics[0, 0] == pytest.approx(f) and s.intrinsics[0, 2] == (W - 1) / 2
    assert s.key == "ai_001_001_images_scene_cam_00_final_preview_frame_0000_tonemap"


def test_vkitti2_centimetres_and_sky(tmp_path):
    cm = np.full((H, W), 1234, np.uint16)
    cm[0, 0], cm[0, 1], cm[0, 2], cm[0, 3] = 8000, 8001, 65535, 0  # 80 m ok, >80 m, sky, hole
    base = tmp_path / "Scene01" / "clone" / "frames"
    for n in range(2):
        save_png16(base / "depth" / "Camera_0" / f"depth_{n:05d}.png", cm)
        save_rgb(base / "rgb" / "Camera_0" / f"rgb_{n:05d}.jpg", n)
    s = check(R.VKITTI2Reader(tmp_path)[1], "depth", "metric", "vkitti2")
    assert s.target[1, 1] == pytest.approx(12.34) and s.target[0, 0] == pytest.approx(80.0)
    assert s.valid[0, 0] and not s.valid[0, 1:4].any() and s.valid.sum() == H * W - 3
    assert s.intrinsics[0, 0] == pytest.approx(725.0087)


def test_tartanair_npy(tmp_path):
    d = tmp_path / "abandonedfactory" / "Easy" / "P000"
    for n in range(2):
        np.save(mkparent(d / "depth_left" / f"{n:06d}_left_depth.npy"), depth_map(3.5, p00=np.inf, p01=0))
        save_rgb(d / "image_left" / f"{n:06d}_left.png", n)
    s = check(R.TartanAirReader(tmp_path)[0], "depth", "metric", "tartanair")
    assert s.target[3, 3] == pytest.approx(3.5) and not s.valid[0, :2].any() and s.valid.sum() == H * W - 2
    assert s.key == "abandonedfactory_Easy_P000_image_left_000000_left"


def test_blendedmvs_pfm_is_uts(tmp_path):
    pid = tmp_path / "5a3ca9cb270f0e3f14d0eddb"
    for n in range(2):
        F.write_pfm(mkparent(pid / "rendered_depth_maps" / f"{n:08d}.pfm"), depth_map(700.0, p00=0))
        save_rgb(pid / "blended_images" / f"{n:08d}.jpg", n)
        cam = "extrinsic\n" + "1 0 0 0\n" * 4 + "\nintrinsic\n600 0 6\n0 601 4\n0 0 1\n\n425 2.5\n"
        mkparent(pid / "cams" / f"{n:08d}_cam.txt").write_text(cam)
    s = check(R.BlendedMVSReader(tmp_path)[0], "depth", "uts", "blendedmvs")
    assert s.target[1, 1] == 700.0 and not s.valid[0, 0] and s.valid.sum() == H * W - 1
    assert s.intrinsics[1, 1] == 601 and s.intrinsics[0, 2] == 6


def test_irs_disparity_to_depth(tmp_path):
    scene = tmp_path / "Home" / "ArchVizInterior03Data"
    disp = depth_map(48.0, p00=0, p01=24.0)
    for n in (1, 2):
        F.write_pfm(mkparent(scene / f"d_{n}.pfm"), disp)
        save_rgb(scene / f"l_{n}.png", n)
    s = check(R.IRSReader(tmp_path)[0], "depth", "metric", "irs")
    assert s.target[2, 2] == pytest.approx(480 * 0.1 / 48) and s.target[0, 1] == pytest.approx(2.0)
    assert not s.valid[0, 0] and s.valid.sum() == H * W - 1
    s2 = R.IRSReader(tmp_path, focal=100.0, baseline=0.5)[0]
    assert s2.target[2, 2] == pytest.approx(100 * 0.5 / 48) and s2.intrinsics[0, 0] == 100.0
    if cv2_has_exr(tmp_path):
        import cv2

        cv2.imwrite(str(scene / "d_3.exr"), disp)
        save_rgb(scene / "l_3.png", 3)
        assert R.IRSReader(tmp_path)[2].target[2, 2] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- real UTS / UTSS
def test_megadepth_hdf5_is_uts(tmp_path):
    dense = tmp_path / "phoenix" / "S6" / "zl548" / "MegaDepth_v1" / "0000" / "dense0"
    for n in range(2):
        with h5py.File(mkparent(dense / "depths" / f"img{n}.h5"), "w") as f:
            f["depth"] = depth_map(2.5, p00=0)
        save_rgb(dense / "imgs" / f"img{n}.jpg", n)
    s = check(R.MegaDepthReader(tmp_path)[0], "depth", "uts", "megadepth")
    assert s.target[1, 1] == 2.5 and not s.valid[0, 0] and s.valid.sum() == H * W - 1


def test_diml_millimetres_indoor_and_outdoor(tmp_path):
    mm = np.full((H, W), 2500, np.uint16)
    mm[0, 0] = 0
    save_png16(tmp_path / "indoor" / "s1" / "depth_filled" / "a_depth_filled.png", mm)
    save_rgb(tmp_path / "indoor" / "s1" / "color" / "a_c.png")
    save_png16(tmp_path / "outdoor" / "s2" / "depthmap" / "b.png", mm)
    save_rgb(tmp_path / "outdoor" / "s2" / "outleft" / "b.png")
    reader = R.DIMLReader(tmp_path)
    assert len(reader) == 2
    for s in reader:
        check(s, "depth", "metric", "diml")
        assert s.target[1, 1] == pytest.approx(2.5) and not s.valid[0, 0]


def test_hrwsi_and_redweb_disparity_utss(tmp_path):
    disp8 = np.full((H, W), 200, np.uint8)
    disp8[0, 0] = 0
    mask = np.full((H, W), 255, np.uint8)
    mask[1, 1] = 0
    for n in range(2):
        Image.fromarray(disp8).save(mkparent(tmp_path / "hrwsi" / "train" / "gts" / f"{n}.png"))
        Image.fromarray(mask).save(mkparent(tmp_path / "hrwsi" / "train" / "valid_masks" / f"{n}.png"))
        save_rgb(tmp_path / "hrwsi" / "train" / "imgs" / f"{n}.jpg", n)
        save_png16(tmp_path / "redweb" / "RDs" / f"r{n}.png", disp8.astype(np.uint16) * 300)
        save_rgb(tmp_path / "redweb" / "Imgs" / f"r{n}.jpg", n)
    s = check(R.HRWSIReader(tmp_path / "hrwsi")[0], "disparity", "utss", "hrwsi")
    assert s.target[2, 2] == 200 and not s.valid[0, 0] and not s.valid[1, 1] and s.valid.sum() == H * W - 2
    r = check(R.build_reader("redweb", root=tmp_path / "redweb")[1], "disparity", "utss", "redweb")
    assert r.target[2, 2] == 60000 and r.valid.sum() == H * W - 1
    h = tmp_path / "hrwsi" / "train"  # explicit (image, disparity, mask) items
    s = R.HRWSIReader(items=[(h / "imgs" / "1.jpg", h / "gts" / "1.png", h / "valid_masks" / "1.png")])[0]
    assert s.key == "1" and not s.valid[1, 1]


# ---------------------------------------------------------------------------------- evaluation
def test_nyu_png_folder(tmp_path):
    mm = np.full((H, W), 3000, np.uint16)
    mm[0, 0] = 0
    for n in (0, 1, 10):
        save_png16(tmp_path / f"depth_{n}.png", mm)
        save_rgb(tmp_path / f"image_{n}.png", n)
    reader = R.NYUReader(tmp_path)
    assert [reader[i].key for i in range(3)] == ["image_0", "image_1", "image_10"]  # natural order
    s = check(reader[0], "depth", "metric", "nyu")
    assert s.target[1, 1] == pytest.approx(3.0) and not s.valid[0, 0]


def test_nyu_real_sample():
    if not NYU_SAMPLE.is_dir():
        pytest.skip(f"real NYU sample not found at {NYU_SAMPLE}")
    reader = R.build_reader("nyu", root=NYU_SAMPLE)
    assert len(reader) == 10
    for s in reader:
        assert s.image.shape == (480, 640, 3) and s.image.dtype == np.uint8
        d = s.target[s.valid]
        assert s.valid.mean() > 0.5 and 0.5 < d.min() and d.max() < 10.5 and 1.0 < np.median(d) < 8.0
        assert s.intrinsics is not None and "." not in s.key


def test_nyu_labeled_mat_transposed(tmp_path):
    images = np.stack([rgb(n) for n in range(3)])  # [N, H, W, 3]
    depths = np.stack([depth_map(1.0 + n, p01=0) for n in range(3)])
    with h5py.File(tmp_path / "nyu.mat", "w") as f:  # MATLAB v7.3 stores the transpose
        f["images"] = images.transpose(0, 3, 2, 1)  # [N, 3, W, H]
        f["depths"] = depths.transpose(0, 2, 1)  # [N, W, H]
    reader = R.build_reader("nyu_mat", path=tmp_path / "nyu.mat", indices=[2, 0])
    assert len(reader) == 2
    s = check(reader[0], "depth", "metric", "nyu")
    np.testing.assert_array_equal(s.image, images[2])
    assert s.target[1, 1] == 3.0 and not s.valid[0, 1] and s.key == "nyu_0002"
    import pickle

    assert pickle.loads(pickle.dumps(reader))[1].key == "nyu_0000"  # DataLoader workers reopen the file
    with pytest.raises(SampleError, match="nyu.mat"):
        R.NYUMatReader(tmp_path / "nyu.mat", indices=[3])


def test_kitti_annotated_depth(tmp_path):
    drive = "2011_09_26_drive_0002_sync"
    px = np.zeros((H, W), np.uint16)
    px[4, 5] = 256 * 12 + 128  # 12.5 m; everything else is a hole
    for frame in ("0000000005", "0000000006"):
        save_png16(tmp_path / "ann" / "val" / drive / "proj_depth" / "groundtruth" / "image_02" / f"{frame}.png", px)
        save_rgb(tmp_path / "raw" / drive[:10] / drive / "image_02" / "data" / f"{frame}.png")
    (tmp_path / "raw" / drive[:10] / "calib_cam_to_cam.txt").write_text(
        "P_rect_02: 721.5 0 609.5 44.8 0 721.6 172.8 0.2 0 0 1 0.003\n")
    reader = R.KITTIReader(tmp_path / "ann", raw_root=tmp_path / "raw")
    s = check(reader[0], "depth", "metric", "kitti")
    assert s.target[4, 5] == pytest.approx(12.5) and s.valid.sum() == 1
    assert s.intrinsics[1, 1] == pytest.approx(721.6) and s.intrinsics[1, 2] == pytest.approx(172.8)
    assert s.key == f"{drive}_image_02_0000000005"


def test_diode_depth_and_mask(tmp_path):
    scan = tmp_path / "val" / "indoors" / "scene_00019" / "scan_00183"
    for n in range(2):
        name = f"00019_00183_indoors_{n:03d}_010"
        np.save(mkparent(scan / f"{name}_depth.npy"), depth_map(4.0)[..., None])
        mask = np.ones((H, W), np.float32)
        mask[2, 3] = 0
        np.save(scan / f"{name}_depth_mask.npy", mask)
        save_rgb(scan / f"{name}.png", n)
    s = check(R.DIODEReader(tmp_path)[0], "depth", "metric", "diode")
    assert s.target[0, 0] == 4.0 and not s.valid[2, 3] and s.valid.sum() == H * W - 1


def test_eth3d_raw_float32(tmp_path):
    for name in ("DSC_0286.JPG", "DSC_0287.JPG"):
        depth = depth_map(6.0, p00=np.inf)
        mkparent(tmp_path / "courtyard" / "ground_truth_masked" / "dslr_images" / name).write_bytes(
            depth.astype("<f4").tobytes())
        save_rgb(tmp_path / "courtyard" / "images" / "dslr_images" / name)
    reader = R.ETH3DReader(tmp_path, height=H, width=W)
    s = check(reader[0], "depth", "metric", "eth3d")
    assert s.target[1, 1] == 6.0 and not s.valid[0, 0] and s.key == "courtyard_DSC_0286"
    with pytest.raises(SampleError, match="DSC_0286.JPG.*bytes"):  # wrong size: raw file is not 6048x4032
        R.ETH3DReader(tmp_path)[0]


def test_sintel_dpt_and_cam(tmp_path):
    tr = tmp_path / "training"
    for n in (1, 2):
        F.write_dpt(mkparent(tr / "depth" / "alley_1" / f"frame_{n:04d}.dpt"), depth_map(9.0, p00=0))
        save_rgb(tr / "final" / "alley_1" / f"frame_{n:04d}.png", n)
        K = np.array([[1120.0, 0, 511.5], [0, 1120.0, 217.5], [0, 0, 1]])
        mkparent(tr / "camdata_left" / "alley_1" / f"frame_{n:04d}.cam").write_bytes(
            struct.pack("<f", 202021.25) + K.astype("<f8").tobytes() + np.zeros(12, "<f8").tobytes())
    s = check(R.SintelReader(tmp_path)[0], "depth", "metric", "sintel")
    assert s.target[1, 1] == 9.0 and not s.valid[0, 0]
    np.testing.assert_array_equal(s.intrinsics, K)


# ------------------------------------------------------------------------------ generic readers
def write_folder(root, space="depth", geometry="metric", depth_scale=0.001, float_depth=False):
    import yaml

    for n in range(2):
        key = f"scene_{n:06d}"
        save_rgb(root / "rgb" / f"{key}.png", n)
        if float_depth:
            np.save(mkparent(root / "depth" / f"{key}.npy"), depth_map(0.25, p00=0))
        else:
            save_png16(root / "depth" / f"{key}.png", np.where(depth_map(1.0, p00=0) > 0, 1500, 0))
        intrinsics = {"fx": 10.0, "fy": 11.0, "cx": 5.5, "cy": 3.5}
        mkparent(root / "intrinsics" / f"{key}.json").write_text(json.dumps(intrinsics))
    info = {"name": "synthetic", "space": space, "geometry": geometry, "depth_scale": depth_scale,
            "format": {"rgb": "rgb/{key}.png"}}
    (root / "dataset.yaml").write_text(yaml.safe_dump(info))


def test_folder_reader_mm_png_and_npy(tmp_path):
    write_folder(tmp_path / "m")
    s = check(R.build_reader("folder", root=tmp_path / "m")[1], "depth", "metric", "synthetic")
    assert s.target[1, 1] == pytest.approx(1.5) and not s.valid[0, 0] and s.key == "scene_000001"
    assert s.intrinsics[1, 1] == 11.0 and s.intrinsics[0, 2] == 5.5
    write_folder(tmp_path / "u", "disparity", "utss", 1.0, float_depth=True)
    s = check(R.FolderReader(tmp_path / "u")[0], "disparity", "utss", "synthetic")
    assert s.target[1, 1] == 0.25 and not s.valid[0, 0]


def test_folder_reader_unlabeled_and_missing_depth(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "depth" / "scene_000001.png").unlink()
    with pytest.raises(SampleError, match="scene_000001"):
        R.FolderReader(tmp_path)[1]
    for f in (tmp_path / "depth").iterdir():
        f.unlink()
    (tmp_path / "depth").rmdir()
    s = R.FolderReader(tmp_path)[0]
    assert s.geometry == "none" and not s.valid.any()


def test_folder_reader_reads_synthetic_generator(tmp_path):
    synthetic = pytest.importorskip("distill.data.synthetic")
    if not hasattr(synthetic, "write_dataset"):
        pytest.skip("distill.data.synthetic.write_dataset not available yet")
    for geometry in ("metric", "utss"):
        synthetic.write_dataset(str(tmp_path / geometry), 2, seed=0, size=(16, 20), geometry=geometry)
        reader = R.FolderReader(tmp_path / geometry)
        assert len(reader) == 2
        s = reader[0]
        assert s.image.shape == (16, 20, 3) and s.geometry == geometry and s.valid.any()
        assert s.intrinsics is not None and "." not in s.key
        if geometry == "metric":
            assert 0 < s.target[s.valid].min() and s.target[s.valid].max() <= 40.0


def test_list_reader(tmp_path):
    write_folder(tmp_path / "data")
    (tmp_path / "train.txt").write_text("# image depth\ndata/rgb/scene_000000.png data/depth/scene_000000.png\n\n"
                                        "data/rgb/scene_000001.png\n")
    reader = R.build_reader("list", list_file=tmp_path / "train.txt", depth_scale=0.001)
    assert len(reader) == 2
    s = check(reader[0], "depth", "metric", "train")
    assert s.target[1, 1] == pytest.approx(1.5) and s.key == "data_rgb_scene_000000"
    assert reader[1].geometry == "none"


def test_pair_reader_explicit_items_and_missing_files(tmp_path):
    mm = np.full((H, W), 1000, np.uint16)
    save_png16(tmp_path / "d" / "depth_0.png", mm)
    save_rgb(tmp_path / "i" / "image_0.png")
    reader = R.NYUReader(items=[(tmp_path / "i" / "image_0.png", tmp_path / "d" / "depth_0.png"),
                                (tmp_path / "i" / "image_1.png", tmp_path / "d" / "depth_1.png")])
    assert reader[0].target[0, 0] == 1.0 and reader[0].key == "image_0"
    with pytest.raises(SampleError, match="image_1.png"):
        reader[1]
    with pytest.raises(IndexError):
        reader[2]
    with pytest.raises(FileNotFoundError):
        R.HypersimReader(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no hypersim samples"):
        R.HypersimReader(tmp_path)


def test_build_reader_unknown_name():
    with pytest.raises(ValueError, match="'nope'.*hypersim"):
        R.build_reader("nope")


# ------------------------------------------------------------------------- Hugging Face datasets
def hf_dataset():
    datasets = pytest.importorskip("datasets")
    mm = np.full((H, W), 2000, np.uint16)
    mm[0, 0] = 0
    return datasets.Dataset.from_dict({
        "image": [Image.fromarray(rgb(n)) for n in range(2)],
        "depth_png": [Image.fromarray(mm) for _ in range(2)],  # 16-bit PNG in millimetres
        "depth_m": [depth_map(3.0, p11=np.nan) for _ in range(2)],
        "name": ["a.b/c", "d"],
    })


def test_hf_map_style_png16_and_arrays():
    ds = hf_dataset()
    r = R.build_reader("hf", dataset=ds, depth_column="depth_png", depth_scale=0.001, name="hfnyu")
    assert len(r) == 2
    s = check(r[1], "depth", "metric", "hfnyu")
    assert s.target[1, 1] == pytest.approx(2.0) and not s.valid[0, 0] and s.key == "00000001"
    np.testing.assert_array_equal(s.image, rgb(1))
    r = R.HFDatasetReader(ds, depth_column="depth_m", key_column="name", name="x")
    s = check(r[0], "depth", "metric", "x")
    assert s.target[0, 0] == 3.0 and not s.valid[1, 1] and s.key == "a_b_c"
    assert R.HFDatasetReader(ds, depth_column=None)[0].geometry == "none"
    with pytest.raises(SampleError, match="missing column"):
        R.HFDatasetReader(ds, depth_column="nope")[0]


def test_hf_iterable():
    ds = hf_dataset().to_iterable_dataset()
    samples = list(R.build_reader("hf_iterable", dataset=ds, depth_column="depth_m", space="disparity",
                                  geometry="utss", name="it"))
    assert len(samples) == 2 and samples[1].key == "00000001"
    check(samples[0], "disparity", "utss", "it")
    with pytest.raises(ValueError, match="HFIterableReader"):
        R.HFDatasetReader(ds)
    assert isinstance(R.build_reader("hf", dataset=ds, streaming=True), R.HFIterableReader)
