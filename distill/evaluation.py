"""Score a depth model on labeled samples with a benchmark protocol (shared by training validation,
benchmarks and the evaluate command)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.data.transforms import normalize_images, resize_for_inference
from distill.metrics import METRIC_NAMES, per_image_metrics, protocol_depth
from distill.models import IMAGENET_MEAN, IMAGENET_STD
from distill.spaces import OutputSpace, to_depth


def predict(model, images: torch.Tensor, size_hw: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [B, 3, h, w] (already at inference resolution) -> prediction [B, H, W] resized
    (bilinear) to the ground truth's size, in the model's output space. ``mean``/``std``: the
    model's input normalisation (ImageNet for Depth Anything)."""
    pred = model(pixel_values=normalize_images(images, mean, std)).predicted_depth
    return F.interpolate(pred[:, None].float(), size=tuple(size_hw), mode="bilinear", align_corners=False)[:, 0]


def align_and_score(pred: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor, output_space: OutputSpace,
                    protocol: str | None = None, depth_range=None) -> tuple[torch.Tensor, dict]:
    """Predictions [B, H, W] in ``output_space`` -> (depth aligned to ``gt_depth`` with the protocol and
    clamped to ``depth_range`` (default: each image's valid ground-truth range), per-image metrics
    over ``mask``)."""
    mask = mask.bool() & torch.isfinite(gt_depth) & (gt_depth > 0)
    depth = protocol_depth(pred, output_space, gt_depth, mask, protocol, depth_range)
    return depth, per_image_metrics(depth, gt_depth, mask)


def score_batch(pred: torch.Tensor, batch: dict, output_space: OutputSpace, protocol: str | None = None,
                mask: torch.Tensor | None = None, depth_range=None) -> dict:
    """Per-image metrics of one batch whose targets are depth up to scale or better; ``mask`` (e.g.
    a benchmark's crop and depth range) further restricts the valid pixels."""
    gt = to_depth(batch["target"].float(), batch["space"][0])
    valid = batch["valid"] & (gt > 0)
    if mask is not None:
        valid = valid & mask
    return align_and_score(pred, gt, valid, output_space, protocol, depth_range)[1]


@torch.no_grad()
def evaluate_samples(model, samples, output_space: OutputSpace, protocol: str | None = None, size: int = 518) -> dict:
    """Mean metrics over ``samples`` (an iterable of ``Sample`` with complete geometry), one at a time."""
    model.eval()
    device = next(model.parameters()).device
    sums, count = {k: 0.0 for k in METRIC_NAMES}, 0
    for sample in samples:
        image = torch.from_numpy(resize_for_inference(sample.image, size)).permute(2, 0, 1)[None].to(device)
        batch = {"target": torch.from_numpy(sample.target)[None].to(device), "valid": torch.from_numpy(sample.valid)[None].to(device), "space": [sample.space]}
        m = score_batch(predict(model, image, sample.target.shape), batch, output_space, protocol)
        if bool(m["valid"][0]):
            count += 1
            for k in METRIC_NAMES:
                sums[k] += float(m[k][0])
    return {k: v / count for k, v in sums.items()} | {"num_images": count} if count else {"num_images": 0}
