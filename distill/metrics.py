"""Depth evaluation: per-image alignment, the standard metrics, benchmark crops and depth caps.

Metrics are computed per image (float64) and averaged over images; images with fewer than
``MIN_VALID_PIXELS`` valid pixels are skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from distill.alignment import align_lsq, align_median_log, as_batch
from distill.spaces import PROTOCOLS, default_protocol

MIN_VALID_PIXELS = 10
METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3")
def per_image_metrics(pred_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor) -> dict:
    """Each metric as a float64 tensor [B], plus ``valid`` (bool [B]: at least 10 valid pixels).

    Valid pixels: mask true, finite positive ground truth. Predictions are clamped to >= 1e-6 so
    logs stay finite. silog = sqrt(mean d^2 - 0.5 (mean d)^2), d = log gt - log pred (Depth Anything
    V2's definition); d_k = fraction with max(p/g, g/p) < 1.25^k.
    """
    (p, g, m), _ = as_batch(pred_depth, gt_depth, mask)
    p, g = p.double().flatten(1), g.double().flatten(1)
    m = m.bool().flatten(1) & torch.isfinite(g) & (g > 0)
    g = torch.where(m, g, torch.ones_like(g))
    p = torch.where(m, p.clamp_min(1e-6), torch.ones_like(p))
    n = m.sum(-1).clamp_min(1)

    def mean(x):
        return torch.where(m, x, torch.zeros_like(x)).sum(-1) / n

    diff, log_diff = p - g, torch.log(g) - torch.log(p)
    ratio = torch.maximum(p / g, g / p)
    out = {
        "abs_rel": mean(diff.abs() / g),
        "sq_rel": mean(diff**2 / g),
        "rmse": mean(diff**2).sqrt(),
        "rmse_log": mean(log_diff**2).sqrt(),
        "log10": mean((log_diff / math.log(10)).abs()),
        "silog": (mean(log_diff**2) - 0.5 * mean(log_diff) ** 2).clamp_min(0).sqrt(),
    }
    for k in (1, 2, 3):
        out[f"d{k}"] = mean((ratio < 1.25**k).double())
    out["valid"] = m.sum(-1) >= MIN_VALID_PIXELS
    return out


def depth_metrics(pred_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """abs_rel, sq_rel, rmse, rmse_log, log10, silog, d1, d2, d3: per image, averaged over the images
    with at least 10 valid pixels (NaN when there is none), plus ``num_images`` counted."""
    per_image = per_image_metrics(pred_depth, gt_depth, mask)
    valid = per_image.pop("valid")
    result = {k: (float(v[valid].mean()) if bool(valid.any()) else float("nan")) for k, v in per_image.items()}
    result["num_images"] = int(valid.sum())
    return result


# --- benchmark crops and caps ---------------------------------------------------------------------


def _box_mask(height: int, width: int, rows: tuple[float, float], cols: tuple[float, float]) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[int(rows[0] * height) : int(rows[1] * height), int(cols[0] * width) : int(cols[1] * width)] = True
    return mask


def nyu_eigen_crop(height: int = 480, width: int = 640) -> torch.Tensor:
    """NYU Depth V2 Eigen crop: rows 45:471, cols 41:601 on 640x480 (scaled for other sizes)."""
    return _box_mask(height, width, (45 / 480, 471 / 480), (41 / 640, 601 / 640))


def kitti_garg_crop(height: int, width: int) -> torch.Tensor:
    """KITTI Garg crop, as fractions of the image size."""
    return _box_mask(height, width, (0.40810811, 0.99189189), (0.03594771, 0.96405229))


def depth_range_mask(gt_depth: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Valid ground truth: finite and within [min_depth, max_depth]."""
    return torch.isfinite(gt_depth) & (gt_depth >= min_depth) & (gt_depth <= max_depth)


@dataclass(frozen=True)
class Benchmark:
    """One evaluation benchmark, the one record that evaluation, metrics and the model card read."""
    name: str
    title: str  # as the model card names it
    reader: str | None  # a name of distill.data.readers.READERS; None: DA-2K's pair annotations
    depth_range: tuple[float, float] | None = None  # metres: predictions clamped to it, ground truth outside unscored
    crop: Callable | None = None  # (height, width) -> bool mask; None: the whole image
    range_source: str = "-"

    @property
    def crop_name(self) -> str | None:
        return {nyu_eigen_crop: "eigen", kitti_garg_crop: "garg"}.get(self.crop)


# nyu, kitti: docs/RECIPE.md. eth3d, diode: the ranges of Marigold's evaluation code, which later
# relative-depth papers reuse. sintel: an assumption (the MiDaS-era cap; Sintel's sky and far
# background would otherwise dominate). folder: the reader's valid mask, optionally ``--max-depth``.
BENCHMARKS = {b.name: b for b in (
    Benchmark("nyu", "NYU Depth V2", "nyu", (1e-3, 10.0), nyu_eigen_crop, "docs/RECIPE.md"),
    Benchmark("kitti", "KITTI", "kitti", (1e-3, 80.0), kitti_garg_crop, "docs/RECIPE.md"),
    Benchmark("eth3d", "ETH3D", "eth3d", (1e-5, math.inf), None, "Marigold's evaluation code"),
    Benchmark("sintel", "Sintel", "sintel", (1e-3, 72.0), None, "assumption (MiDaS-era cap)"),
    Benchmark("diode", "DIODE", "diode", (0.6, 350.0), None, "Marigold's evaluation code"),
    Benchmark("folder", "a labeled folder", "folder"),
    Benchmark("da2k", "DA-2K", None),
)}


def benchmark_mask(benchmark: str, gt_depth: torch.Tensor) -> torch.Tensor:
    """The evaluation mask of a benchmark with a published range: ground truth finite and in its depth
    range, inside its crop if it has one (``nyu``: Eigen crop, 1e-3..10 m; ``kitti``: Garg crop, 1e-3..80 m)."""
    record = BENCHMARKS.get(benchmark)
    if record is None or record.depth_range is None:
        known = [b.name for b in BENCHMARKS.values() if b.depth_range]
        raise ValueError(f"no crop/range for benchmark {benchmark!r}; known: {', '.join(known)}")
    mask = depth_range_mask(gt_depth, *record.depth_range)
    if record.crop is not None:
        h, w = gt_depth.shape[-2:]
        mask = mask & record.crop(h, w).to(gt_depth.device)
    return mask


# --- protocols --------------------------------------------------------------------------------------

def protocol_depth(pred, output_space, gt_depth, mask, protocol: str | None = None, depth_range=None) -> torch.Tensor:
    """A prediction [B, H, W] in ``output_space`` turned into depth comparable with ``gt_depth``.

    ``affine-disparity`` (Depth Anything / MiDaS): least-squares scale and shift of the predicted
    disparity onto 1 / gt, then back to depth. ``scale-log`` (GP2): median log-ratio scale of the
    predicted depth. ``metric``: the predicted depth as is. The result is clamped to
    ``depth_range`` (min, max; a benchmark's fixed range) when given, else left as it is.
    """
    from distill.spaces import to_depth, to_disparity

    protocol = protocol or default_protocol(output_space)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    mask = mask.bool() & torch.isfinite(gt_depth) & (gt_depth > 0)
    if protocol == "affine-disparity":
        gt_disparity = 1.0 / torch.where(mask, gt_depth, torch.ones_like(gt_depth))
        aligned, _, _ = align_lsq(to_disparity(pred, output_space.space).float(), gt_disparity.float(), mask)
        depth = 1.0 / aligned.clamp_min(1e-8)
    elif protocol == "scale-log":
        depth, _ = align_median_log(to_depth(pred, output_space.space).float(), gt_depth.float(), mask)
    else:
        depth = to_depth(pred, output_space.space).float()
    # Only a benchmark's fixed, published range: nothing may read this image's ground truth to shape
    # the prediction beyond the protocol's alignment.
    return depth.clamp(*depth_range) if depth_range is not None else depth
