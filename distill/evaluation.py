"""The one evaluation loop: ``evaluate_samples`` scores any iterable of samples with a benchmark's
protocol, crop and depth range (``distill.metrics.BENCHMARKS``); training validation
(``distill.engine``), the evaluate command (``distill/evaluate.py``) and the benchmarks all call it.
Each image is prepared by the model's one input rule (``distill.inference.InputRule``: its own image
processor, as labeling and ``pipeline("depth-estimation")`` prepare it) and the post-processed
prediction resized back to the ground truth's size (bilinear).
``evaluate_depth`` runs it over a benchmark reader, ``evaluate_da2k`` scores DA-2K's point pairs.
What the protocols, crops and ranges are: docs/evaluation.md.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF

from distill.config import ConfigError
from distill.data import formats as F
from distill.inference import InputRule
from distill.metrics import (
    BENCHMARKS,
    METRIC_NAMES,
    benchmark_mask,
    depth_range_mask,
    per_image_metrics,
    protocol_depth,
)
from distill.spaces import OutputSpace, default_protocol, to_depth
from distill.visualisation import save_depth_visuals, save_pair_visuals


class EvalError(ConfigError):
    """Bad input: reported as one line on stderr, exit code 2."""


# ------------------------------------------------------------------------------------ protocol
def evaluation_range(benchmark: str | None):
    """The fixed depth range (metres) aligned predictions are clamped to: the benchmark's published
    range, or None (no clamp) for benchmarks without one."""
    record = BENCHMARKS.get(benchmark)
    return record.depth_range if record is not None else None


def evaluation_mask(benchmark: str | None, gt_depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pixels scored: valid, finite positive ground truth, and inside the benchmark's crop and range."""
    mask = valid.bool() & torch.isfinite(gt_depth) & (gt_depth > 0)
    return mask & benchmark_mask(benchmark, gt_depth) if evaluation_range(benchmark) is not None else mask


# ---------------------------------------------------------------------------------------- loop
@torch.no_grad()
def predict_images(model, images: list, rule: InputRule, device, autocast=contextlib.nullcontext) -> torch.Tensor:
    """uint8 [H, W, 3] images of one size -> predictions [B, H, W] (CPU, float32) at that size, in the
    model's output space: each image prepared by ``rule``, the post-processed output resized back (bilinear)."""
    hw = tuple(images[0].shape[:2])
    x = torch.from_numpy(np.stack([rule.prepare(im) for im in images])).to(device)
    pred = torch.stack(rule.run(model, rule.model_input(x), [hw] * len(images), autocast))
    return TF.interpolate(pred[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0].cpu()


def _batches(items, load, batch_size: int):
    """Consecutive loaded items grouped while their images share a size (at most ``batch_size``)."""
    group = []
    for item in items:
        loaded = load(item)
        if group and (len(group) == batch_size or group[0][1].shape != loaded[1].shape):
            yield group
            group = []
        group.append(loaded)
    if group:
        yield group


def _keep(sample):
    return sample


def read_samples(reader, indices, num_workers: int = 0):
    """``reader[i]`` for ``indices`` in order, read by ``num_workers`` DataLoader workers (0: here)."""
    indices = list(indices)
    if num_workers <= 0:
        return (reader[i] for i in indices)
    from torch.utils.data import DataLoader, Subset  # noqa: PLC0415

    return iter(DataLoader(Subset(reader, indices), batch_size=None, num_workers=num_workers, collate_fn=_keep))


@torch.no_grad()
def evaluate_samples(model, samples, output_space: OutputSpace, rule: InputRule,
                     benchmark: str | None = None, protocol: str | None = None, batch_size: int = 1,
                     device="cpu", autocast=contextlib.nullcontext, on_image=None,
                     depth_range: tuple[float, float] | None = None) -> list[dict]:
    """Per-image rows (``index``, ``key``, ``valid_pixels``, ``skipped``, the metrics) of ``samples``
    (``Sample`` objects whose targets are depth up to scale or better), fed to the model by ``rule``
    (``InputRule.of_model``), scored with ``protocol`` (default: the model's) inside ``benchmark``'s
    crop and depth range, predictions clamped only to its fixed range (or ``depth_range``, given for a
    benchmark without a published one: ground truth outside it is not scored).
    ``on_image(sample, depth, gt, valid, mask)`` sees each aligned prediction."""
    protocol = protocol or default_protocol(output_space)
    fixed_range, depth_range = depth_range, depth_range or evaluation_range(benchmark)
    rows = []
    for group in _batches(enumerate(samples), lambda item: (item[0], item[1].image, item[1]), batch_size):
        batch = [s for _, _, s in group]
        pred = predict_images(model, [s.image for s in batch], rule, device, autocast)
        gt = torch.from_numpy(np.stack([np.asarray(to_depth(s.target, s.space), dtype=np.float32) for s in batch]))
        valid = torch.from_numpy(np.stack([s.valid for s in batch])) & torch.isfinite(gt) & (gt > 0)
        mask = evaluation_mask(benchmark, gt, valid)
        if fixed_range is not None:
            mask = mask & depth_range_mask(gt, *fixed_range)
        depth = protocol_depth(pred, output_space, gt, mask, protocol, depth_range)
        metrics = per_image_metrics(depth, gt, mask)
        for j, (index, _, sample) in enumerate(group):
            ok = bool(metrics["valid"][j])
            row = {"index": index, "key": sample.key, "valid_pixels": int(mask[j].sum()), "skipped": not ok}
            row.update({k: (float(metrics[k][j]) if ok else None) for k in METRIC_NAMES})
            rows.append(row)
            if on_image is not None:
                on_image(sample, depth[j].numpy(), gt[j].numpy(), valid[j].numpy(), mask[j].numpy())
    return rows


def mean_metrics(rows: list[dict]) -> dict:
    """The metrics averaged over the scored rows (None where no image was scored)."""
    scored = [r for r in rows if not r["skipped"]]
    return {k: (float(np.mean([r[k] for r in scored])) if scored else None) for k in METRIC_NAMES}


def _progress(total: int, desc: str):
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None)


