"""StageMaps' embeddings against the official unfold/fold embedding_concat, written out here."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scoring.features import StageMaps


def embedding_concat(x, y):
    """The official RegAD/PaDiM implementation: put y's vector in every s x s cell of x."""
    b, c1, h1, w1 = x.shape
    _, c2, h2, w2 = y.shape
    s = h1 // h2
    x = F.unfold(x, kernel_size=s, dilation=1, stride=s)
    x = x.view(b, c1, -1, h2, w2)
    z = torch.zeros(b, c1 + c2, x.size(2), h2, w2, dtype=x.dtype)
    for i in range(x.size(2)):
        z[:, :, i, :, :] = torch.cat((x[:, :, i, :, :], y), 1)
    z = z.view(b, -1, h2 * w2)
    return F.fold(z, kernel_size=s, output_size=(h1, w1), stride=s)


@pytest.mark.parametrize("size", [56, 16, 12])
def test_matches_official_embedding_concat(size):
    torch.manual_seed(size)
    stages = [torch.randn(2, c, size // s, size // s) for c, s in ((8, 1), (16, 2), (32, 4))]
    expected = embedding_concat(embedding_concat(stages[0], stages[1]), stages[2])
    maps = StageMaps.of(stages)
    assert (len(maps), maps.channels, maps.shape) == (2, 56, (size, size))
    everything = maps.rows(0, size)  # [P, B, C]
    assert torch.equal(everything.permute(1, 2, 0).reshape(2, 56, size, size), expected)
    for positions in (1, 7, size + 3, size * size):  # bands of rows aligned to the coarsest stage, then cut
        chunks = list(maps.chunks(positions))
        starts = [start for start, _ in chunks]
        assert starts == [0] + list(np.cumsum([len(block) for _, block in chunks]))[:-1]
        assert max(len(block) for _, block in chunks) <= positions
        assert torch.equal(torch.cat([block for _, block in chunks]), everything)


def test_rejects_non_integer_ratio():
    with pytest.raises(ValueError):
        StageMaps.of([torch.randn(1, 2, 14, 14), torch.randn(1, 2, 4, 4)])
