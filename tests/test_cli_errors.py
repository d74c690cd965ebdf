"""Every entry point rejects bad input up front: one 'error:' line on stderr, exit code 2, and no
checkpoint or result file left behind."""
import json
import os
import shlex
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from conftest import (ROOT, assert_one_line_error, copy_category, files_under, full_disk, run_cli as run, run_here,
                      temp_files)
from models.checkpoint import save_checkpoint
from models.config import ModelConfig
from models.regad import RegAD


LITE = ["--backbone", "efficientnet_lite0"]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def test_train_unknown_category_lists_the_found_ones(data_root, out):
    result = run("train.py", "--obj", "bottel", "--data_path", data_root, "--save_dir", out, *LITE)
    assert_one_line_error(result, "unknown category 'bottel'", "bottle", "transistor")
    assert files_under(out) == []


def test_train_missing_data_folder(tmp_path, out):
    result = run("train.py", "--obj", "bottle", "--data_path", tmp_path / "nope", "--save_dir", out)
    assert_one_line_error(result, "does not exist", "--data_path")


@pytest.mark.parametrize("option,value,fragment", [("--backbone", "resnet50", "invalid choice"),
                                                   ("--stn_mode", "spin", "invalid choice"),
                                                   ("--shot", "0", "at least 1"),
                                                   ("--batch_size", "0", "must be at least 1"),
                                                   ("--max_images_per_category", "-1", "must be at least 1"),
                                                   ("--max_images_per_category", "0", "must be at least 1"),
                                                   ("--precision", "tf32", "needs a CUDA device")])
def test_train_bad_options(data_root, out, option, value, fragment):
    result = run("train.py", "--obj", "bottle", "--data_path", data_root, "--save_dir", out, *LITE, option, value)
    assert_one_line_error(result, fragment)
    assert files_under(out) == []


def test_train_unwritable_output(data_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run("train.py", "--obj", "bottle", "--data_path", data_root, "--save_dir", blocker / "ckpt", *LITE)
    assert_one_line_error(result, "writable")
    assert blocker.read_text() == "not a folder"


def test_test_unknown_and_training_only_category(data_root, out):
    result = run("test.py", "--obj", "cashew", "--data_path", data_root, "--checkpoint", "none", *LITE,
                 "--out", out / "r")
    assert_one_line_error(result, "training-only", "bottle")
    result = run("test.py", "--obj", "nope", "--data_path", data_root, "--checkpoint", "none", *LITE,
                 "--out", out / "r")
    assert_one_line_error(result, "unknown category 'nope'")
    assert files_under(out) == []


def test_test_shot_larger_than_normal_pool(data_root, out):
    result = run("test.py", "--obj", "leather", "--shot", "8", "--data_path", data_root, "--checkpoint", "none",
                 *LITE, "--out", out / "r")
    assert_one_line_error(result, "K=8", "4 normal training images", "--shot 4")
    assert files_under(out) == []


def test_test_missing_checkpoint(data_root, out, tmp_path):
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", tmp_path / "x.pt",
                 "--out", out / "r")
    assert_one_line_error(result, "does not exist", "train.py")
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--save_dir", tmp_path / "none",
                 "--out", out / "r")
    assert_one_line_error(result, "bottle_2_rotation_scale_model.pt", "train.py --obj bottle --shot 2")
    assert files_under(out) == []


def test_test_incompatible_or_corrupt_checkpoint(data_root, out, tmp_path):
    ckpt = tmp_path / "lite.pt"
    save_checkpoint(ckpt, RegAD(ModelConfig("efficientnet_lite0", "rotation_scale", 224)), {"shot": 2})
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", ckpt,
                 "--backbone", "resnet18", "--out", out / "r")
    assert_one_line_error(result, "backbone=efficientnet_lite0", "backbone=resnet18")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", garbage, "--out", out / "r")
    assert_one_line_error(result, "is not a PyTorch file")

    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {}}, wrong)
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", wrong, "--out", out / "r")
    assert_one_line_error(result, "not a RegAD checkpoint")
    assert files_under(out) == []


def test_test_unwritable_output(data_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", "none", *LITE,
                 "--out", blocker / "sub" / "r")
    assert_one_line_error(result, "writable")


