"""onnxruntime (CPU) against PyTorch eager for exported models: images/s on the same inputs.

    python benchmarks/onnx_throughput.py [--presets tiny vits] [--size 518] [--images 6] [--repeats 3]

For each preset a random-weight model (speed does not depend on the weights) is exported by
``distill.export.export_onnx`` and both runtimes predict the same real photos (``../shared/data/photos``,
else scikit-image's), batch 1, resized by the one rule of ``distill.preprocessing``. Each runtime is
timed at 1 thread and at every core, and the best setting of each is compared (the strongest
baseline, not the default one). Each figure is the median of ``--repeats`` runs, the runtimes
alternating so that both see the same machine load.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distill import export, models  # noqa: E402
from distill.config import parse_cli  # noqa: E402
from distill.preprocessing import IMAGENET, resize_for_inference  # noqa: E402
from distill.spaces import RELATIVE_DISPARITY  # noqa: E402


@dataclass
class OnnxThroughputConfig:
    presets: list[str] = field(default_factory=lambda: ["tiny", "vits"])
    size: int = 518
    images: int = 6
    repeats: int = 3


def timed(run, inputs) -> float:
    start = time.perf_counter()
    for x in inputs:
        run(x)
    return len(inputs) / (time.perf_counter() - start)


def main(argv=None) -> int:
    args = parse_cli(OnnxThroughputConfig, argv, prog="benchmarks/onnx_throughput.py")
    import onnxruntime as ort

    photos = export.check_images([])
    inputs = [IMAGENET.normalize(torch.from_numpy(resize_for_inference(photos[i % len(photos)][1], args.size)).permute(2, 0, 1)[None])
              for i in range(args.images)]
    cores = os.cpu_count() or 1
    threads = sorted({1, cores})
    print(f"{len(inputs)} photos at shorter side {args.size} ({tuple(inputs[0].shape[2:])} first), batch 1, "
          f"{cores} cores, torch {torch.__version__}, onnxruntime {ort.__version__}; median of {args.repeats}")
    for preset in args.presets:
        model = models.build_model(preset, RELATIVE_DISPARITY).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export.export_onnx(model, path, models.PATCH_SIZE)
            sessions = {}
            for n in threads:
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = n, 1
                sessions[n] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        results = {}
        for n in threads:
            torch.set_num_threads(n)

            def eager(x):
                with torch.inference_mode():
                    model(pixel_values=x)

            def onnx(x, session=sessions[n]):
                session.run(None, {"pixel_values": x.numpy()})

            eager(inputs[0]), onnx(inputs[0])  # warm-up
            runs = {"torch": [], "onnxruntime": []}
            for _ in range(args.repeats):
                runs["torch"].append(timed(eager, inputs))
                runs["onnxruntime"].append(timed(onnx, inputs))
            for name, values in runs.items():
                results[(name, n)] = statistics.median(values)
        torch.set_num_threads(cores)
        best = {name: max((results[(name, n)], n) for n in threads) for name in ("torch", "onnxruntime")}
        detail = ", ".join(f"{name} {n} thread(s) {v:.2f}" for (name, n), v in results.items())
        print(f"{preset}: best torch eager {best['torch'][0]:.2f} images/s ({best['torch'][1]} threads), "
              f"best onnxruntime {best['onnxruntime'][0]:.2f} ({best['onnxruntime'][1]} threads): "
              f"ratio {best['onnxruntime'][0] / best['torch'][0]:.2f}x  [{detail}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
