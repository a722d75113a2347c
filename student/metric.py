"""Metric-depth fine-tuning of a relative (or geometry-preserving) depth model, as Depth Anything V2's
metric script does: the checkpoint's encoder (and, with ``keep_decoder``, its decoder) under a
metric head (``max_depth`` x sigmoid), trained with SiLog (docs/RECIPE.md#silog) on metric data.

    accelerate launch -m student.metric --config configs/metric/vits.yaml \\
        model.init_from=runs/student-vits [key=value | --key value ...]

The same engine as the other stages (checkpoints, resume, SIGTERM, validation with the metric
protocol, trackers); the final model records ``output_space: depth``, ``output_geometry: metric``.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import torch
from transformers import DepthAnythingForDepthEstimation

from distill.config import ConfigError, parse_cli, run_main
from distill.engine import TrainConfig, model_preprocessing, train
from distill.losses import silog_loss
from distill.models import freeze_unused_parameters, resolve_model
from distill.preprocessing import Preprocessing
from distill.spaces import METRIC_DEPTH

PROG = "student.metric"


@dataclass
class MetricObjectiveConfig:
    variance_focus: float = 0.5  # SiLog lambda
    min_depth: float = 0.001  # metres; target pixels outside [min_depth, model.max_depth] are ignored


@dataclass
class MetricConfig(TrainConfig):
    keep_decoder: bool = False  # also start the decoder (all but the head's activation) from model.init_from
    objective: MetricObjectiveConfig = field(default_factory=MetricObjectiveConfig)  # the SiLog loss


def metric_model(init_from: str, max_depth: float, keep_decoder: bool = False):
    """A Depth Anything model with a metric head (``max_depth`` x sigmoid), its encoder (and with
    ``keep_decoder`` its neck and head) copied from the checkpoint ``init_from``."""
    source = resolve_model(init_from).model
    if getattr(source.config, "model_type", None) != "depth_anything":
        raise ConfigError(f"model.init_from={init_from}: metric fine-tuning starts from a Depth Anything "
                          f"model, not a {source.config.model_type!r} one")
    config = copy.deepcopy(source.config)
    config.depth_estimation_type, config.max_depth = "metric", max_depth
    config.output_space, config.output_geometry = METRIC_DEPTH.space, METRIC_DEPTH.geometry
    model = DepthAnythingForDepthEstimation(config)
    model.backbone.load_state_dict(source.backbone.state_dict())
    if keep_decoder:
        model.neck.load_state_dict(source.neck.state_dict())
        model.head.load_state_dict(source.head.state_dict())  # same weights: only the activation changes
    return model


class MetricObjective:
    """SiLog on metric samples; a sample of another geometry is a configuration error (named)."""

    def __init__(self, cfg: MetricObjectiveConfig, max_depth: float, preprocessing: Preprocessing):
        self.cfg, self.max_depth, self.preprocessing = cfg, max_depth, preprocessing

    def __call__(self, model, batch: dict):
        for space, geometry, key in zip(batch["space"], batch["geometry"], batch["key"]):
            if (space, geometry) != ("depth", "metric"):
                raise ValueError(f"sample {key}: metric fine-tuning needs metric depth, got {space}:{geometry}")
        pred = model(pixel_values=self.preprocessing.normalize(batch["image"])).predicted_depth
        target = batch["target"].float()
        mask = batch["valid"] & (target >= self.cfg.min_depth) & (target <= self.max_depth)
        loss = silog_loss(pred.float(), target, mask, self.cfg.variance_focus)
        return loss, {}


def _main(argv=None) -> int:
    cfg = parse_cli(MetricConfig, argv, prog=PROG)
    if not cfg.model.init_from:
        raise ConfigError("model.init_from is required: the relative checkpoint to fine-tune")
    max_depth = cfg.model.max_depth or 20  # Depth Anything V2: 20 m indoor (Hypersim), 80 m outdoor (VKITTI 2)
    if max_depth <= cfg.objective.min_depth:
        raise ConfigError(f"model.max_depth={max_depth} must exceed objective.min_depth={cfg.objective.min_depth}")
    torch.manual_seed(cfg.seed)
    model = metric_model(cfg.model.init_from, max_depth, cfg.keep_decoder)
    freeze_unused_parameters(model)
    preprocessing = model_preprocessing(cfg.model, cfg.data.crop_size)
    final = train(cfg, MetricObjective(cfg.objective, max_depth, preprocessing), METRIC_DEPTH, model=model,
                  preprocessing=preprocessing)
    if final:
        print(f"metric model saved to {final}")
    return 0


def main(argv=None) -> int:
    """``accelerate launch -m student.metric`` (or ``-m student.metric``, ``-m teacher.metric``) and the ``distill-finetune-metric`` console script."""
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
