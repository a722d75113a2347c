"""Evaluate a depth model on a standard benchmark: a metrics table, JSON + CSV, pictures, point clouds.

    python distill/evaluate.py --model M --benchmark B --data-root R [--protocol P] [--output FILE]
        [--save-visuals DIR] [--max-images N] [--input-size 518] [--batch-size 1] [--device cuda]
        [--num-workers 0] [--output-space SPACE:GEOMETRY]

M: a checkpoint directory of this project or any transformers depth model (directory or hub id).
P: ``affine-disparity`` (Depth Anything / MiDaS: least-squares scale and shift of the predicted
disparity, then depth), ``scale-log`` (GP2: median log-ratio scale) or ``metric`` (no alignment);
the default follows the model's output space (``distill.metrics.default_protocol``).

Each image is resized for inference as the original Depth Anything code does (aspect kept, shorter
side at least ``--input-size``, sides multiples of the patch size, OpenCV bicubic; *not* the
transformers image processor), normalised with the model's mean/std (``preprocessor_config.json``,
ImageNet by default), and the prediction is resized back to the ground truth's size (bilinear).
Metrics are computed per image in float64 and averaged over images with at least 10 valid pixels.

| benchmark | reader (layout: ``distill.data.readers``) | crop | GT depth range (m) | source of the range |
|---|---|---|---|---|
| nyu | ``NYUReader``: image_N.png + depth_N.png (mm) | Eigen | 1e-3 .. 10 | RECIPE.md |
| kitti | ``KITTIReader``: annotated depth + raw images | Garg | 1e-3 .. 80 | RECIPE.md |
| eth3d | ``ETH3DReader``: DSLR images + raw float32 depth | none | 1e-5 .. inf | Marigold eval code (assumed to match Depth Anything's) |
| diode | ``DIODEReader``: png + _depth.npy + _depth_mask.npy | none | 0.6 .. 350 | Marigold eval code (assumed to match Depth Anything's) |
| sintel | ``SintelReader``: final pass png + .dpt | none | 1e-3 .. 72 | assumption (MiDaS-era cap on Sintel's far background) |
| folder | ``FolderReader``: dataset.yaml + rgb/ + depth/ | none | the reader's valid mask | - |
| da2k | ``annotations.json`` + images (see below) | - | - | pair accuracy, no depth metrics |

Aligned predictions are clamped to the benchmark's depth range; where it has no finite upper
bound (eth3d) or no range at all (folder) to each image's valid ground-truth range instead.
For ``folder`` the ground truth's geometry limits the protocols: ``utss`` targets (disparity up to
scale and shift) allow only affine-disparity, ``uts`` targets not ``metric``.

DA-2K (Depth Anything V2): ``--data-root`` is the benchmark folder holding ``annotations.json`` (or
that file itself): a JSON object mapping each image path (relative to the file's folder) to a list
of ``{"point1": [row, col], "point2": [row, col], "closer_point": "point1" | "point2"}`` (the
published format; points are (vertical, horizontal) pixel positions in the image as OpenCV reads
it, i.e. EXIF orientation applied: assumed, as the Depth Anything code reads images with
``cv2.imread``). A pair is right when the prediction (resized to the image size) at the closer point
is strictly nearer: larger for a disparity output, smaller for depth or log-depth. Ties count as
wrong. The score is the fraction of right pairs over all pairs (also given per scene type, the
folder above each image).

Outputs: a table on stdout; ``--output FILE`` (JSON): the mean metrics at the top level (abs_rel,
sq_rel, rmse, rmse_log, log10, silog, d1, d2, d3; ``pair_accuracy`` for da2k) with benchmark,
model, protocol, num_images, settings and the per-image rows under ``images``; the per-image rows
also go to a CSV beside it (same name, ``.csv``). ``--save-visuals DIR``: per image a PNG strip
(input | prediction | ground truth | error, depths coloured on one inverse-depth scale, error =
|pred - gt| / gt from 0 to 0.5, pixels outside the evaluation mask black) and, where the benchmark
gives intrinsics, a binary PLY point cloud of the aligned prediction coloured by the image.

Bad input (missing data root, unknown benchmark, a model directory without config.json, ...):
one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from distill.config import CliParser
from distill.data import formats as F
from distill.data.readers import DIODEReader, ETH3DReader, FolderReader, KITTIReader, NYUReader, SintelReader
from distill.data.sample import SampleError
from distill.data.synthetic import colorize
from distill.data.transforms import resize_for_inference
from distill.evaluation import align_and_score, predict
from distill.metrics import (
    BENCHMARK_CROP,
    BENCHMARK_DEPTH_RANGE,
    METRIC_NAMES,
    PROTOCOLS,
    benchmark_mask,
    default_protocol,
)
from distill.models import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, PATCH_SIZE
from distill.spaces import OutputSpace, point_cloud, to_depth

DEPTH_BENCHMARKS = {
    "nyu": NYUReader,
    "kitti": KITTIReader,
    "eth3d": ETH3DReader,
    "sintel": SintelReader,
    "diode": DIODEReader,
    "folder": FolderReader,
}
BENCHMARKS = (*DEPTH_BENCHMARKS, "da2k")
PREPROCESSING = "distill resize_for_inference: aspect kept, shorter side >= input_size, multiples of the patch size, OpenCV bicubic"
ERROR_SCALE = 0.5  # abs-rel error mapped to the brightest colour of the error panel
VISUAL_SIZE = 640  # longest side of each panel of a visual strip


class EvalError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


# --------------------------------------------------------------------------------------- model
def load_model(name: str, output_space: OutputSpace | None = None):
    """``load_depth_model`` with one-line errors for the usual mistakes."""
    from distill.models import load_depth_model

    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise EvalError(f"{name}: no config.json (not a transformers model directory)")
    if not os.path.isdir(name) and (os.path.exists(name) or name.startswith((".", "/")) or name.count("/") > 1):
        raise EvalError(f"{name}: not a model directory or hub id")
    try:
        return load_depth_model(name, output_space)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EvalError(f"cannot load model {name!r}: {first}") from None


def model_preprocessing(name: str, config) -> dict:
    """Input normalisation and size multiple of a model: from its ``preprocessor_config.json`` when
    there is one (directory, or hub cache), else ImageNet mean/std and the config's patch size."""
    pre = {}
    try:
        if os.path.isdir(name):
            path = os.path.join(name, "preprocessor_config.json")
            pre = json.loads(Path(path).read_text()) if os.path.isfile(path) else {}
        else:
            from huggingface_hub import hf_hub_download

            pre = json.loads(Path(hf_hub_download(name, "preprocessor_config.json")).read_text())
    except Exception:  # no processor file: the defaults below
        pre = {}
    mean, std = pre.get("image_mean", IMAGENET_MEAN), pre.get("image_std", IMAGENET_STD)
    if pre.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    multiple = pre.get("ensure_multiple_of") or pre.get("size_divisor") or getattr(config, "patch_size", None) or PATCH_SIZE
    return {"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std), "multiple": int(multiple)}


def parse_output_space(text: str) -> OutputSpace:
    """``space:geometry``, e.g. ``depth:metric``, ``disparity:utss``, ``depth:uts``."""
    try:
        space, geometry = text.split(":")
        return OutputSpace(space, geometry)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected space:geometry (e.g. depth:metric): {err}") from None


def check_protocol(protocol: str, output_space: OutputSpace, gt_geometry: str = "metric") -> None:
    """Refuse protocols that mean nothing for this model output or ground truth."""
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    out = f"{output_space.space}/{output_space.geometry}"
    if protocol == "metric" and output_space.geometry != "metric":
        raise EvalError(f"protocol 'metric' needs a model with metric output; this model predicts {out} "
                        f"(use {default_protocol(output_space)})")
    if protocol == "scale-log" and output_space.geometry not in ("metric", "uts"):
        raise EvalError(f"protocol 'scale-log' needs depth up to scale or better; this model predicts {out} "
                        "(use affine-disparity)")
    if gt_geometry == "none":
        raise EvalError("the benchmark folder has no depth labels")
    if gt_geometry == "utss" and protocol != "affine-disparity":
        raise EvalError(f"ground truth known up to scale and shift allows only affine-disparity, not {protocol!r}")
    if gt_geometry == "uts" and protocol == "metric":
        raise EvalError("ground truth known up to scale cannot be scored with protocol 'metric'")


# ---------------------------------------------------------------------------------- inference
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


@torch.no_grad()
def _predict_images(model, images: list, size: int, pre: dict, device) -> torch.Tensor:
    """uint8 [H, W, 3] images of one size -> predictions [B, H, W] (CPU, float32) at that size."""
    x = np.stack([resize_for_inference(im, size, pre["multiple"]) for im in images])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).to(device)
    pred = predict(model, x, images[0].shape[:2], pre["mean"], pre["std"])
    return pred.float().cpu()


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None)


