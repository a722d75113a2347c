"""Per-sample transforms (albumentations) and the tensors a batch is made of.

Geometry: resize keeping aspect so the shorter side is the training size (bicubic image, nearest
target and mask: depth is never interpolated across edges, quantised or clipped), random crop,
horizontal flip; intrinsics follow. Images stay uint8 until they reach the device, where
``normalize_images`` applies ImageNet mean/std (a quarter of the bytes through the loader).
"""
from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import torch

from distill.data.sample import Sample
from distill.models import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, PATCH_SIZE


def _update_intrinsics(k: np.ndarray | None, applied: list, final_shape: tuple) -> np.ndarray | None:
    """Follow albumentations' applied resize / crop / flip with the pinhole matrix (pixel centres
    at integer coordinates)."""
    if k is None:
        return None
    k = k.astype(np.float64).copy()
    shapes = [params["shape"][:2] for _, params in applied] + [final_shape[:2]]
    for i, (name, params) in enumerate(applied):
        (h0, w0), (h1, w1) = shapes[i], shapes[i + 1]
        if name in ("SmallestMaxSize", "LongestMaxSize", "Resize"):
            sx, sy = w1 / w0, h1 / h0
            k[0] *= sx  # fx, and cx below with the half-pixel convention
            k[1] *= sy
            k[0, 2] += 0.5 * sx - 0.5
            k[1, 2] += 0.5 * sy - 0.5
        elif name in ("RandomCrop", "Crop", "CenterCrop"):
            x0, y0 = params["crop_coords"][:2]
            k[0, 2] -= x0
            k[1, 2] -= y0
        elif name == "HorizontalFlip":
            k[0, 2] = w0 - 1 - k[0, 2]
    return k


class TrainTransform:
    """Resize (shorter side = ``size``), random ``size`` x ``size`` crop, optional horizontal flip,
    then optional photometric transforms on the image only (albumentations, e.g. ColorJitter).
    Deterministic given the per-sample ``seed``, so a resumed run sees the same augmentations."""

    def __init__(self, size: int = INPUT_SIZE, hflip: bool = True, photometric: list | None = None):
        self.size = size
        geometric = [
            A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST),
            A.RandomCrop(size, size),
        ]
        if hflip:
            geometric.append(A.HorizontalFlip(p=0.5))
        self.geometric = A.Compose(
            geometric,
            additional_targets={"target": "mask", "valid": "mask", "confidence": "mask"},
            save_applied_params=True,
        )
        self.photometric = A.Compose(photometric) if photometric else None

    def __call__(self, sample: Sample, seed: int) -> Sample:
        self.geometric.set_random_seed(seed)
        arrays = {"image": sample.image, "target": sample.target, "valid": sample.valid.astype(np.uint8)}
        if sample.confidence is not None:
            arrays["confidence"] = sample.confidence
        out = self.geometric(**arrays)
        image = out["image"]
        if self.photometric is not None:
            self.photometric.set_random_seed(seed + 1)
            image = self.photometric(image=image)["image"]
        return Sample(
            image=np.ascontiguousarray(image),
            target=np.ascontiguousarray(out["target"]),
            valid=out["valid"].astype(bool),
            space=sample.space,
            geometry=sample.geometry,
            dataset=sample.dataset,
            key=sample.key,
            intrinsics=_update_intrinsics(sample.intrinsics, out["applied_transforms"], image.shape),
            confidence=None if sample.confidence is None else np.ascontiguousarray(out["confidence"]),
            meta=sample.meta,
        )


def multiple_of(x: float, multiple: int = PATCH_SIZE, min_value: int = 0) -> int:
    """Round to the nearest multiple, rounding up instead when that would fall below ``min_value``."""
    y = int(round(x / multiple)) * multiple
    return y if y >= min_value else int(math.ceil(x / multiple)) * multiple


def inference_size(height: int, width: int, size: int = INPUT_SIZE, multiple: int = PATCH_SIZE) -> tuple[int, int]:
    """Depth Anything's inference resolution: aspect kept, shorter side at least ``size``, both
    sides multiples of ``multiple`` (the patch size, 14)."""
    scale = size / min(height, width)
    return multiple_of(height * scale, multiple, size), multiple_of(width * scale, multiple, size)


def resize_for_inference(image: np.ndarray, size: int = INPUT_SIZE, multiple: int = PATCH_SIZE) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 image at ``inference_size`` (bicubic, as the original code)."""
    h, w = inference_size(*image.shape[:2], size, multiple)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)


class EvalTransform:
    """The whole image at the inference resolution; target, mask and intrinsics stay at the original
    resolution (the prediction is resized back to it, as the benchmarks do)."""

    def __init__(self, size: int = INPUT_SIZE):
        self.size = size

    def __call__(self, sample: Sample, seed: int = 0) -> Sample:
        sample.meta = {**sample.meta, "original_size": sample.image.shape[:2]}
        sample.image = resize_for_inference(sample.image, self.size)
        return sample


def sample_to_tensors(sample: Sample) -> dict:
    """A Sample as the tensors of one batch row (image uint8 [3, H, W])."""
    h, w = sample.target.shape
    k = sample.intrinsics
    return {
        "image": torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1))),
        "target": torch.from_numpy(sample.target),
        "valid": torch.from_numpy(sample.valid),
        "confidence": torch.from_numpy(sample.confidence) if sample.confidence is not None else torch.ones(h, w),
        "has_confidence": torch.tensor(sample.confidence is not None),
        "complete": torch.tensor(sample.complete),
        "intrinsics": torch.from_numpy(k) if k is not None else torch.full((3, 3), float("nan"), dtype=torch.float64),
        "space": sample.space,
        "geometry": sample.geometry,
        "dataset": sample.dataset,
        "key": sample.key,
    }


def normalize_images(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float normalised (ImageNet mean/std by default), on whatever device the
    images are."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
