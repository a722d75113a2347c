"""The quickstart end to end, exactly as the README runs it (default steps and scene counts)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_writes_its_outputs(tmp_path):
    out = tmp_path / "quickstart"
    proc = subprocess.run([sys.executable, "-m", "distill.quickstart", "--output-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"data", "teacher", "pseudolabel", "student", "evaluate", "release", "summary"}
    # every image of the unlabeled corpus labeled: 6 scikit-image photos + 500 synthetic scenes
    assert summary["pseudo_labels"] == {"labeled": 506, "skipped": 0}
    benchmarks = {"synthetic (test scenes)", "Middlebury Motorcycle"} | (
        {"NYU sample"} if (ROOT.parent / "shared" / "data" / "nyu2_sample").is_dir() else set())
    assert set(summary["results"]) == benchmarks
    for bench, by_model in summary["results"].items():
        for role in ("teacher", "student"):
            metrics = by_model[role]
            assert metrics["num_images"] >= 1 and math.isfinite(metrics["abs_rel"]) and 0 <= metrics["d1"] <= 1
            on_disk = json.loads((out / "eval" / f"{role}_{bench.split()[0].lower()}.json").read_text())
            assert on_disk["abs_rel"] == metrics["abs_rel"] and len(on_disk["images"]) == metrics["num_images"]
    # trained, not random: both beat a constant prediction on the synthetic test scenes by a margin
    # (a constant scores AbsRel ~0.4 there, benchmarks/gp2_shift.py), and the student is within 50%
    synthetic = summary["results"]["synthetic (test scenes)"]
    assert synthetic["teacher"]["abs_rel"] < 0.33 and synthetic["student"]["abs_rel"] < 0.33
    assert synthetic["student"]["abs_rel"] < 1.5 * synthetic["teacher"]["abs_rel"]

    # the released student loads in the transformers pipeline and predicts a finite map
    from transformers import pipeline

    pipe = pipeline("depth-estimation", model=str(out / "release"), device="cpu")
    image = Image.open(out / "data" / "photos" / "coffee.jpg")
    depth = pipe(image)["predicted_depth"].float().numpy()
    assert depth.ndim == 2 and np.isfinite(depth).all() and depth.std() > 0
    assert (out / "release" / "README.md").read_text().count("|") > 10  # the card's evaluation table
    for role in ("teacher", "student"):
        assert (out / role / "final" / "model.safetensors").is_file()

    picture = np.asarray(Image.open(out / "summary.png"))
    rows = 5 + ((ROOT.parent / "shared" / "data" / "nyu2_sample").is_dir())
    assert picture.shape == (28 + rows * (160 + 4), 4 * 240, 3) and picture.std() > 10
    assert "teacher AbsRel" in proc.stdout and "total" in proc.stdout
    commands = (out / "commands.sh").read_text()
    for script in ("train_teacher.py", "pseudolabel.py", "train_student.py", "evaluate.py", "release.py --model"):
        assert script in commands


def test_a_rerun_replaces_the_earlier_quickstart_and_nothing_else(tmp_path):
    from distill.quickstart import clear_earlier_quickstart

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds no earlier quickstart"):
        clear_earlier_quickstart(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "commands.sh").write_text("#!/bin/sh\n")
    (tmp_path / "teacher" / "checkpoints").mkdir(parents=True)
    (tmp_path / "summary.json").write_text("{}")
    clear_earlier_quickstart(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    clear_earlier_quickstart(tmp_path / "absent")  # nothing to do
