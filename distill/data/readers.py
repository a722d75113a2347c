"""Dataset readers: each one walks a dataset's on-disk layout and returns ``Sample`` objects.

Every reader is a map-style ``torch.utils.data.Dataset`` (``HFIterableReader`` is the one
iterable exception): ``reader[i]`` -> ``Sample``, ``len(reader)``. File readers take ``root`` (the
dataset's directory, walked with the layout in the class docstring) or ``items``, an explicit list
of ``(image_path, depth_path)`` tuples. Pairs are formed from the depth files at construction; a
missing or broken partner raises ``SampleError`` (naming the file) when that sample is loaded, so
the training loader can log and skip it.

Common rules (unless a class says otherwise): the image is uint8 RGB as stored on disk (no EXIF
rotation: labels are aligned with the stored pixel grid); depth that is non-finite or <= 0 is
invalid; ``max_depth`` (when given) also invalidates farther pixels; keys are the image path
relative to ``root`` without extension, with '.', '/' and '\\' replaced by '_' (no dots).
Intrinsics use pixel centres at integer coordinates (principal point (W-1)/2, (H-1)/2 when a
dataset only gives a focal length).

``READERS`` maps names to classes and ``build_reader(name, **kwargs)`` builds one.
"""
from __future__ import annotations

import glob
import inspect
import io
import json
import os
import re
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, IterableDataset

from distill.data import formats as F
from distill.data.synthetic import SyntheticReader
from distill.data.sample import Sample, SampleError
from distill.spaces import GEOMETRIES, SPACES
from distill.data.shards import ShardReader

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
DEPTH_EXTS = (".png", ".npy", ".pfm", ".exr", ".h5", ".hdf5", ".dpt")


# ------------------------------------------------------------------------------------- helpers
def make_key(path, root=None) -> str:
    """Path (relative to ``root``) without extension; '.', '/', '\\' -> '_' so keys have no dots."""
    rel = os.path.relpath(path, root) if root else os.fspath(path)
    return re.sub(r"[./\\]", "_", os.path.splitext(rel)[0]).strip("_") or "_"


def pinhole(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def centred_pinhole(f, hw) -> np.ndarray:
    return pinhole(f, f, (hw[1] - 1) / 2, (hw[0] - 1) / 2)


def valid_mask(target: np.ndarray, space: str = "depth", max_depth: float | None = None) -> np.ndarray:
    """Finite and > 0 (depth, disparity); log-depth only needs to be finite (0 means 1 m)."""
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(target) if space == "log_depth" else np.isfinite(target) & (target > 0)
        if max_depth is not None and space == "depth":
            valid &= target <= max_depth
    return valid


def scale_integers(a: np.ndarray, scale: float) -> np.ndarray:
    """Integer maps (PNG) are fixed point: multiply by ``scale``; float maps are already in units."""
    return a.astype(np.float32) * np.float32(scale) if a.dtype.kind in "iub" else a.astype(np.float32)


def ray_to_planar(distance: np.ndarray, focal: float) -> np.ndarray:
    """Distance along each pixel's ray -> planar depth (camera z), centred pixel coordinates."""
    h, w = distance.shape
    x = np.arange(w, dtype=np.float64) - (w - 1) / 2
    y = np.arange(h, dtype=np.float64) - (h - 1) / 2
    norm = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + focal**2)
    return (distance * (focal / norm)).astype(np.float32)


def _swap_dir(path, old: str, new: str, required: bool = True) -> Path | None:
    """Replace the last directory component named ``old`` with ``new`` (None if absent and not
    ``required``: explicit items need not follow a dataset's layout)."""
    parts = list(Path(path).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == old:
            parts[i] = new
            return Path(*parts)
    if required:
        raise SampleError(f"{path}: expected a '{old}' directory in the path")
    return None


def _first_existing(candidates) -> str:
    """First candidate that exists, else the first one (its absence is reported at load time)."""
    candidates = [os.fspath(c) for c in candidates]
    return next((c for c in candidates if os.path.exists(c)), candidates[0])


def _rglob(root, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(os.fspath(root), "**", pattern), recursive=True))


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# ---------------------------------------------------------------------------------- base classes
class Reader(Dataset):
    """Map-style dataset of ``Sample``s over ``items`` (one record per sample; subclasses define
    ``load(i)``). ``reader[i]`` raises IndexError past the end, so plain iteration works too."""

    benchmark: str | None = None  # the evaluation benchmark whose crop and depth range apply

    name = "reader"
    space = "depth"
    geometry = "metric"

    def __init__(self, items, max_depth: float | None = None):
        self.items = items if isinstance(items, (list, range)) else list(items)
        self.max_depth = max_depth

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)

    def load(self, i: int) -> Sample:
        raise NotImplementedError

    def make_sample(self, image, target, valid, key, **kwargs) -> Sample:
        return Sample(image, target, valid, self.space, self.geometry, self.name, key, **kwargs)


