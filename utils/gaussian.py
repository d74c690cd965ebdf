"""Per-position multivariate Gaussian of the support features and the Mahalanobis anomaly score.

The official code loops over positions (and images) in Python and inverts a C x C covariance at each.
Few-shot covariances have low rank: with N = 22K support embeddings and C channels,
Sigma = eps*I + A^T A, where A [N, C] holds the centred embeddings / sqrt(N - 1). By the Woodbury identity

    (x - mu)^T Sigma^-1 (x - mu) = (|d|^2 - |W d|^2) / eps,   d = x - mu,   W = L^-1 A,   L L^T = eps*I_N + A A^T,

so each position needs one N x N Cholesky instead of a C x C inverse (N = 44 vs C = 176-448 at K = 2),
and scoring one N x C product. All positions of a chunk go through one batched call, in float64
(the difference of two squared norms must not lose the small eigen-directions that eps alone sets).
"""
from dataclasses import dataclass

import torch

CHUNK_BYTES = 32 * 2**20  # a chunk's temporaries; small enough to stay cache-friendly on a CPU


@dataclass
class Gaussian:
    mean: torch.Tensor    # [H*W, C] float32
    factor: torch.Tensor  # [H*W, N, C] float64, W = L^-1 A as above
    eps: float
    shape: tuple          # (H, W)

    def state_dict(self):
        return {"mean": self.mean, "factor": self.factor, "eps": torch.tensor(self.eps, dtype=torch.float64),
                "shape": torch.tensor(self.shape)}

    @classmethod
    def from_dict(cls, state):
        return cls(state["mean"], state["factor"], float(state["eps"]), tuple(int(s) for s in state["shape"]))


def positions_per_chunk(bytes_per_position, chunk=None):
    return chunk or max(1, CHUNK_BYTES // bytes_per_position)


def fit_gaussian(embeddings, eps=0.01, chunk=None):
    """embeddings [N,C,H,W] -> Gaussian per position with the unbiased covariance + eps*I (as the paper)."""
    n, c, h, w = embeddings.shape
    if n < 2:
        raise ValueError("a covariance needs at least 2 support embeddings")
    x = embeddings.flatten(2)  # [N, C, P]
    eye = torch.eye(n, dtype=torch.float64, device=embeddings.device)
    step = positions_per_chunk((3 * n * c + 2 * n * n) * 8, chunk)
    means, factors = [], []
    for start in range(0, h * w, step):
        block = x[:, :, start:start + step].permute(2, 0, 1).double()  # [p, N, C]
        mean = block.mean(1)
        scaled = (block - mean[:, None]) / (n - 1) ** 0.5  # A: Sigma = eps*I + A^T A
        chol = torch.linalg.cholesky(torch.baddbmm(eps * eye, scaled, scaled.mT))
        factors.append(torch.linalg.solve_triangular(chol, scaled, upper=False))
        means.append(mean.float())
    return Gaussian(torch.cat(means), torch.cat(factors), eps, (h, w))


def mahalanobis(gaussian, embeddings, chunk=None):
    """embeddings [B,C,H,W] -> Mahalanobis distance to each position's Gaussian, [B,H,W] float32.

    Runs on the embeddings' device; the model's chunks are moved there as needed.
    """
    b, c, h, w = embeddings.shape
    if (c, h, w) != (gaussian.mean.shape[1], *gaussian.shape):
        raise ValueError(f"embeddings {c}x{h}x{w} do not match the Gaussian "
                         f"{gaussian.mean.shape[1]}x{gaussian.shape[0]}x{gaussian.shape[1]}")
    x = embeddings.flatten(2)  # [B, C, P]
    device = embeddings.device
    n = gaussian.factor.shape[1]
    step = positions_per_chunk((2 * c * b + n * b + n * c) * 8, chunk)
    distances = []
    for start in range(0, h * w, step):
        stop = start + step
        mean = gaussian.mean[start:stop].to(device).double()
        delta = x[:, :, start:stop].permute(2, 1, 0).double() - mean[:, :, None]  # [p, C, B]
        projected = gaussian.factor[start:stop].to(device) @ delta  # [p, N, B]
        squared = (delta.square().sum(1) - projected.square().sum(1)) / gaussian.eps
        distances.append(squared.clamp_min(0).sqrt().float())  # [p, B]
    return torch.cat(distances).T.reshape(b, h, w)