def _counted(samples, bar):
    for sample in samples:
        yield sample
        bar.update(1)


def evaluate_depth(model, reader, benchmark: str, output_space: OutputSpace, protocol: str | None = None,
                   batch_size: int = 1, max_images: int | None = None, visuals_dir=None, device="cpu", *,
                   rule: InputRule, num_workers: int = 0, depth_range: tuple[float, float] | None = None) -> dict:
    """A benchmark's summary (mean metrics, counts, settings) with the per-image rows under ``images``."""
    protocol = protocol or default_protocol(output_space)
    n = len(reader) if max_images is None else min(len(reader), max_images)
    model.eval().to(device)
    start = time.perf_counter()
    on_image = None if visuals_dir is None else functools.partial(save_depth_visuals, visuals_dir)
    bar = _progress(n, benchmark)
    rows = evaluate_samples(model, _counted(read_samples(reader, range(n), num_workers), bar), output_space,
                            rule, benchmark, protocol, batch_size, device, on_image=on_image,
                            depth_range=depth_range)
    bar.close()
    scored = sum(not r["skipped"] for r in rows)
    crop = BENCHMARKS[benchmark].crop_name if benchmark in BENCHMARKS else None
    rng = depth_range or evaluation_range(benchmark)
    return {
        **mean_metrics(rows),
        "benchmark": benchmark,
        "protocol": protocol,
        "num_images": scored,
        "num_skipped": len(rows) - scored,
        "output_space": output_space.to_dict(),
        "crop": crop,
        "depth_range": None if rng is None else [rng[0], rng[1] if math.isfinite(rng[1]) else None],
        "input_rule": rule.to_dict(),
        "seconds": round(time.perf_counter() - start, 3),
        "images": rows,
    }


