"""Throughput of the training data path at 518x518 with augmentations, per DataLoader worker.

Writes a small corpus in the generic folder format (synthetic 480x640 scenes, RGB as JPEG or PNG,
depth as 16-bit PNG in mm), then times each stage of one sample in one process: decode (reader),
augment (resize + crop + flip, albumentations), to tensors + collate, and finally a real
DataLoader with N workers.

    python benchmarks/data_throughput.py [--samples 48] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402

from distill.data.loading import DataConfig, DatasetConfig, GroupConfig, build_train_loader, collate  # noqa: E402
from distill.data.readers import FolderReader  # noqa: E402
from distill.data.synthetic import write_dataset  # noqa: E402
from distill.data.transforms import TrainTransform, sample_to_tensors  # noqa: E402


def make_corpus(root: str, n: int, image_format: str) -> None:
    write_dataset(root, n, seed=0, size=(480, 640), geometry="metric")
    if image_format == "jpg":
        for name in os.listdir(os.path.join(root, "rgb")):
            path = os.path.join(root, "rgb", name)
            Image.open(path).convert("RGB").save(path[:-4] + ".jpg", quality=90)
            os.remove(path)


def time_stages(root: str, size: int, batch: int) -> dict:
    reader = FolderReader(root)
    transform = TrainTransform(size)
    n = len(reader)
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


def loader_throughput(root: str, size: int, batch: int, workers: int, steps: int) -> float:
    cfg = DataConfig(groups=[GroupConfig(datasets=[DatasetConfig(reader="folder", root=root)])], crop_size=size,
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
    for image_format in ("jpg", "png"):
        with tempfile.TemporaryDirectory() as root:
            make_corpus(root, args.samples, image_format)
            cost = time_stages(root, args.size, args.batch)
            per_worker = 1.0 / sum(cost.values())
            loader = loader_throughput(root, args.size, args.batch, args.workers, steps=2 * args.samples // args.batch)
        label = f"{image_format.upper()} 640x480 + PNG16"
        print(f"{label:22s} {1e3 * cost['decode']:10.2f} {1e3 * cost['augment']:11.2f} {1e3 * cost['collate']:11.2f} "
              f"{per_worker:17.1f} {loader:17.1f}")
    print(f"(crop {args.size}x{args.size}, batch {args.batch}, loader with {args.workers} workers on {os.cpu_count()} cores; "
          "pseudo-label shards: see benchmarks/pseudolabel_throughput.py once the labeling job exists)")


if __name__ == "__main__":
    main()
