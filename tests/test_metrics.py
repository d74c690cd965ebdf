"""Metrics in scoring/metrics.py against slow, independent references written here (no sklearn, no skimage)."""
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from scoring.metrics import PixelLabels, area_up_to, f1_max, image_auroc, pixel_metrics, ranking


def pixel_auroc(masks, maps):
    return pixel_metrics(PixelLabels(masks), maps)[0]


def aupro(masks, maps, max_fpr=0.3):
    return pixel_metrics(PixelLabels(masks), maps, max_fpr)[1]


def naive_auroc(labels, scores):
    """AUROC as the probability that an anomalous score beats a normal one, ties counting 1/2."""
    labels, scores = np.asarray(labels).ravel().astype(bool), np.asarray(scores, dtype=float).ravel()
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def naive_f1_max(labels, scores):
    """Best F1 over every distinct score used as threshold (anomalous iff score >= t)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=float)
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def naive_aupro(masks, maps, max_fpr=0.3):
    """MVTec AD definition, one threshold at a time: per-image 8-connected regions, mean per-region overlap."""
    masks, maps = np.asarray(masks, dtype=bool), np.asarray(maps, dtype=float)
    regions = []  # list of (image index, boolean region mask)
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3), dtype=int))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    curve = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr = np.sum(above & normal) / np.sum(normal)
        pro = np.mean([np.sum(above[i] & r) / np.sum(r) for i, r in regions])
        curve.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(curve[:-1], curve[1:]):
        if x0 >= max_fpr:
            break
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_cut = y0 + (max_fpr - x0) / (x1 - x0) * (y1 - y0)
            area += (max_fpr - x0) * (y0 + y_cut) / 2
            break
    return area / max_fpr


def synthetic_masks_maps(seed):
    """4 masks of 16x16 with 1-3 rectangular blobs (one all-normal, one with diagonal-only contact), tied maps."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 16, 16), dtype=bool)
    for m, n_blobs in zip(masks[:3], (1, 2, 3)):
        for _ in range(n_blobs):
            r, c = rng.integers(0, 13, size=2)
            h, w = rng.integers(1, 4, size=2)
            m[r:r + h, c:c + w] = True
    # Two squares touching only at a corner: one region under 8-connectivity, two under 4-connectivity.
    masks[1, 10:12, 0:2] = True
    masks[1, 12:14, 2:4] = True
    # masks[3] stays all normal.
    maps = rng.random(masks.shape) + 0.6 * masks
    maps = np.round(maps * 40) / 40  # coarse grid -> many tied scores, inside and across classes
    return masks, maps


def test_image_auroc_matches_pairwise_count_with_ties():
    """roc_auc_score must agree with the pairwise definition, ties weighted 1/2."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=40)
    scores = rng.integers(0, 6, size=40) + labels  # few distinct values: many ties
    assert image_auroc(labels, scores) == pytest.approx(naive_auroc(labels, scores), abs=1e-12)


def test_pixel_auroc_matches_pairwise_count_on_flattened_maps():
    """Pixel AUROC pools every pixel of every image into one ranking."""
    rng = np.random.default_rng(1)
    masks = rng.random((3, 12, 12)) < 0.2
    maps = np.round(rng.random((3, 12, 12)) + 0.3 * masks, 1)
    expected = naive_auroc(masks, maps)
    assert 0.5 < expected < 1.0  # informative but imperfect, so a wrong ranking would show
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_max_matches_brute_force_threshold_sweep(seed):
    """precision_recall_curve + argmax must find the best threshold among all distinct scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=50)
    scores = np.round(rng.random(50) + 0.4 * labels, 1)
    assert f1_max(labels, scores) == pytest.approx(naive_f1_max(labels, scores), abs=1e-12)


@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_matches_per_threshold_reference(seed, max_fpr):
    """The sort + cumsum PRO curve and the interpolated integral equal the per-threshold definition."""
    masks, maps = synthetic_masks_maps(seed)
    expected = naive_aupro(masks, maps, max_fpr)
    assert 0.0 < expected < 1.0
    assert aupro(masks, maps, max_fpr) == pytest.approx(expected, abs=1e-9)


