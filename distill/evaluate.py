"""Evaluate a depth model on a benchmark: a metrics table, JSON + CSV, pictures, point clouds.

    python distill/evaluate.py --model M --benchmark B --data-root R [--protocol P] [--output FILE]
        [--save-visuals DIR] [--max-images N] [--input-size N] [--batch-size 1] [--device cuda]
        [--num-workers 0] [--output-space SPACE:GEOMETRY] [--max-depth D] [--config FILE] [key=value ...]

M: anything ``distill.models.resolve_model`` accepts. B: a name of ``distill.metrics.BENCHMARKS``.
P: ``affine-disparity``, ``scale-log`` or ``metric``; by default the model's output space decides
(``distill.spaces.default_protocol``). Each image goes through the model's own image processor
(``distill.inference.InputRule.of_model``, at ``--input-size`` where given). Benchmarks, protocols,
crops, ranges, DA-2K's format and the outputs are described in docs/evaluation.md. Bad input: one
line on stderr, exit code 2.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.config import parse_cli, run_main
from distill.data.readers import build_reader
from distill.data.sample import SampleError
from distill.evaluation import EvalError, evaluate_da2k, evaluate_depth, load_da2k
from distill.inference import InputRule
from distill.metrics import BENCHMARKS, METRIC_NAMES
from distill.runtime import first_line
from distill.spaces import PROTOCOLS, OutputSpace, check_protocol, default_protocol


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
    benchmark: str | None = None  # a name of distill.metrics.BENCHMARKS
    data_root: str | None = None  # the benchmark's folder (da2k: folder or annotations.json)
    protocol: str | None = None  # default: from the model's output space
    output: str | None = None  # JSON file for the metrics (a CSV of per-image rows goes beside it)
    save_visuals: str | None = None  # write per-image PNG strips and PLY point clouds here
    max_images: int | None = None  # score only the first N images; default: all
    max_depth: float | None = None  # a cap for benchmarks without a published range (folder): predictions clamped to it, ground truth beyond it not scored
    input_size: int | None = None  # the image processor's target size; default: the one saved with the model
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
    published = [b.name for b in BENCHMARKS.values() if b.depth_range]
    if args.max_depth is not None and (args.max_depth <= 0 or args.benchmark in published):
        raise EvalError(f"--max-depth {args.max_depth}: a positive cap, for benchmarks without a published depth range "
                        f"(not {', '.join(published)})")
    if args.batch_size < 1 or (args.input_size is not None and args.input_size < 14):
        raise EvalError("--batch-size must be >= 1 and --input-size >= 14")
    if args.protocol is not None and args.protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {args.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    override = parse_output_space(args.output_space) if args.output_space else None
    reader = None
    if BENCHMARKS[args.benchmark].reader is not None:
        try:
            reader = build_reader(BENCHMARKS[args.benchmark].reader, root=args.data_root)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise EvalError(first_line(err)) from None
    else:
        load_da2k(args.data_root)  # fail on a bad annotation file before loading the model
    resolved = resolve_model(args.model, override, preset=args.preset)
    model, space = resolved.model, resolved.output_space
    protocol = args.protocol or default_protocol(space)
    if reader is not None:
        try:
            check_protocol(protocol, space, reader.geometry)
        except ValueError as err:
            raise EvalError(str(err)) from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(batch_size=args.batch_size, max_images=args.max_images, visuals_dir=args.save_visuals, device=device,
                  rule=InputRule.of_model(resolved.processor, resolved.preprocessing, args.input_size))
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


if __name__ == "__main__":
    sys.exit(main())
