"""Building, loading and saving depth models; what a model *is* (family, preset, input rule, output
space) is read from ``distill.registry``.

- ``build_model(preset, dinov2=...)``: a fresh model of a preset; its encoder from DINOv2 weights
  (hub id or directory), or a DPT-hybrid's CNN from an offline prior, timm's hub weights or random;
- ``resolve_model(ref)``: the one resolver every command uses for an existing model: a training run
  directory (its ``final/``), a model directory, a hub id, or an original Depth Anything ``.pth`` /
  ``.safetensors`` file (with a preset, ``distill.original_checkpoints``); returns the model, its output
  space, its image processor and its normalisation (``distill.inference.InputRule.of_model`` makes
  its one input rule of the two);
- ``save_model``: a directory that ``pipeline("depth-estimation")`` loads with no custom code; the
  output space rides along as two ``config.json`` fields (``output_space``, ``output_geometry``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

import torch
from transformers import (
    AutoConfig,
    AutoModelForDepthEstimation,
    DepthAnythingForDepthEstimation,
    Dinov2Backbone,
    Dinov2Config,
    DPTForDepthEstimation,
    DPTImageProcessor,
)

from distill.config import ConfigError
from distill.original_checkpoints import load_original_checkpoint
from distill.preprocessing import IMAGENET, INPUT_SIZE, Preprocessing
from distill.registry import (
    FAMILIES,
    HYBRID_OUT_INDICES,
    PRESETS,
    family_of,
    get_preset,
    input_rule,
    model_config,
    output_space_of,
)
from distill.runtime import first_line
from distill.spaces import (
    DEPTH_UP_TO_SCALE,
    METRIC_DEPTH,
    RELATIVE_DISPARITY,
    OutputSpace,
)


def load_dinov2_config(dinov2: str, preset: str) -> Dinov2Config:
    """Read a DINOv2 config (hub id or directory) and check it matches the preset's encoder."""
    p = get_preset(preset)
    if p.family == "glpn":
        raise ValueError(f"preset {preset!r} is a GLPN (Mix Transformer encoder): it cannot start from DINOv2 weights {dinov2!r}")
    cfg = Dinov2Config.from_pretrained(dinov2)
    got = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, bool(cfg.use_swiglu_ffn), cfg.patch_size)
    want = (p.hidden_size, p.num_layers, p.num_heads, p.swiglu, p.patch_size)
    if got != want:
        raise ValueError(
            f"DINOv2 weights {dinov2!r} have (hidden, layers, heads, swiglu, patch) = {got}, "
            f"but preset {preset!r} needs {want}"
        )
    return cfg


def _relu_output_conv(model):
    """The last convolution of a head that ends in a ReLU (Depth Anything's relative head, DPT's)."""
    if isinstance(model, DPTForDepthEstimation):
        return model.head.head[4]
    if isinstance(model, DepthAnythingForDepthEstimation) and model.config.depth_estimation_type == "relative":
        return model.head.conv3
    return None


