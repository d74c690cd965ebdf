"""Patch distances -> image-sized anomaly maps, as the official post-processing."""
import functools

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma, truncate=4.0):
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised to sum 1 (float64)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def symmetric_indices(n, radius):
    """Indices padding a length-n axis by radius with scipy's 'reflect' (d c b a | a b c d | d c b a).

    torch's 'reflect' padding is scipy's 'mirror' (the edge sample is not repeated); indexing also
    works when radius > n, where a single flip would not reach.
    """
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def blur_matrix(n, sigma):
    """[n, n] float64 matrix of scipy.ndimage.gaussian_filter1d on a length-n signal ('reflect' padding):
    row i holds the weights of output i, so blurring both axes of a map X is B_h X B_w^T."""
    kernel = gaussian_kernel(sigma)
    taps = torch.arange(len(kernel))
    sources = symmetric_indices(n, len(kernel) // 2)[torch.arange(n)[:, None] + taps]  # [n, taps]
    matrix = torch.zeros(n, n, dtype=torch.float64)
    return matrix.index_put_((torch.arange(n)[:, None].expand_as(sources), sources), kernel.expand(n, -1),
                             accumulate=True)


@functools.cache
def smoothing_operator(size_in, size_out, sigma):
    """[size_out, size_in] float64 matrix K of one axis: bilinear upsampling (align_corners=False, as
    F.interpolate), then the Gaussian blur. Both are linear and separable, so a map D becomes K_h D K_w^T:
    two small matrix products instead of an upsampled copy and two 33-tap convolutions."""
    basis = torch.eye(size_in, dtype=torch.float64)[:, None]  # size_in signals of length size_in
    upsample = F.interpolate(basis, size=size_out, mode="linear", align_corners=False)[:, 0].T
    return blur_matrix(size_out, sigma) @ upsample


def image_scores(maps):
    """Each image's anomaly score, the maximum of its map (as the paper): [B, H, W] -> [B]."""
    return maps.flatten(1).amax(1)


def to_anomaly_maps(distances, size, sigma=4):
    """[B,h,w] patch distances -> [B,size,size]: bilinear upsampling, then Gaussian smoothing (in float64)."""
    rows = smoothing_operator(distances.shape[-2], size, sigma).to(distances.device)
    cols = smoothing_operator(distances.shape[-1], size, sigma).to(distances.device)
    return (rows @ distances.double() @ cols.T).to(distances.dtype)
