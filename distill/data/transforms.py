"""Per-sample transforms (albumentations) and the tensors a batch is made of.

Geometry: resize keeping aspect so the shorter side is the training size (bicubic image, nearest
target and mask: depth is never interpolated across edges, quantised or clipped), random crop,
horizontal flip; intrinsics follow. Images stay uint8 until they reach the device, where the model's
``distill.preprocessing.Preprocessing`` normalises them (a quarter of the bytes through the loader).
Evaluation-time resizing is ``distill.preprocessing``'s one rule.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from distill.data.sample import Sample
from distill.preprocessing import INPUT_SIZE


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
