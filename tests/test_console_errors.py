"""Every console script, given a missing path, an empty folder, a file of the wrong kind or a bad
key / value, exits 2 with one line naming it: no traceback, nothing started."""
from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from distill.data import synthetic
from distill.tiny_models import save_tiny

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

# (console script, arguments, what the line must name); {teacher}, {empty}, {junk}, {out} are filled in
CASES = [
    ("distill-train-teacher", ["--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
    ("distill-train-teacher", ["--config", "configs/teacher/tiny.yaml", "nosuchkey=1"], "nosuchkey"),
    ("distill-train-teacher", ["--config", "configs/teacher/tiny.yaml", "max_steps=abc"], "max_steps"),
    ("distill-train-teacher", ["--config", "configs/teacher/tiny.yaml", "data.groups.0.datasets.0.root=/x",
                               "output_dir={out}"], "data.groups.0.datasets.0"),
    ("distill-train-student", ["--config", "configs/student/tiny.yaml", "data.groups.0.datasets.0.root=/nonexistent/shards",
                               "output_dir={out}"], "/nonexistent/shards"),
    ("distill-train-student", ["--config", "configs/student/tiny.yaml", "data.groups.0.datasets.0.root={empty}",
                               "output_dir={out}"], "no complete pseudo-label shards"),
    ("distill-train-student", ["--config", "configs/student/tiny.yaml", "data.groups.0.parts=two"], "parts"),
    ("distill-train-teacher", ["--config", "configs/teacher/tiny.yaml", "output_dir={earlier}"], "holds an earlier run"),
    ("distill-finetune-metric", ["--config", "configs/metric/tiny.yaml", "model.init_from=/nonexistent/run",
                                 "output_dir={out}"], "/nonexistent/run"),
    ("distill-finetune-metric", ["--config", "configs/metric/tiny.yaml", "lr=fast"], "lr"),
    ("distill-pseudolabel", ["--teacher", "/nonexistent", "--input", "{empty}", "--output", "{out}"], "/nonexistent"),
    ("distill-pseudolabel", ["--teacher", "{teacher}", "--input", "{empty}", "--output", "{out}"], "no images found"),
    ("distill-pseudolabel", ["--teacher", "{teacher}", "--input", "/nonexistent/in", "--output", "{out}"], "/nonexistent/in"),
    ("distill-pseudolabel", ["--teacher", "{teacher}", "--input", "{junk}", "--output", "{out}"], "junk.bin"),
    ("distill-pseudolabel", ["--teacher", "{junk}", "--input", "{empty}", "--output", "{out}"], "junk.bin"),
    ("distill-pseudolabel", ["--teacher", "{teacher}", "--input", "{empty}", "--output", "{out}", "--batch-size", "x"],
     "batch_size"),
    ("distill-curate", ["--input", "{empty}", "--output", "{out}", "encoder=efficientnet-lite0"], "no images found"),
    ("distill-curate", ["--input", "/nonexistent/in", "--output", "{out}", "encoder=efficientnet-lite0"], "/nonexistent/in"),
    ("distill-curate", ["--input", "{junk}", "--output", "{out}", "encoder=efficientnet-lite0"], "junk.bin"),
    ("distill-curate", ["--input", "{scenes}", "--output", "{out}", "encoder=/nonexistent/encoder"], "/nonexistent/encoder"),
    ("distill-curate", ["--input", "{scenes}", "--output", "{out}", "budget=-3"], "budget"),
    ("distill-curate", ["status", "{empty}"], "no _job/job.json"),
    ("distill-curate", ["--input", "{scenes}", "--output", "{out}"], "pass threshold=COSINE"),
    ("distill-evaluate", ["--model", "/nonexistent", "--benchmark", "folder", "--data-root", "{scenes}"], "/nonexistent"),
    ("distill-evaluate", ["--model", "{junk}", "--benchmark", "folder", "--data-root", "{scenes}"], "junk.bin"),
    ("distill-evaluate", ["--model", "{teacher}", "--benchmark", "folder", "--data-root", "/nonexistent"], "/nonexistent"),
    ("distill-evaluate", ["--model", "{teacher}", "--benchmark", "folder", "--data-root", "{empty}"], "dataset.yaml"),
    ("distill-evaluate", ["--model", "{teacher}", "--benchmark", "nosuch", "--data-root", "{empty}"], "nosuch"),
    ("distill-release", ["--model", "/nonexistent", "--repo-id", "a/b", "--dry-run"], "/nonexistent"),
    ("distill-release", ["--model", "{junk}", "--repo-id", "a/b", "--dry-run"], "junk.bin"),
    ("distill-release", ["--model", "{teacher}", "--repo-id", "not a repo", "--dry-run"], "not a repo"),
    ("distill-export", ["--model", "/nonexistent", "--output", "{out}"], "/nonexistent"),
    ("distill-export", ["--model", "{empty}", "--output", "{out}"], "no config.json"),
    ("distill-synthetic", ["--num", "many", "--out", "{out}"], "num"),
    ("distill-quickstart", ["--nosuch", "1"], "--nosuch"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    (root / "empty").mkdir()
    (root / "junk.bin").write_bytes(bytes(range(256)) * 4)
    assert synthetic.main(["--out", str(root / "scenes"), "--num", "1", "--size", "32", "32"]) == 0
    (root / "earlier").mkdir()
    (root / "earlier" / "metrics.jsonl").write_text("")  # what an earlier training run leaves
    return {"teacher": save_tiny("depth_anything", root / "teacher"), "empty": str(root / "empty"),
            "junk": str(root / "junk.bin"), "scenes": str(root / "scenes"), "earlier": str(root / "earlier")}


def test_every_console_script_has_cases():
    assert set(SCRIPTS) == {script for script, _, _ in CASES}


@pytest.mark.parametrize("script, argv, names", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_exit_2(script, argv, names, paths, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    module, function = SCRIPTS[script].split(":")
    argv = [a.format(out=tmp_path / "out", **paths) for a in argv]
    try:
        code = getattr(importlib.import_module(module), function)(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert names.format(**paths) in errors[0], errors[0]
    assert not (tmp_path / "out").exists() or script in ("distill-pseudolabel", "distill-curate")  # a job's listing
