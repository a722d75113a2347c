"""How a depth model sees an image and what its output means: the model's own image processor in,
its own ``post_process_depth_estimation`` out (docs/RECIPE.md#input-preprocessing).

``InputRule`` is the one path by which validation, evaluation, labeling and the ONNX export's parity
check prepare an image:

- ``processor`` (``InputRule.of_model``): the model's ``AutoImageProcessor`` (the one saved with it)
  resizes, pads and normalises each image exactly as ``pipeline("depth-estimation")`` would, at a
  target size where one is given and the model can take it; its post-processing turns the raw output
  into the model's depth (ZoeDepth: padding removed, at the image's size; Depth Pro: field of view
  applied; the others: at the model input's size). A model without an image processor (an original
  ``.pth`` checkpoint) gets the processor the Depth Anything V2 checkpoints ship with.
- ``depth_anything``: Depth Anything's original inference rule (``distill.preprocessing``:
  shorter side at least ``input_size``, OpenCV bicubic, normalised on the device), only where a
  labeling job asks for it (``--resize depth_anything``); the raw output is the label.

Pickled into DataLoader workers; transformers is imported only where a processor is built.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distill.preprocessing import INPUT_SIZE, Preprocessing

RULES = ("processor", "depth_anything")


def target_size(processor) -> dict | None:
    """A transformers image processor's target size (``height``/``width`` or ``shortest_edge``), or None
    where it has none (GLPN's: each image at its own size, sides floored to multiples of 32; CHMv2's).
    Also of a processor's dict (a rule's record, ``InputRule.to_dict``)."""
    d = processor if isinstance(processor, dict) else processor.to_dict()
    size = d.get("size") if d.get("do_resize", False) else None
    ok = isinstance(size, dict) and ({"height", "width"} <= set(size) or "shortest_edge" in size)
    return size if ok else None


def processor_at_size(processor, size: int):
    """A copy of an image processor whose target size is ``size``, its other rules kept: ``height``/``width``
    (Depth Anything, DPT: both set, aspect kept as the processor says) or ``shortest_edge``; the processor
    itself where it has no target size."""
    rule = target_size(processor)
    if rule is None:
        return processor
    new = {"height": size, "width": size} if "height" in rule else {**rule, "shortest_edge": size}
    return type(processor).from_dict({**processor.to_dict(), "size": new})


# What a processor rule's record says about it (labels' metadata, evaluation results).
PROCESSOR_FACTS = ("do_resize", "size", "keep_aspect_ratio", "ensure_multiple_of", "size_divisor", "resample", "do_pad",
                   "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")


@dataclass
class InputRule:
    kind: str  # "processor" | "depth_anything"
    preprocessing: Preprocessing  # normalisation of uint8 batches (depth_anything) and the size multiple
    processor: object | None = None  # the transformers image processor (processor rule)
    input_size: int = INPUT_SIZE  # depth_anything rule
    max_aspect: float | None = 4.0  # depth_anything rule

    @classmethod
    def of_model(cls, processor, preprocessing: Preprocessing, size: int | None = None) -> InputRule:
        """A model's one input rule: its image processor, at ``size`` where given and the model can take it.
        A one-size model (DPT-hybrid) keeps its one size and a processor without a target size its own
        rule, so that one size can serve several models (several teachers, a benchmark's rows)."""
        if size and not preprocessing.fixed_size:
            processor = processor_at_size(processor, size)
        return cls("processor", preprocessing, processor)

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

    def run(self, model, pixel_values: torch.Tensor, original_hws, autocast=contextlib.nullcontext) -> list[torch.Tensor]:
        """Forward inside ``autocast()`` (a context-manager factory), post-processing in fp32 outside it."""
        with autocast():
            outputs = model(pixel_values=pixel_values)
        for name in ("predicted_depth", "field_of_view"):
            value = getattr(outputs, name, None)
            if torch.is_tensor(value):
                setattr(outputs, name, value.float())  # a ModelOutput keeps its item in step
        return self.postprocess(outputs, original_hws, tuple(pixel_values.shape[-2:]))

    def to_dict(self) -> dict:
        d = {"rule": self.kind, "multiple": self.preprocessing.multiple}
        if self.kind == "processor":
            facts = self.processor.to_dict()
            d["processor"] = type(self.processor).__name__
            d.update({k: facts[k] for k in PROCESSOR_FACTS if facts.get(k) is not None})
        else:
            d.update(input_size=self.input_size, max_aspect=self.max_aspect, normalisation=self.preprocessing.to_dict())
        return d

