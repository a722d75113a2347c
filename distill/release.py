"""Release a depth model to the Hugging Face Hub: a release folder with a model card, checked with
the transformers pipeline, then pushed.

    python distill/release.py --model M --repo-id USER/NAME [--private] [--dry-run] [--eval FILE ...]
        [--license L] [--base-model ID ...] [--datasets ID ...] [--output-dir DIR] [--input-size 518]
        [--config FILE] [key=value ...]

(The release command itself: ``python distill/release.py`` and the ``distill-release`` console script run ``main``.)

The release folder (``--output-dir``, default ``runs/release/<NAME>``) holds ``model.safetensors``,
``config.json`` and ``preprocessor_config.json`` re-saved through ``distill.models.save_model`` (so
they are canonical whatever the checkpoint's origin), ``training_config.yaml`` when the checkpoint
has one, the given evaluation results under ``evaluation/`` (without local paths) and ``README.md``:
a model card with Hub metadata (pipeline_tag, library_name, license, base_model, datasets, tags),
the evaluation table, what the output means and how to turn it into depth and point clouds, and a
usage snippet.

Before anything is sent the folder is loaded with ``pipeline("depth-estimation", model=folder)``
and run on one image; a folder that fails to load or predicts non-finite values is not pushed.
The push is ``create_repo(exist_ok=True)`` then ``upload_folder``, with the token from
``HF_TOKEN`` or the login cache (``hf auth login``); the token is never printed (anything this
script writes to stdout/stderr while pushing has it masked). ``--dry-run`` stops before the network
and prints the folder path. ``HF_ENDPOINT`` selects another Hub endpoint.

Licence: the default is apache-2.0, but a release derived from a CC-BY-NC base model (Depth
Anything V2 Base/Large/Giant weights, docs/RECIPE.md) is refused unless ``--license`` is given explicitly.

Bad input: one line on stderr, exit code 2. A failed push: one line, exit code 1.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distill.config import ConfigError, parse_cli, run_main
from distill.inference import target_size
from distill.metrics import BENCHMARKS, METRIC_NAMES
from distill.models import quiet_transformers, resolve_model, save_model
from distill.preprocessing import INPUT_SIZE
from distill.registry import PRESETS, WEIGHTS, weights_licence
from distill.runtime import first_line
from distill.spaces import OutputSpace

DEFAULT_LICENSE = "apache-2.0"
CARD_TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
RELEASE_FILES = {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "training_config.yaml",
                 "evaluation", "onnx"}
METRIC_LABELS = {"abs_rel": "AbsRel ↓", "sq_rel": "SqRel ↓", "rmse": "RMSE ↓", "rmse_log": "RMSElog ↓",
                 "log10": "log10 ↓", "silog": "SILog ↓", "d1": "δ1 ↑", "d2": "δ2 ↑", "d3": "δ3 ↑"}
CARD_METRICS = ("abs_rel", "d1", "d2", "d3", "rmse", "silog")


class ReleaseError(ConfigError):
    """Bad input: one line on stderr, exit code 2."""


# ------------------------------------------------------------------------------------- licence
def choose_license(requested: str | None, base_models: list[str]) -> tuple[str, list[str]]:
    """(licence, warnings): refuses the default for a CC-BY-NC base model unless one is requested."""
    restricted = [(b, weights_licence(b)) for b in base_models if (weights_licence(b) or "").startswith("cc-by-nc")]
    if restricted and requested is None:
        b, lic = restricted[0]
        raise ReleaseError(f"base model {b} is licensed {lic}: a derived release cannot default to "
                           f"{DEFAULT_LICENSE}; pass --license {lic} (or a licence its terms allow)")
    warnings = [f"base model {b} is licensed {lic} but the release says {requested}: make sure its terms allow that"
                for b, lic in restricted if not requested.lower().startswith("cc-by-nc")]
    return requested or DEFAULT_LICENSE, warnings


def default_base_models(model: str) -> list[str]:
    """A hub id is its own base; a checkpoint of this project starts from its preset's source weights
    (read from its config.json, so that a licence problem shows before any weights are loaded)."""
    if not os.path.isdir(model):
        return [model]
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return []
    preset = PRESETS.get(config.get("preset") or "") if isinstance(config, dict) else None
    source = WEIGHTS.get(preset.weights) if preset is not None else None
    return [source.id] if source is not None and source.on_hub else []


# ------------------------------------------------------------------------------ evaluation files
def read_evaluations(paths) -> list[dict]:
    """The JSON files written by ``evaluate.py --output``."""
    evals = []
    for path in paths or ():
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ReleaseError(f"{path}: evaluation file not found") from None
        except (OSError, ValueError) as err:
            raise ReleaseError(f"{path}: not readable JSON ({err})") from None
        if not isinstance(data, dict) or "benchmark" not in data:
            raise ReleaseError(f"{path}: not an evaluate.py result (no 'benchmark' field)")
        if data["benchmark"] == "da2k":
            if data.get("pair_accuracy") is None:
                raise ReleaseError(f"{path}: DA-2K result without pair_accuracy")
        elif not all(k in data for k in METRIC_NAMES):
            raise ReleaseError(f"{path}: missing metrics {[k for k in METRIC_NAMES if k not in data]}")
        evals.append(data)
    return evals


def _fmt(v, percent=False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if percent else f"{v:.3f}"


def eval_results(evals: list[dict]) -> list:
    """The results as huggingface_hub ``EvalResult`` entries: the Hub renders them from ``model-index``."""
    from huggingface_hub import EvalResult  # noqa: PLC0415

    results = []
    for e in evals:
        record = BENCHMARKS.get(e["benchmark"])
        title = record.title if record is not None else str(e["benchmark"])
        metrics = [("pair_accuracy", "Pair accuracy")] if e["benchmark"] == "da2k" else \
            [(k, METRIC_LABELS[k].split()[0]) for k in CARD_METRICS if e.get(k) is not None]
        for key, label in metrics:
            results.append(EvalResult(task_type="depth-estimation", task_name="Monocular depth estimation",
                                      dataset_type=str(e["benchmark"]), dataset_name=title, metric_type=key,
                                      metric_name=f"{label} ({e.get('protocol') or 'point pairs'})", metric_value=float(e[key])))
    return results


def evaluation_rows(evals: list[dict]) -> dict:
    """The card's evaluation tables and notes (template variables)."""
    depth = [e for e in evals if e["benchmark"] != "da2k"]
    pairs = [e for e in evals if e["benchmark"] == "da2k"]
    ranges = "; ".join(f"{b.name}: {b.crop_name + ' crop, ' if b.crop_name else ''}{b.depth_range[0]:g}..{b.depth_range[1]:g} m"
                       for b in BENCHMARKS.values() if b.depth_range and b.name in {e["benchmark"] for e in depth})
    return {
        "metric_labels": [METRIC_LABELS[k] for k in CARD_METRICS],
        "depth_rows": [{"benchmark": e["benchmark"], "protocol": e.get("protocol", "-"), "num_images": e.get("num_images", "-"),
                        "cells": [_fmt(e.get(k), percent=k.startswith("d")) for k in CARD_METRICS]} for e in depth],
        "pair_rows": [{"num_images": e.get("num_images", "-"), "num_pairs": e.get("num_pairs", "-"),
                       "accuracy": _fmt(e["pair_accuracy"], True)} for e in pairs],
        "ranges": ranges or "none with a published range",
        "input_sizes": ", ".join(sorted({input_size_of(e["input_rule"]) for e in evals if "input_rule" in e})),
        # results written before evaluation used the image processor carry no input rule
        "resized_by_depth_anything": sorted({e["benchmark"] for e in evals if "input_rule" not in e}),
    }


