"""From a data config to DataLoaders that keep an accelerator fed.

The config names readers (``distill.data.readers.READERS``) grouped as in ``distill.data.mixture``.
A sample that cannot be read is replaced by the next one of the same dataset and reported in the
batch (``bad_samples``); the engine counts them and stops past ``max_bad_fraction``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from distill.config import ConfigError
from distill.data.mixture import MixtureGroup, MixtureSampler, split_batch
from distill.data.sample import SampleError
from distill.data.transforms import TrainTransform, sample_to_tensors
from distill.runtime import first_line

MAX_RETRIES = 16


@dataclass
class DatasetConfig:
    reader: str  # a name of distill.data.readers.READERS
    root: str | None = None  # the dataset's folder or file, passed to the reader as root
    weight: float = 1.0  # relative sampling weight in its group (unused with weighting=size)
    options: dict[str, Any] = field(default_factory=dict)  # the reader's other arguments


@dataclass
class GroupConfig:
    name: str = "labeled"  # the group's name (student.pseudo_group names one)
    parts: int = 1  # this group's share of every batch, e.g. labeled 1 : pseudo 2
    weighting: Literal["weights", "size"] = "weights"  # "size": concatenation (Depth Anything V2)
    datasets: list[DatasetConfig] = field(default_factory=list)  # the datasets mixed in this group


@dataclass
class DataConfig:
    groups: list[GroupConfig] = field(default_factory=list)  # training data: groups sharing every batch by parts
    val: list[DatasetConfig] = field(default_factory=list)  # validation datasets; empty: no validation
    val_max_samples: int = 64  # validation uses the first this many samples of each dataset
    crop_size: int = 518  # training crop side in px (shorter side resized to it); also the validation size
    hflip: bool = True  # random horizontal flip (p=0.5) of training crops
    num_workers: int = 4  # DataLoader worker processes
    prefetch_factor: int = 4  # batches each worker loads ahead
    pin_memory: bool = True  # page-locked host memory for batches (CUDA only)
    persistent_workers: bool = True  # keep DataLoader workers alive between iterations
    max_bad_fraction: float = 0.01  # stop the run past this fraction of unreadable samples


class DataError(ConfigError):
    """A dataset that cannot be opened as configured: one line naming its config key (exit 2)."""


def build_dataset(cfg: DatasetConfig, key: str = "dataset"):
    """The reader a dataset entry names; ``key`` (e.g. ``data.groups.0.datasets.0``) is what an error names."""
    from distill.data.readers import build_reader  # noqa: PLC0415

    kwargs = dict(cfg.options)
    if cfg.root is not None:
        kwargs["root"] = cfg.root
    try:
        return build_reader(cfg.reader, **kwargs)
    except (OSError, ValueError, SampleError) as err:
        raise DataError(f"{key} (reader {cfg.reader!r}): {first_line(err)}") from None


class MixtureDataset(Dataset):
    """Indexed by the sampler's (group, dataset, index, seed) tuples; returns batch rows."""

    def __init__(self, groups: list[list], transforms: list):
        self.groups, self.transforms = groups, transforms

    def __getitem__(self, item):
        g, d, index, seed = item
        dataset = self.groups[g][d]
        bad = []
        for attempt in range(MAX_RETRIES):
            i = (index + attempt) % len(dataset)
            try:
                sample = dataset[i]
                row = sample_to_tensors(self.transforms[g](sample, seed))
                row["group"] = torch.tensor(g)
                row["bad_samples"] = bad
                return row
            except (SampleError, OSError, ValueError) as err:
                bad.append(f"{type(dataset).__name__}[{i}]: {first_line(err)}")
        raise RuntimeError(f"{MAX_RETRIES} consecutive unreadable samples in {type(dataset).__name__}: {bad[-1]}")

    def __len__(self):  # the sampler, not the length, drives iteration
        return sum(len(ds) for group in self.groups for ds in group)


def collate(rows: list[dict]) -> dict:
    """Stack tensors; keep strings as lists; gather the bad-sample reports of the batch."""
    batch = {}
    for key, value in rows[0].items():
        if key == "bad_samples":
            batch[key] = [b for row in rows for b in row[key]]
        elif torch.is_tensor(value):
            batch[key] = torch.stack([row[key] for row in rows])
        else:
            batch[key] = [row[key] for row in rows]
    return batch


class _StepSampler:
    """Batch sampler view of a MixtureSampler (DataLoader iterates it in the main process)."""

    def __init__(self, sampler: MixtureSampler):
        self.sampler = sampler

    def __iter__(self):
        return iter(self.sampler)


def loader_kwargs(cfg: DataConfig) -> dict:
    workers = cfg.num_workers
    return dict(
        num_workers=workers,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        persistent_workers=cfg.persistent_workers and workers > 0,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        collate_fn=collate,
    )


def build_train_loader(cfg: DataConfig, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, transforms=None):
    """The training DataLoader and its MixtureSampler (whose state goes into checkpoints).

    ``batch_size`` is per process. ``transforms``: one per group (default: the geometric training
    transform at ``crop_size``)."""
    if not cfg.groups or not all(g.datasets for g in cfg.groups):
        raise ValueError("data.groups must list at least one group with at least one dataset")
    datasets = [[build_dataset(d, f"data.groups.{i}.datasets.{j}") for j, d in enumerate(g.datasets)]
                for i, g in enumerate(cfg.groups)]
    slots = split_batch(batch_size, [g.parts for g in cfg.groups], [g.name for g in cfg.groups])
    mixture = [
        MixtureGroup(g.name, [len(ds) for ds in group], [d.weight for d in g.datasets], n, g.weighting)
        for g, group, n in zip(cfg.groups, datasets, slots)
    ]
    sampler = MixtureSampler(mixture, seed=seed, rank=rank, world_size=world_size)
    if transforms is None:
        transforms = [TrainTransform(cfg.crop_size, cfg.hflip) for _ in cfg.groups]
    loader = DataLoader(MixtureDataset(datasets, transforms), batch_sampler=_StepSampler(sampler), **loader_kwargs(cfg))
    return loader, sampler


@dataclass
class ValidationSet:
    """One validation dataset: its reader, this rank's sample indices, and the benchmark whose crop
    and depth range score it (the reader's ``benchmark``, e.g. ``nyu`` for ``NYUReader``; None: the
    whole valid mask, no cap unless the reader has a ``max_depth``: then predictions are clamped to
    it, as ``distill/evaluate.py --max-depth`` does)."""

    reader: Any
    indices: list[int]
    benchmark: str | None
    depth_range: tuple[float, float] | None = None


def build_val_sets(cfg: DataConfig, rank: int = 0, world_size: int = 1) -> list[ValidationSet]:
    """The first ``val_max_samples`` of each validation dataset, dealt round-robin over ranks."""
    readers = [build_dataset(d, f"data.val.{i}") for i, d in enumerate(cfg.val)]
    items = [(d, i) for d, ds in enumerate(readers) for i in range(min(len(ds), cfg.val_max_samples))][rank::world_size]
    sets = []
    for d, ds in enumerate(readers):
        benchmark, cap = getattr(ds, "benchmark", None), getattr(ds, "max_depth", None)
        sets.append(ValidationSet(ds, [i for dd, i in items if dd == d], benchmark,
                                  (1e-3, float(cap)) if cap and benchmark is None else None))
    return sets