def test_aupro_uses_8_connectivity_per_image():
    """Diagonal neighbours form one region; equal blobs in two images are two regions."""
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # one region (8-connected), size 2
    masks[1, 0, 0] = True  # a second region in another image, same place
    maps = np.zeros(masks.shape)
    maps[0, 0, 0] = 1.0  # half of region 1 found first, region 2 found last
    # Threshold 1: FPR 0, PRO (1/2 + 0)/2 = 1/4. Threshold 0: FPR 1, PRO 1.
    # PRO(fpr) = 1/4 + 3/4 fpr, so the mean over [0, 0.3] is 1/4 + 3/4 * 0.15.
    assert aupro(masks, maps) == pytest.approx(0.25 + 0.75 * 0.15, abs=1e-12)


def test_aupro_hand_checkable_values():
    """Perfect map -> 1; constant map -> PRO = FPR line, mean 0.15; one region found first -> 0.5."""
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:7, 4:6] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, np.full(masks.shape, 0.7)) == pytest.approx(0.15, abs=1e-12)
    assert aupro(masks, (~masks).astype(float)) == pytest.approx(0.0, abs=1e-12)
    maps = np.full(masks.shape, 2.0)
    maps[0][masks[0]] = 3.0  # region 1 above every normal pixel
    maps[1][masks[1]] = 1.0  # region 2 below every normal pixel
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_aupro_rejects_masks_without_anomalies():
    """PRO is undefined without any ground-truth region."""
    with pytest.raises(ValueError):
        aupro(np.zeros((2, 8, 8), dtype=bool), np.random.default_rng(0).random((2, 8, 8)))


def test_aupro_rejects_masks_without_normal_pixels():
    """FPR is undefined without a normal pixel: an error, not a NaN."""
    with pytest.raises(ValueError, match="normal pixel"):
        aupro(np.ones((2, 8, 8), dtype=bool), np.random.default_rng(0).random((2, 8, 8)))


def test_ranking_is_the_reversed_stable_argsort():
    """Ties by decreasing index, as np.argsort(kind="stable")[::-1], and the end of every run of equal scores:
    negative scores, -0.0 beside 0.0, many ties; float64 scores take the stable argsort itself."""
    rng = np.random.default_rng(3)
    scores = (np.round(rng.normal(size=5000) * 8) / 8).astype(np.float32)
    scores[:50] = -0.0
    scores[50:100] = 0.0
    for s in (scores, scores.astype(np.float64), scores[:1]):
        expected = np.argsort(s, kind="stable")[::-1]
        ranked = s[expected]
        order, ends = ranking(s)
        np.testing.assert_array_equal(order, expected)
        np.testing.assert_array_equal(ends, [i for i in range(len(s)) if i == len(s) - 1 or ranked[i] != ranked[i + 1]])


def mvtec_pro_curve(masks, maps):
    """The PRO curve as commit 2055442 built it (the MVTec AD construction): a stable sort, then cumulative sums
    of per-pixel steps (1/#normal for the FPR, the region's share for the PRO), one point per distinct score."""
    per_image = [ndimage.label(m, structure=np.ones((3, 3), dtype=int))[0] for m in masks]
    offsets = np.cumsum([0] + [r.max() for r in per_image[:-1]])
    regions = np.stack([np.where(r > 0, r + o, 0) for r, o in zip(per_image, offsets)])
    pro_step = np.where(masks, 1.0 / (np.bincount(regions.ravel())[regions] * regions.max()), 0.0).ravel()
    fpr_step = (~masks).ravel() / np.count_nonzero(~masks)
    order = np.argsort(maps.ravel(), kind="stable")[::-1]
    scores = maps.ravel()[order]
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    fpr = np.minimum(np.cumsum(fpr_step[order])[last_of_tie], 1.0)
    pro = np.minimum(np.cumsum(pro_step[order])[last_of_tie], 1.0)
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], pro, [1.0]])


@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_are_the_official_numbers_to_the_last_bit(seed, max_fpr):
    """Pixel AUROC == sklearn's roc_auc_score and AUPRO == the MVTec AD code's curve and integral, with ==:
    the same roundings, so a table's numbers do not move when the metric code gets faster."""
    masks, maps = synthetic_masks_maps(seed)
    maps = (maps + np.random.default_rng(seed).random(maps.shape) * 1e-3 * (seed > 0)).astype(np.float32)
    fpr, pro = mvtec_pro_curve(masks, maps)
    auroc, pro_area = pixel_metrics(PixelLabels(masks), maps, max_fpr)
    assert auroc == roc_auc_score(masks.ravel(), maps.ravel())
    assert pro_area == area_up_to(fpr, pro, max_fpr) / max_fpr
