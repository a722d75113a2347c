"""Does metric fine-tuning learn metric depth? A relative tiny model fine-tuned with
``accelerate launch -m student.metric`` on synthetic metric scenes, against the same model before fine-tuning
turned into depth by ONE global map in its own output space (a scale for a depth-up-to-scale model,
scale and shift of the disparity for a relative one), fitted on training scenes and then frozen.

    python benchmarks/metric_finetune.py [--init-from runs/quickstart/student] [--steps 600]
        [--fit-scenes 64] [--test-scenes 64] [--output-dir runs/metric-finetune]

Both are scored on held-out scenes (another generator seed) with the metric protocol (no alignment
at test time), predictions clamped to the same fixed range (0.001 m, the generator's 40 m), at the
tiny presets' 112-pixel input. Prints the table and writes ``OUT/metric_finetune.json``.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.config import ConfigError, parse_cli, run_main  # noqa: E402
from distill.data.synthetic import MAX_DEPTH, SyntheticReader  # noqa: E402
from distill.quickstart import Stages, accelerate_launch  # noqa: E402

INPUT_SIZE = 112
DEPTH_RANGE = (1e-3, MAX_DEPTH)
SIZE = (120, 160)


@dataclass
class MetricFinetuneConfig:
    init_from: str = "runs/quickstart/student"  # the relative model (run dir or model dir)
    output_dir: str = "runs/metric-finetune"
    steps: int = 600
    fit_scenes: int = 64  # training scenes the baseline's global map is fitted on
    test_scenes: int = 64


def predictions(resolved, reader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prediction in the model's space, ground-truth depth, valid) for every scene, [N, H, W]."""
    from distill.evaluation import predict_images
    from distill.inference import InputRule

    preds, gts, valids = [], [], []
    resolved.model.eval()
    rule = InputRule.of_model(resolved.processor, resolved.preprocessing, INPUT_SIZE)
    for i in range(len(reader)):
        s = reader[i]
        preds.append(predict_images(resolved.model, [s.image], rule, "cpu")[0])
        gts.append(torch.from_numpy(np.asarray(s.target, np.float32)))
        valids.append(torch.from_numpy(s.valid) & (gts[-1] > 0))
    return torch.stack(preds), torch.stack(gts), torch.stack(valids)


def fit_global_map(pred, gt, valid, space: str) -> tuple[float, float]:
    """The (scale, shift) fitted once over all pixels of all fitting scenes, in the model's own
    space: depth up to scale gets one scale (the median log-ratio, as the scale-log protocol does per
    image) and no shift; disparity up to scale and shift gets least squares against 1 / depth."""
    if space == "depth":
        return float(torch.exp(torch.median(torch.log(gt[valid].double()) - torch.log(pred[valid].double().clamp_min(1e-6))))), 0.0
    x, y = pred[valid].double(), 1.0 / gt[valid].double()
    solution = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y[:, None]).solution[:, 0]
    return float(solution[0]), float(solution[1])


def score(depth, gt, valid) -> dict:
    from distill.evaluation import mean_metrics
    from distill.metrics import METRIC_NAMES, per_image_metrics

    metrics = per_image_metrics(depth.clamp(*DEPTH_RANGE), gt, valid)
    rows = [{"skipped": not bool(metrics["valid"][i]), **{k: float(metrics[k][i]) for k in METRIC_NAMES}}
            for i in range(len(gt))]
    return mean_metrics(rows)


def _main(argv=None) -> int:
    args = parse_cli(MetricFinetuneConfig, argv, prog="benchmarks/metric_finetune.py")
    from distill.models import resolve_model
    from distill.spaces import to_depth

    if min(args.steps, args.fit_scenes, args.test_scenes) < 1:
        raise ConfigError("steps and scene counts must be >= 1")
    relative = resolve_model(args.init_from)
    if relative.output_space.geometry == "metric":
        raise ConfigError(f"--init-from {args.init_from}: already a metric model")
    out = Path(args.output_dir).resolve()
    stages = Stages(out)
    tuned_dir = out / "metric-tiny"
    stages.run("finetune", accelerate_launch(
        "-m", "student.metric", "--config", "configs/metric/tiny.yaml", f"model.init_from={args.init_from}",
        f"output_dir={tuned_dir}", f"max_steps={args.steps}", f"eval_every={args.steps}", f"save_every={args.steps}",
        "tracker=none", "overwrite=true"))
    # the fine-tuning data's first scenes (configs/metric/tiny.yaml: seed 11) and held-out ones
    fit = SyntheticReader(args.fit_scenes, seed=11, height=SIZE[0], width=SIZE[1], geometry="metric")
    test = SyntheticReader(args.test_scenes, seed=4242, height=SIZE[0], width=SIZE[1], geometry="metric")
    space = relative.output_space.space
    scale, shift = fit_global_map(*predictions(relative, fit), space)
    pred, gt, valid = predictions(relative, test)
    mapped = scale * pred + shift
    baseline = score(to_depth(mapped.clamp_min(1e-6), space), gt, valid)
    tuned = resolve_model(str(tuned_dir))
    pred_t, _, _ = predictions(tuned, test)
    finetuned = score(pred_t, gt, valid)
    result = {"init_from": args.init_from, "relative_space": relative.output_space.to_dict(), "steps": args.steps,
              "global_map": {"space": space, "scale": scale, "shift": shift, "fit_scenes": args.fit_scenes},
              "test_scenes": args.test_scenes, "depth_range": list(DEPTH_RANGE), "protocol": "metric",
              "baseline": baseline, "finetuned": finetuned, "finetune_seconds": stages.times.get("finetune")}
    (out / "metric_finetune.json").write_text(json.dumps(result, indent=1))
    print(f"{'':38s} {'AbsRel':>7s} {'RMSE':>7s} {'d1':>6s}")
    for name, m in (("relative + one global map (baseline)", baseline), ("metric fine-tuned", finetuned)):
        print(f"{name:38s} {m['abs_rel']:7.3f} {m['rmse']:7.3f} {m['d1']:6.3f}")
    print(f"global map in {space} space: scale {scale:.4g}, shift {shift:.4g}; wrote {out / 'metric_finetune.json'}")
    return 0


def main(argv=None) -> int:
    return run_main("benchmarks/metric_finetune.py", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
