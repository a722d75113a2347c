"""Evaluate a depth model on a standard benchmark: a metrics table, JSON + CSV, pictures, point clouds.

    python distill/evaluate.py --model M --benchmark B --data-root R [--protocol P] [--output FILE]
        [--save-visuals DIR] [--max-images N] [--input-size 518] [--batch-size 1] [--device cuda]
        [--num-workers 0] [--output-space SPACE:GEOMETRY] [--config FILE] [key=value ...]

This module is the one evaluation loop of the project: ``evaluate_samples`` scores any iterable of
samples with a benchmark's protocol, crop and depth cap; training validation (``distill.engine``),
the GP2 benchmark and this command all call it.

M: anything ``distill.models.resolve_model`` accepts: a training run (its ``final/``), a model
directory, a hub id, or an original Depth Anything weight file (with ``--preset``).
P: ``affine-disparity`` (Depth Anything / MiDaS: least-squares scale and shift of the predicted
disparity, then depth), ``scale-log`` (GP2: median log-ratio scale) or ``metric`` (no alignment);
the default follows the model's output space (``distill.metrics.default_protocol``).

Each image goes through ``distill.preprocessing`` (aspect kept, shorter side at least ``--input-size``,
sides multiples of the model's size multiple, OpenCV bicubic; *not* the transformers image processor's
resize), normalised as the model's own image processor says (mean, std, ``do_normalize``), and the
prediction is resized back to the ground truth's size (bilinear).
Metrics are computed per image in float64 and averaged over images with at least 10 valid pixels.

| benchmark | reader (layout: ``distill.data.readers``) | crop | GT depth range (m) | source of the range |
|---|---|---|---|---|
| nyu | ``NYUReader``: image_N.png + depth_N.png (mm) | Eigen | 1e-3 .. 10 | docs/RECIPE.md |
| kitti | ``KITTIReader``: annotated depth + raw images | Garg | 1e-3 .. 80 | docs/RECIPE.md |
| eth3d | ``ETH3DReader``: DSLR images + raw float32 depth | none | 1e-5 .. inf | Marigold eval code (assumed to match Depth Anything's) |
| diode | ``DIODEReader``: png + _depth.npy + _depth_mask.npy | none | 0.6 .. 350 | Marigold eval code (assumed to match Depth Anything's) |
| sintel | ``SintelReader``: final pass png + .dpt | none | 1e-3 .. 72 | assumption (MiDaS-era cap on Sintel's far background) |
| folder | ``FolderReader``: dataset.yaml + rgb/ + depth/ | none | the reader's valid mask | - |
| da2k | ``annotations.json`` + images (see below) | - | - | pair accuracy, no depth metrics |

Aligned predictions are clamped to the benchmark's fixed depth range (eth3d: the lower bound only);
benchmarks without one (folder, synthetic validation sets) are not clamped. Nothing reads the ground
truth to shape a prediction beyond the protocol's alignment.
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
one line on stderr, exit code 2 (``distill.config.run_main``).
"""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF

from distill.config import ConfigError, parse_cli, run_main
from distill.data import formats as F
from distill.data.readers import (
    DIODEReader,
    ETH3DReader,
    FolderReader,
    KITTIReader,
    NYUReader,
    SintelReader,
)
from distill.data.sample import SampleError
from distill.metrics import (
    BENCHMARK_CROP,
    BENCHMARK_DEPTH_RANGE,
    METRIC_NAMES,
    PROTOCOLS,
    benchmark_mask,
    default_protocol,
    depth_range_mask,
    per_image_metrics,
    protocol_depth,
)
from distill.preprocessing import DEFAULT, INPUT_SIZE, Preprocessing
from distill.runtime import first_line
from distill.spaces import OutputSpace, to_depth
from distill.visualisation import save_depth_visuals, save_pair_visuals

DEPTH_BENCHMARKS = {
    "nyu": NYUReader,
    "kitti": KITTIReader,
    "eth3d": ETH3DReader,
    "sintel": SintelReader,
    "diode": DIODEReader,
    "folder": FolderReader,
}
BENCHMARKS = (*DEPTH_BENCHMARKS, "da2k")
RESIZE_RULE = "distill.preprocessing: aspect kept, shorter side >= input_size, multiples of the size multiple, OpenCV bicubic"


class EvalError(ConfigError):
    """Bad input: reported as one line on stderr, exit code 2."""


def preprocessing_record(preprocessing: Preprocessing) -> dict:
    """What the results JSON says about the model input."""
    return {"resize": RESIZE_RULE, **preprocessing.to_dict()}