class PairReader(Reader):
    """Reader over ``(image_path, depth_path, *extra)`` tuples found under ``root`` by
    ``find(root)`` or given as ``items``. Subclasses implement ``find`` and ``decode(depth_path,
    hw, item) -> (target, valid, intrinsics or None)``."""

    def __init__(self, root=None, items=None, max_depth: float | None = None):
        if items is None and root is None:
            raise ValueError(f"{type(self).__name__}: pass root= or items=")
        if items is None and not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: {self.name} root directory not found")
        pairs = [tuple(None if p is None else os.fspath(p) for p in it)
                 for it in (items if items is not None else self.find(root))]
        if items is None and not pairs:  # a wrong root should not become an empty dataset
            raise FileNotFoundError(f"{root}: no {self.name} samples found (layout: see {type(self).__name__})")
        super().__init__(pairs, max_depth)
        self.root = os.fspath(root) if root is not None else self._common_dir(pairs)

    @staticmethod
    def _common_dir(pairs):
        dirs = [os.path.dirname(os.path.abspath(it[0])) for it in pairs]
        return os.path.commonpath(dirs) if dirs else None

    def find(self, root) -> list[tuple]:
        raise NotImplementedError

    def decode(self, depth_path: str, hw: tuple, item: tuple) -> tuple:
        raise NotImplementedError

    def key(self, i: int) -> str:
        image = self.items[i][0]
        return make_key(os.path.abspath(image), os.path.abspath(self.root)) if self.root else make_key(image)

    def load(self, i: int) -> Sample:
        item = self.items[i]
        image_path, depth_path = item[:2]
        image = F.read_rgb(image_path, exif_transpose=False)
        target, valid, K = self.decode(depth_path, image.shape[:2], item)
        return self.make_sample(image, target, valid, self.key(i), intrinsics=K,
                                meta={"image_path": image_path, "depth_path": depth_path})


# ---------------------------------------------------------------------------- synthetic, metric
class HypersimReader(PairReader):
    """Hypersim. Layout: ``<scene>/images/scene_<cam>_geometry_hdf5/frame.NNNN.depth_meters.hdf5``
    (HDF5 key ``dataset``) with ``scene_<cam>_final_preview/frame.NNNN.tonemap.jpg`` beside it.

    The file stores the metric distance along each pixel's ray; it becomes planar depth
    ``dist * f / sqrt(x^2 + y^2 + f^2)`` with centred pixel coordinates and f = 886.81 px at
    1024 px width (scaled with the width otherwise). Space depth (metres), geometry metric; NaN is
    invalid. Intrinsics: f, f, (W-1)/2, (H-1)/2. (A few scenes use tilt-shift cameras for which a
    centred pinhole is approximate.)"""

    name, space, geometry = "hypersim", "depth", "metric"
    FOCAL, WIDTH = 886.81, 1024

    def __init__(self, root=None, items=None, focal: float = FOCAL, max_depth=None):
        self.focal = focal
        super().__init__(root, items, max_depth)

    def find(self, root):
        pairs = []
        for d in _rglob(root, "*.depth_meters.hdf5"):
            p = Path(d)
            image_dir = p.parent.with_name(p.parent.name.replace("_geometry_hdf5", "_final_preview"))
            pairs.append((image_dir / p.name.replace(".depth_meters.hdf5", ".tonemap.jpg"), d))
        return pairs

    def decode(self, depth_path, hw, item):
        dist = F.read_hdf5(depth_path, "dataset").astype(np.float32)
        if dist.ndim != 2:
            raise SampleError(f"{depth_path}: expected a 2-D distance map, got {dist.shape}")
        f = self.focal * dist.shape[1] / self.WIDTH
        depth = ray_to_planar(dist, f)
        return depth, valid_mask(depth, max_depth=self.max_depth), centred_pinhole(f, dist.shape)


class VKITTI2Reader(PairReader):
    """Virtual KITTI 2. Layout: ``Scene*/<variation>/frames/depth/Camera_<c>/depth_NNNNN.png`` with
    ``frames/rgb/Camera_<c>/rgb_NNNNN.jpg``. Depth: uint16 PNG in centimetres -> /100 metres;
    valid where 0 < depth <= ``max_depth`` (80 m; sky is stored as 655.35 m). Space depth, geometry
    metric. Intrinsics: the dataset's constant fx = fy = 725.0087, cx = 620.5, cy = 187.0."""

    name, space, geometry = "vkitti2", "depth", "metric"

    def __init__(self, root=None, items=None, max_depth: float = 80.0,
                 intrinsics=(725.0087, 725.0087, 620.5, 187.0)):
        self.intrinsics = intrinsics
        super().__init__(root, items, max_depth)

    def find(self, root):
        return [(_swap_dir(d, "depth", "rgb").with_name("rgb_" + Path(d).stem[len("depth_"):] + ".jpg"), d)
                for d in _rglob(root, os.path.join("frames", "depth", "*", "depth_*.png"))]

    def decode(self, depth_path, hw, item):
        depth = F.read_png16(depth_path).astype(np.float32) / 100.0
        return depth, valid_mask(depth, max_depth=self.max_depth), pinhole(*self.intrinsics)


