"""Metrics and alignment: hand-computed cases, protocol invariances, crops."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import metrics as M

NYU = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nyu2_sample"


def test_depth_metrics_hand_computed():
    # 10 pixels: gt all 2; pred 2 on five pixels, 4 on five pixels.
    gt = torch.full((1, 2, 5), 2.0)
    pred = gt.clone()
    pred[0, 1] = 4.0
    mask = torch.ones_like(gt, dtype=torch.bool)
    m = M.depth_metrics(pred, gt, mask)
    assert m["abs_rel"] == pytest.approx(0.5)  # (0 * 5 + 1 * 5) / 10
    assert m["sq_rel"] == pytest.approx(1.0)  # (4 / 2) * 5 / 10
    assert m["rmse"] == pytest.approx(math.sqrt(2.0))  # sqrt(4 * 5 / 10)
    assert m["rmse_log"] == pytest.approx(math.sqrt(0.5) * math.log(2))
    assert m["log10"] == pytest.approx(0.5 * math.log10(2))
    d = math.log(2)  # d = log g - log p: 0 or -log 2
    assert m["silog"] == pytest.approx(math.sqrt(0.5 * d * d - 0.5 * (0.5 * d) ** 2))
    assert (m["d1"], m["d2"], m["d3"]) == pytest.approx((0.5, 0.5, 0.5))  # ratio 2 > 1.25^3 = 1.95
    assert m["num_images"] == 1


def test_depth_metrics_averages_per_image_and_skips_small_images():
    gt = torch.full((3, 4, 4), 1.0)
    pred = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 1.5), torch.full((4, 4), 9.0)])
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[0, :2] = False  # 8 valid pixels: fewer than 10, image 0 skipped
    mask[2] = False
    mask[2, 0, :3] = True  # image 2: 3 valid pixels -> skipped
    m = M.depth_metrics(pred, gt, mask)
    assert m["num_images"] == 1
    assert m["abs_rel"] == pytest.approx(0.5)
    mask[0] = True  # image 0 now valid with abs_rel 0: average of 0 and 0.5
    assert M.depth_metrics(pred, gt, mask)["abs_rel"] == pytest.approx(0.25)


def test_depth_metrics_nan_when_nothing_valid():
    m = M.depth_metrics(torch.ones(1, 3, 3), torch.ones(1, 3, 3), torch.zeros(1, 3, 3, dtype=torch.bool))
    assert math.isnan(m["abs_rel"]) and m["num_images"] == 0


def test_align_lsq_exact_on_affine_and_hand_case():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 6, 7, generator=g)
    target = 3.0 * pred + torch.tensor([0.5, -1.0])[:, None, None]
    mask = torch.rand(2, 6, 7, generator=g) > 0.3
    aligned, scale, shift = M.align_lsq(pred, target, mask)
    assert torch.allclose(aligned[mask], target[mask], atol=1e-5)
    assert scale.tolist() == pytest.approx([3.0, 3.0])
    assert shift.tolist() == pytest.approx([0.5, -1.0], abs=1e-6)
    a, s, t = M.align_lsq(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.0, 1.0, 5.0]]), torch.ones(1, 3, dtype=torch.bool))
    assert (s.item(), t.item()) == pytest.approx((2.5, -0.5))
    assert a[0].tolist() == pytest.approx([-0.5, 2.0, 4.5])


def test_align_median_log_scale_only():
    # log gt - log pred = log 2, log 2, log 8 -> median log 2 -> scale 2 (a shift is not removed)
    pred = torch.tensor([[1.0, 2.0, 1.0]])
    gt = torch.tensor([[2.0, 4.0, 8.0]])
    aligned, scale = M.align_median_log(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    assert scale.item() == pytest.approx(2.0)
    assert aligned[0].tolist() == pytest.approx([2.0, 4.0, 2.0])
    # scale invariance of the protocol: metrics after alignment do not depend on pred's scale
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(1, 8, 8, generator=g) + 1
    pred = gt * (1 + 0.2 * torch.rand(1, 8, 8, generator=g))
    mask = torch.ones_like(gt, dtype=torch.bool)
    base = M.depth_metrics(M.align_median_log(pred, gt, mask)[0], gt, mask)
    scaled = M.depth_metrics(M.align_median_log(7 * pred, gt, mask)[0], gt, mask)
    assert scaled["abs_rel"] == pytest.approx(base["abs_rel"], rel=1e-5)


def test_crops_and_benchmark_mask():
    crop = M.nyu_eigen_crop()
    assert crop.shape == (480, 640) and int(crop.sum()) == (471 - 45) * (601 - 41)
    assert crop[45, 41] and not crop[44, 41] and not crop[45, 601]
    gt = torch.full((480, 640), 5.0)
    gt[100, 100] = 12.0  # beyond the 10 m cap
    gt[101, 100] = float("nan")
    mask = M.benchmark_mask("nyu", gt)
    assert int(mask.sum()) == int(crop.sum()) - 2
    kitti = M.kitti_garg_crop(375, 1242)
    assert kitti[200, 600] and not kitti[100, 600]
    with pytest.raises(ValueError, match="benchmark"):
        M.benchmark_mask("mars", gt)


def test_real_nyu_frame_protocol():
    """On a real NYU frame: ground truth against itself is perfect, against a blurred, scaled copy it is not."""
    if not NYU.is_dir():
        pytest.skip("../shared/data/nyu2_sample not present")
    from PIL import Image

    gt = torch.from_numpy(np.asarray(Image.open(NYU / "depth_0.png")).astype(np.float32) / 1000.0)
    assert gt.shape == (480, 640)
    mask = M.benchmark_mask("nyu", gt)
    perfect = M.depth_metrics(gt[None], gt[None], mask[None])
    assert perfect["abs_rel"] == pytest.approx(0.0, abs=1e-7) and perfect["d1"] == 1.0
    # disparity prediction off by scale and shift: the affine-disparity protocol recovers it
    disparity = 1.0 / gt.clamp_min(1e-3)
    pred_disparity = 0.3 * disparity + 0.05
    aligned, _, _ = M.align_lsq(pred_disparity, disparity, mask)
    recovered = 1.0 / aligned.clamp_min(1e-6)
    assert M.depth_metrics(recovered[None], gt[None], mask[None])["abs_rel"] < 1e-4
