"""A decision threshold from the support images alone, with its evidence and its uncertainty.

Leave-one-out: each support image is held out in turn, the Gaussians are fitted on the other images' 22
augmentations, and the held-out image's own 22 augmentations are scored, so K supports give 22K scores instead
of K (with K = 3-4 the 0.95 quantile of K numbers is just the largest one). The threshold is their (1 - FPR)
quantile. The 22 scores of one image are not independent: the uncertainty is a bootstrap over the held-out
images (resampled with replacement), and with fewer than MIN_SUPPORT images predict.py warns. How this
threshold performs on test images it never saw is measured by bench/threshold_fpr.py (results/threshold_fpr.md).
"""
import numpy as np
import torch

from scoring.gaussian import fit_gaussian
from scoring.maps import image_scores

MIN_SUPPORT = 4       # below it the threshold rests on too few independent images: a warning
BOOTSTRAP = 2000      # resamples of the held-out images for the interval
INTERVAL = (5, 95)    # percentiles of the bootstrap distribution of the threshold


def leave_one_out(scorer, support):
    """(Gaussian fitted on all K supports, [K, 22] leave-one-out image scores). Each support image's 22
    augmentations under the Gaussians of the other images' augmentations; every image is embedded once."""
    features = scorer.support_features(support)  # augment_support's order: block b holds all K images
    k = len(support)
    index = torch.arange(len(features)).view(-1, k)  # [22, K]
    scores = []
    for i in range(k):
        rest = index[:, [j for j in range(k) if j != i]].flatten()
        maps = scorer.maps(fit_gaussian(features.take(rest)), features.take(index[:, i]), support.shape[-1])
        scores.append(image_scores(maps).numpy())
    return fit_gaussian(features), np.stack(scores)


def threshold_from(scores, fpr, seed=0):
    """{threshold, interval, n_images, n_scores, fpr, method} from [K, n] leave-one-out scores (n = 22, or 1 for
    a fit saved by an earlier version, which kept one score per image)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    k, n = scores.shape
    threshold = float(np.quantile(scores, 1 - fpr))
    rng = np.random.default_rng(seed)
    resampled = [np.quantile(scores[rng.integers(0, k, k)], 1 - fpr) for _ in range(BOOTSTRAP)]
    low, high = (float(v) for v in np.percentile(resampled, INTERVAL))
    return {"threshold": threshold, "interval": [low, high], "fpr": fpr, "n_images": k, "n_scores": k * n,
            "method": f"{1 - fpr:.3g} quantile of {k * n} leave-one-out scores ({k} support images x {n} "
                      f"augmentations); {INTERVAL[1] - INTERVAL[0]}% bootstrap interval over the support images "
                      f"{low:.3f}-{high:.3f}"}


def warnings_for(info):
    """Lines to print (and record) when the threshold rests on too little evidence."""
    lines = []
    if info["n_images"] < MIN_SUPPORT:
        lines.append(f"warning: the threshold rests on {info['n_images']} support images (fewer than {MIN_SUPPORT}); "
                     f"its false-positive rate is uncertain (interval {info['interval'][0]:.3f}-"
                     f"{info['interval'][1]:.3f}); pass more normal images or a --threshold you have checked")
    if info["fpr"] * info["n_scores"] < 1:
        lines.append(f"warning: --fpr {info['fpr']} is below 1 / {info['n_scores']} leave-one-out scores: the "
                     "threshold is their maximum, not a measured rate; pass more normal images or a larger --fpr")
    return lines
