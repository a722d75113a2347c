"""Quantisation of predictions to 16-bit PNG and of confidence to 8-bit PNG.

Depth / disparity maps with no negative value use the **log** encoding, per sample:

    lo = max(log(min positive value), hi - 40),  hi = log(max value)
    code = 0                                       where x == 0 (disparity: at infinity)
    code = 1 + round((log x - lo) / (hi - lo) * 65534)  elsewhere (values below e^lo -> code 1)
    x    = exp(lo + (code - 1) / 65534 * (hi - lo))

so the relative error is at most (hi - lo) / 65534 / 2 <= 3.1e-4 for any dynamic range up to
e^40 (measured by tests/test_pseudolabel.py on maps spanning 1e-3 .. 1e5).

``log_depth`` maps, and maps with negative values (a relative model without a ReLU head), use the
**linear** encoding ``code = 1 + round((x - lo) / (hi - lo) * 65534)`` with lo, hi the map's
min and max: the error is at most (hi - lo) / 131068, i.e. relative to the map's range (for
log-depth that is an absolute error in log space, i.e. a relative error in depth).

``lo``, ``hi`` and the encoding go into the sample's JSON (``depth``); ``dequantise`` is their
inverse. Non-finite predictions are refused (the sample is reported as an error instead).
Confidence in [0, 1] is stored as ``round(c * 255)``.
"""
from __future__ import annotations

import cv2
import numpy as np

LEVELS = 65535  # codes 1..65535 carry values; 0 is zero (log) / unused (linear)
LOG_RANGE = 40.0  # nats of dynamic range kept by the log encoding


def quantise(x: np.ndarray, space: str) -> tuple[np.ndarray, dict]:
    """float [H, W] -> (uint16 codes, decode parameters)."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"non-finite prediction ({int((~np.isfinite(x)).sum())} pixels)")
    codes = np.zeros(x.shape, dtype=np.uint16)
    if space != "log_depth" and (x.size == 0 or float(x.min()) >= 0):
        positive = x > 0
        if not positive.any():
            return codes, {"encoding": "log", "lo": 0.0, "hi": 0.0, "levels": LEVELS}
        hi = float(np.log(np.float64(x.max())))
        lo = max(float(np.log(np.float64(x[positive].min()))), hi - LOG_RANGE)
        with np.errstate(divide="ignore"):
            logx = np.log(np.where(positive, x, 1.0))
        scale = (LEVELS - 1) / (hi - lo) if hi > lo else 0.0
        v = np.rint((logx - np.float32(lo)) * np.float32(scale)) + 1
        codes[...] = np.clip(v, 1, LEVELS)
        codes[~positive] = 0
        return codes, {"encoding": "log", "lo": lo, "hi": hi, "levels": LEVELS}
    lo, hi = float(x.min()), float(x.max())
    scale = (LEVELS - 1) / (hi - lo) if hi > lo else 0.0
    codes[...] = np.clip(np.rint((x - np.float32(lo)) * np.float32(scale)) + 1, 1, LEVELS)
    return codes, {"encoding": "linear", "lo": lo, "hi": hi, "levels": LEVELS}


def dequantise(codes: np.ndarray, params: dict) -> np.ndarray:
    """uint16 codes + parameters -> float32 values."""
    codes = np.asarray(codes)
    levels = int(params.get("levels", LEVELS))
    lo, hi = float(params["lo"]), float(params["hi"])
    t = (codes.astype(np.float64) - 1) * ((hi - lo) / (levels - 1) if levels > 1 else 0.0) + lo
    if params["encoding"] == "log":
        return np.where(codes > 0, np.exp(t), 0.0).astype(np.float32)
    if params["encoding"] == "linear":
        return t.astype(np.float32)
    raise ValueError(f"unknown depth encoding {params['encoding']!r}")


def quantise_confidence(c: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.asarray(c, dtype=np.float32), 0, 1) * 255).astype(np.uint8)


def dequantise_confidence(codes: np.ndarray) -> np.ndarray:
    return np.asarray(codes).astype(np.float32) / 255.0


def encode_png(a: np.ndarray, level: int = 1) -> bytes:
    """uint8 / uint16 single-channel array -> PNG bytes (OpenCV: fast, keeps 16 bits)."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(level)]
    if level > 0:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]  # smooth maps: cheap and small
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a), params)
    if not ok:
        raise ValueError(f"PNG encoding failed for a {a.dtype} {a.shape} array")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> the stored array, bit depth kept (uint16 stays uint16)."""
    a = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ValueError("not a decodable PNG")
    return a
