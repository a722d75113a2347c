"""One input -> the model's input image plus what to store; bad inputs fail with one-line reasons.

``decode_item`` reads the header first (size, format, EXIF orientation), refuses images larger
than ``max_pixels`` before decoding them (decompression bombs), and asks the JPEG decoder for a
reduced DCT scale (``PIL.Image.draft``, 1/2 .. 1/8) when the largest size it needs is at most
half the stored size, so a 24-megapixel photo costs about what a 1.5-megapixel one does. The
image is turned upright (EXIF orientation), converted to RGB exactly as ``distill.data.formats``
does (palette, RGBA, CMYK, 16-bit, ...), and made the model input by the job's
``distill.inference.InputRule`` (the teacher's image processor by default). Stored re-encoded
images are shrunk with area averaging where that is more than 2x.

What is stored (``store_image``):
- ``original``: the file's bytes, when they already are upright RGB/L in the format of the
  job's image field (``image_ext``); otherwise (EXIF-rotated, CMYK, palette, RGBA, 16-bit, other
  formats) the upright RGB the teacher saw, re-encoded at full size.
- ``reencode``: the upright RGB, resized so its longer side is at most ``image_max_side``
  (never enlarged).
- ``none``: no image (decoded samples read the source file, when it is one).
Decoded samples have the stored image's size (the original size unless re-encoded smaller).
"""
from __future__ import annotations

import io
import os
import struct
import tarfile
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from distill.data.formats import pil_to_rgb
from distill.inference import InputRule
from pseudolabel.inputs import is_selected, wds_members

# EXIF orientation -> the PIL transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_KEEP_MODES = ("RGB", "L")


class DecodeFailure(Exception):
    """An input that cannot be labeled; ``str(err)`` is the one-line reason for errors.jsonl."""


@dataclass(frozen=True)
class DecodePlan:
    rules: tuple[InputRule, ...]  # one per teacher
    store_image: str = "original"
    image_max_side: int = 1024
    image_ext: str = "jpg"
    jpeg_quality: int = 95
    draft: bool = True
    max_pixels: int = 100_000_000


