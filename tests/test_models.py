"""Models: preset sizes, the three initialisation paths, save -> load -> pipeline, output spaces."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForDepthEstimation, Dinov2Config, Dinov2Model, pipeline

from distill import frozen_reference, models, original_checkpoints, registry
from distill.spaces import DEPTH_UP_TO_SCALE, METRIC_DEPTH, RELATIVE_DISPARITY, OutputSpace


@pytest.mark.parametrize(
    "preset, millions",
    [("vits", 24.8), ("vitb", 97.5), ("vitl", 335.3), ("vitg", 1258.1)],
)
def test_preset_parameter_counts(preset, millions):
    with torch.device("meta"):  # no memory, no init: cheap even for ViT-G
        model = models.build_model(preset)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)
    p = registry.PRESETS[preset]
    cfg = model.config
    assert (cfg.backbone_config.hidden_size, cfg.backbone_config.num_hidden_layers) == (p.hidden_size, p.num_layers)
    assert cfg.backbone_config.out_indices == list(p.tapped_layers)
    assert cfg.fusion_hidden_size == p.fusion_hidden_size and list(cfg.neck_hidden_sizes) == list(p.neck_hidden_sizes)


def test_unknown_preset_names_valid_ones():
    with pytest.raises(ValueError, match="vits"):
        models.build_model("vit-huge")


def tiny_input(seed=0, h=56, w=70):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_heads_follow_output_space():
    relative = models.build_model("tiny", RELATIVE_DISPARITY)
    gp2 = models.build_model("tiny", DEPTH_UP_TO_SCALE)
    assert relative.config.depth_estimation_type == "relative"
    assert gp2.config.depth_estimation_type == "metric"
    out = gp2(tiny_input()).predicted_depth
    assert out.shape == (1, 56, 70) and (out > 0).all()  # sigmoid head: depth strictly positive
    with pytest.raises(ValueError, match="log_depth"):
        models.build_model("tiny", OutputSpace("log_depth", "uts"))


def test_save_load_pipeline_round_trip(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("tiny", DEPTH_UP_TO_SCALE).eval()
    models.save_model(model, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["output_space"], config["output_geometry"]) == ("depth", "uts")
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 518, "width": 518} and pre["keep_aspect_ratio"] and pre["ensure_multiple_of"] == 14
    assert pre["image_mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["resample"] == 3

    loaded = AutoModelForDepthEstimation.from_pretrained(tmp_path).eval()
    assert registry.output_space_of(loaded.config) == DEPTH_UP_TO_SCALE
    x = tiny_input()
    with torch.no_grad():
        assert torch.equal(model(x).predicted_depth, loaded(x).predicted_depth)

    pipe = pipeline("depth-estimation", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8))
    out = pipe(image)
    assert out["predicted_depth"].shape == (120, 90)  # resized back to the input size
    assert out["depth"].size == (90, 120)
    # the processor resized to sides that are multiples of 14 with the aspect kept
    inputs = pipe.image_processor(image, return_tensors="pt")["pixel_values"]
    assert inputs.shape[-1] % 14 == 0 and inputs.shape[-2] % 14 == 0
    assert inputs.shape[-2] / inputs.shape[-1] == pytest.approx(120 / 90, rel=0.05)


def test_init_from_dinov2_directory(tmp_path):
    p = registry.PRESETS["tiny"]
    dinov2 = Dinov2Model(
        Dinov2Config(hidden_size=p.hidden_size, num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads, image_size=518)
    )
    dinov2.save_pretrained(tmp_path / "dinov2")
    model = models.build_model("tiny", dinov2=str(tmp_path / "dinov2"))
    encoder = model.backbone.state_dict()
    for key, value in dinov2.state_dict().items():
        assert torch.equal(encoder[key], value), key
    # the decoder is fresh: two builds from the same encoder differ there
    other = models.build_model("tiny", dinov2=str(tmp_path / "dinov2"))
    assert not torch.equal(model.head.conv3.weight, other.head.conv3.weight)
    # a frozen reference encoder for feature alignment loads from the same directory
    frozen = frozen_reference.load_frozen_reference(str(tmp_path / "dinov2"))
    assert torch.equal(frozen.state_dict()["layernorm.weight"], dinov2.state_dict()["layernorm.weight"])
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(ValueError, match="preset 'vits'"):
        models.build_model("vits", dinov2=str(tmp_path / "dinov2"))


def test_init_from_transformers_checkpoint(tmp_path):
    teacher = models.build_model("tiny", RELATIVE_DISPARITY).eval()
    teacher.save_pretrained(tmp_path / "released")  # like a released model: no output-space fields
    loaded = models.load_depth_model(str(tmp_path / "released")).eval()
    assert registry.output_space_of(loaded.config) == RELATIVE_DISPARITY  # implied by the ReLU head
    x = tiny_input(1)
    with torch.no_grad():
        assert torch.equal(teacher(x).predicted_depth, loaded(x).predicted_depth)
    metric = models.load_depth_model(str(tmp_path / "released"), output_space=METRIC_DEPTH)
    assert registry.output_space_of(metric.config) == METRIC_DEPTH


def original_state_dict(model) -> dict:
    """Rename a transformers model's tensors the way the original Depth Anything V2 code names them
    (DINOv2 `pretrained.*`, DPT head `depth_head.*`), written independently of distill.models."""
    sd = dict(model.state_dict())
    for key in list(sd):  # transformers <= 5.17 names the attention projections differently
        for old, new in ((".attention.attention.query.", ".attention.q_proj."), (".attention.attention.key.", ".attention.k_proj."),
                         (".attention.attention.value.", ".attention.v_proj."), (".attention.output.dense.", ".attention.o_proj.")):
            if old in key:
                sd[key.replace(old, new)] = sd.pop(key)
    out = {
        "pretrained.cls_token": sd["backbone.embeddings.cls_token"],
        "pretrained.mask_token": sd["backbone.embeddings.mask_token"],
        "pretrained.pos_embed": sd["backbone.embeddings.position_embeddings"],
        "pretrained.patch_embed.proj.weight": sd["backbone.embeddings.patch_embeddings.projection.weight"],
        "pretrained.patch_embed.proj.bias": sd["backbone.embeddings.patch_embeddings.projection.bias"],
        "pretrained.norm.weight": sd["backbone.layernorm.weight"],
        "pretrained.norm.bias": sd["backbone.layernorm.bias"],
    }
    for i in range(model.config.backbone_config.num_hidden_layers):
        hf, orig = f"backbone.encoder.layer.{i}.", f"pretrained.blocks.{i}."
        for t in ("weight", "bias"):
            out[orig + f"attn.qkv.{t}"] = torch.cat([sd[hf + f"attention.{n}_proj.{t}"] for n in "qkv"])
            out[orig + f"attn.proj.{t}"] = sd[hf + f"attention.o_proj.{t}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[orig + f"{n}.{t}"] = sd[hf + f"{n}.{t}"]
        out[orig + "ls1.gamma"] = sd[hf + "layer_scale1.lambda1"]
        out[orig + "ls2.gamma"] = sd[hf + "layer_scale2.lambda1"]
    for t in ("weight", "bias"):
        for i in range(4):
            out[f"depth_head.projects.{i}.{t}"] = sd[f"neck.reassemble_stage.layers.{i}.projection.{t}"]
        for i in (0, 1, 3):  # resize layer 2 is an identity
            out[f"depth_head.resize_layers.{i}.{t}"] = sd[f"neck.reassemble_stage.layers.{i}.resize.{t}"]
        for refinenet, stage in ((4, 0), (3, 1), (2, 2), (1, 3)):
            base = f"depth_head.scratch.refinenet{refinenet}."
            hf = f"neck.fusion_stage.layers.{stage}."
            out[base + f"out_conv.{t}"] = sd[hf + f"projection.{t}"]
            for unit in (1, 2):
                for conv in (1, 2):
                    out[base + f"resConfUnit{unit}.conv{conv}.{t}"] = sd[hf + f"residual_layer{unit}.convolution{conv}.{t}"]
        out[f"depth_head.scratch.output_conv1.{t}"] = sd[f"head.conv1.{t}"]
        out[f"depth_head.scratch.output_conv2.0.{t}"] = sd[f"head.conv2.{t}"]
        out[f"depth_head.scratch.output_conv2.2.{t}"] = sd[f"head.conv3.{t}"]
    for k in range(1, 5):
        out[f"depth_head.scratch.layer{k}_rn.weight"] = sd[f"neck.convs.{k - 1}.weight"]
    return {k: v.clone() for k, v in out.items()}


def test_init_from_original_depth_anything_pth(tmp_path):
    reference = models.build_model("tiny", RELATIVE_DISPARITY).eval()
    state = original_state_dict(reference)
    # every transformers tensor is covered; q, k, v (weight and bias) are fused into qkv per layer
    assert len(state) == len(reference.state_dict()) - 4 * reference.config.backbone_config.num_hidden_layers
    torch.save(state, tmp_path / "depth_anything_v2_tiny.pth")
    model = original_checkpoints.load_original_checkpoint(tmp_path / "depth_anything_v2_tiny.pth", "tiny").eval()
    x = tiny_input(2)
    with torch.no_grad():
        assert torch.allclose(model(x).predicted_depth, reference(x).predicted_depth)
    # the same weights as safetensors, with DataParallel's "module." prefix
    from safetensors.torch import save_file

    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    again = original_checkpoints.load_original_checkpoint(tmp_path / "w.safetensors", "tiny").eval()
    with torch.no_grad():
        assert torch.allclose(again(x).predicted_depth, reference(x).predicted_depth)


def test_original_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        original_checkpoints.load_original_checkpoint(tmp_path / "missing.pth", "tiny")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        original_checkpoints.load_original_checkpoint(tmp_path / "junk.pth", "tiny")
    state = original_state_dict(models.build_model("tiny"))
    torch.save(state, tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="does not fit preset 'vits'"):
        original_checkpoints.load_original_checkpoint(tmp_path / "tiny.pth", "vits")


def test_swiglu_weights_split_into_gate_and_up():
    w12 = torch.arange(8.0).reshape(4, 2)  # rows 0-1: gate, rows 2-3: up
    out = original_checkpoints.convert_original_state_dict({"pretrained.blocks.3.mlp.w12.weight": w12, "pretrained.blocks.3.mlp.w3.bias": torch.ones(2)})
    assert torch.equal(out["backbone.encoder.layer.3.mlp.gate_proj.weight"], w12[:2])
    assert torch.equal(out["backbone.encoder.layer.3.mlp.up_proj.weight"], w12[2:])
    assert torch.equal(out["backbone.encoder.layer.3.mlp.down_proj.bias"], torch.ones(2))


def test_unused_parameters_are_exactly_those_without_gradient():
    model = models.build_model("tiny", DEPTH_UP_TO_SCALE)
    model(tiny_input()).predicted_depth.mean().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad and no_grad == {n for n, _ in model.named_parameters() if n.startswith(models.UNUSED_PARAMETER_PREFIXES)}
    assert set(models.freeze_unused_parameters(model)) == no_grad
