"""The selection pass on a finished embedding pass (``groups`` does the work): junk, duplicates,
clusters, the budget; writes ``selection_ids.txt`` (source ids, for ``distill/pseudolabel.py
--select``, any input kind), ``selection.txt`` (paths, a list file labeling reads, where the inputs
are files), ``decisions.npz`` (per image: its decision, group representative and leaf) and
``selection.json`` (counts and options)."""
from __future__ import annotations

import json
import os
from contextlib import ExitStack

import numpy as np

from distill.config import ConfigError
from distill.runtime import atomic_path, write_atomic
from pseudolabel.curation import groups
from pseudolabel.curation.config import MEASURED_THRESHOLDS, CurateConfig
from pseudolabel.curation.embed import MERGED

SELECT_DIR = "_select"
CHECKPOINT_VERSION = 2  # bumped when what a checkpoint holds changes: older ones are recomputed
# decision codes of decisions.npz, in the order the report lists them
DECISIONS = ("selected", "over budget", "exact duplicate", "near duplicate", "tiny", "aspect", "blank", "grayscale")


def junk_codes(facts, cfg: CurateConfig) -> np.ndarray:
    """Per image the first junk reason's code in DECISIONS, or 0 (none)."""
    h, w = facts["height"], facts["width"]
    code = np.zeros(len(h), np.int8)
    tests = [("tiny", np.minimum(h, w) < cfg.min_side), ("aspect", np.maximum(h, w) > cfg.max_aspect * np.minimum(h, w)),
             ("blank", facts["gray_std"] < cfg.blank_std), ("grayscale", facts["grayscale"] & cfg.drop_grayscale)]
    for name, hit in reversed(tests):  # the first reason wins
        code[hit] = DECISIONS.index(name)
    return code


def threshold_of(cfg: CurateConfig, encoder: str) -> float:
    if cfg.threshold is not None:
        return cfg.threshold
    if encoder not in MEASURED_THRESHOLDS:
        raise ConfigError(f"no measured near-duplicate threshold for encoder {encoder!r} (measured: "
                          f"{', '.join(MEASURED_THRESHOLDS)}): pass threshold=COSINE (docs/curation.md)")
    return MEASURED_THRESHOLDS[encoder]


def items_of(out: str, rows=None):
    """(row, record) of ``items.jsonl``, streamed; only the rows in ``rows`` (a set) when given."""
    with open(os.path.join(out, "items.jsonl"), encoding="utf-8") as f:
        for row, line in enumerate(f):
            if rows is None or row in rows:
                yield row, json.loads(line)


def select(cfg: CurateConfig, out: str, log=print) -> dict:
    with open(os.path.join(out, MERGED)) as f:
        embedded = json.load(f)
    if cfg.threads:
        import faiss  # noqa: PLC0415

        faiss.omp_set_num_threads(cfg.threads)
    threshold = threshold_of(cfg, embedded["options"]["encoder"])
    embeddings = np.load(os.path.join(out, "embeddings.npy"), mmap_mode="r")
    with np.load(os.path.join(out, "facts.npz")) as f:
        facts = {k: f[k] for k in f.files}
    n = len(embeddings)
    code = junk_codes(facts, cfg)
    valid = code == 0
    folder = os.path.join(out, SELECT_DIR)
    key = {"version": CHECKPOINT_VERSION, "images": n, "leaf_size": cfg.leaf_size, "margin": cfg.margin, "seed": cfg.seed, "threads": cfg.threads,
           "junk": [cfg.min_side, cfg.max_aspect, cfg.blank_std, cfg.drop_grayscale]}
    log(f"clustering {int(valid.sum())} of {n} images (two-level k-means, leaves of ~{cfg.leaf_size})")
    top = groups.checkpoint(folder, "top", key, lambda: groups.top_level(embeddings, valid, cfg.leaf_size, cfg.margin, cfg.seed))
    leaves = groups.checkpoint(folder, "leaves", key, lambda: groups.leaf_level(embeddings, top, cfg.leaf_size, cfg.margin, cfg.seed))
    pair_key = {**key, "threshold": threshold, "phash_bits": cfg.phash_bits}
    log(f"pairs within {int(leaves['leaves'])} leaves at cosine >= {threshold}")
    pairs = groups.checkpoint(folder, "pairs", pair_key, lambda: {
        "near": groups.near_pairs(embeddings, leaves, threshold, facts["phash"], cfg.phash_bits),
        "exact": groups.exact_representatives(facts["pixel_hash"], valid)})
    pixels = facts["height"].astype(np.int64) * facts["width"]
    rep = groups.representatives(n, pairs["exact"], pairs["near"].astype(np.int64), pixels, cfg.keep)
    duplicate = valid & (rep != np.arange(n))
    same_pixels = np.all(facts["pixel_hash"][rep] == facts["pixel_hash"], axis=1)
    code[duplicate & same_pixels] = DECISIONS.index("exact duplicate")
    code[duplicate & ~same_pixels] = DECISIONS.index("near duplicate")
    candidates = np.flatnonzero(code == 0)
    rank = groups.id_rank((r["id"] for _, r in items_of(out)), cfg.seed, n)[candidates]
    chosen = candidates[groups.balanced(leaves["home"][candidates], rank, cfg.budget)]
    code[candidates] = DECISIONS.index("over budget")
    code[chosen] = DECISIONS.index("selected")
    return _write(cfg, out, embedded, code, rep, leaves, chosen, threshold)


def _write_selection(out: str, chosen: np.ndarray, n: int, paths: bool) -> None:
    """``selection_ids.txt`` (and ``selection.txt``), streamed from ``items.jsonl`` in listing order."""
    mask = np.zeros(n, bool)
    mask[chosen] = True
    names = ["selection_ids.txt"] + (["selection.txt"] if paths else [])
    with ExitStack() as stack:  # each file closed, then renamed into place
        files = [stack.enter_context(open(stack.enter_context(atomic_path(os.path.join(out, name))), "w", encoding="utf-8"))
                 for name in names]
        for row, record in items_of(out):
            if mask[row]:
                for f, field in zip(files, ("id", "path")):
                    f.write(record[field] + "\n")


def _write(cfg, out, embedded, code, rep, leaves, chosen, threshold) -> dict:
    import io  # noqa: PLC0415

    _write_selection(out, chosen, len(code), embedded["input_kind"] in ("files", "list"))
    buf = io.BytesIO()
    np.savez(buf, decision=code, representative=rep, leaf=leaves["home"])
    write_atomic(os.path.join(out, "decisions.npz"), buf.getvalue())
    counts = {name: int((code == k).sum()) for k, name in enumerate(DECISIONS)}
    summary = {"version": 1, "inputs": embedded["inputs"], "unreadable": embedded["errors"], "images": len(code),
               "counts": counts, "selected": len(chosen), "budget": cfg.budget, "threshold": threshold,
               "leaves": int(leaves["leaves"]), "encoder": embedded["options"]["encoder"],
               "options": {k: getattr(cfg, k) for k in ("min_side", "max_aspect", "blank_std", "drop_grayscale", "threshold",
                                                         "phash_bits", "keep", "leaf_size", "margin", "budget", "seed")}}
    write_atomic(os.path.join(out, "selection.json"), json.dumps(summary, indent=1).encode())
    return summary