class TartanAirReader(PairReader):
    """TartanAir. Layout: ``<env>/<Easy|Hard>/P<NNN>/depth_left/NNNNNN_left_depth.npy`` with
    ``image_left/NNNNNN_left.png`` (also ``_right``). Depth: float32 metres; non-finite or <= 0
    invalid (sky keeps its large stored depth unless ``max_depth`` is set). Space depth, geometry
    metric. Intrinsics: fx = fy = 320, cx = 320, cy = 240 (640x480)."""

    name, space, geometry = "tartanair", "depth", "metric"

    def __init__(self, root=None, items=None, max_depth=None, intrinsics=(320.0, 320.0, 320.0, 240.0)):
        self.intrinsics = intrinsics
        super().__init__(root, items, max_depth)

    def find(self, root):
        pairs = []
        for d in _rglob(root, os.path.join("depth_*", "*_depth.npy")):
            side = Path(d).parent.name  # depth_left / depth_right
            image = _swap_dir(d, side, side.replace("depth_", "image_", 1))
            pairs.append((image.with_name(Path(d).name.replace("_depth.npy", ".png")), d))
        return pairs

    def decode(self, depth_path, hw, item):
        depth = F.read_npy(depth_path).astype(np.float32)
        return depth, valid_mask(depth, max_depth=self.max_depth), pinhole(*self.intrinsics)


class BlendedMVSReader(PairReader):
    """BlendedMVS. Layout: ``<pid>/rendered_depth_maps/NNNNNNNN.pfm`` with
    ``<pid>/blended_images/NNNNNNNN.jpg`` and optional ``<pid>/cams/NNNNNNNN_cam.txt`` (MVSNet
    text camera: 'extrinsic' 4x4, 'intrinsic' 3x3, ...). Depth is rendered from meshes whose scale
    is that of each scene's reconstruction (arbitrary), so: space depth, geometry **uts**; 0 and
    non-finite invalid. Intrinsics from the cam file when present."""

    name, space, geometry = "blendedmvs", "depth", "uts"

    def find(self, root):
        return [(_swap_dir(d, "rendered_depth_maps", "blended_images").with_suffix(".jpg"), d)
                for d in _rglob(root, os.path.join("rendered_depth_maps", "*.pfm"))]

    def decode(self, depth_path, hw, item):
        depth = F.read_depth(depth_path)
        cam = _swap_dir(depth_path, "rendered_depth_maps", "cams", required=False)
        cam = cam.with_name(cam.stem + "_cam.txt") if cam else None
        return depth, valid_mask(depth, max_depth=self.max_depth), (read_mvs_cam(cam) if cam and cam.exists() else None)


def read_mvs_cam(path) -> np.ndarray:
    """3x3 intrinsics of an MVSNet-style ``*_cam.txt`` (the 9 numbers after 'intrinsic')."""
    tokens = Path(path).read_text().split()
    try:
        i = tokens.index("intrinsic")
        return np.array([float(t) for t in tokens[i + 1: i + 10]], dtype=np.float64).reshape(3, 3)
    except ValueError:
        raise SampleError(f"{path}: malformed camera file (no 3x3 'intrinsic' block)") from None


class IRSReader(PairReader):
    """IRS (indoor robotics stereo). Layout: ``<Home|Office|Restaurant|Store>/<scene>/l_N.png``
    with disparity ``d_N.exr`` (or ``d_N.pfm``) beside it. Disparity in pixels of the 960x540
    left view -> depth = focal * baseline / disparity with focal = 480 px, baseline = 0.1 m
    (override per dataset version); disparity <= 0 or non-finite is invalid. Space depth
    (metres), geometry metric. Intrinsics: focal, focal, (W-1)/2, (H-1)/2."""

    name, space, geometry = "irs", "depth", "metric"

    def __init__(self, root=None, items=None, focal: float = 480.0, baseline: float = 0.1, max_depth=None):
        self.focal, self.baseline = focal, baseline
        super().__init__(root, items, max_depth)

    def find(self, root):
        files = _rglob(root, "d_*.exr") + _rglob(root, "d_*.pfm")
        return sorted((Path(d).with_name("l_" + Path(d).stem[2:] + ".png"), d) for d in files)

    def decode(self, depth_path, hw, item):
        disp = F.read_depth(depth_path).astype(np.float32)
        ok = valid_mask(disp)
        depth = np.where(ok, self.focal * self.baseline / np.where(ok, disp, 1), 0).astype(np.float32)
        return depth, ok & valid_mask(depth, max_depth=self.max_depth), centred_pinhole(self.focal, disp.shape)


# ------------------------------------------------------------------------------- real UTS/UTSS
class MegaDepthReader(PairReader):
    """MegaDepth v1. Layout: ``<scene>/dense<k>/depths/<name>.h5`` (key ``depth``) with
    ``<scene>/dense<k>/imgs/<name>.jpg``. Depth from multi-view stereo of SfM models, known only
    up to scale: space depth, geometry **uts**; 0 (and non-finite) invalid. No intrinsics."""

    name, space, geometry = "megadepth", "depth", "uts"

    def find(self, root):
        pairs = []
        for d in _rglob(root, os.path.join("depths", "*.h5")):
            stem = _swap_dir(d, "depths", "imgs").with_suffix("")
            pairs.append((_first_existing(str(stem) + e for e in (".jpg", ".JPG", ".png", ".jpeg")), d))
        return pairs

    def decode(self, depth_path, hw, item):
        depth = F.read_hdf5(depth_path, "depth").astype(np.float32)
        return depth, valid_mask(depth, max_depth=self.max_depth), None


