"""The PatchCore baseline: its greedy coreset against a direct O(n^2) reference, its maps against a plain
nearest-neighbour loop, and test.py --method patchcore end to end."""
import json

import torch

from conftest import run_ok
from models.config import ModelConfig
from models.regad import RegAD
from scoring.maps import to_anomaly_maps
from scoring.patchcore import PatchCoreScorer, greedy_coreset


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


def test_scorer_maps_are_nearest_neighbour_distances_to_the_coreset():
    """fit() keeps 1% of the augmented support patches; maps() is the blurred distance of every test patch
    to its nearest bank patch, here checked against a plain loop over the bank."""
    torch.manual_seed(0)
    model = RegAD(ModelConfig("efficientnet_lite0", "rotation_scale", img_size=64)).eval()
    scorer = PatchCoreScorer(model, torch.device("cpu"), batch_size=8)
    support = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    test = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    patches = scorer.support_features(support).permute(0, 2, 3, 1).flatten(0, 2)  # 44 images x 8 x 8
    bank = scorer.fit(support)
    assert len(bank) == len(patches) // 100
    assert all((patches == row).all(1).any() for row in bank)  # bank rows are support patches
    embeddings = scorer.embed(test)
    b, c, h, w = embeddings.shape
    nearest = torch.full((b, h, w), float("inf"))
    for row in bank:
        nearest = torch.minimum(nearest, (embeddings - row[:, None, None]).square().sum(1).sqrt())
    expected = to_anomaly_maps(nearest, 64)
    assert torch.allclose(scorer.maps(bank, embeddings, 64), expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_patchcore_from_the_command_line(data_root, tmp_path):
    run_ok("test.py", "--obj", "bottle", "--shot", "2", "--checkpoint", "none", "--method", "patchcore",
           "--backbone", "efficientnet_lite0", "--img_size", "64", "--rounds", "1", "--data_path", data_root,
           "--out", tmp_path / "pc")
    report = json.loads((tmp_path / "pc.json").read_text())
    assert report["protocol"].startswith("few-shot PatchCore")
    assert 0.8 < report["results"]["bottle"]["2"]["summary"]["image_auroc"]["mean"] <= 1
