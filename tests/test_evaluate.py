"""evaluate.py: metrics JSON + CSV, protocol defaults, visuals (PNG strips, PLY), real NYU frames,
DA-2K pair accuracy, one-line CLI errors."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from distill import evaluate, models
from distill import evaluation as E
from distill.data.readers import FolderReader
from distill.inference import InputRule
from distill.preprocessing import IMAGENET
from distill.metrics import (
    BENCHMARKS,
    METRIC_NAMES,
    benchmark_mask,
    protocol_depth,
)
from distill.spaces import (
    DEPTH_UP_TO_SCALE,
    METRIC_DEPTH,
    RELATIVE_DISPARITY,
    OutputSpace,
    check_protocol,
)
from distill.visualisation import read_ply_header

ROOT = Path(__file__).resolve().parents[1]
NYU = ROOT / ".." / "shared" / "data" / "nyu2_sample"
H, W = 48, 64
SIZE = "56"  # inference size: small and fast
RULE_28 = InputRule.of_model(models.image_processor(28), IMAGENET)  # Depth Anything's processor at 28


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny random-weight checkpoints of the three output spaces, saved through save_model."""
    out = {}
    for name, space in (("relative", RELATIVE_DISPARITY), ("uts", DEPTH_UP_TO_SCALE), ("metric", METRIC_DEPTH)):
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name)
        models.save_model(models.build_model("tiny", space), path)
        out[name] = str(path)
    return out


def write_folder(root: Path, n: int = 3, geometry: str = "metric", intrinsics: bool = True) -> Path:
    """A generic-reader benchmark folder: dataset.yaml, rgb/*.png, depth/*.npy (metres), intrinsics/*.json."""
    rng = np.random.default_rng(0)
    for d in ("rgb", "depth", "intrinsics"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(f"name: tinybench\nspace: depth\ngeometry: {geometry}\n")
    rows = np.linspace(1.0, 5.0, H, dtype=np.float32)[:, None]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "rgb" / f"s{i}.png")
        depth = np.repeat(rows * (1 + 0.1 * i), W, axis=1)
        depth[0, :5] = 0  # a few invalid pixels
        np.save(root / "depth" / f"s{i}.npy", depth)
        if intrinsics:
            (root / "intrinsics" / f"s{i}.json").write_text(json.dumps({"fx": 50.0, "fy": 50.0, "cx": 31.5, "cy": 23.5}))
    return root


def run_main(argv, capsys):
    rc = evaluate.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------ ranges and masks
def test_benchmark_ranges_and_masks():
    gt = torch.full((40, 50), 100.0)
    gt[0, 0], gt[0, 1] = 0.5, 400.0
    assert {b.name for b in BENCHMARKS.values() if b.depth_range} == {"nyu", "kitti", "eth3d", "diode", "sintel"}
    # no crop outside nyu / kitti: only the depth range counts
    assert int(benchmark_mask("diode", gt).sum()) == 40 * 50 - 2  # 0.6 .. 350 m
    assert int(benchmark_mask("eth3d", gt).sum()) == 40 * 50  # no upper cap
    assert int(benchmark_mask("sintel", gt).sum()) == 1  # 72 m cap: only the 0.5 m pixel
    assert E.evaluation_range("nyu") == (1e-3, 10.0) and E.evaluation_range("eth3d") == (1e-5, math.inf)
    assert E.evaluation_range("folder") is None and E.evaluation_range(None) is None  # no cap: no clamp


