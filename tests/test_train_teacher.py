"""Teacher training through the shared engine: learning, resume, preemption, multi-process, errors."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from distill.config import ConfigError, load_config
from distill.engine import train
from distill.spaces import output_space_for
from teacher.train import objective_for
from teacher.config import TeacherConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "teacher" / "tiny.yaml"


def small_config(tmp_path, *overrides):
    base = [
        f"output_dir={tmp_path}",
        "data.crop_size=42",
        "data.num_workers=0",
        "data.val_max_samples=4",
        "data.groups.0.datasets.0.options.height=48",
        "data.groups.0.datasets.0.options.width=64",
        "data.groups.0.datasets.1.options.height=48",
        "data.groups.0.datasets.1.options.width=64",
        "data.groups.0.datasets.2.options.height=48",
        "data.groups.0.datasets.2.options.width=64",
        "data.val.0.options.height=48",
        "data.val.0.options.width=64",
        "tracker=none",
        "batch_size=4",
    ]
    return load_config(TeacherConfig, TINY, base + list(overrides))


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_tiny_preset_loads():
    cfg = load_config(TeacherConfig, TINY)
    assert cfg.objective.kind == "gp2" and cfg.model.preset == "tiny"
    assert [d.options["geometry"] for d in cfg.data.groups[0].datasets] == ["metric", "uts", "utss"]


def test_a_fresh_run_never_lands_on_an_earlier_one(tmp_path):
    def run(*overrides):
        cfg = small_config(tmp_path, "max_steps=2", "log_every=1", "eval_every=0", "save_every=1", "data.val=[]",
                           *overrides)
        return train(cfg, objective_for(cfg), output_space_for(cfg.objective.kind))

    run()
    first = read_log(tmp_path / "metrics.jsonl")
    with pytest.raises(ConfigError, match=r"holds an earlier run \(checkpoints, final, metrics.jsonl, config.yaml\)"):
        run()
    assert read_log(tmp_path / "metrics.jsonl") == first  # nothing touched
    (tmp_path / "checkpoints" / "step_00000001").rename(tmp_path / "checkpoints" / "step_00000099")
    run("overwrite=true", "seed=1")  # starts over: the old checkpoints and metrics are gone
    assert [r["step"] for r in read_log(tmp_path / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]


def test_loss_goes_down_and_final_model_loads(tmp_path):
    cfg = small_config(tmp_path, "max_steps=40", "log_every=5", "eval_every=20", "save_every=0", "optim.lr=5e-4")
    final = train(cfg, objective_for(cfg), output_space_for(cfg.objective.kind))
    log = read_log(tmp_path / "metrics.jsonl")
    losses = [r["loss"] for r in log]
    assert all(r["step"] % 5 == 0 for r in log) and {"loss", "lr", "samples_per_s"} <= set(log[0])
    # the last two windows (5 steps each are noisy) against the first: 0.71 here, 0.74 with transformers 5.17
    assert sum(losses[-2:]) / 2 < 0.85 * losses[0], losses
    assert "val/abs_rel" in log[-1] and log[-1]["val/num_images"] == 4
    from transformers import pipeline

    pipe = pipeline("depth-estimation", model=final)
    import numpy as np
    from PIL import Image

    out = pipe(Image.fromarray(np.zeros((50, 70, 3), np.uint8)))
    assert out["predicted_depth"].shape == (50, 70)
    assert json.loads(Path(final, "config.json").read_text())["output_geometry"] == "uts"
    assert (Path(final) / "training_config.yaml").is_file()
    assert (tmp_path / "checkpoints").is_dir()  # the final checkpoint, for later resumes


class PreemptAt:
    """The teacher objective, with a SIGTERM delivered to this process at the n-th call."""

    def __init__(self, objective, n):
        self.objective, self.n, self.calls = objective, n, 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.objective(model, batch)


def test_sigterm_checkpoint_and_resume_match_uninterrupted_run(tmp_path):
    steps = ["max_steps=8", "log_every=1", "eval_every=0", "save_every=0", "data.val=[]"]
    full = small_config(tmp_path / "full", *steps)
    train(full, objective_for(full), output_space_for("gp2"))
    expected = [r["loss"] for r in read_log(tmp_path / "full" / "metrics.jsonl")]

    run = small_config(tmp_path / "cut", *steps)
    assert train(run, PreemptAt(objective_for(run), 3), output_space_for("gp2")) is None  # no final model
    log = read_log(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]  # stopped cleanly after the step that got SIGTERM
    assert not (tmp_path / "cut" / "final").exists()
    assert sorted(os.listdir(tmp_path / "cut" / "checkpoints")) == ["step_00000003"]

    resumed = small_config(tmp_path / "cut", *steps, "resume=latest")
    assert train(resumed, objective_for(resumed), output_space_for("gp2")) == str(tmp_path / "cut" / "final")
    losses = [r["loss"] for r in read_log(tmp_path / "cut" / "metrics.jsonl")]
    assert losses == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_bad_config_values_give_one_line_errors(tmp_path):
    script = str(ROOT / "distill" / "train_teacher.py")
    for args, expected in [
        (["objective.kind=midas"], "objective.kind: 'midas' is not one of 'gp2', 'ssi'"),
        (["optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        (["modle.preset=vits"], "unknown key 'modle'"),
        (["--config", str(tmp_path / "nope.yaml")], "config file not found"),
    ]:
        cmd = [sys.executable, script] + (args if args[0] == "--config" else ["--config", str(TINY), *args])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr


RECORDING_SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
from distill.config import load_config
from distill.engine import train
from teacher.config import TeacherConfig
from distill.spaces import output_space_for
from teacher.train import objective_for

cfg = load_config(TeacherConfig, {config!r}, sys.argv[1:])
objective = objective_for(cfg)
rank = int(os.environ.get('RANK', 0))  # (a PartialState made here would fix world size 1 on CPU)

def recording(model, batch):
    with open(os.path.join(cfg.output_dir, f"keys_rank{{rank}}.txt"), "a") as f:
        f.write("\\n".join(batch["key"]) + "\\n")
    return objective(model, batch)

train(cfg, recording, output_space_for("gp2"))
"""


