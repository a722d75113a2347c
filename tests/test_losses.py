"""Losses: hand-computed cases, invariances, empty masks, precision, gradients, CutMix regions."""
import math

import pytest
import torch

from distill import alignment as A
from distill import losses as L


def rand_batch(b=3, h=12, w=16, seed=0, positive=True):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(b, h, w, generator=g, dtype=torch.float64) + (0.5 if positive else -0.5)
    target = torch.rand(b, h, w, generator=g, dtype=torch.float64) + (0.5 if positive else -0.5)
    mask = torch.rand(b, h, w, generator=g) > 0.2
    return pred, target, mask


# --- hand-computed cases --------------------------------------------------------------------------


def test_ssi_loss_hand_computed():
    # pred [1, 2, 3, 10]: median (lower) 2, deviations 1,0,1,8 -> MAD 2.5 -> normalised -0.4, 0, 0.4, 3.2
    # target [1, 2, 3, 4]: median 2, MAD (1+0+1+2)/4 = 1 -> -1, 0, 1, 2
    # |diff| = 0.6, 0, 0.6, 1.2 -> mean 0.6
    pred = torch.tensor([[[1.0, 2.0, 3.0, 10.0]]], dtype=torch.float64)
    target = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]], dtype=torch.float64)
    mask = torch.ones_like(pred, dtype=torch.bool)
    assert L.ssi_loss(pred, target, mask).item() == pytest.approx(0.6)
    # trim 0.25 drops the largest residual (1.2): mean of 0.6, 0, 0.6
    assert L.ssi_loss(pred, target, mask, trim=0.25).item() == pytest.approx(0.4)


def test_ssi_lsq_loss_hand_computed():
    # pred [0, 1, 2], target [0, 1, 5]: least squares s = 2.5, t = -0.5 -> residuals -0.5, 1, -0.5
    # sum r^2 = 1.5, divided by 2 * 3 -> 0.25
    pred = torch.tensor([[[0.0, 1.0, 2.0]]], dtype=torch.float64)
    target = torch.tensor([[[0.0, 1.0, 5.0]]], dtype=torch.float64)
    mask = torch.ones_like(pred, dtype=torch.bool)
    assert L.ssi_lsq_loss(pred, target, mask).item() == pytest.approx(0.25)
    s, t = A.lsq_scale_shift(pred.flatten(1), target.flatten(1), mask.flatten(1))
    assert (s.item(), t.item()) == pytest.approx((2.5, -0.5))


def test_ssi_lsq_is_pooled_over_the_batch():
    pred = torch.tensor([[[0.0, 1.0, 2.0, 0.0]], [[0.0, 1.0, 2.0, 3.0]]], dtype=torch.float64)
    target = torch.tensor([[[0.0, 1.0, 5.0, 0.0]], [[1.0, 3.0, 5.0, 7.0]]], dtype=torch.float64)
    mask = torch.tensor([[[1, 1, 1, 0]], [[1, 1, 1, 1]]], dtype=torch.bool)
    # image 0 contributes 1.5 (3 pixels), image 1 is exactly affine (0): 1.5 / (2 * 7)
    assert L.ssi_lsq_loss(pred, target, mask).item() == pytest.approx(1.5 / 14)


