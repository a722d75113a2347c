"""The curate command's options: one dataclass (``distill.config``: YAML, ``key=value``, flags).

The embedding pass (per image facts and embeddings, the slow part) is frozen in ``C/_job/job.json``
by the first run like a labeling job's output-defining options; the selection options (threshold,
budget, filters) may change between runs: a rerun with other values re-selects from the stored
embeddings in minutes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass
class CurateConfig:
    input: str | None = None  # required: directory, glob, list file, .tar shard(s), URLs or hf:NAME_OR_PATH (as labeling)
    output: str | None = None  # required: the curation folder (facts, embeddings, selection, report)
    input_type: Literal["auto", "files", "list", "tars", "hf", "urls"] = "auto"  # the input's kind; auto: detected
    hf_split: str = "train"  # Hugging Face inputs: split
    image_column: str = "image"  # Hugging Face inputs: the image column
    key_column: str | None = None  # Hugging Face inputs: the key column; default: row number

    # embedding pass (frozen in _job/job.json)
    # a DINOv2 (hub id or directory), the encoder of a depth model, an offline prior by name
    # (efficientnet-lite0: ImageNet weights from a registry package, no hub) or timm:<arch>
    encoder: str = "facebook/dinov2-small"  # the frozen encoder of the embeddings (see docs/curation.md)
    embed_size: int = 224  # encoder input: the image resized (not cropped) to this square
    flip_invariant: bool = True  # embedding = mean of the image's and its mirror's: a flipped copy is a duplicate
    shard_size: int = 1000  # inputs per unit (one claim, one index, one embedding file)
    max_pixels: int = 100_000_000  # decompression-bomb guard: larger images are errors

    # selection (may change between runs)
    min_side: int = 64  # images with a shorter side are junk ("tiny")
    max_aspect: float = 4.0  # longer / shorter side above this is junk ("aspect")
    blank_std: float = 4.0  # grey-level standard deviation (0-255) below this is junk ("blank")
    drop_grayscale: bool = False  # grayscale images are junk too
    threshold: float | None = None  # cosine similarity of near-duplicates; None: the encoder's measured value
    phash_bits: int = 8  # also near-duplicates: perceptual hashes this many bits apart or fewer, within a leaf (0: off)
    keep: Literal["largest", "first"] = "largest"  # the one kept of a duplicate group (ties: the first listed)
    leaf_size: int = 1000  # the mean size of the finest k-means clusters (pairs are searched within them)
    margin: float = 0.03  # an image this close to a second centroid is searched in that cluster too
    budget: int | None = None  # images to select, balanced across clusters; None: every kept image
    seed: int = 0  # k-means and the order within clusters
    threads: int = 0  # faiss / torch threads; 0: their default (fix it for byte-identical reruns)

    # running
    batch_size: int = 32  # images per encoder forward
    num_workers: int = 2  # decoding worker processes; 0: in the main process
    device: str = "auto"  # auto: cuda if available
    claim_units: int = 4  # units claimed at a time
    claim_expiry_s: float = 600.0  # a claim not renewed for this long is taken over
    report: bool = True  # write report.json, the histogram and the contact sheets
    progress: bool = True  # progress bar on stderr (first process)

    def __post_init__(self):
        checks = [
            (self.embed_size >= 14, "embed_size must be >= 14"),
            (self.shard_size >= 1, "shard_size must be >= 1"),
            (self.min_side >= 1, "min_side must be >= 1"),
            (self.max_aspect >= 1, "max_aspect must be >= 1"),
            (self.threshold is None or 0 < self.threshold <= 1, "threshold must be in (0, 1]"),
            (0 <= self.phash_bits <= 32, "phash_bits must be in [0, 32]"),
            (self.leaf_size >= 2, "leaf_size must be >= 2"),
            (0 <= self.margin < 1, "margin must be in [0, 1)"),
            (self.budget is None or self.budget >= 1, "budget must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.claim_units >= 1, "claim_units must be >= 1"),
            (self.claim_expiry_s >= 4, "claim_expiry_s must be >= 4"),
            (self.max_pixels >= 1, "max_pixels must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


EMBEDDING_OPTIONS = ("input", "input_type", "hf_split", "image_column", "key_column", "encoder", "embed_size",
                     "flip_invariant", "shard_size", "max_pixels")


def embedding_options(cfg: CurateConfig) -> dict:
    """The options frozen in the job file: everything that shapes the facts and embeddings."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k in EMBEDDING_OPTIONS}


# Near-duplicate thresholds measured by benchmarks/curate.py on its tuning corpus (cosine of
# flip-invariant embeddings at embed_size 224); an encoder not listed needs threshold=.
MEASURED_THRESHOLDS = {
    "efficientnet-lite0": 0.82,  # benchmarks/curate.py --part corpus, 2026-12-07 (with phash_bits=8)
}
