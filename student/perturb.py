"""Strong perturbations of the student's pseudo-labeled images (Depth Anything V1): colour jitter
and Gaussian blur per sample (albumentations, in the data workers), CutMix per batch (torch)."""
from __future__ import annotations

import albumentations as A
import torch

from student.config import PerturbConfig


def photometric(cfg: PerturbConfig) -> list:
    """The per-sample image-only perturbations (labels stay those of the clean image)."""
    if not cfg.enabled:
        return []
    return [
        A.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.color_jitter_p),
        A.GaussianBlur(blur_limit=(3, 7), sigma_limit=cfg.blur_sigma, p=cfg.blur_p),
    ]


def cutmix_box(height: int, width: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """A rectangle mask [H, W] (true inside) covering a uniformly drawn fraction of the image."""
    area = torch.rand((), generator=generator).item()
    h = max(1, int(round(height * area**0.5)))
    w = max(1, int(round(width * area**0.5)))
    top = int(torch.randint(0, height - h + 1, (), generator=generator))
    left = int(torch.randint(0, width - w + 1, (), generator=generator))
    box = torch.zeros(height, width, dtype=torch.bool, device=device)
    box[top : top + h, left : left + w] = True
    return box


def cutmix(rows: torch.Tensor, tensors: dict[str, torch.Tensor], generator: torch.Generator):
    """CutMix among the rows where ``rows`` is true: row a keeps its own pixels outside a box M and
    takes its partner b's (the next selected row) inside it, for the image and for every label
    tensor alike, so each region is supervised by its own source image's (clean) pseudo-label.

    ``tensors``: name -> [B, ...H, W] (images [B, 3, H, W]; targets, masks, confidences [B, H, W]).
    Returns the mixed tensors and ``regions`` [B, 2, H, W]: (own pixels, partner's pixels); rows
    not mixed have the whole image as their first region.
    """
    index = torch.nonzero(rows).flatten()
    any_tensor = next(iter(tensors.values()))
    b, (h, w) = any_tensor.shape[0], any_tensor.shape[-2:]
    own = torch.ones(b, h, w, dtype=torch.bool, device=any_tensor.device)
    if len(index) >= 2:
        partner = index.roll(-1)
        for a in index.tolist():
            own[a] = ~cutmix_box(h, w, generator, any_tensor.device)
        mixed = {}
        for name, x in tensors.items():
            x_new = x.clone()
            m = own[index] if x.dim() == 3 else own[index][:, None]
            x_new[index] = torch.where(m, x[index], x[partner])
            mixed[name] = x_new
        tensors = mixed
    return tensors, torch.stack([own, ~own], dim=1)
