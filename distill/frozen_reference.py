"""The frozen reference encoder of the student's feature-alignment loss, and how it wants its pixels:
a DINOv2 of any size (hub id or directory), the encoder of a depth model of a family this project
builds (e.g. the teacher), or a timm CNN (an offline prior by name, or ``timm:<arch>`` from the hub).
``student.objective`` reads its final feature map.
"""
from __future__ import annotations

from transformers import AutoConfig, Dinov2Backbone, Dinov2Config

from distill.models import (
    ModelError,
    encoder_of,
    load_cnn_weights,
    load_depth_model,
    load_preprocessing,
    resolve_reference,
)
from distill.preprocessing import Preprocessing
from distill.registry import FAMILIES, family_of, size_multiple, timm_statistics


def load_frozen_reference(ref: str):
    """The frozen reference ``ref`` (see the module docstring), eval mode, no gradients."""
    if is_timm_reference(ref):
        return timm_reference(ref)
    reference = resolve_reference(ref)
    cfg = AutoConfig.from_pretrained(reference)
    if isinstance(cfg, Dinov2Config):
        encoder = Dinov2Backbone.from_pretrained(reference, out_indices=[cfg.num_hidden_layers],
                                                 reshape_hidden_states=False)
    elif getattr(family_of(cfg), "build_config", None) is not None:
        encoder = encoder_of(load_depth_model(reference))
        if isinstance(encoder.config, Dinov2Config):  # its last output: the final layer, not the last tapped one
            inner = {**encoder.config.to_dict(), "out_features": None, "reshape_hidden_states": False,
                     "out_indices": [encoder.config.num_hidden_layers]}
            final = Dinov2Backbone(Dinov2Config(**inner))
            final.load_state_dict(encoder.state_dict())
            encoder = final
    else:
        raise ModelError(f"{ref}: the frozen reference must be a DINOv2, a timm CNN or a depth model of a family built here "
                         f"({', '.join(f.name for f in FAMILIES.values() if f.build_config)}), "
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
