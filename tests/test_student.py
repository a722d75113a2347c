"""Student: CutMix regions, feature capture, perturbations, objective and a short training run."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.preprocessing import PATCH_SIZE
from distill import frozen_reference, models
from distill.spaces import DEPTH_UP_TO_SCALE
from distill.preprocessing import IMAGENET
from student.config import PerturbConfig, StudentObjectiveConfig
from student.objective import FinalFeatures, StudentObjective, attach_feature_projection
from student.perturb import cutmix, photometric

ROOT = Path(__file__).resolve().parents[1]


def two_sources(h=16, w=20):
    image_a = torch.full((3, h, w), 10, dtype=torch.uint8)
    image_b = torch.full((3, h, w), 200, dtype=torch.uint8)
    label_a, label_b = torch.full((h, w), 1.0), torch.full((h, w), 5.0)
    return image_a, image_b, label_a, label_b


def mix(first, second, seed=0):
    (ia, la), (ib, lb) = first, second
    tensors = {"image": torch.stack([ia, ib]), "target": torch.stack([la, lb]), "valid": torch.ones(2, *la.shape, dtype=torch.bool)}
    return cutmix(torch.tensor([True, True]), tensors, torch.Generator().manual_seed(seed))


def test_cutmix_each_region_is_supervised_by_its_source_label():
    image_a, image_b, label_a, label_b = two_sources()
    for seed in range(5):
        mixed, regions = mix((image_a, label_a), (image_b, label_b), seed)
        own, other = regions[0, 0], regions[0, 1]
        assert torch.equal(own, ~other) and 0 < int(other.sum()) < own.numel()
        img, tgt = mixed["image"][0], mixed["target"][0]
        # row 0: its own pixels and labels outside the box, the partner's inside it
        assert torch.all(img[:, own] == 10) and torch.all(img[:, other] == 200)
        assert torch.all(tgt[own] == 1.0) and torch.all(tgt[other] == 5.0)
        # swapping the two source images swaps which label supervises which region
        swapped, regions_s = mix((image_b, label_b), (image_a, label_a), seed)
        assert torch.equal(regions_s, regions)
        assert torch.all(swapped["target"][0][own] == 5.0) and torch.all(swapped["target"][0][other] == 1.0)
        assert torch.all(swapped["image"][0][:, other] == 10)


def test_cutmix_leaves_unselected_rows_and_single_rows_alone():
    image_a, image_b, label_a, label_b = two_sources()
    tensors = {"image": torch.stack([image_a, image_b, image_a]), "target": torch.stack([label_a, label_b, label_a])}
    mixed, regions = cutmix(torch.tensor([True, False, True]), tensors, torch.Generator().manual_seed(1))
    assert torch.equal(mixed["image"][1], image_b) and bool(regions[1, 0].all())  # labeled row untouched
    lone, lone_regions = cutmix(torch.tensor([True, False, False]), tensors, torch.Generator().manual_seed(1))
    assert torch.equal(lone["image"], tensors["image"]) and bool(lone_regions[:, 0].all())


def test_photometric_changes_image_only_and_can_be_switched_off():
    from distill.data.sample import Sample
    from distill.data.transforms import TrainTransform

    rng = np.random.default_rng(0)
    sample = Sample(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), rng.random((40, 50), dtype=np.float32),
                    np.ones((40, 50), bool), "depth", "uts", "t", "k")
    plain = TrainTransform(28)(sample, 3)
    perturbed = TrainTransform(28, photometric=photometric(PerturbConfig(color_jitter_p=1.0, blur_p=1.0)))(sample, 3)
    assert np.array_equal(plain.target, perturbed.target)  # labels of the clean image
    assert not np.array_equal(plain.image, perturbed.image)
    assert photometric(PerturbConfig(enabled=False)) == []


def test_final_features_are_the_last_layer_patch_tokens():
    model = models.build_model("tiny", DEPTH_UP_TO_SCALE).eval()
    capture = FinalFeatures(model.backbone)
    x = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        model(pixel_values=x)
        direct = model.backbone(pixel_values=x).feature_maps[-1][:, 1:]
    assert capture.map.shape == (2, 32, 3, 4) and torch.equal(capture.map.flatten(2).transpose(1, 2), direct)


def test_objective_confidence_and_feature_terms():
    torch.manual_seed(0)
    model = models.build_model("tiny", DEPTH_UP_TO_SCALE)
    frozen = models.build_model("tiny", DEPTH_UP_TO_SCALE).backbone.eval().requires_grad_(False)
    cfg = StudentObjectiveConfig(perturb=PerturbConfig(cutmix_p=1.0), confidence_threshold=0.1)
    objective = StudentObjective(cfg, DEPTH_UP_TO_SCALE, pseudo_group=0, frozen_encoder=frozen, preprocessing=IMAGENET,
                                 frozen_preprocessing=IMAGENET)
    b, h, w = 2, 28, 42
    confidence = torch.rand(b, h, w) * 0.8 + 0.2
    confidence[:, :, :5] = 0.0  # below the threshold: dropped
    batch = {
        "image": torch.randint(0, 255, (b, 3, h, w), dtype=torch.uint8),
        "target": torch.rand(b, h, w) + 0.5, "valid": torch.ones(b, h, w, dtype=torch.bool),
        "confidence": confidence, "group": torch.zeros(b, dtype=torch.long),
        "space": ["depth"] * b, "geometry": ["uts"] * b, "complete": torch.ones(b, dtype=torch.bool), "key": ["a", "b"],
    }
    loss, logs = objective(model, batch)
    assert torch.isfinite(loss) and {"pseudo", "feature"} <= set(logs) and logs["feature"] > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_student_refuses_the_teachers_weights(tmp_path):
    cmd = [sys.executable, str(ROOT / "distill" / "train_student.py"), "--config", str(ROOT / "configs" / "student" / "tiny.yaml"),
           f"teacher={tmp_path}", f"model.init_from={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not the teacher's weights" in proc.stderr


def pseudo_batch(b=2, h=28, w=42) -> dict:
    """A random batch of pseudo-labeled rows (group 0, depth up to scale, full confidence)."""
    return {"image": torch.randint(0, 255, (b, 3, h, w), dtype=torch.uint8), "target": torch.rand(b, h, w) + 0.5,
            "valid": torch.ones(b, h, w, dtype=torch.bool), "confidence": torch.ones(b, h, w),
            "group": torch.zeros(b, dtype=torch.long), "space": ["depth"] * b, "geometry": ["uts"] * b}


def wider_dinov2(path, hidden_size=48):
    """A random DINOv2 with the tiny preset's patch size and another width, saved in transformers format."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(hidden_size=hidden_size, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                             patch_size=PATCH_SIZE, image_size=518)).save_pretrained(path)
    return path


