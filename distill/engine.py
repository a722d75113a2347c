"""The training engine shared by the teacher and the student.

One ``Accelerator`` (fp32/fp16/bf16, gradient accumulation, DDP/DeepSpeed/FSDP from the
``accelerate launch`` config), encoder/decoder learning rates, warm-up then decay, gradient clipping,
checkpoints with ``save_state`` (plus the data sampler's position, so a resumed run continues the
same data order), SIGTERM -> checkpoint and clean exit, periodic validation with
``distill.metrics``, trackers, a progress bar and ``metrics.jsonl`` on the main process, and the
final model in transformers format. Off by default: layer-wise lr decay of a ViT encoder and an
EMA of the weights (both from timm; the EMA is validated and exported in place of the weights). A
stage supplies only its model, its batch recipe (data transforms) and its objective:
``objective(model, batch) -> (loss, logs)``.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, set_seed
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from distill.config import ConfigError, save_config, to_dict
from distill.data.loading import DataConfig, build_train_loader, build_val_sets
from distill.evaluation import evaluate_samples, read_samples
from distill.inference import InputRule
from distill.metrics import METRIC_NAMES
from distill.models import (
    build_model,
    freeze_unused_parameters,
    image_processor,
    load_image_processor,
    load_preprocessing,
    resolve_model,
    resolve_reference,
    save_model,
)
from distill.preprocessing import Preprocessing
from distill.registry import input_rule, model_config
from distill.runtime import StopSignals, unwrap_model
from distill.spaces import OutputSpace

# Submodules a stage adds under ``model.training_heads`` (the student's feature projection) are
# trained, synchronised and checkpointed with the model, but are not part of the final model.
TRAINING_HEADS = "training_heads."


@dataclass
class ModelConfig:
    preset: str = "tiny"  # a name of distill.registry.PRESETS: Depth Anything (tiny, vits...), dpt-*, glpn-*
    dinov2: str | None = None  # encoder init: DINOv2 hub id or directory (decoder random)
    init_from: str | None = None  # or a whole depth model in transformers format
    max_depth: int | None = None  # metric/GP2 head unit; default per output space
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower
    drop_path_rate: float = 0.0  # stochastic depth of a ViT encoder (model noise for students); 0: off


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adam"] = "adamw"  # torch.optim.AdamW or Adam
    lr: float = 5e-6  # encoder
    decoder_lr_scale: float = 10.0  # decoder lr = lr * this (Depth Anything: 10x)
    weight_decay: float = 0.01  # not on norms, biases, position embeddings and tokens
    betas: tuple[float, float] = (0.9, 0.999)  # Adam(W) betas
    warmup_steps: int = 0  # linear lr warm-up from 0 over this many steps; 0: none
    schedule: Literal["poly", "linear", "cosine", "constant"] = "poly"  # lr decay to 0 at max_steps after warm-up
    poly_power: float = 0.9  # exponent of the poly schedule: lr * (1 - progress)^poly_power
    grad_clip: float = 1.0  # 0: off
    layer_decay: float = 1.0  # ViT encoder block i of L at lr * layer_decay^(L - i), embeddings ^(L + 1); 1: off
    ema_decay: float = 0.0  # EMA of the weights, validated and exported instead of them; 0: off
    ema_start_step: int = 0  # the EMA equals the weights for this many optimizer steps, then averages

    def __post_init__(self):
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay={self.layer_decay} must be in (0, 1] (1: off)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1) (0: off)")
        if self.ema_start_step < 0:
            raise ValueError(f"ema_start_step={self.ema_start_step} must be >= 0")


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"  # the run's folder: config, checkpoints/, metrics.jsonl, final/
    max_steps: int = 1000  # optimizer steps in all
    batch_size: int = 8  # global: across processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step (gradient accumulation)
    precision: Literal["no", "fp16", "bf16"] = "no"  # mixed precision; no: fp32
    seed: int = 0  # seed of the initial weights, data order and augmentations
    compile: bool = False  # torch.compile the model
    log_every: int = 10  # log loss, lr and samples/s every this many steps
    eval_every: int = 500  # 0: only at the end
    save_every: int = 1000  # 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept; 0: all
    resume: str | None = None  # "latest" or a checkpoint directory
    overwrite: bool = False  # a fresh run may replace an earlier run's checkpoints, metrics and final model
    tracker: Literal["tensorboard", "wandb", "none"] = "tensorboard"  # where metrics go besides metrics.jsonl
    model: ModelConfig = field(default_factory=ModelConfig)  # the model trained
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and lr schedule
    data: DataConfig = field(default_factory=DataConfig)  # training and validation data


# --- pieces ----------------------------------------------------------------------------------------


def make_model(cfg: ModelConfig, output_space: OutputSpace, input_size: int | None = None):
    """``input_size``: the training crop, the one input size of presets that take one (DPT-hybrid)."""
    if cfg.init_from:
        model = resolve_model(cfg.init_from, output_space).model
    else:
        model = build_model(cfg.preset, output_space, cfg.max_depth, dinov2=cfg.dinov2, input_size=input_size,
                            drop_path_rate=cfg.drop_path_rate)
    if cfg.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    freeze_unused_parameters(model)
    return model


def model_preprocessing(cfg: ModelConfig, input_size: int | None = None) -> Preprocessing:
    """The input rule of the model ``make_model`` builds: a whole model's own image processor, else its
    family's (``distill.registry.input_rule``) at the preset's size multiple or one size."""
    if cfg.init_from:
        return load_preprocessing(resolve_reference(cfg.init_from))
    return input_rule(model_config(cfg.preset, input_size=input_size))


def model_input_rule(cfg: ModelConfig, preprocessing: Preprocessing, size: int) -> InputRule:
    """How the model ``make_model`` builds sees an image in validation, its processor the one ``final/``
    carries: a whole model's own image processor, else its family's (``image_processor``), at the
    training crop size where the model can take one (``InputRule.of_model``)."""
    own = load_image_processor(resolve_reference(cfg.init_from)) if cfg.init_from else None
    return InputRule.of_model(image_processor(size, preprocessing) if own is None else own, preprocessing, size)


# Parameter names (fnmatch patterns) without weight decay, besides all 1-d ones (norms, biases).
NO_WEIGHT_DECAY = ("*position_embeddings*", "*token*")
# Where the encoder's parameters live: Depth Anything / DPT (``backbone.``), GLPN's MiT (``glpn.``).
ENCODER_PREFIXES = ("backbone.", "glpn.")
# The blocks of a DINOv2 (ViT) encoder, whose index layer-wise lr decay reads.
ENCODER_BLOCK = r"^backbone\.encoder\.layer\.(\d+)\."


def param_groups(model, cfg: OptimConfig) -> list[dict]:
    """Encoder at ``lr`` (per layer with ``layer_decay`` < 1: ``encoder_layer_groups``), decoder at
    ``lr * decoder_lr_scale``; no weight decay on norms and biases."""
    layered = cfg.layer_decay != 1.0
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if name.startswith(ENCODER_PREFIXES) else "decoder"
        if layered and part == "encoder":
            continue
        decay = p.ndim > 1 and not any(fnmatch.fnmatch(name, pattern) for pattern in NO_WEIGHT_DECAY)
        lr = cfg.lr * (1.0 if part == "encoder" else cfg.decoder_lr_scale)
        key = (part, decay)
        groups.setdefault(key, {"params": [], "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0, "name": part})
        groups[key]["params"].append(p)
    return (encoder_layer_groups(model, cfg) if layered else []) + list(groups.values())


class _EncoderLayers(torch.nn.Module):
    """The model's encoder under its own name (``backbone.``) with the ``group_matcher`` timm's
    ``param_groups_layer_decay`` reads: layer 0 the embeddings, layer i + 1 block i, and the rest
    (the final norm) last, at the full encoder lr."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"embeddings": r"^backbone\.embeddings\.", "blocks": ENCODER_BLOCK}


