"""Depth losses of MiDaS, Depth Anything V1/V2, GP2 and feature alignment (definitions: docs/RECIPE.md#losses).

Conventions shared by every loss here:
- ``pred``, ``target``: float [B, H, W]; ``mask``: bool [B, H, W] of valid pixels. Non-finite targets
  are treated as invalid. Invalid pixels never reach a log, a division or a gradient.
- Computed in float32 (float64 stays float64) with autocast disabled, whatever the caller's precision.
- An empty mask gives a zero loss with a zero, finite gradient.
- ``regions`` (optional bool [B, R, H, W]): sub-images aligned separately, e.g. the two CutMix
  regions. Per-image losses weight region r of an image by its area / (H * W) (docs/RECIPE.md#cutmix
  loss); pooled losses pool the pixels of all regions, which weights them by area already.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.alignment import lsq_scale_shift, masked_mean, masked_median, normalize_mean_std, normalize_median_mad

EPS = 1e-6  # floor of normalisers
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _float32(fn):
    """Run a loss in float32 with autocast off, so bf16/fp16 training gets exact reductions."""

    def cast(x):
        return x.float() if torch.is_tensor(x) and x.dtype in _LOW_PRECISION else x

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that stays attached to the graph, so backward() works and gives zero gradients."""
    return (like * 0.0).sum()


