"""The PatchCore baseline's greedy coreset against a direct O(n^2) reference, and its scorer end to end."""
import torch

from models.regad import RegAD
from utils.patchcore import PatchCoreScorer, greedy_coreset


def naive_greedy(points, count, first):
    """k-center greedy, written plainly: each step adds the point whose nearest chosen point is farthest."""
    chosen = [first]
    while len(chosen) < count:
        distances = [min(float(torch.dist(p, points[c])) for c in chosen) for p in points]
        chosen.append(max(range(len(points)), key=distances.__getitem__))
    return chosen


def test_greedy_coreset_matches_naive_k_center():
    points = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    chosen = greedy_coreset(points, fraction=0.1, seed=3).tolist()  # 16 dims: no projection
    assert len(chosen) == 20 and len(set(chosen)) == 20
    assert chosen == naive_greedy(points, 20, chosen[0])


def test_coreset_covers_clusters_that_random_sampling_would_miss():
    """Two far clusters, one tiny: the greedy coreset always picks from both."""
    big, small = torch.randn(990, 256), torch.randn(10, 256) + 100
    chosen = greedy_coreset(torch.cat([big, small]), fraction=0.01)  # 256 dims: projected
    assert (chosen >= 990).any() and (chosen < 990).any()


def test_patchcore_scorer_embeds_fits_and_scores():
    """test.py's calls (embed, fit, maps) on a tiny untrained network: embed batches its own patch maps."""
    torch.manual_seed(0)
    scorer = PatchCoreScorer(RegAD("resnet18", "rotation_scale", 64), torch.device("cpu"), batch_size=2)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    embeddings = scorer.embed(images)
    assert embeddings.shape == (3, 384, 8, 8)  # layer2 (128) + layer3 (256) at stride 8
    maps = scorer.maps(scorer.fit(images[:2]), embeddings, 64)
    assert maps.shape == (3, 64, 64) and torch.isfinite(maps).all()
