"""Mixtures: ratios, determinism, rank-disjointness, resume; transforms keep depth exact."""
from collections import Counter

import numpy as np
import pytest

from distill.data.mixture import MixtureGroup, MixtureSampler, split_batch
from distill.data.sample import Sample
from distill.data.transforms import TrainTransform
from distill.preprocessing import inference_size, resize_for_inference


def groups(labeled_slots=2, pseudo_slots=4):
    return [
        MixtureGroup("labeled", sizes=[100, 300], weights=[1.0, 3.0], slots=labeled_slots),
        MixtureGroup("pseudo", sizes=[1000], weights=[1.0], slots=pseudo_slots),
    ]


def draw(sampler, steps):
    return [sampler.next_batch() for _ in range(steps)]


def test_split_batch_ratio():
    assert split_batch(6, [1, 2], ["labeled", "pseudo"]) == [2, 4]
    with pytest.raises(ValueError, match="batch_size 7 cannot be split in the ratio labeled=1 : pseudo=2"):
        split_batch(7, [1, 2], ["labeled", "pseudo"])


def test_group_ratio_per_batch_and_dataset_weights():
    batches = draw(MixtureSampler(groups(), seed=0), 500)
    for batch in batches:
        assert Counter(g for g, *_ in batch) == {0: 2, 1: 4}  # 1 : 2 in every batch
    per_dataset = Counter(d for batch in batches for g, d, *_ in batch if g == 0)
    assert per_dataset[1] / (per_dataset[0] + per_dataset[1]) == pytest.approx(0.75, abs=0.03)


def test_size_weighting_is_concatenation():
    sampler = MixtureSampler([MixtureGroup("all", sizes=[100, 900], weights=[1, 1], slots=10, weighting="size")], seed=0)
    counts = Counter(d for batch in draw(sampler, 300) for _, d, *_ in batch)
    assert counts[1] / 3000 == pytest.approx(0.9, abs=0.02)


def test_deterministic_given_seed():
    assert draw(MixtureSampler(groups(), seed=3), 50) == draw(MixtureSampler(groups(), seed=3), 50)
    assert draw(MixtureSampler(groups(), seed=3), 50) != draw(MixtureSampler(groups(), seed=4), 50)


def test_epoch_without_replacement():
    sampler = MixtureSampler([MixtureGroup("g", sizes=[30], weights=[1], slots=5)], seed=0)
    seen = [i for batch in draw(sampler, 6) for _, _, i, _ in batch]
    assert sorted(seen) == list(range(30))  # one epoch: every sample once
    second = [i for batch in draw(sampler, 6) for _, _, i, _ in batch]
    assert sorted(second) == list(range(30)) and second != seen  # reshuffled


def test_ranks_see_disjoint_samples():
    world = 3
    per_rank = []
    for rank in range(world):
        sampler = MixtureSampler([MixtureGroup("g", sizes=[90], weights=[1], slots=5)], seed=7, rank=rank, world_size=world)
        per_rank.append({i for batch in draw(sampler, 6) for _, _, i, _ in batch})
    assert all(len(s) == 30 for s in per_rank)
    assert set.union(*per_rank) == set(range(90))
    assert not (per_rank[0] & per_rank[1]) and not (per_rank[1] & per_rank[2])


def test_resume_continues_the_same_order():
    reference = MixtureSampler(groups(), seed=1)
    expected = draw(reference, 40)
    interrupted = MixtureSampler(groups(), seed=1)
    draw(interrupted, 37)  # the loader prefetched ahead of the trainer, which consumed 25
    state = interrupted.state_at(25)
    resumed = MixtureSampler(groups(), seed=1)
    resumed.load_state(state)
    assert draw(resumed, 15) == expected[25:]
    with pytest.raises(ValueError, match="seed"):
        MixtureSampler(groups(), seed=2).load_state(state)


def scene(h=48, w=64, with_k=True):
    rng = np.random.default_rng(0)
    cols = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w)).copy()  # target = source column
    valid = rng.random((h, w)) > 0.1
    k = np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]]) if with_k else None
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Sample(image, cols, valid, "depth", "metric", "test", "k0", intrinsics=k)


def test_train_transform_keeps_depth_values_and_follows_intrinsics():
    s = scene()
    t = TrainTransform(size=28)
    crops = set()
    for seed in range(8):
        out = t(s, seed)
        assert out.image.shape == (28, 28, 3) and out.target.shape == (28, 28) and out.valid.dtype == bool
        # nearest-neighbour: every value is one of the source columns, never interpolated
        assert np.all(np.isin(out.target, s.target[0]))
        # a pixel keeps its viewing ray: |u - cx| / fx matches the source column's within one pixel
        k, j = out.intrinsics, np.arange(28)
        slope_out = np.abs(j - k[0, 2]) / k[0, 0]
        slope_src = np.abs(out.target[5] - 31.5) / 40.0
        assert np.max(np.abs(slope_out - slope_src)) < 1.0 / k[0, 0]
        crops.add((out.target[0, 0], out.target[0, -1]))
    assert len(crops) > 2  # random crops and flips differ by seed
    again = t(s, 3)
    assert np.array_equal(again.image, t(s, 3).image)  # deterministic per seed


def test_eval_transform_sizes():
    assert inference_size(480, 640) == (518, 686)  # 518 x 690.7 -> nearest multiple of 14
    assert all(x % 14 == 0 and x >= 518 for x in inference_size(375, 1242))
    assert resize_for_inference(scene(with_k=False).image).shape[:2] == inference_size(48, 64)
    assert inference_size(100, 1000, max_aspect=4.0) == (210, 2072)  # longer side capped at 518 x 4