def build_model(
    preset: str,
    output_space: OutputSpace = RELATIVE_DISPARITY,
    max_depth: int | None = None,
    dinov2: str | None = None,
    input_size: int | None = None,
    drop_path_rate: float = 0.0,
):
    """A model of the preset's architecture; with ``dinov2`` (hub id or directory; ViT presets) the
    encoder starts from those weights and the decoder is random, as for a fresh teacher or student.
    DPT-hybrid presets take ``build_hybrid``'s encoder weights in ``dinov2`` and their one input size."""
    p = get_preset(preset)
    if p.family in ("dpt", "dpt_hybrid") and output_space == DEPTH_UP_TO_SCALE:
        # log(ReLU) has no gradient where the ReLU is 0: measured, a GP2 hybrid teacher's output
        # went to 0 everywhere within 150 steps (AbsRel 1.000)
        raise ConfigError(f"preset {preset!r} ends in DPT's ReLU head, which a log-depth (GP2, depth up to scale) "
                          "objective drives to zero: train it as a relative model (objective.kind=ssi)")
    if drop_path_rate and p.family in ("glpn", "dpt_hybrid"):
        raise ConfigError(f"drop_path_rate={drop_path_rate}: preset {preset!r} has no DINOv2-layout encoder to drop paths of")
    if p.family == "dpt_hybrid":
        return build_hybrid(preset, output_space, dinov2, input_size)
    dinov2_config = load_dinov2_config(dinov2, preset) if dinov2 is not None else None
    model = FAMILIES[p.family].transformers_class()(model_config(preset, output_space, max_depth, dinov2_config,
                                               drop_path_rate=drop_path_rate))
    last = _relu_output_conv(model)
    if last is not None and not last.bias.is_meta:
        # A fresh ReLU head whose outputs start mostly negative never gets a gradient: start it on
        # the active side.
        with torch.no_grad():
            last.bias.fill_(1.0)
    if dinov2 is not None:
        encoder = Dinov2Backbone.from_pretrained(dinov2, out_indices=list(p.tapped_layers), reshape_hidden_states=False)
        model.backbone.load_state_dict(encoder.state_dict())
    return model


def build_hybrid(preset: str, output_space: OutputSpace, weights: str | None, input_size: int | None):
    """A DPT-hybrid whose CNN starts from ``weights``: a ``distill.prior`` name (offline ImageNet
    weights, e.g. ``efficientnet-lite0``), ``timm`` (timm's pretrained weights from the hub) or None
    (random); the ViT on its tokens and the decoder start random."""
    from distill import prior  # noqa: PLC0415

    p = get_preset(preset)
    model = DPTForDepthEstimation(model_config(preset, output_space, input_size=input_size))
    with torch.no_grad():
        _relu_output_conv(model).bias.fill_(1.0)  # the ReLU head starts on its active side (see build_model)
    if weights is not None and weights not in prior.PRIORS and weights != "timm":
        raise ConfigError(f"encoder weights {weights!r} for the DPT-hybrid preset {preset!r}: give an offline prior "
                          f"({', '.join(prior.PRIORS)}), 'timm' (timm's hub weights) or nothing (random)")
    if weights in prior.PRIORS and prior.get_prior(weights).timm_arch != p.backbone:
        raise ConfigError(f"the offline prior {weights!r} is a {prior.get_prior(weights).timm_arch}, "
                          f"preset {preset!r} a {p.backbone}")
    if weights is not None:
        load_cnn_weights(model.dpt.embeddings.backbone._backbone, p.backbone, weights, HYBRID_OUT_INDICES)
    # Where the CNN's weights came from and their licence, for the model card (distill/release.py).
    if weights in prior.PRIORS:
        model.config.encoder_weights = prior.get_prior(weights).source
        model.config.encoder_weights_licence = prior.get_prior(weights).licence
    elif weights == "timm":
        model.config.encoder_weights = f"timm's pretrained {p.backbone} (see its model card for the licence)"
    return model


def load_cnn_weights(cnn, arch: str, weights: str, out_indices) -> None:
    """Load a timm features-only CNN (a hybrid's, or a frozen reference's) from an offline prior by
    name, or from timm's hub weights (``timm``); an unreachable hub is one line naming the offline option."""
    from distill import prior  # noqa: PLC0415

    if weights in prior.PRIORS:
        prior.load_prior_into(cnn, weights)
        return
    import timm  # noqa: PLC0415

    try:
        hub = timm.create_model(arch, pretrained=True, features_only=True, out_indices=list(out_indices))
    except Exception as err:  # noqa: BLE001 - hub unreachable, unknown name: one line
        raise ModelError(f"{arch}: cannot load timm's pretrained weights ({type(err).__name__}); without a hub use "
                         f"an offline prior ({', '.join(prior.PRIORS)})") from None
    cnn.load_state_dict(hub.state_dict())


