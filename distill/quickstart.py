"""The smallest end-to-end run the project has today, on data a dependency ships.

Builds a tiny random-weight Depth Anything model with the geometry-preserving (GP2) head, saves it
in transformers format, reloads it through ``pipeline("depth-estimation")`` on scikit-image's real
photographs, and evaluates it on the real Middlebury Motorcycle pair with the affine-disparity
protocol. (With random weights the numbers are those of an untrained model: this run checks the
plumbing. The full pipeline, teacher -> pseudo-labels -> student, replaces it as the stages land.)

    python -m distill.quickstart [--output-dir runs/quickstart]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from distill.metrics import align_lsq, depth_metrics
from distill.models import build_model, save_model
from distill.spaces import DEPTH_UP_TO_SCALE, to_disparity


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/quickstart")
    args = parser.parse_args(argv)

    import skimage.data
    from transformers import pipeline

    torch.manual_seed(0)
    model_dir = os.path.join(args.output_dir, "model")
    save_model(build_model("tiny", DEPTH_UP_TO_SCALE), model_dir)
    print(f"saved a tiny GP2-head model to {model_dir}")

    pipe = pipeline("depth-estimation", model=model_dir)
    for name in ("astronaut", "coffee", "chelsea"):
        image = getattr(skimage.data, name)()
        start = time.perf_counter()
        depth = pipe(Image.fromarray(image))["predicted_depth"]
        print(f"  {name:10s} {image.shape[1]}x{image.shape[0]} -> depth {tuple(depth.shape)} in {time.perf_counter() - start:.2f}s")

    # Middlebury 2014 Motorcycle: disparity in pixels, inf = invalid.
    left, _, gt_disparity = skimage.data.stereo_motorcycle()
    gt_disparity = torch.from_numpy(np.asarray(gt_disparity, dtype=np.float32))
    mask = torch.isfinite(gt_disparity) & (gt_disparity > 0)
    pred_depth = pipe(Image.fromarray(left))["predicted_depth"].float()
    aligned, _, _ = align_lsq(to_disparity(pred_depth, "depth"), gt_disparity, mask)
    # Depth up to the pair's focal * baseline is 1 / disparity; as in the benchmark protocols, the
    # prediction is clamped to the ground truth's depth range.
    gt_depth = 1.0 / gt_disparity.clamp_min(1e-6)
    lo, hi = float(gt_depth[mask].min()), float(gt_depth[mask].max())
    pred = (1.0 / aligned.clamp_min(1e-6)).clamp(lo, hi)
    metrics = depth_metrics(pred[None], gt_depth[None], mask[None])
    print("Middlebury Motorcycle, affine-disparity protocol: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    with open(os.path.join(args.output_dir, "eval_motorcycle.json"), "w") as f:
        json.dump(metrics, f, indent=2)


if __name__ == "__main__":
    main()
