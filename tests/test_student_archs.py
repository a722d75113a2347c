"""Students of other architectures (GLPN, DPT on a patch-16 ViT): the stock pipeline loads them, and
feature alignment works across encoders, grids and widths."""
import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from distill import frozen_reference, models, registry
from distill.spaces import RELATIVE_DISPARITY
from student.config import PerturbConfig, StudentObjectiveConfig
from student.objective import FinalFeatures, StudentObjective, attach_feature_projection
from test_student import ROOT, wider_dinov2


@pytest.mark.parametrize("preset, arch, millions", [("glpn-b0", "glpn", 3.66), ("dpt-small", "dpt", 24.72)])
def test_fast_student_presets(preset, arch, millions):
    with torch.device("meta"):
        model = models.build_model(preset)
    assert model.config.model_type == arch and model.config.preset == preset
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


@pytest.mark.parametrize("preset", ["glpn-tiny", "dpt-tiny", "tiny"])
def test_the_encoder_of_every_architecture_gets_the_encoder_lr(preset):
    from distill.engine import OptimConfig, param_groups

    model = models.build_model(preset)
    encoder = {id(p) for p in models.encoder_of(model).parameters()}
    for group in param_groups(model, OptimConfig(lr=1e-5, decoder_lr_scale=10.0)):
        in_encoder = {id(p) in encoder for p in group["params"]}
        assert in_encoder == {group["name"] == "encoder"}, (preset, group["name"])
        assert group["lr"] == pytest.approx(1e-5 if group["name"] == "encoder" else 1e-4)


def random_image(h=90, w=130, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def assert_stock_pipeline_runs(path, multiple):
    processor = json.loads((path / "preprocessor_config.json").read_text())
    assert processor["ensure_multiple_of"] == multiple and processor["image_mean"] == [0.485, 0.456, 0.406]
    result = pipeline("depth-estimation", model=str(path), device="cpu")(random_image())
    assert tuple(result["predicted_depth"].shape) == (90, 130) and result["depth"].size == (130, 90)
    assert torch.isfinite(result["predicted_depth"]).all()


@pytest.mark.parametrize("preset, multiple", [("glpn-tiny", 32), ("dpt-tiny", 16)])
def test_saved_preset_loads_in_the_stock_pipeline(tmp_path, preset, multiple):
    models.save_model(models.build_model(preset, RELATIVE_DISPARITY), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["output_space"], config["output_geometry"]) == ("disparity", "utss")
    assert_stock_pipeline_runs(tmp_path, multiple)


def teacher_run(path, preset="tiny"):
    torch.manual_seed(2)
    models.save_model(models.build_model(preset, RELATIVE_DISPARITY), path / "final")
    return path


def reference(kind, model, tmp_path):
    """The frozen reference and its input rule: a DINOv2 directory (48 wide, patch 14), the
    student's own initial encoder, or a teacher's encoder (a tiny Depth Anything run)."""
    if kind == "own":
        frozen = copy.deepcopy(models.encoder_of(model)).eval().requires_grad_(False)
        with torch.no_grad():  # the student drifts from its initial encoder as it trains
            for p in models.encoder_of(model).parameters():
                p.add_(0.05 * torch.randn_like(p))
        return frozen, registry.input_rule(model.config)
    if kind == "prior":  # the offline ImageNet EfficientNet-Lite0: its stride-16 map, 112 channels
        ref = "efficientnet-lite0"
    else:
        ref = str(wider_dinov2(tmp_path / "dinov2") if kind == "dinov2" else teacher_run(tmp_path / "teacher"))
    frozen = frozen_reference.load_frozen_reference(ref)
    return frozen, frozen_reference.reference_preprocessing(ref, frozen.config)


@pytest.mark.parametrize("preset, kind, grids, projected", [
    ("glpn-tiny", "dinov2", ((2, 3), (5, 7)), True),  # 64x96 -> 70x98 for patch 14
    ("dpt-tiny", "dinov2", ((4, 6), (5, 7)), True),
    ("glpn-tiny", "own", ((2, 3), (2, 3)), False),
    ("dpt-tiny", "teacher", ((4, 6), (5, 7)), False),  # 32 wide, as the tiny teacher
    ("dpt-tiny", "prior", ((4, 6), (4, 6)), True),  # patch 16 = the CNN's stride 16, 32 -> 112 channels
    ("hybrid-lite0", "dinov2", ((4, 4), (5, 5)), True),  # a hybrid's one size (64 px square), 192-wide tokens
])
def test_feature_alignment_across_architectures(tmp_path, preset, kind, grids, projected):
    torch.manual_seed(0)
    model = models.build_model(preset, RELATIVE_DISPARITY, input_size=64)
    frozen, frozen_preprocessing = reference(kind, model, tmp_path)
    assert attach_feature_projection(model, frozen) == projected
    preprocessing = registry.input_rule(model.config)
    objective = StudentObjective(StudentObjectiveConfig(feature_margin=0.0, perturb=PerturbConfig(enabled=False)),
                                 RELATIVE_DISPARITY, pseudo_group=0, frozen_encoder=frozen,
                                 preprocessing=preprocessing, frozen_preprocessing=frozen_preprocessing)
    student = FinalFeatures(models.encoder_of(model))
    images = torch.randint(0, 255, (2, 3, 64, 64 if preset.startswith("hybrid") else 96), dtype=torch.uint8)
    model(pixel_values=preprocessing.normalize(images))
    loss = objective.feature_loss(model, student.map, images)
    assert tuple(student.map.shape[-2:]) == grids[0] and tuple(objective._frozen_features.map.shape[-2:]) == grids[1]
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    encoder_grads = [p.grad for p in models.encoder_of(model).parameters() if p.grad is not None]
    assert encoder_grads and sum(float(g.abs().sum()) for g in encoder_grads) > 0
    if projected:
        assert model.training_heads["feature_projection"].weight.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in frozen.parameters())


