"""Per-position multivariate Gaussian of the support features and the Mahalanobis anomaly score.

The official code loops over positions (and images) in Python; here every position is handled by one
batched linear-algebra call per chunk, with chunks sized so temporaries stay around CHUNK_BYTES.
The model stores the inverse Cholesky factor W = L^-1 of each covariance Sigma = L L^T, so the
distance is ||W (x - mu)||: one batched matmul, and never negative.
"""
from dataclasses import dataclass

import torch

CHUNK_BYTES = 256 * 2**20


@dataclass
class Gaussian:
    mean: torch.Tensor      # [H*W, C] float32
    inv_chol: torch.Tensor  # [H*W, C, C] float32, lower triangular, inv_chol^T inv_chol = Sigma^-1
    shape: tuple            # (H, W)

    def state_dict(self):
        return {"mean": self.mean, "inv_chol": self.inv_chol, "shape": torch.tensor(self.shape)}

    @classmethod
    def from_dict(cls, state):
        return cls(state["mean"], state["inv_chol"], tuple(int(s) for s in state["shape"]))


def positions_per_chunk(bytes_per_position, chunk=None):
    return chunk or max(1, CHUNK_BYTES // bytes_per_position)


def fit_gaussian(embeddings, eps=0.01, chunk=None):
    """embeddings [N,C,H,W] -> Gaussian per position: unbiased covariance + eps*I (as the paper).

    Covariance, Cholesky and its inverse are computed in float64: with N < C the covariance is
    singular and eps*I alone sets the smallest eigenvalues, so float32 would lose the small directions.
    """
    n, c, h, w = embeddings.shape
    x = embeddings.flatten(2)  # [N, C, P]
    eye = torch.eye(c, dtype=torch.float64, device=embeddings.device)
    step = positions_per_chunk((2 * n * c + 4 * c * c) * 8, chunk)
    means, factors = [], []
    for start in range(0, h * w, step):
        block = x[:, :, start:start + step].permute(2, 0, 1).double()  # [p, N, C]
        mean = block.mean(1)
        centred = block - mean[:, None]
        cov = torch.baddbmm(eps * eye, centred.mT, centred, alpha=1 / (n - 1))  # unbiased + eps*I
        chol = torch.linalg.cholesky(cov)
        factors.append(torch.linalg.solve_triangular(chol, eye.expand_as(cov), upper=False).float())
        means.append(mean.float())
    return Gaussian(torch.cat(means), torch.cat(factors), (h, w))


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
    step = positions_per_chunk((2 * c * b + c * c) * 4, chunk)
    distances = []
    for start in range(0, h * w, step):
        stop = start + step
        mean = gaussian.mean[start:stop].to(device)
        delta = x[:, :, start:stop].permute(2, 1, 0).float() - mean[:, :, None]  # [p, C, B]
        whitened = gaussian.inv_chol[start:stop].to(device) @ delta
        distances.append(whitened.square().sum(1).sqrt())  # [p, B]
    return torch.cat(distances).T.reshape(b, h, w)
