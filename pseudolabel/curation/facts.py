"""One image -> its content, quality and encoder-input facts; a bad file is a one-line reason.

The content hash is of the fully decoded pixels (EXIF orientation applied, never a JPEG draft
decode), so two files are the same picture exactly when their upright RGB arrays are equal,
whatever their container, metadata or compression. The perceptual hash is imagehash's DCT
``phash`` (64 bits). The encoder input is the image resized (not cropped: a re-cropped copy keeps
its borders' content) to a square.
"""
from __future__ import annotations

import hashlib

import cv2
import imagehash
import numpy as np
from PIL import Image

from pseudolabel.decode import DecodeFailure, exif_orientation, open_image, upright_rgb

GRAY_TOLERANCE = 2  # channels this close (0-255) everywhere: a grayscale picture stored as RGB


def pixel_hash(rgb: np.ndarray) -> str:
    """128 bits of sha1 over the shape and the uint8 RGB pixels."""
    h = hashlib.sha1(np.asarray(rgb.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()[:32]


def image_facts(data, max_pixels: int, embed_size: int) -> tuple[dict, np.ndarray]:
    """``data``: the file's bytes (or a PIL image). Returns (facts, encoder input uint8 [3, S, S])."""
    im = open_image(data)
    w_raw, h_raw = im.size
    if w_raw * h_raw > max_pixels:
        raise DecodeFailure(f"image too large: {w_raw}x{h_raw} > max_pixels {max_pixels} (decompression-bomb guard)")
    orientation = exif_orientation(im)
    source_format = im.format or ""
    rgb = upright_rgb(im, orientation, w_raw, h_raw)
    h, w = rgb.shape[:2]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    spread = int(np.abs(rgb.astype(np.int16) - rgb[..., :1]).max())
    facts = {
        "height": h,
        "width": w,
        "format": source_format,
        "exif_orientation": orientation,
        "pixel_hash": pixel_hash(rgb),
        "phash": str(imagehash.phash(Image.fromarray(rgb))),
        "gray_std": round(float(gray.std()), 3),
        "grayscale": spread <= GRAY_TOLERANCE,
    }
    interpolation = cv2.INTER_AREA if min(h, w) > embed_size else cv2.INTER_CUBIC
    small = cv2.resize(rgb, (embed_size, embed_size), interpolation=interpolation)
    return facts, np.ascontiguousarray(small.transpose(2, 0, 1))
