"""release.py: the release folder and its model card, licence rules, validation before sending, and
pushes to a local stand-in for the Hub (tests/hub_server.py) that are then loaded back."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distill import models
from distill import release as R
from distill.registry import weights_licence
from distill.spaces import RELATIVE_DISPARITY
from hub_server import FakeHub

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_TestTokenDoNotPrint0123456789"
REPO = "user/tiny-depth"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    models.save_model(models.build_model("tiny", RELATIVE_DISPARITY), path)
    return str(path)


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    """Results as evaluate.py writes them (values made up; DA-2K's as written before the input rule was recorded)."""
    d = tmp_path_factory.mktemp("evals")
    metrics = dict(abs_rel=0.0451, sq_rel=0.02, rmse=0.2, rmse_log=0.06, log10=0.02, silog=5.0, d1=0.979, d2=0.995, d3=0.999)
    nyu = {"benchmark": "nyu", "model": "/home/someone/ckpt", "protocol": "affine-disparity", "num_images": 654, **metrics,
           "output_space": {"space": "disparity", "geometry": "utss"},
           "input_rule": {"rule": "processor", "do_resize": True, "size": {"height": 518, "width": 518}},
           "data_root": "/home/someone/data/nyu", "images": []}
    da2k = {"benchmark": "da2k", "model": "/home/someone/ckpt", "protocol": None, "num_images": 1000, "num_pairs": 2000,
            "pair_accuracy": 0.953, "output_space": {"space": "disparity", "geometry": "utss"}, "images": []}
    paths = []
    for name, data in (("nyu", nyu), ("da2k", da2k)):
        (d / f"{name}.json").write_text(json.dumps(data))
        paths.append(str(d / f"{name}.json"))
    return paths


@pytest.fixture
def hub(monkeypatch):
    """A local Hub with the endpoint of this process pointed at it (the CLI subprocesses get HF_ENDPOINT)."""
    import huggingface_hub.constants as C

    server = FakeHub(token=TOKEN, lifetime=240).start()
    monkeypatch.setattr(C, "ENDPOINT", server.url)
    yield server
    server.stop()


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def run_main(argv, capsys):
    rc = R.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------- dry run, card
def test_dry_run_builds_release_folder_and_card(tiny_model, eval_files, tmp_path, hub, capsys):
    out = tmp_path / "release"
    rc, stdout, _ = run_main(["--model", tiny_model, "--repo-id", REPO, "--dry-run", "--eval", *eval_files,
                              "--base-model", "facebook/dinov2-small", "--datasets", "some-org/unlabeled-images",
                              "--output-dir", out], capsys)
    assert rc == 0
    assert f"release folder: {out}" in stdout and "dry run" in stdout
    assert hub.requests == []  # nothing was sent
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "config.json", "evaluation/00_nyu.json", "evaluation/01_da2k.json",
                     "model.safetensors", "preprocessor_config.json"]
    # canonical files: same weights, the output space in config.json, the recipe's processor
    original, released = load_file(Path(tiny_model) / "model.safetensors"), load_file(out / "model.safetensors")
    assert original.keys() == released.keys() and all(torch.equal(original[k], released[k]) for k in original)
    config = json.loads((out / "config.json").read_text())
    assert (config["output_space"], config["output_geometry"]) == ("disparity", "utss")
    assert json.loads((out / "preprocessor_config.json").read_text())["ensure_multiple_of"] == 14
    evaluation = json.loads((out / "evaluation" / "00_nyu.json").read_text())
    assert "data_root" not in evaluation and "model" not in evaluation  # no local paths in the release
    # the model card: Hub metadata, evaluation table, output space, usage
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "depth-estimation" and meta["library_name"] == "transformers"
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "facebook/dinov2-small"
    assert meta["datasets"] == ["some-org/unlabeled-images"] and "depth-estimation" in meta["tags"]
    assert "| nyu | affine-disparity | 654 | 0.045 | 97.9 |" in card
    assert "| DA-2K | 1000 | 2000 | 95.3 |" in card
    flat = " ".join(card.split())
    assert "prepared by the bundled image processor" in flat and "at target size 518;" in flat
    assert "The results for da2k come from an earlier evaluation" in flat
    from huggingface_hub import ModelCard  # the Hub reads the results from model-index

    results = {(r.dataset_type, r.metric_type): r.metric_value for r in ModelCard(card).data.eval_results}
    assert results[("nyu", "abs_rel")] == pytest.approx(0.045, abs=5e-4) and results[("da2k", "pair_accuracy")] == 0.953
    assert "## Output space" in card and "unknown scale and shift" in card and "point cloud" in card
    assert f'pipeline("depth-estimation", model="{REPO}")' in card and "np.mgrid" in card
    assert "/home/someone" not in card


