"""Evaluation metrics on raw scores (numpy in, float out); AUROC and AUPRO need no normalisation."""
import numpy as np
from skimage.measure import label
from sklearn.metrics import precision_recall_curve, roc_auc_score


def image_auroc(labels, scores):
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores)))


def pixel_auroc(masks, maps):
    return float(roc_auc_score(np.asarray(masks).ravel(), np.asarray(maps).ravel()))


def f1_max(labels, scores):
    """Best F1 over all thresholds."""
    precision, recall, _ = precision_recall_curve(np.asarray(labels), np.asarray(scores))
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


def pro_curve(masks, maps):
    """Exact (FPR, PRO) curve over every distinct score, as the MVTec AD evaluation code.

    Lowering the threshold past a pixel adds 1/#normal pixels to the FPR if it is normal, or
    1/(region size * #regions) to the per-region overlap (PRO) if it lies in a ground-truth region
    (8-connected component of one mask); so a sort and two cumulative sums give the whole curve.
    """
    masks, maps = np.asarray(masks, dtype=bool), np.asarray(maps)
    per_image = [label(m, connectivity=2) for m in masks]  # 0 outside the regions
    offsets = np.cumsum([0] + [r.max() for r in per_image[:-1]])  # makes region ids unique across images
    regions = np.stack([np.where(r > 0, r + offset, 0) for r, offset in zip(per_image, offsets)])
    n_regions = regions.max()
    if n_regions == 0:
        raise ValueError("AUPRO needs at least one anomalous pixel in the masks")
    if masks.all():
        raise ValueError("AUPRO needs at least one normal pixel in the masks")
    region_sizes = np.bincount(regions.ravel())
    pro_step = np.where(masks, 1.0 / (region_sizes[regions] * n_regions), 0.0).ravel()
    fpr_step = (~masks).ravel() / np.count_nonzero(~masks)
    order = np.argsort(maps.ravel(), kind="stable")[::-1]
    scores = maps.ravel()[order]
    last_of_tie = np.append(scores[1:] != scores[:-1], True)  # one point per distinct threshold
    fpr = np.cumsum(fpr_step[order])[last_of_tie]
    pro = np.cumsum(pro_step[order])[last_of_tie]
    return np.concatenate([[0.0], np.minimum(fpr, 1.0), [1.0]]), np.concatenate([[0.0], np.minimum(pro, 1.0), [1.0]])


def area_up_to(x, y, x_max):
    """Trapezoid area under y(x) (x non-decreasing) on [0, x_max], interpolating y at exactly x_max."""
    inside = np.searchsorted(x, x_max, side="right")
    xs, ys = x[:inside], y[:inside]
    if inside < len(x):
        t = (x_max - x[inside - 1]) / (x[inside] - x[inside - 1])
        xs = np.append(xs, x_max)
        ys = np.append(ys, y[inside - 1] + t * (y[inside] - y[inside - 1]))
    return float(np.trapezoid(ys, xs))


def aupro(masks, maps, max_fpr=0.3):
    """Area under the PRO curve up to FPR = max_fpr, divided by max_fpr so it lies in [0, 1]."""
    fpr, pro = pro_curve(masks, maps)
    return area_up_to(fpr, pro, max_fpr) / max_fpr