def test_resnet18_without_imagenet_weights_says_where_to_put_them(data_root, out, tmp_path):
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", "none", "--backbone",
                 "resnet18", "--rounds", "1", "--out", out / "r", env={"TORCH_HOME": str(tmp_path / "torch_home")})
    assert_one_line_error(result, "resnet18-f37072fd.pth", "--backbone_weights")
    assert not (out / "r.json").exists()


def test_predict_bad_inputs(tmp_path, out):
    result = run("predict.py", "--support", tmp_path / "missing", "--images", tmp_path, *LITE, "--out", out)
    assert_one_line_error(result, "neither an image file nor a folder")
    result = run("predict.py", "--images", tmp_path, *LITE, "--out", out)
    assert_one_line_error(result, "--support")
    result = run("predict.py", "--model", tmp_path / "nope.pt", "--images", tmp_path, "--out", out)
    assert_one_line_error(result, "does not exist", "--save_model")


# ---- issue 13: silent wrong results, data loss, dead ends; each error is one line before any compute ----

TINY = ["--shot", "2", "--img_size", "64", "--batch_size", "4", "--max_images_per_category", "6", *LITE]
QUICK_TEST = ["--checkpoint", "none", "--rounds", "1", "--img_size", "64", *LITE]


@pytest.fixture
def leather_data(data_root, tmp_path):
    """A copy of leather (4 train, 15 test images with 11 masks) to damage."""
    copy_category(data_root, "leather", tmp_path / "data")
    return tmp_path / "data"


