"""Export a depth model to ONNX for deployment, checked against PyTorch with onnxruntime.

    python distill/export.py --model M --output DIR [--precision fp32|fp16] [--opset 18]
        [--check-images FILE_OR_DIR ...] [--check-sizes 112 224]

(The export command itself: ``python distill/export.py`` and the ``distill-export`` console script run ``main``.)

``M`` is anything ``distill.models.resolve_model`` accepts (a training run, a model directory, a hub
id). ``DIR`` receives ``model.onnx`` (or ``model_fp16.onnx``), ``preprocessor_config.json`` and
``config.json`` of the model, ``export.json`` (settings and the parity check) and a ``README.md``
saying what goes in and what comes out. The graph takes ``pixel_values`` [B, 3, H, W] float,
normalised as the model's own image processor says, with H and W any multiples of the model's size
multiple (the patch size of ViT models); it returns ``predicted_depth`` [B, H, W] in the model's
output space. Exported with ``torch.onnx.export(dynamo=True)``; Depth Anything models go through
``ExportableDepthAnything``, because the transformers head turns the output size into Python ints,
which would freeze the exported output size.

The parity check feeds real photos (``--check-images``; default ``../shared/data/photos`` when
present, else scikit-image's bundled photos), prepared by the model's own image processor at every
``--check-sizes`` (its target size, ``distill.inference.InputRule.of_model``: what evaluation and
labeling feed the model), to both models and requires relative L2 of at most 1e-4 (fp32) or 1e-2
(fp16); a failed check removes the ONNX file and exits 1. The folder's ``preprocessor_config.json``
is the model's own image processor.

Bad input (a reference that is not a depth model, a size that is not positive, an output that is a
file): one line on stderr, exit code 2.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import ConfigError, parse_cli, run_main
from distill.inference import InputRule
from distill.models import quiet_transformers, resolve_model
from distill.runtime import atomic_path

ROOT = Path(__file__).resolve().parent.parent
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "photos"
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # relative L2 of the depth, ONNX vs PyTorch (fp32)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class ExportError(ConfigError):
    """Bad input to the exporter: one line, exit code 2."""


class ExportableDepthAnything(torch.nn.Module):
    """A Depth Anything model's forward, ``pixel_values -> predicted_depth``, with the head's output
    size taken from the input's (symbolic) shape instead of Python ints; the same computation as
    ``DepthAnythingForDepthEstimation.forward`` (a test keeps them equal)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m, patch = self.model, self.model.config.patch_size
        patch_h, patch_w = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
        hidden = m.neck(list(m.backbone(pixel_values=pixel_values).feature_maps), patch_h, patch_w)
        head = m.head
        x = head.conv1(hidden[head.head_in_index])
        x = F.interpolate(x, size=(patch_h * patch, patch_w * patch), mode="bilinear", align_corners=True)
        x = head.conv3(head.activation1(head.conv2(x)))
        return (head.activation2(x) * head.max_depth).squeeze(1)