def test_two_process_run_ranks_see_different_data(tmp_path):
    script = tmp_path / "record.py"
    script.write_text(RECORDING_SCRIPT.format(root=str(ROOT), config=str(TINY)))
    out = tmp_path / "run"
    args = [
        f"output_dir={out}", "max_steps=4", "log_every=2", "eval_every=4", "save_every=0", "tracker=none",
        "batch_size=4", "data.crop_size=42", "data.num_workers=0", "data.val_max_samples=4",
    ] + [f"data.groups.0.datasets.{i}.options.{k}={v}" for i in range(3) for k, v in (("height", 48), ("width", 64))] + [
        "data.val.0.options.height=48", "data.val.0.options.width=64",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port, so concurrent or lingering runs do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(port),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = [set((out / f"keys_rank{r}.txt").read_text().split()) for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == 8  # 4 steps x 2 samples per rank
    assert not keys[0] & keys[1]
    log = read_log(out / "metrics.jsonl")
    assert [r["step"] for r in log] == [2, 4] and log[-1]["val/num_images"] == 4  # 2 per rank, reduced
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("preset", ["tiny", "vits", "vitb", "vitl", "vitg"])
def test_every_teacher_preset_loads(preset):
    cfg = load_config(TeacherConfig, ROOT / "configs" / "teacher" / f"{preset}.yaml")
    assert cfg.model.preset == preset
    if preset != "tiny":  # the recipe
        assert (cfg.data.crop_size, cfg.batch_size, cfg.max_steps) == (518, 64, 160000)
        assert cfg.optim.lr == 5e-6 and cfg.optim.decoder_lr_scale == 10
        assert {d.reader for d in cfg.data.groups[0].datasets} >= {"hypersim", "vkitti2", "megadepth", "hrwsi"}


def test_bad_samples_are_skipped_counted_and_stop_the_run(tmp_path):
    from distill.data.synthetic import write_dataset

    data = tmp_path / "folder"
    write_dataset(str(data), 12, seed=0, size=(48, 64))
    broken = sorted((data / "rgb").iterdir())[:2]
    broken[0].write_bytes(b"")  # zero bytes
    broken[1].write_bytes(broken[1].read_bytes()[:100])  # truncated
    folder = f"data.groups.0.datasets=[{{reader: folder, root: {data}}}]"
    cfg = small_config(tmp_path / "ok", folder, "data.groups.0.parts=1", "max_steps=6", "log_every=3",
                       "eval_every=0", "save_every=0", "data.val=[]", "data.max_bad_fraction=0.5")
    train(cfg, objective_for(cfg), output_space_for("gp2"))
    reports = read_log(tmp_path / "ok" / "bad_samples_rank0.jsonl")
    assert reports and all("scene_00000" in r["error"] for r in reports)
    assert {r["error"].split(":")[0] for r in reports} <= {"FolderReader[0]", "FolderReader[1]"}
    assert (tmp_path / "ok" / "final" / "model.safetensors").is_file()

    strict = small_config(tmp_path / "strict", folder, "max_steps=40", "eval_every=0", "save_every=0",
                          "data.val=[]", "data.max_bad_fraction=0.01")
    with pytest.raises(RuntimeError, match=r"could not be read \(> data.max_bad_fraction = 0.01\)"):
        train(strict, objective_for(strict), output_space_for("gp2"))


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    steps = ["max_steps=2", "log_every=1", "eval_every=0", "save_every=0", "data.val=[]"]
    losses = []
    for flag in ("false", "true"):
        cfg = small_config(tmp_path / flag, *steps, f"model.gradient_checkpointing={flag}")
        train(cfg, objective_for(cfg), output_space_for("gp2"))
        losses.append([r["loss"] for r in read_log(tmp_path / flag / "metrics.jsonl")])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