# -------------------------------------------------------------------------- JSON, CSV, visuals
def test_folder_benchmark_outputs_and_visuals(tiny_models, tmp_path, capsys):
    data = write_folder(tmp_path / "bench")
    out, vis = tmp_path / "res" / "tiny.json", tmp_path / "vis"
    rc, stdout, _ = run_main(["--model", tiny_models["relative"], "--benchmark", "folder", "--data-root", data,
                              "--output", out, "--save-visuals", vis, "--input-size", SIZE, "--batch-size", "2"], capsys)
    assert rc == 0
    assert "abs_rel" in stdout and "affine-disparity" in stdout  # the table
    result = json.loads(out.read_text())
    for k in METRIC_NAMES:  # depth_metrics keys at the top level, finite
        assert math.isfinite(result[k])
    assert result["benchmark"] == "folder" and result["protocol"] == "affine-disparity"
    assert result["model"] == tiny_models["relative"] and result["num_images"] == 3 and result["num_skipped"] == 0
    assert result["output_space"] == {"space": "disparity", "geometry": "utss"}
    rows = result["images"]
    assert [r["key"] for r in rows] == ["s0", "s1", "s2"]
    assert all(r["valid_pixels"] == H * W - 5 for r in rows)
    assert result["abs_rel"] == pytest.approx(np.mean([r["abs_rel"] for r in rows]))
    with open(out.with_suffix(".csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and float(table[1]["d1"]) == pytest.approx(rows[1]["d1"])
    assert set(METRIC_NAMES) <= set(table[0])
    # visuals: a strip of four panels at the ground truth's size, a PLY of every pixel
    strip = np.asarray(Image.open(vis / "s0.png"))
    assert strip.shape == (H, 4 * W, 3)
    assert (strip[:, :W] == np.asarray(Image.open(data / "rgb" / "s0.png"))).all()  # the input panel
    assert (strip[0, 3 * W:3 * W + 5] == 0).all()  # error panel: invalid ground truth is black
    header, count = read_ply_header(vis / "s0.ply")
    assert header[1] == "format binary_little_endian 1.0" and "element vertex %d" % (H * W) in header
    assert count == H * W
    raw = (vis / "s0.ply").read_bytes()
    vertices = np.frombuffer(raw[raw.index(b"end_header\n") + 11:], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                                          ("r", "u1"), ("g", "u1"), ("b", "u1")])
    assert len(vertices) == H * W and (vertices["z"] > 0).all()
    # pixel (0, 0) back-projects through the intrinsics: x = (0 - cx) * z / fx
    assert vertices["x"][0] == pytest.approx(-31.5 * vertices["z"][0] / 50.0, rel=1e-5)


def test_no_ply_without_intrinsics(tiny_models, tmp_path, capsys):
    data = write_folder(tmp_path / "bench", n=1, intrinsics=False)
    rc, _, _ = run_main(["--model", tiny_models["relative"], "--benchmark", "folder", "--data-root", data,
                         "--save-visuals", tmp_path / "vis", "--input-size", SIZE, "--num-workers", "1"], capsys)
    assert rc == 0
    assert (tmp_path / "vis" / "s0.png").is_file() and not list((tmp_path / "vis").glob("*.ply"))


def test_nan_predictions_give_null_metrics(tmp_path, capsys):
    model = models.build_model("tiny", RELATIVE_DISPARITY)
    with torch.no_grad():
        model.head.conv3.bias.fill_(float("nan"))
    models.save_model(model, tmp_path / "nan")
    data = write_folder(tmp_path / "bench", n=1)
    rc, _, _ = run_main(["--model", tmp_path / "nan", "--benchmark", "folder", "--data-root", data,
                         "--output", tmp_path / "r.json", "--input-size", SIZE], capsys)
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())  # standard JSON: null, not NaN
    assert result["abs_rel"] is None and result["images"][0]["abs_rel"] is None


@pytest.mark.parametrize("kind, protocol", [("relative", "affine-disparity"), ("uts", "scale-log"), ("metric", "metric")])
def test_protocol_defaults_by_output_space(tiny_models, tmp_path, capsys, kind, protocol):
    data = write_folder(tmp_path / "bench", n=1)
    rc, stdout, _ = run_main(["--model", tiny_models[kind], "--benchmark", "folder", "--data-root", data,
                              "--output", tmp_path / "r.json", "--input-size", SIZE], capsys)
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["protocol"] == protocol and protocol in stdout


def test_meaningless_protocols_are_refused():
    check_protocol("affine-disparity", DEPTH_UP_TO_SCALE)  # a uts model may be scored shift-free
    with pytest.raises(ValueError, match="metric output"):
        check_protocol("metric", RELATIVE_DISPARITY)
    with pytest.raises(ValueError, match="scale-log"):
        check_protocol("scale-log", RELATIVE_DISPARITY)
    with pytest.raises(ValueError, match="only affine-disparity"):
        check_protocol("scale-log", DEPTH_UP_TO_SCALE, gt_geometry="utss")
    with pytest.raises(ValueError, match="no depth labels"):
        check_protocol("affine-disparity", RELATIVE_DISPARITY, gt_geometry="none")