class ExportableDepthModel(torch.nn.Module):
    """Any other transformers depth model: its own forward, the depth tensor only."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).predicted_depth


def exportable(model) -> torch.nn.Module:
    if getattr(model.config, "model_type", None) == "depth_anything":
        return ExportableDepthAnything(model)
    return ExportableDepthModel(model)


def export_onnx(model, path: str | os.PathLike, multiple: int, precision: str = "fp32", opset: int = 18,
                fixed_size: int | None = None) -> None:
    """Write ``model`` (eval mode, fp32) to ``path`` with dynamic batch, height and width (multiples
    of ``multiple``), or at its one ``fixed_size`` (DPT-hybrid: dynamic batch only); fp16 exports a
    half-precision copy."""
    if precision == "fp16":  # a half copy: the caller's fp32 model is the parity reference
        wrapped = exportable(copy.deepcopy(model)).eval().half()
    else:
        wrapped = exportable(model).eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    # Batch 2 and sizes of 3x and 4x the multiple: an example dimension of 1 would be specialised.
    dim = torch.export.Dim
    if fixed_size:
        example = torch.randn(2, 3, fixed_size, fixed_size, dtype=dtype)
        shapes = {"pixel_values": {0: dim("batch", min=1, max=1024)}}
    else:
        example = torch.randn(2, 3, 3 * multiple, 4 * multiple, dtype=dtype)
        shapes = {"pixel_values": {0: dim("batch", min=1, max=1024), 2: multiple * dim("patches_h", min=1, max=1024),
                                   3: multiple * dim("patches_w", min=1, max=1024)}}
    with torch.no_grad():
        program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=opset, verbose=False,
                                    input_names=["pixel_values"], output_names=["predicted_depth"],
                                    dynamic_shapes=shapes)
    with atomic_path(path) as tmp:
        program.save(tmp)


def check_images(paths: list[str]) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB image) of the parity check: the given files / folders, else the shared
    photos, else scikit-image's bundled ones."""
    from PIL import Image

    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise ExportError(f"--check-images {p}: no such file or directory")
    if not paths and SHARED_PHOTOS.is_dir():
        files = sorted(SHARED_PHOTOS.glob("*.jpg"))[:3]
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append((f.name, np.asarray(im.convert("RGB"))))
        except OSError as err:
            raise ExportError(f"--check-images {f}: cannot read the image ({err})") from None
    if not images:
        import skimage.data

        images = [(n, np.asarray(getattr(skimage.data, n)())[..., :3]) for n in ("astronaut", "coffee")]
    return images


def parity(onnx_path, resolved, images, sizes: list[int], precision: str) -> list[dict]:
    """Relative L2 between the ONNX model's depth (onnxruntime, CPU) and the PyTorch model's (fp32)
    for every image at every size, both fed what the model's image processor prepares at that size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if precision == "fp16" else np.float32
    model, rows = resolved.model, []
    rules = [InputRule.of_model(resolved.processor, resolved.preprocessing, size) for size in sizes]
    for name, image in images:
        for rule in rules:
            pixels = rule.model_input(torch.from_numpy(rule.prepare(image))[None])
            with torch.no_grad():
                expect = model(pixel_values=pixels).predicted_depth.float().numpy()
            peak = float(np.abs(expect).max())
            if precision == "fp16" and peak > np.finfo(np.float16).max:
                raise ExportError(f"{name}: the model's depth reaches {peak:.3g}, beyond float16's range (65504): "
                                  f"export --precision fp32 (a relative model's scale is free and may drift in training)")
            got = session.run(None, {"pixel_values": pixels.numpy().astype(dtype)})[0].astype(np.float32)
            if got.shape != expect.shape:
                raise ExportError(f"the exported graph gave {got.shape} for input {tuple(pixels.shape)}, "
                                  f"PyTorch {expect.shape}: its sizes are not dynamic")
            error = float(np.linalg.norm(got - expect) / max(np.linalg.norm(expect), 1e-12))
            rows.append({"image": name, "size": list(pixels.shape[2:]), "relative_l2": error})
    return rows


def write_readme(out: Path, reference: str, info: dict) -> None:
    p = info["preprocessing"]
    if p.get("fixed_size"):
        size = (f"H = W = {p['fixed_size']} only (a DPT-hybrid: the graph is static in its spatial size; its processor "
                f"resizes every image to {p['fixed_size']}x{p['fixed_size']}, not keeping the aspect ratio)")
    else:
        size = f"H and W any multiples of {p['multiple']}"
    text = f"""# ONNX export of `{reference}`

`{info['file']}`: opset {info['opset']}, {info['precision']}, exported by `distill/export.py` on {info['date']}.

