"""Few-shot PatchCore baseline (Roth et al., CVPR 2022) in the same framework: same backbone, support
sets, 22 augmentations, upsampling, blur and image score as RegAD; only the scoring differs:
nearest-neighbour distance to a memory bank of the support patches, reduced by PatchCore's greedy coreset
(1%, PatchCore-1% of the paper, on a random 128-d projection) so scoring stays affordable on a CPU at K = 8."""
import torch
import torch.nn.functional as F

from utils.augment import augment_support
from utils.maps import to_anomaly_maps
from utils.scoring import GaussianScorer, as_float

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


class PatchCoreScorer(GaussianScorer):
    name = "patchcore"

    @torch.no_grad()
    def features(self, images):
        """PatchCore's locally aware patches: layer2 and layer3 (restored, i.e. identity STN when
        untrained), 3x3 average-pooled, layer3 upsampled to layer2's resolution (stride 8)."""
        out = []
        for s in range(0, len(images), self.batch_size):
            _, layer2, layer3 = self.model.STN(images[s:s + self.batch_size]).restored
            layer2, layer3 = F.avg_pool2d(layer2, 3, 1, 1), F.avg_pool2d(layer3, 3, 1, 1)
            layer3 = F.interpolate(layer3, size=layer2.shape[-2:], mode="bilinear", align_corners=False)
            out.append(torch.cat([layer2, layer3], 1))
        return torch.cat(out)

    def embed(self, images):
        """uint8 images -> patch maps [N, C, H, W] (a tensor, not GaussianScorer's StageMaps), batch by batch."""
        return torch.cat([self.features(as_float(images[s:s + self.batch_size], self.device))
                          for s in range(0, len(images), self.batch_size)])

    def fit(self, support):
        """Memory bank [M, C]: the coreset of every patch of every augmented support image."""
        bank = self.features(augment_support(as_float(support, self.device))).permute(0, 2, 3, 1).flatten(0, 2)
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
