"""Low-level decoders for the image and depth file formats of common depth datasets.

Every reader raises ``SampleError`` with a one-line message that starts with the file's path when
the file is missing, truncated or malformed, so a data loader can log and skip it. Decoders return
the values as stored (no unit conversion, no invalid-pixel masking): the dataset readers in
``distill.data.readers`` own those rules.

- ``read_rgb(path, exif_transpose=True) -> uint8 [H, W, 3]``
- ``read_png16(path) -> uint16 [H, W]`` (8/16-bit single-channel PNG; float32 for mode 'F')
- ``read_pfm`` / ``write_pfm``, ``read_dpt`` / ``write_dpt`` (Sintel), ``read_exr`` (OpenCV),
  ``read_hdf5(path, key)``, ``read_npy``, ``read_raw_float32(path, height, width)`` (ETH3D)
- ``read_depth(path, hdf5_key=None)``: dispatch on the extension (generic folder / list readers)
"""
from __future__ import annotations

import os
import re
import struct

# OpenCV only decodes EXR when this is set before its first EXR call; respect an explicit user value.
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")

import numpy as np
from PIL import Image, ImageOps

from distill.data.sample import SampleError

DPT_TAG = 202021.25  # Sintel .dpt / .cam magic number (float32)


def _fail(path, what: str) -> SampleError:
    return SampleError(f"{os.fspath(path)}: {what}")


