"""Few-shot scoring shared by test.py, predict.py and train.py: augmented support images -> per-position
Gaussians of the restored layer1-3 features -> Mahalanobis anomaly maps for new images."""
import torch

from utils.augment import augment_support
from utils.features import StageMaps
from utils.gaussian import fit_gaussian, mahalanobis
from utils.maps import to_anomaly_maps


def as_float(images, device):
    """uint8 [N, 3, H, W] -> float in [0, 1] on the device (the network normalises inside)."""
    return images.to(device).float().div_(255)


class GaussianScorer:
    """RegAD's scorer. embed() is separate from maps() because test images are embedded once and
    scored against every support round."""

    name = "regad"

    def __init__(self, model, device, batch_size=32):
        self.model, self.device, self.batch_size = model.eval(), device, batch_size

    @torch.no_grad()
    def features(self, images):
        """float images [N, 3, H, W] -> StageMaps of their restored layer1-3 maps."""
        return StageMaps.cat([StageMaps.of(self.model.STN(images[s:s + self.batch_size]).restored)
                              for s in range(0, len(images), self.batch_size)])

    def embed(self, images):
        """uint8 images -> StageMaps, converted to float batch by batch to bound memory."""
        return StageMaps.cat([self.features(as_float(images[s:s + self.batch_size], self.device))
                              for s in range(0, len(images), self.batch_size)])

    def fit(self, support):
        """uint8 support images [K, 3, H, W] -> Gaussians over their 22 augmentations each."""
        return fit_gaussian(self.features(augment_support(as_float(support, self.device))))

    def maps(self, gaussian, embeddings, image_size):
        """StageMaps -> blurred anomaly maps [N, image_size, image_size] on the CPU."""
        return to_anomaly_maps(mahalanobis(gaussian, embeddings), image_size).cpu()