class DIMLReader(PairReader):
    """DIML/CVL RGB-D. Assumed layouts (those of common evaluation copies): indoor
    ``<scene>/color/<name>_c.png`` with ``<scene>/depth_filled/<name>_depth_filled.png``, outdoor
    ``<scene>/outleft/<name>.png`` with ``<scene>/depthmap/<name>.png``. Depth: uint16 PNG in
    millimetres (``depth_scale`` 0.001 -> metres); 0 invalid. Space depth, geometry metric
    (Kinect v2 indoors, calibrated stereo outdoors). No intrinsics."""

    name, space, geometry = "diml", "depth", "metric"

    def __init__(self, root=None, items=None, depth_scale: float = 0.001, max_depth=None):
        self.depth_scale = depth_scale
        super().__init__(root, items, max_depth)

    def find(self, root):
        indoor = []
        for i in _rglob(root, os.path.join("color", "*_c.png")):
            name = Path(i).name[: -len("_c.png")] + "_depth_filled.png"
            indoor.append((i, _swap_dir(i, "color", "depth_filled").with_name(name)))
        outdoor = [(i, _swap_dir(i, "outleft", "depthmap")) for i in _rglob(root, os.path.join("outleft", "*.png"))]
        return indoor + outdoor

    def decode(self, depth_path, hw, item):
        depth = scale_integers(F.read_png16(depth_path), self.depth_scale)
        return depth, valid_mask(depth, max_depth=self.max_depth), None


class HRWSIReader(PairReader):
    """HRWSI / ReDWeb-style web-stereo disparity. Layouts: HRWSI ``<split>/imgs/<name>.jpg``,
    ``<split>/gts/<name>.png`` and optional ``<split>/valid_masks/<name>.png``; ReDWeb
    ``Imgs/<name>.jpg`` with ``RDs/<name>.png``. Targets: 8- or 16-bit PNG of relative disparity,
    kept as the stored integers (no unit): space **disparity**, geometry **utss**; 0 invalid, and
    pixels where the mask (if any) is 0. ``items`` may hold (image, disparity[, mask]) tuples."""

    name, space, geometry = "hrwsi", "disparity", "utss"
    LAYOUTS = (("gts", "imgs", "valid_masks"), ("RDs", "Imgs", None))

    def find(self, root):
        items = []
        for gt_dir, img_dir, mask_dir in self.LAYOUTS:
            for d in _rglob(root, os.path.join(gt_dir, "*.png")):
                stem = _swap_dir(d, gt_dir, img_dir).with_suffix("")
                image = _first_existing(str(stem) + e for e in (".jpg", ".png", ".JPG", ".jpeg"))
                mask = _swap_dir(d, gt_dir, mask_dir) if mask_dir else None
                items.append((image, d, mask if mask is not None and mask.exists() else None))
        return items

    def decode(self, depth_path, hw, item):
        disp = F.read_png16(depth_path).astype(np.float32)
        valid = valid_mask(disp, "disparity")
        if len(item) > 2 and item[2] is not None:
            valid &= F.read_rgb(item[2], exif_transpose=False).max(axis=2) > 0
        return disp, valid, None


class ReDWebReader(HRWSIReader):
    __doc__ = HRWSIReader.__doc__
    name = "redweb"


# ---------------------------------------------------------------------------------- evaluation
NYU_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)  # NYU toolbox RGB camera, 640x480


class NYUReader(PairReader):
    """NYU Depth V2 test frames as PNGs: ``image_N.png`` (640x480 RGB) with ``depth_N.png`` (uint16
    millimetres -> metres) in one folder (searched recursively). 0 invalid; ``max_depth`` (e.g. 10)
    optional. Space depth, geometry metric. Intrinsics: the NYU toolbox RGB camera."""

    benchmark = "nyu"  # validation and evaluation use this benchmark's crop and depth range

    name, space, geometry = "nyu", "depth", "metric"

    def __init__(self, root=None, items=None, max_depth=None, intrinsics=NYU_INTRINSICS):
        self.intrinsics = intrinsics
        super().__init__(root, items, max_depth)

    def find(self, root):
        images = sorted(_rglob(root, "image_*.png"), key=_natural)
        return [(i, Path(i).with_name("depth_" + Path(i).name[len("image_"):])) for i in images]

    def decode(self, depth_path, hw, item):
        depth = F.read_png16(depth_path).astype(np.float32) / 1000.0
        return depth, valid_mask(depth, max_depth=self.max_depth), pinhole(*self.intrinsics)


