"""Several teachers in one labeling job: each teacher's label in the shards, named by teacher; the
student's choice per sample; single-teacher shards of earlier versions decode as before."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.tiny_models import save_tiny
from distill.config import load_config
from distill.data.sample import SampleError
from distill.data.shards import ShardReader, choose_teacher
from pseudolabel.config import PseudolabelConfig
from pseudolabel.job import run, teacher_names

FIXTURE = Path(__file__).parent / "fixtures" / "single_teacher_shard"


def test_a_single_teacher_shard_of_an_earlier_version_decodes_as_before():
    """tests/fixtures/single_teacher_shard was written by the single-teacher job (commit 4054210,
    flip TTA, reencoded PNG images) together with what its decode_sample returned."""
    expected = json.loads((FIXTURE / "expected_decode.json").read_text())
    reader = ShardReader(FIXTURE)
    assert len(reader) == len(expected)
    for i in range(len(reader)):
        s = reader[i]
        e = expected[s.key]
        assert list(s.target.shape) == e["shape"] and (s.space, s.geometry, s.dataset) == (e["space"], e["geometry"], e["dataset"])
        assert s.target.astype(np.float64).sum() == pytest.approx(e["target_sum"], rel=1e-9)
        assert s.confidence.astype(np.float64).sum() == pytest.approx(e["conf_sum"], rel=1e-9)
        assert int(s.image.astype(np.int64).sum()) == e["image_sum"]
        assert s.teacher_labels == {} and choose_teacher(s, "random") is s


@pytest.fixture(scope="module")
def two_teacher_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_teachers")
    (root / "in").mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 96), (90, 120), (120, 90)]):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin((x + 2 * y) / 9 + i)], -1) * 220
        Image.fromarray(np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)).save(root / "in" / f"im{i}.png")
    relative = save_tiny("depth_anything", root / "da-tiny")
    metric = save_tiny("glpn", root / "glpn-tiny")
    opts = [f"input={root / 'in'}", "batch_size=2", "num_workers=0", "progress=false", "tta=flip"]
    both = run(load_config(PseudolabelConfig, None, [f"teacher={relative},{metric}", f"output={root / 'both'}", *opts]))
    for name, teacher in (("da", relative), ("glpn", metric)):
        run(load_config(PseudolabelConfig, None, [f"teacher={teacher}", f"output={root / name}", *opts]))
    return root, both


def test_every_teacher_label_is_in_the_shards_named_by_teacher(two_teacher_job):
    root, manifest = two_teacher_job
    assert [(t["name"], t["space"], t["geometry"]) for t in manifest["teachers"]] == [
        ("da-tiny", "disparity", "utss"), ("glpn-tiny", "depth", "metric")]
    assert manifest["fields"] == ["jpg", "depth.png", "conf.png", "depth.glpn-tiny.png", "conf.glpn-tiny.png", "json"]
    alone = {name: {s.key: s for s in (ShardReader(root / name)[i] for i in range(3))} for name in ("da", "glpn")}
    reader = ShardReader(root / "both", teacher="da-tiny")
    for i in range(len(reader)):
        s = reader.members(i)
        from distill.data.shards import decode_sample

        sample = decode_sample(s)
        assert list(sample.teacher_labels) == ["da-tiny", "glpn-tiny"]
        # the default fields are the first teacher's: a single-teacher reader sees the same sample
        assert np.array_equal(sample.target, alone["da"][sample.key].target)
        glpn = sample.teacher_labels["glpn-tiny"]
        assert (glpn.space, glpn.geometry) == ("depth", "metric")
        assert np.array_equal(glpn.target, alone["glpn"][sample.key].target)
        assert np.array_equal(glpn.confidence, alone["glpn"][sample.key].confidence)
        assert glpn.target.shape == sample.image.shape[:2]


def test_the_student_chooses_a_teacher_per_sample(two_teacher_job):
    root, _ = two_teacher_job
    from distill.data.shards import decode_sample

    members = ShardReader(root / "both").members(0)
    fixed = choose_teacher(decode_sample(members), "glpn-tiny")
    assert (fixed.space, fixed.geometry, fixed.meta["chosen_teacher"]) == ("depth", "metric", "glpn-tiny")
    generator = torch.Generator().manual_seed(0)
    drawn = {choose_teacher(decode_sample(members), "random", generator).meta["chosen_teacher"] for _ in range(20)}
    assert drawn == {"da-tiny", "glpn-tiny"}
    mean = choose_teacher(decode_sample(members), "mean")
    assert (mean.space, mean.geometry) == ("disparity", "utss")  # one relative teacher: the common space is relative disparity
    assert mean.confidence.shape == mean.target.shape and 0 <= mean.confidence.min() <= mean.confidence.max() <= 1
    with pytest.raises(SampleError, match="no teacher 'zoe'"):
        choose_teacher(decode_sample(members), "zoe")


def test_the_mean_of_agreeing_teachers_is_their_label_with_full_confidence():
    from distill.data.sample import Sample, TeacherLabel

    rng = np.random.default_rng(0)
    disparity = rng.uniform(0.5, 2.0, (12, 16)).astype(np.float32)
    ones = np.ones_like(disparity, dtype=bool)
    # the same disparity, and its depth up to scale (3 / disparity): they agree once aligned
    labels = {"a": TeacherLabel(disparity, ones, "disparity", "utss"), "b": TeacherLabel(3.0 / disparity, ones, "depth", "uts")}
    sample = Sample(np.zeros((12, 16, 3), np.uint8), disparity, ones, "disparity", "utss", "d", "k", teacher_labels=labels)
    mean = choose_teacher(sample, "mean")
    ratio = mean.target / disparity  # the disparity up to the scale (and shift) a relative label leaves open
    assert np.allclose(ratio, ratio.mean(), rtol=1e-4) and mean.confidence.min() > 0.999
    labels["b"] = TeacherLabel(3.0 / (disparity + rng.uniform(0, 0.5, disparity.shape).astype(np.float32)), ones, "depth", "uts")
    assert choose_teacher(sample, "mean").confidence.mean() < 0.9  # disagreement lowers it


def test_teacher_names_are_short_and_unique():
    assert teacher_names(["/x/runs/teacher-vitl/final", "depth-anything/Depth-Anything-V2-Large-hf", "/w/da v2.pth",
                          "/y/runs/teacher-vitl/final"]) == ["teacher-vitl", "Depth-Anything-V2-Large-hf", "da-v2", "teacher-vitl-2"]


def test_combining_relative_maps_of_any_magnitude_is_finite_and_scale_equivariant():
    """A relative (scale-free) model's maps may sit anywhere in magnitude: a hybrid teacher's drifted
    to ~1e11, where float32 sums of squares overflowed into NaN labels. Scaled maps combine to the
    scaled label with the same agreement."""
    from distill.alignment import combine
    from distill.spaces import RELATIVE_DISPARITY

    torch.manual_seed(0)
    base = torch.rand(2, 1, 32, 32) + 0.5
    views = torch.stack([base[0], base[1] * 1.3 + 0.1])  # [K=2, B=1, H, W]
    small_label, small_spread = combine(views, RELATIVE_DISPARITY)
    big_label, big_spread = combine(views * 1e11, RELATIVE_DISPARITY)
    assert torch.isfinite(big_label).all() and torch.isfinite(big_spread).all()
    assert torch.allclose(big_label / 1e11, small_label, rtol=1e-4)
    assert torch.allclose(big_spread, small_spread, rtol=1e-3, atol=1e-5)
