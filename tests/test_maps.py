"""Anomaly-map post-processing against scipy.ndimage.gaussian_filter and a hand-made upsampling."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from scoring.maps import blur_matrix, to_anomaly_maps


@pytest.mark.parametrize("shape, sigma", [((3, 40, 40), 4), ((2, 9, 13), 4), ((2, 30, 25), 1.5)])
def test_blur_equals_scipy(shape, sigma):
    """Includes maps smaller than the 16-pixel radius, where the padding reflects more than once."""
    maps = np.random.default_rng(0).random(shape).astype(np.float32) * 10
    rows, cols = blur_matrix(shape[1], sigma), blur_matrix(shape[2], sigma)
    out = (rows @ torch.from_numpy(maps).double() @ cols.T).numpy()
    for got, m in zip(out, maps):
        expected = gaussian_filter(m.astype(np.float64), sigma=sigma)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_to_anomaly_maps_equals_upsample_then_scipy():
    distances = torch.rand(2, 7, 7, dtype=torch.float64) * 5
    out = to_anomaly_maps(distances, size=28)
    assert out.shape == (2, 28, 28)
    # align_corners=False upsampling by 4 of a 1-D signal: output j samples input (j + 0.5) / 4 - 0.5,
    # clamped to the edge; written out by hand, then applied to rows and columns.
    pos = np.clip((np.arange(28) + 0.5) / 4 - 0.5, 0, 6)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, 6)
    frac = pos - lo
    up = np.zeros((28, 7))
    up[np.arange(28), lo] += 1 - frac
    up[np.arange(28), hi] += frac
    for got, d in zip(out.numpy(), distances.numpy()):
        np.testing.assert_allclose(got, gaussian_filter(up @ d @ up.T, sigma=4), rtol=1e-10, atol=1e-10)
