"""Curation benchmark (``-m pseudolabel.curation``): does it find the duplicates and the junk, how fast,
and does it scale? Three parts, each printing a table and writing ``OUT/<part>.json``:

``corpus``: constructed corpora of distinct source images (the shared photos when present,
scikit-image's bundled pictures, and render-style synthetic scenes; never photo-style scenes,
which reuse crops of the same photos), each with six near-duplicate copies (``TRANSFORMS``:
resized, re-cropped to 80-95% of each side, re-encoded at JPEG quality 10-25, colour-shifted,
mirrored, with a text overlay) and junk (blank, tiny, truncated files). The sources are split in
two: the near-duplicate threshold is the lowest cosine at which the *tuning* corpus's image pairs
reach 0.99 precision; precision and recall per transformation are then measured on the *test*
corpus (the other sources) by the curate command itself, with that threshold. Also: the
embedding pass's images/s per CPU core, and each transformation's perceptual-hash distance.

``scale``: a simulated run of the selection on N float16 384-d embeddings memory-mapped from disk
(clustered random vectors with planted near-duplicates, some of them on cluster boundaries), the
functions the command runs (two-level k-means, pairs within leaves, groups, balanced selection),
with the time of each step and the peak anonymous memory (what is not the mapped file).

``student``: does curation pay at an equal labeling budget? distill-gain v2's data (its
``Experiment``: a ``mini`` teacher on 40 labeled scenes, the unlabeled corpus of render and photo
style scenes) made duplicate-heavy on purpose: half its images are near-copies (``TRANSFORMS``) of
a fifth of them. The same teacher labels ``budget`` images of it twice: a uniform random sample
(uncurated) and the curate command's selection; a student (pseudo-labels only, distill-gain's L1)
learns from each; broad test AbsRel of both.

``resume``: the command interrupted by SIGTERM during the embedding pass and by SIGKILL during
the selection, then rerun, against an uninterrupted run: the selection's files byte for byte.

    python benchmarks/curate.py --part corpus --sources 300
    python benchmarks/curate.py --part scale --images 1000000
    python benchmarks/curate.py --part resume
    python benchmarks/curate.py --part student --corpus 1600 --budget 600 --steps 600
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
TRANSFORMS = ("resized", "recrop", "jpeg", "colour", "flip", "text")
SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket", "colorwheel", "immunohistochemistry", "hubble_deep_field", "retina",
           "camera", "brick", "grass", "gravel", "coins", "moon", "page", "text", "horse", "clock", "cell", "logo")
MAX_SIDE = 512  # sources are shrunk to this first (the photos are 12 MP): the benchmark runs in minutes


# ------------------------------------------------------------------------------- the corpora
def sources(n_scenes: int) -> list[tuple[str, np.ndarray]]:
    import skimage.data  # noqa: PLC0415

    from distill.data.synthetic import render_scene  # noqa: PLC0415

    out = []
    for path in sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []:
        out.append((f"photo-{path.stem}", np.asarray(Image.open(path).convert("RGB"))))
    for name in SKIMAGE:
        a = np.asarray(getattr(skimage.data, name)())
        a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
        out.append((f"skimage-{name}", a.astype(np.uint8)))
    for seed in range(n_scenes):
        out.append((f"scene-{seed:04d}", render_scene(10_000 + seed, 288, 384, style="render").image))
    shrunk = []
    for name, a in out:
        im = Image.fromarray(a)
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        shrunk.append((name, np.asarray(im)))
    return shrunk


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def transform(a: np.ndarray, kind: str, rng) -> bytes:
    im = Image.fromarray(a)
    w, h = im.size
    if kind == "resized":
        s = rng.uniform(0.4, 0.7)
        return _jpeg(im.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC), 90)
    if kind == "recrop":
        fw, fh = rng.uniform(0.8, 0.95, 2)
        cw, ch = int(w * fw), int(h * fh)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return _jpeg(im.crop((x, y, x + cw, y + ch)), 90)
    if kind == "jpeg":
        return _jpeg(im, int(rng.integers(10, 26)))
    if kind == "colour":
        gains = rng.uniform(0.8, 1.2, 3)
        gamma = rng.uniform(0.8, 1.25)
        b = np.clip(255 * ((a / 255.0) ** gamma) * gains, 0, 255).astype(np.uint8)
        return _jpeg(Image.fromarray(b), 90)
    if kind == "flip":
        return _jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90)
    if kind == "text":
        draw = ImageDraw.Draw(im)
        size = max(12, h // 10)
        font = ImageFont.load_default(size=size)
        draw.text((int(w * rng.uniform(0.05, 0.3)), int(h * rng.uniform(0.5, 0.8))), "(c) stock photo 2026",
                  fill=(255, 255, 255), font=font, stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
        return _jpeg(im, 90)
    raise ValueError(kind)


def build_corpus(folder: Path, items: list[tuple[str, np.ndarray]], seed: int) -> dict[str, dict]:
    """``folder``: per source ``NAME_0orig.jpg`` and ``NAME_1..6<transform>.jpg``, plus junk; returns
    truth per file name: source and transformation (or junk kind)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name, a in items:
        (folder / f"{name}_0orig.jpg").write_bytes(_jpeg(Image.fromarray(a), 95))
        truth[f"{name}_0orig.jpg"] = {"source": name, "kind": "original"}
        for k, kind in enumerate(TRANSFORMS, 1):
            file = f"{name}_{k}{kind}.jpg"
            (folder / file).write_bytes(transform(a, kind, rng))
            truth[file] = {"source": name, "kind": kind}
    for j in range(4):
        Image.new("RGB", (320, 240), tuple(int(v) for v in rng.integers(0, 256, 3))).save(folder / f"zjunk_blank{j}.png")
        truth[f"zjunk_blank{j}.png"] = {"source": f"blank{j}", "kind": "blank"}
        Image.fromarray(items[j][1]).resize((40, 30)).save(folder / f"zjunk_tiny{j}.png")
        truth[f"zjunk_tiny{j}.png"] = {"source": f"tiny{j}", "kind": "tiny"}
        data = _jpeg(Image.fromarray(items[j][1]), 90)
        (folder / f"zjunk_truncated{j}.jpg").write_bytes(data[: len(data) // 3])
        truth[f"zjunk_truncated{j}.jpg"] = {"source": f"truncated{j}", "kind": "truncated"}
    return truth


def curate(folder: Path, out: Path, *extra: str) -> float:
    """The command as a user runs it; returns its wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pseudolabel.curation", "--input", str(folder), "--output", str(out),
                    "encoder=efficientnet-lite0", "threads=1", "num_workers=1", "progress=false", *extra],
                   check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _items(out: Path) -> list[dict]:
    with open(out / "items.jsonl") as f:
        return [json.loads(line) for line in f]


def choose_threshold(out: Path, truth: dict, phash_bits: int, precision: float = 0.99) -> tuple[float, list]:
    """The lowest cosine at which the command's rule (``groups.representatives`` on all pairs at or above
    it) removes copies of the tuning corpus with ``precision``: of the images it removes, the share
    removed as a copy of their own source."""
    from pseudolabel.curation import groups  # noqa: PLC0415

    items = _items(out)
    e = groups.unit_rows(np.load(out / "embeddings.npy"))
    with np.load(out / "facts.npz") as f:
        pixel_hash, pixels, phash = f["pixel_hash"], f["height"].astype(np.int64) * f["width"], f["phash"]
    names = [Path(r["path"]).name for r in items]
    real = np.array([truth[n]["kind"] not in ("blank", "tiny") for n in names])
    src = np.array([truth[n]["source"] for n in names])
    exact = groups.exact_representatives(pixel_hash, real)
    sims = e @ e.T
    close_hash = np.bitwise_count(phash[:, None] ^ phash[None, :]) <= phash_bits if phash_bits else np.zeros_like(sims, bool)
    close_hash[~real] = close_hash[:, ~real] = False
    sims[~real] = sims[:, ~real] = -1
    copies = np.array([truth[n]["kind"] in TRANSFORMS for n in names])
    curve = []
    for t in np.arange(0.70, 1.0, 0.01):
        i, j = np.nonzero(np.triu((sims >= t) | close_hash, 1))
        rep = groups.representatives(len(items), exact, np.stack([i, j], 1), pixels, "largest")
        removed = rep != np.arange(len(items))
        p = float((src[rep[removed]] == src[removed]).mean()) if removed.any() else 1.0
        r = float((rep[copies] == rep[[np.flatnonzero(src == src[c])[0] for c in np.flatnonzero(copies)]]).mean())
        curve.append((round(float(t), 3), p, r))
    chosen = next((t for t, p, _ in curve if p >= precision), 0.99)
    return chosen, curve


def score(out: Path, truth: dict) -> dict:
    """Per transformation: recall (the copy ends in its original's group) and precision (of the copies
    flagged as duplicates, those grouped with their own source); junk found; overall precision."""
    from pseudolabel.curation.select import DECISIONS  # noqa: PLC0415

    items = _items(out)
    with np.load(out / "decisions.npz") as d:
        decision, rep = d["decision"], d["representative"]
    names = [Path(r["path"]).name for r in items]
    row_of = {n: i for i, n in enumerate(names)}
    src = [truth[n]["source"] for n in names]
    dup = {DECISIONS.index("exact duplicate"), DECISIONS.index("near duplicate")}
    result = {}
    for kind in TRANSFORMS:
        rows = [row_of[n] for n, t in truth.items() if t["kind"] == kind and n in row_of]
        found = [r for r in rows if rep[r] == rep[row_of[f"{src[r]}_0orig.jpg"]]]
        flagged = [r for r in rows if decision[r] in dup]
        right = [r for r in flagged if src[rep[r]] == src[r]]
        result[kind] = {"copies": len(rows), "recall": len(found) / max(1, len(rows)),
                        "precision": len(right) / max(1, len(flagged))}
    flagged = [i for i in range(len(items)) if decision[i] in dup]
    result["all"] = {"flagged": len(flagged), "precision": sum(src[rep[i]] == src[i] for i in flagged) / max(1, len(flagged)),
                     "originals_wrongly_dropped": sum(truth[names[i]]["kind"] == "original" and src[rep[i]] != src[i]
                                                      for i in flagged)}
    errors = [json.loads(line) for line in open(out / "errors.jsonl")]
    result["junk"] = {k: {"planted": sum(t["kind"] == k for t in truth.values()),
                          "found": int(sum(decision[row_of[n]] == DECISIONS.index(k) for n, t in truth.items()
                                       if t["kind"] == k and n in row_of)) if k != "truncated" else
                          sum(Path(e["path"]).name.startswith("zjunk_truncated") for e in errors)}
                      for k in ("blank", "tiny", "truncated")}
    return result


def phash_distances(out: Path, truth: dict) -> dict:
    items = _items(out)
    by_name = {Path(r["path"]).name: int(r["phash"], 16) for r in items}
    result = {}
    for kind in TRANSFORMS:
        d = [int(np.bitwise_count(np.uint64(by_name[n] ^ by_name[f"{t['source']}_0orig.jpg"])))
             for n, t in truth.items() if t["kind"] == kind and n in by_name]
        result[kind] = {"median_bits": float(np.median(d)), "within_8_bits": float(np.mean(np.array(d) <= 8))}
    return result


def part_corpus(args) -> dict:
    everything = sources(args.sources)
    tuning, test = everything[0::2], everything[1::2]
    base = Path(args.output_dir)
    results = {"sources": {"tuning": len(tuning), "test": len(test)}}
    truth_tune = build_corpus(base / "tuning", tuning, 0)
    truth_test = build_corpus(base / "test", test, 1)
    for out in ("tuning-out", "test-out"):  # the throughput below is a whole fresh run
        shutil.rmtree(base / out, ignore_errors=True)
    curate(base / "tuning", base / "tuning-out", "threshold=0.99")
    tuned = {}
    for bits in (0, 4, 8):  # perceptual-hash edges too: each with its own threshold
        threshold, curve = choose_threshold(base / "tuning-out", truth_tune, bits)
        tuned[bits] = {"threshold": threshold, "recall": next(r for t, _, r in curve if t == threshold), "curve": curve}
        print(f"tuning, phash_bits={bits}: cosine {threshold}, recall {tuned[bits]['recall']:.3f} at precision >= 0.99")
    bits = max(tuned, key=lambda b: (tuned[b]["recall"], -b))
    threshold = tuned[bits]["threshold"]
    results.update(threshold=threshold, phash_bits=bits, tuning=tuned)
    seconds = curate(base / "test", base / "test-out", f"threshold={threshold}", f"phash_bits={bits}")
    with open(base / "test-out" / "embedded.json") as f:
        images = json.load(f)["inputs"]
    results["test"] = score(base / "test-out", truth_test)
    results["phash"] = phash_distances(base / "test-out", truth_test)
    results["throughput"] = {"images": images, "seconds": seconds, "images_per_s": images / seconds,
                             "cores": 2, "images_per_s_per_core": images / seconds / 2,
                             "note": "whole command (listing, model load, embedding, selection, report), threads=1 + 1 decoding worker"}
    print(f"chosen on the tuning corpus ({len(tuning)} sources, precision >= 0.99): cosine {threshold}, phash_bits {bits}")
    print(f"test corpus ({len(test)} sources): {'transform':10s} recall precision")
    for kind in TRANSFORMS:
        r = results["test"][kind]
        print(f"  {kind:10s} {r['recall']:.3f}  {r['precision']:.3f}  (phash median {results['phash'][kind]['median_bits']} bits)")
    print(f"  all: precision {results['test']['all']['precision']:.4f}, junk {results['test']['junk']}")
    print(f"throughput: {images} images in {seconds:.1f} s = {images / seconds:.1f} images/s ({images / seconds / 2:.1f} per core)")
    return results


# ------------------------------------------------------------------------------- scale
class PeakAnon:
    """Peak anonymous resident memory (RssAnon: not the file-backed pages of the mapped embeddings)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def simulated_embeddings(path: Path, n: int, dim: int, seed: int) -> dict:
    """N unit vectors around 4000 centres (cosine to the centre ~0.6), themselves around 64 themes
    (cosine ~0.7: a hierarchy, as real image embeddings have), written float16 in chunks; 2% of rows
    are near copies of an earlier row (cosine ~0.98); a quarter of those originals sit halfway
    between two centres, so the pair straddles a boundary."""
    rng = np.random.default_rng(seed)
    themes = rng.standard_normal((64, dim)).astype(np.float32)
    themes /= np.linalg.norm(themes, axis=1, keepdims=True)
    centres = themes[rng.integers(0, 64, 4000)] + rng.standard_normal((4000, dim)).astype(np.float32) / np.sqrt(dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    n_dup = n // 50
    copies = np.sort(rng.choice(np.arange(n // 2, n), n_dup, replace=False))
    originals = rng.integers(0, n // 2, n_dup)
    boundary = rng.random(n_dup) < 0.25
    for a in range(0, n, 1 << 18):
        b = min(n, a + (1 << 18))
        c = rng.integers(0, len(centres), b - a)
        x = centres[c] + rng.standard_normal((b - a, dim)).astype(np.float32) * (1.3 / np.sqrt(dim))
        array[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    for k in np.flatnonzero(boundary):  # halfway between two centres
        c1, c2 = rng.integers(0, len(centres), 2)
        x = centres[c1] + centres[c2] + rng.standard_normal(dim).astype(np.float32) * (0.3 / np.sqrt(dim))
        array[originals[k]] = x / np.linalg.norm(x)
    for a in range(0, n_dup, 1 << 16):
        o = originals[a: a + (1 << 16)]
        x = array[o].astype(np.float32) + rng.standard_normal((len(o), dim)).astype(np.float32) * (0.2 / np.sqrt(dim))
        array[copies[a: a + (1 << 16)]] = x / np.linalg.norm(x, axis=1, keepdims=True)
    array.flush()
    return {"originals": originals, "copies": copies, "boundary": boundary}


def part_scale(args) -> dict:
    from pseudolabel.curation import groups  # noqa: PLC0415

    base = Path(args.output_dir)
    base.mkdir(parents=True, exist_ok=True)
    path = base / f"embeddings-{args.images}.npy"
    started = time.perf_counter()
    planted = simulated_embeddings(path, args.images, 384, 0)
    made = time.perf_counter() - started
    embeddings = np.load(path, mmap_mode="r")
    n = len(embeddings)
    memory = PeakAnon()
    times = {}
    t = time.perf_counter()
    valid = np.ones(n, bool)
    top = groups.top_level(embeddings, valid, args.leaf_size, args.margin, 0)
    times["top k-means + assignment"] = time.perf_counter() - t
    t = time.perf_counter()
    leaves = groups.leaf_level(embeddings, top, args.leaf_size, args.margin, 0)
    times["leaf k-means + assignment"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs = groups.near_pairs(embeddings, leaves, args.threshold, None, 0)
    times["pairs within leaves"] = time.perf_counter() - t
    t = time.perf_counter()
    rep = groups.keep_one(n, pairs, np.ones(n, np.int64), "first")
    kept = np.flatnonzero(rep == np.arange(n))
    rank = np.random.default_rng(1).permutation(len(kept)).astype(np.uint64)  # stands for the id hash
    chosen = groups.balanced(leaves["home"][kept], rank, n // 2)
    times["groups + balanced selection"] = time.perf_counter() - t
    peak = memory.stop()
    together = rep[planted["originals"]] == rep[planted["copies"]]
    result = {"images": n, "dim": 384, "file_gb": os.path.getsize(path) / 1e9, "simulate_s": made,
              "times_s": times, "total_s": sum(times.values()), "peak_anon_gb": peak / 1e9,
              "top_clusters": len(top["top_centroids"]), "leaves": int(leaves["leaves"]),
              "memberships_per_image": len(leaves["member_rows"]) / n, "pairs": len(pairs),
              "recall_planted": float(together.mean()), "recall_boundary": float(together[planted["boundary"]].mean()),
              "removed": int(n - len(kept)), "planted": len(planted["copies"]),
              "selected": len(chosen), "threshold": args.threshold, "leaf_size": args.leaf_size, "margin": args.margin,
              "threads": os.environ.get("OMP_NUM_THREADS", "default")}
    for k, v in times.items():
        print(f"  {k:32s} {v:8.1f} s")
    print(f"{n} embeddings ({result['file_gb']:.2f} GB mapped): {result['total_s']:.0f} s, peak anonymous memory "
          f"{result['peak_anon_gb']:.2f} GB; {result['leaves']} leaves, {result['memberships_per_image']:.2f} memberships per image; "
          f"planted pairs found {result['recall_planted']:.4f} (on boundaries {result['recall_boundary']:.4f})")
    if not args.keep:
        os.remove(path)
    return result


# ------------------------------------------------------------------------------- resume
def _digest(out: Path) -> dict:
    import hashlib  # noqa: PLC0415

    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest()[:16]
            for f in ("embeddings.npy", "facts.npz", "selection_ids.txt", "decisions.npz", "selection.json")}


def part_resume(args) -> dict:
    base = Path(args.output_dir)
    build_corpus(base / "corpus", sources(args.sources)[: max(8, args.sources)], 2)
    opts = ("shard_size=16", "budget=60")
    curate(base / "corpus", base / "whole", *opts)
    cmd = [sys.executable, "-m", "pseudolabel.curation", "--input", str(base / "corpus"), "--output",
           str(base / "cut"), "encoder=efficientnet-lite0", "threads=1", "num_workers=1", "progress=false", *opts]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
    while not list((base / "cut" / "index").glob("*.json")):  # one unit committed: stop during the pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    code_term = proc.wait()
    units_before = len(list((base / "cut" / "index").glob("*.json")))
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
    while not (base / "cut" / "_select" / "top.npz").exists():  # the first checkpoint: kill during the selection
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    subprocess.run(cmd, check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    whole, cut = _digest(base / "whole"), _digest(base / "cut")
    result = {"sigterm_exit": code_term, "units_done_at_sigterm": units_before, "identical": whole == cut,
              "whole": whole, "interrupted": cut}
    print(f"SIGTERM during embedding (exit {code_term}, {units_before} units done), SIGKILL during selection, rerun: "
          f"selection byte-identical to an uninterrupted run: {whole == cut}")
    return result


def duplicate_heavy(exp, corpus: int, seed: int) -> Path:
    """``data/corpus-dup/``: ``corpus / 2`` distinct images of distill-gain's corpus, and ``corpus / 2``
    near-copies of the first fifth of them (each of those copied 2.5 times on average); its list file."""
    rng = np.random.default_rng(seed)
    images = [Path(line) for line in (exp.data / "corpus.txt").read_text().splitlines()]
    originals = [images[i] for i in sorted(rng.choice(len(images), corpus // 2, replace=False))]
    popular = originals[: corpus // 5]
    folder = exp.data / "corpus-dup"
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for path in originals:
        listed.append(path)
    for k in range(corpus - len(originals)):
        source = popular[k % len(popular)]
        kind = TRANSFORMS[int(rng.integers(len(TRANSFORMS)))]
        copy = folder / f"{source.parent.parent.name}-{source.stem}-copy{k}-{kind}.jpg"
        copy.write_bytes(transform(np.asarray(Image.open(source).convert("RGB")), kind, rng))  # always: the rng's draws
        listed.append(copy)
    order = rng.permutation(len(listed))
    path = exp.data / "corpus-dup.txt"
    path.write_text("".join(f"{listed[i]}\n" for i in order))
    return path


def _source_of(path: str) -> str:
    """The corpus image a file of the duplicate-heavy corpus shows (a copy names its source)."""
    p = Path(path)
    if "-copy" in p.name:
        folder, stem = p.name.split("-copy")[0].rsplit("-", 1)
        return f"{folder}/{stem}"
    return f"{p.parent.parent.name}/{p.stem}"


def part_student(args) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from distill_gain import DistillGainConfig, Experiment, broad  # noqa: PLC0415

    cfg = DistillGainConfig(output_dir=args.output_dir, seeds=1, steps=args.steps, budgets=[40],
                            corpus=max(args.corpus, 800), val_scenes=16, test_scenes=64)
    exp = Experiment(cfg)
    exp.generate()
    exp.lr = 5e-4
    dup_list = duplicate_heavy(exp, args.corpus, 0)
    teacher = exp.teacher("teacher", 0, 40)
    rng = np.random.default_rng(1)
    lines = dup_list.read_text().splitlines()
    uncurated = exp.data / "uncurated.txt"
    uncurated.write_text("".join(f"{lines[i]}\n" for i in sorted(rng.choice(len(lines), args.budget, replace=False))))
    curated_dir = exp.out / "curated"
    if not (curated_dir / "selection.txt").is_file():
        curate(dup_list, curated_dir, f"budget={args.budget}")
    selection = json.loads((curated_dir / "selection.json").read_text())
    result = {"corpus": args.corpus, "budget": args.budget, "steps": args.steps, "curation": selection["counts"]}
    for name, inputs in (("uncurated", uncurated), ("curated", curated_dir / "selection.txt")):
        labels = exp.label(f"{name}-b{args.budget}", [teacher], inputs=inputs)
        runs = [exp.scores(exp.student("L1", seed, 40, labels, exp.lr, name=f"{name}-L1")) for seed in range(args.seeds)]
        with open(labels / "_job" / "items.jsonl") as f:  # what was labeled (the lists are rewritten on a rerun)
            listed = [json.loads(line)["path"] for line in f]
        result[name] = {"broad_test_abs_rel": [broad(r, "test") for r in runs], "broad_val_abs_rel": [broad(r, "val") for r in runs],
                        "distinct_sources": len({_source_of(line) for line in listed}), "labeled": len(listed)}
    result["teacher"] = {"broad_test_abs_rel": broad(exp.scores(teacher), "test")}
    for name in ("uncurated", "curated"):
        r = result[name]
        print(f"{name:10s}: {r['distinct_sources']} distinct pictures among {r['labeled']} labeled; student broad test AbsRel "
              f"{np.mean(r['broad_test_abs_rel']):.4f} +- {np.std(r['broad_test_abs_rel']):.4f} over {args.seeds} student seeds "
              f"({', '.join(f'{v:.4f}' for v in r['broad_test_abs_rel'])})")
    print(f"teacher: {result['teacher']['broad_test_abs_rel']:.4f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("corpus", "scale", "resume", "student"), required=True)
    parser.add_argument("--output_dir", default="runs/curate-benchmark")
    parser.add_argument("--sources", type=int, default=300, help="render-style scenes (corpus, resume)")
    parser.add_argument("--images", type=int, default=1_000_000, help="simulated embeddings (scale)")
    parser.add_argument("--leaf_size", type=int, default=1000)
    parser.add_argument("--margin", type=float, default=0.03, help="boundary margin (scale)")
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine of the simulated duplicates (scale)")
    parser.add_argument("--keep", action="store_true", help="keep the simulated embeddings file")
    parser.add_argument("--corpus", type=int, default=1600, help="images of the duplicate-heavy corpus (student)")
    parser.add_argument("--budget", type=int, default=600, help="labeled images of each student (student)")
    parser.add_argument("--steps", type=int, default=600, help="teacher and student steps (student)")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds of each arm (student)")
    args = parser.parse_args()
    result = {"corpus": part_corpus, "scale": part_scale, "resume": part_resume, "student": part_student}[args.part](args)
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    name = args.part if args.part != "scale" else f"scale-{args.images}"
    (Path(args.output_dir) / f"{name}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
