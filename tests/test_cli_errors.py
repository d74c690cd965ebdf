"""Every entry point rejects bad input up front: one 'error:' line on stderr, exit code 2, and no
checkpoint or result file left behind."""
import os

import pytest
import torch

from conftest import run_cli as run


LITE = ["--backbone", "efficientnet_lite0"]


def assert_one_line_error(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


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
    from models.regad import RegAD
    from utils.checkpoint import save_checkpoint
    ckpt = tmp_path / "lite.pt"
    save_checkpoint(ckpt, RegAD("efficientnet_lite0", "rotation_scale", 224), {"shot": 2})
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", ckpt,
                 "--backbone", "resnet18", "--out", out / "r")
    assert_one_line_error(result, "backbone=efficientnet_lite0", "backbone=resnet18")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    result = run("test.py", "--obj", "bottle", "--data_path", data_root, "--checkpoint", garbage, "--out", out / "r")
    assert_one_line_error(result, "cannot be read")

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