def input_size_of(rule: dict) -> str:
    """The target size an evaluation's image processor had, from its record (``InputRule.to_dict``)."""
    size = target_size(rule)
    if size is None:
        return "the image's own size"
    if "shortest_edge" in size:
        return f"shortest edge {size['shortest_edge']}"
    return str(size["height"]) if size["height"] == size["width"] else f"{size['height']}x{size['width']}"


def architecture_of(config) -> str:
    bb = getattr(config, "backbone_config", None)
    if getattr(config, "model_type", None) == "depth_anything":
        return (f"DINOv2 ViT encoder ({getattr(bb, 'hidden_size', '?')} wide, {getattr(bb, 'num_hidden_layers', '?')} "
                "layers) with a DPT decoder")
    if getattr(config, "is_hybrid", False):
        return (f"DPT-hybrid: a `{getattr(bb, 'backbone', '?')}` CNN under a {config.num_hidden_layers}-layer ViT with a DPT "
                f"decoder, taking {config.image_size}x{config.image_size} inputs only (its image processor resizes every "
                "image to that square and the pipeline resizes the depth back)")
    return f"`{getattr(config, 'model_type', '?')}` model"


def build_card(repo_id: str, space: OutputSpace, config, license: str, base_models: list[str],
               datasets: list[str], evals: list[dict], has_training_config: bool, onnx: dict | None = None) -> str:
    """The model card: huggingface_hub's ``ModelCard`` from ``templates/model_card.md``, its metadata
    (licence, base model, tags, ``model-index`` with the evaluation results) from ``ModelCardData``."""
    from huggingface_hub import ModelCard, ModelCardData  # noqa: PLC0415

    name = repo_id.split("/")[-1]
    geometry_tag = {"utss": "relative-depth", "metric": "metric-depth"}.get(space.geometry, "scale-invariant-depth")
    results = eval_results(evals)
    data = ModelCardData(license=license, library_name="transformers", pipeline_tag="depth-estimation",
                         base_model=(base_models[0] if len(base_models) == 1 else list(base_models)) or None,
                         datasets=list(datasets) or None, model_name=name if results else None,
                         eval_results=results or None,
                         tags=["depth-estimation", "depth-anything", "monocular-depth", "knowledge-distillation", geometry_tag])
    if onnx is not None:
        onnx = {**onnx, "dtype": "float16" if onnx["precision"] == "fp16" else "float32",
                "multiple": onnx["preprocessing"]["multiple"], "fixed_size": onnx["preprocessing"].get("fixed_size")}
    mismatched = sorted({e["benchmark"] for e in evals if e.get("output_space") not in (None, space.to_dict())})
    card = ModelCard.from_template(
        data, template_path=CARD_TEMPLATE, name=name, repo_id_json=json.dumps(repo_id), architecture=architecture_of(config),
        preset=getattr(config, "preset", None), license=license, base_models=base_models,
        transformers_class=(getattr(config, "architectures", None) or [type(config).__name__])[0],
        encoder_weights=getattr(config, "encoder_weights", None),
        encoder_weights_licence=getattr(config, "encoder_weights_licence", None), has_training_config=has_training_config,
        onnx=onnx, space=space.space, geometry=space.geometry, head=getattr(config, "depth_estimation_type", None),
        max_depth=getattr(config, "max_depth", None), mismatched=mismatched, **evaluation_rows(evals))
    return str(card).rstrip() + "\n"