def test_licence_rules(tiny_model, tmp_path, capsys):
    assert weights_licence("depth-anything/Depth-Anything-V2-Large-hf") == "cc-by-nc-4.0"
    assert weights_licence("depth-anything/Depth-Anything-V2-Small-hf") == "apache-2.0"
    assert weights_licence("facebook/dinov2-base") == "apache-2.0" and weights_licence("someone/else") is None
    assert R.choose_license(None, ["facebook/dinov2-small"]) == ("apache-2.0", [])
    lic, warnings = R.choose_license("mit", ["depth-anything/Depth-Anything-V2-Base-hf"])
    assert lic == "mit" and "cc-by-nc-4.0" in warnings[0]
    # a project checkpoint's base model is its preset's DINOv2
    (tmp_path / "vits").mkdir()
    (tmp_path / "vits" / "config.json").write_text(json.dumps({"preset": "vits"}))
    assert R.default_base_models(str(tmp_path / "vits")) == ["facebook/dinov2-small"]
    assert R.default_base_models("depth-anything/Depth-Anything-V2-Base-hf") == ["depth-anything/Depth-Anything-V2-Base-hf"]
    # refused by default, accepted with an explicit licence
    base = ["--base-model", "depth-anything/Depth-Anything-V2-Large-hf"]
    rc, _, err = run_main(["--model", tiny_model, "--repo-id", REPO, "--dry-run", "--output-dir", tmp_path / "a", *base], capsys)
    assert rc == 2 and "cc-by-nc-4.0" in err and len(err.strip().splitlines()) == 1
    rc, _, _ = run_main(["--model", tiny_model, "--repo-id", REPO, "--dry-run", "--output-dir", tmp_path / "b", *base,
                         "--license", "cc-by-nc-4.0"], capsys)
    assert rc == 0 and front_matter((tmp_path / "b" / "README.md").read_text())["license"] == "cc-by-nc-4.0"


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the pipeline's picture of NaN
def test_broken_model_is_not_sent(tmp_path, hub, monkeypatch, capsys):
    model = models.build_model("tiny", RELATIVE_DISPARITY)
    with torch.no_grad():
        model.head.conv3.bias.fill_(float("nan"))
    models.save_model(model, tmp_path / "nan")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    rc, _, err = run_main(["--model", tmp_path / "nan", "--repo-id", REPO, "--output-dir", tmp_path / "rel"], capsys)
    assert rc == 2 and "not finite" in err
    assert hub.requests == [] and hub.repos == {}


# ------------------------------------------------------------------------------------------ push
def test_push_with_login_cache_token(tiny_model, tmp_path, hub, monkeypatch, capsys):
    """In-process push: token from the login cache; with hf_xet installed huggingface_hub takes its
    pipelined upload path (the server asks for inline upload of every file)."""
    import huggingface_hub.constants as C

    hub.lfs_suffixes = ()
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "token").write_text(TOKEN)
    monkeypatch.setattr(C, "HF_TOKEN_PATH", str(tmp_path / "token"))
    out = tmp_path / "release"
    rc, stdout, err = run_main(["--model", tiny_model, "--repo-id", REPO, "--private", "--output-dir", out], capsys)
    assert rc == 0, err
    assert f"pushed to {hub.url}/{REPO}" in stdout
    assert TOKEN not in stdout + err
    repo = hub.repos[REPO]
    assert repo.private
    for f in out.rglob("*"):
        if f.is_file():
            assert repo.files[str(f.relative_to(out))] == f.read_bytes()
    # pushing again: the repo exists (409 -> exist_ok) and nothing changed, so no new commit
    commits = len(repo.commits)
    rc, _, err = run_main(["--model", tiny_model, "--repo-id", REPO, "--output-dir", out], capsys)
    assert rc == 0, err
    assert len(repo.commits) == commits


