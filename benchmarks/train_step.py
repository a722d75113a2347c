"""Engine overhead: samples/s of the full training step against the bare model step, in one run.

The engine's figure is what ``metrics.jsonl`` reports (samples/s per logging window, the first
window dropped as warm-up): data loading and augmentation in DataLoader workers, the stage's
objective, optimizer, scheduler, clipping, logging. The bare figure is forward + backward
(``predicted_depth.mean()``) + AdamW step of the same model on the same batches, pre-loaded.

    python benchmarks/train_step.py [--presets tiny vits] [--stage teacher]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from distill.config import load_config  # noqa: E402
from distill.data.loading import build_train_loader  # noqa: E402
from distill.data.transforms import normalize_images  # noqa: E402
from distill.engine import make_model, make_optimizer, train  # noqa: E402
from distill.train_teacher import TeacherConfig  # noqa: E402
from teacher.objective import TeacherObjective, output_space_for  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (crop, batch, steps, log window, scene height, width) per preset: a reduced crop keeps ViT-S short
# on a CPU; tiny keeps its preset's 120x160 scenes.
SETTINGS = {
    "tiny": (112, 8, 120, 20, 120, 160),
    "vits": (266, 4, 12, 4, 360, 480),
    "vitb": (266, 4, 8, 4, 360, 480),
    "vitl": (266, 2, 6, 3, 360, 480),
}


def teacher_config(preset: str, output_dir: str, precision: str) -> TeacherConfig:
    crop, batch, steps, window, height, width = SETTINGS[preset]
    return load_config(
        TeacherConfig,
        os.path.join(ROOT, "configs", "teacher", "tiny.yaml"),
        [f"model.preset={preset}", f"data.crop_size={crop}", f"batch_size={batch}", f"max_steps={steps}",
         f"log_every={window}", f"output_dir={output_dir}", "tracker=none", "save_every=0", "eval_every=0",
         "data.val=[]", f"precision={precision}", "optim.warmup_steps=0"]
        + [f"data.groups.0.datasets.{i}.options.{k}={v}" for i in range(3) for k, v in (("height", height), ("width", width))],
    )


def engine_samples_per_s(cfg) -> float:
    train(cfg, TeacherObjective(cfg.objective), output_space_for(cfg.objective.kind))
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        windows = [json.loads(line)["samples_per_s"] for line in f]
    return sum(windows[1:]) / len(windows[1:])


def bare_samples_per_s(cfg) -> float:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.data.num_workers = 0
    loader, _ = build_train_loader(cfg.data, cfg.batch_size, cfg.seed)
    batches = [next(iter(loader))["image"].to(device) for _ in range(min(cfg.max_steps, 8))]
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, output_space_for(cfg.objective.kind)).to(device).train()
    optimizer = make_optimizer(model, cfg.optim)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

    def step(images):
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model(pixel_values=normalize_images(images)).predicted_depth.float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    window = SETTINGS[cfg.model.preset][3]
    for i in range(window):  # warm-up, as the engine's first window
        step(batches[i % len(batches)])
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = cfg.max_steps - window
    for i in range(n):
        step(batches[i % len(batches)])
    if device == "cuda":
        torch.cuda.synchronize()
    return n * cfg.batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "vits"], choices=list(SETTINGS))
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results = []
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = teacher_config(preset, tmp, args.precision)
            engine = engine_samples_per_s(cfg)
            bare = bare_samples_per_s(teacher_config(preset, tmp, args.precision))
        results.append((preset, SETTINGS[preset][0], SETTINGS[preset][1], engine, bare))
    print(f"\ndevice: {device}, precision: {args.precision}, teacher stage (GP2 objective)")
    print(f"{'preset':7s} {'crop':>5s} {'batch':>6s} {'engine samples/s':>17s} {'bare samples/s':>15s} {'overhead':>9s}")
    for preset, crop, batch, engine, bare in results:
        print(f"{preset:7s} {crop:5d} {batch:6d} {engine:17.2f} {bare:15.2f} {100 * (bare / engine - 1):8.1f}%")


if __name__ == "__main__":
    main()
