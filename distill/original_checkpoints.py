"""Original Depth Anything V1/V2 checkpoints (``.pth`` / ``.safetensors`` of the authors' code) as
transformers models: every key renamed explicitly, qkv and SwiGLU weights split, read without
unpickling code. Their input rule is Depth Anything's: ``distill.registry.input_rule`` of the config
built here (ImageNet statistics, patch 14).
"""
from __future__ import annotations

import os

import torch
from transformers import DepthAnythingForDepthEstimation

from distill.registry import get_preset, model_config
from distill.spaces import RELATIVE_DISPARITY, OutputSpace

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


# transformers before the attention/MLP refactor names DINOv2 blocks differently (e.g. 5.17
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
    if get_preset(preset).family != "depth_anything":
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