# ------------------------------------------------------------------------------------ protocol
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


def evaluation_range(benchmark: str | None):
    """The fixed depth range (metres) aligned predictions are clamped to: the benchmark's published
    range, or None (no clamp) for benchmarks without one."""
    return BENCHMARK_DEPTH_RANGE.get(benchmark)


def evaluation_mask(benchmark: str | None, gt_depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pixels scored: valid, finite positive ground truth, and inside the benchmark's crop and range."""
    mask = valid.bool() & torch.isfinite(gt_depth) & (gt_depth > 0)
    return mask & benchmark_mask(benchmark, gt_depth) if benchmark in BENCHMARK_DEPTH_RANGE else mask


# ---------------------------------------------------------------------------------------- loop
def predict(model, images: torch.Tensor, size_hw: tuple[int, int], preprocessing: Preprocessing = DEFAULT) -> torch.Tensor:
    """uint8 [B, 3, h, w] (already at inference resolution) -> prediction [B, H, W] resized (bilinear)
    to ``size_hw``, in the model's output space."""
    pred = model(pixel_values=preprocessing.normalize(images)).predicted_depth
    return TF.interpolate(pred[:, None].float(), size=tuple(size_hw), mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def predict_images(model, images: list, size: int, preprocessing: Preprocessing, device, autocast=contextlib.nullcontext) -> torch.Tensor:
    """uint8 [H, W, 3] images of one size -> predictions [B, H, W] (CPU, float32) at that size."""
    x = np.stack([preprocessing.resize(im, size) for im in images])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).to(device)
    with autocast():
        pred = predict(model, x, images[0].shape[:2], preprocessing)
    return pred.float().cpu()


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
def evaluate_samples(model, samples, output_space: OutputSpace, preprocessing: Preprocessing = DEFAULT,
                     benchmark: str | None = None, protocol: str | None = None, size: int = INPUT_SIZE,
                     batch_size: int = 1, device="cpu", autocast=contextlib.nullcontext, on_image=None,
                     depth_range: tuple[float, float] | None = None) -> list[dict]:
    """Per-image rows (``index``, ``key``, ``valid_pixels``, ``skipped``, the metrics) of ``samples``
    (``Sample`` objects whose targets are depth up to scale or better), scored with ``protocol``
    (default: the model's) inside ``benchmark``'s crop and depth range, predictions clamped only to
    its fixed range (or ``depth_range``, given for a benchmark without a published one: ground truth
    outside it is not scored). ``on_image(sample, depth, gt, valid, mask)`` sees each aligned prediction."""
    protocol = protocol or default_protocol(output_space)
    fixed_range, depth_range = depth_range, depth_range or evaluation_range(benchmark)
    rows = []
    for group in _batches(enumerate(samples), lambda item: (item[0], item[1].image, item[1]), batch_size):
        batch = [s for _, _, s in group]
        pred = predict_images(model, [s.image for s in batch], size, preprocessing, device, autocast)
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
                   size: int = INPUT_SIZE, batch_size: int = 1, max_images: int | None = None,
                   visuals_dir=None, device="cpu", preprocessing: Preprocessing = DEFAULT, num_workers: int = 0,
                   depth_range: tuple[float, float] | None = None) -> dict:
    """A benchmark's summary (mean metrics, counts, settings) with the per-image rows under ``images``."""
    protocol = protocol or default_protocol(output_space)
    n = len(reader) if max_images is None else min(len(reader), max_images)
    model.eval().to(device)
    start = time.perf_counter()
    on_image = None if visuals_dir is None else functools.partial(save_depth_visuals, visuals_dir)
    bar = _progress(n, benchmark)
    rows = evaluate_samples(model, _counted(read_samples(reader, range(n), num_workers), bar), output_space,
                            preprocessing, benchmark, protocol, size, batch_size, device, on_image=on_image,
                            depth_range=depth_range)
    bar.close()
    scored = sum(not r["skipped"] for r in rows)
    crop = {"nyu": "eigen", "kitti": "garg"}.get(benchmark) if benchmark in BENCHMARK_CROP else None
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
        "input_size": size,
        "preprocessing": preprocessing_record(preprocessing),
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
                  max_images: int | None = None, visuals_dir=None, device="cpu",
                  preprocessing: Preprocessing = DEFAULT) -> dict:
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
        pred = predict_images(model, [im for _, im, _ in group], size, preprocessing, device).numpy()
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
        "preprocessing": preprocessing_record(preprocessing),
        "seconds": round(time.perf_counter() - start, 3),
        "images": rows,
    }


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
@dataclass
class EvaluateConfig:
    model: str | None = None  # run dir, model dir, hub id or original weight file
    benchmark: str | None = None  # one of BENCHMARKS
    data_root: str | None = None  # the benchmark's folder (da2k: folder or annotations.json)
    protocol: str | None = None  # default: from the model's output space
    output: str | None = None  # JSON file for the metrics (a CSV of per-image rows goes beside it)
    save_visuals: str | None = None  # write per-image PNG strips and PLY point clouds here
    max_images: int | None = None
    max_depth: float | None = None  # a cap for benchmarks without a published range (folder): predictions clamped to it, ground truth beyond it not scored
    input_size: int = INPUT_SIZE  # inference shorter side
    batch_size: int = 1  # images per forward pass (same-size images only)
    device: str | None = None  # default: cuda if available, else cpu
    num_workers: int = 0  # DataLoader workers reading the benchmark
    output_space: str | None = None  # SPACE:GEOMETRY override, e.g. depth:metric
    preset: str | None = None  # the size of an original Depth Anything weight file


