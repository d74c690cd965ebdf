"""Evaluation metrics on raw scores (numpy in, float out); AUROC and AUPRO need no normalisation."""
import numpy as np
from skimage.measure import label
from sklearn.metrics import precision_recall_curve, roc_auc_score


def image_auroc(labels, scores):
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores)))


def f1_max(labels, scores):
    """Best F1 over all thresholds."""
    precision, recall, _ = precision_recall_curve(np.asarray(labels), np.asarray(scores))
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


class PixelLabels:
    """What the pixel metrics need from a test set's masks, computed once and reused by every support round:
    which pixels are anomalous, and each pixel's PRO weight, 1 / (its region's size * number of regions),
    where a region is an 8-connected component of one mask (the MVTec AD evaluation's definition)."""

    def __init__(self, masks):
        masks = np.asarray(masks, dtype=bool)
        per_image = [label(m, connectivity=2) for m in masks]  # 0 outside the regions
        offsets = np.cumsum([0] + [r.max() for r in per_image[:-1]])  # makes region ids unique across images
        regions = np.stack([np.where(r > 0, r + offset, 0) for r, offset in zip(per_image, offsets)]).ravel()
        n_regions = regions.max()
        if n_regions == 0:
            raise ValueError("pixel metrics need at least one anomalous pixel in the masks")
        if masks.all():
            raise ValueError("pixel metrics need at least one normal pixel in the masks")
        self.shape = masks.shape
        self.positive = masks.ravel()
        self.n_positive = int(np.count_nonzero(self.positive))
        self.n_negative = self.positive.size - self.n_positive
        self.pro_weight = np.where(self.positive, 1.0 / (np.bincount(regions)[regions] * n_regions), 0.0)


def pixel_metrics(labels, maps, max_fpr=0.3):
    """(pixel AUROC, AUPRO up to FPR = max_fpr divided by max_fpr) from one sort of every pixel's score.

    Lowering the threshold past a distinct score adds that score's anomalous pixels to the true positives,
    its normal pixels to the false positives (FPR) and its anomalous pixels' PRO weights to the per-region
    overlap (PRO); so cumulative sums in descending score order, read at the end of each run of tied scores,
    give the exact ROC and PRO curves (the points of sklearn's roc_curve and of the MVTec AD code). The ROC
    area is summed in integers (exact); the PRO curve is only built up to max_fpr.
    """
    scores = np.asarray(maps).ravel()
    if scores.size != labels.positive.size:
        raise ValueError(f"maps of shape {np.shape(maps)} do not match the masks {labels.shape}")
    order = np.argsort(scores)[::-1]  # ties are grouped below, so the sort need not be stable
    ranked = scores[order]
    ends = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), scores.size - 1)  # last pixel of each score
    true_positives = np.cumsum(labels.positive[order])[ends]
    false_positives = ends + 1 - true_positives
    steps = np.diff(false_positives, prepend=0)
    auroc = float(np.dot(steps, true_positives + np.append(0, true_positives[:-1]))) / (
        2.0 * labels.n_positive * labels.n_negative)
    # the curve up to the first threshold past max_fpr, which area_up_to interpolates towards
    last = min(np.searchsorted(false_positives, max_fpr * labels.n_negative, side="right"), len(ends) - 1)
    pro = np.minimum(np.cumsum(labels.pro_weight[order[:ends[last] + 1]])[ends[:last + 1]], 1.0)
    fpr = false_positives[:last + 1] / labels.n_negative
    aupro = area_up_to(np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], pro, [1.0]]), max_fpr)
    return auroc, aupro / max_fpr


def area_up_to(x, y, x_max):
    """Trapezoid area under y(x) (x non-decreasing) on [0, x_max], interpolating y at exactly x_max."""
    inside = np.searchsorted(x, x_max, side="right")
    xs, ys = x[:inside], y[:inside]
    if inside < len(x):
        t = (x_max - x[inside - 1]) / (x[inside] - x[inside - 1])
        xs = np.append(xs, x_max)
        ys = np.append(ys, y[inside - 1] + t * (y[inside] - y[inside - 1]))
    return float(np.trapezoid(ys, xs))
