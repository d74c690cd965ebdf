"""Support-set augmentation: every block checked against hand-computed pixels."""
import math

import numpy as np
import torch

from scoring.augment import ROTATION_ANGLES, TRANSLATIONS, augment_support


def ramp_images(size):
    """Channel 0 = normalised x of each pixel centre, channel 1 = y, channel 2 = 0.5, mapped to [0,1].

    Bilinear sampling of a linear function is exact, so a warp's output is known in closed form
    wherever it samples inside the hull of pixel centres (no border padding involved).
    """
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([(x + 1) / 2, (y + 1) / 2, torch.full_like(x, 0.5)])[None], x, y


def test_shape_and_block_order():
    k, size = 3, 8
    images = torch.rand(k, 3, size, size)
    out = augment_support(images)
    assert out.shape == (22 * k, 3, size, size)
    blocks = out.view(22, k, 3, size, size)
    assert torch.equal(blocks[0], images)
    assert torch.equal(blocks[17], images.flip(-1))
    for i, rot in enumerate((1, 2, 3)):
        assert torch.equal(blocks[19 + i], torch.rot90(images, rot, dims=(2, 3)))


def test_hflip_and_rot90_match_hand_indexing():
    size = 5
    image = torch.rand(1, 3, size, size)
    out = augment_support(image).numpy()
    x = image.numpy()[0]
    assert np.array_equal(out[17], x[..., ::-1])
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    last = size - 1
    assert np.array_equal(out[19], x[:, j, last - i])         # k=1: counter-clockwise
    assert np.array_equal(out[20], x[:, last - i, last - j])  # k=2
    assert np.array_equal(out[21], x[:, last - j, i])         # k=3


def test_greyscale():
    red = torch.zeros(2, 3, 6, 6)
    red[:, 0] = 1
    grey = augment_support(red).view(22, 2, 3, 6, 6)[18]
    assert torch.allclose(grey, torch.full_like(grey, 0.299))
    image = torch.rand(1, 3, 6, 6)
    grey = augment_support(image)[18]
    r, g, b = image[0]
    assert torch.allclose(grey, (0.299 * r + 0.587 * g + 0.114 * b).expand(3, 6, 6), atol=1e-6)


def test_translation_shifts_content_by_a_tenth_of_the_width():
    size = 40  # a = 0.2 in normalised coordinates = 0.1 * size = 4 pixels
    image = torch.rand(1, 3, size, size)
    out = augment_support(image)
    for t, (a, b) in enumerate(TRANSLATIONS):
        dx, dy = round(a * size / 2), round(b * size / 2)
        # output pixel (row i, col j) samples input (i + dy, j + dx); compare where that is inside
        rows = slice(max(0, -dy), size - max(0, dy))
        cols = slice(max(0, -dx), size - max(0, dx))
        src_rows = slice(rows.start + dy, rows.stop + dy)
        src_cols = slice(cols.start + dx, cols.stop + dx)
        warped = out[9 + t, :, rows, cols]
        assert torch.allclose(warped, image[0, :, src_rows, src_cols], atol=1e-5), (a, b)


def test_rotation_keeps_centre_pixel():
    size = 15  # odd: the centre pixel sits at normalised (0, 0)
    image = torch.rand(1, 3, size, size)
    out = augment_support(image)
    c = size // 2
    for r in range(len(ROTATION_ANGLES)):
        assert torch.allclose(out[1 + r, :, c, c], image[0, :, c, c], atol=1e-5)
        assert not torch.allclose(out[1 + r], image[0], atol=1e-2)


def test_affine_warps_follow_their_theta():
    """Output pixel p samples the input at theta @ (p, 1); the ramp image makes that readable."""
    size = 32
    image, x, y = ramp_images(size)
    out = augment_support(image)
    thetas = [[[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]] for a in ROTATION_ANGLES]
    thetas += [[[1, 0, a], [0, 1, b]] for a, b in TRANSLATIONS]
    limit = 1 - 1 / size  # outermost pixel centre
    for t, ((a, b, e), (c, d, f)) in enumerate(thetas):
        sx, sy = a * x + b * y + e, c * x + d * y + f
        inside = (sx.abs() <= limit) & (sy.abs() <= limit)
        assert inside.sum() > size * size // 4
        warped = out[1 + t]
        assert torch.allclose(warped[0][inside], ((sx + 1) / 2)[inside], atol=1e-5)
        assert torch.allclose(warped[1][inside], ((sy + 1) / 2)[inside], atol=1e-5)
        assert torch.allclose(warped[2], torch.full_like(warped[2], 0.5))
