"""Batched teacher inference with test-time augmentation (TTA) and a confidence from agreement.

Views: ``none`` = the image; ``flip`` = the image and its mirror; ``flip+scales`` = both at scale
1 and at each of ``tta_scales`` (the normalised batch resized bicubically, sides multiples of the
size multiple). Every view's prediction, post-processed by the teacher's input rule, is brought
back to the first view's grid (un-mirrored, bilinear) and aligned to the mean of all views in the teacher's output space, because TTA views
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
import functools

import torch
import torch.nn.functional as F

from distill.alignment import combine
from distill.inference import InputRule
from distill.preprocessing import multiple_of
from distill.spaces import OutputSpace



class Predictor:
    """``predictor(images [B, 3, H, W], original_hws) -> [(label [h, w] float32, confidence or None)]``,
    one pair per image, on the images' device, in the teacher's output space, at the size the
    job's ``InputRule`` post-processes to (the model input's size, or the image's for ZoeDepth)."""

    def __init__(self, model, space: OutputSpace, rule: InputRule, tta: str = "none", scales=(0.75, 1.25),
                 tau: float = 0.05, autocast_dtype=None):
        self.model, self.space, self.rule, self.tta = model, space, rule, tta
        self.scales = [1.0] + ([float(s) for s in scales if float(s) != 1.0] if tta == "flip+scales" else [])
        self.tau, self.autocast_dtype = tau, autocast_dtype

    @property
    def views(self) -> int:
        return len(self.scales) * (1 if self.tta == "none" else 2)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, original_hws) -> list:
        b, _, h, w = images.shape
        x, m = self.rule.model_input(images), self.rule.preprocessing.multiple
        hws = [tuple(hw) for hw in original_hws]
        autocast = contextlib.nullcontext if self.autocast_dtype is None else functools.partial(
            torch.autocast, images.device.type, dtype=self.autocast_dtype)
        views = []  # per view: one map per image
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(
                x, size=(max(m, multiple_of(h * s, m)), max(m, multiple_of(w * s, m))),
                mode="bicubic", align_corners=False, antialias=True)
            batch = xs if self.tta == "none" else torch.cat([xs, xs.flip(-1)])
            maps = self.rule.run(self.model, batch, hws * (1 if self.tta == "none" else 2), autocast)
            views.append(maps[:b])
            if self.tta != "none":
                views.append([p.flip(-1) for p in maps[b:]])
        if len(views) == 1:
            return [(label, None) for label in views[0]]
        out = []
        for i in range(b):  # the first view's grid is the label's; the others are resized onto it
            grid = tuple(views[0][i].shape)
            stack = torch.stack([v[i] if tuple(v[i].shape) == grid else
                                 F.interpolate(v[i][None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]
                                 for v in views])
            label, spread = combine(stack[:, None], self.space)
            out.append((label[0], torch.exp(-spread[0] / self.tau)))
        return out
