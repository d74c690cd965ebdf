"""The paper's test protocol on one category: for each fixed support set, fit, score every test image,
and compute the metrics. Shared by test.py and train.py (--select_on_test)."""
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from datasets.mvtec import list_test_set, load_images, load_mask
from scoring.maps import image_scores
from scoring.metrics import PixelLabels, f1_max, image_auroc, pixel_metrics
from utils.errors import UserError
from utils.memory import reusing_freed_memory

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


@dataclass
class TestData:
    """A category's test split, decoded once: uint8 images, labels, binary masks (None without masks)."""
    items: list
    images: torch.Tensor
    labels: np.ndarray
    masks: np.ndarray | None


def load_test_data(category, img_size):
    """Decoded and checked before any compute, so a test set the metrics cannot score fails here, not after."""
    items = list_test_set(category)
    labels = np.array([item.label for item in items])
    if labels.min() == labels.max():
        raise UserError(f"the test set of {category.name} has only {'defective' if labels[0] else 'normal'} "
                        f"images; AUROC needs both (test/good and test/<defect> in {category.root})")
    images = load_images([item.path for item in items], img_size)
    masks = None
    if category.has_masks:
        empty = torch.zeros(img_size, img_size, dtype=torch.bool)
        masks = np.stack([(load_mask(i, img_size) if i.mask_path else empty).numpy() for i in items])
        if not masks.any():
            raise UserError(f"every mask in {category.root / 'ground_truth'} is empty; fix the masks (nonzero = "
                            "defect), or remove that folder to evaluate image-level only")
    return TestData(items, images, labels, masks)


def round_metrics(maps, scores, labels, pixel_labels):
    """Metrics of one support round from its maps and image scores (numpy); pixel metrics are None for
    categories without masks (pixel_labels None)."""
    result = {"image_auroc": image_auroc(labels, scores), "image_f1_max": f1_max(labels, scores),
              "pixel_auroc": None, "aupro": None}
    if pixel_labels is not None:
        result["pixel_auroc"], result["aupro"] = pixel_metrics(pixel_labels, maps)
    return result


STD_DDOF = 1  # the sample standard deviation, the one readers assume (reports before it used ddof=0)


def summarise(rounds):
    """Mean and sample std (over rounds, ddof=STD_DDOF) per metric; the std is None for a single round, the
    summary None where the metric does not exist."""
    summary = {}
    for metric in METRICS:
        values = [r[metric] for r in rounds if r[metric] is not None]
        std = float(np.std(values, ddof=STD_DDOF)) if len(values) > STD_DDOF else None
        summary[metric] = {"mean": float(np.mean(values)), "std": std} if values else None
    return summary


@contextmanager
def evaluating(model):
    """The model in eval mode for the block, then back in the mode it had (train.py evaluates mid-training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate(scorer, test, support_sets, on_round=None):
    """Run every support round; test embeddings are computed once, since only the fitted model changes."""
    with evaluating(scorer.model), reusing_freed_memory():
        embeddings = scorer.embed(test.images)
        pixel_labels = PixelLabels(test.masks) if test.masks is not None else None  # the same for every round
        rounds = []
        for index, support in enumerate(support_sets):
            maps = scorer.maps(scorer.fit(support), embeddings, test.images.shape[-1])
            maps, scores = maps.numpy(), image_scores(maps).numpy()
            rounds.append(round_metrics(maps, scores, test.labels, pixel_labels))
            if on_round:
                on_round(index, rounds[-1], maps, scores)
    return {"rounds": rounds, "summary": summarise(rounds)}