@pytest.mark.parametrize("preset, kind, multiple", [("glpn-tiny", "dinov2", 32), ("dpt-tiny", "teacher", 16)])
def test_student_run_of_another_architecture(tmp_path, preset, kind, multiple):
    """The student command (in-process: ``student.train.main``, what distill/train_student.py runs),
    online tiny Depth Anything teacher (relative disparity, patch 14 against the student's multiple),
    a few steps: trains, validates, and its final model (without the projection) loads in the stock
    pipeline."""
    from safetensors import safe_open

    from student.train import main

    teacher = teacher_run(tmp_path / "teacher")
    frozen = wider_dinov2(tmp_path / "dinov2") if kind == "dinov2" else teacher
    out = tmp_path / "student"
    argv = ["--config", str(ROOT / "configs" / "student" / "tiny.yaml"),
            f"teacher={teacher}", f"frozen_reference={frozen}", f"model.preset={preset}", f"output_dir={out}",
            "max_steps=3", "log_every=3", "eval_every=3", "save_every=3", "tracker=none", "batch_size=2",
            "data.crop_size=64", "data.num_workers=0", "data.val_max_samples=2",
            "data.groups.0.datasets=[{reader: synthetic, options: {num: 20, seed: 7, height: 64, width: 96}}]",
            "data.val.0.options.height=64", "data.val.0.options.width=96"]
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(log[-1]["feature"]) and np.isfinite(log[-1]["pseudo"]) and "val/abs_rel" in log[-1]
    config = json.loads((out / "final" / "config.json").read_text())
    assert (config["model_type"], config["output_space"]) == (preset.split("-")[0], "disparity")
    with safe_open(out / "final" / "model.safetensors", "pt") as f:
        assert not any(k.startswith("training_heads") for k in f.keys())
    assert_stock_pipeline_runs(out / "final", multiple)


def test_crop_size_must_fit_the_students_size_multiple(tmp_path, capsys):
    from student.train import main

    argv = ["--config", str(ROOT / "configs" / "student" / "tiny.yaml"), f"teacher={teacher_run(tmp_path / 'teacher')}",
            "model.preset=glpn-tiny", "data.crop_size=112", f"output_dir={tmp_path / 'student'}"]
    assert main(argv) == 2
    assert "data.crop_size=112 is not a multiple of 32" in capsys.readouterr().err
