"""How a depth model sees an image and what its output means: the model's own image processor in,
its own ``post_process_depth_estimation`` out (docs/RECIPE.md#input-preprocessing).

``InputRule`` is what the labeling job (and anything else that runs a teacher on images) uses:

- ``processor`` (default): the model's ``AutoImageProcessor`` resizes, pads and normalises each
  image exactly as ``pipeline("depth-estimation")`` would, and its post-processing turns the raw
  output into the model's depth (ZoeDepth: padding removed, at the image's size; Depth Pro: field
  of view applied; the others: at the model input's size). A model without an image processor (an
  original ``.pth`` checkpoint) gets the processor the Depth Anything V2 checkpoints ship with.
- ``depth_anything``: Depth Anything's original inference rule (``distill.preprocessing``:
  shorter side at least ``input_size``, OpenCV bicubic, normalised on the device), the labeling
  default before the processor rule; the raw output is the label.

Pickled into DataLoader workers; transformers is imported only where a processor is built.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distill.preprocessing import INPUT_SIZE, Preprocessing

RULES = ("processor", "depth_anything")


def processor_at_size(processor, size: int, model: str = "the model"):
    """A copy of a transformers image processor whose target size is ``size``, its other rules kept:
    ``height``/``width`` (Depth Anything, DPT: both set, aspect kept as the processor says) or
    ``shortest_edge``. A processor that does not resize has no size to set (ValueError, one line)."""
    d = processor.to_dict()
    size_rule = d.get("size") if d.get("do_resize", False) else None
    if not isinstance(size_rule, dict) or not ({"height", "width"} <= set(size_rule) or "shortest_edge" in size_rule):
        raise ValueError(f"{model}: its image processor ({type(processor).__name__}) has no target size to set "
                         f"(size={size_rule!r}); drop --input-size")
    new = {"height": size, "width": size} if "height" in size_rule else {**size_rule, "shortest_edge": size}
    return type(processor).from_dict({**d, "size": new})


@dataclass
class InputRule:
    kind: str  # "processor" | "depth_anything"
    preprocessing: Preprocessing  # normalisation of uint8 batches (depth_anything) and the size multiple
    processor: object | None = None  # the transformers image processor (processor rule)
    input_size: int = INPUT_SIZE  # depth_anything rule
    max_aspect: float | None = 4.0  # depth_anything rule

    def __post_init__(self):
        if self.kind not in RULES:
            raise ValueError(f"unknown input rule {self.kind!r}; valid: {', '.join(RULES)}")
        if self.kind == "processor" and self.processor is None:
            raise ValueError("the processor input rule needs the model's image processor")

    # ------------------------------------------------------------------ worker side (per image)
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> the model input [3, h, w]: float32 normalised by the processor, or
        uint8 resized by the Depth Anything rule (normalised on the device by ``model_input``)."""
        if self.kind == "processor":
            rgb = rgb if rgb.flags.writeable else rgb.copy()  # torch.from_numpy inside wants a writable array
            pixels = self.processor(images=rgb, input_data_format="channels_last", return_tensors="pt")["pixel_values"][0]
            return np.ascontiguousarray(pixels.numpy().astype(np.float32, copy=False))
        return np.ascontiguousarray(self.preprocessing.resize(rgb, self.input_size, self.max_aspect).transpose(2, 0, 1))

    def largest_input_side(self, height: int, width: int) -> tuple[int, int] | None:
        """An upper bound of the (h, w) the image is resized to, for reduced-scale JPEG decoding;
        None where the processor keeps the image's size (decode at full size)."""
        if self.kind == "depth_anything":
            return self.preprocessing.input_hw(height, width, self.input_size, self.max_aspect)
        d = self.processor.to_dict()
        size = d.get("size") or {}
        sides = [int(v) for k, v in size.items() if k in ("height", "width", "shortest_edge", "longest_edge")] if isinstance(size, dict) else []
        if not d.get("do_resize", False) or not sides:
            return None
        # aspect-keeping processors make the shorter side at most max(sides) (plus a multiple)
        scale = (max(sides) + 64) / min(height, width)
        return int(np.ceil(height * scale)), int(np.ceil(width * scale))

    # ---------------------------------------------------------------------- model side (batch)
    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """A packet's images (on the device) -> ``pixel_values``."""
        if images.dtype == torch.uint8:
            return self.preprocessing.normalize(images)
        return images.float()

    def postprocess(self, outputs, original_hws: list[tuple[int, int]], input_hw: tuple[int, int]) -> list[torch.Tensor]:
        """The model's outputs for a batch -> one depth map [h, w] per image, float32. Depth
        Anything rule: the raw output at the input's size. Processor rule: the processor's
        post-processing at the input's size (its field of view for Depth Pro), or, for processors
        that remove their own padding (ZoeDepth), at the image's size."""
        raw = outputs.predicted_depth
        post = getattr(self.processor, "post_process_depth_estimation", None)
        if self.kind == "depth_anything" or post is None:
            return [m if tuple(m.shape) == tuple(input_hw) else
                    F.interpolate(m[None, None], size=input_hw, mode="bilinear", align_corners=False)[0, 0]
                    for m in raw.float()]
        if "source_sizes" in inspect.signature(post).parameters:
            results = post(outputs, source_sizes=[tuple(hw) for hw in original_hws])
        else:
            results = post(outputs, target_sizes=[tuple(input_hw)] * len(raw))
        return [r["predicted_depth"].float().reshape(r["predicted_depth"].shape[-2:]) for r in results]

    def run(self, model, pixel_values: torch.Tensor, original_hws, autocast_dtype=None) -> list[torch.Tensor]:
        """Forward + post-processing, in fp32 outside the autocast region."""
        if autocast_dtype is not None:
            with torch.autocast(pixel_values.device.type, dtype=autocast_dtype):
                outputs = model(pixel_values=pixel_values)
        else:
            outputs = model(pixel_values=pixel_values)
        for name in ("predicted_depth", "field_of_view"):
            value = getattr(outputs, name, None)
            if torch.is_tensor(value):
                outputs[name] = value.float()
        return self.postprocess(outputs, original_hws, tuple(pixel_values.shape[-2:]))

    def to_dict(self) -> dict:
        d = {"rule": self.kind, "multiple": self.preprocessing.multiple}
        if self.kind == "processor":
            d["processor"] = type(self.processor).__name__
        else:
            d.update(input_size=self.input_size, max_aspect=self.max_aspect, normalisation=self.preprocessing.to_dict())
        return d