def earlier(path, content=b"an earlier run's file"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_test_mask_of_another_size_fails_before_any_compute(leather_data, tmp_path):
    mask = sorted((leather_data / "leather" / "ground_truth" / "cut").iterdir())[0]
    Image.open(mask).resize((200, 224)).save(mask)
    report = earlier(tmp_path / "r.json")
    result = run("test.py", "--obj", "leather", "--data_path", leather_data, *QUICK_TEST, "--out", tmp_path / "r",
                 "--overwrite")
    assert_one_line_error(result, f"mask '{mask}' is 200x224 but its image", "is 224x224")
    assert "round 0" not in result.stdout and report.read_bytes() == b"an earlier run's file"
    assert not (tmp_path / "r.md").exists() and temp_files(tmp_path) == []


def test_test_save_maps_into_a_read_only_folder_fails_before_any_compute(leather_data, tmp_path, read_only):
    result = run("test.py", "--obj", "leather", "--data_path", leather_data, *QUICK_TEST, "--out", tmp_path / "r",
                 "--save_maps", read_only / "maps")
    assert_one_line_error(result, f"'{read_only / 'maps'}'", "writable location")
    assert "round 0" not in result.stdout and files_under(tmp_path / "r.json") == [] and files_under(read_only) == []


def test_test_full_disk_while_saving_maps_keeps_every_earlier_file(leather_data, tmp_path, monkeypatch):
    report, figure = earlier(tmp_path / "r.json"), earlier(tmp_path / "maps" / "leather" / "k2" / "cut_000.png")
    full_disk(monkeypatch, after=3)
    result = run_here("test.py", "--obj", "leather", "--data_path", leather_data, *QUICK_TEST, "--out",
                      tmp_path / "r", "--save_maps", tmp_path / "maps", "--overwrite")
    assert_one_line_error(result, "disk full while writing", "earlier files are intact")
    assert report.read_bytes() == figure.read_bytes() == b"an earlier run's file"
    assert files_under(tmp_path / "maps") == [figure] and temp_files(tmp_path) == []


def test_test_all_runs_the_feasible_pairs_and_records_the_skipped(leather_data, data_root, tmp_path):
    copy_category(data_root, "bottle", leather_data, train=10, test=2)
    result = run_here("test.py", "--all", "--shot", "2", "8", "--data_path", leather_data, *QUICK_TEST,
                      "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert "skipping leather K=8: K=8 is larger than the 4 normal training images of leather" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert {c: sorted(r) for c, r in report["results"].items()} == {"bottle": ["2", "8"], "leather": ["2"]}
    assert report["skipped"] == [{"category": "leather", "shot": 8,
                                  "reason": "K=8 is larger than the 4 normal training images of leather"}]
    assert "Skipped: leather K=8 (K=8 is larger than the 4 normal training images of leather)." in \
        (tmp_path / "r.md").read_text()


def test_predict_with_no_readable_image_fails_before_fitting(tmp_path, out, data_root):
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    support = sorted((data_root / "bottle" / "train" / "good").iterdir())[:2]
    result = run("predict.py", "--support", *support, "--images", tmp_path / "a.png", tmp_path / "b.jpg", *LITE,
                 "--img_size", "64", "--out", out)
    assert_one_line_error(result, "none of the 2 --images images can be read", "a.png")
    assert "fitting" not in result.stdout and files_under(out) == []
    (tmp_path / "empty").mkdir()
    result = run_here("predict.py", "--support", *support, "--images", tmp_path / "empty", *LITE, "--out", out)
    assert_one_line_error(result, "no image file found in --images")
    assert "fitting" not in result.stdout and files_under(out) == []


def test_predict_save_model_into_a_read_only_folder_fails_before_fitting(tmp_path, out, data_root, read_only):
    images = sorted((data_root / "bottle" / "train" / "good").iterdir())[:2]
    result = run("predict.py", "--support", *images, "--images", *images, *LITE, "--img_size", "64", "--out", out,
                 "--save_model", read_only / "fit.pt")
    assert_one_line_error(result, f"'{read_only}' is not writable")
    assert "fitting" not in result.stdout and files_under(out) == [] and files_under(read_only) == []


def test_predict_full_disk_keeps_the_earlier_results(tmp_path, out, data_root, monkeypatch):
    images = sorted((data_root / "bottle" / "train" / "good").iterdir())[:4]  # 4: no few-supports warning
    scores = earlier(out / "scores.csv")
    full_disk(monkeypatch, after=2)
    result = run_here("predict.py", "--support", *images, "--images", *images, *LITE, "--img_size", "64",
                      "--out", out, "--save_model", tmp_path / "fit.pt")
    assert_one_line_error(result, "disk full while writing", "earlier files are intact")
    assert files_under(out) == [scores] and scores.read_bytes() == b"an earlier run's file"
    assert not (tmp_path / "fit.pt").exists() and temp_files(tmp_path) == []


def test_train_full_disk_during_a_checkpoint_write_keeps_the_earlier_one(data_root, out, monkeypatch):
    last = earlier(out / "efficientnet_lite0" / "rotation_scale" / "2" / "bottle" / "last.pt")
    full_disk(monkeypatch)
    result = run_here("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "2", "--stop_after", "1",
                      "--save_dir", out, "--overwrite", *TINY)
    assert_one_line_error(result, f"disk full while writing '{last}'", "earlier files are intact")
    assert files_under(out) == [last] and last.read_bytes() == b"an earlier run's file"


def test_train_corrupt_backbone_weights(data_root, out, tmp_path):
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(os.urandom(512))
    result = run("train.py", "--obj", "bottle", "--data_path", data_root, "--save_dir", out, "--backbone", "resnet18",
                 "--backbone_weights", weights, "--img_size", "64", "--max_images_per_category", "4")
    assert_one_line_error(result, f"--backbone_weights '{weights}' is not a PyTorch file", "resnet18-f37072fd.pth")
    assert files_under(out) == []


def test_train_resume_without_optimiser_state(data_root, out):
    last = out / "efficientnet_lite0" / "rotation_scale" / "2" / "bottle" / "last.pt"
    save_checkpoint(last, RegAD(ModelConfig("efficientnet_lite0", "rotation_scale", 64)), {"shot": 2, "epoch": 1})
    before = last.read_bytes()
    result = run("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "2", "--save_dir", out,
                 "--resume", *TINY)
    assert_one_line_error(result, f"'{last}' has no optimiser state", "--overwrite")
    assert files_under(out) == [last] and last.read_bytes() == before


def test_train_names_a_corrupt_training_image(data_root, tmp_path, out):
    data = tmp_path / "data"
    copy_category(data_root, "leather", data)
    copy_category(data_root, "cashew", data, train=4)
    bad = sorted((data / "cashew" / "train" / "good").iterdir())[2]
    bad.write_bytes(bad.read_bytes()[:300])
    result = run("train.py", "--obj", "leather", "--data_path", data, "--save_dir", out, "--epochs", "2", *TINY)
    assert_one_line_error(result, f"cannot read image '{bad}'")
    assert files_under(out) == []


def test_train_ctrl_c_says_how_to_resume(data_root, out):
    """SIGINT in the second epoch: one line naming the saved epoch and the exact command that continues.
    SIGINT gets its default action back in the child: a shell starts background jobs (pytest ... &) with it
    ignored, and Python then installs no KeyboardInterrupt handler."""
    command = [sys.executable, str(ROOT / "train.py"), "--obj", "bottle", "--data_path", str(data_root), "--epochs",
               "2", "--save_dir", str(out), *TINY]
    training = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in training.stdout:
        if line.startswith("  epoch 2/2 batch 10/"):
            training.send_signal(signal.SIGINT)
            break
    _, stderr = training.communicate(timeout=60)
    last = out / "efficientnet_lite0" / "rotation_scale" / "2" / "bottle" / "last.pt"
    resume = shlex.join(["python", *command[1:], "--resume"])
    assert_one_line_error(SimpleNamespace(returncode=training.returncode, stderr=stderr),
                          f"epoch 1 of 2 is saved in {last}; continue with: {resume}", code=130,
                          prefix="interrupted; ")
    assert temp_files(out) == []
    continued = subprocess.run([sys.executable, *shlex.split(resume)[1:]], cwd=ROOT, capture_output=True, text=True)
    assert continued.returncode == 0, continued.stderr
    assert [h["epoch"] for h in torch.load(last, weights_only=True)["meta"]["history"]] == [1, 2]


def test_test_eval_batch_size_must_be_positive(data_root, out):
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", "none", *LITE,
                 "--eval_batch_size", "0", "--out", out / "r")
    assert_one_line_error(result, "--eval_batch_size", "at least 1")
    assert files_under(out) == []


# ---- issue 23: nothing silently wrong, nothing lost ----

def leaky_checkpoint(path, shot=4):
    """A checkpoint whose meta lists leather (the target below) among its training categories, trained with K=4."""
    save_checkpoint(path, RegAD(ModelConfig("efficientnet_lite0", img_size=64)),
                    {"shot": shot, "train_categories": ["bottle", "leather"], "epoch": 1})
    return path


def test_test_refuses_a_checkpoint_trained_on_the_target_unless_allowed_and_labelled(data_root, tmp_path, out):
    ckpt = leaky_checkpoint(tmp_path / "leaky.pt")
    result = run("test.py", "--obj", "leather", "--data_path", data_root, "--checkpoint", ckpt, "--rounds", "1",
                 "--out", out / "r")
    assert_one_line_error(result, "was trained on leather itself", "--allow_target_in_training")
    assert not out.exists()
    result = run("test.py", "--obj", "leather", "--data_path", data_root, "--checkpoint", ckpt, "--rounds", "1",
                 "--out", out / "r", "--allow_target_in_training")
    assert result.returncode == 0, result.stderr
    report, table = json.loads((out / "r.json").read_text()), (out / "r.md").read_text()
    assert report["protocol"].startswith("LEAKAGE") and "honest" not in report["protocol"]
    assert report["protocol"] in table and "LEAKAGE" in result.stdout
    assert "note: checkpoint trained with K=4, scored with K=2" in result.stdout
    assert "checkpoint trained with K=4, scored with K=2" in table


def test_test_never_replaces_a_report_without_overwrite_and_records_a_pastable_command(data_root, tmp_path):
    out = tmp_path / "with space" / "r"
    quick = ["--obj", "leather", "--data_path", data_root, "--checkpoint", "none", "--rounds", "1", "--img_size",
             "64", *LITE, "--out", out]
    assert run("test.py", *quick).returncode == 0
    first = out.with_suffix(".json").read_bytes()
    assert shlex.split(json.loads(first)["command"])[-1] == str(out)  # quoted: pasting it runs the same command
    result = run("test.py", *quick)
    assert_one_line_error(result, "holds an earlier report", "--overwrite")
    assert out.with_suffix(".json").read_bytes() == first
    assert run("test.py", *quick, "--overwrite").returncode == 0


def test_test_default_report_names_differ_across_backbone_data_checkpoint_and_k(data_root, tmp_path):
    import importlib.util

    from datasets.mvtec import get_category
    spec = importlib.util.spec_from_file_location("entry_test", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    copy_category(data_root, "leather", tmp_path / "other")

    def name(data=data_root, ckpt="none", backbone="resnet18", shot=2):
        args = module.parse_args(["--obj", "leather", "--data_path", str(data), "--checkpoint", str(ckpt),
                                  "--shot", str(shot)])
        return module.default_out(args, [(get_category(data, "leather"), shot, ckpt, ModelConfig(backbone))]).name
    names = [name(), name(backbone="efficientnet_lite0"), name(data=tmp_path / "other"), name(ckpt=tmp_path / "a.pt"),
             name(ckpt=tmp_path / "b" / "a.pt"), name(shot=4)]
    assert len(set(names)) == len(names), names
    assert names[0].startswith("mvtec-mini_leather_regad_resnet18_untrained_k2_")
    assert names[1].startswith("mvtec-mini_leather_regad_efficientnet_lite0_untrained_k2_")


def test_failed_runs_leave_no_empty_output_folder(data_root, tmp_path):
    result = run("test.py", "--obj", "leather", "--shot", "1000", "--data_path", data_root, "--checkpoint", "none",
                 *LITE, "--out", tmp_path / "new" / "r", "--save_maps", tmp_path / "maps")
    assert_one_line_error(result, "K=1000")
    result = run("train.py", "--obj", "leather", "--data_path", data_root, "--backbone", "resnet18", "--save_dir",
                 tmp_path / "ckpts", env={"TORCH_HOME": str(tmp_path / "torch_home")})
    assert_one_line_error(result, "resnet18-f37072fd.pth")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "torch_home") == []  # no new, maps, ckpts


def test_a_second_run_into_the_same_run_folder_is_refused_and_a_killed_one_leaves_no_lock(data_root, out):
    save_dir = out / "runs here"  # a space: the recorded command must still paste as one argument
    folder = save_dir / "efficientnet_lite0" / "rotation_scale" / "2" / "leather"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from utils.io import lock_folder; "
                               f"lock_folder({str(folder)!r}, 'python train.py --obj leather (the first run)'); "
                               "print('locked', flush=True); time.sleep(600)"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run("train.py", "--obj", "leather", "--data_path", data_root, "--save_dir", save_dir, "--epochs",
                     "2", "--stop_after", "1", *TINY)
        assert_one_line_error(result, f"'{folder}' is being written by another run (pid {holder.pid}: python "
                                      "train.py --obj leather (the first run))")
    finally:
        holder.kill()  # as kill -9: no clean-up code runs
        holder.wait()
    result = run("train.py", "--obj", "leather", "--data_path", data_root, "--save_dir", save_dir, "--epochs", "2",
                 "--stop_after", "1", *TINY)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "leather_2_rotation_scale_model.pt",
                                                        "train_log.json"]  # the lock file is gone too
    command = shlex.split(json.loads((folder / "train_log.json").read_text())["command"])
    assert command[command.index("--save_dir") + 1] == str(save_dir)


def test_messages_name_what_is_wrong(data_root, tmp_path, out):
    """A data path that is a file is not 'missing'; a text file named .pt is not 'unreadable (KeyError)'."""
    text = tmp_path / "notes.txt"
    text.write_text("a text file")
    result = run("test.py", "--obj", "bottle", "--data_path", text, "--checkpoint", "none", "--out", out / "r")
    assert_one_line_error(result, f"data path '{text}' is a file, not a folder")
    fake = tmp_path / "model.pt"
    fake.write_text("model weights will go here\n")
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", fake, "--out", out / "r")
    assert_one_line_error(result, f"checkpoint '{fake}' is not a PyTorch file", "b'mode'")
    assert not out.exists()
