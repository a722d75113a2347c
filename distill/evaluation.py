"""Score a depth model on labeled samples with a benchmark protocol (shared by training validation,
benchmarks and the evaluate command)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.data.transforms import normalize_images, resize_for_inference
from distill.metrics import METRIC_NAMES, per_image_metrics, protocol_depth
from distill.spaces import OutputSpace, to_depth


def predict(model, images: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, h, w] (already at inference resolution) -> prediction [B, H, W] resized
    (bilinear) to the ground truth's size, in the model's output space."""
    pred = model(pixel_values=normalize_images(images)).predicted_depth
    return F.interpolate(pred[:, None].float(), size=size_hw, mode="bilinear", align_corners=False)[:, 0]


def score_batch(pred: torch.Tensor, batch: dict, output_space: OutputSpace, protocol: str | None = None) -> dict:
    """Per-image metrics of one batch whose targets are depth up to scale or better."""
    gt = to_depth(batch["target"].float(), batch["space"][0])
    mask = batch["valid"] & (gt > 0)
    return per_image_metrics(protocol_depth(pred, output_space, gt, mask, protocol), gt, mask)


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
