"""Metric fine-tuning (student.metric; -m teacher.metric still works): the model keeps the checkpoint's encoder under a metric head,
SiLog on metric samples only, and a short run of the command writes a metric model."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill import models
from distill.config import ConfigError
from distill.spaces import RELATIVE_DISPARITY
from distill.preprocessing import IMAGENET
from student.metric import MetricObjective, MetricObjectiveConfig, metric_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("relative") / "run"
    models.save_model(models.build_model("tiny", RELATIVE_DISPARITY), run / "final")
    return run


@pytest.mark.parametrize("keep_decoder", [False, True])
def test_metric_model_takes_the_encoder_and_a_metric_head(relative_run, keep_decoder):
    source = models.resolve_model(str(relative_run)).model
    model = metric_model(str(relative_run), 20, keep_decoder).eval()
    assert model.config.depth_estimation_type == "metric" and model.config.max_depth == 20
    assert (model.config.output_space, model.config.output_geometry) == ("depth", "metric")
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
    neck_same = all(torch.equal(model.neck.state_dict()[k], v) for k, v in source.neck.state_dict().items())
    assert neck_same == keep_decoder
    with torch.no_grad():
        depth = model(pixel_values=torch.randn(2, 3, 42, 56)).predicted_depth
    assert depth.min() > 0 and depth.max() < 20  # max_depth x sigmoid


def batch(target, geometry="metric", space="depth"):
    b = target.shape[0]
    return {"image": torch.zeros(b, 3, *target.shape[1:], dtype=torch.uint8), "target": target,
            "valid": torch.ones_like(target, dtype=torch.bool), "space": [space] * b,
            "geometry": [geometry] * b, "key": [f"k{i}" for i in range(b)]}


class Constant(torch.nn.Module):
    """A model predicting ``value`` everywhere (its output's only parameter)."""

    def __init__(self, value):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        return type("Out", (), {"predicted_depth": self.value.expand(b, h, w)})()


def test_silog_objective_by_hand():
    objective = MetricObjective(MetricObjectiveConfig(variance_focus=0.5, min_depth=0.001), max_depth=20, preprocessing=IMAGENET)
    target = torch.ones(1, 2, 2)
    target[0, 0, 0], target[0, 1, 1] = 4.0, 30.0  # 30 m: beyond max_depth, ignored
    loss, _ = objective(Constant(2.0), batch(target))
    d = torch.log(torch.tensor([4.0, 1.0, 1.0])) - math.log(2.0)  # log target - log pred on kept pixels
    expect = torch.sqrt((d**2).mean() - 0.5 * d.mean() ** 2)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    # scale-invariant in part only (lambda < 1): a global factor changes the loss
    assert objective(Constant(4.0), batch(target))[0].item() != pytest.approx(loss.item())
    with pytest.raises(ValueError, match="sample k0: metric fine-tuning needs metric depth, got depth:uts"):
        objective(Constant(2.0), batch(target, geometry="uts"))


def test_metric_model_refuses_another_kind(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError):
        metric_model(str(tmp_path / "bert"), 20)


def test_finetune_command_writes_a_metric_model(relative_run, tmp_path):
    out = tmp_path / "metric"
    cmd = [sys.executable, "-m", "student.metric", "--config", str(ROOT / "configs" / "metric" / "tiny.yaml"),
           f"model.init_from={relative_run}", f"output_dir={out}", "max_steps=40", "log_every=10", "eval_every=40",
           "save_every=40", "tracker=none", "batch_size=4", "data.crop_size=42", "data.num_workers=0", "data.val_max_samples=2",
           "data.groups.0.datasets.0.options.height=48", "data.groups.0.datasets.0.options.width=64",
           "data.val.0.options.height=48", "data.val.0.options.width=64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40] and all(math.isfinite(r["loss"]) for r in log)
    assert "val/abs_rel" in log[-1]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]  # it learns (1.29 -> 0.75 here): the metric head finds the scale
    resolved = models.resolve_model(str(out))
    assert resolved.output_space.geometry == "metric" and resolved.model.config.max_depth == 40
    missing = subprocess.run([sys.executable, "-m", "teacher.metric", "--config",
                              str(ROOT / "configs" / "metric" / "tiny.yaml"), f"output_dir={tmp_path / 'x'}"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 2 and "model.init_from is required" in missing.stderr
    assert missing.stderr.strip().count("\n") == 0
