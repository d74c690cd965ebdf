"""Few-shot scoring shared by test.py, predict.py and train.py: augmented support images -> per-position
Gaussians of the restored layer1-3 features -> Mahalanobis anomaly maps for new images."""
import torch

from scoring.augment import augment_support
from scoring.features import StageMaps
from scoring.gaussian import fit_gaussian, mahalanobis
from scoring.maps import to_anomaly_maps
from utils.precision import strict_fp32


def as_float(images, device):
    """uint8 [N, 3, H, W] -> float in [0, 1] on the device (the network normalises inside)."""
    return images.to(device).float().div_(255)


class Scorer:
    """What evaluate(), test.py, predict.py and train.py call: embed() test images once, fit() on a support
    set, maps() of embedded images under a fit. A subclass says what an embedding is: embedding() of one
    batch's restored stage maps, join() of batches. The model's mode is the caller's (evaluate() sets eval).
    Scores are strict float32 like the official code's, also when a library user skipped pick_device: no TF32."""

    def __init__(self, model, device, batch_size=32):
        self.model, self.device, self.batch_size = model, device, batch_size
        strict_fp32()

    @torch.no_grad()
    def batch_embedding(self, images):
        """One batch of float images -> its embedding."""
        return self.embedding(self.model.STN(images).restored)

    def features(self, images):
        """float images [N, 3, H, W] -> embeddings, batch by batch."""
        return self.join([self.batch_embedding(images[s:s + self.batch_size])
                          for s in range(0, len(images), self.batch_size)])

    def embed(self, images):
        """uint8 images -> embeddings, converted to float batch by batch to bound memory."""
        return self.join([self.batch_embedding(as_float(images[s:s + self.batch_size], self.device))
                          for s in range(0, len(images), self.batch_size)])

    def support_features(self, support):
        """uint8 support images [K, 3, H, W] -> embeddings of their 22 augmentations each."""
        return self.features(augment_support(as_float(support, self.device)))


class GaussianScorer(Scorer):
    """RegAD's scorer: per-position Gaussians of the restored layer1-3 maps (kept per stage, StageMaps),
    Mahalanobis distance maps."""

    embedding = staticmethod(StageMaps.of)
    join = staticmethod(StageMaps.cat)

    def fit(self, support):
        """uint8 support images [K, 3, H, W] -> Gaussians over their 22 augmentations each."""
        return fit_gaussian(self.support_features(support))

    def maps(self, gaussian, embeddings, image_size):
        """StageMaps -> blurred anomaly maps [N, image_size, image_size] on the CPU."""
        return to_anomaly_maps(mahalanobis(gaussian, embeddings), image_size).cpu()