# -------------------------------------------------------------------------------- real NYU frames
def test_nyu_sample_through_the_cli(tiny_models, tmp_path):
    if not NYU.is_dir():
        pytest.skip("../shared/data/nyu2_sample not present")
    out = tmp_path / "nyu.json"
    proc = subprocess.run(
        [sys.executable, "distill/evaluate.py", "--model", tiny_models["relative"], "--benchmark", "nyu",
         "--data-root", str(NYU), "--max-images", "2", "--input-size", "70", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "nyu" in proc.stdout and "abs_rel" in proc.stdout
    result = json.loads(out.read_text())
    assert result["num_images"] == 2 and result["crop"] == "eigen" and result["depth_range"] == [1e-3, 10.0]
    assert all(math.isfinite(result[k]) for k in METRIC_NAMES)
    assert [r["key"] for r in result["images"]] == ["image_0", "image_1"]
    # Eigen crop (426 x 560 pixels) intersected with valid depth up to 10 m
    assert all(0 < r["valid_pixels"] <= 426 * 560 for r in result["images"])
    assert out.with_suffix(".csv").is_file()


# --------------------------------------------------------------------------------------- DA-2K
class RampModel(torch.nn.Module):
    """Predicts the input's row index + 1 at every pixel: lower rows have larger values."""

    def __init__(self, space: OutputSpace):
        super().__init__()
        self.config = SimpleNamespace(output_space=space.space, output_geometry=space.geometry)
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        rows = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w)
        return SimpleNamespace(predicted_depth=rows[None].expand(b, h, w).clone())


def write_da2k(root: Path) -> Path:
    (root / "images" / "indoor").mkdir(parents=True)
    (root / "images" / "outdoor").mkdir(parents=True)
    for name in ("indoor/a.png", "outdoor/b.png"):
        Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(root / "images" / name)
    annotations = {
        "images/indoor/a.png": [
            {"point1": [30, 10], "point2": [10, 10], "closer_point": "point1"},  # lower row is closer
            {"point1": [10, 20], "point2": [30, 20], "closer_point": "point1"},  # upper row is closer
            {"point1": [8, 8], "point2": [25, 30], "closer_point": "point2"},    # lower row is closer
        ],
        "images/outdoor/b.png": [
            {"point1": [20, 5], "point2": [20, 45], "closer_point": "point1"},   # same row: a tie
        ],
    }
    (root / "annotations.json").write_text(json.dumps(annotations))
    return root


def test_da2k_pair_accuracy_is_exact(tmp_path):
    root = write_da2k(tmp_path / "da2k")
    # disparity: larger is nearer, so "lower row is closer" pairs are right; the tie is wrong
    result = E.evaluate_da2k(RampModel(RELATIVE_DISPARITY), root, RELATIVE_DISPARITY, rule=RULE_28)
    assert result["pair_accuracy"] == 0.5 and (result["num_pairs"], result["num_images"]) == (4, 2)
    assert result["per_scene"] == {"indoor": {"pair_accuracy": 2 / 3, "num_pairs": 3},
                                   "outdoor": {"pair_accuracy": 0.0, "num_pairs": 1}}
    assert [(r["image"], r["correct"]) for r in result["images"]] == [("images/indoor/a.png", 2), ("images/outdoor/b.png", 0)]
    # depth: smaller is nearer, so only the "upper row is closer" pair is right
    depth_space = OutputSpace("depth", "uts")
    assert E.evaluate_da2k(RampModel(depth_space), root / "annotations.json", depth_space, rule=RULE_28)["pair_accuracy"] == 0.25


def test_da2k_cli_and_bad_annotations(tiny_models, tmp_path, capsys):
    root = write_da2k(tmp_path / "da2k")
    out = tmp_path / "da2k.json"
    rc, stdout, _ = run_main(["--model", tiny_models["relative"], "--benchmark", "da2k", "--data-root", root,
                              "--output", out, "--input-size", SIZE, "--save-visuals", tmp_path / "vis"], capsys)
    assert rc == 0 and "pair_accuracy" in stdout
    result = json.loads(out.read_text())
    assert 0.0 <= result["pair_accuracy"] <= 1.0 and result["num_pairs"] == 4 and result["protocol"] is None
    assert len(list(csv.DictReader(open(out.with_suffix(".csv"))))) == 2
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2
    (root / "annotations.json").write_text(json.dumps({"images/indoor/a.png": [{"point1": [1, 2]}]}))
    rc, _, err = run_main(["--model", tiny_models["relative"], "--benchmark", "da2k", "--data-root", root], capsys)
    assert rc == 2 and "malformed pair" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ CLI errors
def test_cli_errors_are_one_line(tiny_models, tmp_path, capsys):
    data = write_folder(tmp_path / "bench", n=1)
    no_config = tmp_path / "empty_model"
    no_config.mkdir()
    cases = [
        (["--model", tiny_models["relative"], "--benchmark", "folder", "--data-root", tmp_path / "missing"], "data root not found"),
        (["--model", tiny_models["relative"], "--benchmark", "mars", "--data-root", data], "unknown benchmark"),
        (["--model", no_config, "--benchmark", "folder", "--data-root", data], "no config.json"),
        (["--model", tiny_models["relative"], "--benchmark", "folder", "--data-root", data, "--protocol", "metric"], "metric output"),
        (["--model", tiny_models["relative"], "--benchmark", "nyu", "--data-root", data], "no nyu samples"),
    ]
    for argv, message in cases:
        rc, _, err = run_main(argv, capsys)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    for argv, message in [(["--benchmark", "nyu"], "--model is required"),
                          (["--model", "m", "--benchmrk", "nyu"], "did you mean '--benchmark'")]:
        assert evaluate.main(argv) == 2  # command-line errors: one line too
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err


# ------------------------------------------------------------------ one loop, no ground-truth clamp
class ConstantMetric(torch.nn.Module):
    """A metric model predicting the same depth (metres) everywhere."""

    def __init__(self, depth: float):
        super().__init__()
        self.depth = depth
        self.config = SimpleNamespace(output_space="depth", output_geometry="metric")
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        return SimpleNamespace(predicted_depth=torch.full((b, h, w), self.depth))


def test_no_evaluation_path_clamps_to_the_images_own_ground_truth(tmp_path):
    """A metric model 100 m off on ground truth of 1..5 m: no benchmark range, so the prediction is
    scored as it is (AbsRel = mean(100 / gt - 1)); NYU's fixed cap clamps it to 10 m; validation,
    the loop and the command all agree."""
    from accelerate import Accelerator

    from distill.data.loading import DataConfig, DatasetConfig, build_val_sets
    from distill.engine import validate

    root = write_folder(tmp_path / "bench", n=2, intrinsics=False)
    reader = FolderReader(root)
    gt = [s.target[s.valid] for s in (reader[0], reader[1])]
    model = ConstantMetric(100.0)
    rows = E.evaluate_samples(model, [reader[0], reader[1]], METRIC_DEPTH, RULE_28)
    assert [r["abs_rel"] for r in rows] == pytest.approx([np.mean(100 / g - 1) for g in gt], rel=1e-5)
    capped = E.evaluate_samples(model, [reader[0], reader[1]], METRIC_DEPTH, RULE_28, benchmark="nyu")
    in_crop = [s.target[s.valid & benchmark_mask("nyu", torch.from_numpy(s.target)).numpy()] for s in (reader[0], reader[1])]
    assert [r["abs_rel"] for r in capped] == pytest.approx([np.mean(10 / g - 1) for g in in_crop], rel=1e-5)
    # protocol_depth itself: no range, no clamp, whatever the mask holds
    pred = torch.full((1, 4, 4), 100.0)
    gt_depth = torch.full((1, 4, 4), 2.0)
    out = protocol_depth(pred, METRIC_DEPTH, gt_depth, torch.ones(1, 4, 4, dtype=torch.bool), "metric")
    assert torch.equal(out, pred)
    # validation goes through the same loop
    cfg = DataConfig(val=[DatasetConfig(reader="folder", root=str(root))], num_workers=0)
    val = validate(model, build_val_sets(cfg), METRIC_DEPTH, Accelerator(cpu=True), RULE_28)
    assert val["val/abs_rel"] == pytest.approx(np.mean([r["abs_rel"] for r in rows]), rel=1e-9)


def test_validation_on_nyu_equals_the_evaluate_command(tiny_models, tmp_path, capsys):
    if not NYU.is_dir():
        pytest.skip("../shared/data/nyu2_sample not present")
    from accelerate import Accelerator

    from distill.data.loading import DataConfig, DatasetConfig, build_val_sets
    from distill.engine import validate
    from distill.models import resolve_model

    resolved = resolve_model(tiny_models["uts"])
    cfg = DataConfig(val=[DatasetConfig(reader="nyu", root=str(NYU))], val_max_samples=3, num_workers=0)
    val_sets = build_val_sets(cfg)
    assert val_sets[0].benchmark == "nyu"
    val = validate(resolved.model, val_sets, resolved.output_space, Accelerator(cpu=True),
                   InputRule.of_model(resolved.processor, resolved.preprocessing, 70))
    out = tmp_path / "nyu.json"
    rc, _, err = run_main(["--model", tiny_models["uts"], "--benchmark", "nyu", "--data-root", NYU, "--max-images", "3",
                           "--input-size", "70", "--output", out], capsys)
    assert rc == 0, err
    result = json.loads(out.read_text())
    assert val["val/num_images"] == result["num_images"] == 3
    for k in METRIC_NAMES:
        assert val[f"val/{k}"] == pytest.approx(result[k], rel=1e-9, abs=1e-12), k


def test_a_validation_folder_with_max_depth_is_capped(tmp_path):
    """A reader's max_depth is its validation depth range (as ``evaluate --max-depth``): relative
    models' aligned disparity near 0 would otherwise score as unbounded depth."""
    from distill.data.loading import DataConfig, DatasetConfig, build_val_sets
    from distill.data.synthetic import main as synthetic

    synthetic(["--out", str(tmp_path / "val"), "--num", "2", "--size", "30", "40"])
    capped, plain = build_val_sets(DataConfig(val=[DatasetConfig("folder", str(tmp_path / "val"), options={"max_depth": 40}),
                                                   DatasetConfig("folder", str(tmp_path / "val"))]))
    assert capped.depth_range == (1e-3, 40.0) and plain.depth_range is None and capped.indices == [0, 1]