def parse_output_space(text: str) -> OutputSpace:
    """``space:geometry``, e.g. ``depth:metric``, ``disparity:utss``, ``depth:uts``."""
    try:
        space, geometry = text.split(":")
        return OutputSpace(space, geometry)
    except ValueError as err:
        raise EvalError(f"output_space={text!r}: expected space:geometry (e.g. depth:metric): {err}") from None


def run(args: EvaluateConfig) -> dict:
    from distill.models import resolve_model  # noqa: PLC0415 - transformers only past the cheap checks

    for key in ("model", "benchmark", "data_root"):
        if not getattr(args, key):
            raise EvalError(f"--{key.replace('_', '-')} is required")
    if args.benchmark not in BENCHMARKS:
        raise EvalError(f"unknown benchmark {args.benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    if not os.path.exists(args.data_root):
        raise EvalError(f"data root not found: {args.data_root}")
    if args.max_images is not None and args.max_images < 1:
        raise EvalError("--max-images must be at least 1")
    if args.max_depth is not None and (args.max_depth <= 0 or args.benchmark in BENCHMARK_DEPTH_RANGE):
        raise EvalError(f"--max-depth {args.max_depth}: a positive cap, for benchmarks without a published depth range "
                        f"(not {', '.join(BENCHMARK_DEPTH_RANGE)})")
    if args.batch_size < 1 or args.input_size < 14:
        raise EvalError("--batch-size must be >= 1 and --input-size >= 14")
    if args.protocol is not None and args.protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {args.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    override = parse_output_space(args.output_space) if args.output_space else None
    reader = None
    if args.benchmark != "da2k":
        try:
            reader = DEPTH_BENCHMARKS[args.benchmark](args.data_root)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise EvalError(first_line(err)) from None
    else:
        load_da2k(args.data_root)  # fail on a bad annotation file before loading the model
    resolved = resolve_model(args.model, override, preset=args.preset)
    model, space = resolved.model, resolved.output_space
    protocol = args.protocol or default_protocol(space)
    if reader is not None:
        check_protocol(protocol, space, reader.geometry)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(size=args.input_size, batch_size=args.batch_size, max_images=args.max_images,
                  visuals_dir=args.save_visuals, device=device, preprocessing=resolved.preprocessing)
    if reader is None:
        result = evaluate_da2k(model, args.data_root, space, **common)
    else:
        result = evaluate_depth(model, reader, args.benchmark, space, protocol, num_workers=args.num_workers,
                                depth_range=None if args.max_depth is None else (1e-3, args.max_depth), **common)
    result["model"] = args.model
    result["data_root"] = os.path.abspath(args.data_root)
    # the identifying fields first, then metrics, then the rest
    order = ["benchmark", "model", "protocol", "num_images"]
    return {**{k: result[k] for k in order}, **{k: v for k, v in result.items() if k not in order}}


PROG = "evaluate.py"


def _main(argv=None) -> int:
    from distill.models import quiet_transformers  # noqa: PLC0415

    args = parse_cli(EvaluateConfig, argv, prog=PROG)
    quiet_transformers()
    try:
        result = run(args)
    except SampleError as err:
        raise EvalError(str(err)) from None
    print(format_table(result))
    if args.output:
        json_path, table_path = write_outputs(result, args.output)
        print(f"wrote {json_path} and {table_path}")
    if args.save_visuals:
        print(f"visuals in {args.save_visuals}")
    return 0


def main(argv=None) -> int:
    """``distill/evaluate.py`` and the ``distill-evaluate`` console script."""
    return run_main(PROG, _main, argv)