def encoder_layer_groups(model, cfg: OptimConfig) -> list[dict]:
    """Layer-wise lr decay (BEiT) of a ViT encoder through timm: block i of L at
    ``lr * layer_decay^(L - i)``, the embeddings at ``lr * layer_decay^(L + 1)``, the weight-decay
    rule of ``param_groups``."""
    if not any(re.match(ENCODER_BLOCK, name) for name, _ in model.named_parameters()):
        raise ConfigError(f"optim.layer_decay={cfg.layer_decay} needs a ViT encoder with blocks backbone.encoder.layer.N "
                          "(DINOv2) and this model has none: set optim.layer_decay=1")
    scaled = param_groups_layer_decay(_EncoderLayers(model.backbone), weight_decay=cfg.weight_decay,
                                      no_weight_decay_list=NO_WEIGHT_DECAY, layer_decay=cfg.layer_decay)
    # timm leaves lr_scale to its own schedulers; here the lr is set once and LambdaLR scales each group's own.
    groups = [{"params": g["params"], "lr": cfg.lr * g["lr_scale"], "weight_decay": g["weight_decay"], "name": "encoder"}
              for g in scaled]
    # top layer first: the logged lr (the first group's) stays the encoder's lr
    return sorted(groups, key=lambda g: -g["lr"])