def fit_within(h: int, w: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def encode_image(rgb: np.ndarray, ext: str, quality: int) -> bytes:
    im = Image.fromarray(rgb)
    buf = io.BytesIO()
    if ext == "jpg":
        im.save(buf, format="JPEG", quality=quality)
    elif ext == "webp":
        im.save(buf, format="WEBP", quality=quality)
    else:
        im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - a malformed EXIF block only loses the orientation
        return 1


def _resize(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize for storage (not the model input): area averaging when shrinking more than 2x."""
    h, w = rgb.shape[:2]
    if (h, w) == tuple(hw):
        return rgb
    shrink = min(hw[0] / h, hw[1] / w)
    interpolation = cv2.INTER_AREA if shrink < 0.5 else cv2.INTER_CUBIC
    return cv2.resize(rgb, (hw[1], hw[0]), interpolation=interpolation)


def open_image(data) -> Image.Image:
    if isinstance(data, Image.Image):
        return data
    if not data:
        raise DecodeFailure("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise DecodeFailure("not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise DecodeFailure(f"image too large ({e})") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise DecodeFailure(f"cannot read image header ({type(e).__name__}: {e})") from None


def upright_rgb(im, orientation: int, w_raw: int, h_raw: int) -> np.ndarray:
    """Decode (at the draft scale, if one was set), apply the EXIF orientation, uint8 RGB; any
    decoding error is one ``DecodeFailure`` (naming the file's own ``w_raw`` x ``h_raw``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd but decodable files (EXIF, ICC, palette)
            im.load()
            if orientation in _TRANSPOSE:
                im = im.transpose(_TRANSPOSE[orientation])
            rgb = pil_to_rgb(im)
    except DecodeFailure:
        raise
    except MemoryError:
        raise DecodeFailure(f"out of memory decoding a {w_raw}x{h_raw} image") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError, TypeError) as e:
        raise DecodeFailure(f"cannot decode image ({type(e).__name__}: {e})") from None
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise DecodeFailure(f"decoded to an empty array {rgb.shape}")
    return rgb


def decode_item(data, plan: DecodePlan) -> dict:
    """``data``: the file's bytes (or a PIL image). Returns ``inputs`` (per teacher, its model input
    [3, h, w], ``InputRule.prepare``), ``image_hw`` (the size of the stored image, which decoded samples have),
    ``original_hw``, ``stored`` (bytes or None), ``stored_how`` and ``meta``."""
    im = open_image(data)
    w_raw, h_raw = im.size
    if w_raw < 1 or h_raw < 1:
        raise DecodeFailure(f"image has no pixels ({w_raw}x{h_raw})")
    if w_raw * h_raw > plan.max_pixels:
        raise DecodeFailure(f"image too large: {w_raw}x{h_raw} = {w_raw * h_raw} pixels > max_pixels {plan.max_pixels} (decompression-bomb guard)")
    orientation = exif_orientation(im)
    swap = orientation in (5, 6, 7, 8)
    h0, w0 = (w_raw, h_raw) if swap else (h_raw, w_raw)
    source_format, source_mode = im.format or "", im.mode
    sides = [rule.largest_input_side(h0, w0) for rule in plan.rules]
    inf_hw = None if None in sides else (max(s[0] for s in sides), max(s[1] for s in sides))

    keep_original = (
        plan.store_image == "original" and isinstance(data, (bytes, bytearray, memoryview))
        and _FORMAT_EXT.get(source_format) == plan.image_ext and orientation == 1 and source_mode in _KEEP_MODES
    )
    if plan.store_image == "reencode":
        image_hw, how = fit_within(h0, w0, plan.image_max_side), "reencoded"
    elif plan.store_image == "original":
        image_hw, how = (h0, w0), ("original" if keep_original else "reencoded")
    else:
        image_hw, how = (h0, w0), "none"
    # The largest size anything below needs, upright.
    need = None if inf_hw is None else (
        inf_hw if how in ("original", "none") else (max(inf_hw[0], image_hw[0]), max(inf_hw[1], image_hw[1])))
    if plan.draft and need is not None and source_format == "JPEG" and need[0] * 2 <= h0 and need[1] * 2 <= w0:
        request = (need[0], need[1]) if swap else (need[1], need[0])  # PIL wants (w, h) of the stored grid
        try:
            im.draft(im.mode, request)
        except (OSError, ValueError):
            pass  # decode at full size
    rgb = upright_rgb(im, orientation, w_raw, h_raw)

    stored = None
    if how == "original":
        stored = bytes(data)
    elif how == "reencoded":
        stored = encode_image(_resize(rgb, image_hw), plan.image_ext, plan.jpeg_quality)
    meta = {
        "source_format": source_format,
        "source_mode": source_mode,
        "exif_orientation": orientation,
        "decoded_size": [int(rgb.shape[0]), int(rgb.shape[1])],
    }
    return {"inputs": [rule.prepare(rgb) for rule in plan.rules], "image_hw": image_hw, "original_hw": (h0, w0),
            "stored": stored, "stored_how": how, "meta": meta}


class ByteSource:
    """Reads an input's bytes from its listing entry: a file, a tar member by offset, a row of a
    Hugging Face dataset, or a member met while streaming a URL (``expand``). Opens lazily (one
    per DataLoader worker, picklable)."""

    def __init__(self, kind: str, hf: dict | None = None, selection: str | None = None):
        self.kind, self.hf, self.selection = kind, hf, selection  # selection: a frozen .npy of selected id hashes
        self._tars: dict[str, int] = {}
        self._dataset = None
        self._selected = None

    def __getstate__(self):
        return {"kind": self.kind, "hf": self.hf, "selection": self.selection, "_tars": {}, "_dataset": None,
                "_selected": None}

    def close(self):
        for fd in self._tars.values():
            os.close(fd)
        self._tars.clear()

    def expand(self, item: dict):
        """The inputs of a listing entry: itself, or for a URL the samples of the tar it streams."""
        if "url" in item:
            if self.selection and self._selected is None:
                self._selected = np.load(self.selection)
            yield from (x for x in stream_tar(item["url"]) if "error" in x or is_selected(self._selected, x["id"]))
        else:
            yield item

    def read(self, item: dict):
        if "error" in item:
            raise DecodeFailure(item["error"])
        if "data" in item:
            return item["data"]
        if "file" in item:
            try:
                with open(item["file"], "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise DecodeFailure("file not found") from None
            except OSError as e:
                raise DecodeFailure(f"cannot read file ({type(e).__name__}: {e.strerror or e})") from None
        if "tar" in item:
            return self._read_member(item)
        return self._read_row(item["row"])

    def _read_member(self, item):
        tar = item["tar"]
        try:
            if tar not in self._tars:
                if len(self._tars) >= 16:
                    self.close()
                self._tars[tar] = os.open(tar, os.O_RDONLY)
            data = os.pread(self._tars[tar], item["size"], item["offset"])
        except OSError as e:
            raise DecodeFailure(f"cannot read tar member ({type(e).__name__}: {e.strerror or e})") from None
        if len(data) != item["size"]:
            raise DecodeFailure(f"tar member truncated ({len(data)} of {item['size']} bytes)")
        return data

    def _read_row(self, row: int):
        if self._dataset is None:
            from pseudolabel.inputs import load_hf  # noqa: PLC0415 - datasets only for HF inputs

            self._dataset = load_hf(self.hf["name"], self.hf["split"], self.hf["image_column"])
        try:
            value = self._dataset[row][self.hf["image_column"]]
        except Exception as e:  # noqa: BLE001 - a bad row is that row's error
            raise DecodeFailure(f"cannot read dataset row ({type(e).__name__}: {e})") from None
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                return ByteSource.read(self, {"file": value["path"]})
            raise DecodeFailure("image cell holds neither bytes nor a path")
        if isinstance(value, (bytes, bytearray, Image.Image)):
            return value
        if value is None:
            raise DecodeFailure("image cell is empty")
        try:
            return Image.fromarray(np.asarray(value))
        except (TypeError, ValueError) as e:
            raise DecodeFailure(f"image cell is not an image ({type(e).__name__})") from None


def open_url(url: str):
    """A binary stream of a WebDataset URL: ``pipe:COMMAND`` through webdataset (which checks the
    command's exit status on close), anything else through fsspec (s3://, gs://, https://, file)."""
    if url.startswith("pipe:"):
        import webdataset  # noqa: PLC0415

        return webdataset.gopen(url, "rb")
    import fsspec  # noqa: PLC0415 - a datasets dependency; s3fs / gcsfs / ... for their schemes

    return fsspec.open(url, "rb").open()


def stream_tar(url: str):
    """The samples of a streamed WebDataset tar, in order, as items with their first image
    member's bytes (``data``); a sample without an image, or the rest of a stream that breaks off,
    becomes an error item. Members of one sample are consecutive (the WebDataset convention), so
    one sample is held at a time."""
    key = image = None
    count = 0

    def sample():
        sid = f"{url}:{key}"
        if image is None:
            return {"id": sid, "path": sid, "error": "no image member in this WebDataset sample"}
        return {"id": sid, "path": f"{url}:{image[0]}", "data": image[1]}

    try:
        stream = open_url(url)
    except Exception as e:  # noqa: BLE001 - an unreachable URL is that unit's error, not a crash
        yield {"id": f"{url}:", "path": url, "error": f"cannot open the URL ({type(e).__name__}: {e})"}
        return
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for name_key, member, is_image_member in wds_members(tar):
                if name_key != key:
                    if key is not None:
                        yield sample()
                        count += 1
                    key, image = name_key, None
                if image is None and is_image_member:
                    image = (member.name, tar.extractfile(member).read())
    except Exception as e:  # noqa: BLE001 - tarfile, the pipe's exit status, the network: the stream's error
        yield {"id": f"{url}:", "path": url, "error": f"stream broke off after {count} samples ({type(e).__name__}: {e})"}
        return
    if key is not None:
        yield sample()
