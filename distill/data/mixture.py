"""Mixtures of datasets: which sample fills each slot of each batch, on each rank, at each step.

A batch is made of *groups* in a fixed ratio (Depth Anything V1: labeled : unlabeled = 1 : 2).
Within a group each slot picks a dataset by weight (``weighting="size"``: proportional to dataset
size, i.e. concatenation as Depth Anything V2 did), then takes that dataset's next sample from a
per-epoch permutation. Rank r of W takes positions r, r + W, ... of every permutation, so ranks
never share a sample within an epoch. Everything is a function of (seed, step, rank), and the
sampler can report its state at any recent step, so a resumed run continues the same order even
though the DataLoader had prefetched ahead.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass
class MixtureGroup:
    name: str
    sizes: list[int]  # dataset lengths
    weights: list[float]  # relative; ignored when weighting == "size"
    slots: int  # samples of this group per batch (per rank)
    weighting: str = "weights"

    def probabilities(self) -> np.ndarray:
        w = np.asarray(self.sizes if self.weighting == "size" else self.weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"group {self.name!r}: dataset weights must be >= 0 with a positive sum, got {list(w)}")
        return w / w.sum()


def split_batch(batch_size: int, parts: list[int], names: list[str]) -> list[int]:
    """Slots per group for a per-batch ratio; the ratio must divide the batch exactly."""
    total = sum(parts)
    if total <= 0 or any(p < 0 for p in parts) or batch_size % total:
        ratio = " : ".join(f"{n}={p}" for n, p in zip(names, parts))
        raise ValueError(f"batch_size {batch_size} cannot be split in the ratio {ratio}")
    return [batch_size // total * p for p in parts]


class MixtureSampler:
    """Yields lists of (group, dataset, index, augmentation_seed) batches, forever."""

    def __init__(self, groups: list[MixtureGroup], seed: int = 0, rank: int = 0, world_size: int = 1, history: int = 4096):
        self.groups, self.seed, self.rank, self.world_size = groups, seed, rank, world_size
        for g in groups:
            if any(n < world_size for n in g.sizes):
                raise ValueError(f"group {g.name!r}: every dataset needs at least {world_size} samples (one per rank), sizes {g.sizes}")
        self._probabilities = [g.probabilities() for g in groups]
        self.step = 0
        # per dataset: [epoch, position within this rank's share of the epoch]
        self.cursors = [[[0, 0] for _ in g.sizes] for g in groups]
        self._history: OrderedDict[int, list] = OrderedDict()
        self._history_size = history
        self._permutations: dict = {}

    def _permutation(self, g: int, d: int, epoch: int) -> np.ndarray:
        key = (g, d, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 64:
                self._permutations.clear()
            rng = np.random.default_rng([self.seed, 1, g, d, epoch])
            self._permutations[key] = rng.permutation(self.groups[g].sizes[d])[self.rank :: self.world_size]
        return self._permutations[key]

    def _next_index(self, g: int, d: int) -> int:
        epoch, pos = self.cursors[g][d]
        perm = self._permutation(g, d, epoch)
        # every rank's share has the same length, so ranks stay in step across epochs
        share = self.groups[g].sizes[d] // self.world_size
        if pos >= share:
            epoch, pos = epoch + 1, 0
            perm = self._permutation(g, d, epoch)
        self.cursors[g][d] = [epoch, pos + 1]
        return int(perm[pos])

    def next_batch(self) -> list[tuple[int, int, int, int]]:
        self._history[self.step] = [[list(c) for c in group] for group in self.cursors]
        while len(self._history) > self._history_size:
            self._history.popitem(last=False)
        rng = np.random.default_rng([self.seed, 2, self.step, self.rank])
        batch = []
        for g, group in enumerate(self.groups):
            choices = rng.choice(len(group.sizes), size=group.slots, p=self._probabilities[g])
            for d in choices:
                batch.append((g, int(d), self._next_index(g, int(d)), int(rng.integers(2**31))))
        self.step += 1
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_at(self, step: int) -> dict:
        """The state from which ``next_batch`` produces the batch of ``step`` (a recent step)."""
        if step == self.step:
            cursors = self.cursors
        elif step in self._history:
            cursors = self._history[step]
        else:
            raise KeyError(f"sampler state for step {step} is no longer kept (now at step {self.step})")
        return {"step": step, "cursors": [[list(c) for c in group] for group in cursors], "seed": self.seed}

    def load_state(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this run uses seed {self.seed}")
        if [len(g) for g in state["cursors"]] != [len(g.sizes) for g in self.groups]:
            raise ValueError("sampler state does not match the configured datasets (a dataset was added or removed)")
        self.step = int(state["step"])
        self.cursors = [[list(c) for c in group] for group in state["cursors"]]
        self._history.clear()
