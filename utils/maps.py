"""Patch distances -> image-sized anomaly maps and image scores, as the official post-processing."""
import torch
import torch.nn.functional as F


def gaussian_kernel(sigma, truncate=4.0, dtype=torch.float32, device=None):
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def symmetric_indices(n, radius, device=None):
    """Indices padding a length-n axis by radius with scipy's 'reflect' (d c b a | a b c d | d c b a).

    torch's 'reflect' padding is scipy's 'mirror' (the edge sample is not repeated); indexing also
    works when radius > n, where a single flip would not reach.
    """
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_blur(maps, sigma):
    """[B,H,W] -> [B,H,W], equal to scipy.ndimage.gaussian_filter(map, sigma) on each map."""
    kernel = gaussian_kernel(sigma, dtype=maps.dtype, device=maps.device)
    radius = len(kernel) // 2
    h, w = maps.shape[-2:]
    x = maps[:, None].index_select(2, symmetric_indices(h, radius, maps.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = x.index_select(3, symmetric_indices(w, radius, maps.device))
    return F.conv2d(x, kernel.view(1, 1, 1, -1))[:, 0]


def to_anomaly_maps(distances, size, sigma=4):
    """[B,h,w] patch distances -> [B,size,size]: bilinear upsampling, then Gaussian smoothing."""
    upsampled = F.interpolate(distances[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return gaussian_blur(upsampled[:, 0], sigma)


def image_scores(maps):
    """Image-level anomaly score: the maximum of its map, [B,H,W] -> [B]."""
    return maps.flatten(1).amax(1)
