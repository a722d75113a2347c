"""Per-image alignment of depth maps: one implementation for losses, metrics and test-time augmentation.

Every function works on rows of [N, P] (one image, or one CutMix region, per row) over the pixels where
``mask`` is true, and has one answer in the degenerate case: an empty row gives a median and mean of
0, and least squares with fewer than two distinct valid predictions gives scale 0 and shift = the
mean valid target (a constant prediction aligns to the best constant, never to a copy of the target). See docs/RECIPE.md#losses and
docs/RECIPE.md#evaluation-protocols.
"""
from __future__ import annotations

import torch

EPS = 1e-6


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dimension of [N, P] where mask is true; 0 for empty rows."""
    count = mask.sum(-1)
    return torch.where(mask, x, torch.zeros_like(x)).sum(-1) / count.clamp_min(1)


def masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Lower median (as ``torch.median``) over the last dimension of [N, P]; 0 for empty rows."""
    med = torch.where(mask, x, torch.full_like(x, float("nan"))).nanmedian(dim=-1).values
    return torch.where(mask.any(-1), med, torch.zeros_like(med))


def lsq_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Per row of [N, P]: s, t minimising sum mask * (s * pred + t - target)^2 (closed form).

    Where the 2x2 system is degenerate (fewer than two distinct valid predictions, so a scale
    cannot be told) s = 0 and t = the mean valid target: the best constant (0 for an empty row).
    """
    m = mask.to(pred.dtype)
    a00 = (m * pred * pred).sum(-1)
    a01 = (m * pred).sum(-1)
    a11 = m.sum(-1)
    b0 = (m * pred * target).sum(-1)
    b1 = (m * target).sum(-1)
    det = a00 * a11 - a01 * a01
    # Relative test: det is a variance times count^2, so compare with the scale of the inputs.
    ok = det > 1e-12 * (a00 * a11).clamp_min(torch.finfo(pred.dtype).tiny)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe_det, torch.zeros_like(det))
    shift = torch.where(ok, (a00 * b1 - a01 * b0) / safe_det, b1 / a11.clamp_min(1))
    return scale, shift


def normalize_median_mad(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - median) / mean|x - median| per row of [N, P] over valid entries (MiDaS / Depth Anything V1)."""
    med = masked_median(x, mask)[:, None]
    mad = masked_mean((x - med).abs(), mask)[:, None]
    return (x - med) / mad.clamp_min(EPS)


def normalize_mean_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per row of [N, P] over valid entries (population std; GP2's UTSS alignment)."""
    mean = masked_mean(x, mask)[:, None]
    std = masked_mean((x - mean) ** 2, mask).clamp_min(0).sqrt()[:, None]
    return (x - mean) / std.clamp_min(EPS)


def as_batch(*tensors):
    """Lift [H, W] inputs to [1, H, W]; report whether to squeeze the outputs back."""
    squeeze = tensors[0].dim() == 2
    return [t[None] if squeeze else t for t in tensors], squeeze


def align_lsq(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Least-squares scale and shift of ``pred`` onto ``target`` per image over valid pixels.

    [H, W] or [B, H, W]. Returns (aligned prediction, scale, shift); the MiDaS / Depth Anything
    protocol applies it to disparities. Solved in float64.
    """
    (p, t, m), squeeze = as_batch(pred, target, mask)
    p64, t64 = p.double().flatten(1), t.double().flatten(1)
    m = m.bool().flatten(1) & torch.isfinite(t64)
    t64 = torch.where(m, t64, torch.zeros_like(t64))
    scale, shift = lsq_scale_shift(p64, t64, m)
    aligned = (scale[:, None] * p64 + shift[:, None]).reshape(p.shape).to(pred.dtype)
    if squeeze:
        return aligned[0], scale[0], shift[0]
    return aligned, scale, shift


def align_median_log(pred_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor):
    """Scale-only alignment (GP2 protocol): add median(log gt - log pred) over valid pixels to the
    predicted log-depth. [H, W] or [B, H, W]. Returns (aligned depth, scale)."""
    (p, g, m), squeeze = as_batch(pred_depth, gt_depth, mask)
    p64, g64 = p.double().flatten(1), g.double().flatten(1)
    m = m.bool().flatten(1) & torch.isfinite(g64) & (g64 > 0) & (p64 > 0)
    diff = torch.where(m, g64.clamp_min(1e-12).log() - p64.clamp_min(1e-12).log(), torch.zeros_like(p64))
    scale = torch.exp(masked_median(diff, m))
    aligned = (p64 * scale[:, None]).reshape(p.shape).to(pred_depth.dtype)
    return (aligned[0], scale[0]) if squeeze else (aligned, scale)


# --- agreement of several predictions (test-time augmentation views, several teachers) ------------
def _lsq_align(p: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per image least-squares s, t with s * p + t ~ ref (``distill.alignment``). p: [K, B, N], ref: [B, N]."""
    k, b, n = p.shape
    rows, target = p.reshape(k * b, n), ref.expand(k, b, n).reshape(k * b, n)
    scale, shift = lsq_scale_shift(rows, target, torch.ones_like(rows, dtype=torch.bool))
    return (scale[:, None] * rows + shift[:, None]).reshape(k, b, n)


def _median_shift(d: torch.Tensor) -> torch.Tensor:
    """Per image median of d [K, B, N] (``distill.alignment.masked_median``), as [K, B, 1]."""
    k, b, n = d.shape
    rows = d.reshape(k * b, n)
    return masked_median(rows, torch.ones_like(rows, dtype=torch.bool)).reshape(k, b, 1)


def combine(preds: torch.Tensor, space) -> tuple[torch.Tensor, torch.Tensor]:
    """Align K predictions [K, B, H, W] of one ``distill.spaces.OutputSpace`` to their mean (utss:
    least-squares scale and shift; uts: median-log scale; metric: none); return (the mean of the
    aligned maps [B, H, W], their relative spread: see ``pseudolabel.tta``)."""
    k, b, h, w = preds.shape
    # float64: a relative (scale-free) model's maps may sit anywhere in magnitude (seen: 1e11), and
    # float32 sums of their squares overflow into NaN labels
    p = preds.reshape(k, b, h * w).double()
    positive = space.space in ("depth", "disparity")
    if space.geometry == "utss":
        aligned = _lsq_align(p, p.mean(0))
    elif space.geometry == "uts":
        if positive:
            logp = torch.log(p.clamp_min(EPS))
            aligned = p * torch.exp(_median_shift(logp.mean(0, keepdim=True) - logp))
        else:
            aligned = p + _median_shift(p.mean(0, keepdim=True) - p)
    else:
        aligned = p
    label = aligned.mean(0)
    if positive and bool((p >= 0).all()):
        label = label.clamp_min(0)  # alignment may dip a never-negative map (ReLU zeros) below 0
    if space.geometry == "utss":
        scale = (label - label.median(-1, keepdim=True).values).abs().mean(-1, keepdim=True).clamp_min(EPS)
        spread = aligned.std(0, unbiased=False) / scale
    elif positive:
        spread = torch.log(aligned.clamp_min(EPS)).std(0, unbiased=False)
    else:
        spread = aligned.std(0, unbiased=False)
    return label.reshape(b, h, w).to(preds.dtype), spread.reshape(b, h, w).to(preds.dtype)