def drop_largest_losses(loss: torch.Tensor, mask: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """The mask without each sample's ``floor(fraction * n_valid)`` largest per-pixel losses.

    ``loss`` and ``mask`` are [B, ...]; ranking is per sample and carries no gradient. This is Depth
    Anything V2's top-10% ignore (``fraction=0.1``) and MiDaS' trimmed loss (``fraction=0.2``).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return mask
    shape = mask.shape
    flat_loss, flat_mask = loss.detach().reshape(shape[0], -1), mask.reshape(shape[0], -1)
    n_drop = torch.floor(flat_mask.sum(-1) * fraction).long()
    order = torch.where(flat_mask, flat_loss, torch.full_like(flat_loss, -float("inf"))).argsort(-1, descending=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (flat_mask & (rank >= n_drop[:, None])).reshape(shape)


# --- shared plumbing ------------------------------------------------------------------------------


@dataclass
class _Units:
    """The (image, region) units a loss aligns separately, flattened to [N = B * R, H, W]."""

    pred: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor  # [B, R]: region area / (H * W)
    pixel_weight: torch.Tensor | None = None  # [N, H, W], e.g. pseudo-label confidence


def _units(pred, target, mask, regions=None, fill: float = 1.0, pixel_weight=None) -> _Units:
    if pred.dim() != 3 or pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(
            f"pred, target and mask must all be [B, H, W]; got {tuple(pred.shape)}, "
            f"{tuple(target.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool() & torch.isfinite(target)
    if pixel_weight is not None:
        if pixel_weight.shape != pred.shape:
            raise ValueError(f"pixel weight must be [B, H, W] = {tuple(pred.shape)}, got {tuple(pixel_weight.shape)}")
        mask = mask & (pixel_weight > 0)  # zero weight: out of the alignment statistics too
    # Replace invalid pixels by a harmless value so no NaN/inf enters any gradient path.
    pred = torch.where(mask, pred, torch.full_like(pred, fill))
    target = torch.where(mask, target, torch.full_like(target, fill))
    if pixel_weight is not None:
        pixel_weight = torch.where(mask, pixel_weight.to(pred.dtype), torch.zeros_like(pred))
    b, h, w = pred.shape
    if regions is None:
        return _Units(pred, target, mask, torch.ones(b, 1, device=pred.device, dtype=pred.dtype), pixel_weight)
    if regions.dim() != 4 or regions.shape[0] != b or regions.shape[2:] != (h, w):
        raise ValueError(f"regions must be [B, R, H, W] with B, H, W = {b}, {h}, {w}; got {tuple(regions.shape)}")
    r = regions.shape[1]
    regions = regions.bool()
    weight = regions.flatten(2).sum(-1).to(pred.dtype) / (h * w)
    expand = lambda x: x[:, None].expand(b, r, h, w).reshape(b * r, h, w)  # noqa: E731
    return _Units(
        expand(pred),
        expand(target),
        (mask[:, None] & regions).reshape(b * r, h, w),
        weight,
        None if pixel_weight is None else expand(pixel_weight),
    )


def _reduce_per_image(err: torch.Tensor, units: _Units, trim: float = 0.0) -> torch.Tensor:
    """Mean error per unit (after trimming), area-weighted sum over an image's regions, mean over
    images that have any valid pixel."""
    err, mask = err.flatten(1), units.mask.flatten(1)
    if units.pixel_weight is not None:  # confidence-guided: 1/|P_v| sum C(p) |e(p)| (Tonioni et al.)
        err = err * units.pixel_weight.flatten(1)
    mask = drop_largest_losses(err, mask, trim)
    per_unit = masked_mean(err, mask)
    b, r = units.weight.shape
    unit_valid = mask.any(-1).reshape(b, r)
    per_image = (units.weight * unit_valid * per_unit.reshape(b, r)).sum(-1)
    image_valid = unit_valid.any(-1)
    if not bool(image_valid.any()):
        return _zero(err)
    return per_image[image_valid].mean()


# --- losses ---------------------------------------------------------------------------------------


@_float32
def ssi_loss(pred, target, mask, trim: float = 0.0, regions=None, weight=None) -> torch.Tensor:
    """Scale-and-shift-invariant MAE (MiDaS, Depth Anything V1), normally in disparity space.

    Per image (region): both maps normalised by median and mean absolute deviation over valid pixels,
    mean |pred_hat - target_hat| over valid pixels, dropping the ``trim`` fraction of largest
    residuals. ``weight`` (optional [B, H, W]) multiplies each pixel's error (confidence).
    Reduction: per image, averaged over images with valid pixels.
    """
    u = _units(pred, target, mask, regions, pixel_weight=weight)
    p, t, m = u.pred.flatten(1), u.target.flatten(1), u.mask.flatten(1)
    err = (normalize_median_mad(p, m) - normalize_median_mad(t, m)).abs()
    return _reduce_per_image(err, u, trim)


@_float32
def ssi_lsq_loss(pred, target, mask, regions=None) -> torch.Tensor:
    """Scale-and-shift-invariant MSE with least-squares alignment (the MiDaS training gist).

    Per image (region): s, t = argmin sum m (s * pred + t - target)^2. Reduction: pooled over the
    batch, sum m (s * pred + t - target)^2 / (2 * sum m).
    """
    u = _units(pred, target, mask, regions)
    p, t, m = u.pred.flatten(1), u.target.flatten(1), u.mask.flatten(1)
    scale, shift = lsq_scale_shift(p, t, m)
    residual = torch.where(m, scale[:, None] * p + shift[:, None] - t, torch.zeros_like(p))
    count = m.sum()
    if count == 0:
        return _zero(p)
    return (residual**2).sum() / (2 * count)


@_float32
def gradient_matching_loss(pred, target, mask, scales: int = 4, alignment: str = "lsq", regions=None) -> torch.Tensor:
    """Multi-scale gradient matching (MiDaS) on the residual R = aligned pred - target.

    ``alignment``: ``lsq`` (pred aligned to target by least squares, the MiDaS gist), ``median``
    (both normalised by median/MAD, as with ``ssi_loss``) or ``none`` (inputs already aligned).
    At each of ``scales`` scales (stride 2^k subsampling of R and mask): sum |dR/dx| + |dR/dy| over
    pixel pairs whose both ends are valid, divided by the number of valid pixels. Reduction: pooled
    over the batch per scale, summed over scales.
    """
    u = _units(pred, target, mask, regions)
    n, h, w = u.pred.shape
    p, t, m = u.pred.flatten(1), u.target.flatten(1), u.mask.flatten(1)
    if alignment == "lsq":
        scale, shift = lsq_scale_shift(p, t, m)
        p = scale[:, None] * p + shift[:, None]
    elif alignment == "median":
        p, t = normalize_median_mad(p, m), normalize_median_mad(t, m)
    elif alignment != "none":
        raise ValueError(f"alignment must be 'lsq', 'median' or 'none', got {alignment!r}")
    residual = torch.where(m, p - t, torch.zeros_like(p)).reshape(n, h, w)
    mask = m.reshape(n, h, w)
    total = _zero(residual)
    for k in range(scales):
        step = 2**k
        r, mk = residual[:, ::step, ::step], mask[:, ::step, ::step]
        count = mk.sum()
        if count == 0:
            continue
        gx = (r[:, :, 1:] - r[:, :, :-1]).abs() * (mk[:, :, 1:] & mk[:, :, :-1])
        gy = (r[:, 1:, :] - r[:, :-1, :]).abs() * (mk[:, 1:, :] & mk[:, :-1, :])
        total = total + (gx.sum() + gy.sum()) / count
    return total


@_float32
def uts_loss(pred, target, mask, trim: float = 0.0, regions=None, weight=None) -> torch.Tensor:
    """Scale-invariant loss of GP2, on depths: r = log(pred) - log(target) over valid pixels,
    mean |r - median(r)|. Invariant to a positive scale of either depth, not to a shift.
    ``weight``: optional per-pixel error weight. Reduction: per image, averaged over images with
    valid pixels."""
    u = _units(pred, target, mask, regions, pixel_weight=weight)
    m = u.mask.flatten(1) & (u.target.flatten(1) > 0)
    u.mask = m.reshape(u.mask.shape)
    r = torch.log(u.pred.flatten(1).clamp_min(EPS)) - torch.log(u.target.flatten(1).clamp_min(EPS))
    return _reduce_per_image((r - masked_median(r, m)[:, None]).abs(), u, trim)


@_float32
def utss_loss(pred, target, mask, trim: float = 0.0, regions=None, weight=None) -> torch.Tensor:
    """Scale-and-shift-invariant loss of GP2, on disparities: both maps normalised to zero mean and
    unit std over valid pixels, mean |pred_n - target_n|. ``weight``: optional per-pixel error
    weight. Reduction: per image, averaged over images with valid pixels."""
    u = _units(pred, target, mask, regions, pixel_weight=weight)
    p, t, m = u.pred.flatten(1), u.target.flatten(1), u.mask.flatten(1)
    return _reduce_per_image((normalize_mean_std(p, m) - normalize_mean_std(t, m)).abs(), u, trim)


@_float32
def gp2_loss(pred_depth, target, mask, complete, uts_weight: float = 1.0, trim: float = 0.0, regions=None):
    """GP2: L_UTSS on every sample + ``uts_weight`` * L_UTS on geometrically complete samples.

    ``pred_depth``: the model's depth (up to scale), > 0. ``complete``: bool [B], true where the
    target is depth known up to scale or better (metric, UTS); there ``target`` holds depth. Where
    false the target is disparity up to scale and shift (UTSS). Each term is reduced per image and
    averaged over the images it applies to.
    """
    complete = complete.bool().to(pred_depth.device)
    if complete.shape != pred_depth.shape[:1]:
        raise ValueError(f"complete must be [B] = [{pred_depth.shape[0]}], got {tuple(complete.shape)}")
    pred_disparity = 1.0 / pred_depth.clamp_min(EPS)
    c = complete[:, None, None]
    valid_target = torch.where(mask.bool() & torch.isfinite(target), target, torch.ones_like(target))
    target_disparity = torch.where(c, 1.0 / valid_target.clamp_min(EPS), valid_target)
    mask = mask.bool() & ~(c & (valid_target <= 0))
    loss = utss_loss(pred_disparity, target_disparity, mask, trim=trim, regions=regions)
    if bool(complete.any()) and uts_weight:
        sub = lambda x: None if x is None else x[complete]  # noqa: E731
        loss = loss + uts_weight * uts_loss(pred_depth[complete], target[complete], mask[complete], trim, sub(regions))
    return loss


@_float32
def silog_loss(pred, target, mask, variance_focus: float = 0.5) -> torch.Tensor:
    """Scale-invariant log loss (Depth Anything V2 metric fine-tuning), on depths:
    d = log(target) - log(pred), sqrt(mean d^2 - variance_focus * (mean d)^2). Reduction: pooled over
    all valid pixels of the batch."""
    u = _units(pred, target, mask)
    m = u.mask & (u.target > 0)
    if not bool(m.any()):
        return _zero(u.pred)
    d = torch.log(u.target[m]) - torch.log(u.pred[m].clamp_min(EPS))
    return (torch.mean(d**2) - variance_focus * torch.mean(d) ** 2).clamp_min(1e-12).sqrt()


@_float32
def feature_alignment_loss(student_tokens, frozen_tokens, margin: float = 0.15, mask=None) -> torch.Tensor:
    """Feature alignment to a frozen encoder (Depth Anything V1): 1 - mean cos(f_i, f'_i).

    Tokens [B, N, C]; token i is left out when 1 - cos(f_i, f'_i) < ``margin`` (already close
    enough, so no gradient). ``mask``: bool [B] or [B, N] of tokens to use (e.g. pseudo-labeled
    samples only). The frozen tokens are detached. Reduction: mean over the kept tokens of the batch.
    """
    if student_tokens.shape != frozen_tokens.shape or student_tokens.dim() != 3:
        raise ValueError(
            f"student and frozen tokens must both be [B, N, C]; got {tuple(student_tokens.shape)} "
            f"and {tuple(frozen_tokens.shape)}"
        )
    distance = 1.0 - F.cosine_similarity(student_tokens, frozen_tokens.detach(), dim=-1, eps=1e-8)
    keep = distance.detach() >= margin
    if mask is not None:
        mask = mask.bool()
        keep = keep & (mask[:, None] if mask.dim() == 1 else mask)
    if not bool(keep.any()):
        return _zero(distance)
    return distance[keep].mean()
