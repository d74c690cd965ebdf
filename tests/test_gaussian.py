"""Batched Gaussian fit + Mahalanobis against the official per-position, per-image loop."""
import pytest
import torch

from scoring.features import StageMaps
from scoring.gaussian import Gaussian, fit_gaussian, mahalanobis


def naive_distances(support, test):
    """The official code's algorithm: covariance + 0.01*I and its inverse per position, one dot per image."""
    n, c, h, w = support.shape
    support, test = support.double().flatten(2), test.double().flatten(2)
    out = torch.zeros(test.shape[0], h * w, dtype=torch.float64)
    for i in range(h * w):
        mean = support[:, :, i].mean(0)
        cov_inv = torch.linalg.inv(torch.cov(support[:, :, i].T) + 0.01 * torch.eye(c, dtype=torch.float64))
        for j, sample in enumerate(test[:, :, i]):
            delta = sample - mean
            out[j, i] = torch.sqrt(delta @ cov_inv @ delta)
    return out.view(-1, h, w)


def maps_of(features):
    """One-stage StageMaps: the embedding of every position is the tensor's own vector there."""
    return StageMaps.of([features])


def random_features(n, c, size, b, seed):
    """Correlated, offset features (like CNN activations), so the covariance is far from identity."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g) / c**0.5
    support = torch.einsum("dc,nchw->ndhw", mix, torch.randn(n, c, size, size, generator=g)) + 1.5
    test = torch.einsum("dc,nchw->ndhw", mix, 1.3 * torch.randn(b, c, size, size, generator=g)) + 1.5
    return support, test


@pytest.mark.parametrize("n, c", [(44, 24), (10, 24), (44, 176)])  # N < C: only 0.01*I makes Sigma invertible
def test_matches_naive_loop(n, c):
    support, test = random_features(n, c, 6, 5, seed=n)
    model = fit_gaussian(maps_of(support))
    out = mahalanobis(model, maps_of(test))
    assert out.dtype == torch.float32 and out.shape == (5, 6, 6)
    expected = naive_distances(support, test)
    assert torch.allclose(out.double(), expected, rtol=1e-4, atol=0)


def test_stored_factors_give_the_precision_matrix():
    """Woodbury: (I - A^T M A) / eps is the inverse of the covariance + eps*I, here with N > C and N < C."""
    for n in (20, 5):
        support, _ = random_features(n, 8, 3, 1, seed=1)
        model = fit_gaussian(maps_of(support))
        assert model.mean.shape == (9, 8) and model.scaled.shape == (9, n, 8) and model.inverse.shape == (9, n, n)
        assert model.shape == (3, 3)
        x = support.double().flatten(2)[:, :, 4]
        eye = torch.eye(8, dtype=torch.float64)
        precision = torch.linalg.inv(torch.cov(x.T) + 0.01 * eye)
        a, m = model.scaled[4], model.inverse[4]
        assert torch.allclose((eye - a.T @ m @ a) / 0.01, precision, rtol=1e-8, atol=1e-8)


def test_chunking_does_not_change_the_result():
    support, test = random_features(30, 16, 5, 4, seed=2)
    whole = fit_gaussian(maps_of(support))
    reference = mahalanobis(whole, maps_of(test))
    for chunk in (1, 7, 25):
        chunked = fit_gaussian(maps_of(support), chunk=chunk)
        assert torch.allclose(chunked.inverse, whole.inverse, rtol=1e-9, atol=1e-12)
        assert torch.allclose(mahalanobis(chunked, maps_of(test), chunk=chunk), reference, rtol=1e-6)


def test_save_load_round_trip(tmp_path):
    support, test = random_features(12, 8, 4, 3, seed=3)
    model = fit_gaussian(maps_of(support))
    torch.save(model.state_dict(), tmp_path / "gaussian.pt")
    loaded = Gaussian.from_dict(torch.load(tmp_path / "gaussian.pt", weights_only=True))
    assert loaded.shape == (4, 4)
    assert torch.equal(mahalanobis(loaded, maps_of(test)), mahalanobis(model, maps_of(test)))


def test_rejects_mismatched_features():
    support, test = random_features(12, 8, 4, 3, seed=4)
    with pytest.raises(ValueError):
        mahalanobis(fit_gaussian(maps_of(support)), maps_of(test[:, :4]))