# ----------------------------------------------------------------------------------- the folder
def prepare_output_dir(out: Path) -> None:
    """Create ``out``; a previous release folder there is replaced, anything else is refused."""
    if out.exists():
        if not out.is_dir():
            raise ReleaseError(f"{out}: exists and is not a directory")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RELEASE_FILES)
        if foreign:
            raise ReleaseError(f"{out}: not empty and not a release folder (has {', '.join(foreign[:3])}); "
                               "choose another --output-dir")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def read_onnx_export(folder, model_reference: str) -> dict:
    """The ``export.json`` of a ``distill/export.py`` folder, checked to be an export of this model
    that passed its parity check."""
    path = Path(folder) / "export.json"
    try:
        info = json.loads(path.read_text())
        file = Path(folder) / info["file"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReleaseError(f"--onnx {folder}: not an export folder of distill/export.py ({path}: {type(err).__name__})") from None
    if not file.is_file():
        raise ReleaseError(f"--onnx {folder}: {file.name} is missing (a failed parity check removes it)")
    if os.path.abspath(info.get("reference", "")) != os.path.abspath(model_reference):
        raise ReleaseError(f"--onnx {folder}: exported from {info.get('reference')!r}, not from {model_reference!r}")
    return info


def build_release(model_name: str, repo_id: str, out_dir, license: str | None = None, base_models=None,
                  datasets=(), eval_files=(), input_size: int = INPUT_SIZE, onnx=None) -> tuple[Path, list[str]]:
    """Write the release folder (with ``onnx``, an export folder of ``distill/export.py``, its ONNX
    file under ``onnx/``); returns (folder, warnings)."""
    evals = read_evaluations(eval_files)
    bases = list(base_models) if base_models else default_base_models(model_name)
    chosen, warnings = choose_license(license, bases)
    resolved = resolve_model(model_name)
    model, space = resolved.model, resolved.output_space
    exported = read_onnx_export(onnx, resolved.reference) if onnx else None
    out = Path(out_dir)
    source = Path(resolved.reference).resolve() if os.path.isdir(resolved.reference) else None
    if source is not None and (out.resolve() == source or out.resolve() in source.parents):
        raise ReleaseError(f"--output-dir {out} would replace the checkpoint {model_name}; choose another folder")
    prepare_output_dir(out)
    save_model(model, out, space, size=input_size, preprocessing=resolved.preprocessing)
    if model.config.model_type != "depth_anything":  # keep a foreign model's own image processor whole
        try:
            from transformers import AutoImageProcessor

            AutoImageProcessor.from_pretrained(resolved.reference).save_pretrained(out)
        except (OSError, ValueError):
            warnings.append(f"{model_name}: no image processor found; the release uses the Depth Anything one")
    training_config = Path(resolved.reference) / "training_config.yaml"
    if training_config.is_file():
        shutil.copy(training_config, out / "training_config.yaml")
    if evals:
        (out / "evaluation").mkdir()
        for i, e in enumerate(evals):
            clean = {k: v for k, v in e.items() if k not in ("model", "data_root")}
            name = f"{i:02d}_{re.sub(r'[^A-Za-z0-9_-]', '_', str(e['benchmark']))}.json"
            (out / "evaluation" / name).write_text(json.dumps(clean, indent=2) + "\n")
    card = build_card(repo_id, space, model.config, chosen, bases, list(datasets or ()), evals,
                      (out / "training_config.yaml").is_file(), exported)
    if exported:
        (out / "onnx").mkdir()
        for name in (exported["file"], "export.json", "README.md"):
            if (Path(onnx) / name).is_file():
                shutil.copy(Path(onnx) / name, out / "onnx" / name)
    (out / "README.md").write_text(card, encoding="utf-8")
    return out, warnings


def validate_folder(folder) -> dict:
    """Load the folder with ``pipeline("depth-estimation")`` and run it on one image; raises
    ReleaseError on failure or a non-finite prediction. Returns a few facts about the prediction."""
    from PIL import Image
    from transformers import pipeline

    from distill.data.synthetic import render_scene

    image = Image.fromarray(render_scene(0, 96, 128).image)
    try:
        pipe = pipeline("depth-estimation", model=os.fspath(folder), device="cpu")
        out = pipe(image)
    except Exception as err:  # anything that stops the pipeline stops the release
        raise ReleaseError(f"{folder}: the transformers pipeline cannot run this release ({type(err).__name__}: "
                           f"{first_line(err)})") from None
    pred = np.asarray(out["predicted_depth"].detach().float().cpu()).squeeze()
    if pred.shape != (image.height, image.width):
        raise ReleaseError(f"{folder}: pipeline prediction has shape {pred.shape}, expected {(image.height, image.width)}")
    if not np.isfinite(pred).all():
        raise ReleaseError(f"{folder}: the pipeline's prediction is not finite; not releasing")
    return {"shape": list(pred.shape), "min": float(pred.min()), "max": float(pred.max())}


# ------------------------------------------------------------------------------------------ push
class _Masked:
    """A text stream that masks a secret in everything written through it."""

    def __init__(self, stream, secret: str):
        self._stream, self._secret = stream, secret

    def write(self, text):
        return self._stream.write(text.replace(self._secret, "***") if self._secret else text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def get_token() -> str | None:
    """HF_TOKEN from the environment, else the login cache (huggingface_hub's lookup)."""
    from huggingface_hub import get_token as hub_token

    return hub_token()


def push(folder, repo_id: str, token: str, private: bool = False, commit_message: str | None = None,
         endpoint: str | None = None):
    """create_repo (exist_ok) + upload_folder; returns (repo url, commit url)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), repo_type="model",
                             commit_message=commit_message or f"Release {repo_id.split('/')[-1]} (depth-distill)")
    return str(url), info.commit_url


# ------------------------------------------------------------------------------------------- CLI
@dataclass
class ReleaseConfig:
    model: str | None = None  # run dir, model dir or hub id
    repo_id: str | None = None  # USER/NAME on the Hub
    private: bool = False  # create the repo private
    dry_run: bool = False  # build and validate the folder, send nothing
    eval: list[str] = field(default_factory=list)  # evaluate.py JSON results
    license: str | None = None  # licence id for the card (default apache-2.0)
    base_model: list[str] = field(default_factory=list)  # default: the hub id, or the preset's DINOv2
    datasets: list[str] = field(default_factory=list)  # Hub dataset ids trained on
    output_dir: str | None = None  # release folder (default runs/release/<NAME>)
    input_size: int = INPUT_SIZE  # image processor size
    commit_message: str | None = None  # Hub commit message; default: Release NAME (depth-distill)
    onnx: str | None = None  # an export folder of distill/export.py: its ONNX file goes in onnx/


PROG = "release.py"


def _main(argv=None) -> int:
    args = parse_cli(ReleaseConfig, argv, prog=PROG)
    quiet_transformers()
    for key in ("model", "repo_id"):
        if not getattr(args, key):
            raise ReleaseError(f"--{key.replace('_', '-')} is required")
    if not REPO_ID.match(args.repo_id):
        raise ReleaseError(f"--repo-id {args.repo_id!r}: expected USER/NAME")
    out_dir = args.output_dir or os.path.join("runs", "release", args.repo_id.split("/")[1])
    folder, warnings = build_release(args.model, args.repo_id, out_dir, args.license, args.base_model,
                                     args.datasets, args.eval, args.input_size, args.onnx)
    for w in warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    check = validate_folder(folder)
    print(f"validated with pipeline('depth-estimation'): prediction {check['shape'][0]}x{check['shape'][1]}, "
          f"range {check['min']:.4g}..{check['max']:.4g}")
    print(f"release folder: {folder}")
    if args.dry_run:
        print("dry run: nothing sent")
        return 0
    token = get_token()
    if not token:
        raise ReleaseError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Masked(stdout, token), _Masked(stderr, token)
    try:
        url, commit = push(folder, args.repo_id, token, args.private, args.commit_message)
        print(f"pushed to {url} ({commit})")
        return 0
    except Exception as err:  # network, permissions, server errors: one masked line
        print(f"{PROG}: error: push to {args.repo_id} failed ({type(err).__name__}: {first_line(err)})", file=sys.stderr)
        return 1
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def main(argv=None) -> int:
    """``distill/release.py`` and the ``distill-release`` console script. Bad input: one line, exit 2;
    a failed push: one line, exit 1."""
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