class NYUMatReader(Reader):
    """NYU Depth V2 labeled ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5): ``images``
    [N, 3, W, H] uint8 and ``depths`` [N, W, H] float metres, stored transposed by MATLAB (read back
    as [H, W, 3] / [H, W]). ``indices`` selects frames, 0-based (the official 654-frame test split
    is ``testNdxs - 1`` from ``splits.mat``). Depth <= 0 invalid. Space depth, geometry metric.
    Keys ``nyu_NNNN`` (0-based index)."""

    name, space, geometry = "nyu", "depth", "metric"

    def __init__(self, path, indices=None, max_depth=None, intrinsics=NYU_INTRINSICS):
        self.path, self.intrinsics, self._h5 = os.fspath(path), intrinsics, None
        n = len(self._file()["depths"])
        indices = range(n) if indices is None else [int(i) for i in np.asarray(indices).ravel()]
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise SampleError(f"{self.path}: indices {bad[:5]} outside [0, {n})")
        super().__init__(indices, max_depth)

    def _file(self):
        import h5py  # noqa: PLC0415

        if self._h5 is None or self._pid != os.getpid():  # h5py handles must not cross a fork
            F._require_file(self.path)
            try:
                self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
            except OSError as e:
                raise SampleError(f"{self.path}: cannot read HDF5 .mat ({e})") from None
            missing = {"images", "depths"} - set(self._h5.keys())
            if missing:
                raise SampleError(f"{self.path}: missing datasets {sorted(missing)} (not a v7.3 labeled .mat?)")
        return self._h5

    def __getstate__(self):  # DataLoader workers reopen the file
        return {**self.__dict__, "_h5": None}

    def load(self, i):
        n = self.items[i]
        f = self._file()
        image = np.ascontiguousarray(np.asarray(f["images"][n]).transpose(2, 1, 0))
        depth = np.ascontiguousarray(np.asarray(f["depths"][n], dtype=np.float32).T)
        return self.make_sample(image, depth, valid_mask(depth, max_depth=self.max_depth), f"nyu_{n:04d}",
                                intrinsics=pinhole(*self.intrinsics), meta={"index": n})


class KITTIReader(PairReader):
    """KITTI annotated depth (Eigen/Garg evaluation). Layout: depth
    ``<root>/**/<drive>/proj_depth/groundtruth/image_0{2,3}/<frame>.png`` (the
    ``data_depth_annotated`` train/val tree); images from KITTI raw at
    ``<raw_root>/<date>/<drive>/image_0{2,3}/data/<frame>.png`` with ``date = drive[:10]``
    (``raw_root`` defaults to ``root``). Depth: uint16 PNG / 256 = metres, 0 invalid. Space depth,
    geometry metric. Intrinsics: ``P_rect_0{2,3}`` of ``<raw_root>/<date>/calib_cam_to_cam.txt``
    when present. (Evaluation crops and the 80 m cap belong to the evaluation protocol.)"""

    benchmark = "kitti"  # validation and evaluation use this benchmark's crop and depth range

    name, space, geometry = "kitti", "depth", "metric"

    def __init__(self, root=None, raw_root=None, items=None, max_depth=None):
        base = raw_root if raw_root is not None else root
        self.raw_root = os.fspath(base) if base is not None else None
        self._calib = {}
        super().__init__(root, items, max_depth)

    def find(self, root):
        pairs = []
        for d in _rglob(root, os.path.join("proj_depth", "groundtruth", "image_0[23]", "*.png")):
            p = Path(d)
            drive, cam = p.parents[3].name, p.parent.name
            pairs.append((Path(self.raw_root, drive[:10], drive, cam, "data", p.name), d))
        return pairs

    def key(self, i):  # <drive>_<camera>_<frame> in the standard layout
        p = Path(self.items[i][1])
        if "proj_depth" not in p.parts[:-1]:
            return super().key(i)
        return make_key(f"{p.parents[3].name}_{p.parent.name}_{p.stem}")

    def decode(self, depth_path, hw, item):
        depth = F.read_png16(depth_path).astype(np.float32) / 256.0
        return depth, valid_mask(depth, max_depth=self.max_depth), self._intrinsics(item[0])

    def _intrinsics(self, image_path):
        p = Path(image_path)  # <date>/<drive>/image_0X/data/<frame>.png
        if len(p.parents) < 4:
            return None
        calib, cam = p.parents[3] / "calib_cam_to_cam.txt", p.parents[1].name[-2:]
        if (calib, cam) not in self._calib:
            K = None
            if calib.exists():
                for line in calib.read_text().splitlines():
                    if line.startswith(f"P_rect_{cam}:"):
                        P = [float(v) for v in line.split(":", 1)[1].split()]
                        K = pinhole(P[0], P[5], P[2], P[6])
            self._calib[(calib, cam)] = K
        return self._calib[(calib, cam)]


class DIODEReader(PairReader):
    """DIODE. Layout: ``<split>/<indoors|outdoor>/scene_*/scan_*/<name>.png`` with
    ``<name>_depth.npy`` ([H, W, 1] float32 metres) and ``<name>_depth_mask.npy`` ([H, W], 1 =
    valid) beside it. Valid where the mask is set and depth > 0. Space depth, geometry metric.
    No intrinsics."""

    benchmark = "diode"  # validation and evaluation use this benchmark's crop and depth range

    name, space, geometry = "diode", "depth", "metric"

    def find(self, root):
        return [(d[: -len("_depth.npy")] + ".png", d) for d in _rglob(root, "*_depth.npy")]

    def decode(self, depth_path, hw, item):
        depth = F.read_npy(depth_path).astype(np.float32)
        depth = depth[..., 0] if depth.ndim == 3 else depth
        mask = F.read_npy(depth_path[: -len(".npy")] + "_mask.npy")
        mask = mask[..., 0] if mask.ndim == 3 else mask
        if mask.shape != depth.shape:
            raise SampleError(f"{depth_path}: mask shape {mask.shape} != depth shape {depth.shape}")
        return depth, valid_mask(depth, max_depth=self.max_depth) & (mask > 0), None