def encoder_of(model):
    """A depth model's encoder: its backbone (Depth Anything, DPT on a backbone), else its base model
    (GLPN's Mix Transformer, DPT's built-in ViT)."""
    backbone = getattr(model, "backbone", None)
    return backbone if backbone is not None else getattr(model, model.base_model_prefix)


def load_depth_model(name_or_dir: str, output_space: OutputSpace | None = None, **kwargs):
    """Any transformers depth model (hub id or directory); ``output_space`` overrides what it records."""
    family = family_of(AutoConfig.from_pretrained(name_or_dir))
    if family is not None and family.unservable:
        raise ModelError(f"{name_or_dir}: a {family.name!r} model cannot serve here: {family.unservable}")
    model = AutoModelForDepthEstimation.from_pretrained(name_or_dir, **kwargs)
    space = output_space or output_space_of(model.config)
    model.config.output_space, model.config.output_geometry = space.space, space.geometry
    return model


class ModelError(ConfigError):
    """A model reference that cannot be resolved or loaded: one line naming it."""


WEIGHT_FILES = (".pth", ".pt", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_reference(ref: str) -> str:
    """Where a model reference points, checked without loading anything: a run directory becomes its
    ``final/``, local paths become absolute, a hub id stays as is. Raises ModelError (one line)."""
    ref = os.fspath(ref)
    if os.path.isfile(ref) and ref.endswith(WEIGHT_FILES):
        return os.path.abspath(ref)
    if os.path.isdir(ref):
        for candidate in (ref, os.path.join(ref, "final")):
            if os.path.isfile(os.path.join(candidate, "config.json")):
                return os.path.abspath(candidate)
        raise ModelError(f"{ref}: not a model directory (no config.json) nor a training run (no final/config.json)")
    if os.path.exists(ref) or ref.startswith((".", "/", "~")) or ref.endswith(WEIGHT_FILES) or not _HUB_ID.match(ref):
        raise ModelError(f"{ref}: not a model directory, a training run, a {'/'.join(WEIGHT_FILES)} file nor a hub id")
    owner = ref.split("/")[0]
    if "/" in ref and os.path.isdir(owner):  # runs/teacher-tiny with a typo: a missing path, not a hub id
        raise ModelError(f"{ref}: no such model directory or training run (./{owner}/ is a local folder, "
                         "so it is not read as a hub id)")
    return ref


@dataclass
class ResolvedModel:
    model: torch.nn.Module
    output_space: OutputSpace
    preprocessing: Preprocessing
    reference: str  # what ``resolve_reference`` made of the name
    processor: object = None  # its transformers image processor (Depth Anything V2's for weight files)


def load_image_processor(reference: str):
    """The model's own image processor (``preprocessor_config.json`` of a directory or hub id), or None."""
    from transformers import AutoImageProcessor  # noqa: PLC0415

    try:
        return AutoImageProcessor.from_pretrained(reference)
    except (OSError, ValueError, KeyError):
        return None


def load_preprocessing(reference: str, config=None, processor=None) -> Preprocessing:
    """The model's own image processor as a ``Preprocessing``; a model without one gets its family's
    input rule (``distill.registry.input_rule``)."""
    processor = processor if processor is not None else load_image_processor(reference)
    if config is None and not reference.endswith(WEIGHT_FILES):  # the size multiple, a one-size model's size
        try:
            config = AutoConfig.from_pretrained(reference)
        except (OSError, ValueError, KeyError):
            config = None
    if processor is None:
        if config is None:
            raise ModelError(f"{reference}: no image processor and no config.json to take an input rule from")
        return replace(input_rule(config), source=f"{input_rule(config).source}: no image processor in {reference}")
    return Preprocessing.from_image_processor(processor, config, source=f"image processor of {reference}")


def resolve_model(ref: str, output_space: OutputSpace | None = None, preset: str | None = None,
                  max_depth: int | None = None) -> ResolvedModel:
    """Load a model from any reference ``resolve_reference`` accepts (see the module docstring).
    ``output_space`` overrides what the model records; ``preset`` (and ``max_depth`` for a metric
    head) is required for original weight files, whose state dict does not name its size."""
    reference = resolve_reference(ref)
    try:
        if reference.endswith(WEIGHT_FILES):
            if preset is None:
                raise ModelError(f"{ref}: an original Depth Anything weight file needs a preset ({', '.join(PRESETS)})")
            space = output_space or (METRIC_DEPTH if max_depth else RELATIVE_DISPARITY)
            model = load_original_checkpoint(reference, preset, space, max_depth)
            preprocessing = replace(input_rule(model.config), source=f"Depth Anything's input rule for {reference}")
            processor = image_processor(INPUT_SIZE, preprocessing)
        else:
            model = load_depth_model(reference, output_space)
            processor = load_image_processor(reference)
            preprocessing = load_preprocessing(reference, model.config, processor)
            if processor is None:  # e.g. a bare model directory: its family's input rule
                processor = image_processor(INPUT_SIZE, preprocessing)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot load model {ref!r}: {first_line(err)}") from None
    return ResolvedModel(model, output_space_of(model.config), preprocessing, reference, processor)


def image_processor(size: int = INPUT_SIZE, preprocessing: Preprocessing | None = None) -> DPTImageProcessor:
    """The transformers image processor written next to a model: keep aspect, sides multiples of the
    model's size multiple around ``size``, bicubic, the model's rescale and mean/std (Depth Anything's
    ImageNet values by default). (It picks the scale closest to 1 that reaches the target on one side,
    where Depth Anything's original rule, ``distill.preprocessing``, makes the shorter side at least
    ``size``.) Every stage prepares images with it (``distill.inference``). The same class serves
    every architecture: GLPN's own processor has no target size (it runs an image at its own size,
    rounded down to multiples of 32)."""
    p = preprocessing or IMAGENET  # the Depth Anything V2 checkpoints' processor
    size = p.fixed_size or size
    return DPTImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        keep_aspect_ratio=not p.fixed_size,  # a fixed-size model: resized to its square, aspect not kept
        ensure_multiple_of=1 if p.fixed_size else p.multiple,
        resample=3,  # PIL bicubic
        do_rescale=True,
        rescale_factor=p.rescale_factor,
        do_normalize=True,
        image_mean=list(p.mean),
        image_std=list(p.std),
        do_pad=False,
    )