def make_optimizer(model, cfg: OptimConfig):
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(param_groups(model, cfg), betas=cfg.betas)


def lr_factor(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Linear warm-up to 1, then the configured decay to 0 at ``max_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    if cfg.schedule == "poly":
        return (1.0 - progress) ** cfg.poly_power
    if cfg.schedule == "linear":
        return 1.0 - progress
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def check_launch_config(accelerator: Accelerator, cfg: TrainConfig, micro_batch: int) -> None:
    """The training config decides batch size, accumulation, clipping and precision; make the
    ``accelerate launch`` config agree with it.

    DeepSpeed takes the micro batch, accumulation steps and clipping from its own config (accelerate
    fills "auto" values only from a dataloader passed to ``prepare``, which the engine does not do,
    and would fill clipping with 1.0): write the training config's values into the entries left out
    or "auto", and refuse explicit values that disagree rather than train with another recipe.
    """
    kind = accelerator.distributed_type
    if accelerator.num_processes > 1 and kind == DistributedType.NO:  # e.g. --multi_gpu on a machine without GPUs
        raise RuntimeError(
            f"{accelerator.num_processes} processes but accelerate set up no distributed training, so each would train "
            "its own copy: on CPU launch with ACCELERATE_USE_CPU=1 (or use_cpu: true in the accelerate config)"
        )
    for variable, wanted_kind in (("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED), ("ACCELERATE_USE_FSDP", DistributedType.FSDP)):
        if os.environ.get(variable, "false").lower() == "true" and kind != wanted_kind:
            raise RuntimeError(
                f"the launch config asks for {wanted_kind.value} but accelerate runs {kind.value}: accelerate uses FSDP "
                "only on GPUs, and DeepSpeed not with ACCELERATE_USE_CPU/use_cpu (on CPU launch DeepSpeed without it)"
            )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        ds = plugin.deepspeed_config
        wanted = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": cfg.grad_accum,
            "train_batch_size": cfg.batch_size,
            "gradient_clipping": float(cfg.optim.grad_clip),  # 0: off, in both
        }
        source = {"gradient_clipping": "optim.grad_clip", "gradient_accumulation_steps": "grad_accum"}
        for key, value in wanted.items():
            current = ds.get(key, "auto")
            if current not in ("auto", None) and float(current) != value:
                raise ValueError(
                    f"DeepSpeed config has {key}={current} but the training config implies {value} "
                    f"({source.get(key, 'batch_size')}); remove it from the accelerate/DeepSpeed config or set it to auto"
                )
            ds[key] = value
        plugin.gradient_accumulation_steps = cfg.grad_accum
        plugin.gradient_clipping = float(cfg.optim.grad_clip)
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:  # ACCELERATE_GRADIENT_ACCUMULATION_STEPS overrides
        raise ValueError(
            f"accelerate uses gradient_accumulation_steps={accelerator.gradient_accumulation_steps} "
            f"(from the launch config or environment) but grad_accum={cfg.grad_accum}; make them agree"
        )
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")  # set by accelerate launch from its config
    if launched and launched != cfg.precision:
        accelerator.print(f"warning: the launch config's mixed_precision={launched} is ignored; training uses precision={cfg.precision} from the training config")


def checkpoint_dirs(output_dir: str) -> list[str]:
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_") and n[5:].isdigit())
    return [os.path.join(root, n) for n in names]


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    if not resume:
        return None
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None  # nothing yet: a fresh start
    if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
        raise FileNotFoundError(f"resume={resume}: not a checkpoint directory (no trainer_state.json)")
    return resume


# What a run writes and a fresh run would otherwise mix with (metrics appended, ``resume=latest``
# finding the old checkpoints).
RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "config.yaml")


def check_output_dir(cfg: TrainConfig) -> None:
    """A run without ``resume`` must not land on an earlier run: one line naming the way out."""
    if cfg.resume or cfg.overwrite:
        return
    earlier = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(cfg.output_dir, name))]
    if earlier:
        raise ConfigError(f"output_dir {cfg.output_dir} holds an earlier run ({', '.join(earlier)}): resume=latest "
                          "continues it, overwrite=true replaces it, or choose another output_dir")


