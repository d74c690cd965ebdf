"""bench/same_numbers.py: every number of two test.py reports compared with ==, run times aside."""
import copy
import subprocess

import pytest

from bench.same_numbers import differences
from conftest import ROOT, run_cli

REPORT = {"command": "python test.py", "seconds": 12.5, "results": {"bottle": {"2": {
    "rounds": [{"image_auroc": 0.98, "pixel_auroc": 0.9671, "aupro": None}],
    "summary": {"image_auroc": {"mean": 0.98, "std": 0.0}}, "seconds": 10.0}}}}


def test_only_run_times_may_differ():
    after = copy.deepcopy(REPORT)
    after["seconds"], after["results"]["bottle"]["2"]["seconds"], after["command"] = 3.0, 2.0, "other"
    assert differences(REPORT, after) == (4, [])
    rounds = after["results"]["bottle"]["2"]["rounds"]
    rounds[0]["pixel_auroc"] = 0.9671000000000001  # one unit in the last place
    rounds[0]["aupro"] = 0.92  # a number where there was none
    del after["results"]["bottle"]["2"]["summary"]["image_auroc"]["std"]
    assert differences(REPORT, after)[1] == [
        ("/results/bottle/2/rounds/0/aupro", None, 0.92),
        ("/results/bottle/2/rounds/0/pixel_auroc", 0.9671, 0.9671000000000001),
        ("/results/bottle/2/summary/image_auroc/std", 0.0, None)]


def test_the_same_commit_gives_the_same_numbers(data_root):
    """The whole tool: a worktree of HEAD, test.py run from both trees, the reports compared. Skipped while
    tracked files have uncommitted changes, which may move numbers on purpose (a fresh clone, as CI, runs it)."""
    if subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode:
        pytest.skip("uncommitted changes: HEAD is not this checkout")
    result = run_cli("bench/same_numbers.py", "--baseline", "HEAD", "--", "--obj", "bottle", "--shot", "2",
                     "--checkpoint", "none", "--backbone", "efficientnet_lite0", "--rounds", "1",
                     "--data_path", data_root)
    assert result.returncode == 0, result.stdout + result.stderr
    # 13: 4 metrics of the round, 4 means (a single round has no sample std), img_size, rounds, seed, std_ddof, and
    # the meta's img_size
    assert "13 numbers, 0 differ" in result.stdout and "IDENTICAL" in result.stdout


def test_bad_baseline_or_arguments_say_what_to_do(data_root):
    for args, fragment in [(["--baseline", "no-such-commit", "--", "--obj", "bottle"], "not a commit"),
                           (["--baseline", "HEAD"], "after --"),
                           (["--baseline", "HEAD", "--", "--obj", "bottle", "--out", "x"], "leave --out out")]:
        result = run_cli("bench/same_numbers.py", *args)
        assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