class ETH3DReader(PairReader):
    """ETH3D high-res multi-view (DSLR). Layout: depth ``<scene>/ground_truth_masked/dslr_images/
    <NAME>.JPG`` (headerless little-endian float32, 6048x4032, despite the name) with the image at
    ``<scene>/images/dslr_images_undistorted/<NAME>.JPG`` or else ``<scene>/images/dslr_images/``.
    inf (and <= 0) invalid. Space depth (metres), geometry metric. No intrinsics (COLMAP
    ``cameras.txt`` is not parsed)."""

    benchmark = "eth3d"  # validation and evaluation use this benchmark's crop and depth range

    name, space, geometry = "eth3d", "depth", "metric"

    def __init__(self, root=None, items=None, height: int = 4032, width: int = 6048, max_depth=None):
        self.height, self.width = height, width
        super().__init__(root, items, max_depth)

    def find(self, root):
        pairs = []
        for d in _rglob(root, os.path.join("ground_truth_masked", "dslr_images", "*")):
            scene = Path(d).parents[2]
            pairs.append((_first_existing([scene / "images" / "dslr_images_undistorted" / Path(d).name,
                                           scene / "images" / "dslr_images" / Path(d).name]), d))
        return pairs

    def key(self, i):  # image and depth share a name; key the scene + name
        depth = Path(self.items[i][1])
        if "ground_truth_masked" not in depth.parts[:-1]:
            return super().key(i)
        return make_key(f"{depth.parents[2].name}/{depth.name}")

    def decode(self, depth_path, hw, item):
        depth = F.read_raw_float32(depth_path, self.height, self.width)
        return depth, valid_mask(depth, max_depth=self.max_depth), None


class SintelReader(PairReader):
    """MPI Sintel. Layout: ``training/depth/<scene>/frame_NNNN.dpt`` with
    ``training/<final|clean>/<scene>/frame_NNNN.png`` and optional
    ``training/camdata_left/<scene>/frame_NNNN.cam``. Depth: float32 in Blender scene units, close
    to metres: labelled **metric** (treat absolute values with care); non-finite or <= 0 invalid,
    ``max_depth`` optional (sky is very far). Space depth. Intrinsics from the .cam file."""

    benchmark = "sintel"  # validation and evaluation use this benchmark's crop and depth range

    name, space, geometry = "sintel", "depth", "metric"

    def __init__(self, root=None, items=None, pass_name: str = "final", max_depth=None):
        self.pass_name = pass_name
        super().__init__(root, items, max_depth)

    def find(self, root):
        return [(_swap_dir(d, "depth", self.pass_name).with_suffix(".png"), d)
                for d in _rglob(root, os.path.join("depth", "*", "*.dpt"))]

    def decode(self, depth_path, hw, item):
        depth = F.read_dpt(depth_path)
        cam = _swap_dir(depth_path, "depth", "camdata_left", required=False)
        cam = cam.with_suffix(".cam") if cam else None
        K = F.read_sintel_cam(cam)[0] if cam and cam.exists() else None
        return depth, valid_mask(depth, max_depth=self.max_depth), K


# ------------------------------------------------------------------------------ generic readers
def _check_space(space, geometry):
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; valid: {', '.join(SPACES)}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; valid: {', '.join(GEOMETRIES)}")


class _GenericReader(Reader):
    """Shared decoding of the generic readers: items are (image, depth or None, intrinsics json or
    None, key). Integer maps are multiplied by ``depth_scale``; float maps are used as stored.
    Invalid: non-finite, and <= 0 for depth/disparity. No depth file -> unlabeled sample."""

    def __init__(self, items, name, space, geometry, depth_scale=1.0, max_depth=None, exif_transpose=True):
        _check_space(space, geometry)
        self.name, self.space, self.geometry = name, space, geometry
        self.depth_scale, self.exif_transpose = float(depth_scale), exif_transpose
        super().__init__(items, max_depth)

    def load(self, i):
        image_path, depth_path, intr_path, key = self.items[i]
        # exif_transpose: generic folders often hold photos labelled in their upright orientation
        image = F.read_rgb(image_path, exif_transpose=self.exif_transpose)
        K = read_intrinsics_json(intr_path) if intr_path else None
        meta = {"image_path": image_path, "depth_path": depth_path}
        if depth_path is None:
            return Sample.unlabeled(image, self.name, key, intrinsics=K, meta=meta)
        target = scale_integers(F.read_depth(depth_path), self.depth_scale)
        valid = valid_mask(target, self.space, self.max_depth)
        return self.make_sample(image, target, valid, key, intrinsics=K, meta=meta)


