"""Atomic writes (utils.io): a write killed midway leaves its target as it was, and the next write to the same
path removes the dead writer's temp file; a full disk is named as such; all_or_nothing() replaces a set of
files together or not at all."""
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, full_disk
from utils.errors import UserError
from utils.io import all_or_nothing, atomic_torch_save, atomic_write_text


KILLED_MID_WRITE = """
import sys, time
sys.path.insert(0, sys.argv[1])
import torch, utils.io
def stuck(tmp, data):  # half of the checkpoint is on disk when the kill comes
    with open(tmp, "wb") as f:
        f.write(bytes(data)[:len(data) // 2])
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
utils.io.write_file = stuck
utils.io.atomic_torch_save({"epoch": 2, "weights": torch.zeros(100_000)}, sys.argv[2])
"""


def test_a_kill_during_a_checkpoint_write_keeps_the_earlier_file_and_the_next_write_cleans_up(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, path)
    writer = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(ROOT), str(path)], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    stale = tmp_path / f".last.pt.{writer.pid}.tmp"
    assert stale.is_file() and torch.load(path, weights_only=True) == {"epoch": 1}

    atomic_torch_save({"epoch": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.load(path, weights_only=True) == {"epoch": 3}


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".out.json.{alive.pid}.tmp"
        busy.write_text("another process is writing this")
        atomic_write_text(tmp_path / "out.json", "mine")
        assert busy.read_text() == "another process is writing this"
    finally:
        alive.kill()
        alive.wait()
    atomic_write_text(tmp_path / "out.json", "mine again")  # now that writer is dead: cleaned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_full_disk_is_named_and_the_earlier_file_survives(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, path)
    full_disk(monkeypatch)
    with pytest.raises(UserError, match=r"disk full while writing '.*last.pt'; free some space and rerun "
                                        r"\(earlier files are intact"):
        atomic_torch_save({"epoch": 2, "weights": torch.zeros(1000)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_all_or_nothing_replaces_every_file_or_none(tmp_path):
    first, second = tmp_path / "scores.csv", tmp_path / "figures" / "0000_a.png"
    atomic_write_text(first, "earlier")
    with pytest.raises(KeyboardInterrupt):
        with all_or_nothing():
            atomic_write_text(first, "new")
            atomic_write_text(second, "new")
            assert first.read_text() == "earlier"  # staged, not yet in place
            raise KeyboardInterrupt
    assert first.read_text() == "earlier" and not second.exists()
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []
    with all_or_nothing():
        atomic_write_text(first, "new")
        atomic_write_text(second, "new")
    assert first.read_text() == second.read_text() == "new"
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []

