"""Every depth architecture of transformers as a labeling teacher: the stored label equals the model
run through its own image processor and post-processing, resized back to the image bilinearly."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import load_config
from distill.data.shards import ShardReader
from distill.models import ModelError, resolve_model
from distill.registry import FAMILIES, TINY
from distill.tiny_models import save_tiny
from pseudolabel.config import PseudolabelConfig
from pseudolabel.job import JobError, run

SIZES = [(64, 96), (90, 120), (120, 90), (48, 48)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch_corpus")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin((x + 2 * y) / 9 + i)], -1) * 220
        image = np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"im{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    return root


def reference(model_dir, model_type: str, path) -> np.ndarray:
    """What the model says through transformers alone (as pipeline() runs it), bilinear to the image."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForDepthEstimation.from_pretrained(model_dir).eval()
    image = Image.open(path).convert("RGB")
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    if model_type == "zoedepth":  # padding removal needs the source size (and resizes to it)
        depth = processor.post_process_depth_estimation(outputs, source_sizes=[image.size[::-1]])[0]["predicted_depth"]
    else:
        depth = processor.post_process_depth_estimation(outputs, target_sizes=[inputs["pixel_values"].shape[-2:]])[0]["predicted_depth"]
    return cv2.resize(depth.numpy().astype(np.float32), image.size, interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("model_type", list(TINY))
def test_labels_equal_the_model_through_its_own_processor(model_type, corpus, tmp_path):
    model_dir = save_tiny(model_type, tmp_path / model_type)
    out = tmp_path / "labels"
    manifest = run(load_config(PseudolabelConfig, None, [f"teacher={model_dir}", f"input={corpus}", f"output={out}",
                                                         "batch_size=2", "num_workers=0", "progress=false"]))
    assert manifest["labeled"] == len(SIZES) and manifest["skipped"] == 0
    space = resolve_model(model_dir).output_space
    assert (manifest["space"], manifest["geometry"]) == (space.space, space.geometry)
    if FAMILIES[model_type].output_space is not None:
        assert space == FAMILIES[model_type].output_space
    reader = ShardReader(out)
    for i in range(len(reader)):
        s = reader[i]
        expected = reference(model_dir, model_type, s.meta["path"])
        assert s.target.shape == expected.shape == s.image.shape[:2]
        rel_l2 = np.linalg.norm(s.target - expected) / max(np.linalg.norm(expected), 1e-12)
        assert rel_l2 <= 1e-3, (model_type, s.key, rel_l2)
        assert s.meta["input_rule"]["rule"] == "processor"


def test_a_teacher_that_needs_a_prompt_is_refused_in_one_line(tmp_path, corpus):
    from transformers import DepthAnythingConfig, Dinov2Config, PromptDepthAnythingConfig, PromptDepthAnythingForDepthEstimation

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, out_indices=[1, 2, 3, 4],
                            reshape_hidden_states=False)
    config = PromptDepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                       fusion_hidden_size=16, head_hidden_size=8)
    PromptDepthAnythingForDepthEstimation(config).save_pretrained(tmp_path / "prompt")
    with pytest.raises(ModelError, match="cannot serve here: it refines a low-resolution metric depth prompt"):
        resolve_model(str(tmp_path / "prompt"))
    cfg = load_config(PseudolabelConfig, None, [f"teacher={tmp_path / 'prompt'}", f"input={corpus}",
                                                f"output={tmp_path / 'o'}", "num_workers=0", "progress=false"])
    with pytest.raises(JobError) as err:
        run(cfg)
    assert "\n" not in str(err.value) and "prompt_depth_anything" in str(err.value)
    assert DepthAnythingConfig  # imported alongside: the prompt model's base config


def test_original_weight_files_label_with_a_preset(tmp_path, corpus):
    """An original Depth Anything V2 state dict (.pth, their key names) as --teacher with
    --teacher-preset; metric ones with --teacher-max-depth."""
    from distill.models import build_model
    from distill.spaces import METRIC_DEPTH
    from test_models import original_state_dict

    torch.manual_seed(0)
    model = build_model("tiny", METRIC_DEPTH, max_depth=20)
    path = tmp_path / "depth_anything_v2_metric_tiny.pth"
    torch.save(original_state_dict(model), path)
    out = tmp_path / "labels"
    manifest = run(load_config(PseudolabelConfig, None, [f"teacher={path}", "teacher_preset=tiny", "teacher_max_depth=20",
                                                         f"input={corpus}", f"output={out}", "num_workers=0", "progress=false"]))
    assert (manifest["space"], manifest["geometry"]) == ("depth", "metric") and manifest["labeled"] == len(SIZES)
    job = json.loads((out / "_job" / "job.json").read_text())
    assert job["options"]["teacher_preset"] == "tiny"
    s = ShardReader(out)[0]
    assert (s.target > 0).all() and (s.target < 20).all()


