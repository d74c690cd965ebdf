"""Anomaly-map post-processing against scipy.ndimage.gaussian_filter and a hand-made upsampling."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from scoring.maps import gaussian_blur, to_anomaly_maps


@pytest.mark.parametrize("shape, sigma", [((3, 40, 40), 4), ((2, 9, 13), 4), ((2, 30, 25), 1.5)])
def test_blur_equals_scipy(shape, sigma):
    """Includes maps smaller than the 16-pixel radius, where the padding reflects more than once."""
    maps = np.random.default_rng(0).random(shape).astype(np.float32) * 10
    out = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    for got, m in zip(out, maps):
        expected = gaussian_filter(m.astype(np.float64), sigma=sigma)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_blurring_a_batch_equals_blurring_each_map_alone():
    """The maps are the channels of one depthwise convolution: no number may depend on the batch around it,
    or scores would change with the batch size (test.py and predict.py score different batches)."""
    maps = torch.rand(5, 56, 56) * 10  # 56 x 56: where a lone one-channel map takes another CPU algorithm
    alone = torch.cat([gaussian_blur(m[None], 4) for m in maps])
    assert torch.equal(gaussian_blur(maps, 4), alone)


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
