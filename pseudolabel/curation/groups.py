"""From the merged embeddings to a selection: junk, duplicate groups, hierarchical clusters, and a
budget spread across clusters. Designed for 10^8 images (memory per image and scaling:
docs/curation.md); every step reads ``embeddings.npy`` memory-mapped, in chunks.

1. **Junk**: too small, too elongated, near-uniform (blank), optionally grayscale (``facts``).
2. **Clusters**: two-level spherical k-means (faiss), as DINOv2's curation builds its hierarchy:
   ``sqrt(N / leaf_size)`` top clusters trained on a sample, then each top cluster split into
   leaves of about ``leaf_size`` images. An image whose second-nearest centroid (at either level)
   is within ``margin`` of its nearest is also placed in that second cluster for the pair search,
   so duplicates on a boundary still meet.
3. **Duplicates**: equal pixel hashes (exact: all but the first listed), and pairs within a leaf
   whose cosine similarity is at least ``threshold`` (near: SemDeDup's criterion), optionally also
   pairs whose perceptual hashes differ in at most ``phash_bits`` bits. Images are visited by
   priority (``keep``: the largest, ties to the first listed; or the first); one similar to an
   image already kept is removed as its duplicate (``keep_one``: similarity is not transitive).
4. **Balanced selection**: the kept images' leaves share the budget by water-filling (every leaf
   gets ``min(size, t)``, ``t`` as large as the budget allows), the remainder going to the largest
   leaves; within a leaf the order is a hash of (seed, id), so the choice is independent of the
   listing order and of how many processes embedded.

Steps 2-3 are checkpointed (``_select/``, atomically, keyed by their options), so an interrupted
selection resumes where it stopped and ends with the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from distill.runtime import write_atomic

CHUNK = 65536  # rows read from the memory-mapped embeddings at a time
SAMPLE_PER_CENTROID = 256  # k-means trains on at most this many images per centroid (faiss's default)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids [k, D] of the rows of ``x`` (faiss; at most 256 images per centroid)."""
    import faiss  # noqa: PLC0415

    k = max(1, min(k, len(x)))
    if k == 1:
        return unit_rows(x.mean(0, keepdims=True))
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, max_points_per_centroid=SAMPLE_PER_CENTROID,
                      verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return unit_rows(km.centroids)