# ----------------------------------------------------------------------------------------- DA-2K
def load_da2k(root) -> tuple[str, dict]:
    """(folder the image paths are relative to, annotations) of a DA-2K ``annotations.json``."""
    root = os.fspath(root)
    path = root if os.path.isfile(root) else os.path.join(root, "annotations.json")
    if not os.path.isfile(path):
        raise EvalError(f"{path}: DA-2K annotations not found")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise EvalError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict) or not data:
        raise EvalError(f"{path}: expected a non-empty object mapping image paths to lists of pairs")
    for image, pairs in data.items():
        if not isinstance(pairs, list):
            raise EvalError(f"{path}: {image}: expected a list of pairs")
        for pair in pairs:
            ok = isinstance(pair, dict) and pair.get("closer_point") in ("point1", "point2") and all(
                isinstance(pair.get(p), (list, tuple)) and len(pair[p]) == 2
                and all(isinstance(v, (int, float)) for v in pair[p]) for p in ("point1", "point2"))
            if not ok:
                raise EvalError(f"{path}: {image}: malformed pair {pair!r} (need point1, point2 = [row, col], "
                                "closer_point = 'point1' | 'point2')")
    return os.path.dirname(os.path.abspath(path)), data


def _pixel(point, hw, where: str) -> tuple[int, int]:
    r, c = int(round(point[0])), int(round(point[1]))
    if not (0 <= r < hw[0] and 0 <= c < hw[1]):
        raise EvalError(f"{where}: point {list(point)} outside the {hw[0]}x{hw[1]} image")
    return r, c


def pair_correct(pred: np.ndarray, pair: dict, output_space: OutputSpace, where: str = "") -> bool:
    """Whether the prediction puts the annotated closer point strictly nearer than the other one."""
    closer = pair[pair["closer_point"]]
    farther = pair["point2" if pair["closer_point"] == "point1" else "point1"]
    a = pred[_pixel(closer, pred.shape, where)]
    b = pred[_pixel(farther, pred.shape, where)]
    return bool(a > b) if output_space.space == "disparity" else bool(a < b)


def evaluate_da2k(model, root, output_space: OutputSpace, batch_size: int = 1,
                  max_images: int | None = None, visuals_dir=None, device="cpu", *, rule: InputRule) -> dict:
    """DA-2K pair accuracy (over all pairs; per scene type too) with per-image rows."""
    base, annotations = load_da2k(root)
    names = sorted(annotations)[:max_images] if max_images is not None else sorted(annotations)
    model.eval().to(device)

    def load(name):
        path = name if os.path.isabs(name) else os.path.join(base, name)
        return name, F.read_rgb(path, exif_transpose=True), annotations[name]

    rows, start = [], time.perf_counter()
    bar = _progress(len(names), "da2k")
    for group in _batches(names, load, batch_size):
        pred = predict_images(model, [im for _, im, _ in group], rule, device).numpy()
        for j, (name, image, pairs) in enumerate(group):
            right = [pair_correct(pred[j], p, output_space, name) for p in pairs]
            parts = Path(name).parts
            rows.append({"image": name, "scene": parts[-2] if len(parts) > 1 else "", "num_pairs": len(pairs),
                         "correct": sum(right), "accuracy": (sum(right) / len(pairs)) if pairs else None})
            if visuals_dir is not None:
                save_pair_visuals(visuals_dir, name, image, pred[j], output_space, pairs, right)
        bar.update(len(group))
    bar.close()
    total, correct = sum(r["num_pairs"] for r in rows), sum(r["correct"] for r in rows)
    scenes = {}
    for r in rows:
        s = scenes.setdefault(r["scene"], [0, 0])
        s[0], s[1] = s[0] + r["correct"], s[1] + r["num_pairs"]
    return {
        "pair_accuracy": correct / total if total else None,
        "benchmark": "da2k",
        "protocol": None,
        "num_images": len(rows),
        "num_pairs": total,
        "num_correct": correct,
        "per_scene": {k: {"pair_accuracy": c / t if t else None, "num_pairs": t} for k, (c, t) in sorted(scenes.items())},
        "output_space": output_space.to_dict(),
        "input_rule": rule.to_dict(),
        "seconds": round(time.perf_counter() - start, 3),
        "images": rows,
    }
