"""Test-time augmentation of the few-shot support set (paper Sec. 3.3).

With only K normal images, the per-position Gaussian needs more samples: each support image is
expanded into 22 variants (small rotations and translations, flips, greyscale, right-angle turns),
the same set as the official code.
"""
import math

import torch

from models.stn import warp

ROTATION_ANGLES = [-math.pi / 4, -3 * math.pi / 16, -math.pi / 8, -math.pi / 16,
                   math.pi / 16, math.pi / 8, 3 * math.pi / 16, math.pi / 4]
TRANSLATIONS = [(0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2),
                (0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1)]  # normalised coordinates


def affine_thetas():
    """The 16 small affine warps, [16, 2, 3], as affine_grid matrices (output -> input coordinates)."""
    rotations = [[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]] for a in ROTATION_ANGLES]
    translations = [[[1.0, 0.0, a], [0.0, 1.0, b]] for a, b in TRANSLATIONS]
    return torch.tensor(rotations + translations)


def warp_affine(images, thetas):
    """Warp every image by every theta in one grid_sample call; reflection padding avoids black corners.

    images [K,3,H,W], thetas [T,2,3] -> [T*K,3,H,W], ordered theta-major (block t holds all K images).
    """
    k = images.shape[0]
    return warp(images.repeat(len(thetas), 1, 1, 1), thetas.to(images).repeat_interleave(k, dim=0))


def greyscale(images):
    """ITU-R 601 luma repeated to 3 channels, as torchvision's Grayscale(num_output_channels=3)."""
    weights = torch.tensor([0.299, 0.587, 0.114]).to(images)
    return (images * weights[:, None, None]).sum(1, keepdim=True).expand_as(images)


def augment_support(images):
    """[K,3,H,W] -> [22*K,3,H,W]: originals, 8 rotations, 8 translations, hflip, greyscale, rot90 x3.

    Each block holds all K images in their original order.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"support images must be square for rot90, got {tuple(images.shape[-2:])}")
    blocks = [images, warp_affine(images, affine_thetas()), images.flip(-1), greyscale(images)]
    blocks += [torch.rot90(images, k, dims=(2, 3)) for k in (1, 2, 3)]
    return torch.cat(blocks)
