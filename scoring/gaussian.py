"""Per-position multivariate Gaussian of the support features and the Mahalanobis anomaly score.

The official code loops over positions (and images) in Python and inverts a C x C covariance at each.
Few-shot covariances have low rank: with N = 22K support embeddings and C channels,
Sigma = eps*I + A^T A, where A [N, C] holds the centred embeddings / sqrt(N - 1). By the Woodbury identity

    (x - mu)^T Sigma^-1 (x - mu) = (|d|^2 - (A d)^T M (A d)) / eps,   d = x - mu,   M = (eps*I_N + A A^T)^-1,

so each position needs the inverse of one N x N matrix (by Cholesky) instead of a C x C one (N = 44 vs
C = 176-448 at K = 2), and scoring one N x C product. All positions of a chunk go through one batched
call, in float64 (the difference of the two terms must not lose the small eigen-directions that eps alone
sets). Everything is done chunk by chunk of positions into preallocated outputs: on a CPU, fresh large
allocations (page faults) and copies cost as much as the arithmetic.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import torch

CHUNK_BYTES = 32 * 2**20  # a chunk's temporaries; small enough to stay cache-friendly on a CPU


@dataclass
class Gaussian:
    mean: torch.Tensor     # [H*W, C] float32
    scaled: torch.Tensor   # [H*W, N, C] float64, A as above
    inverse: torch.Tensor  # [H*W, N, N] float64, M as above
    eps: float
    shape: tuple           # (H, W)

    def state_dict(self):
        return {"mean": self.mean, "scaled": self.scaled, "inverse": self.inverse,
                "eps": torch.tensor(self.eps, dtype=torch.float64), "shape": torch.tensor(self.shape)}

    @classmethod
    def from_dict(cls, state):
        return cls(state["mean"], state["scaled"], state["inverse"], float(state["eps"]),
                   tuple(int(s) for s in state["shape"]))


@contextmanager
def one_thread(device):
    """For batched LAPACK calls on tiny matrices (N x N, N = 22K) on a CPU: each matrix goes through a
    threaded MKL call whose thread synchronisation costs more than the work; on 2 cores one thread made
    cholesky_inverse 9x faster (3136 matrices of 44 x 44: 0.05 s instead of 0.40 s)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def positions_per_chunk(bytes_per_position, chunk=None):
    return chunk or max(1, CHUNK_BYTES // bytes_per_position)


def fit_gaussian(embeddings, eps=0.01, chunk=None):
    """StageMaps of N support images -> Gaussian per position with the unbiased covariance + eps*I (as the paper)."""
    n, c, (h, w) = len(embeddings), embeddings.channels, embeddings.shape
    if n < 2:
        raise ValueError("a covariance needs at least 2 support embeddings")
    device = embeddings.stages[0].device
    eye = torch.eye(n, dtype=torch.float64, device=device)
    mean = torch.empty(h * w, c, device=device)
    scaled = torch.empty(h * w, n, c, dtype=torch.float64, device=device)
    inverse = torch.empty(h * w, n, n, dtype=torch.float64, device=device)
    for start, block in embeddings.chunks(positions_per_chunk((2 * n * c + 2 * n * n) * 8, chunk)):
        stop = start + len(block)
        block = block.double()  # [p, N, C]
        block_mean = block.mean(1, keepdim=True)
        a = torch.sub(block, block_mean, out=scaled[start:stop]).div_((n - 1) ** 0.5)
        gram = torch.baddbmm(eps * eye, a, a.mT)
        with one_thread(device):
            torch.cholesky_inverse(torch.linalg.cholesky(gram), out=inverse[start:stop])
        mean[start:stop] = block_mean[:, 0]
    return Gaussian(mean, scaled, inverse, eps, (h, w))


def mahalanobis(gaussian, queries, chunk=None):
    """StageMaps of B images -> Mahalanobis distance to each position's Gaussian, [B,H,W] float32.

    Runs on the queries' device; the model's chunks are moved there as needed.
    """
    b, c, (h, w) = len(queries), queries.channels, queries.shape
    if (c, h, w) != (gaussian.mean.shape[1], *gaussian.shape):
        raise ValueError(f"embeddings {c}x{h}x{w} do not match the Gaussian "
                         f"{gaussian.mean.shape[1]}x{gaussian.shape[0]}x{gaussian.shape[1]}")
    device = queries.stages[0].device
    n = gaussian.scaled.shape[1]
    distances = torch.empty(b, h * w, device=device)
    for start, block in queries.chunks(positions_per_chunk((2 * c * b + 2 * n * b + n * c) * 8, chunk)):
        stop = start + len(block)
        delta = block.double().sub_(gaussian.mean[start:stop, None].to(device))  # [p, B, C]
        projected = delta @ gaussian.scaled[start:stop].to(device).mT  # A d: [p, B, N]
        explained = (projected @ gaussian.inverse[start:stop].to(device) * projected).sum(2)
        squared = (delta.square().sum(2) - explained) / gaussian.eps
        distances[:, start:stop] = squared.clamp_min(0).sqrt().T
    return distances.view(b, h, w)
