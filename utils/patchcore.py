"""Few-shot PatchCore baseline (Roth et al., CVPR 2022) in the same framework: same backbone, support
sets, 22 augmentations, upsampling, blur and image score as RegAD; only the scoring differs:
nearest-neighbour distance to a memory bank of all support patches (no coreset: few-shot banks are small)."""
import torch
import torch.nn.functional as F

from utils.augment import augment_support
from utils.maps import to_anomaly_maps
from utils.scoring import GaussianScorer, as_float

BANK_CHUNK = 16384  # bank rows per distance block, bounds the [patches x bank] temporary


class PatchCoreScorer(GaussianScorer):
    name = "patchcore"

    @torch.no_grad()
    def features(self, images):
        """PatchCore's locally aware patches: layer2 and layer3 (restored, i.e. identity STN when
        untrained), 3x3 average-pooled, layer3 upsampled to layer2's resolution (stride 8)."""
        out = []
        for s in range(0, len(images), self.batch_size):
            _, (_, layer2, layer3) = self.model.STN(images[s:s + self.batch_size])
            layer2, layer3 = F.avg_pool2d(layer2, 3, 1, 1), F.avg_pool2d(layer3, 3, 1, 1)
            layer3 = F.interpolate(layer3, size=layer2.shape[-2:], mode="bilinear", align_corners=False)
            out.append(torch.cat([layer2, layer3], 1))
        return torch.cat(out)

    def fit(self, support):
        """Memory bank [M, C]: every patch of every augmented support image."""
        bank = self.features(augment_support(as_float(support, self.device)))
        return bank.permute(0, 2, 3, 1).flatten(0, 2)

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
