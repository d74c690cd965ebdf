"""The official code's first use, verbatim: its released checkpoints and fixed support files unpacked into the
checkout as the official README says, then its command `python test.py --obj bottle --shot 2 --stn_mode
rotation_scale`, in a fresh copy of the repository (files built from ../shared/reference/official)."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, copy_category

OFFICIAL = ROOT.parent / "shared" / "reference" / "official"


@pytest.fixture(scope="module")
def checkout(data_root, tmp_path_factory):
    """A copy of the code, with the official layout: save_checkpoints/<stn_mode>/<K>/<obj>/<obj>_<K>_<stn_mode>
    _model.pt, support_set/<obj>/<K>_10.pt (10 rounds: the reference's 2 in turn) and the data in ./MVTec/."""
    if not OFFICIAL.is_dir():
        pytest.skip(f"official reference files not found at {OFFICIAL}")
    work = tmp_path_factory.mktemp("checkout")
    for name in ["test.py", "models", "losses", "datasets", "scoring", "utils"]:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, work / name)
    copy_category(data_root, "bottle", work / "MVTec", train=4, test=2)
    ckpt = work / "save_checkpoints/rotation_scale/2/bottle/bottle_2_rotation_scale_model.pt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(OFFICIAL / "checkpoint.pt", ckpt)
    rounds = torch.load(OFFICIAL / "support_bottle_2_2.pt", weights_only=True)
    (work / "support_set/bottle").mkdir(parents=True)
    torch.save([rounds[i % 2] for i in range(10)], work / "support_set/bottle/2_10.pt")
    return work


@pytest.fixture(scope="module")
def official_run(checkout):
    result = subprocess.run([sys.executable, "test.py", "--obj", "bottle", "--shot", "2", "--stn_mode",
                             "rotation_scale"], cwd=checkout, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = sorted((checkout / "results" / "runs").glob("*.json"))
    assert len(reports) == 1, reports
    return result, json.loads(reports[0].read_text()), reports[0].with_suffix(".md").read_text()


def test_the_official_command_finds_and_loads_the_official_checkpoint(official_run):
    result, report, _ = official_run
    run = report["results"]["bottle"]["2"]
    assert run["checkpoint"] == "save_checkpoints/rotation_scale/2/bottle/bottle_2_rotation_scale_model.pt"
    assert (report["backbone"], report["stn_mode"], report["img_size"]) == ("resnet18", "rotation_scale", 224)
    assert report["protocol"].startswith("official checkpoint")


def test_the_official_support_file_is_used_and_said(official_run):
    result, report, table = official_run
    said = "official support file support_set/bottle/2_10.pt"
    assert said in result.stdout and said in report["results"]["bottle"]["2"]["support"] and said in table
    rounds = report["results"]["bottle"]["2"]["rounds"]
    assert len(rounds) == 10 and rounds[0] == rounds[2] == rounds[4] and rounds[1] == rounds[3]  # the file's 2 sets
    assert rounds[0] != rounds[1]