def nearest_two(x: np.ndarray, centroids: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid, second one or -1 where it is more than ``margin`` less similar) per row."""
    sims = x @ centroids.T
    if centroids.shape[0] == 1:
        return np.zeros(len(x), np.int32), np.full(len(x), -1, np.int32)
    top2 = np.argpartition(-sims, 1, axis=1)[:, :2]
    s2 = np.take_along_axis(sims, top2, 1)
    order = np.argsort(-s2, axis=1, kind="stable")
    top2, s2 = np.take_along_axis(top2, order, 1), np.take_along_axis(s2, order, 1)
    second = np.where(s2[:, 0] - s2[:, 1] <= margin, top2[:, 1], -1)
    return top2[:, 0].astype(np.int32), second.astype(np.int32)


def _rows(embeddings, index: np.ndarray) -> np.ndarray:
    """Rows of the memory-mapped embeddings (sorted reads), float32, unit length."""
    order = np.argsort(index, kind="stable")
    out = np.empty((len(index), embeddings.shape[1]), np.float32)
    for a in range(0, len(index), CHUNK):
        pick = order[a: a + CHUNK]
        out[pick] = embeddings[index[pick]]
    return unit_rows(out)


def sample_rows(n: int, k: int, seed: int, candidates: np.ndarray | None = None) -> np.ndarray:
    pool = np.arange(n) if candidates is None else candidates
    size = min(len(pool), k * SAMPLE_PER_CENTROID)
    return np.sort(np.random.default_rng(seed).choice(pool, size=size, replace=False)) if size < len(pool) else pool


def top_level(embeddings, valid: np.ndarray, leaf_size: int, margin: float, seed: int) -> dict:
    """Top clusters: centroids, and per image its nearest and second (or -1) top cluster."""
    n = len(embeddings)
    rows = np.flatnonzero(valid)
    k = max(1, int(round(np.sqrt(len(rows) / leaf_size))))
    centroids = kmeans(_rows(embeddings, sample_rows(n, k, seed, rows)), k, seed)
    first, second = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
    for a in range(0, n, CHUNK):
        first[a: a + CHUNK], second[a: a + CHUNK] = nearest_two(unit_rows(embeddings[a: a + CHUNK]), centroids, margin)
    first[~valid], second[~valid] = -1, -1
    return {"top_centroids": centroids, "top": first, "top_second": second}


def leaf_level(embeddings, top: dict, leaf_size: int, margin: float, seed: int) -> dict:
    """Leaves: each top cluster's members (boundary images too) split by k-means; per image its home
    leaf (within its nearest top cluster) and the (image, leaf) memberships of the pair search."""
    n = len(embeddings)
    home = np.full(n, -1, np.int64)
    member_rows, member_leaves = [], []
    next_leaf = 0
    for t in range(len(top["top_centroids"])):
        members = np.flatnonzero((top["top"] == t) | (top["top_second"] == t))
        if not len(members):
            continue
        x = _rows(embeddings, members)
        own = top["top"][members] == t
        k = max(1, int(round(own.sum() / leaf_size)))
        centroids = kmeans(x[sample_rows(len(x), k, seed + 1 + t, np.flatnonzero(own))], k, seed + 1 + t)
        first, second = nearest_two(x, centroids, margin)
        home[members[own]] = next_leaf + first[own]
        both = second >= 0
        member_rows += [members, members[both]]
        member_leaves += [next_leaf + first, next_leaf + second[both]]
        next_leaf += len(centroids)
    rows, leaves = np.concatenate(member_rows), np.concatenate(member_leaves)
    order = np.lexsort((rows, leaves))
    return {"home": home, "member_rows": rows[order], "member_leaves": leaves[order], "leaves": next_leaf}


def near_pairs(embeddings, leaves: dict, threshold: float, phash: np.ndarray | None, phash_bits: int) -> np.ndarray:
    """[P, 2] row pairs (i < j) in a common leaf with cosine >= threshold (or perceptual hashes within
    ``phash_bits`` bits when that is > 0)."""
    rows, by_leaf = leaves["member_rows"], leaves["member_leaves"]
    bounds = np.flatnonzero(np.diff(by_leaf)) + 1
    pairs = []
    for members in np.split(rows, bounds):
        if len(members) < 2:
            continue
        x = _rows(embeddings, members)
        for a in range(0, len(members), 4096):
            sims = x[a: a + 4096] @ x.T
            close = sims >= threshold
            if phash is not None and phash_bits:
                xor = phash[members[a: a + 4096], None] ^ phash[None, members]
                close |= np.bitwise_count(xor) <= phash_bits
            i, j = np.nonzero(close)
            keep = members[a + i] < members[j]
            pairs.append(np.stack([members[a + i][keep], members[j][keep]], 1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def exact_pairs(pixel_hash: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[P, 2] pairs (first listed, other) of valid rows with equal pixel hashes."""
    rows = np.flatnonzero(valid)
    h = pixel_hash[rows]
    order = np.lexsort((rows, h[:, 1], h[:, 0]))
    h, rows = h[order], rows[order]
    same = np.all(h[1:] == h[:-1], axis=1)
    run_start = np.maximum.accumulate(np.where(np.concatenate([[True], ~same]), np.arange(len(rows)), 0))
    i = np.flatnonzero(np.concatenate([[False], same]))
    return np.stack([rows[run_start[i]], rows[i]], 1) if len(i) else np.zeros((0, 2), np.int64)