def test_push_errors_and_missing_token(tiny_model, tmp_path, hub, monkeypatch, capsys):
    import huggingface_hub.constants as C

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(C, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    argv = ["--model", tiny_model, "--repo-id", REPO, "--output-dir", tmp_path / "rel"]
    rc, _, err = run_main(argv, capsys)
    assert rc == 2 and "no Hugging Face token" in err
    wrong = "hf_WrongTokenAlsoSecret987"
    monkeypatch.setenv("HF_TOKEN", wrong)
    rc, stdout, err = run_main(argv, capsys)
    assert rc == 1 and "push to user/tiny-depth failed" in err and len(err.strip().splitlines()) == 1
    assert wrong not in stdout + err and hub.repos == {}


def test_cli_input_errors(tiny_model, tmp_path, capsys):
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    cases = [
        (["--model", tiny_model, "--repo-id", "no-slash", "--dry-run"], "USER/NAME"),
        (["--model", no_config, "--repo-id", REPO, "--dry-run", "--output-dir", tmp_path / "a"], "no config.json"),
        (["--model", tiny_model, "--repo-id", REPO, "--dry-run", "--eval", tmp_path / "nope.json"], "evaluation file not found"),
    ]
    cases.append((["--model", tiny_model, "--repo-id", REPO, "--dry-run", "--output-dir", Path(tiny_model).parent],
                  "would replace the checkpoint"))
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    cases.append((["--model", tiny_model, "--repo-id", REPO, "--dry-run", "--output-dir", tmp_path / "occupied"],
                  "not a release folder"))
    for argv, message in cases:
        rc, _, err = run_main(argv, capsys)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"


LOAD_BACK = r"""
import sys, numpy as np, torch
from PIL import Image
from transformers import AutoModelForDepthEstimation, pipeline

model = AutoModelForDepthEstimation.from_pretrained("user/tiny-depth")
local = AutoModelForDepthEstimation.from_pretrained(sys.argv[1]).state_dict()
state = model.state_dict()
assert state.keys() == local.keys() and all(torch.equal(state[k], v) for k, v in local.items()), "weights differ"
assert (model.config.output_space, model.config.output_geometry) == ("disparity", "utss")
pipe = pipeline("depth-estimation", model="user/tiny-depth")
out = pipe(Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)))
assert tuple(out["predicted_depth"].shape) == (60, 80) and torch.isfinite(out["predicted_depth"]).all()
print("LOADED", type(model).__name__)
"""


def test_push_through_cli_then_load_back(tiny_model, eval_files, tmp_path):
    """The CLI in a subprocess (HF_ENDPOINT, HF_TOKEN from the environment, Xet off so that
    model.safetensors goes through the LFS batch API), then from_pretrained and the pipeline from
    the same endpoint in a fresh process and cache."""
    with FakeHub(token=TOKEN, lifetime=240) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN=TOKEN)
        out = tmp_path / "release"
        proc = subprocess.run([sys.executable, "distill/release.py", "--model", tiny_model, "--repo-id", REPO,
                               "--eval", *eval_files, "--output-dir", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert TOKEN not in proc.stdout + proc.stderr
        assert "validated with pipeline" in proc.stdout and f"pushed to {hub.url}/{REPO}" in proc.stdout
        repo = hub.repos[REPO]
        assert "model.safetensors" in repo.lfs and "README.md" not in repo.lfs
        assert repo.files["model.safetensors"] == (out / "model.safetensors").read_bytes()
        assert front_matter(repo.files["README.md"].decode())["pipeline_tag"] == "depth-estimation"
        calls = [(m, p.split("?")[0]) for m, p, _ in hub.requests]
        assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in calls
        assert any(m == "PUT" and p.startswith("/_lfs/") for m, p in calls)
        # read back anonymously (public repo), fresh cache
        env.pop("HF_TOKEN")
        env["HF_HOME"] = str(tmp_path / "hf_home_reader")
        hub.requests.clear()
        proc = subprocess.run([sys.executable, "-c", LOAD_BACK, str(out)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "LOADED DepthAnythingForDepthEstimation" in proc.stdout
        # the weights came from this Hub (by commit or by branch name, depending on huggingface_hub's version)
        assert any(p.split("?")[0].endswith(("/resolve/" + repo.head + "/model.safetensors", "/resolve/main/model.safetensors"))
                   for _, p, _ in hub.requests)