def evaluation_range(benchmark: str):
    """The clamp range of aligned predictions: the benchmark's GT range where it is finite, else
    None (each image's valid ground-truth range)."""
    rng = BENCHMARK_DEPTH_RANGE.get(benchmark)
    return rng if rng is not None and math.isfinite(rng[1]) else None


def _keep(sample):
    return sample


def _samples(reader, n: int, num_workers: int):
    """The first ``n`` samples in order, read by ``num_workers`` DataLoader workers (0: here)."""
    if num_workers <= 0:
        return (reader[i] for i in range(n))
    from torch.utils.data import DataLoader, Subset

    return iter(DataLoader(Subset(reader, range(n)), batch_size=None, num_workers=num_workers, collate_fn=_keep))


def evaluate_depth(model, reader, benchmark: str, output_space: OutputSpace, protocol: str | None = None,
                   size: int = INPUT_SIZE, batch_size: int = 1, max_images: int | None = None,
                   visuals_dir=None, device="cpu", preprocessing: dict | None = None, num_workers: int = 0) -> dict:
    """Per-image metrics over ``reader``'s samples with the benchmark's crop and depth range; returns
    the summary (mean metrics, counts) with the rows under ``images``."""
    protocol = protocol or default_protocol(output_space)
    pre = preprocessing or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "multiple": PATCH_SIZE}
    depth_range = evaluation_range(benchmark)
    n = len(reader) if max_images is None else min(len(reader), max_images)
    model.eval().to(device)
    rows, start = [], time.perf_counter()
    indexed = enumerate(_samples(reader, n, num_workers))

    bar = _progress(n, benchmark)
    for group in _batches(indexed, lambda item: (item[0], item[1].image, item[1]), batch_size):
        samples = [s for _, _, s in group]
        pred = _predict_images(model, [s.image for s in samples], size, pre, device)
        gt = torch.from_numpy(np.stack([np.asarray(to_depth(s.target, s.space), dtype=np.float32) for s in samples]))
        valid = torch.from_numpy(np.stack([s.valid for s in samples])) & torch.isfinite(gt) & (gt > 0)
        mask = valid & benchmark_mask(benchmark, gt) if benchmark in BENCHMARK_DEPTH_RANGE else valid
        depth, metrics = align_and_score(pred, gt, mask, output_space, protocol, depth_range)
        for j, (index, _, sample) in enumerate(group):
            ok = bool(metrics["valid"][j])
            row = {"index": index, "key": sample.key, "valid_pixels": int(mask[j].sum()), "skipped": not ok}
            row.update({k: (float(metrics[k][j]) if ok else None) for k in METRIC_NAMES})
            rows.append(row)
            if visuals_dir is not None:
                save_depth_visuals(visuals_dir, sample, depth[j].numpy(), gt[j].numpy(), valid[j].numpy(), mask[j].numpy())
        bar.update(len(group))
    bar.close()
    scored = [r for r in rows if not r["skipped"]]
    summary = {k: (float(np.mean([r[k] for r in scored])) if scored else None) for k in METRIC_NAMES}
    crop = {"nyu": "eigen", "kitti": "garg"}.get(benchmark) if benchmark in BENCHMARK_CROP else None
    rng = BENCHMARK_DEPTH_RANGE.get(benchmark)
    return {
        **summary,
        "benchmark": benchmark,
        "protocol": protocol,
        "num_images": len(scored),
        "num_skipped": len(rows) - len(scored),
        "output_space": output_space.to_dict(),
        "crop": crop,
        "depth_range": None if rng is None else [rng[0], rng[1] if math.isfinite(rng[1]) else None],
        "input_size": size,
        "preprocessing": PREPROCESSING,
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


def evaluate_da2k(model, root, output_space: OutputSpace, size: int = INPUT_SIZE, batch_size: int = 1,
                  max_images: int | None = None, visuals_dir=None, device="cpu", preprocessing: dict | None = None) -> dict:
    """DA-2K pair accuracy (over all pairs; per scene type too) with per-image rows."""
    base, annotations = load_da2k(root)
    pre = preprocessing or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "multiple": PATCH_SIZE}
    names = sorted(annotations)[:max_images] if max_images is not None else sorted(annotations)
    model.eval().to(device)

    def load(name):
        path = name if os.path.isabs(name) else os.path.join(base, name)
        return name, F.read_rgb(path, exif_transpose=True), annotations[name]

    rows, start = [], time.perf_counter()
    bar = _progress(len(names), "da2k")
    for group in _batches(names, load, batch_size):
        pred = _predict_images(model, [im for _, im, _ in group], size, pre, device).numpy()
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
        "input_size": size,
        "preprocessing": PREPROCESSING,
        "seconds": round(time.perf_counter() - start, 3),
        "images": rows,
    }


