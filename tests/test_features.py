"""concat_stages against the official unfold/fold embedding_concat, written out here."""
import pytest
import torch
import torch.nn.functional as F

from utils.features import concat_stages


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
    out = concat_stages(stages)
    assert out.shape == (2, 56, size, size)
    assert torch.equal(out, expected)


def test_rejects_non_integer_ratio():
    with pytest.raises(ValueError):
        concat_stages([torch.randn(1, 2, 14, 14), torch.randn(1, 2, 4, 4)])