def test_gradient_matching_hand_computed():
    # Residual (alignment none) of a 2x3 image: [[0, 1, 3], [0, 0, 0]]
    # x: |1-0| + |3-1| + 0 + 0 = 3 ; y: |0-0| + |0-1| + |0-3| = 4 -> 7 / 6 pixels at scale 0.
    # scale 1 (stride 2): residual [[0, 3]] -> x: 3, no y pairs -> 3 / 2.
    pred = torch.tensor([[[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    target = torch.zeros_like(pred)
    mask = torch.ones_like(pred, dtype=torch.bool)
    assert L.gradient_matching_loss(pred, target, mask, scales=1, alignment="none").item() == pytest.approx(7 / 6)
    assert L.gradient_matching_loss(pred, target, mask, scales=2, alignment="none").item() == pytest.approx(7 / 6 + 3 / 2)
    # Invalidating pixel (0, 1) removes every pair that touches it: x |3-1| and |1-0| gone, y |0-1| gone.
    mask[0, 0, 1] = False
    assert L.gradient_matching_loss(pred, target, mask, scales=1, alignment="none").item() == pytest.approx(3 / 5)


def test_uts_loss_hand_computed():
    # log ratios r = log 1, log 2, log 4 -> median log 2 -> |r - med| = log 2, 0, log 2 -> mean 2/3 log 2
    pred = torch.tensor([[[1.0, 2.0, 4.0]]], dtype=torch.float64)
    target = torch.ones_like(pred)
    mask = torch.ones_like(pred, dtype=torch.bool)
    assert L.uts_loss(pred, target, mask).item() == pytest.approx(2 / 3 * math.log(2))


def test_utss_loss_hand_computed():
    # pred [0, 0, 3]: mean 1, std sqrt(2) -> [-1, -1, 2] / sqrt 2; target [0, 1, 2]: mean 1, std sqrt(2/3)
    pred = torch.tensor([[[0.0, 0.0, 3.0]]], dtype=torch.float64)
    target = torch.tensor([[[0.0, 1.0, 2.0]]], dtype=torch.float64)
    mask = torch.ones_like(pred, dtype=torch.bool)
    p = [-1 / math.sqrt(2), -1 / math.sqrt(2), 2 / math.sqrt(2)]
    t = [-1 / math.sqrt(2 / 3), 0.0, 1 / math.sqrt(2 / 3)]
    expected = sum(abs(a - b) for a, b in zip(p, t)) / 3
    assert L.utss_loss(pred, target, mask).item() == pytest.approx(expected)


def test_silog_hand_computed():
    # d = log t - log p = 0, log 2 -> mean d^2 = (log 2)^2 / 2, (mean d)^2 = (log 2)^2 / 4
    pred = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    target = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    mask = torch.ones_like(pred, dtype=torch.bool)
    expected = math.sqrt(math.log(2) ** 2 / 2 - 0.5 * math.log(2) ** 2 / 4)
    assert L.silog_loss(pred, target, mask).item() == pytest.approx(expected)


def test_drop_largest_losses_matches_quantile_rule():
    loss = torch.arange(1.0, 11.0)[None]  # 1..10
    mask = torch.ones_like(loss, dtype=torch.bool)
    kept = L.drop_largest_losses(loss, mask, 0.1)
    assert loss[kept].tolist() == list(range(1, 10))
    assert loss[kept].mean() == pytest.approx(loss[loss < torch.quantile(loss, 0.9)].mean())
    # per sample: a second sample with 5 valid pixels drops floor(0.5) = 0 of them
    loss2 = torch.stack([torch.arange(10.0), torch.arange(10.0)])
    mask2 = torch.ones_like(loss2, dtype=torch.bool)
    mask2[1, 5:] = False
    kept2 = L.drop_largest_losses(loss2, mask2, 0.1)
    assert kept2.sum(-1).tolist() == [9, 5]
    assert not kept2[0, 9]


def test_feature_alignment_hand_computed_and_margin():
    s = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]], requires_grad=True)
    f = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    # 1 - cos: 1 (kept), 0 (within margin, left out), 1 - 1/sqrt 2 = 0.293 (kept)
    loss = L.feature_alignment_loss(s, f, margin=0.15)
    assert loss.item() == pytest.approx((1 + 1 - 1 / math.sqrt(2)) / 2, rel=1e-6)
    loss.backward()
    assert torch.all(s.grad[0, 1] == 0)  # a token within the margin gets no gradient
    assert s.grad[0, 0].abs().sum() > 0
    # per-sample mask: nothing kept -> zero, finite gradient
    s.grad = None
    zero = L.feature_alignment_loss(s, f, mask=torch.tensor([False]))
    zero.backward()
    assert zero.item() == 0 and torch.all(s.grad == 0)


# --- invariances ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [L.ssi_loss, L.ssi_lsq_loss, L.utss_loss])
def test_scale_and_shift_invariant_losses(fn):
    pred, target, mask = rand_batch()
    base = fn(pred, target, mask)
    assert fn(3.7 * pred + 1.3, target, mask).item() == pytest.approx(base.item(), rel=1e-9)
    assert base.item() > 1e-3


def test_ssi_invariant_to_target_affine_too():
    pred, target, mask = rand_batch()
    assert L.ssi_loss(pred, 2 * target - 0.2, mask).item() == pytest.approx(L.ssi_loss(pred, target, mask).item())


def test_uts_scale_invariant_not_shift_invariant():
    pred, target, mask = rand_batch()
    base = L.uts_loss(pred, target, mask).item()
    assert L.uts_loss(5.0 * pred, target, mask).item() == pytest.approx(base, rel=1e-9)
    assert L.uts_loss(pred, 0.1 * target, mask).item() == pytest.approx(base, rel=1e-9)
    assert abs(L.uts_loss(pred + 1.0, target, mask).item() - base) > 1e-3


def test_lsq_alignment_exact_on_affine_data():
    pred, _, mask = rand_batch()
    target = 2.5 * pred - 0.7
    assert L.ssi_lsq_loss(pred, target, mask).item() == pytest.approx(0.0, abs=1e-20)
    assert L.gradient_matching_loss(pred, target, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert L.ssi_loss(pred, target, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_gp2_loss_zero_on_consistent_targets_and_needs_shift_for_complete():
    g = torch.Generator().manual_seed(1)
    depth = torch.rand(4, 10, 10, generator=g, dtype=torch.float64) * 5 + 1
    mask = torch.ones_like(depth, dtype=torch.bool)
    complete = torch.tensor([True, True, False, False])
    # complete samples carry depth up to scale, the others disparity up to scale and shift
    target = torch.where(complete[:, None, None], 3.0 * depth, 2.0 / depth + 0.5)
    assert L.gp2_loss(depth, target, mask, complete).item() == pytest.approx(0.0, abs=1e-9)
    # GP2 = UTSS (in disparity) on all samples + weight * UTS (in depth) on the complete ones
    shifted = depth + 2.0
    target_disparity = torch.where(complete[:, None, None], 1.0 / target, target)
    utss = L.utss_loss(1.0 / shifted, target_disparity, mask).item()
    uts = L.uts_loss(shifted[complete], target[complete], mask[complete]).item()
    assert uts > 1e-2  # a shift of depth is an error UTS sees
    assert L.gp2_loss(shifted, target, mask, complete, uts_weight=0.5).item() == pytest.approx(utss + 0.5 * uts)


# --- robustness ------------------------------------------------------------------------------------


ALL_PIXEL_LOSSES = [
    lambda p, t, m, **k: L.ssi_loss(p, t, m, **k),
    lambda p, t, m, **k: L.ssi_loss(p, t, m, trim=0.2, **k),
    lambda p, t, m, **k: L.ssi_lsq_loss(p, t, m, **k),
    lambda p, t, m, **k: L.gradient_matching_loss(p, t, m, **k),
    lambda p, t, m, **k: L.gradient_matching_loss(p, t, m, alignment="median", **k),
    lambda p, t, m, **k: L.uts_loss(p, t, m, **k),
    lambda p, t, m, **k: L.utss_loss(p, t, m, **k),
    lambda p, t, m, **k: L.gp2_loss(p, t, m, torch.tensor([True, False, True]), **k),
    lambda p, t, m, **k: L.silog_loss(p, t, m),
]
IDS = ["ssi", "ssi_trim", "ssi_lsq", "grad_lsq", "grad_median", "uts", "utss", "gp2", "silog"]


@pytest.mark.parametrize("fn", ALL_PIXEL_LOSSES, ids=IDS)
def test_empty_mask_gives_zero_and_zero_gradient(fn):
    pred, target, _ = rand_batch()
    pred.requires_grad_(True)
    target[0, 0, 0] = float("nan")  # invalid pixels may hold anything
    loss = fn(pred, target, torch.zeros_like(pred, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(pred.grad).all() and torch.all(pred.grad == 0)


@pytest.mark.parametrize("fn", ALL_PIXEL_LOSSES, ids=IDS)
def test_gradients_finite_and_invalid_pixels_ignored(fn):
    pred, target, mask = rand_batch()
    target = torch.where(mask, target, torch.full_like(target, float("nan")))
    pred = torch.where(mask, pred, torch.zeros_like(pred)).requires_grad_(True)  # 0: log/1/x hazards
    loss = fn(pred, target, mask)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(pred.grad).all()
    assert torch.all(pred.grad[~mask] == 0)


@pytest.mark.parametrize("fn", ALL_PIXEL_LOSSES, ids=IDS)
def test_float32_matches_float64(fn):
    pred, target, mask = rand_batch()
    l64 = fn(pred, target, mask).item()
    l32 = fn(pred.float(), target.float(), mask).item()
    assert l32 == pytest.approx(l64, rel=1e-4)


@pytest.mark.parametrize("fn", ALL_PIXEL_LOSSES, ids=IDS)
def test_computed_in_float32_under_bf16(fn):
    pred, target, mask = rand_batch()
    p16, t16 = pred.bfloat16(), target.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(p16, t16, mask)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(fn(p16.float(), t16.float(), mask).item(), rel=1e-6)


# --- CutMix regions ---------------------------------------------------------------------------------


def test_regions_align_separately_and_weight_by_area():
    g = torch.Generator().manual_seed(3)
    h, w = 8, 8
    base = torch.rand(1, h, w, generator=g, dtype=torch.float64) + 0.5
    left = torch.zeros(1, h, w, dtype=torch.bool)
    left[..., : w // 4] = True  # a quarter of the image
    regions = torch.stack([left, ~left], dim=1)
    # Each region of the target is a different affine map of the prediction: whole-image alignment
    # cannot fit both, per-region alignment fits each exactly.
    target = torch.where(left, 2 * base + 1, 0.5 * base + 3)
    mask = torch.ones_like(base, dtype=torch.bool)
    for fn in (L.ssi_loss, L.ssi_lsq_loss, L.utss_loss, L.gradient_matching_loss):
        assert fn(base, target, mask).item() > 1e-3
        assert fn(base, target, mask, regions=regions).item() == pytest.approx(0.0, abs=1e-9)
    # Area weighting: region losses a (area 1/4) and b (area 3/4) combine to a/4 + 3b/4.
    noisy = target + 0.3 * torch.rand(1, h, w, generator=g, dtype=torch.float64)
    a = L.ssi_loss(base[:, :, : w // 4], noisy[:, :, : w // 4], mask[:, :, : w // 4]).item()
    b = L.ssi_loss(base[:, :, w // 4 :], noisy[:, :, w // 4 :], mask[:, :, w // 4 :]).item()
    assert L.ssi_loss(base, noisy, mask, regions=regions).item() == pytest.approx(a / 4 + 3 * b / 4)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        L.ssi_loss(torch.rand(2, 3), torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="regions"):
        L.ssi_loss(torch.rand(1, 4, 4), torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool),
                   regions=torch.ones(1, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("fn", [L.ssi_loss, L.uts_loss, L.utss_loss])
def test_confidence_weight_zero_pixels_get_no_gradient(fn):
    pred, target, mask = rand_batch()
    pred.requires_grad_(True)
    confidence = torch.rand_like(pred)
    confidence[:, :4] = 0.0
    loss = fn(pred, target, mask, weight=confidence)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(pred.grad).all()
    assert torch.all(pred.grad[:, :4] == 0)  # zero-confidence pixels contribute nothing
    assert pred.grad[:, 4:][mask[:, 4:]].abs().sum() > 0
    # unit weights are the unweighted loss
    assert fn(pred, target, mask, weight=torch.ones_like(pred)).item() == pytest.approx(fn(pred, target, mask).item())