def _require_file(path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _fail(path, "file not found")
    if os.path.getsize(path) == 0:
        raise _fail(path, "empty file (0 bytes)")
    return path


def _open_image(path) -> Image.Image:
    """Open and fully decode with PIL; ``load()`` inside the try so truncated files fail here."""
    path = _require_file(path)
    try:
        im = Image.open(path)
        im.load()
        return im
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as e:
        raise _fail(path, f"cannot decode image ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------ RGB images
def _high_bit_to_uint8(a: np.ndarray) -> np.ndarray:
    """Grayscale of more than 8 bits -> uint8 keeping contrast (clipping would turn most 16-bit
    images white): uint16 keeps its top byte; 32-bit ints are read as 8- or 16-bit by their range;
    floats in [0, 1] are x255, other floats are divided by their maximum."""
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    kind = a.dtype.kind
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    hi = a.max(initial=0)
    if kind in "iu" and hi <= 255:
        return a.astype(np.uint8)
    if kind in "iu" and hi <= 65535:
        return (a // 256).astype(np.uint8)
    scale = 255.0 if kind == "f" and hi <= 1.0 else 255.0 / max(hi, 1e-12)
    return np.rint(np.minimum(a * scale, 255)).astype(np.uint8)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, 3]. Alpha is dropped (the stored colour is what labels refer to);
    palette and CMYK go through PIL's conversion; 16/32-bit and float grayscale are rescaled."""
    if im.mode.startswith("I") or im.mode == "F":
        g = _high_bit_to_uint8(np.asarray(im))
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when going P+transparency -> RGB directly
    return np.array(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)


def read_rgb(path, exif_transpose: bool = True) -> np.ndarray:
    """Image file -> uint8 [H, W, 3] RGB. ``exif_transpose`` applies the EXIF Orientation tag
    (photos); dataset readers pass False because their labels are aligned with the stored grid."""
    im = _open_image(path)
    try:
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        return pil_to_rgb(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise _fail(path, f"cannot convert image ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- depth as images
def read_png16(path) -> np.ndarray:
    """Single-channel 8/16-bit PNG (or TIFF) -> uint16 [H, W] raw stored values (float32 for mode F).
    Multi-channel files are rejected: PIL would silently reduce 16-bit RGB to 8 bits."""
    im = _open_image(path)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        raise _fail(path, f"expected a single-channel 8/16-bit depth image, got PIL mode {im.mode}")
    a = np.asarray(im)
    if a.dtype.kind == "i" and (a.min(initial=0) < 0 or a.max(initial=0) > 65535):
        raise _fail(path, f"values outside uint16 range [{a.min()}, {a.max()}]")
    return a.astype(np.uint16)


def read_exr(path) -> np.ndarray:
    """OpenEXR via OpenCV -> float32 [H, W] (one channel) or [H, W, C] in RGB(A) order."""
    path = _require_file(path)
    import cv2  # noqa: PLC0415 - lazy: the env var above must be set first

    try:
        a = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise _fail(path, f"cannot decode EXR ({str(e).strip().splitlines()[-1]})") from None
    if a is None:
        raise _fail(path, "cannot decode EXR (malformed, or this OpenCV build lacks OpenEXR support)")
    if a.ndim == 3:  # OpenCV returns BGR(A)
        a = a[..., [2, 1, 0, 3][: a.shape[2]]] if a.shape[2] in (3, 4) else a
    return a.astype(np.float32, copy=False)


# -------------------------------------------------------------------------------------- PFM
_PFM_HEADER = re.compile(rb"^(PF|Pf)\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


def read_pfm(path) -> np.ndarray:
    """Portable float map -> float32 [H, W] ('Pf') or [H, W, 3] ('PF'). A negative scale means
    little-endian; rows are stored bottom-to-top, so they are flipped."""
    path = _require_file(path)
    with open(path, "rb") as f:
        data = f.read()
    m = _PFM_HEADER.match(data[:256])
    if not m:
        raise _fail(path, "not a PFM file (bad header)")
    channels = 3 if m.group(1) == b"PF" else 1
    width, height = int(m.group(2)), int(m.group(3))
    try:
        scale = float(m.group(4))
    except ValueError:
        raise _fail(path, f"bad PFM scale {m.group(4)!r}") from None
    count = width * height * channels
    body = data[m.end():]
    if len(body) < 4 * count:
        raise _fail(path, f"truncated PFM: {len(body)} bytes for {width}x{height}x{channels} floats")
    a = np.frombuffer(body, dtype="<f4" if scale < 0 else ">f4", count=count)
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.flipud(a.reshape(shape)).astype(np.float32)


def write_pfm(path, array: np.ndarray) -> None:
    """float [H, W] or [H, W, 3] -> little-endian PFM (used for fixtures and exports)."""
    a = np.asarray(array, dtype="<f4")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"write_pfm: expected [H, W] or [H, W, 3], got {a.shape}")
    kind = b"PF" if a.ndim == 3 else b"Pf"
    with open(path, "wb") as f:
        f.write(kind + b"\n%d %d\n-1.0\n" % (a.shape[1], a.shape[0]))
        f.write(np.ascontiguousarray(np.flipud(a)).tobytes())


# ------------------------------------------------------------------------------- Sintel .dpt
def read_dpt(path) -> np.ndarray:
    """Sintel depth: float32 tag 202021.25, int32 width, int32 height, float32 row-major data."""
    path = _require_file(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12:
        raise _fail(path, "truncated .dpt header")
    tag, width, height = struct.unpack("<fii", data[:12])
    if tag != np.float32(DPT_TAG):
        raise _fail(path, f"bad .dpt tag {tag} (expected {DPT_TAG})")
    if not (0 < width < 100000 and 0 < height < 100000):
        raise _fail(path, f"bad .dpt size {width}x{height}")
    if len(data) - 12 < 4 * width * height:
        raise _fail(path, f"truncated .dpt: {len(data) - 12} bytes for {width}x{height} floats")
    return np.frombuffer(data, dtype="<f4", count=width * height, offset=12).reshape(height, width).copy()


def write_dpt(path, depth: np.ndarray) -> None:
    d = np.asarray(depth, dtype="<f4")
    if d.ndim != 2:
        raise ValueError(f"write_dpt: expected [H, W], got {d.shape}")
    with open(path, "wb") as f:
        f.write(struct.pack("<fii", DPT_TAG, d.shape[1], d.shape[0]))
        f.write(np.ascontiguousarray(d).tobytes())


# ---------------------------------------------------------------------------- arrays on disk
def read_hdf5(path, key: str) -> np.ndarray:
    """One dataset of an HDF5 file, fully read."""
    import h5py  # noqa: PLC0415 - only the HDF5 readers need it

    path = _require_file(path)
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise _fail(path, f"no HDF5 dataset {key!r}; has {sorted(f.keys())}")
            return np.asarray(f[key][()])
    except SampleError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _fail(path, f"cannot read HDF5 ({type(e).__name__}: {e})") from None


def read_npy(path) -> np.ndarray:
    """``.npy`` array; pickles are refused (untrusted data must not run code)."""
    path = _require_file(path)
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _fail(path, f"cannot read .npy ({type(e).__name__}: {e})") from None
    if not isinstance(a, np.ndarray):  # .npz archives load as NpzFile
        raise _fail(path, "expected a single .npy array, got an archive")
    return a


def read_raw_float32(path, height: int, width: int) -> np.ndarray:
    """Headerless little-endian float32 [height, width] (ETH3D depth; inf marks invalid pixels)."""
    path = _require_file(path)
    size, want = os.path.getsize(path), 4 * height * width
    if size != want:
        raise _fail(path, f"raw float32 file has {size} bytes, expected {want} for {width}x{height}")
    return np.fromfile(path, dtype="<f4").reshape(height, width).astype(np.float32)


def read_depth(path, hdf5_key: str | None = None) -> np.ndarray:
    """Depth/disparity file of any supported format -> [H, W] array of stored values (integers for
    PNG, floats otherwise). Multi-channel float maps keep their first channel; [H, W, 1] is squeezed.
    HDF5 uses ``hdf5_key``, else 'depth', else the file's only dataset."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in (".png", ".tif", ".tiff"):
        a = read_png16(path)
    elif ext == ".npy":
        a = read_npy(path)
    elif ext == ".pfm":
        a = read_pfm(path)
    elif ext == ".exr":
        a = read_exr(path)
    elif ext == ".dpt":
        a = read_dpt(path)
    elif ext in (".h5", ".hdf5"):
        a = read_hdf5(path, hdf5_key or _default_hdf5_key(path))
    else:
        raise _fail(path, f"unsupported depth format {ext!r}")
    if a.ndim == 3:
        a = a[..., 0]
    if a.ndim != 2:
        raise _fail(path, f"expected a 2-D depth map, got shape {a.shape}")
    return a


def _default_hdf5_key(path) -> str:
    import h5py  # noqa: PLC0415

    path = _require_file(path)
    try:
        with h5py.File(path, "r") as f:
            keys = list(f.keys())
    except OSError as e:
        raise _fail(path, f"cannot read HDF5 ({e})") from None
    if "depth" in keys or len(keys) != 1:
        return "depth"
    return keys[0]


def read_sintel_cam(path) -> tuple[np.ndarray, np.ndarray]:
    """Sintel ``.cam``: float32 tag 202021.25, then float64 3x3 intrinsics M and 3x4 extrinsics N."""
    path = _require_file(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 + 8 * 21:
        raise _fail(path, "truncated .cam file")
    if struct.unpack("<f", data[:4])[0] != np.float32(DPT_TAG):
        raise _fail(path, "bad .cam tag")
    m = np.frombuffer(data, dtype="<f8", count=21, offset=4)
    return m[:9].reshape(3, 3).copy(), m[9:].reshape(3, 4).copy()
