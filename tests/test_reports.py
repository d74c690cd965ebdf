"""What test.py's reports say about the spread: the sample std (ddof=1) and that it is one, no ± for a single
round or for rounds that all used the same support images, and spreads of another ddof never compared."""
import json
import statistics

from bench.same_numbers import differences
from conftest import run_ok
from scoring.evaluation import summarise

ROUNDS = [{"image_auroc": a, "pixel_auroc": None, "aupro": None, "image_f1_max": 0.5} for a in (0.9, 0.7, 0.8)]


def test_the_spread_is_the_sample_std_and_none_for_one_round():
    summary = summarise(ROUNDS)
    assert summary["image_auroc"]["std"] == statistics.stdev([0.9, 0.7, 0.8])  # ddof=1: 0.1, not 0.0816
    assert summary["pixel_auroc"] is None
    assert summarise(ROUNDS[:1])["image_auroc"] == {"mean": 0.9, "std": None}


def test_spreads_of_another_ddof_are_not_compared():
    before = {"results": {"a": {"summary": {"m": {"mean": 0.8, "std": 0.0816}}}}}
    after = {"std_ddof": 1, "results": {"a": {"summary": {"m": {"mean": 0.8, "std": 0.1}}}}}
    assert differences(before, after) == (1, [])
    after["results"]["a"]["summary"]["m"]["mean"] = 0.81
    assert differences(before, after)[1] == [("/results/a/summary/m/mean", 0.8, 0.81)]


def test_rounds_on_the_same_supports_say_so_instead_of_a_zero_spread(data_root, tmp_path):
    """leather has 4 normal training images: at K=4 every round uses all of them."""
    result = run_ok("test.py", "--obj", "leather", "--shot", "4", "2", "--data_path", data_root, "--checkpoint",
                    "none", "--rounds", "2", "--img_size", "64", "--backbone", "efficientnet_lite0", "--out",
                    tmp_path / "r")
    table = (tmp_path / "r.md").read_text()
    assert "± is the sample std (ddof=1) over the rounds" in table
    assert "(same supports every round)" in table and "± 0.0 (same" not in table
    assert "all 2 support sets are the same images" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["std_ddof"] == 1 and report["results"]["leather"]["2"]["notes"] == []