def exact_representatives(pixel_hash: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row the first listed valid row with its pixel hash (itself if none before it; invalid rows: itself)."""
    rep = np.arange(len(valid))
    pairs = exact_pairs(pixel_hash, valid)
    rep[pairs[:, 1]] = pairs[:, 0]
    return rep


def keep_one(n: int, pairs: np.ndarray, pixels: np.ndarray, keep: str) -> np.ndarray:
    """The representative of each row: rows are visited by priority (``keep``: largest, then first
    listed; or first listed); a row with an edge to a row already kept is that row's duplicate (the
    highest-priority one), otherwise it is kept. A removed row attracts nothing, so a chain of
    similar images (A~B, B~C, A not ~C) keeps A and C: unlike connected components, similarity is
    never taken as transitive (SemDeDup's greedy rule on the pair graph)."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415

    rep = np.arange(n)
    if not len(pairs):
        return rep
    order = np.lexsort((np.arange(n), -pixels)) if keep == "largest" else np.arange(n)
    priority = np.empty(n, np.int64)
    priority[order] = np.arange(n)
    graph = coo_matrix((np.ones(2 * len(pairs), np.int8), (np.concatenate([pairs[:, 0], pairs[:, 1]]),
                                                           np.concatenate([pairs[:, 1], pairs[:, 0]]))), shape=(n, n)).tocsr()
    kept = np.zeros(n, bool)
    for i in order[np.diff(graph.indptr)[order] > 0]:  # rows with edges, by priority
        neighbours = graph.indices[graph.indptr[i]: graph.indptr[i + 1]]
        keepers = neighbours[kept[neighbours]]
        if len(keepers):
            rep[i] = keepers[np.argmin(priority[keepers])]
        else:
            kept[i] = True
    return rep


def representatives(n: int, exact: np.ndarray, near: np.ndarray, pixels: np.ndarray, keep: str) -> np.ndarray:
    """Exact copies collapse onto their first listed row, which alone takes part in the near-duplicate
    rule (``keep_one``); a row's representative is its exact group's."""
    near = exact[near]
    near = near[near[:, 0] != near[:, 1]]
    near = np.unique(np.sort(near, axis=1), axis=0) if len(near) else near.reshape(0, 2)
    return keep_one(n, near, pixels, keep)[exact]


def id_rank(ids, seed: int, count: int = -1) -> np.ndarray:
    """A per-image order that depends only on (seed, id); ``ids`` may be a stream."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64, count=count)


def balanced(clusters: np.ndarray, rank: np.ndarray, budget: int | None) -> np.ndarray:
    """Indices into ``clusters`` (of the candidates) chosen by water-filling the budget across clusters."""
    if budget is None or budget >= len(clusters):
        return np.arange(len(clusters))
    labels, sizes = np.unique(clusters, return_counts=True)
    lo, hi = 0, int(sizes.max())
    while lo < hi:  # the largest per-cluster cap t with sum(min(size, t)) <= budget
        t = (lo + hi + 1) // 2
        lo, hi = (t, hi) if np.minimum(sizes, t).sum() <= budget else (lo, t - 1)
    quota = np.minimum(sizes, lo)
    extra = budget - int(quota.sum())
    above = np.flatnonzero(sizes > lo)
    quota[above[np.lexsort((labels[above], -sizes[above]))][:extra]] += 1
    order = np.lexsort((rank, clusters))
    sorted_clusters = clusters[order]
    starts = np.searchsorted(sorted_clusters, labels)
    position = np.arange(len(order)) - starts[np.searchsorted(labels, sorted_clusters)]
    quota_of = quota[np.searchsorted(labels, sorted_clusters)]
    return np.sort(order[position < quota_of])


# ------------------------------------------------------------------------------- checkpoints
def checkpoint(folder: str, name: str, key: dict, compute) -> dict:
    """``compute()``'s arrays, saved as ``folder/name.npz`` with ``key`` (atomically); read back
    instead of recomputed when the saved key matches."""
    path = os.path.join(folder, name + ".npz")
    stamp = json.dumps(key, sort_keys=True)
    if os.path.isfile(path):
        with np.load(path) as saved:
            if str(saved["_key"]) == stamp:
                return {k: saved[k] for k in saved.files if k != "_key"}
    result = compute()
    buf = io.BytesIO()
    np.savez(buf, _key=np.array(stamp), **{k: np.asarray(v) for k, v in result.items()})
    os.makedirs(folder, exist_ok=True)
    write_atomic(path, buf.getvalue())
    return result
