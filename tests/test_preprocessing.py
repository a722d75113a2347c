"""The one preprocessing rule and the one model resolver: statistics from the model's own image
processor (local and served by a Hub), run directories, hub ids, bad references."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DPTImageProcessor

from distill import models, registry
from distill.config import ConfigError
from distill.preprocessing import IMAGENET, Preprocessing, inference_size, resize_for_inference
from distill.spaces import DEPTH_UP_TO_SCALE, RELATIVE_DISPARITY

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from hub_server import FakeHub  # noqa: E402


def processor(**kwargs) -> DPTImageProcessor:
    base = dict(do_resize=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_pad=False,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], ensure_multiple_of=14)
    return DPTImageProcessor(**{**base, **kwargs})


@pytest.mark.parametrize("kwargs", [{}, {"do_normalize": False}, {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.7, 0.8, 0.9]},
                                    {"do_rescale": False, "do_normalize": False}])
def test_normalisation_equals_the_processors_own(kwargs):
    proc = processor(**kwargs)
    image = np.random.default_rng(0).integers(0, 256, (28, 42, 3), dtype=np.uint8)
    expected = proc(images=image, return_tensors="pt")["pixel_values"]
    got = Preprocessing.from_image_processor(proc).normalize(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert got.shape == expected.shape and torch.allclose(got, expected.float(), atol=1e-6)


def test_size_multiple_from_the_processor_or_the_patch_size():
    assert Preprocessing.from_image_processor(processor(ensure_multiple_of=32)).multiple == 32
    config = registry.model_config("tiny")
    assert Preprocessing.from_image_processor(processor(ensure_multiple_of=1), config).multiple == 14
    assert IMAGENET.mean == (0.485, 0.456, 0.406) and IMAGENET.multiple == 14
    assert inference_size(480, 640, 518, 32) == (544, 704) and resize_for_inference(np.zeros((48, 64, 3), np.uint8), 28, 32).shape == (32, 32, 3)


def test_resolver_accepts_run_dirs_model_dirs_and_hub_ids_and_refuses_the_rest(tmp_path, monkeypatch):
    model = models.build_model("tiny", RELATIVE_DISPARITY)
    models.save_model(model, tmp_path / "run" / "final")
    assert models.resolve_reference(str(tmp_path / "run")) == str(tmp_path / "run" / "final")
    assert models.resolve_reference(str(tmp_path / "run" / "final")) == str(tmp_path / "run" / "final")
    assert models.resolve_reference("depth-anything/Depth-Anything-V2-Small-hf") == "depth-anything/Depth-Anything-V2-Small-hf"
    resolved = models.resolve_model(str(tmp_path / "run"))
    assert resolved.output_space == RELATIVE_DISPARITY and resolved.preprocessing.mean == IMAGENET.mean
    (tmp_path / "empty").mkdir()
    for ref, message in [(tmp_path / "empty", "no final/config.json"), (tmp_path / "missing" / "x", "not a model directory"),
                         ("weights.pth", "not a model directory"), ("a/b/c", "nor a hub id")]:
        with pytest.raises(ConfigError, match=message):
            models.resolve_model(str(ref))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no such model directory"):  # a typo under a local folder
        models.resolve_reference("run/finl")
    torch.save({k: v for k, v in model.state_dict().items()}, tmp_path / "model.pth")
    with pytest.raises(ConfigError, match="needs a preset"):
        models.resolve_model(str(tmp_path / "model.pth"))


# What reaches the model, in a fresh process whose Hub is the local stand-in: the labeling job and
# the evaluate command, each with a teacher given as a hub id.
RECORD = r"""
import json, sys
import numpy as np, torch
from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

seen = []
forward = DepthAnythingForDepthEstimation.forward
def recording(self, pixel_values=None, **kwargs):
    seen.append(pixel_values.detach().clone())
    return forward(self, pixel_values=pixel_values, **kwargs)
DepthAnythingForDepthEstimation.forward = recording

from distill.config import load_config
from distill.data.formats import read_rgb
from distill.evaluate import main as evaluate
from distill.preprocessing import resize_for_inference
from pseudolabel.config import PseudolabelConfig
from pseudolabel.job import run

repo, image_path, bench, out = sys.argv[1:5]
proc = AutoImageProcessor.from_pretrained(repo)
expected = proc(images=resize_for_inference(read_rgb(image_path), 28), do_resize=False, return_tensors="pt")["pixel_values"]
own = proc(images=read_rgb(image_path), return_tensors="pt")["pixel_values"]  # the repo's processor: no target size
run(load_config(PseudolabelConfig, None, [f"teacher={repo}", f"input={image_path}", f"output={out}", "resize=depth_anything", "input_size=28",
                                         "num_workers=0", "streams=1", "progress=false"]), log=lambda m: None)
labeled = seen[-1]
assert evaluate(["--model", repo, "--benchmark", "folder", "--data-root", bench, "--input-size", "28"]) == 0
assert seen[-1].shape == own.shape, (seen[-1].shape, own.shape)
print(json.dumps({"labeling": float((labeled - expected).abs().max()), "evaluation": float((seen[-1] - own).abs().max()),
                  "shape": list(labeled.shape), "expected_shape": list(expected.shape), "evaluation_shape": list(own.shape)}))
"""


def test_hub_teachers_are_normalised_as_their_own_processor_says(tmp_path):
    from huggingface_hub import HfApi

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    bench = tmp_path / "bench"
    for d in ("rgb", "depth"):
        (bench / d).mkdir(parents=True)
    (bench / "dataset.yaml").write_text("name: b\nspace: depth\ngeometry: uts\n")
    Image.fromarray(image).save(bench / "rgb" / "s0.png")
    np.save(bench / "depth" / "s0.npy", np.linspace(1, 4, 40 * 56, dtype=np.float32).reshape(40, 56))
    variants = {"user/half": processor(), "user/raw": processor(do_normalize=False)}
    with FakeHub(token="hf_test_token", lfs_suffixes=(), lifetime=300) as hub:
        api = HfApi(endpoint=hub.url, token="hf_test_token")  # uploads need it; downloads are anonymous
        for repo, proc in variants.items():
            folder = tmp_path / repo.split("/")[1]
            models.save_model(models.build_model("tiny", DEPTH_UP_TO_SCALE), folder)
            proc.save_pretrained(folder)  # replaces the ImageNet processor save_model wrote
            api.create_repo(repo, exist_ok=True)
            api.upload_folder(repo_id=repo, folder_path=str(folder))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
        for repo in variants:
            out = tmp_path / f"labels-{repo.split('/')[1]}"
            proc = subprocess.run([sys.executable, "-c", RECORD, repo, str(tmp_path / "photo.png"), str(bench), str(out)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            assert result["shape"] == result["expected_shape"] == [1, 3, 28, 42]  # labeling: resize=depth_anything at 28
            assert result["evaluation_shape"] == [1, 3, 40, 56]  # evaluation: the processor, which keeps the image's size
            assert result["labeling"] < 1e-6 and result["evaluation"] < 1e-6, (repo, result)
            manifest = json.loads((out / "manifest.json").read_text())
            assert manifest["labeled"] == 1 and manifest["teacher"] == repo
