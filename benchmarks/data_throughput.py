"""Throughput of the training data path at 518x518 with augmentations, per DataLoader worker.

Writes a small corpus in the generic folder format (synthetic 480x640 scenes, RGB as JPEG or PNG,
depth as 16-bit PNG in mm) and pseudo-label shards of the JPEG corpus (the labeling job with a
random tiny teacher at input 518 and flip TTA: original JPEG bytes, depth and confidence PNGs at
the teacher's resolution, resized to the image when decoded), then times each stage of one sample
in one process: decode (reader), augment (resize + crop + flip, albumentations), to tensors +
collate, and finally a real DataLoader with N workers.

    python benchmarks/data_throughput.py [--samples 48] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from PIL import Image

from distill.data.loading import DataConfig, DatasetConfig, GroupConfig, build_train_loader, collate
from distill.data.readers import FolderReader
from distill.data.synthetic import write_dataset
from distill.data.transforms import TrainTransform, sample_to_tensors
from distill.data.shards import ShardReader


def make_corpus(root: str, n: int, image_format: str) -> None:
    write_dataset(root, n, seed=0, size=(480, 640), geometry="metric")
    if image_format == "jpg":
        for name in os.listdir(os.path.join(root, "rgb")):
            path = os.path.join(root, "rgb", name)
            Image.open(path).convert("RGB").save(path[:-4] + ".jpg", quality=90)
            os.remove(path)


def make_shards(corpus: str, out: str) -> None:
    import torch

    from distill.config import load_config
    from distill.models import build_model, save_model
    from distill.spaces import DEPTH_UP_TO_SCALE
    from pseudolabel.job import run
    from pseudolabel.config import PseudolabelConfig

    torch.manual_seed(0)
    teacher = save_model(build_model("tiny", DEPTH_UP_TO_SCALE), os.path.join(out, "teacher"))
    run(load_config(PseudolabelConfig, None, [f"teacher={teacher}", f"input={corpus}/rgb", f"output={out}/shards",
                                              "tta=flip", "num_workers=0", "progress=false"]))


def time_stages(reader, size: int, batch: int) -> dict:
    transform = TrainTransform(size)
    n = len(reader)
    sample_to_tensors(transform(reader[0], seed=0))  # warm-up: lazy initialisation is not per-sample cost
    t0 = time.perf_counter()
    samples = [reader[i] for i in range(n)]
    t1 = time.perf_counter()
    augmented = [transform(s, seed=i) for i, s in enumerate(samples)]
    t2 = time.perf_counter()
    rows = [sample_to_tensors(s) for s in augmented]
    for i in range(0, n - batch + 1, batch):
        collate([{**r, "bad_samples": []} for r in rows[i : i + batch]])
    t3 = time.perf_counter()
    return {"decode": (t1 - t0) / n, "augment": (t2 - t1) / n, "collate": (t3 - t2) / n}


def loader_throughput(reader: str, root: str, size: int, batch: int, workers: int, steps: int) -> float:
    cfg = DataConfig(groups=[GroupConfig(datasets=[DatasetConfig(reader=reader, root=root)])], crop_size=size,
                     num_workers=workers, prefetch_factor=4, pin_memory=False)
    loader, _ = build_train_loader(cfg, batch, seed=0)
    it = iter(loader)
    next(it)  # worker start-up
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{'source':22s} {'decode ms':>10s} {'augment ms':>11s} {'collate ms':>11s} {'samples/s/worker':>17s} {'loader samples/s':>17s}")
    steps = 2 * args.samples // args.batch
    for image_format in ("jpg", "png", "shards"):
        with tempfile.TemporaryDirectory() as root:
            make_corpus(root, args.samples, "png" if image_format == "png" else "jpg")
            reader, label = "folder", f"{image_format.upper()} 640x480 + PNG16"
            if image_format == "shards":
                make_shards(root, root)
                reader, root, label = "shards", os.path.join(root, "shards"), "shards (JPEG + labels)"
            cost = time_stages(ShardReader(root) if reader == "shards" else FolderReader(root), args.size, args.batch)
            per_worker = 1.0 / sum(cost.values())
            loader = loader_throughput(reader, root, args.size, args.batch, args.workers, steps)
        print(f"{label:22s} {1e3 * cost['decode']:10.2f} {1e3 * cost['augment']:11.2f} {1e3 * cost['collate']:11.2f} "
              f"{per_worker:17.1f} {loader:17.1f}", flush=True)
    print(f"(crop {args.size}x{args.size}, batch {args.batch}, loader with {args.workers} workers on {os.cpu_count()} cores)")

if __name__ == "__main__":
    main()