# --------------------------------------------------------------------------------------- visuals
def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key) or "image"


def _panel(a: np.ndarray, max_side: int = VISUAL_SIZE) -> np.ndarray:
    import cv2

    h, w = a.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return a
    return cv2.resize(a, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def error_colors(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, vmax: float = ERROR_SCALE) -> np.ndarray:
    """|pred - gt| / gt on ``mask`` -> RGB uint8 (dark blue: exact, red, yellow: >= ``vmax``); black elsewhere."""
    stops = np.array([[0.1, 0.1, 0.45], [0.8, 0.1, 0.1], [1.0, 0.95, 0.3]])
    err = np.where(mask, np.abs(pred - gt) / np.where(mask, gt, 1), 0)
    x = np.clip(err / vmax, 0, 1) * (len(stops) - 1)
    rgb = np.stack([np.interp(x, np.arange(len(stops)), stops[:, c]) for c in range(3)], -1)
    return (np.where(mask[..., None], rgb, 0) * 255).astype(np.uint8)


def depth_strip(image, pred_depth, gt_depth, gt_valid, mask, max_side: int = VISUAL_SIZE) -> np.ndarray:
    """input | prediction | ground truth | error, each panel scaled so its longest side <= max_side."""
    pred_ok = np.isfinite(pred_depth) & (pred_depth > 0)
    ref = gt_valid if gt_valid.any() else pred_ok
    inv = 1.0 / np.where(ref, gt_depth if gt_valid.any() else pred_depth, 1)[ref]
    rng = (float(inv.min()), float(inv.max())) if inv.size else None
    panels = [image, colorize(pred_depth, pred_ok, rng), colorize(gt_depth, gt_valid, rng),
              error_colors(pred_depth, gt_depth, mask)]
    return np.concatenate([_panel(p, max_side) for p in panels], axis=1)


def write_ply(path, points: np.ndarray, colors: np.ndarray, comments=()) -> None:
    """Binary little-endian PLY: float x, y, z and uchar red, green, blue per vertex."""
    n = len(points)
    header = ["ply", "format binary_little_endian 1.0", *[f"comment {c}" for c in comments], f"element vertex {n}",
              "property float x", "property float y", "property float z",
              "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    vertices = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    vertices["x"], vertices["y"], vertices["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertices["r"], vertices["g"], vertices["b"] = colors[:, 0], colors[:, 1], colors[:, 2]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertices.tobytes())


def read_ply_header(path) -> tuple[list[str], int]:
    """(header lines, vertex count) of a PLY file."""
    lines = []
    with open(path, "rb") as f:
        while True:
            line = f.readline().decode("ascii").rstrip("\n")
            lines.append(line)
            if line == "end_header" or not line:
                break
    count = next(int(l.split()[-1]) for l in lines if l.startswith("element vertex"))
    return lines, count


def save_depth_visuals(out_dir, sample, pred_depth, gt_depth, gt_valid, mask) -> None:
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = _safe_name(sample.key)
    Image.fromarray(depth_strip(sample.image, pred_depth, gt_depth, gt_valid, mask)).save(out / f"{name}.png")
    if sample.intrinsics is not None:
        ok = np.isfinite(pred_depth) & (pred_depth > 0)
        k = np.asarray(sample.intrinsics, dtype=np.float64)
        points = point_cloud(pred_depth, k, ok)
        comment = f"intrinsics fx={k[0, 0]:.4f} fy={k[1, 1]:.4f} cx={k[0, 2]:.4f} cy={k[1, 2]:.4f}; aligned prediction"
        write_ply(out / f"{name}.ply", points, sample.image[ok], comments=[comment])


def save_pair_visuals(out_dir, name, image, pred, output_space, pairs, right) -> None:
    """input (closer point green, farther red; a white frame marks wrongly ordered pairs) | prediction."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marked = image.copy()
    h, w = image.shape[:2]
    r = max(2, min(h, w) // 100)
    for pair, ok in zip(pairs, right):
        for which in ("point1", "point2"):
            y, x = (int(round(v)) for v in pair[which])
            color = (0, 255, 0) if which == pair["closer_point"] else (255, 0, 0)
            if not ok:
                marked[max(0, y - 2 * r):y + 2 * r + 1, max(0, x - 2 * r):x + 2 * r + 1] = 255
            marked[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = color
    depth = np.asarray(to_depth(pred.astype(np.float32), output_space.space))
    panels = [marked, colorize(depth, np.isfinite(depth) & (depth > 0))]
    Image.fromarray(np.concatenate([_panel(p) for p in panels], axis=1)).save(out / f"{_safe_name(name)}.png")


# ---------------------------------------------------------------------------------------- output
def format_table(result: dict) -> str:
    if result["benchmark"] == "da2k":
        header = ["benchmark", "images", "pairs", "pair_accuracy"]
        acc = result["pair_accuracy"]
        values = ["da2k", str(result["num_images"]), str(result["num_pairs"]), "-" if acc is None else f"{acc:.4f}"]
        lines = [header, values] + [[f"  {k or '(root)'}", "", str(v["num_pairs"]),
                                     "-" if v["pair_accuracy"] is None else f"{v['pair_accuracy']:.4f}"]
                                    for k, v in result["per_scene"].items()]
    else:
        header = ["benchmark", "protocol", "images", *METRIC_NAMES]
        values = [result["benchmark"], result["protocol"], str(result["num_images"]),
                  *("-" if result[k] is None else f"{result[k]:.4f}" for k in METRIC_NAMES)]
        lines = [header, values]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines)


def csv_path(output) -> Path:
    return Path(output).with_suffix(".csv")


def _finite(value):
    """NaN / inf (e.g. from a model predicting NaN) -> None, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_outputs(result: dict, output) -> tuple[Path, Path]:
    """The JSON at ``output`` and the per-image CSV beside it (non-finite numbers become null / empty)."""
    out = Path(output)
    if out.suffix.lower() == ".csv":
        raise EvalError(f"{output}: give the JSON path (the CSV is written beside it)")
    result = _finite(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    rows = result["images"]
    path = csv_path(out)
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return out, path


# ------------------------------------------------------------------------------------------- CLI
def _quiet_transformers() -> None:
    """No per-call weight loading / saving progress bars from transformers on the command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="evaluate.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint directory or transformers hub id")
    p.add_argument("--benchmark", required=True, help=f"one of: {', '.join(BENCHMARKS)}")
    p.add_argument("--data-root", required=True, help="the benchmark's folder (da2k: folder or annotations.json)")
    p.add_argument("--protocol", help=f"one of {', '.join(PROTOCOLS)} (default: from the model's output space)")
    p.add_argument("--output", help="JSON file for the metrics (a CSV of per-image rows goes beside it)")
    p.add_argument("--save-visuals", metavar="DIR", help="write per-image PNG strips and PLY point clouds here")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--input-size", type=int, default=INPUT_SIZE, help="inference shorter side (default 518)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images only)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading the benchmark (default 0)")
    p.add_argument("--output-space", type=parse_output_space, metavar="SPACE:GEOMETRY",
                   help="override the model's output space, e.g. depth:metric for a metric model without the fields")
    return p


def run(args) -> dict:
    if args.benchmark not in BENCHMARKS:
        raise EvalError(f"unknown benchmark {args.benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    if not os.path.exists(args.data_root):
        raise EvalError(f"data root not found: {args.data_root}")
    if args.max_images is not None and args.max_images < 1:
        raise EvalError("--max-images must be at least 1")
    if args.batch_size < 1 or args.input_size < 14:
        raise EvalError("--batch-size must be >= 1 and --input-size >= 14")
    if args.protocol is not None and args.protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {args.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    reader = None
    if args.benchmark != "da2k":
        try:
            reader = DEPTH_BENCHMARKS[args.benchmark](args.data_root)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise EvalError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    elif not (os.path.isdir(args.data_root) or os.path.isfile(args.data_root)):
        raise EvalError(f"data root not found: {args.data_root}")
    else:
        load_da2k(args.data_root)  # fail on a bad annotation file before loading the model
    model = load_model(args.model, args.output_space)
    from distill.models import output_space_of

    space = output_space_of(model.config)
    protocol = args.protocol or default_protocol(space)
    if reader is not None:
        check_protocol(protocol, space, reader.geometry)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pre = model_preprocessing(args.model, model.config)
    common = dict(size=args.input_size, batch_size=args.batch_size, max_images=args.max_images,
                  visuals_dir=args.save_visuals, device=device, preprocessing=pre)
    if reader is None:
        result = evaluate_da2k(model, args.data_root, space, **common)
    else:
        result = evaluate_depth(model, reader, args.benchmark, space, protocol, num_workers=args.num_workers, **common)
    result["model"] = args.model
    result["data_root"] = os.path.abspath(args.data_root)
    # the identifying fields first, then metrics, then the rest
    order = ["benchmark", "model", "protocol", "num_images"]
    return {**{k: result[k] for k in order}, **{k: v for k, v in result.items() if k not in order}}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_transformers()
    try:
        result = run(args)
        print(format_table(result))
        if args.output:
            json_path, table_path = write_outputs(result, args.output)
            print(f"wrote {json_path} and {table_path}")
        if args.save_visuals:
            print(f"visuals in {args.save_visuals}")
    except (EvalError, SampleError) as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