def test_feature_projection_for_a_frozen_reference_of_another_width(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("tiny", DEPTH_UP_TO_SCALE)
    frozen = frozen_reference.load_frozen_reference(str(wider_dinov2(tmp_path / "dinov2")))
    assert attach_feature_projection(model, frozen)
    projection = model.training_heads["feature_projection"]
    assert (projection.in_features, projection.out_features) == (model.config.backbone_config.hidden_size, 48)
    objective = StudentObjective(StudentObjectiveConfig(perturb=PerturbConfig(enabled=False)), DEPTH_UP_TO_SCALE,
                                 pseudo_group=0, frozen_encoder=frozen, preprocessing=IMAGENET,
                                 frozen_preprocessing=IMAGENET)
    batch = pseudo_batch()
    loss, logs = objective(model, batch)
    loss.backward()
    assert logs["feature"] > 0 and projection.weight.grad.abs().sum() > 0
    # same width: no projection (other grids: tests/test_student_archs.py)
    same_width = models.build_model("tiny", DEPTH_UP_TO_SCALE)
    assert not attach_feature_projection(same_width, copy.deepcopy(same_width.backbone))


def test_frozen_reference_from_a_depth_models_encoder(tmp_path):
    """A teacher's run as the frozen reference: its encoder's weights, the final layer's tokens."""
    torch.manual_seed(0)
    teacher = models.build_model("tiny", DEPTH_UP_TO_SCALE).eval()
    models.save_model(teacher, tmp_path / "teacher" / "final")
    frozen = frozen_reference.load_frozen_reference(str(tmp_path / "teacher"))  # the run resolves to final/
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        expect = teacher.backbone(pixel_values=x).feature_maps[-1]
        got = frozen(pixel_values=x).feature_maps
    assert len(got) == 1 and torch.allclose(got[0], expect, atol=1e-6)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(models.ModelError, match="DINOv2"):
        frozen_reference.load_frozen_reference(str(tmp_path / "other"))


def test_online_student_run(tmp_path):
    """Teacher in the loop (a tiny random teacher's training run directory, resolved to its final/)
    and a frozen reference wider than the student: trains, validates, checkpoints the projection,
    writes a final model without it."""
    from safetensors import safe_open

    teacher = models.build_model("tiny", DEPTH_UP_TO_SCALE)
    models.save_model(teacher, tmp_path / "teacher" / "final")
    out = tmp_path / "student"
    cmd = [sys.executable, str(ROOT / "distill" / "train_student.py"), "--config", str(ROOT / "configs" / "student" / "tiny.yaml"),
           f"teacher={tmp_path / 'teacher'}", f"output_dir={out}", "max_steps=6", "log_every=3", "eval_every=6",
           f"frozen_dinov2={wider_dinov2(tmp_path / 'dinov2')}",
           "save_every=3", "tracker=none", "batch_size=4", "data.crop_size=42", "data.num_workers=0", "data.val_max_samples=2",
           "data.groups.0.datasets=[{reader: synthetic, options: {num: 50, seed: 7, height: 48, width: 64}}]",
           "data.val.0.options.height=48", "data.val.0.options.width=64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6] and "pseudo" in log[0] and "val/abs_rel" in log[-1]
    config = json.loads((out / "final" / "config.json").read_text())
    assert (config["output_space"], config["output_geometry"]) == ("depth", "uts")
    with safe_open(out / "checkpoints" / "step_00000003" / "model.safetensors", "pt") as f:
        assert "training_heads.feature_projection.weight" in f.keys()
    with safe_open(out / "final" / "model.safetensors", "pt") as f:
        final_keys = set(f.keys())
    assert final_keys and not any(k.startswith("training_heads") for k in final_keys)
    reloaded = models.load_depth_model(str(out / "final"))
    assert not hasattr(reloaded, "training_heads")


@pytest.mark.parametrize("preset", ["tiny", "vits", "vitb", "vitl"])
def test_every_student_preset_loads(preset):
    from distill.config import load_config
    from student.config import StudentConfig

    cfg = load_config(StudentConfig, ROOT / "configs" / "student" / f"{preset}.yaml")
    assert cfg.model.preset == preset and cfg.student.trim == 0.1 and cfg.student.feature_margin == 0.15
    if preset != "tiny":
        assert (cfg.data.crop_size, cfg.batch_size, cfg.max_steps, cfg.optim.lr) == (518, 192, 480000, 5e-6)


def _projection_grads_under_ddp(rank: int, world: int, port: int, out: str):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same weights on both ranks
    model = models.build_model("tiny", DEPTH_UP_TO_SCALE)
    models.freeze_unused_parameters(model)
    frozen = frozen_reference.load_frozen_reference(out + "/dinov2")
    attach_feature_projection(model, frozen)
    ddp = DistributedDataParallel(model)
    objective = StudentObjective(StudentObjectiveConfig(perturb=PerturbConfig(enabled=False)), DEPTH_UP_TO_SCALE,
                                 pseudo_group=0, frozen_encoder=frozen, preprocessing=IMAGENET,
                                 frozen_preprocessing=IMAGENET)
    torch.manual_seed(100 + rank)  # different data on each rank
    batch = pseudo_batch()
    loss, _ = objective(ddp, batch)
    loss.backward()
    torch.save({"projection": model.training_heads["feature_projection"].weight.grad,
                "head": model.head.conv3.weight.grad}, f"{out}/grads{rank}.pt")
    dist.destroy_process_group()


def test_feature_projection_gradients_are_synchronised_by_ddp(tmp_path):
    """The objective reaches the projection through ``model.module`` (outside DDP's forward): its
    gradients must still be averaged across ranks like the model's own."""
    import socket

    import torch.multiprocessing as mp

    wider_dinov2(tmp_path / "dinov2")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_projection_grads_under_ddp, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    grads = [torch.load(tmp_path / f"grads{r}.pt") for r in range(2)]
    for name in ("projection", "head"):
        assert grads[0][name].abs().sum() > 0 and torch.equal(grads[0][name], grads[1][name]), name
