"""GP2's claim at small scale: a teacher trained on a mixture where most samples are disparity up to
scale and shift (UTSS) and a minority carry depth up to scale (UTS) still predicts the shift, so
its depth is right up to one scale factor.

Trains the tiny teacher twice on the same synthetic mixture (UTS 1 : UTSS 4), once with GP2
(UTSS on all + UTS on the complete minority) and once with the UTSS loss alone, then scores both
on held-out metric scenes with the scale-only protocol (GP2's) and, for reference, the
affine-disparity protocol (which forgives a wrong shift). A constant prediction is the floor.

    python benchmarks/gp2_shift.py [--steps 1000] [--output-dir runs/gp2_shift]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from distill.config import load_config
from distill.data.synthetic import SyntheticReader
from distill.engine import train
from distill.evaluation import evaluate_samples, mean_metrics
from teacher.train import objective_for
from distill.inference import InputRule
from distill.models import resolve_model
from distill.spaces import DEPTH_UP_TO_SCALE
from teacher.config import TeacherConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXTURE = (
    "data.groups.0.datasets=["
    "{reader: synthetic, weight: 1, options: {num: 4000, seed: 2, height: 120, width: 160, geometry: uts}},"
    "{reader: synthetic, weight: 4, options: {num: 4000, seed: 3, height: 120, width: 160, geometry: utss}}]"
)


class ConstantDepth(torch.nn.Module):
    """The floor: the same depth everywhere (any constant is equivalent under both protocols)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values):
        from transformers.modeling_outputs import DepthEstimatorOutput

        b, _, h, w = pixel_values.shape
        return DepthEstimatorOutput(predicted_depth=torch.ones(b, h, w))


def score(model, samples, protocol: str, rule: InputRule) -> dict:
    """Mean metrics through the project's one evaluation loop (no benchmark crop or cap) and the model's input rule."""
    return mean_metrics(evaluate_samples(model, samples, DEPTH_UP_TO_SCALE, rule, protocol=protocol))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-scenes", type=int, default=64)
    parser.add_argument("--output-dir", default="runs/gp2_shift")
    args = parser.parse_args()

    held_out = SyntheticReader(args.eval_scenes, seed=5000, height=120, width=160, geometry="metric", name="held_out")
    samples = [held_out[i] for i in range(len(held_out))]
    rows = {}
    for name, uts_weight in (("GP2 (UTSS + UTS)", 1.0), ("UTSS only", 0.0)):
        out = os.path.join(args.output_dir, "gp2" if uts_weight else "utss_only")
        cfg = load_config(
            TeacherConfig,
            os.path.join(ROOT, "configs", "teacher", "tiny.yaml"),
            [MIXTURE, f"objective.uts_weight={uts_weight}", f"max_steps={args.steps}", f"output_dir={out}",
             "tracker=none", "save_every=0", "eval_every=0", "data.val=[]", "overwrite=true"],
        )
        start = time.perf_counter()
        final = train(cfg, objective_for(cfg), DEPTH_UP_TO_SCALE)
        resolved = resolve_model(final)
        rule = InputRule.of_model(resolved.processor, resolved.preprocessing)  # final/'s processor: the training crop
        rows[name] = {p: score(resolved.model.eval(), samples, p, rule) for p in ("scale-log", "affine-disparity")}
        rows[name]["train_s"] = time.perf_counter() - start
    constant = ConstantDepth()
    rows["constant depth"] = {p: score(constant, samples, p, rule) for p in ("scale-log", "affine-disparity")}

    print(f"\nheld-out metric synthetic scenes: {len(samples)}, training steps: {args.steps}, mixture UTS 1 : UTSS 4")
    print(f"{'model':18s} {'scale-log AbsRel':>17s} {'scale-log d1':>13s} {'affine-disp AbsRel':>19s} {'affine-disp d1':>15s}")
    for name, r in rows.items():
        s, a = r["scale-log"], r["affine-disparity"]
        print(f"{name:18s} {s['abs_rel']:17.4f} {s['d1']:13.4f} {a['abs_rel']:19.4f} {a['d1']:15.4f}")
    gp2, utss = rows["GP2 (UTSS + UTS)"]["scale-log"]["abs_rel"], rows["UTSS only"]["scale-log"]["abs_rel"]
    print(f"scale-only AbsRel ratio UTSS-only / GP2: {utss / gp2:.2f}x")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
