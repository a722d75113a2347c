"""Depth models built from `transformers` classes: Depth Anything (DINOv2 ViT encoder + DPT decoder),
and, as fast students, DPT on a patch-16 ViT, GLPN (Mix Transformer encoder) and DPT-hybrid (a timm
CNN, optionally on the offline ImageNet prior of ``distill.prior``). ``PRESETS`` names them; a
preset's name picks its architecture.

Ways in, all through real loading code:
- ``build_model(preset, dinov2=...)``: encoder from DINOv2 weights (hub id or directory), decoder random;
- ``resolve_model(ref)``: the one resolver every command uses for an existing model: a training run
  directory (its ``final/``), a model directory, a hub id, or an original Depth Anything ``.pth`` /
  ``.safetensors`` file (with a preset); returns the model, its output space and its preprocessing
  (from its own image processor). Built on ``load_depth_model`` and ``load_original_checkpoint``.

``save_model`` writes a directory that ``AutoModelForDepthEstimation.from_pretrained`` and
``pipeline("depth-estimation")`` load with no custom code; the output space rides along as two extra
``config.json`` fields (``output_space``, ``output_geometry``).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace

import torch
from transformers import (
    AutoConfig,
    AutoModelForDepthEstimation,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Backbone,
    Dinov2Config,
    DPTConfig,
    DPTForDepthEstimation,
    DPTImageProcessor,
    GLPNConfig,
    GLPNForDepthEstimation,
)

from distill.config import ConfigError
from distill.preprocessing import (DEFAULT, INPUT_SIZE, PATCH_SIZE, Preprocessing, fixed_input_size, multiple_of,
                                  patch_size_of)
from distill.spaces import DEPTH_UP_TO_SCALE, METRIC_DEPTH, RELATIVE_DISPARITY, OutputSpace



@dataclass(frozen=True)
class ModelPreset:
    hidden_size: int
    num_layers: int
    num_heads: int
    tapped_layers: tuple[int, ...]  # 1-based, as in the Depth Anything code
    fusion_hidden_size: int
    neck_hidden_sizes: tuple[int, ...]
    dinov2: str | None  # the hub id of the matching DINOv2 weights
    swiglu: bool = False
    head_hidden_size: int = 32  # Depth Anything's head only (DPT's is fixed)
    patch_size: int = PATCH_SIZE
    # "depth_anything", or "dpt": the same ViT + DPT layout as transformers' DPTForDepthEstimation
    # (its head upsamples by a fixed 16 / patch, so its output matches the input at patch 16)
    arch: str = "depth_anything"

    @property
    def multiple(self) -> int:
        return self.patch_size


@dataclass(frozen=True)
class GLPNPreset:
    """transformers' GLPN: a hierarchical Mix Transformer (SegFormer) encoder of four stages with
    strides 4, 2, 2, 2, and a light decoder whose head ends in ``sigmoid * max_depth``."""
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    decoder_hidden_size: int = 64
    dinov2: None = None  # no DINOv2 encoder (read by the release's licence check)
    arch: str = "glpn"
    multiple: int = 32  # the decoder fuses stages 2x apart: sides multiples of the total stride


@dataclass(frozen=True)
class HybridPreset:
    """transformers' DPT-hybrid: a timm CNN whose stride-4 and stride-8 feature maps go straight to the
    DPT decoder and whose stride-16 map is projected into tokens for a small ViT (two of its layers
    tapped, the last at half resolution). Stock ``DPTViTHybridEmbeddings`` take one square input size
    only (``image_size``): the model's image processor resizes every image to it, aspect not kept, and
    post-processing resizes the depth back (``distill.preprocessing.fixed_input_size``)."""
    backbone: str  # timm architecture of the CNN
    prior: str | None  # ``distill.prior`` weights for it (offline); None: random or timm's hub weights
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 3
    fusion_hidden_size: int = 64
    image_size: int = 224  # the default input size; a training run's crop size replaces it
    dinov2: None = None  # no DINOv2 encoder (read by the release's licence check)
    arch: str = "dpt_hybrid"
    patch_size: int = 16  # the CNN's stride at the tokens


PRESETS: dict[str, ModelPreset | GLPNPreset | HybridPreset] = {
    # A few layers and a small width: random-weight tests and the CPU quickstart.
    "tiny": ModelPreset(32, 4, 2, (1, 2, 3, 4), 16, (8, 16, 32, 32), None, head_hidden_size=8),
    # Half of tiny's width: the smaller student of benchmarks/distill_gain.py.
    "nano": ModelPreset(16, 4, 2, (1, 2, 3, 4), 8, (4, 8, 16, 16), None, head_hidden_size=4),
    # Between tiny and vits (0.69M parameters, 11x nano): the teacher of benchmarks/distill_gain.py.
    "mini": ModelPreset(64, 6, 4, (2, 4, 5, 6), 32, (16, 32, 64, 64), None, head_hidden_size=16),
    "vits": ModelPreset(384, 12, 6, (3, 6, 9, 12), 64, (48, 96, 192, 384), "facebook/dinov2-small"),
    "vitb": ModelPreset(768, 12, 12, (3, 6, 9, 12), 128, (96, 192, 384, 768), "facebook/dinov2-base"),
    "vitl": ModelPreset(1024, 24, 16, (5, 12, 18, 24), 256, (256, 512, 1024, 1024), "facebook/dinov2-large"),
    "vitg": ModelPreset(1536, 40, 24, (10, 20, 30, 40), 384, (1536,) * 4, "facebook/dinov2-giant", swiglu=True),
    # Fast students of other architectures, loaded by pipeline("depth-estimation") like the others.
    # DPT on a patch-16 ViT: about 3/4 of the tokens of patch 14 at the same input size; the
    # encoder starts random (DINOv2 checkpoints are patch 14) unless given patch-16 DINOv2-layout weights.
    "dpt-tiny": ModelPreset(32, 4, 2, (1, 2, 3, 4), 16, (8, 16, 32, 32), None, patch_size=16, arch="dpt"),
    "dpt-small": ModelPreset(384, 12, 6, (3, 6, 9, 12), 64, (48, 96, 192, 384), None, patch_size=16, arch="dpt"),
    # GLPN: MiT-b0's encoder (glpn-b0), and one of some 70k parameters for tests and CPU runs.
    "glpn-tiny": GLPNPreset((8, 16, 24, 32), (1, 1, 1, 1), (1, 1, 1, 1), decoder_hidden_size=16),
    "glpn-b0": GLPNPreset((32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8)),
    # CNN encoders with an ImageNet prior that installs offline (distill/prior.py): fast students in
    # the MiDaS-small tradition, and the stand-in for DINOv2 where no hub is reachable.
    "hybrid-lite0": HybridPreset("tf_efficientnet_lite0", "efficientnet-lite0"),
    "hybrid-lite1": HybridPreset("tf_efficientnet_lite1", "efficientnet-lite1"),
    "hybrid-lite2": HybridPreset("tf_efficientnet_lite2", "efficientnet-lite2"),
}


def hybrid_preset(backbone: str) -> HybridPreset:
    """``hybrid-timm:<arch>``: any timm CNN with feature maps at strides 4, 8, 16 (random weights, or
    timm's hub weights through ``model.dinov2=timm``)."""
    return HybridPreset(backbone, None)


def get_preset(name: str) -> ModelPreset | GLPNPreset | HybridPreset:
    if name.startswith("hybrid-timm:"):
        return hybrid_preset(name.split(":", 1)[1])
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def _head_kwargs(output_space: OutputSpace, max_depth: int | None) -> dict:
    if output_space.space == "disparity":
        return {"depth_estimation_type": "relative", "max_depth": 1}
    if output_space.space == "depth":
        # metric: metres (20 indoor, 80 outdoor); uts: a unit of the model's choosing.
        # transformers types max_depth as int.
        default = 20 if output_space.geometry == "metric" else 10
        return {"depth_estimation_type": "metric", "max_depth": int(max_depth or default)}
    raise ValueError(
        f"output space {output_space.space!r} has no transformers head: use 'depth' (metric head, "
        "log taken in the loss) or 'disparity' (relative head)"
    )


def backbone_config(preset: ModelPreset, base: Dinov2Config | None = None, drop_path_rate: float = 0.0) -> Dinov2Config:
    """DINOv2 config tapping the preset's layers, each through the final LayerNorm, tokens unreshaped;
    ``drop_path_rate``: stochastic depth while training (model noise, Noisy Student)."""
    kwargs = dict(out_indices=list(preset.tapped_layers), reshape_hidden_states=False, apply_layernorm=True,
                  drop_path_rate=drop_path_rate)
    if base is not None:
        return Dinov2Config(**{**base.to_dict(), "out_features": None, **kwargs})
    return Dinov2Config(
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        mlp_ratio=4,
        use_swiglu_ffn=preset.swiglu,
        image_size=multiple_of(INPUT_SIZE, preset.patch_size),
        patch_size=preset.patch_size,
        layerscale_value=1.0,
        **kwargs,
    )


HYBRID_OUT_INDICES = (1, 2, 3)  # timm feature maps at strides 4, 8 and 16


def hybrid_config(p: HybridPreset, input_size: int | None, **recorded) -> DPTConfig:
    """DPT-hybrid on the preset's timm CNN at one square ``input_size`` (a multiple of 32: the
    deepest reassembled map is at stride 32)."""
    import timm  # noqa: PLC0415

    size = input_size or p.image_size
    if size % 32:
        raise ConfigError(f"a DPT-hybrid input size must be a multiple of 32 (the deepest decoder stride), got {size}")
    channels = timm.create_model(p.backbone, pretrained=False, features_only=True,
                                 out_indices=HYBRID_OUT_INDICES).feature_info.channels()
    return DPTConfig(
        is_hybrid=True,
        backbone_config={"model_type": "timm_backbone", "backbone": p.backbone, "out_indices": list(HYBRID_OUT_INDICES)},
        backbone_featmap_shape=[1, channels[-1], size // p.patch_size, size // p.patch_size],
        image_size=size, patch_size=p.patch_size, hidden_size=p.hidden_size, num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads, intermediate_size=4 * p.hidden_size,
        backbone_out_indices=[0, 1, p.num_layers // 2 - 1, p.num_layers - 1],
        neck_hidden_sizes=[channels[0], channels[1], p.hidden_size, p.hidden_size],
        reassemble_factors=[1, 1, 1, 0.5], fusion_hidden_size=p.fusion_hidden_size, readout_type="project",
        **recorded,
    )


def model_config(
    preset: str,
    output_space: OutputSpace = RELATIVE_DISPARITY,
    max_depth: int | None = None,
    dinov2_config: Dinov2Config | None = None,
    input_size: int | None = None,
    drop_path_rate: float = 0.0,
):
    """The transformers config of a preset, for the architecture the preset names. ``input_size``:
    the one input size of presets that take one (DPT-hybrid), else unused; ``drop_path_rate``: the
    ViT encoder's stochastic depth (DINOv2-layout encoders)."""
    p = get_preset(preset)
    head = _head_kwargs(output_space, max_depth)  # also refuses output spaces no head can give
    recorded = dict(output_space=output_space.space, output_geometry=output_space.geometry, preset=preset)
    if p.arch == "dpt_hybrid":
        return hybrid_config(p, input_size, **recorded)
    if p.arch == "glpn":
        # sigmoid * max_depth: a bounded positive map. Relative disparity (max_depth 1) is learnt up
        # to scale and shift, so the bound does not limit it (saturation only slows the extremes);
        # depth gets the metric head's unit.
        return GLPNConfig(hidden_sizes=list(p.hidden_sizes), depths=list(p.depths), num_attention_heads=list(p.num_heads),
                          sr_ratios=list(p.sr_ratios), decoder_hidden_size=p.decoder_hidden_size,
                          max_depth=head["max_depth"], **recorded)
    encoder = backbone_config(p, dinov2_config, drop_path_rate)
    if p.arch == "dpt":
        # DPT's built-in ViT reshapes its tokens to a square grid (square inputs only); on a backbone
        # it takes any aspect ratio, so the ViT is a DINOv2-layout backbone. Its ReLU head gives
        # disparity or depth alike (no max_depth).
        return DPTConfig(backbone_config=encoder, hidden_size=encoder.hidden_size,
                         num_hidden_layers=encoder.num_hidden_layers, num_attention_heads=encoder.num_attention_heads,
                         patch_size=encoder.patch_size, image_size=encoder.image_size, readout_type="ignore",
                         reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=list(p.neck_hidden_sizes),
                         fusion_hidden_size=p.fusion_hidden_size, **recorded)
    return DepthAnythingConfig(
        backbone_config=encoder,
        patch_size=PATCH_SIZE,
        reassemble_hidden_size=p.hidden_size,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(p.neck_hidden_sizes),
        fusion_hidden_size=p.fusion_hidden_size,
        head_hidden_size=p.head_hidden_size,
        **recorded,
        **head,
    )


def load_dinov2_config(dinov2: str, preset: str) -> Dinov2Config:
    """Read a DINOv2 config (hub id or directory) and check it matches the preset's encoder."""
    p = get_preset(preset)
    if p.arch == "glpn":
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


MODEL_CLASSES = {"depth_anything": DepthAnythingForDepthEstimation, "dpt": DPTForDepthEstimation,
                 "dpt_hybrid": DPTForDepthEstimation,
                 "glpn": GLPNForDepthEstimation}


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
    if p.arch in ("dpt", "dpt_hybrid") and output_space == DEPTH_UP_TO_SCALE:
        # log(ReLU) has no gradient where the ReLU is 0: measured, a GP2 hybrid teacher's output
        # went to 0 everywhere within 150 steps (AbsRel 1.000)
        raise ConfigError(f"preset {preset!r} ends in DPT's ReLU head, which a log-depth (GP2, depth up to scale) "
                          "objective drives to zero: train it as a relative model (objective.kind=ssi)")
    if drop_path_rate and p.arch in ("glpn", "dpt_hybrid"):
        raise ConfigError(f"drop_path_rate={drop_path_rate}: preset {preset!r} has no DINOv2-layout encoder to drop paths of")
    if p.arch == "dpt_hybrid":
        return build_hybrid(preset, output_space, dinov2, input_size)
    dinov2_config = load_dinov2_config(dinov2, preset) if dinov2 is not None else None
    model = MODEL_CLASSES[p.arch](model_config(preset, output_space, max_depth, dinov2_config,
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
    # Where the CNN's weights came from and their licence, for the model card (distill/hub.py).
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


def load_frozen_reference(ref: str):
    """The frozen reference of the student's feature-alignment loss (``student.objective`` reads its
    final feature map): a DINOv2 of any size (hub id or directory), or the encoder of a depth model
    of an architecture this project builds (a model directory or training run, e.g. the teacher: the
    option where no pretrained DINOv2 is reachable, or to keep the student close to what its teacher
    has learnt), or a timm CNN (``timm_reference``)."""
    if is_timm_reference(ref):
        return timm_reference(ref)
    reference = resolve_reference(ref)
    cfg = AutoConfig.from_pretrained(reference)
    if isinstance(cfg, Dinov2Config):
        encoder = Dinov2Backbone.from_pretrained(reference, out_indices=[cfg.num_hidden_layers],
                                                 reshape_hidden_states=False)
    elif getattr(cfg, "model_type", None) in MODEL_CLASSES:
        encoder = encoder_of(load_depth_model(reference))
        if isinstance(encoder.config, Dinov2Config):  # its last output: the final layer, not the last tapped one
            inner = {**encoder.config.to_dict(), "out_features": None, "reshape_hidden_states": False,
                     "out_indices": [encoder.config.num_hidden_layers]}
            final = Dinov2Backbone(Dinov2Config(**inner))
            final.load_state_dict(encoder.state_dict())
            encoder = final
    else:
        raise ModelError(f"{ref}: the frozen reference must be a DINOv2 or a depth model ({', '.join(MODEL_CLASSES)}), "
                         f"not a {getattr(cfg, 'model_type', '?')!r} model")
    return encoder.eval().requires_grad_(False)


TIMM_PREFIX = "timm:"
REFERENCE_STRIDE_INDEX = 3  # a timm CNN's stride-16 map: the grid of patch-14/16 students


def is_timm_reference(ref: str) -> bool:
    from distill.prior import PRIORS  # noqa: PLC0415

    return ref in PRIORS or ref.startswith(TIMM_PREFIX)


def timm_reference(ref: str):
    """A frozen timm CNN as transformers' ``TimmBackbone`` giving its stride-16 feature map: an
    offline prior by name (``efficientnet-lite0``: ImageNet weights, no hub) or ``timm:<arch>``
    (timm's pretrained weights from the hub)."""
    from transformers import TimmBackbone, TimmBackboneConfig  # noqa: PLC0415

    from distill import prior  # noqa: PLC0415

    arch = prior.get_prior(ref).timm_arch if ref in prior.PRIORS else ref[len(TIMM_PREFIX):]
    encoder = TimmBackbone(TimmBackboneConfig(backbone=arch, out_indices=[REFERENCE_STRIDE_INDEX]))
    load_cnn_weights(encoder._backbone, arch, ref if ref in prior.PRIORS else "timm", [REFERENCE_STRIDE_INDEX])
    return encoder.eval().requires_grad_(False)


def reference_preprocessing(ref: str, config) -> Preprocessing:
    """How the frozen reference ``ref`` wants its pixels (its image processor, or timm's statistics)."""
    if is_timm_reference(ref):
        mean, std = timm_statistics(config.backbone)
        return Preprocessing(mean, std, 1 / 255, size_multiple(config), f"timm statistics of {config.backbone}")
    return load_preprocessing(resolve_reference(ref), config)


# What the depth architectures of transformers output (after their image processor's
# post-processing), for configs that do not record it. CHMv2 predicts canopy height (metres) from
# nadir aerial views: affine in depth with a negative slope, so to first order affine in disparity.
ARCHITECTURE_SPACES = {
    "dpt": RELATIVE_DISPARITY,  # MiDaS-style relative inverse depth
    "glpn": METRIC_DEPTH,
    "zoedepth": METRIC_DEPTH,
    "depth_pro": METRIC_DEPTH,  # with the field of view applied by its post-processing
    "tipsv2_dpt": METRIC_DEPTH,
    "chmv2": RELATIVE_DISPARITY,
}
# Architectures that cannot label a plain image, and why.
UNSERVABLE = {
    "prompt_depth_anything": "it refines a low-resolution metric depth prompt (e.g. LiDAR) given with every image, "
                             "which a corpus of plain images does not have",
}


def output_space_of(config) -> OutputSpace:
    """The output space recorded in a depth model's config, or the one its architecture implies."""
    if getattr(config, "output_space", None) and getattr(config, "output_geometry", None):
        return OutputSpace(config.output_space, config.output_geometry)
    model_type = getattr(config, "model_type", None)
    if model_type == "depth_anything":
        return METRIC_DEPTH if config.depth_estimation_type == "metric" else RELATIVE_DISPARITY
    if model_type in ARCHITECTURE_SPACES:
        return ARCHITECTURE_SPACES[model_type]
    raise ValueError(
        f"cannot tell the output space of a {model_type or '?'!r} model: "
        "set output_space and output_geometry in its config.json"
    )


def load_depth_model(name_or_dir: str, output_space: OutputSpace | None = None, **kwargs):
    """Any transformers depth model (hub id or directory); ``output_space`` overrides what it records."""
    model_type = getattr(AutoConfig.from_pretrained(name_or_dir), "model_type", None)
    if model_type in UNSERVABLE:
        raise ModelError(f"{name_or_dir}: a {model_type!r} model cannot serve here: {UNSERVABLE[model_type]}")
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
    """The model's own image processor as a ``Preprocessing``; a model without one gets the Depth
    Anything defaults with its patch size."""
    processor = processor if processor is not None else load_image_processor(reference)
    if config is None and not reference.endswith(WEIGHT_FILES):  # the size multiple, a one-size model's size
        try:
            config = AutoConfig.from_pretrained(reference)
        except (OSError, ValueError, KeyError):
            config = None
    if processor is None:
        return Preprocessing(multiple=patch_size_of(config), source=f"default (no image processor for {reference})")
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
            preprocessing = Preprocessing(source=f"Depth Anything defaults for {reference}")
            processor = image_processor(INPUT_SIZE, preprocessing)
        else:
            model = load_depth_model(reference, output_space)
            processor = load_image_processor(reference)
            preprocessing = load_preprocessing(reference, model.config, processor)
            if processor is None:  # e.g. a bare model directory: the Depth Anything V2 processor
                processor = image_processor(INPUT_SIZE, preprocessing)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load model {ref!r}: {first}") from None
    return ResolvedModel(model, output_space_of(model.config), preprocessing, reference, processor)


def size_multiple(config) -> int:
    """What a model's input sides must be multiples of: GLPN's total stride, a timm CNN's 32, else
    the ViT patch size. (A DPT-hybrid takes one size only: ``fixed_input_size``.)"""
    model_type = getattr(config, "model_type", None)
    if model_type == "glpn":
        return math.prod(config.strides)
    if model_type == "timm_backbone":
        return 32
    return patch_size_of(config)


def timm_statistics(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a timm architecture's pretrained weights expect (its pretrained_cfg)."""
    import timm  # noqa: PLC0415

    cfg = timm.get_pretrained_cfg(arch)
    return tuple(cfg.mean), tuple(cfg.std)


def default_preprocessing(config) -> Preprocessing:
    """The project's input rule for a model it builds: ImageNet mean/std, /255, the model's size
    multiple; a DPT-hybrid: its CNN's own statistics at its one input size."""
    fixed = fixed_input_size(config)
    if fixed:
        mean, std = timm_statistics(config.backbone_config.backbone)
        return Preprocessing(mean, std, 1 / 255, patch_size_of(config),
                             f"default of a {config.backbone_config.backbone} DPT-hybrid (timm's mean/std, /255, "
                             f"resized to {fixed}x{fixed})", fixed)
    multiple = size_multiple(config)
    if multiple == DEFAULT.multiple:
        return DEFAULT
    return replace(DEFAULT, multiple=multiple, source=f"default (ImageNet mean/std, /255, multiples of {multiple})")


def image_processor(size: int = INPUT_SIZE, preprocessing: Preprocessing | None = None) -> DPTImageProcessor:
    """The transformers image processor written next to a model: keep aspect, sides multiples of the
    model's size multiple around ``size``, bicubic, the model's rescale and mean/std (Depth Anything's
    ImageNet values by default). (It picks the scale closest to 1 that reaches the target on one side,
    where ``distill.preprocessing`` makes the shorter side at least ``size``.) The same class serves
    every architecture: GLPN's own processor has no target size (it runs an image at its own size,
    rounded down to multiples of 32)."""
    p = preprocessing or Preprocessing()
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
               state_dict=None, preprocessing: Preprocessing | None = None):
    """Write weights (safetensors), config.json with the output space, and preprocessor_config.json
    (``image_processor(size, preprocessing)``; by default ``default_preprocessing`` of the model).
    ``state_dict``: the full weights where the model is sharded (DeepSpeed ZeRO-3, FSDP)."""
    space = output_space or output_space_of(model.config)
    model.config.output_space, model.config.output_geometry = space.space, space.geometry
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, state_dict=state_dict)
    image_processor(size, preprocessing or default_preprocessing(model.config)).save_pretrained(out_dir)
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


# --- original Depth Anything V2 checkpoints -------------------------------------------------------

_FUSION_BLOCK = {"out_conv": "projection", "resConfUnit1": "residual_layer1", "resConfUnit2": "residual_layer2"}
_DIRECT_RENAMES = {
    "pretrained.cls_token": "backbone.embeddings.cls_token",
    "pretrained.mask_token": "backbone.embeddings.mask_token",
    "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
    "pretrained.patch_embed.proj": "backbone.embeddings.patch_embeddings.projection",
    "pretrained.norm": "backbone.layernorm",
    "depth_head.scratch.output_conv1": "head.conv1",
    "depth_head.scratch.output_conv2.0": "head.conv2",
    "depth_head.scratch.output_conv2.2": "head.conv3",
}
_BLOCK_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w3": "mlp.down_proj",
}


def _rename_original_key(key: str) -> str | None:
    """The transformers name of one original key; None for keys split elsewhere (qkv, w12)."""
    for old, new in _DIRECT_RENAMES.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    parts = key.split(".")
    if key.startswith("pretrained.blocks."):
        i, rest = parts[2], ".".join(parts[3:])
        if rest.startswith(("attn.qkv.", "mlp.w12.")):
            return None
        for old, new in _BLOCK_RENAMES.items():
            if rest.startswith(old):
                return f"backbone.encoder.layer.{i}.{new}{rest[len(old):]}"
    if key.startswith(("depth_head.projects.", "depth_head.resize_layers.")):
        kind = "projection" if parts[1] == "projects" else "resize"
        return f"neck.reassemble_stage.layers.{parts[2]}.{kind}.{parts[3]}"
    if key.startswith("depth_head.scratch.layer") and "_rn" in parts[2]:
        k = int(parts[2][len("layer"):-len("_rn")])
        return f"neck.convs.{k - 1}.{parts[3]}"
    if key.startswith("depth_head.scratch.refinenet"):
        stage = 4 - int(parts[2][len("refinenet"):])  # refinenet4 fuses the deepest features first
        block = _FUSION_BLOCK[parts[3]]
        rest = ".".join(parts[4:]).replace("conv1", "convolution1").replace("conv2", "convolution2")
        return f"neck.fusion_stage.layers.{stage}.{block}.{rest}"
    raise KeyError(f"unexpected key in original Depth Anything checkpoint: {key}")


def convert_original_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an original Depth Anything (V1/V2) state dict onto transformers' key names."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        new = _rename_original_key(key)
        if new is not None:
            out[new] = value
            continue
        i = key.split(".")[2]
        layer = f"backbone.encoder.layer.{i}"
        if ".attn.qkv." in key:
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{layer}.attention.{name}.{key.rsplit('.', 1)[1]}"] = chunk.clone()
        else:  # SwiGLU: w12 holds the gate then the up projection
            gate, up = value.chunk(2, dim=0)
            suffix = key.rsplit(".", 1)[1]
            out[f"{layer}.mlp.gate_proj.{suffix}"], out[f"{layer}.mlp.up_proj.{suffix}"] = gate.clone(), up.clone()
    return out


# transformers before the attention/MLP refactor names DINOv2 blocks differently (5.17, the GPU
# machines' version): the same tensors under the earlier names.
_EARLIER_DINOV2_NAMES = {
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
    "mlp.down_proj.": "mlp.weights_out.",
}


def match_installed_names(state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """``state`` (current transformers names) renamed to what ``model`` (this transformers) uses."""
    if not any(".attention.attention.query." in k for k in model.state_dict()):
        return state
    out = {}
    for key, value in state.items():
        if ".mlp.gate_proj." in key:  # the earlier SwiGLU holds gate then up in one weights_in
            up = state[key.replace(".gate_proj.", ".up_proj.")]
            out[key.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = torch.cat([value, up])
            continue
        if ".mlp.up_proj." in key:
            continue
        for new, old in _EARLIER_DINOV2_NAMES.items():
            key = key.replace("." + new, "." + old)
        out[key] = value
    return out


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors``, or from a ``.pth``/``.pt`` through torch's weights-only loader
    (a restricted unpickler that refuses code objects)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable weights-only torch checkpoint ({err.__class__.__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_original_checkpoint(
    path: str | os.PathLike,
    preset: str,
    output_space: OutputSpace = RELATIVE_DISPARITY,
    max_depth: int | None = None,
) -> DepthAnythingForDepthEstimation:
    """A transformers model holding the weights of an original Depth Anything V2 checkpoint."""
    if get_preset(preset).arch != "depth_anything":
        raise ValueError(f"preset {preset!r} is not a Depth Anything preset: original checkpoints are Depth Anything V1/V2")
    model = DepthAnythingForDepthEstimation(model_config(preset, output_space, max_depth))
    try:
        state = match_installed_names(convert_original_state_dict(read_weights(path)), model)
    except KeyError as err:
        raise ValueError(f"{os.fspath(path)}: {err.args[0]}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{os.fspath(path)} does not fit preset {preset!r}: {str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ValueError(
            f"{os.fspath(path)} does not fit preset {preset!r}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    return model

