"""The two optimiser options from timm, both off by default: an EMA of the weights (updated after
every optimizer step, checkpointed, validated and exported in place of the weights) and layer-wise
lr decay of the ViT encoder."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from test_train_teacher import TINY, PreemptAt, read_log, small_config
from transformers import AutoModelForDepthEstimation

import distill.engine as engine
from distill.config import ConfigError, load_config
from distill.engine import (
    ModelConfig,
    OptimConfig,
    lr_factor,
    make_ema,
    make_model,
    param_groups,
    setup,
    train,
)
from distill.spaces import output_space_for
from teacher.train import objective_for
from distill.spaces import DEPTH_UP_TO_SCALE
from teacher.config import TeacherConfig

STEPS = ["max_steps=4", "log_every=1", "eval_every=0", "save_every=0"]
EMA = ["optim.ema_decay=0.5", "optim.ema_start_step=1"]  # a short memory, so 4 steps move it visibly


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def checkpoint(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}"


def exported_weights(final) -> dict:
    """The final model's weights as transformers loads them (its file may spell keys otherwise)."""
    return AutoModelForDepthEstimation.from_pretrained(final).state_dict()


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A 4-step teacher run with the EMA on, recording the weights each step starts from and the
    weights validation (at the last step) evaluates."""
    out = tmp_path_factory.mktemp("ema")
    cfg = small_config(out, *STEPS, *EMA)
    objective, seen, validated = objective_for(cfg), [], []

    def recording(model, batch):
        seen.append(weights(model))
        return objective(model, batch)

    def spy(model, *args, **kwargs):
        validated.append(weights(model))
        return real_validate(model, *args, **kwargs)

    real_validate = engine.validate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "validate", spy)
        final = train(cfg, recording, output_space_for("gp2"))
    return SimpleNamespace(out=out, final=Path(final), seen=seen, validated=validated)


def test_ema_follows_the_decay_formula_and_is_validated_and_exported(ema_run):
    raw = load_file(checkpoint(ema_run.out, 4) / "model.safetensors")  # the trained weights after step 4
    steps = ema_run.seen + [raw]  # w_0 .. w_4
    assert len(steps) == 5
    exported = exported_weights(ema_run.final)
    assert exported.keys() == raw.keys()
    # start step 1: the EMA is w_1 after step 1, then ema_k = 0.5 ema_(k-1) + 0.5 w_k
    for name, value in exported.items():
        expected = steps[1][name].double()
        for w in steps[2:]:
            expected = 0.5 * expected + 0.5 * w[name].double()
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7, msg=name)
    assert max((exported[k] - raw[k]).abs().max().item() for k in exported) > 1e-4  # not the raw weights
    saved = torch.load(checkpoint(ema_run.out, 4) / "custom_checkpoint_0.pkl", weights_only=True)
    assert all(torch.equal(saved[f"module.{k}"], v) for k, v in exported.items())
    assert len(ema_run.validated) == 1 and all(torch.equal(ema_run.validated[0][k], v) for k, v in exported.items())
    log = read_log(ema_run.out / "metrics.jsonl")
    assert log[-1]["val/weights"] == "ema" and "val/abs_rel" in log[-1]


def test_without_ema_the_raw_weights_are_exported(tmp_path):
    cfg = small_config(tmp_path, "max_steps=2", "log_every=1", "eval_every=0", "save_every=0", "data.val=[]")
    assert cfg.optim.ema_decay == 0.0 and cfg.optim.layer_decay == 1.0  # off by default
    final = train(cfg, objective_for(cfg), output_space_for("gp2"))
    raw = load_file(checkpoint(tmp_path, 2) / "model.safetensors")
    exported = exported_weights(final)
    assert exported.keys() == raw.keys() and all(torch.equal(exported[k], raw[k]) for k in raw)
    assert not (checkpoint(tmp_path, 2) / "custom_checkpoint_0.pkl").exists()


def test_a_resumed_run_continues_its_ema_exactly(ema_run, tmp_path):
    cfg = small_config(tmp_path, *STEPS, *EMA)
    assert train(cfg, PreemptAt(objective_for(cfg), 2), output_space_for("gp2")) is None
    assert (checkpoint(tmp_path, 2) / "custom_checkpoint_0.pkl").is_file()
    resumed = small_config(tmp_path, *STEPS, *EMA, "resume=latest")
    final = train(resumed, objective_for(resumed), output_space_for("gp2"))
    got, want = exported_weights(final), exported_weights(ema_run.final)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_ema_refused_where_the_weights_are_sharded():
    cfg = OptimConfig(ema_decay=0.9)
    for kind, plugin in ((DistributedType.FSDP, None), (DistributedType.DEEPSPEED, SimpleNamespace(zero_stage=3))):
        accelerator = SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=plugin))
        with pytest.raises(ConfigError, match="not with FSDP or DeepSpeed ZeRO-3"):
            make_ema(accelerator, None, cfg)
    assert make_ema(None, None, OptimConfig()) is None


# --- layer-wise lr decay ---------------------------------------------------------------------------


def expected_group(name: str, p, cfg: OptimConfig, num_layers: int) -> tuple[float, float]:
    """(lr, weight decay) of one parameter, by hand: block i of L at lr * d^(L - i), embeddings at
    d^(L + 1), the encoder's final norm at lr, the decoder at lr * decoder_lr_scale."""
    d = cfg.layer_decay
    if name.startswith("backbone.embeddings."):
        lr = cfg.lr * d ** (num_layers + 1)
    elif name.startswith("backbone.encoder.layer."):
        lr = cfg.lr * d ** (num_layers - int(name.split(".")[3]))
    elif name.startswith("backbone."):
        lr = cfg.lr
    else:
        lr = cfg.lr * cfg.decoder_lr_scale
    no_decay = p.ndim <= 1 or "position_embeddings" in name or "token" in name
    return lr, 0.0 if no_decay else cfg.weight_decay


