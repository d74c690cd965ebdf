"""Few-shot PatchCore baseline (Roth et al., CVPR 2022) in the same framework: same backbone, support
sets, 22 augmentations, upsampling, blur and image score as RegAD; only the scoring differs:
nearest-neighbour distance to a memory bank of the support patches, reduced by PatchCore's greedy coreset
(1%, PatchCore-1% of the paper, on a random 128-d projection) so scoring stays affordable on a CPU at K = 8."""
import torch
import torch.nn.functional as F

from scoring.maps import to_anomaly_maps
from scoring.scorers import Scorer

BANK_CHUNK = 16384  # bank rows per distance block, bounds the [patches x bank] temporary
CORESET_FRACTION = 0.01  # PatchCore-1%: keeps K=8 scoring affordable on a CPU
PROJECTION_DIM = 128


@torch.no_grad()
def greedy_coreset(bank, fraction=CORESET_FRACTION, seed=0):
    """Indices of a k-center greedy coreset (PatchCore, Sec. 3.2): repeatedly add the patch farthest from
    those chosen. Distances are taken on a seeded Gaussian random projection, as PatchCore does."""
    count = max(1, int(len(bank) * fraction))
    generator = torch.Generator().manual_seed(seed)
    if bank.shape[1] > PROJECTION_DIM:
        projection = torch.randn(bank.shape[1], PROJECTION_DIM, generator=generator).to(bank)
        bank = bank @ projection
    squared_norms = bank.square().sum(1)

    def squared_distances(i):  # |b|^2 - 2 b.c + |c|^2: one pass over the bank (memory-bound loop)
        return torch.addmv(squared_norms + squared_norms[i], bank, bank[i], alpha=-2)

    chosen = [int(torch.randint(len(bank), (1,), generator=generator))]
    nearest = squared_distances(chosen[0])
    for _ in range(count - 1):
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, squared_distances(chosen[-1]))
    return torch.tensor(chosen, device=bank.device)


class PatchCoreScorer(Scorer):
    """Nearest-neighbour distance of each test patch to the coreset of the augmented support patches."""

    join = staticmethod(torch.cat)

    @staticmethod
    def embedding(restored):
        """PatchCore's locally aware patches: layer2 and layer3 (restored, i.e. identity STN when
        untrained), 3x3 average-pooled, layer3 upsampled to layer2's resolution (stride 8)."""
        _, layer2, layer3 = restored
        layer2, layer3 = F.avg_pool2d(layer2, 3, 1, 1), F.avg_pool2d(layer3, 3, 1, 1)
        layer3 = F.interpolate(layer3, size=layer2.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([layer2, layer3], 1)

    def fit(self, support):
        """Memory bank [M, C]: the coreset of every patch of every augmented support image."""
        bank = self.support_features(support).permute(0, 2, 3, 1).flatten(0, 2)
        return bank[greedy_coreset(bank)]

    def maps(self, bank, embeddings, image_size):
        out = []
        for s in range(0, len(embeddings), self.batch_size):
            batch = embeddings[s:s + self.batch_size]
            b, c, h, w = batch.shape
            patches = batch.permute(0, 2, 3, 1).reshape(-1, c)
            nearest = torch.stack([torch.cdist(patches, bank[i:i + BANK_CHUNK]).amin(1)
                                   for i in range(0, len(bank), BANK_CHUNK)]).amin(0)
            out.append(to_anomaly_maps(nearest.view(b, h, w), image_size).cpu())
        return torch.cat(out)
