"""Output spaces: conversions and point clouds."""
import numpy as np
import pytest
import torch

from distill import spaces as S


def test_conversions_round_trip_numpy_and_torch():
    depth = np.array([[0.5, 2.0], [4.0, 10.0]], dtype=np.float64)
    for src in S.SPACES:
        x = S.convert(depth, "depth", src)
        assert isinstance(x, np.ndarray)
        np.testing.assert_allclose(S.to_depth(x, src), depth, rtol=1e-12)
    t = torch.tensor(depth)
    assert torch.allclose(S.to_disparity(t, "depth"), 1 / t)
    assert torch.allclose(S.to_log_depth(S.to_disparity(t, "depth"), "disparity"), t.log())
    with pytest.raises(ValueError, match="inverse_depth"):
        S.convert(depth, "inverse_depth", "depth")


def test_output_space_validation():
    assert S.DEPTH_UP_TO_SCALE.gives_point_cloud and not S.RELATIVE_DISPARITY.gives_point_cloud
    with pytest.raises(ValueError, match="geometry"):
        S.OutputSpace("depth", "affine")


def test_point_cloud_hand_computed():
    k = S.intrinsics_matrix(fx=2.0, fy=4.0, cx=1.0, cy=0.0)
    depth = np.array([[2.0, 0.0, 4.0]])  # the middle pixel is invalid
    points = S.point_cloud(depth, k)
    # u=0: x = (0-1)*2/2 = -1; u=2: x = (2-1)*4/2 = 2; v=0: y = 0
    np.testing.assert_allclose(points, [[-1.0, 0.0, 2.0], [2.0, 0.0, 4.0]])


def test_point_cloud_from_prediction_needs_known_shift():
    k = S.intrinsics_matrix(1, 1, 0, 0)
    disp = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="unknown shift"):
        S.prediction_point_cloud(disp, S.RELATIVE_DISPARITY, k)
    pts = S.prediction_point_cloud(np.log(np.full((2, 2), 3.0)), S.OutputSpace("log_depth", "uts"), k)
    np.testing.assert_allclose(pts[:, 2], 3.0)
