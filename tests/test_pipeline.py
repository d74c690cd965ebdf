"""End to end on real data: the registration-free baseline reaches the PaDiM regime on bottle, and a tiny
training run writes checkpoints (last epoch, resumable, test-selected kept apart) that test.py evaluates."""
import json

import pytest
import torch

from conftest import run_cli, run_ok

LITE = ["--backbone", "efficientnet_lite0"]
TINY = ["--shot", "2", "--img_size", "64", "--batch_size", "4", "--max_images_per_category", "6", *LITE]


def test_registration_free_baseline_on_bottle(data_root, tmp_path):
    """The issue's real-data check: untrained identity STN + ImageNet EfficientNet-Lite0, K=2, 2 rounds."""
    run_ok("test.py", "--obj", "bottle", "--shot", "2", "--checkpoint", "none", *LITE, "--data_path", data_root,
           "--rounds", "2", "--out", tmp_path / "bottle")
    report = json.loads((tmp_path / "bottle.json").read_text())
    result = report["results"]["bottle"]["2"]
    assert len(result["rounds"]) == 2
    assert result["summary"]["image_auroc"]["mean"] >= 0.90
    assert result["summary"]["pixel_auroc"]["mean"] >= 0.90
    assert 0 < result["summary"]["aupro"]["mean"] <= 1
    assert report["protocol"].startswith("registration-free")
    assert "Image AUROC" in (tmp_path / "bottle.md").read_text()


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """Two epochs of a 3-epoch schedule of tiny leave-one-out training with bottle as the unseen target."""
    save_dir = tmp_path_factory.mktemp("ckpt")
    log = run_ok("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "3", "--stop_after", "2",
                 "--save_dir", save_dir, *TINY).stdout
    assert "stopped after epoch 2 of 3" in log and "--resume" in log
    assert "batch 10/" in log  # not a terminal: progress lines instead of a bar
    return save_dir, save_dir / "efficientnet_lite0" / "rotation_scale" / "2" / "bottle"


def test_training_writes_the_last_epoch_in_the_official_layout(trained):
    _, folder = trained
    state = torch.load(folder / "bottle_2_rotation_scale_model.pt", weights_only=True)
    assert {"STN", "ENC", "PRED", "meta"} <= set(state)
    meta = state["meta"]
    assert (meta["epoch"], meta["epochs"]) == (2, 3) and not meta["selected_on_test"]
    assert "bottle" not in meta["train_categories"] and "cashew" in meta["train_categories"]
    assert (meta["backbone"], meta["img_size"], meta["shot"]) == ("efficientnet_lite0", 64, 2)
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert all(h["train_loss"] < 0 for h in meta["history"])  # negative cosine of similar views
    assert not list(folder.glob(".*tmp")), "a temp file was left behind"


def test_an_earlier_run_is_never_overwritten_silently(trained, data_root):
    save_dir, folder = trained
    before = (folder / "last.pt").read_bytes()
    again = run_cli("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "3", "--save_dir", save_dir,
                    *TINY)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "--resume" in again.stderr and "--overwrite" in again.stderr
    other_schedule = run_cli("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "4", "--save_dir",
                             save_dir, "--resume", *TINY)
    assert other_schedule.returncode == 2 and "epochs=3" in other_schedule.stderr
    assert (folder / "last.pt").read_bytes() == before


def test_resume_continues_the_same_run(trained, data_root):
    save_dir, folder = trained
    stopped = torch.load(folder / "last.pt", weights_only=True)
    run_ok("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "3", "--save_dir", save_dir,
           "--resume", *TINY)
    meta = torch.load(folder / "last.pt", weights_only=True)["meta"]
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3] and meta["precision"] == "fp32"
    assert meta["history"][:2] == stopped["meta"]["history"]
    # the third epoch ran at the schedule's third learning rate, not a restarted schedule's first
    assert meta["history"][2]["lr"] < meta["history"][1]["lr"] < meta["history"][0]["lr"]
    changed = run_cli("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "4", "--save_dir",
                      save_dir, "--resume", "--precision", "bf16", *TINY)
    assert changed.returncode == 2 and "precision=fp32" in changed.stderr and "same options" in changed.stderr


def test_test_py_evaluates_the_trained_checkpoint(trained, data_root, tmp_path):
    save_dir, _ = trained
    run_ok("test.py", "--obj", "bottle", "--shot", "2", "--save_dir", save_dir, "--data_path", data_root,
           "--rounds", "1", "--out", tmp_path / "r")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["img_size"] == 64 and report["backbone"] == "efficientnet_lite0"
    assert report["protocol"].startswith("honest")
    assert 0.5 < report["results"]["bottle"]["2"]["summary"]["image_auroc"]["mean"] <= 1


def test_select_on_test_is_kept_apart_and_labelled(data_root, tmp_path):
    """The paper's test-set model selection writes its own file; the honest last-epoch file is separate. As the
    official train.py, it evaluates before each epoch's training: epochs 0 (untrained) .. E-1, never E."""
    log = run_ok("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "2", "--save_dir", tmp_path,
                 "--select_on_test", "--rounds", "1", *TINY).stdout
    assert "WARNING" in log and "test-set evaluations on support sets generated from seed 668" in log
    folder = tmp_path / "efficientnet_lite0" / "rotation_scale" / "2" / "bottle"
    selected = torch.load(folder / "bottle_2_rotation_scale_model_selected_on_test.pt", weights_only=True)
    honest = torch.load(folder / "bottle_2_rotation_scale_model.pt", weights_only=True)
    assert selected["meta"]["selected_on_test"] and not honest["meta"]["selected_on_test"]
    curve = honest["meta"]["test_curve"]
    assert [point["epoch"] for point in curve] == [0, 1]
    best = max(curve, key=lambda point: point["score"])
    assert honest["meta"]["best_on_test"] == {"epoch": best["epoch"], "score": best["score"]}
    assert selected["meta"]["epoch"] == best["epoch"] == len(selected["meta"]["history"])
    assert honest["meta"]["epoch"] == 2
    report = tmp_path / "r"
    run_ok("test.py", "--obj", "bottle", "--shot", "2", "--data_path", data_root, "--rounds", "1", "--out", report,
           "--checkpoint", folder / "bottle_2_rotation_scale_model_selected_on_test.pt")
    assert "PAPER PROTOCOL" in report.with_suffix(".md").read_text()
