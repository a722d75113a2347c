"""Tiny random-weight models of every depth family of the registry (``distill.registry.FAMILIES``
names its builder here), each saved with its own image processor: what tests and benchmarks label
with (no hub here), and a dry run of a labeling setup for users (``save_tiny(name, dir)`` then
``distill/pseudolabel.py --teacher dir``).
"""
from __future__ import annotations

import os

import torch


def _dinov2(size: int, patch: int = 14, **kwargs):
    from transformers import Dinov2Config  # noqa: PLC0415

    return Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=size, patch_size=patch, **kwargs)


def depth_anything():
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation  # noqa: PLC0415

    from distill.models import image_processor  # noqa: PLC0415

    backbone = _dinov2(518, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8)
    return DepthAnythingForDepthEstimation(config), image_processor(70)


def dpt():
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor  # noqa: PLC0415

    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                       patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                       fusion_hidden_size=16, head_hidden_size=8)
    # the DPT checkpoints' processor: a fixed square input, mean = std = 0.5
    return DPTForDepthEstimation(config), DPTImageProcessor(size={"height": 64, "width": 64}, keep_aspect_ratio=False,
                                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)


def dpt_hybrid():
    from transformers import DPTForDepthEstimation  # noqa: PLC0415

    from distill.models import image_processor  # noqa: PLC0415
    from distill.registry import FAMILIES, HybridPreset, input_rule  # noqa: PLC0415

    preset = HybridPreset("tf_efficientnet_lite0", None, hidden_size=32, num_heads=2, fusion_hidden_size=16)
    config = FAMILIES["dpt_hybrid"].build_config(preset, {}, {}, None, 64)
    return DPTForDepthEstimation(config), image_processor(64, input_rule(config))


def glpn():
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessor  # noqa: PLC0415

    config = GLPNConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                        decoder_hidden_size=16)
    return GLPNForDepthEstimation(config), GLPNImageProcessor()  # no resize: sides floored to multiples of 32


def zoedepth():
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation, ZoeDepthImageProcessor  # noqa: PLC0415

    backbone = BeitConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                          patch_size=16, out_indices=[1, 2, 3, 4], reshape_hidden_states=False, use_relative_position_bias=True)
    config = ZoeDepthConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                            bottleneck_features=16, num_relative_features=8, bin_embedding_dim=16, num_attractors=[4, 4, 2, 1],
                            bin_configurations=[{"n_bins": 16, "min_depth": 1e-3, "max_depth": 10.0, "name": "nyu"}],
                            patch_transformer_hidden_size=16, patch_transformer_intermediate_size=32,
                            patch_transformer_num_attention_heads=2, num_patch_transformer_layers=1)
    # reflect-pads the image, keeps its aspect around 64x96; post-processing removes the padding
    return ZoeDepthForDepthEstimation(config), ZoeDepthImageProcessor(size={"height": 64, "width": 96})


def depth_pro():
    from transformers import DepthProConfig, DepthProForDepthEstimation, DepthProImageProcessor  # noqa: PLC0415

    sub = _dinov2(64, patch=16)
    config = DepthProConfig(patch_size=64, fusion_hidden_size=16, intermediate_hook_ids=[1, 0], intermediate_feature_dims=[16, 16],
                            scaled_images_ratios=[0.25, 0.5, 1], scaled_images_overlap_ratios=[0.0, 0.5, 0.25],
                            scaled_images_feature_dims=[32, 32, 16], use_fov_model=True,
                            image_model_config=sub, patch_model_config=sub, fov_model_config=sub)
    return DepthProForDepthEstimation(config), DepthProImageProcessor(size={"height": 256, "width": 256})


def chmv2():
    from transformers import CHMv2Config, CHMv2ForDepthEstimation, CHMv2ImageProcessor, DINOv3ViTConfig  # noqa: PLC0415

    backbone = DINOv3ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=16,
                               image_size=64, out_indices=[1, 2, 3, 4], num_register_tokens=0, reshape_hidden_states=True,
                               apply_layernorm=True, return_class_token=True)
    config = CHMv2Config(backbone_config=backbone, patch_size=16, post_process_channels=[8, 16, 32, 32], fusion_hidden_size=16,
                         head_hidden_size=8, number_output_channels=16)
    return CHMv2ForDepthEstimation(config), CHMv2ImageProcessor()


def tipsv2_dpt():
    from transformers import Tipsv2DptConfig, Tipsv2DptForDepthEstimation, Tipsv2DptImageProcessor  # noqa: PLC0415
    from transformers.models.tipsv2.configuration_tipsv2 import Tipsv2VisionConfig  # noqa: PLC0415

    backbone = Tipsv2VisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=56, patch_size=14,
                                  out_indices=[1, 2, 3, 4], reshape_hidden_states=False, apply_layernorm=True)
    config = Tipsv2DptConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, num_depth_bins=16)
    return Tipsv2DptForDepthEstimation(config), Tipsv2DptImageProcessor(size={"height": 56, "width": 56})


GAIN = {"depth_pro": 1.0}  # Depth Pro's inverse depth already varies; larger weights saturate its clamp
# A timm CNN's BatchNorms pass a gain on through every block until float32 rounding decides the output
NO_GAIN = "dpt.embeddings.backbone."


def save_tiny(family: str, out_dir: str | os.PathLike, seed: int = 0) -> str:
    """Build the tiny model of a registry family (random weights, seeded) and save it with its processor."""
    from distill.registry import TINY  # noqa: PLC0415

    if family not in TINY:
        raise ValueError(f"no tiny builder for {family!r}; known: {', '.join(TINY)}")
    torch.manual_seed(seed)
    model, processor = TINY[family]()
    with torch.no_grad():
        # At transformers' initialisation a tiny model's depth barely depends on the image (a parity
        # test could not tell resize rules apart): larger weights make it vary across the image.
        for name, p in model.named_parameters():
            if p.ndim >= 2 and not name.startswith(NO_GAIN):
                p.mul_(GAIN.get(family, 6.0))
            if name.endswith(("head.conv3.bias", "head.head.4.bias")):  # ReLU heads: start on the active side
                p.fill_(1.0)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return os.fspath(out_dir)
