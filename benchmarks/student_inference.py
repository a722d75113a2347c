"""CPU inference speed of the student presets: images/s of PyTorch eager, batch 1, random weights
(speed does not depend on the weights), printed as a markdown table.

    python benchmarks/student_inference.py [--presets tiny glpn-b0] [--sizes 518 256] [--threads 2] [--warmup 2] [--images 3] [--repeats 3]

Each preset predicts a 480x640 (4:3) input brought to each shorter side by the one rule of
``distill.preprocessing`` at the preset's own size multiple (14 for Depth Anything, 16 for DPT,
32 for GLPN, so the input shapes differ slightly; the table gives them). After ``--warmup`` passes
(the first ones run several times slower), each figure is the median of ``--repeats`` runs of
``--images`` passes. Default presets: every
preset but vitb/vitl/vitg (minutes per pass on a CPU).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distill import models, registry  # noqa: E402
from distill.config import parse_cli  # noqa: E402
from distill.preprocessing import inference_size, multiple_of  # noqa: E402
from distill.spaces import RELATIVE_DISPARITY  # noqa: E402

LARGE = ("vitb", "vitl", "vitg")


@dataclass
class StudentInferenceConfig:
    presets: list[str] = field(default_factory=lambda: [name for name in registry.PRESETS if name not in LARGE])
    sizes: list[int] = field(default_factory=lambda: [518, 256])
    threads: int = 2
    warmup: int = 2
    images: int = 3
    repeats: int = 3


def images_per_second(model, x: torch.Tensor, warmup: int, images: int, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):  # allocations, kernel selection
            model(pixel_values=x)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(images):
                model(pixel_values=x)
            rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> int:
    args = parse_cli(StudentInferenceConfig, argv, prog="benchmarks/student_inference.py")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"batch 1, {args.threads} torch threads ({os.cpu_count()} cores, load average {load:.1f} at start), "
          f"torch {torch.__version__}; median of {args.repeats} runs of {args.images} images\n")
    header = "| preset | architecture | parameters (M) | " + " | ".join(f"input @{s} | images/s @{s}" for s in args.sizes) + " |"
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for preset in args.presets:
        torch.manual_seed(0)
        model = models.build_model(preset, RELATIVE_DISPARITY).eval()
        multiple = registry.size_multiple(model.config)
        cells = [preset, type(model).__name__.removesuffix("ForDepthEstimation"),
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}"]
        for size in args.sizes:
            if registry.get_preset(preset).family == "dpt_hybrid":  # one square size, a multiple of 32, per model
                h = w = multiple_of(size, 32)
                model = models.build_model(preset, RELATIVE_DISPARITY, input_size=h).eval()
            else:
                h, w = inference_size(480, 640, size, multiple)
            rate = images_per_second(model, torch.randn(1, 3, h, w), args.warmup, args.images, args.repeats)
            cells += [f"{h}x{w}", f"{rate:.2f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
