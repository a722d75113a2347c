"""Output spaces of depth models and the conversions between them.

A depth map is described by two facts:
- ``space``: what the numbers are: ``depth`` (distance along the optical axis), ``disparity``
  (1 / depth) or ``log_depth``.
- ``geometry``: what they are known up to: ``metric`` (exact), ``uts`` (an unknown scale of depth,
  i.e. an unknown shift of log-depth), ``utss`` (an unknown scale *and shift*, of disparity in
  practice) or ``none`` (no geometric meaning, e.g. an unlabeled image).

Only ``metric`` and ``uts`` maps give an undistorted point cloud; a ``utss`` map must first be
aligned to ground truth (see ``distill.metrics``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

SPACES = ("depth", "disparity", "log_depth")
GEOMETRIES = ("metric", "uts", "utss", "none")
EPS = 1e-6


@dataclass(frozen=True)
class OutputSpace:
    space: str
    geometry: str

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"unknown depth space {self.space!r}; valid: {', '.join(SPACES)}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {self.geometry!r}; valid: {', '.join(GEOMETRIES)}")

    @property
    def gives_point_cloud(self) -> bool:
        return is_complete(self.geometry)

    def to_dict(self) -> dict:
        return asdict(self)


# Geometrically complete: known up to at most one scale of depth, so shape (a point cloud) is known.
COMPLETE_GEOMETRIES = ("metric", "uts")


def is_complete(geometry: str) -> bool:
    return geometry in COMPLETE_GEOMETRIES


# What Depth Anything's two transformers heads produce.
RELATIVE_DISPARITY = OutputSpace("disparity", "utss")  # ReLU head
METRIC_DEPTH = OutputSpace("depth", "metric")  # max_depth * sigmoid head
# GP2 teacher: the metric head read as depth up to scale (max_depth is then a unit, not metres).
DEPTH_UP_TO_SCALE = OutputSpace("depth", "uts")


def _as_tensor(x):
    return (torch.from_numpy(np.asarray(x)), True) if not torch.is_tensor(x) else (x, False)


def convert(x, src: str, dst: str, eps: float = EPS):
    """Convert a map between ``depth``, ``disparity`` and ``log_depth`` (numpy or torch).

    Non-positive depth or disparity is clamped to ``eps`` before inversion or log, so the result is
    finite; mask such pixels out yourself where they mean "invalid".
    """
    for name in (src, dst):
        if name not in SPACES:
            raise ValueError(f"unknown depth space {name!r}; valid: {', '.join(SPACES)}")
    t, was_numpy = _as_tensor(x)
    if src == dst:
        out = t
    elif src == "log_depth":
        out = torch.exp(t) if dst == "depth" else torch.exp(-t)
    elif dst == "log_depth":
        log = torch.log(t.clamp_min(eps))
        out = log if src == "depth" else -log
    else:  # depth <-> disparity
        out = 1.0 / t.clamp_min(eps)
    return out.numpy() if was_numpy else out


def to_depth(x, space: str, eps: float = EPS):
    return convert(x, space, "depth", eps)


def to_disparity(x, space: str, eps: float = EPS):
    return convert(x, space, "disparity", eps)


def to_log_depth(x, space: str, eps: float = EPS):
    return convert(x, space, "log_depth", eps)


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def point_cloud(depth, intrinsics, mask=None) -> np.ndarray:
    """Back-project a depth map [H, W] through a 3x3 pinhole matrix to points [N, 3] (camera frame).

    Pixel (u, v) has its centre at (u, v) in the convention of ``intrinsics`` (cx, cy in pixels).
    Only pixels where ``mask`` is true (default: finite positive depth) are returned, row-major.
    """
    depth = np.asarray(depth.detach().cpu() if torch.is_tensor(depth) else depth, dtype=np.float64)
    k = np.asarray(intrinsics, dtype=np.float64)
    if depth.ndim != 2 or k.shape != (3, 3):
        raise ValueError(f"point_cloud needs depth [H, W] and a 3x3 intrinsics matrix, got {depth.shape} and {k.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    v, u = np.nonzero(valid)
    z = depth[v, u]
    x = (u - k[0, 2]) * z / k[0, 0]
    y = (v - k[1, 2]) * z / k[1, 1]
    return np.stack([x, y, z], axis=1)


def prediction_point_cloud(prediction, output_space: OutputSpace, intrinsics, mask=None) -> np.ndarray:
    """Point cloud from a model prediction in its output space (refuses shift-ambiguous maps)."""
    if not output_space.gives_point_cloud:
        raise ValueError(
            f"a {output_space.space} map with geometry {output_space.geometry!r} has an unknown shift: "
            "align it to ground truth first (distill.alignment.align_lsq), then build the point cloud"
        )
    return point_cloud(to_depth(prediction, output_space.space), intrinsics, mask)


def output_space_for(kind: str) -> OutputSpace:
    """What an objective on labeled data teaches: GP2 depth up to scale (metric head), SSI disparity up
    to scale and shift."""
    return DEPTH_UP_TO_SCALE if kind == "gp2" else RELATIVE_DISPARITY


def student_output_space(label_geometry: str) -> OutputSpace:
    """What a student learns from pseudo-labels of ``label_geometry``: a shift-ambiguous teacher's
    disparity up to scale and shift, anything complete as depth up to scale."""
    return RELATIVE_DISPARITY if label_geometry == "utss" else DEPTH_UP_TO_SCALE


# --- protocols: how a prediction in an output space is compared with ground truth ----------------
PROTOCOLS = ("affine-disparity", "scale-log", "metric")


def default_protocol(output_space: OutputSpace) -> str:
    """affine-disparity for shift-ambiguous maps, scale-log for depth up to scale, else metric."""
    return {"utss": "affine-disparity", "uts": "scale-log"}.get(output_space.geometry, "metric")


def check_protocol(protocol: str, output_space: OutputSpace, gt_geometry: str = "metric") -> None:
    """Refuse protocols that mean nothing for this model output or ground truth (ValueError, one line)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    out = f"{output_space.space}/{output_space.geometry}"
    if protocol == "metric" and output_space.geometry != "metric":
        raise ValueError(f"protocol 'metric' needs a model with metric output; this model predicts {out} "
                        f"(use {default_protocol(output_space)})")
    if protocol == "scale-log" and not is_complete(output_space.geometry):
        raise ValueError(f"protocol 'scale-log' needs depth up to scale or better; this model predicts {out} "
                        "(use affine-disparity)")
    if gt_geometry == "none":
        raise ValueError("the benchmark folder has no depth labels")
    if gt_geometry == "utss" and protocol != "affine-disparity":
        raise ValueError(f"ground truth known up to scale and shift allows only affine-disparity, not {protocol!r}")
    if gt_geometry == "uts" and protocol == "metric":
        raise ValueError("ground truth known up to scale cannot be scored with protocol 'metric'")