def check_groups(model, groups: list[dict], cfg: OptimConfig, lr_key: str = "lr") -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    num_layers = model.config.backbone_config.num_hidden_layers
    found = {}
    for g in groups:
        for p in g["params"]:
            found[names[id(p)]] = (g[lr_key], g["weight_decay"])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(found) == sorted(trainable)  # each trainable parameter once, nothing frozen
    for name, p in trainable.items():
        lr, wd = expected_group(name, p, cfg, num_layers)
        assert found[name] == (pytest.approx(lr, rel=1e-12), wd), name


def test_layer_decay_off_keeps_the_encoder_and_decoder_groups():
    model = make_model(ModelConfig(preset="tiny"), DEPTH_UP_TO_SCALE)
    cfg = OptimConfig(lr=1e-4, decoder_lr_scale=10.0, weight_decay=0.05)
    groups = param_groups(model, cfg)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("encoder", 1e-4, 0.0), ("encoder", 1e-4, 0.05), ("decoder", 1e-3, 0.05), ("decoder", 1e-3, 0.0)]
    check_groups(model, groups, cfg)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no optimizer step here, on purpose
def test_layer_decay_gives_each_layer_its_lr_and_the_schedule_scales_each_group(tmp_path):
    cfg = small_config(tmp_path, "max_steps=10", "data.val=[]", "optim.layer_decay=0.5", "optim.lr=1e-3",
                       "optim.decoder_lr_scale=5", "optim.warmup_steps=4")
    run = setup(cfg, output_space_for("gp2"))
    model, groups = run.accelerator.unwrap_model(run.model), run.optimizer.param_groups
    assert model.config.backbone_config.num_hidden_layers == 4  # tiny: embeddings at 0.5^5, block 3 at 0.5
    assert sorted({g["initial_lr"] for g in groups}) == pytest.approx([1e-3 * 0.5 ** k for k in (5, 4, 3, 2, 1, 0)] + [5e-3])
    check_groups(model, groups, cfg.optim, lr_key="initial_lr")
    for step in (0, 1):  # warm-up: 1/4 of each group's own lr, then 2/4
        factor = lr_factor(step, cfg.max_steps, cfg.optim)
        assert factor == (step + 1) / 4
        assert [g["lr"] for g in groups] == pytest.approx([g["initial_lr"] * factor for g in groups])
        assert run.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * factor)  # the logged lr: the encoder's
        run.scheduler.step()


def test_layer_decay_needs_vit_blocks_and_options_are_checked():
    no_vit = torch.nn.ModuleDict({"backbone": torch.nn.Conv2d(3, 4, 3), "head": torch.nn.Linear(4, 1)})
    assert len(param_groups(no_vit, OptimConfig())) == 4
    with pytest.raises(ConfigError, match=r"optim.layer_decay=0.9 needs a ViT encoder .* set optim.layer_decay=1"):
        param_groups(no_vit, OptimConfig(layer_decay=0.9))
    for override, message in (("optim.layer_decay=0", r"layer_decay=0.0 must be in \(0, 1\]"),
                              ("optim.ema_decay=1", r"ema_decay=1.0 must be in \[0, 1\)"),
                              ("optim.ema_start_step=-1", "ema_start_step=-1 must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            load_config(TeacherConfig, TINY, [override])
