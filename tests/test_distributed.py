"""The accelerate launch configs in configs/accelerate: DeepSpeed ZeRO runs on CPU, and the engine's
checks that the launch config agrees with the training config."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from accelerate.utils import DistributedType

from distill.engine import OptimConfig, TrainConfig, check_launch_config

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"
TINY = ROOT / "configs" / "teacher" / "tiny.yaml"

SMALL = [
    "max_steps=3", "log_every=1", "eval_every=0", "save_every=0", "tracker=none", "batch_size=4",
    "data.crop_size=42", "data.num_workers=0", "data.val_max_samples=4",
    "data.val.0.options.height=48", "data.val.0.options.width=64",
] + [f"data.groups.0.datasets.{i}.options.{k}={v}" for i in range(3) for k, v in (("height", 48), ("width", 64))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["ddp", "multinode", "zero2", "zero3", "fsdp"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))  # rejects unknown keys
    assert config.num_processes == (16 if name == "multinode" else 8)
    raw = yaml.safe_load((ACCELERATE_CONFIGS / f"{name}.yaml").read_text())
    # accumulation and clipping must come from the training config (see check_launch_config)
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(raw.get("deepspeed_config", {}))
    if name == "zero3":
        assert raw["deepspeed_config"]["zero3_save_16bit_model"] is True
    if name == "fsdp":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Dinov2Layer"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_zero_two_process_cpu_run(tmp_path, stage):
    pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    # No ACCELERATE_USE_CPU: with it accelerate silently drops DeepSpeed (plain DDP). Without GPUs
    # the engine picks the gloo backend; hiding GPUs keeps the test on CPU everywhere.
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / f"{stage}.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(ROOT / "distill" / "train_teacher.py"), "--config", str(TINY), f"output_dir={out}", *SMALL,
    ]
    # the first DeepSpeed run on a machine compiles its CPU communication op (about a minute)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and log[-1]["val/num_images"] == 4
    # a DeepSpeed checkpoint (sharded optimizer states), not a DDP one
    shards = out / "checkpoints" / "step_00000003" / "pytorch_model"
    assert sorted(p.name for p in shards.glob("*optim_states.pt")) == [
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)
    ]

    import torch
    from transformers import AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(out / "final")
    with torch.no_grad():
        depth = model(pixel_values=torch.rand(1, 3, 42, 56)).predicted_depth
    assert depth.shape == (1, 42, 56) and torch.isfinite(depth).all()


# --- check_launch_config, without launching -------------------------------------------------------


def fake_accelerator(distributed_type=DistributedType.NO, num_processes=1, ds_config=None, grad_accum=1):
    plugin = None if ds_config is None else SimpleNamespace(deepspeed_config=ds_config)
    return SimpleNamespace(
        distributed_type=distributed_type, num_processes=num_processes, state=SimpleNamespace(deepspeed_plugin=plugin),
        gradient_accumulation_steps=grad_accum, print=print,
    )


def test_deepspeed_auto_values_come_from_the_training_config(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    ds = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "gradient_clipping": "auto", "zero_optimization": {"stage": 2}}
    cfg = TrainConfig(batch_size=32, grad_accum=2, optim=OptimConfig(grad_clip=0.5))
    accelerator = fake_accelerator(DistributedType.DEEPSPEED, 8, ds, grad_accum=2)
    check_launch_config(accelerator, cfg, micro_batch=2)
    assert ds["train_batch_size"] == 32 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.5
    assert accelerator.state.deepspeed_plugin.gradient_accumulation_steps == 2


def test_deepspeed_values_that_disagree_are_refused():
    cfg = TrainConfig(batch_size=8, grad_accum=2)
    ds = {"gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2}}  # what `accelerate config` writes
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=1 .* \(grad_accum\)"):
        check_launch_config(fake_accelerator(DistributedType.DEEPSPEED, 2, ds, grad_accum=2), cfg, micro_batch=2)
    ds = {"gradient_clipping": 1.0, "zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match=r"gradient_clipping=1.0 .* \(optim.grad_clip\)"):
        check_launch_config(fake_accelerator(DistributedType.DEEPSPEED, 2, ds, grad_accum=2),
                            TrainConfig(batch_size=8, grad_accum=2, optim=OptimConfig(grad_clip=0.0)), micro_batch=2)


def test_accumulation_overridden_by_the_environment_is_refused():
    with pytest.raises(ValueError, match="grad_accum=1"):
        check_launch_config(fake_accelerator(grad_accum=4), TrainConfig(batch_size=8), micro_batch=8)


def test_processes_without_distributed_training_are_refused(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with pytest.raises(RuntimeError, match="each would train its own copy"):
        check_launch_config(fake_accelerator(DistributedType.NO, 2), TrainConfig(batch_size=8), micro_batch=4)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # a DeepSpeed launch with ACCELERATE_USE_CPU=1
    with pytest.raises(RuntimeError, match="asks for DEEPSPEED but accelerate runs MULTI_CPU"):
        check_launch_config(fake_accelerator(DistributedType.MULTI_CPU, 2), TrainConfig(batch_size=8), micro_batch=4)


def test_launch_precision_that_differs_is_reported(monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    check_launch_config(fake_accelerator(), TrainConfig(batch_size=8), micro_batch=8)
    assert "mixed_precision=bf16 is ignored; training uses precision=no" in capsys.readouterr().out