## Input
`pixel_values`: float{16 if info['precision'] == 'fp16' else 32} [batch, 3, H, W], RGB, {size}: what the image
processor in this folder (`preprocessor_config.json`, the model's own) prepares from an image, as
`pipeline("depth-estimation")` does: resized as it says, then `x * {p['rescale_factor']:.6g}`, minus mean
{p['mean']}, divided by std {p['std']} per channel.

## Output
`predicted_depth`: [batch, H, W], the model's output space: `{info['output_space']}`
(`depth` = depth, `disparity` = inverse depth; geometry `metric` = metres, `uts` = up to one unknown
scale, `utss` = up to scale and shift). Resize it back to the image's size (bilinear; a processor that
pads, ZoeDepth's, removes its padding in `post_process_depth_estimation`).

## Running it
```python
import numpy as np, onnxruntime as ort
from PIL import Image
from transformers import AutoImageProcessor
pixel_values = AutoImageProcessor.from_pretrained(".")(images=Image.open("photo.jpg"), return_tensors="np")["pixel_values"]
session = ort.InferenceSession("{info['file']}", providers=["CPUExecutionProvider"])
depth = session.run(None, {{"pixel_values": pixel_values.astype(np.float{16 if info['precision'] == 'fp16' else 32})}})[0]
```

## Parity with PyTorch
Relative L2 of the depth, onnxruntime (CPU) vs PyTorch fp32, at most {info['tolerance']} required:
""" + "\n".join(f"- {r['image']} at {r['size'][0]}x{r['size'][1]}: {r['relative_l2']:.2e}" for r in info["parity"]) + "\n"
    (out / "README.md").write_text(text)


@dataclass
class ExportConfig:
    model: str | None = None  # run dir, model dir or hub id
    output: str | None = None  # output folder (created)
    precision: Literal["fp32", "fp16"] = "fp32"  # ONNX weights and input dtype (fp16: model_fp16.onnx)
    opset: int = 18  # ONNX opset version, at least 17
    check_images: list[str] = field(default_factory=list)  # photos for the parity check (files or folders)
    check_sizes: list[int] = field(default_factory=lambda: [112, 224])  # the image processor's target sizes checked


PROG = "export.py"


def run(args: ExportConfig) -> dict:
    for key in ("model", "output"):
        if not getattr(args, key):
            raise ExportError(f"--{key} is required")
    if not args.check_sizes or min(args.check_sizes) < 1:
        raise ExportError(f"--check-sizes {args.check_sizes}: give one or more positive sizes")
    if args.opset < 17:
        raise ExportError(f"--opset {args.opset}: at least 17 (LayerNormalization)")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--output {out}: exists and is not a directory")
    images = check_images(args.check_images)
    resolved = resolve_model(args.model)
    model = resolved.model.float().eval()
    multiple = resolved.preprocessing.multiple
    out.mkdir(parents=True, exist_ok=True)
    name = "model.onnx" if args.precision == "fp32" else f"model_{args.precision}.onnx"
    start = time.perf_counter()
    export_onnx(model, out / name, multiple, args.precision, args.opset, resolved.preprocessing.fixed_size)
    seconds = time.perf_counter() - start
    try:
        rows = parity(out / name, resolved, images, args.check_sizes, args.precision)
    except ExportError:
        (out / name).unlink()  # a model that failed its check is not left behind
        raise
    worst = max(r["relative_l2"] for r in rows)
    info = {"file": name, "reference": resolved.reference, "precision": args.precision, "opset": args.opset,
            "output_space": f"{resolved.output_space.space}:{resolved.output_space.geometry}",
            "preprocessing": resolved.preprocessing.to_dict(), "tolerance": TOLERANCE[args.precision],
            "parity": rows, "max_relative_l2": worst, "export_seconds": round(seconds, 1),
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "settings": asdict(args)}
    model.config.to_json_file(out / "config.json")
    resolved.processor.save_pretrained(out)
    (out / "export.json").write_text(json.dumps(info, indent=1))
    write_readme(out, args.model, info)
    if worst > TOLERANCE[args.precision]:
        (out / name).unlink()
        print(f"{PROG}: error: ONNX and PyTorch disagree (relative L2 {worst:.2e} > {TOLERANCE[args.precision]}); "
              f"{out / name} removed, see {out / 'export.json'}", file=sys.stderr)
        info["failed"] = True
        return info
    print(f"wrote {out / name} ({args.precision}, opset {args.opset}, {seconds:.0f} s); parity with PyTorch: "
          f"relative L2 <= {worst:.1e} on {len(rows)} image/size pairs")
    return info


def _main(argv=None) -> int:
    args = parse_cli(ExportConfig, argv, prog=PROG)
    quiet_transformers()
    return 1 if run(args).get("failed") else 0


def main(argv=None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
