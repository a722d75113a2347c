"""The pseudo-labeling job: key sets across uninterrupted, killed-and-resumed and 2-process runs;
dirty corpora; quantisation precision; reading shards back (datasets, webdataset, ShardReader);
teachers in transformers format; inputs of every kind; one-line CLI errors."""
import glob
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import load_config
from distill.models import build_model, save_model
from distill.spaces import METRIC_DEPTH, OutputSpace
from distill.data.codec import dequantise, quantise
from pseudolabel.decode import DecodePlan, decode_item
from pseudolabel.job import run
from pseudolabel.config import PseudolabelConfig
from distill.data.shards import ShardReader, decode_sample
from pseudolabel.tta import combine

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "distill" / "pseudolabel.py"
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """In-process runs share the cores with their DataLoader workers: one torch thread avoids
    OpenMP spin-waiting against them (the job script sets OMP_WAIT_POLICY=PASSIVE instead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_image(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / max(w, 1), y / max(h, 1), 0.5 + 0.5 * np.sin((x + y) / 7 + seed)], -1) * 200
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def write_image(path, array, **kwargs):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny random relative (disparity, utss) teacher in transformers format, inside a
    teacher-run layout (run/final/) like the ones train_teacher.py writes."""
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("teacher_run")
    save_model(build_model("tiny"), run_dir / "final", size=56)
    return run_dir / "final"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """24 small images (64x96, a few other shapes), JPEG and PNG, in nested folders."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(24):
        h, w = [(64, 96), (96, 64), (64, 64), (50, 120)][i % 4]
        ext = "png" if i % 5 == 0 else "jpg"
        write_image(root / f"set{i % 3}" / f"img_{i:02d}.{ext}", smooth_image(h, w, i))
    (root / "README.txt").write_text("not an input: no image extension")
    return root


def config(teacher, inputs, output, *overrides, **kwargs):
    base = [f"teacher={teacher}", f"input={inputs}", f"output={output}", "batch_size=4",
            "num_workers=0", "shard_size=5", "progress=false"]
    cfg = load_config(PseudolabelConfig, None, base + list(overrides))
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    return cfg


def shard_keys(out) -> list[str]:
    """Every sample key in the tars of ``out`` (read with tarfile: also proves the tars are valid)."""
    keys = []
    for tar in sorted(glob.glob(str(Path(out) / "*.tar"))):
        with tarfile.open(tar) as tf:
            keys += [m.name.split(".", 1)[0] for m in tf.getmembers() if m.name.endswith(".json")]
    return keys


def decoded(out) -> dict:
    reader = ShardReader(out)
    return {s.key: s for s in (reader[i] for i in range(len(reader)))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------------------- unit pieces
def test_quantisation_round_trip_precision():
    rng = np.random.default_rng(0)
    # depth spanning 8 decades, disparity with exact zeros (sky, infinitely far)
    depth = np.exp(rng.uniform(np.log(1e-3), np.log(1e5), (60, 80))).astype(np.float32)
    codes, params = quantise(depth, "depth")
    assert codes.dtype == np.uint16 and params["encoding"] == "log"
    rel = np.abs(dequantise(codes, params) / depth - 1)
    assert rel.max() < 3.1e-4  # (hi - lo) / 65534 / 2 for 18.4 nats is 1.4e-4
    disparity = depth[::-1].copy()
    disparity[:10] = 0
    codes, params = quantise(disparity, "disparity")
    back = dequantise(codes, params)
    assert (back[:10] == 0).all() and (codes[:10] == 0).all()
    assert np.abs(back[10:] / disparity[10:] - 1).max() < 1e-3
    # log-depth and signed maps: linear, error within range / 131068
    for x, space in [(rng.normal(0, 3, (40, 40)).astype(np.float32), "log_depth"),
                     (rng.normal(0, 1, (40, 40)).astype(np.float32), "disparity")]:
        codes, params = quantise(x, space)
        assert params["encoding"] == "linear"
        assert np.abs(dequantise(codes, params) - x).max() <= (x.max() - x.min()) / 131068 * 1.01
    constant = np.full((5, 5), 2.5, np.float32)
    assert np.allclose(dequantise(*quantise(constant, "depth")), 2.5)
    with pytest.raises(ValueError, match="non-finite"):
        quantise(np.array([[1.0, np.nan]], np.float32), "depth")


def test_listing_drops_repeated_ids_even_when_their_hashes_collide(tmp_path, monkeypatch):
    import hashlib
    import types

    import pseudolabel.inputs as inputs

    ids = ["a", "b", "a", "c", "b", "a", "d"]
    want = ["a", "b", "c", "d"]
    counts = inputs.write_listing(({"id": i} for i in ids), str(tmp_path / "real"))
    listing = inputs.Listing(str(tmp_path / "real"))
    assert counts == {"items": 4, "duplicates": 3} and [x["id"] for x in listing.read(0, 4)] == want
    # every id hashes alike: only the ids themselves can tell repeats from collisions
    monkeypatch.setattr(inputs, "hashlib", types.SimpleNamespace(blake2b=lambda *a, **k: hashlib.blake2b(b"same", digest_size=8)))
    counts = inputs.write_listing(({"id": i} for i in ids), str(tmp_path / "collide"))
    listing = inputs.Listing(str(tmp_path / "collide"))
    assert counts == {"items": 4, "duplicates": 3} and [x["id"] for x in listing.read(0, 4)] == want
    assert sorted(os.listdir(tmp_path / "collide")) == ["items.jsonl", "items.offsets.npy"]


def test_labeling_inputs_follow_the_one_preprocessing_rule_and_cap_extreme_aspects():
    from distill.preprocessing import inference_size, resize_for_inference

    from distill.inference import InputRule
    from distill.preprocessing import IMAGENET

    plan = DecodePlan((InputRule("depth_anything", IMAGENET, input_size=518),))
    for h, w in [(1362, 2048), (480, 640), (2048, 1362), (500, 741), (1, 1), (300, 1000)]:
        assert inference_size(h, w, 518, 14, plan.rules[0].max_aspect) == inference_size(h, w, 518)
    assert inference_size(1, 5000, 518, 14, plan.rules[0].max_aspect) == (14, 2072)  # a 1x5000 strip would otherwise be 518 x 2.59M
    assert inference_size(4000, 1000, 518, 14, plan.rules[0].max_aspect) == (2072, 518)
    # the image the teacher sees is exactly distill.preprocessing's resize of the decoded photo
    rgb = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    decoded = decode_item(buf.getvalue(), DecodePlan((InputRule("depth_anything", IMAGENET, input_size=56),)))
    assert np.array_equal(decoded["inputs"][0], resize_for_inference(rgb, 56).transpose(2, 0, 1))


def test_tta_alignment_and_confidence():
    torch.manual_seed(0)
    p = torch.rand(1, 2, 20, 30) + 0.5
    # relative disparity: views differing by scale and shift agree perfectly once aligned
    views = torch.stack([p[0], 2 * p[0] + 0.3, 0.5 * p[0] - 0.1])
    label, spread = combine(views, OutputSpace("disparity", "utss"))
    assert spread.max() < 1e-4
    noisy = views.clone()
    noisy[1, 0, 5, 5] += 1.0
    _, spread = combine(noisy, OutputSpace("disparity", "utss"))
    assert spread[0, 5, 5] > 50 * spread[0].median()
    # depth up to scale: a scale is not disagreement; metric: it is (log 2 / 2 for two views)
    views = torch.stack([p[0], 3 * p[0]])
    assert combine(views, OutputSpace("depth", "uts"))[1].max() < 1e-4
    spread = combine(views, METRIC_DEPTH)[1]
    assert torch.allclose(spread, torch.full_like(spread, np.log(3) / 2), atol=1e-4)


# ------------------------------------------------------------------------------ end to end
def test_job_outputs_read_back_everywhere(teacher, corpus, tmp_path):
    """A flip-TTA run with 2 decoding workers: manifest, keys, the shards read back through
    webdataset, datasets and ShardReader (DataLoader with 2 workers), labels equal to the teacher's
    own prediction to better than 1e-3."""
    out = tmp_path / "out"
    manifest = run(config(teacher, corpus, out, "tta=flip", "num_workers=2", "streams=2", "dataset_name=my-corpus"))
    assert manifest["labeled"] == 24 and manifest["skipped"] == 0 and manifest["inputs"] == 24
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{u:06d}.tar" for u in range(5)]
    assert manifest["fields"] == ["jpg", "depth.png", "conf.png", "json"]
    assert (out / "errors.jsonl").read_text() == ""
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) == 24 and all("." not in k for k in keys)
    assert not glob.glob(str(out / "**" / "*.tmp*"), recursive=True)

    # webdataset (raw bytes) and datasets (PIL images, parsed JSON) decode to the same samples
    import webdataset as wds

    tars = sorted(str(p) for p in out.glob("*.tar"))
    from_wds = {s["__key__"]: decode_sample(s) for s in wds.WebDataset(tars, shardshuffle=False)}
    import datasets

    rows = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path / "hf"))
    from_hf = {r["__key__"]: decode_sample(r) for r in rows}
    assert set(from_wds) == set(from_hf) == set(keys)
    for key, s in from_wds.items():
        h = from_hf[key]
        assert np.array_equal(s.target, h.target) and np.array_equal(s.image, h.image)
        assert np.array_equal(s.confidence, h.confidence)
        assert s.target.dtype == np.float32 and s.confidence.dtype == np.float32
        assert (s.space, s.geometry) == ("disparity", "utss") and s.valid.all()
        assert s.image.shape[:2] == s.target.shape == tuple(s.meta["original_size"])
        assert s.meta["teacher"] == str(teacher) and s.meta["depth"]["encoding"] == "log"

    # the label is the teacher's flip-averaged prediction through its image processor, resized back, within 1e-3
    from pseudolabel.tta import Predictor
    from distill.inference import InputRule
    from distill.models import resolve_model
    import cv2

    resolved = resolve_model(str(teacher))
    rule = InputRule("processor", resolved.preprocessing, resolved.processor)
    predictor = Predictor(resolved.model.eval(), OutputSpace("disparity", "utss"), rule, "flip")
    for key in keys[:4]:
        s = from_wds[key]
        x = rule.prepare(np.asarray(Image.open(s.meta["path"]).convert("RGB")))
        [(label, conf)] = predictor(torch.from_numpy(x)[None], [s.target.shape])
        h, w = s.target.shape
        expected = cv2.resize(label.numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        assert np.abs(s.target / expected - 1).max() < 1e-3
        assert np.abs(s.confidence - cv2.resize(conf.numpy(), (w, h))).max() <= 0.5 / 255 + 1e-6

    # the training reader, registered in READERS, in a DataLoader with 2 workers
    from distill.data.readers import build_reader
    from torch.utils.data import DataLoader

    reader = build_reader("shards", root=str(out))
    assert len(reader) == 24 and (reader.space, reader.geometry) == ("disparity", "utss")
    loader = DataLoader(reader, batch_size=None, num_workers=2, collate_fn=lambda s: (s.key, float(s.target.mean())))
    seen = dict(loader)
    assert set(seen) == set(keys)
    assert all(abs(seen[k] - float(from_wds[k].target.mean())) < 1e-6 for k in keys)
    assert len(ShardReader(str(out / "shard-00000[12].tar"))) == 10
    # samples keep the job's dataset name, unless the reader is given its own
    assert {reader[i].dataset for i in range(len(reader))} == {"my-corpus"}
    assert ShardReader(out, name="mixed-in")[3].dataset == "mixed-in"


def test_killed_and_resumed_and_two_process_runs_give_the_same_keys(teacher, corpus, tmp_path):
    opts = ["--resize", "depth_anything", "--input-size", "112", "--batch-size", "1", "--workers", "0", "--shard-size", "2", "--tta", "flip"]
    reference = tmp_path / "reference"
    run(config(teacher, corpus, reference, "resize=depth_anything", "input_size=112", "batch_size=1", "shard_size=2", "tta=flip"))
    want = sorted(shard_keys(reference))
    assert len(want) == 24

    # the script as a subprocess, SIGKILLed as soon as its first shard is complete
    out = tmp_path / "killed"
    cmd = [sys.executable, str(SCRIPT), "--teacher", str(teacher), "--input", str(corpus), "--output", str(out), *opts]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not glob.glob(str(out / "index" / "shard-*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "manifest.json").exists()  # killed mid-run
    assert 1 <= len(glob.glob(str(out / "index" / "*.json"))) < 12
    # other moments a kill can hit, left behind on purpose: between a tar's rename and its index
    # (orphan tar), while a tar is being written (torn temporary file), mid index write
    os.remove(out / "index" / "shard-000000.json")
    (out / "shard-000011.tar.tmp").write_bytes(b"partial")
    (out / "index" / "shard-000010.json.tmp.123").write_bytes(b"{")
    # the same command again (in this process: the same code path, without another start-up)
    manifest = run(config(teacher, corpus, out, "resize=depth_anything", "input_size=112", "batch_size=1", "shard_size=2", "tta=flip"))
    assert manifest["labeled"] == 24 and len(manifest["shards"]) == 12
    assert sorted(shard_keys(out)) == want
    assert not glob.glob(str(out / "**" / "*.tmp*"), recursive=True)
    ref_manifest = json.loads((reference / "manifest.json").read_text())
    assert [(s["name"], s["samples"]) for s in manifest["shards"]] == [(s["name"], s["samples"]) for s in ref_manifest["shards"]]
    ref, got = decoded(reference), decoded(out)
    assert all(np.allclose(ref[k].target, got[k].target, rtol=1e-3) for k in want)

    # two processes (accelerate launch on CPU): same shards, same keys
    two = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", str(free_port()), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", str(SCRIPT), "--teacher", str(teacher), "--input", str(corpus),
              "--output", str(two), *opts]
    proc = subprocess.run(launch, env={**env, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(shard_keys(two)) == want
    assert sorted(p.name for p in two.glob("*.tar")) == sorted(p.name for p in reference.glob("*.tar"))
    assert json.loads((two / "manifest.json").read_text())["labeled"] == 24


# ---------------------------------------------------------------------------------- dirty corpus
def png_header_only(width, height) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's shape) with no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def make_dirty_corpus(root: Path) -> dict:
    """name -> expected outcome ("ok" or a fragment of the skip reason)."""
    good = smooth_image(48, 72, 1)
    jpg = io.BytesIO()
    Image.fromarray(good).save(jpg, format="JPEG")
    png = io.BytesIO()
    Image.fromarray(good).save(png, format="PNG")
    root.mkdir(parents=True, exist_ok=True)
    cases = {}

    def put(name, data, outcome):
        (root / name).write_bytes(data)
        cases[name] = outcome

    put("truncated.jpg", jpg.getvalue()[: len(jpg.getvalue()) // 3], "cannot")
    put("truncated.png", png.getvalue()[: len(png.getvalue()) // 2], "cannot")
    corrupt = bytearray(jpg.getvalue())  # intact header, garbage in the entropy-coded data
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 300] = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    put("corrupt.jpg", bytes(corrupt), "ok|")  # libjpeg may decode it (with glitches) or refuse it
    put("garbage.jpg", jpg.getvalue()[:2] + bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)), "cannot")
    put("zero.jpg", b"", "empty file")
    put("text.png", b"this is not an image at all\n" * 20, "not a recognised image")
    put("bomb.png", png_header_only(40000, 40000), "too large")
    write_image(root / "cmyk.jpg", good, format="JPEG")
    Image.fromarray(good).convert("CMYK").save(root / "cmyk.jpg", format="JPEG")
    Image.fromarray((np.linspace(0, 65535, 48 * 72).reshape(48, 72)).astype(np.uint16)).save(root / "gray16.png")
    Image.fromarray(good).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png", transparency=0)
    Image.fromarray(np.dstack([good, np.full(good.shape[:2], 128, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(good[..., 0]).save(root / "gray.jpg")
    Image.fromarray(good[:1, :1]).save(root / "tiny.png")
    Image.fromarray(np.zeros((4000, 6000, 3), np.uint8) + np.array([90, 120, 150], np.uint8)).save(root / "huge.jpg", quality=80)
    # EXIF orientation 6 (rotate 90 clockwise to view): store the upright image rotated back
    upright = smooth_image(72, 48, 3)
    upright[:12] = (255, 0, 0)  # red band at the top of the upright image
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(root / "rotated.jpg", exif=exif, quality=95)
    for name in ("cmyk.jpg", "gray16.png", "palette.png", "rgba.png", "gray.jpg", "tiny.png", "huge.jpg", "rotated.jpg"):
        cases[name] = "ok"
    return cases


def test_dirty_corpus_labels_what_decodes_and_skips_the_rest(teacher, tmp_path):
    cases = make_dirty_corpus(tmp_path / "dirty")
    out = tmp_path / "out"
    manifest = run(config(teacher, tmp_path / "dirty", out, "num_workers=2", "shard_size=4"))
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    skipped = {Path(e["path"]).name: e["reason"] for e in errors}
    samples = {Path(s.meta["path"]).name: s for s in decoded(out).values()}
    assert manifest["labeled"] == len(samples) and manifest["skipped"] == len(errors)
    assert manifest["labeled"] + manifest["skipped"] == len(cases) == manifest["inputs"]
    for name, outcome in cases.items():
        if outcome == "ok":
            assert name in samples, (name, skipped.get(name))
        elif outcome.startswith("ok|"):
            assert name in samples or outcome.split("|")[1] in skipped[name]
        else:
            assert outcome in skipped[name], (name, skipped.get(name))
    for name, s in samples.items():
        assert s.image.dtype == np.uint8 and s.image.shape[:2] == s.target.shape and np.isfinite(s.target).all()
    assert samples["tiny.png"].target.shape == (1, 1)
    assert samples["huge.jpg"].target.shape == (4000, 6000) and samples["huge.jpg"].meta["decoded_size"] == [500, 750]
    assert samples["gray16.png"].meta["image"]["stored"] == "reencoded"  # stored as the RGB the teacher saw
    assert samples["gray.jpg"].meta["image"]["stored"] == "original"
    rotated = samples["rotated.jpg"]
    assert rotated.target.shape == (72, 48) and rotated.meta["exif_orientation"] == 6  # upright
    top, rest = rotated.image[:10].astype(int), rotated.image[16:].astype(int)
    assert top[..., 0].mean() > 200 and top[..., 1].mean() < 60 and rest[..., 0].mean() < 200

    # units holding skipped inputs redone after a kill: errors.jsonl gets no duplicate line
    before = (out / "errors.jsonl").read_text()
    units = {e["shard"] for e in errors}
    for name in units:
        os.remove(out / "index" / f"{name}.json")
    os.remove(out / "manifest.json")
    again = run(config(teacher, tmp_path / "dirty", out, "num_workers=2", "shard_size=4"))
    assert (out / "errors.jsonl").read_text() == before and again["skipped"] == manifest["skipped"]
    assert sorted(shard_keys(out)) == sorted(s.key for s in samples.values())


# ------------------------------------------------------------------------------ input kinds
def test_every_input_kind(teacher, corpus, tmp_path):
    files = sorted(p for p in corpus.rglob("*") if p.suffix in (".jpg", ".png"))
    # list file: relative and absolute paths, a duplicate, a comment, a missing file
    listing = tmp_path / "list.txt"
    lines = [os.path.relpath(p, tmp_path) for p in files[:6]] + [str(files[0]), "./" + os.path.relpath(files[1], tmp_path)]
    listing.write_text("# corpus\n\n" + "\n".join(lines) + "\nmissing/photo.jpg\n")
    m = run(config(teacher, listing, tmp_path / "list"))
    assert (m["labeled"], m["skipped"], m["duplicates_dropped"]) == (6, 1, 2)
    assert "file not found" in (tmp_path / "list" / "errors.jsonl").read_text()

    # glob
    m = run(config(teacher, f"{corpus}/set1/*.jpg", tmp_path / "glob"))
    assert m["labeled"] == len(list((corpus / "set1").glob("*.jpg")))

    # WebDataset tars: images + other members, a sample without image, and a truncated tar
    shards = tmp_path / "tars"
    shards.mkdir()
    for t in range(2):
        with tarfile.open(shards / f"in-{t:03d}.tar", "w") as tf:
            for i, p in enumerate(files[t * 5:(t + 1) * 5]):
                for name, data in [(f"s{t}_{i}.{p.suffix[1:]}", p.read_bytes()), (f"s{t}_{i}.cls", b"3")]:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo("noimage.json")
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    data = (shards / "in-001.tar").read_bytes()
    (shards / "in-001.tar").write_bytes(data[: len(data) // 2])
    m = run(config(teacher, shards, tmp_path / "wds"))
    reasons = (tmp_path / "wds" / "errors.jsonl").read_text()
    assert m["labeled"] >= 5 and "no image member" in reasons and "in-000.tar:noimage" in reasons
    assert m["labeled"] + m["skipped"] == m["inputs"]
    sample = next(iter(decoded(tmp_path / "wds").values()))
    assert sample.meta["source"].startswith("in-00")

    # Hugging Face dataset (save_to_disk directory and hf: prefix), with a key column
    import datasets

    ds = datasets.Dataset.from_dict({"image": [str(p) for p in files[:5]], "name": [f"row{i}" for i in range(5)]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hfds"))
    m = run(config(teacher, f"hf:{tmp_path / 'hfds'}", tmp_path / "hf", "key_column=name"))
    assert m["labeled"] == 5 and m["input_kind"] == "hf"
    assert {s.meta["source"].rsplit(":", 1)[1] for s in decoded(tmp_path / "hf").values()} == {f"row{i}" for i in range(5)}
    m = run(config(teacher, tmp_path / "hfds", tmp_path / "hf2"))
    assert m["labeled"] == 5


def test_store_modes_and_a_metric_teacher_with_multiscale_tta(tmp_path, corpus):
    torch.manual_seed(1)
    metric = tmp_path / "metric"
    save_model(build_model("tiny", METRIC_DEPTH, max_depth=20), metric, size=56)
    out = tmp_path / "reencode"
    m = run(config(metric, f"{corpus}/set0", out, "tta=flip+scales", "tta_scales=[0.75, 1.5]",
                   "store_image=reencode", "image_max_side=40", "image_ext=png"))
    assert m["labeled"] == 8 and m["space"] == "depth" and m["geometry"] == "metric"
    for s in decoded(out).values():
        assert max(s.target.shape) == 40 and s.image.shape[:2] == s.target.shape
        assert s.meta["confidence"]["views"] == 6 and 0 <= s.confidence.min() <= s.confidence.max() <= 1
        assert (s.target > 0).all() and (s.target < 20).all() and s.valid.all()
    assert {p.name.split(".", 1)[1] for p in [Path(n) for n in tarfile.open(out / "shard-000000.tar").getnames()]} == {
        "png", "depth.png", "conf.png", "json"}
    # labels resized before storing instead of when reading: the same decoded samples
    m = run(config(metric, f"{corpus}/set0", tmp_path / "full", "tta=flip+scales", "tta_scales=[0.75, 1.5]",
                   "store_image=reencode", "image_max_side=40", "image_ext=png", "label_size=original"))
    small, full = decoded(out), decoded(tmp_path / "full")
    for key, s in full.items():
        assert s.meta["label_size"] == s.meta["image_size"] == list(s.target.shape)
        assert small[key].meta["label_size"] == small[key].meta["inference_size"]
        assert np.abs(s.target / small[key].target - 1).max() < 1e-3
        assert np.abs(s.confidence - small[key].confidence).max() <= 1.5 / 255
    out = tmp_path / "none"
    m = run(config(metric, f"{corpus}/set0", out, "store_image=none"))
    assert m["fields"] == ["depth.png", "json"]
    s = next(iter(decoded(out).values()))  # the image comes from the source file
    assert s.image.shape[:2] == s.target.shape == tuple(s.meta["original_size"])


# ---------------------------------------------------------------------------------------- CLI
def cli(capsys, *args):
    from distill.pseudolabel import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_cli_errors_are_one_line_with_exit_code_2(teacher, corpus, tmp_path, capsys):
    base = ["--teacher", teacher, "--input", corpus, "--output", tmp_path / "o"]
    for args, expected in [
        (["--tta", "sideways"], "tta: 'sideways' is not one of"),
        (["--batch-size", "many"], "batch_size: expected an integer, got 'many'"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["colour=red"], "unknown key 'colour'"),
        (["--config", tmp_path / "nope.yaml"], "config file not found"),
        (["--bogus"], "unknown option '--bogus'"),
        (["--wrokers", "2"], "did you mean '--workers'"),
    ]:
        code, err = cli(capsys, *base, *args)
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    for args, expected in [
        (["--teacher", teacher, "--output", tmp_path / "o"], "--input is required"),
        (["--teacher", tmp_path / "no_teacher", "--input", corpus, "--output", tmp_path / "o2"], "cannot load teacher"),
        (["--teacher", teacher, "--input", tmp_path / "nowhere", "--output", tmp_path / "o3"], "input not found"),
    ]:
        code, err = cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    # a restart with other output-defining options is refused
    run(config(teacher, f"{corpus}/set2", tmp_path / "o4", "resize=depth_anything", "input_size=56"))
    again = ["--teacher", teacher, "--input", f"{corpus}/set2", "--output", tmp_path / "o4"]
    code, err = cli(capsys, *again, "--resize", "depth_anything", "--input-size", "70")
    assert code == 2 and err.count("\n") == 1 and "was started with input_size=56" in err, err
    code, err = cli(capsys, *again)  # the default rule is another labeling: refused, naming the rule
    assert code == 2 and err.count("\n") == 1 and "was started with resize='depth_anything'" in err, err
    code, err = cli(capsys, *again, "--input-size", "70")  # the processor rule at 70: still another labeling
    assert code == 2 and err.count("\n") == 1 and "was started with resize='depth_anything'" in err, err


def test_real_photos_are_labeled(teacher, tmp_path):
    if not PHOTOS.is_dir():
        pytest.skip(f"{PHOTOS} not present (real sample photos live in ../shared/data on dev machines and CI)")
    out = tmp_path / "photos"
    m = run(config(teacher, PHOTOS, out, "num_workers=2", "shard_size=10"))
    assert m["labeled"] == len(list(PHOTOS.glob("*.jpg"))) and m["skipped"] == 0
    s = decoded(out)
    one = next(iter(s.values()))
    assert one.meta["image"]["stored"] == "original" and one.meta["decoded_size"][0] < one.meta["original_size"][0]
    assert one.image.shape[:2] == one.target.shape == tuple(one.meta["original_size"])