def remove_earlier_run(output_dir: str) -> None:
    for name in RUN_OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith("bad_samples_rank"):
            os.remove(os.path.join(output_dir, name))


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def validate(model, val_sets: list, output_space: OutputSpace, accelerator: Accelerator, rule: InputRule,
             num_workers: int = 0) -> dict:
    """Metrics on the validation sets through ``distill.evaluation.evaluate_samples`` (the one
    evaluation loop and the model's one input rule, so ``val/abs_rel`` on NYU is what
    ``distill/evaluate.py --benchmark nyu`` prints for ``final/``): the protocol of the model's output
    space, each set's benchmark crop and depth range, per image, averaged over all images of all
    ranks. Only samples whose targets are depth up to scale or better are scored."""
    was_training = model.training  # the EMA copy stays in eval mode
    model.eval()
    sums = torch.zeros(len(METRIC_NAMES) + 1, device=accelerator.device, dtype=torch.float64)
    for val in val_sets:
        samples = (s for s in read_samples(val.reader, val.indices, num_workers) if s.complete)
        rows = evaluate_samples(model, samples, output_space, rule, val.benchmark,
                                device=accelerator.device, autocast=accelerator.autocast, depth_range=val.depth_range)
        for row in rows:
            if not row["skipped"]:
                sums += torch.tensor([row[k] for k in METRIC_NAMES] + [1.0], dtype=torch.float64, device=sums.device)
    model.train(was_training)
    sums = accelerator.reduce(sums, reduction="sum")
    count = float(sums[-1])
    if count == 0:
        return {}
    return {f"val/{k}": float(v) / count for k, v in zip(METRIC_NAMES, sums[:-1])} | {"val/num_images": int(count)}


# --- the run: setup, resume, loop, export -----------------------------------------------------------


