"""Negative cosine similarity with a stop-gradient on the target (SimSiam), as in the paper."""
import torch.nn.functional as F


def cos_loss(prediction, target, reduce=True):
    """-cos(p, stopgrad(z)) over channels: a scalar mean, or the per-position map [B, H, W]."""
    negative_cosine = -F.cosine_similarity(prediction, target.detach(), dim=1)
    return negative_cosine.mean() if reduce else negative_cosine


def symmetric_loss(p_query, z_query, p_support, z_support, reduce=True):
    """D(p_a, z_b)/2 + D(p_b, z_a)/2."""
    return cos_loss(p_query, z_support, reduce) / 2 + cos_loss(p_support, z_query, reduce) / 2
