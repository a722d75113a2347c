"""Depth Anything's inference rule, from uint8 image to model input (docs/RECIPE.md#input-preprocessing):
what the labeling job's ``resize=depth_anything`` rule resizes with, and how training normalises its
crops (albumentations', ``distill.data.transforms``). Validation, evaluation, labeling by default and
the ONNX export's check prepare images with the model's own image processor instead (``distill.inference``).

- size: aspect kept, shorter side at least ``size``, both sides multiples of the model's size
  multiple (rounded to the nearest multiple, up where that would fall below ``size``); optionally
  the longer side capped at ``size * max_aspect`` (panoramas). This is Depth Anything's original
  inference rule, not the transformers image processor's (which picks the scale closest to 1);
- resampling: OpenCV bicubic;
- normalisation: ``Preprocessing``, whose statistics, rescale factor and size multiple are read from
  the model's own image processor (``Preprocessing.from_image_processor``; a model without one gets
  its family's input rule, ``distill.registry.input_rule``);
- a model that takes one square size only (DPT-hybrid: ``fixed_input_size``) gets every image
  resized to that square, aspect not kept (``Preprocessing.input_hw`` / ``resize``).

No torch-heavy or transformers import at module level: DataLoader workers import this.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 14
INPUT_SIZE = 518


def multiple_of(x: float, multiple: int = PATCH_SIZE, min_value: int = 0) -> int:
    """Round to the nearest multiple, rounding up instead when that would fall below ``min_value``."""
    y = int(round(x / multiple)) * multiple
    return y if y >= min_value else int(math.ceil(x / multiple)) * multiple


def inference_size(height: int, width: int, size: int = INPUT_SIZE, multiple: int = PATCH_SIZE,
                   max_aspect: float | None = None) -> tuple[int, int]:
    """The model input's (height, width) for an image: see the module docstring."""
    short, long = min(height, width), max(height, width)
    if max_aspect is not None and long / short > max_aspect:
        scale = size * max_aspect / long
        return (max(multiple, multiple_of(height * scale, multiple)), max(multiple, multiple_of(width * scale, multiple)))
    scale = size / short
    return multiple_of(height * scale, multiple, size), multiple_of(width * scale, multiple, size)


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3], OpenCV bicubic (a no-op at the same size)."""
    if tuple(image.shape[:2]) == tuple(hw):
        return image
    return cv2.resize(image, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_CUBIC)


def resize_for_inference(image: np.ndarray, size: int = INPUT_SIZE, multiple: int = PATCH_SIZE,
                         max_aspect: float | None = None) -> np.ndarray:
    """uint8 [H, W, 3] -> the uint8 model input at ``inference_size``."""
    return resize_image(image, inference_size(*image.shape[:2], size, multiple, max_aspect))


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels: ``(x * rescale_factor - mean) / std`` on RGB, sides multiples of
    ``multiple``. ``source`` says where the values came from (for logs and metadata)."""

    mean: tuple[float, float, float]  # no default: a model's statistics come from its processor or its family
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    multiple: int = PATCH_SIZE
    source: str = "given"
    # A model that takes one square size only (DPT-hybrid): every image is resized to it, aspect
    # not kept, and the prediction back to the image's size.
    fixed_size: int | None = None

    def input_hw(self, height: int, width: int, size: int = INPUT_SIZE, max_aspect: float | None = None) -> tuple[int, int]:
        """The model input's (height, width) for an image: ``fixed_size`` square, else ``inference_size``."""
        if self.fixed_size:
            return self.fixed_size, self.fixed_size
        return inference_size(height, width, size, self.multiple, max_aspect)

    def resize(self, image: np.ndarray, size: int = INPUT_SIZE, max_aspect: float | None = None) -> np.ndarray:
        """uint8 [H, W, 3] -> the uint8 model input at ``input_hw``."""
        return resize_image(image, self.input_hw(*image.shape[:2], size, max_aspect))

    @classmethod
    def from_image_processor(cls, processor, config=None, source: str = "image processor") -> "Preprocessing":
        """From a transformers image processor (object or its dict) and, for the size multiple when
        the processor does not fix one, the model config's patch size."""
        d = processor if isinstance(processor, dict) else processor.to_dict()
        if d.get("do_normalize", True):
            mean = tuple(float(v) for v in (d.get("image_mean") or IMAGENET_MEAN))
            std = tuple(float(v) for v in (d.get("image_std") or IMAGENET_STD))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        rescale = float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
        multiple = max(int(d.get("ensure_multiple_of") or 1), int(d.get("size_divisor") or 1))
        if multiple == 1:
            multiple = patch_size_of(config)
        return cls(mean, std, rescale, multiple, source, fixed_input_size(config))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float model input, on the images' device."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        x = images.float()
        x = x / 255.0 if self.rescale_factor == 1 / 255 else x * self.rescale_factor
        return (x - mean) / std

    def to_dict(self) -> dict:
        d = {"mean": list(self.mean), "std": list(self.std), "rescale_factor": self.rescale_factor,
             "multiple": self.multiple, "source": self.source}
        if self.fixed_size:
            d["fixed_size"] = self.fixed_size
        return d


def patch_size_of(config) -> int:
    """A model config's patch size (its own, or its backbone's), else 14."""
    for c in (config, getattr(config, "backbone_config", None)):
        value = getattr(c, "patch_size", None)
        if isinstance(value, int) and value > 0:
            return value
    return PATCH_SIZE


def fixed_input_size(config) -> int | None:
    """The one input size of a model config that takes one: transformers' DPT-hybrid embeddings
    refuse any size but ``image_size`` (square)."""
    if config is not None and getattr(config, "is_hybrid", False):
        size = config.image_size
        return int(size if isinstance(size, int) else size[0])
    return None


IMAGENET = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, source="ImageNet mean/std, /255, patch 14 (DINOv2, Depth Anything)")