@dataclass
class Run:
    """What ``setup`` builds and the loop uses."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    sampler: object
    val_sets: list
    micro_batch: int
    rule: InputRule  # the model's input rule: validation, and the image processor saved in final/
    step: int = 0
    ema: ModelEmaV3 | None = None


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    # Distributed on CPU (tests, DeepSpeed without GPUs) needs the gloo backend.
    cpu_distributed = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        mixed_precision=cfg.precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=None if cfg.tracker == "none" else cfg.tracker,
        project_dir=cfg.output_dir,
        # the engine steps the schedule once per optimizer step itself (accelerate would step it once per process)
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu_distributed else [],
    )


def bare_model(accelerator: Accelerator, model):
    """The model without its DDP/DeepSpeed and torch.compile wrappers."""
    return unwrap_model(accelerator.unwrap_model(model))


def make_ema(accelerator: Accelerator, model, cfg: OptimConfig) -> ModelEmaV3 | None:
    """timm's EMA of the prepared model's weights and buffers, checkpointed with ``save_state``; None
    where ``ema_decay`` is 0."""
    if not cfg.ema_decay:
        return None
    plugin = accelerator.state.deepspeed_plugin
    if accelerator.distributed_type == DistributedType.FSDP or (plugin is not None and plugin.zero_stage == 3):
        raise ConfigError("optim.ema_decay needs the whole weights on every process: not with FSDP or DeepSpeed ZeRO-3")
    # timm averages from step update_after_step + 2 on, counting steps from 1: from ema_start_step + 1 here.
    # float32: a bf16 EMA would need stochastic rounding, whose generator save_state does not keep.
    ema = ModelEmaV3(bare_model(accelerator, model), decay=cfg.ema_decay, update_after_step=cfg.ema_start_step - 1,
                     dtype=torch.float32)
    accelerator.register_for_checkpointing(ema)
    return ema


def setup(cfg: TrainConfig, output_space: OutputSpace, model=None, train_transforms=None, extra_modules: tuple = (),
          preprocessing: Preprocessing | None = None) -> Run:
    """Accelerator, output directory, model, optimizer, schedule and data, all prepared."""
    preprocessing = preprocessing or model_preprocessing(cfg.model, cfg.data.crop_size)  # the model's own rule
    check_output_dir(cfg)
    accelerator = make_accelerator(cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.overwrite and not cfg.resume and accelerator.is_main_process:
        remove_earlier_run(cfg.output_dir)
    accelerator.wait_for_everyone()
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by processes x grad_accum = {world} x {cfg.grad_accum}")
    micro_batch = cfg.batch_size // (world * cfg.grad_accum)
    check_launch_config(accelerator, cfg, micro_batch)
    set_seed(cfg.seed)  # identical initial weights on every rank
    if model is None:
        model = make_model(cfg.model, output_space, cfg.data.crop_size)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.max_steps, cfg.optim))
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ema = make_ema(accelerator, model, cfg.optim)  # before ``resume``: load_state restores it
    for module in extra_modules:
        module.to(accelerator.device).eval().requires_grad_(False)
    loader, sampler = build_train_loader(cfg.data, micro_batch, cfg.seed, rank, world, train_transforms)
    val_sets = build_val_sets(cfg.data, rank, world)
    rule = model_input_rule(cfg.model, preprocessing, cfg.data.crop_size)
    return Run(accelerator, model, optimizer, scheduler, loader, sampler, val_sets, micro_batch, rule, ema=ema)


def resume(run: Run, cfg: TrainConfig) -> int:
    """Model, optimizer, schedule and RNG from a checkpoint (``save_state``), and this rank's position
    in the data mixture; returns the step to continue from (0 for a fresh run)."""
    resume_dir = resolve_resume(cfg.resume, cfg.output_dir)
    if not resume_dir:
        return 0
    run.accelerator.load_state(resume_dir)
    with open(os.path.join(resume_dir, "trainer_state.json")) as f:
        step = json.load(f)["step"]
    with open(os.path.join(resume_dir, f"sampler_rank{run.accelerator.process_index}.json")) as f:
        run.sampler.load_state(json.load(f))
    return step


def start_logging(run: Run, cfg: TrainConfig) -> None:
    """config.yaml, trackers and the opening line, on the main process; the output directory on every
    process (an objective may write there from its first step, before the main process gets here)."""
    accelerator = run.accelerator
    os.makedirs(cfg.output_dir, exist_ok=True)
    if not accelerator.is_main_process:
        return
    save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    if cfg.tracker != "none":
        flat = {k: v for k, v in _flatten(to_dict(cfg)).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(os.path.basename(os.path.abspath(cfg.output_dir)) or "train", config=flat)
    world = accelerator.num_processes
    accelerator.print(f"training {type(accelerator.unwrap_model(run.model)).__name__} on {world} process(es), "
                      f"batch {cfg.batch_size} = {world} x {cfg.grad_accum} x {run.micro_batch}, from step {run.step}")
    if run.ema is not None:
        accelerator.print(f"validation and final/ use the EMA of the weights (decay {cfg.optim.ema_decay}, "
                          f"averaging from step {cfg.optim.ema_start_step + 1})")


class BadSamples:
    """Counts the samples the loader could not read, records them per rank, and stops the run past
    ``data.max_bad_fraction``."""

    def __init__(self, cfg: TrainConfig, rank: int):
        self.path = os.path.join(cfg.output_dir, f"bad_samples_rank{rank}.jsonl")
        self.max_fraction, self.seen, self.bad = cfg.data.max_bad_fraction, 0, 0

    def add(self, batch: dict, step: int) -> None:
        self.seen += len(batch["key"]) + len(batch["bad_samples"])
        self.bad += len(batch["bad_samples"])
        for report in batch["bad_samples"]:
            _append_jsonl(self.path, {"step": step, "error": report})

    def check(self) -> None:
        if self.seen >= 100 and self.bad / self.seen > self.max_fraction:
            raise RuntimeError(f"{self.bad} of {self.seen} samples could not be read (> data.max_bad_fraction = "
                               f"{self.max_fraction}); see {self.path}")


def optimizer_step(run: Run, cfg: TrainConfig, objective: Callable, data_iter, bad: BadSamples):
    """One optimizer step over ``grad_accum`` micro-batches; returns (summed loss on the device, the
    last micro-batch's loss and logs). Nothing leaves the device here."""
    accelerator, model = run.accelerator, run.model
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for _ in range(cfg.grad_accum):
        batch = next(data_iter)
        bad.add(batch, run.step)
        batch = to_device(batch, accelerator.device)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, logs = objective(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach().double()
    run.scheduler.step()
    if run.ema is not None:  # step: the optimizer steps done, this one included
        run.ema.update(bare_model(accelerator, model), step=run.step + 1)
    return loss_sum, loss, logs


def preemption_requested(run: Run, preemption: StopSignals) -> bool:
    """Whether any rank got SIGTERM/SIGINT (a collective only when there are several ranks)."""
    if run.accelerator.num_processes == 1:
        return preemption.requested
    flag = torch.tensor(float(preemption.requested), device=run.accelerator.device)
    return run.accelerator.reduce(flag, "max").item() > 0


def train_loop(run: Run, cfg: TrainConfig, objective: Callable, output_space: OutputSpace) -> bool:
    """Steps to ``max_steps`` with logging, validation and checkpoints; returns False when a
    preemption stopped it first (after writing a checkpoint)."""
    accelerator = run.accelerator
    preemption, bad = StopSignals(), BadSamples(cfg, accelerator.process_index)
    progress = tqdm(total=cfg.max_steps, initial=run.step, disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    data_iter = iter(run.loader)
    window_loss, window_micro, window_start = 0.0, 0, time.perf_counter()
    run.model.train()
    stopped = False
    while run.step < cfg.max_steps and not stopped:
        loss_sum, loss, logs = optimizer_step(run, cfg, objective, data_iter, bad)
        window_loss, window_micro = window_loss + loss_sum, window_micro + cfg.grad_accum
        run.step += 1
        progress.update(1)
        bad.check()
        record, is_last = {}, run.step == cfg.max_steps
        if run.step % cfg.log_every == 0 or is_last:
            mean_loss = accelerator.reduce((window_loss / window_micro).float(), "mean").item()
            elapsed = time.perf_counter() - window_start
            record = {"step": run.step, "loss": mean_loss, "lr": run.scheduler.get_last_lr()[0],
                      "samples_per_s": window_micro * run.micro_batch * accelerator.num_processes / elapsed}
            record.update({k: float(v) for k, v in logs.items()})
            progress.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{record['samples_per_s']:.1f}")
            window_loss, window_micro, window_start = 0.0, 0, time.perf_counter()
        if run.val_sets and ((cfg.eval_every and run.step % cfg.eval_every == 0) or is_last):
            record = record or {"step": run.step, "loss": loss.detach().float().item()}
            weights = run.model if run.ema is None else run.ema.module
            record.update(validate(weights, run.val_sets, output_space, accelerator, run.rule,
                                   min(cfg.data.num_workers, 2)))
            if run.ema is not None:
                record["val/weights"] = "ema"
        if record and accelerator.is_main_process:
            _append_jsonl(os.path.join(cfg.output_dir, "metrics.jsonl"), record)
            if cfg.tracker != "none":
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=run.step)
        stopped = preemption_requested(run, preemption)
        if (cfg.save_every and run.step % cfg.save_every == 0) or is_last or stopped:
            save_checkpoint(accelerator, cfg, run.step, run.sampler)
        if stopped:
            accelerator.print(f"preempted: checkpoint at step {run.step} saved; resume with resume=latest")
    progress.close()
    preemption.restore()
    return run.step >= cfg.max_steps


def save_final_model(run: Run, cfg: TrainConfig, output_space: OutputSpace) -> str:
    """The final model in transformers format (training-only heads left out) in ``final/``: the EMA
    of the weights where there is one."""
    accelerator = run.accelerator
    final_dir = os.path.join(cfg.output_dir, "final")
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(run.model) if run.ema is None else run.ema.module.state_dict()
    if state_dict is not None:  # training-only heads (e.g. the student's feature projection) stay out
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_HEADS)}
    if accelerator.is_main_process:
        save_model(bare_model(accelerator, run.model), final_dir, output_space, state_dict=state_dict,
                   processor=run.rule.processor)  # validation's processor, at the training scale
        save_config(cfg, os.path.join(final_dir, "training_config.yaml"))
    return final_dir


