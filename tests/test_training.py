"""train.py's schedule and data split, against the official formula and the data on disk."""
import math

import pytest

from conftest import run_cli
from train import cosine_lr, parse_args, split_pools
from utils.errors import UserError


def official_lr(base, epoch, epochs):
    """The official train.py's adjust_learning_rate: base * 0.5 * (1 + cos(pi * epoch / epochs))."""
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


@pytest.mark.parametrize("epochs", [2, 50])
def test_cosine_schedule_is_the_official_one(epochs):
    rates = [cosine_lr(1e-4, epoch, epochs) for epoch in range(1, epochs + 1)]
    assert rates == [official_lr(1e-4, epoch, epochs) for epoch in range(1, epochs + 1)]
    assert rates[0] < 1e-4 and rates[-1] == 0  # as the official: epoch 1 below the base rate, the last at 0


def test_a_schedule_that_trains_nothing_is_refused(data_root, tmp_path):
    """--epochs 1 would run its only epoch at rate 0: one line naming the way to a one-epoch trial."""
    result = run_cli("train.py", "--obj", "bottle", "--data_path", data_root, "--epochs", "1", "--save_dir", tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--epochs 1 trains nothing" in result.stderr and "--epochs 50 --stop_after 1" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_validation_split_holds_out_a_fifth_of_the_named_categories(data_root):
    args = parse_args(["--obj", "bottle", "--data_path", str(data_root), "--val_categories", "pill", "screw"])
    target, pools = split_pools(args)
    assert target.name == "bottle" and "bottle" not in pools
    for name, (train, held) in pools.items():
        everything = sorted(p.name for p in train + held)
        assert everything == sorted(p.name for p in (data_root / name / "train" / "good").iterdir())
        if name in ("pill", "screw"):
            assert len(held) == int(len(everything) * 0.2) and not set(train) & set(held)
        else:
            assert held == []
    again = split_pools(args)[1]
    assert again["pill"][1] == pools["pill"][1]  # the same seed holds out the same images
    other = split_pools(parse_args(["--obj", "bottle", "--data_path", str(data_root), "--val_categories", "pill",
                                    "--seed", "1"]))[1]
    assert other["pill"][1] != pools["pill"][1]


def test_validation_category_must_be_a_training_category(data_root):
    args = parse_args(["--obj", "bottle", "--data_path", str(data_root), "--val_categories", "bottle"])
    with pytest.raises(UserError, match="not among the training categories"):
        split_pools(args)