def read_intrinsics_json(path) -> np.ndarray:
    """``{"fx", "fy", "cx", "cy"}`` JSON -> 3x3 pinhole matrix."""
    try:
        d = json.loads(Path(path).read_text())
        return pinhole(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SampleError(f"{path}: bad intrinsics JSON ({type(e).__name__}: {e})") from None


class FolderReader(_GenericReader):
    """A folder described by ``root/dataset.yaml`` (keys ``name``, ``space`` depth|disparity|
    log_depth, ``geometry`` metric|uts|utss, ``depth_scale`` multiplier for integer maps, e.g.
    0.001 for millimetre PNGs, ``format`` informative) with ``root/rgb/<key>.(png|jpg|jpeg)``,
    ``root/depth/<key>.(png|npy|pfm|exr|h5|hdf5|dpt)`` and optional ``root/intrinsics/<key>.json``
    ({fx, fy, cx, cy}). Keys may include subfolders. Without a ``depth/`` folder the samples are
    unlabeled (geometry none). This is the layout ``distill.data.synthetic`` writes. EXIF
    orientation is applied to the images unless ``exif_transpose=False``."""

    def __init__(self, root, max_depth=None, exif_transpose: bool = True):
        import yaml  # noqa: PLC0415

        self.root = os.fspath(root)
        cfg_path = os.path.join(self.root, "dataset.yaml")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{cfg_path}: missing (FolderReader needs dataset.yaml)")
        cfg = yaml.safe_load(Path(cfg_path).read_text()) or {}
        for k in ("space", "geometry"):
            if k not in cfg:
                raise ValueError(f"{cfg_path}: missing key {k!r}")
        self.format = cfg.get("format")
        items = self._scan()
        if not items:
            raise FileNotFoundError(f"{self.root}/rgb: no images found")
        super().__init__(items, str(cfg.get("name") or Path(self.root).name), cfg["space"], cfg["geometry"],
                         cfg.get("depth_scale", 1.0), max_depth, exif_transpose)

    def _scan(self):
        rgb_dir, depth_dir = os.path.join(self.root, "rgb"), os.path.join(self.root, "depth")
        labeled = os.path.isdir(depth_dir)
        items = []
        for image in sorted(_rglob(rgb_dir, "*"), key=_natural):
            if os.path.splitext(image)[1].lower() not in IMAGE_EXTS:
                continue
            rel = os.path.splitext(os.path.relpath(image, rgb_dir))[0]
            # a labeled folder with a missing depth file fails (naming it) when the sample is loaded
            depth = _first_existing(os.path.join(depth_dir, rel + e) for e in DEPTH_EXTS) if labeled else None
            intr = os.path.join(self.root, "intrinsics", rel + ".json")
            items.append((image, depth, intr if os.path.exists(intr) else None, make_key(rel)))
        return items


class ListReader(_GenericReader):
    """A text file of ``image_path depth_path`` lines (paths relative to the list file's folder,
    no whitespace inside paths; '#' comments and blank lines skipped; a line with only an image is
    unlabeled). Units and validity as for ``FolderReader``; keys from the image path."""

    def __init__(self, list_file, space: str = "depth", geometry: str = "metric", depth_scale: float = 1.0,
                 name: str | None = None, max_depth=None, exif_transpose: bool = True):
        base = os.path.dirname(os.path.abspath(list_file))
        items = []
        for n, line in enumerate(Path(list_file).read_text().splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 2:
                raise ValueError(f"{list_file}:{n}: expected 'image_path [depth_path]', got {line.strip()!r}")
            image = os.path.join(base, fields[0])
            depth = os.path.join(base, fields[1]) if len(fields) == 2 else None
            items.append((image, depth, None, make_key(fields[0])))
        super().__init__(items, name or Path(list_file).stem.replace(".", "_"), space, geometry,
                         depth_scale, max_depth, exif_transpose)


# ------------------------------------------------------------------------ Hugging Face datasets
class _HFRows:
    """Turns a Hugging Face ``datasets`` row into a ``Sample``. Image column: PIL image (datasets
    already applies EXIF orientation), {bytes, path} dict, or array. Depth column: PIL image
    (e.g. 16-bit PNG), array / nested list, or {bytes, path}; integers are multiplied by
    ``depth_scale``; ``depth_column=None`` gives unlabeled samples."""

    def __init__(self, name, image_column, depth_column, space, geometry, depth_scale, key_column, max_depth):
        if depth_column is not None:
            _check_space(space, geometry)
        self.name, self.image_column, self.depth_column = name, image_column, depth_column
        self.space, self.geometry, self.depth_scale = space, geometry, float(depth_scale)
        self.key_column, self.max_depth = key_column, max_depth

    def key(self, row, fallback: str) -> str:
        return make_key(str(row[self.key_column])) if self.key_column else fallback

    def sample(self, row, key) -> Sample:
        where = f"{self.name}/{key}"
        try:
            image = self._image(row[self.image_column])
            if self.depth_column is None:
                return Sample.unlabeled(image, self.name, key)
            target = scale_integers(self._depth(row[self.depth_column]), self.depth_scale)
        except KeyError as e:
            raise SampleError(f"{where}: missing column {e}; has {sorted(row)}") from None
        except (OSError, ValueError, TypeError) as e:
            raise SampleError(f"{where}: cannot decode ({type(e).__name__}: {e})") from None
        return Sample(image, target, valid_mask(target, self.space, self.max_depth), self.space,
                      self.geometry, self.name, key)

    @staticmethod
    def _pil(value):
        from PIL import Image  # noqa: PLC0415

        if isinstance(value, dict):  # Image(decode=False)
            src = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
            im = Image.open(src)
            im.load()
            return im
        return value if isinstance(value, Image.Image) else None

    def _image(self, value) -> np.ndarray:
        im = self._pil(value)
        if im is not None:
            return F.pil_to_rgb(im)
        a = np.asarray(value)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
            raise ValueError(f"image must be uint8 [H, W, 3|4], got {a.dtype} {a.shape}")
        return np.ascontiguousarray(a[..., :3])

    def _depth(self, value) -> np.ndarray:
        im = self._pil(value)
        a = np.asarray(im) if im is not None else np.asarray(value)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.ndim != 2:
            raise ValueError(f"depth must be [H, W], got {a.shape}")
        return a


def _load_hf(dataset, split, streaming, load_kwargs):
    import datasets  # noqa: PLC0415

    if isinstance(dataset, (str, os.PathLike)):
        dataset = datasets.load_dataset(os.fspath(dataset), split=split, streaming=streaming, **load_kwargs)
    elif split is not None and isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        dataset = dataset[split]
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"pass split=: the dataset has splits {sorted(dataset)}")
    return dataset


class HFDatasetReader(Reader):
    """Map-style reader over a Hugging Face ``datasets.Dataset`` (an object, or a name/path given to
    ``datasets.load_dataset(dataset, split=split, **load_kwargs)``). ``space``/``geometry`` describe
    the depth column; ``depth_scale`` multiplies integer depth (0.001 for millimetre PNGs); invalid:
    non-finite and <= 0 (depth/disparity). Keys: ``key_column`` if given, else the row index.
    For ``streaming=True`` use ``HFIterableReader``."""

    def __init__(self, dataset, image_column="image", depth_column="depth", space="depth", geometry="metric",
                 depth_scale=1.0, split=None, name=None, key_column=None, max_depth=None, **load_kwargs):
        import datasets  # noqa: PLC0415

        if load_kwargs.pop("streaming", False):
            raise ValueError("HFDatasetReader is map-style; use HFIterableReader for streaming=True")
        self.dataset = _load_hf(dataset, split, False, load_kwargs)
        if not isinstance(self.dataset, datasets.Dataset):
            raise ValueError(f"HFDatasetReader needs a map-style datasets.Dataset, got {type(self.dataset).__name__}"
                             " (use HFIterableReader for streaming datasets)")
        self.name = name or _hf_name(dataset, "hf")
        self.rows = _HFRows(self.name, image_column, depth_column, space, geometry, depth_scale, key_column, max_depth)
        self.space, self.geometry = (space, geometry) if depth_column is not None else ("depth", "none")
        super().__init__(range(len(self.dataset)), max_depth)

    def load(self, i):
        n = self.items[i]
        row = self.dataset[n]
        return self.rows.sample(row, self.rows.key(row, f"{n:08d}"))


class HFIterableReader(IterableDataset):
    """Streaming variant of ``HFDatasetReader`` (a ``datasets.IterableDataset``, or a name loaded
    with ``streaming=True``): iterating yields ``Sample``s. Inside DataLoader workers the HF dataset
    shards itself across workers; without ``key_column`` keys are a per-worker running index
    prefixed with the worker id."""

    def __init__(self, dataset, image_column="image", depth_column="depth", space="depth", geometry="metric",
                 depth_scale=1.0, split=None, name=None, key_column=None, max_depth=None, **load_kwargs):
        load_kwargs.pop("streaming", None)
        self.dataset = _load_hf(dataset, split, True, load_kwargs)
        self.name = name or _hf_name(dataset, "hf")
        self.rows = _HFRows(self.name, image_column, depth_column, space, geometry, depth_scale, key_column, max_depth)

    def __iter__(self):
        import torch  # noqa: PLC0415

        info = torch.utils.data.get_worker_info()
        prefix = f"w{info.id}_" if info is not None and info.num_workers > 1 else ""
        for n, row in enumerate(self.dataset):
            yield self.rows.sample(row, self.rows.key(row, f"{prefix}{n:08d}"))


def _hf_name(dataset, default):
    if isinstance(dataset, (str, os.PathLike)):
        return make_key(os.path.basename(os.fspath(dataset).rstrip("/"))) or default
    return make_key(getattr(getattr(dataset, "info", None), "dataset_name", None) or default)


# -------------------------------------------------------------------------------------- registry
READERS = {
    "hypersim": HypersimReader,
    "vkitti2": VKITTI2Reader,
    "tartanair": TartanAirReader,
    "blendedmvs": BlendedMVSReader,
    "irs": IRSReader,
    "megadepth": MegaDepthReader,
    "diml": DIMLReader,
    "hrwsi": HRWSIReader,
    "redweb": ReDWebReader,
    "nyu": NYUReader,
    "nyu_mat": NYUMatReader,
    "kitti": KITTIReader,
    "diode": DIODEReader,
    "eth3d": ETH3DReader,
    "sintel": SintelReader,
    "folder": FolderReader,
    "list": ListReader,
    "hf": HFDatasetReader,
    "hf_iterable": HFIterableReader,
    "synthetic": SyntheticReader,  # scenes rendered on the fly (distill.data.synthetic)
    "shards": ShardReader,  # pseudo-label shards written by distill/pseudolabel.py
}


def build_reader(name: str, /, **kwargs):
    """``READERS[name](**kwargs)`` (``name`` is positional-only, so readers can take a ``name=``
    keyword); an unknown name, or an argument the reader does not take, raises ValueError (one line)."""
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}; valid: {', '.join(sorted(READERS))}")
    if name == "hf" and kwargs.get("streaming"):  # streaming datasets are iterable-only
        name = "hf_iterable"
    params = inspect.signature(READERS[name]).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"reader {name!r} takes no {', '.join(unknown)}; it takes: {', '.join(params)}")
    return READERS[name](**kwargs)