def train(cfg: TrainConfig, objective: Callable, output_space: OutputSpace, model=None, train_transforms=None,
          extra_modules: tuple = (), preprocessing: Preprocessing | None = None):
    """Run a training job to ``cfg.max_steps``; returns the path of the final model directory, or
    None when a SIGTERM stopped it first (a checkpoint was written: continue with ``resume=latest``).

    ``objective(model, batch) -> (loss, logs)``; ``extra_modules``: frozen modules the objective
    uses (e.g. the student's frozen DINOv2), moved to the device but not trained or saved;
    ``preprocessing``: the model's input normalisation (default: ``model_preprocessing``), from which its
    input rule is made (``model_input_rule``: validation and the image processor saved in ``final/``).
    """
    run = setup(cfg, output_space, model, train_transforms, extra_modules, preprocessing)
    run.step = resume(run, cfg)
    start_logging(run, cfg)
    finished = train_loop(run, cfg, objective, output_space)
    final = save_final_model(run, cfg, output_space) if finished else None
    run.accelerator.end_training()
    return final


def save_checkpoint(accelerator: Accelerator, cfg: TrainConfig, step: int, sampler) -> str:
    """save_state into ``step_N.tmp``, renamed once complete, so ``latest`` never sees half a checkpoint."""
    root = os.path.join(cfg.output_dir, "checkpoints")
    final = os.path.join(root, f"step_{step:08d}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    with open(os.path.join(tmp, f"sampler_rank{accelerator.process_index}.json"), "w") as f:
        json.dump(sampler.state_at(step * cfg.grad_accum), f)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump({"step": step, "num_processes": accelerator.num_processes}, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(cfg.output_dir)[: -cfg.keep_checkpoints] if cfg.keep_checkpoints > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