def quiet_transformers() -> None:
    """No per-call weight loading / saving progress bars from transformers on the command line."""
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.disable_progress_bar()


def save_model(model, out_dir: str | os.PathLike, output_space: OutputSpace | None = None, size: int = INPUT_SIZE,
               state_dict=None, preprocessing: Preprocessing | None = None, processor=None):
    """Write weights (safetensors), config.json with the output space, and preprocessor_config.json:
    ``processor``, by default ``image_processor(size, preprocessing)`` (by default the registry's
    ``input_rule`` of the model). ``state_dict``: the full weights where the model is sharded (DeepSpeed
    ZeRO-3, FSDP)."""
    space = output_space or output_space_of(model.config)
    model.config.output_space, model.config.output_geometry = space.space, space.geometry
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, state_dict=state_dict)
    if processor is None:
        processor = image_processor(size, preprocessing or input_rule(model.config))
    processor.save_pretrained(out_dir)
    return out_dir


# Parameters that exist in the transformers modules but never take part in the depth forward:
# DINOv2's mask token (masked-image pre-training only) and the first residual unit of the deepest
# fusion block (it has no skip input). DDP requires every trainable parameter to get a gradient.
UNUSED_PARAMETER_PREFIXES = ("backbone.embeddings.mask_token", "neck.fusion_stage.layers.0.residual_layer1.")


def freeze_unused_parameters(model) -> list[str]:
    """Turn off gradients of the parameters the forward never uses; returns their names."""
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith(UNUSED_PARAMETER_PREFIXES):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
