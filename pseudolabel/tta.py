"""Batched teacher inference with test-time augmentation (TTA) and a confidence from agreement.

Views: ``none`` = the image; ``flip`` = the image and its mirror; ``flip+scales`` = both at scale
1 and at each of ``tta_scales`` (the normalised batch resized bicubically, sides multiples of the
patch size). Every view's prediction is brought back to the base inference grid (un-mirrored,
bilinear) and aligned to the mean of all views in the teacher's output space, because TTA views
of a relative model may legitimately differ by what its geometry leaves unknown:

- ``utss`` (scale and shift unknown, e.g. relative disparity): least-squares scale and shift of
  each view onto the mean, per image;
- ``uts`` (scale unknown): the median-log scale (a shift of log-depth), per image;
- ``metric``: no alignment.

The label is the mean of the aligned views. The per-pixel *relative spread* ``r`` is the standard
deviation across aligned views measured where relative differences are meaningful:

- ``metric`` / ``uts`` maps of depth or disparity: std of the log of the aligned values (0.01 is
  about 1% disagreement);
- ``log_depth`` maps: std of the values (already relative);
- ``utss`` maps: std of the values divided by the image's mean absolute deviation from its median
  (the normaliser of the scale-and-shift-invariant loss, so ``r`` is in the units the student's
  SSI loss sees; a shift-free ratio to the value itself is meaningless here).

Confidence = ``exp(-r / tau)`` in [0, 1] (``confidence_tau``, default 0.05: 5% spread -> 0.37,
1% -> 0.82); stored as 8 bits, so ``r = -tau * ln(c)`` can be recovered.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from distill.alignment import lsq_scale_shift, masked_median
from distill.preprocessing import DEFAULT, Preprocessing, multiple_of
from distill.spaces import OutputSpace

EPS = 1e-6


class Predictor:
    """``predictor(images_uint8 [B, 3, H, W]) -> (label [B, H, W] float32, confidence or None)``,
    both on the images' device, in the teacher's output space at the input grid."""

    def __init__(self, model, space: OutputSpace, tta: str = "none", scales=(0.75, 1.25), tau: float = 0.05,
                 preprocessing: Preprocessing = DEFAULT, autocast_dtype=None):
        self.model, self.space, self.tta = model, space, tta
        self.scales = [1.0] + ([float(s) for s in scales if float(s) != 1.0] if tta == "flip+scales" else [])
        self.tau, self.preprocessing, self.autocast_dtype = tau, preprocessing, autocast_dtype

    @property
    def views(self) -> int:
        return len(self.scales) * (1 if self.tta == "none" else 2)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = (torch.autocast(x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            out = self.model(pixel_values=x).predicted_depth
        return out.float()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor):
        b, _, h, w = images.shape
        x, m = self.preprocessing.normalize(images), self.preprocessing.multiple
        preds = []
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(
                x, size=(max(m, multiple_of(h * s, m)), max(m, multiple_of(w * s, m))),
                mode="bicubic", align_corners=False, antialias=True)
            batch = xs if self.tta == "none" else torch.cat([xs, xs.flip(-1)])
            out = self._forward(batch)
            if out.shape[-2:] != (h, w):
                out = F.interpolate(out[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            preds.append(out[:b])
            if self.tta != "none":
                preds.append(out[b:].flip(-1))
        if len(preds) == 1:
            return preds[0], None
        label, spread = combine(torch.stack(preds), self.space)
        return label, torch.exp(-spread / self.tau)


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


def combine(preds: torch.Tensor, space: OutputSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """Align K predictions [K, B, H, W] to their mean; return (label [B, H, W], relative spread)."""
    k, b, h, w = preds.shape
    p = preds.reshape(k, b, h * w)
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
    return label.reshape(b, h, w), spread.reshape(b, h, w)
