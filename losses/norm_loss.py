"""Negative cosine similarity with a stop-gradient on the target (SimSiam), as in the paper."""
import torch.nn.functional as F


def cos_loss(prediction, target):
    """-cos(p, stopgrad(z)) over channels, averaged over batch and positions."""
    return -F.cosine_similarity(prediction, target.detach(), dim=1).mean()


def symmetric_loss(p_query, z_query, p_support, z_support):
    """D(p_a, z_b)/2 + D(p_b, z_a)/2."""
    return cos_loss(p_query, z_support) / 2 + cos_loss(p_support, z_query) / 2