def test_input_size_sets_the_processors_size(corpus, tmp_path):
    """``--input-size`` under the processor rule: the teacher's own processor at that size (aspect as it
    keeps it), labels equal to the model run through that processor; a processor without a target size
    (GLPN's) keeps its own rule."""
    from transformers import AutoImageProcessor

    from distill.inference import processor_at_size

    model_dir = save_tiny("depth_anything", tmp_path / "da")
    out = tmp_path / "labels"
    run(load_config(PseudolabelConfig, None, [f"teacher={model_dir}", f"input={corpus}", f"output={out}", "input_size=112",
                                              "batch_size=2", "num_workers=0", "progress=false"]))
    processor = processor_at_size(AutoImageProcessor.from_pretrained(model_dir), 112)
    model = resolve_model(model_dir).model.eval()
    reader = ShardReader(out)
    for i in range(len(reader)):
        s = reader[i]
        image = Image.open(s.meta["path"]).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        assert list(inputs["pixel_values"].shape[-2:]) == s.meta["inference_size"]
        assert max(s.meta["inference_size"]) <= 112 + 14 and s.meta["inference_size"] != [70, 98]
        with torch.no_grad():
            depth = processor.post_process_depth_estimation(model(**inputs), target_sizes=[inputs["pixel_values"].shape[-2:]])
        expected = cv2.resize(depth[0]["predicted_depth"].numpy().astype(np.float32), image.size, interpolation=cv2.INTER_LINEAR)
        assert np.linalg.norm(s.target - expected) / np.linalg.norm(expected) <= 1e-3
    glpn = save_tiny("glpn", tmp_path / "glpn")  # no target size: its own rule (a global size for several teachers)
    run(load_config(PseudolabelConfig, None, [f"teacher={glpn}", f"input={corpus}", f"output={tmp_path / 'g'}",
                                              "input_size=112", "num_workers=0", "progress=false"]))
    s = ShardReader(tmp_path / "g")[0]
    own = AutoImageProcessor.from_pretrained(glpn)(images=Image.open(s.meta["path"]).convert("RGB"), return_tensors="pt")
    assert list(own["pixel_values"].shape[-2:]) == s.meta["inference_size"] and s.meta["input_rule"]["size_divisor"] == 32


class _Fed(Exception):
    """Raised by a model stand-in with the ``pixel_values`` it was given."""


def _stand_in(pixel_values):
    raise _Fed(pixel_values)


def _bench(root, rgb):
    """A one-image ``folder`` benchmark of ``rgb`` (metric ground truth: every protocol applies)."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    (root / "dataset.yaml").write_text("name: one\nspace: depth\ngeometry: metric\n")
    Image.fromarray(rgb).save(root / "rgb" / "a.png")
    np.save(root / "depth" / "a.npy", np.ones(rgb.shape[:2], np.float32))
    return root


@pytest.mark.parametrize("family", list(TINY))
def test_one_input_path_per_model(family, corpus, tmp_path, monkeypatch):
    """For every family, one tensor per image: what the evaluate command and labeling feed a model =
    what ``pipeline("depth-estimation")`` prepares; at a given size (a training crop, ``--input-size``),
    what validation, the evaluate command and labeling feed it = what ``pipeline`` prepares with the
    model as training saves it (``final/``: validation's image processor). Training crops aside."""
    from accelerate import Accelerator
    from transformers import pipeline

    from distill import evaluate
    from distill import evaluation as E
    from distill.data.loading import DataConfig, DatasetConfig, build_val_sets
    from distill.engine import ModelConfig, model_input_rule, validate
    from distill.models import save_model
    from pseudolabel.job import _input_rule

    model_dir = save_tiny(family, tmp_path / family)
    resolved = resolve_model(model_dir)
    rgb = np.asarray(Image.open(sorted(corpus.iterdir())[0]).convert("RGB"))
    bench = _bench(tmp_path / "bench", rgb)
    fed, predict_images = [], E.predict_images

    def spy(model, images, rule, *args, **kwargs):  # the evaluation loop's tensor (the model is not run)
        try:
            predict_images(_stand_in, images, rule, *args, **kwargs)
        except _Fed as got:
            fed.append(got.args[0][0].numpy())
        return torch.ones(len(images), *images[0].shape[:2])

    monkeypatch.setattr(E, "predict_images", spy)

    def evaluated(*size):
        assert evaluate.main(["--model", model_dir, "--benchmark", "folder", "--data-root", str(bench), *size]) == 0
        return fed[-1]

    def labeled(*size):
        cfg = load_config(PseudolabelConfig, None, [f"teacher={model_dir}", "input=x", "output=y", *size])
        return _input_rule(cfg, model_dir, resolved).prepare(rgb)

    def prepared_by_pipeline(directory):
        pipe = pipeline("depth-estimation", model=str(directory), device="cpu")
        return pipe.image_processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"][0].numpy()

    own = prepared_by_pipeline(model_dir)
    for name, tensor in (("labeling", labeled()), ("evaluation", evaluated())):
        assert tensor.shape == own.shape and np.allclose(tensor, own, atol=1e-5), (family, name)
    size = 64
    rule = model_input_rule(ModelConfig(init_from=model_dir), resolved.preprocessing, size)  # as engine.setup makes it
    save_model(resolved.model, tmp_path / "final", processor=rule.processor)  # as engine.save_final_model writes it
    val_sets = build_val_sets(DataConfig(val=[DatasetConfig(reader="folder", root=str(bench))], num_workers=0))
    validate(resolved.model, val_sets, resolved.output_space, Accelerator(cpu=True), rule)
    saved = prepared_by_pipeline(tmp_path / "final")
    for name, tensor in (("validation", fed[-1]), ("evaluation", evaluated("--input-size", str(size))),
                         ("labeling", labeled(f"input_size={size}"))):
        assert tensor.shape == saved.shape and np.allclose(tensor, saved, atol=1e-5), (family, name)
