"""The objective on labeled data, shared by the teacher (all its rows) and the student (its labeled
rows): GP2 (geometry-preserving, default) or Depth Anything's SSI + gradient."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from distill.losses import gp2_loss, gradient_matching_loss, ssi_loss, ssi_lsq_loss
from distill.preprocessing import Preprocessing
from distill.spaces import (
    to_depth,
    to_disparity,
)


@dataclass
class LabeledObjectiveConfig:
    kind: Literal["gp2", "ssi"] = "gp2"  # gp2: depth up to scale (geometry-preserving); ssi: SSI + gradient on disparity
    uts_weight: float = 1.0  # GP2: weight of the UTS term on geometrically complete samples
    ssi_variant: Literal["median", "lsq"] = "median"  # ssi: median/MAD + MAE (V1 paper) or LSQ + MSE (gist)
    gradient_weight: float = 2.0  # ssi: Depth Anything V2 uses SSI : gradient = 1 : 2
    gradient_scales: int = 4  # ssi: scales of the gradient-matching loss (stride 2^k)
    trim: float = 0.0  # drop this fraction of each sample's largest per-pixel losses (0.1 = V2's top-10%)


def _per_sample(target: torch.Tensor, spaces: list[str], convert) -> torch.Tensor:
    """Apply ``convert(rows, space)`` to the rows of each target space in the batch."""
    out = target.clone()
    for space in set(spaces):
        rows = torch.tensor([s == space for s in spaces], device=target.device)
        out[rows] = convert(target[rows], space)
    return out


def check_targets(batch: dict) -> None:
    for space, geometry, key in zip(batch["space"], batch["geometry"], batch["key"]):
        if geometry == "utss" and space != "disparity":
            raise ValueError(f"sample {key}: a scale-and-shift ambiguous target must be disparity, got {space}")
        if geometry == "none":
            raise ValueError(f"sample {key}: unlabeled sample in teacher training data")


class LabeledObjective:
    """``objective(model, batch) -> (loss, logs)`` for ``distill.engine.train`` (docs/RECIPE.md#gp2,
    docs/RECIPE.md#ssi); ``preprocessing``: the model's input normalisation."""

    def __init__(self, cfg: LabeledObjectiveConfig, preprocessing: Preprocessing):
        self.cfg, self.preprocessing = cfg, preprocessing

    def __call__(self, model, batch: dict):
        pred = model(pixel_values=self.preprocessing.normalize(batch["image"])).predicted_depth
        return self.loss_on(pred, batch)

    def loss_on(self, pred: torch.Tensor, batch: dict):
        """The loss of a prediction [B, H, W] against the batch's labels."""
        check_targets(batch)
        target, mask, complete = batch["target"].float(), batch["valid"], batch["complete"]
        c = self.cfg
        if c.kind == "gp2":
            # complete samples supervise depth (up to scale), the others disparity (up to scale and shift)
            target = torch.where(
                complete[:, None, None],
                _per_sample(target, batch["space"], lambda t, s: to_depth(t, s)),
                target,
            )
            loss = gp2_loss(pred, target, mask, complete, uts_weight=c.uts_weight, trim=c.trim)
            return loss, {}
        disparity = _per_sample(target, batch["space"], lambda t, s: to_disparity(t, s))
        if c.ssi_variant == "median":
            ssi = ssi_loss(pred, disparity, mask, trim=c.trim)
        else:
            ssi = ssi_lsq_loss(pred, disparity, mask)
        grad = gradient_matching_loss(pred, disparity, mask, c.gradient_scales, alignment=c.ssi_variant)
        return ssi + c.gradient_weight * grad, {"ssi": ssi.detach(), "gradient": grad.detach()}
