"""Engine overhead: samples/s of the full training step against the bare model step, in one run.

The engine's figure is what ``metrics.jsonl`` reports (samples/s per logging window, the first
window dropped as warm-up): data loading and augmentation in DataLoader workers, the stage's
objective, optimizer, scheduler, clipping, logging. The bare figure is forward + backward
(``predicted_depth.mean()``) + AdamW step of the same model on the same batches, pre-loaded.

Stages: ``teacher`` (GP2 objective on synthetic scenes rendered on the fly) and ``student``
(pseudo-label shards written first by the labeling job with a random tiny teacher and flip TTA, so
they carry confidence maps; colour jitter, blur and CutMix; the frozen DINOv2 forward and the
feature-alignment loss; the trimmed UTS loss per CutMix region).

    python benchmarks/train_step.py [--presets tiny vits] [--stages teacher student] [--precision no]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from distill.config import load_config, save_config
from distill.data.loading import build_train_loader
from distill.preprocessing import IMAGENET
from distill.engine import make_model, make_optimizer
from teacher.config import TeacherConfig
from distill.spaces import DEPTH_UP_TO_SCALE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (crop, batch, steps, log window, scene height, width) per preset: a reduced crop keeps ViT-S short
# on a CPU; tiny keeps its preset's 120x160 scenes.
SETTINGS = {
    "tiny": (112, 8, 120, 20, 120, 160),
    "vits": (266, 4, 12, 4, 360, 480),
    "vitb": (266, 4, 8, 4, 360, 480),
    "vitl": (266, 2, 6, 3, 360, 480),
}


def run_overrides(preset: str, output_dir: str, precision: str) -> list[str]:
    crop, batch, steps, window, _, _ = SETTINGS[preset]
    return [f"model.preset={preset}", f"data.crop_size={crop}", f"batch_size={batch}", f"max_steps={steps}",
            f"log_every={window}", f"output_dir={output_dir}", "tracker=none", "save_every=0", "eval_every=0",
            "data.val=[]", f"precision={precision}", "optim.warmup_steps=0"]


def teacher_config(preset: str, output_dir: str, precision: str) -> TeacherConfig:
    _, _, _, _, height, width = SETTINGS[preset]
    return load_config(
        TeacherConfig,
        os.path.join(ROOT, "configs", "teacher", "tiny.yaml"),
        run_overrides(preset, output_dir, precision)
        + [f"data.groups.0.datasets.{i}.options.{k}={v}" for i in range(3) for k, v in (("height", height), ("width", width))],
    )


def pseudo_label_shards(preset: str, root: str) -> str:
    """Shards over synthetic scenes of the preset's size, labeled by a random tiny teacher (the
    teacher does not matter for the student step; its flip TTA gives the shards confidence maps)."""
    from distill.data.synthetic import write_dataset
    from distill.models import build_model, save_model
    from pseudolabel.job import run
    from pseudolabel.config import PseudolabelConfig

    _, _, _, _, height, width = SETTINGS[preset]
    write_dataset(os.path.join(root, "scenes"), 48, seed=5, size=(height, width))
    torch.manual_seed(1234)  # not the student's seed: a tiny student would start as an exact copy of its teacher
    teacher = save_model(build_model("tiny", DEPTH_UP_TO_SCALE), os.path.join(root, "teacher"))
    out = os.path.join(root, "shards")
    run(load_config(PseudolabelConfig, None, [f"teacher={teacher}", f"input={root}/scenes/rgb", f"output={out}",
                                              "input_size=112", "tta=flip", "num_workers=0", "progress=false"]))
    return out


def student_config(preset: str, output_dir: str, precision: str, shards: str):
    from student.config import StudentConfig

    return load_config(StudentConfig, os.path.join(ROOT, "configs", "student", "tiny.yaml"),
                       run_overrides(preset, output_dir, precision) + [f"data.groups.0.datasets.0.root={shards}"])


def engine_samples_per_s(stage: str, cfg) -> float:
    if stage == "teacher":
        from teacher.train import main
    else:
        from student.train import main
    config_path = os.path.join(cfg.output_dir, "bench_config.yaml")
    os.makedirs(cfg.output_dir, exist_ok=True)
    save_config(cfg, config_path)
    main(["--config", config_path])  # the stage's own entry point, as accelerate launch runs it
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        windows = [json.loads(line)["samples_per_s"] for line in f]
    return sum(windows[1:]) / len(windows[1:])


def bare_samples_per_s(cfg) -> float:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.data.num_workers = 0
    loader, _ = build_train_loader(cfg.data, cfg.batch_size, cfg.seed)
    batches = [next(iter(loader))["image"].to(device) for _ in range(min(cfg.max_steps, 8))]
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, DEPTH_UP_TO_SCALE).to(device).train()
    optimizer = make_optimizer(model, cfg.optim)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

    def step(images):
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model(pixel_values=IMAGENET.normalize(images)).predicted_depth.float().mean()
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
    parser.add_argument("--stages", nargs="+", default=["teacher", "student"], choices=["teacher", "student"])
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results = []
    for preset in args.presets:
        for stage in args.stages:
            with tempfile.TemporaryDirectory() as tmp:
                if stage == "teacher":
                    make = lambda out: teacher_config(preset, out, args.precision)  # noqa: E731
                else:
                    shards = pseudo_label_shards(preset, tmp)
                    make = lambda out: student_config(preset, out, args.precision, shards)  # noqa: E731
                engine = engine_samples_per_s(stage, make(os.path.join(tmp, "run")))
                bare = bare_samples_per_s(make(os.path.join(tmp, "bare")))
            results.append((stage, preset, SETTINGS[preset][0], SETTINGS[preset][1], engine, bare))
    print(f"\ndevice: {device}, precision: {args.precision}")
    print(f"{'stage':8s} {'preset':7s} {'crop':>5s} {'batch':>6s} {'engine samples/s':>17s} {'bare samples/s':>15s} {'overhead':>9s}")
    for stage, preset, crop, batch, engine, bare in results:
        print(f"{stage:8s} {preset:7s} {crop:5d} {batch:6d} {engine:17.2f} {bare:15.2f} {100 * (bare / engine - 1):8.1f}%")


if __name__ == "__main__":
    main()
