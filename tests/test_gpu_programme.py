"""bench/gpu_programme.py --dry_run: the GPU programme's whole control flow on the CPU with tiny settings (a copy
of the tree, a few real images, 64 px, 1 support round, a 2-epoch schedule trained in two resumed pieces), so
it is known to work before a GPU is lent; then a rerun skips everything, the returned files unpack here
(--collect) and restore a fresh work folder."""
import json
import subprocess
import sys
import time

import pytest

import bench.gpu_programme as gpu_programme
from conftest import ROOT

STEPS = ["equivalence", "eval_speed", "train_speed", "baselines", "table"]
RUN = "save_checkpoints/mvtec-tiny_resnet18_e2_fp32_gpu/resnet18/rotation_scale/2/bottle"


def programme(*args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_programme.py"), "--dry_run", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)


@pytest.fixture(scope="module")
def dry_run(data_root, tmp_path_factory):
    if not (ROOT.parent / "shared" / "reference" / "official" / "checkpoint.pt").is_file():
        pytest.skip("official reference outputs not found")
    work = tmp_path_factory.mktemp("programme")
    first = programme("--work", work, "--time_budget", 3000)  # ~60 s on 2 idle cores; no flaky stop when busy
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return work, first.stdout, json.loads((work / "state.json").read_text())


def test_dry_run_runs_every_step_in_order_and_trains_in_resumed_pieces(dry_run):
    work, stdout, state = dry_run
    assert list(state["steps"]) == STEPS
    assert all(state["steps"][name]["status"] == "done" for name in STEPS), state["steps"]
    assert stdout.index("equivalence: done") < stdout.index("eval_speed: done") < stdout.index(
        "train_speed: done") < stdout.index("baselines: done") < stdout.index("train bottle k2") < stdout.index(
        "table: done")
    logs = {name: (work / "logs" / f"{name}.log").read_text() for name in STEPS}
    assert "1 passed, 1 skipped" in logs["equivalence"]  # the CPU forward against the official outputs; no CUDA
    assert "speed-up" in logs["eval_speed"] and "gradient deviation" in logs["train_speed"]
    assert "--no_training" in logs["baselines"] and "method patchcore" in logs["baselines"]
    assert state["precision"] in ("fp32", "bf16") and "eval_speed_note" in state  # no git in the copy
    assert state["runs"] == {"bottle k2": {**state["runs"]["bottle k2"], "epoch": 2, "status": "done"}}
    training = (work / "logs" / "train_bottle_k2.log").read_text()
    assert "--stop_after 1" in training and "--stop_after 2" in training and "--resume" in training
    assert "test set after epoch 0" in training and "test set after epoch 1" in training  # epoch 0 evaluated
    table = (work / "table.md").read_text()
    assert "| bottle |" in table and "not trained yet" not in table
    returned = sorted(p.name for p in (work / "return").iterdir())
    assert returned[-2:] == ["programme.tar.gz", "state.json"] and len(returned) <= 8
    assert returned[0] == "models_bottle_k2.tar.part00" and state["returned"] == [RUN]


def test_rerun_skips_what_is_done(dry_run):
    work, _, before = dry_run
    started = time.time()
    again = programme("--work", work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.time() - started < 30
    for name in STEPS[:-1]:
        assert f"{name}: done earlier, skipped" in again.stdout
    assert "running" not in again.stdout and "train bottle k2" not in again.stdout
    after = json.loads((work / "state.json").read_text())
    assert after["steps"] == before["steps"] and after["runs"] == before["runs"]
    assert len(after["calls"]) == len(before["calls"]) + 1


def test_returned_files_unpack_here_and_restore_a_fresh_machine(dry_run, tmp_path):
    work, _, state = dry_run
    ours = tmp_path / RUN / "bottle_2_rotation_scale_model_selected_on_test.pt"  # a run of this tree's own
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"trained here")
    gpu_programme.collect(work / "return", root=tmp_path)
    assert ours.read_bytes() == b"trained here"  # never replaced by a returned file
    ours.unlink()
    gpu_programme.collect(work / "return", root=tmp_path)
    for name in ("bottle_2_rotation_scale_model.pt", "bottle_2_rotation_scale_model_selected_on_test.pt"):
        assert (tmp_path / RUN / name).read_bytes() == (work / "repo" / RUN / name).read_bytes()
    assert json.loads((tmp_path / "out" / "gpu_programme" / "state.json").read_text())["runs"] == state["runs"]
    assert json.loads((tmp_path / "bench" / "gpu_programme_state.json").read_text())["runs"] == state["runs"]
    assert any((tmp_path / "results" / "runs" / "mvtec-tiny_resnet18").glob("regad_e2_fp32_gpu_bottle_k2_epoch2.json"))
    fresh = tmp_path / "fresh"  # a new machine: no state, no checkpoints, the carried programme.tar.gz
    restored = programme("--work", fresh, "--restore", tmp_path / ".carry" / "restore" / "programme.tar.gz")
    assert restored.returncode == 0 and "restored" in restored.stdout, restored.stderr[-3000:]
    assert "running" not in restored.stdout and "runs: 1 of 1 done" in restored.stdout


def test_time_budget_stops_before_a_step_that_does_not_fit(data_root, tmp_path):
    short = programme("--work", tmp_path, "--time_budget", 5)
    assert short.returncode == 0, short.stderr[-3000:]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["steps"] == {} and "does not fit" in state["calls"][-1]["stopped"]


def test_a_step_past_the_budget_is_killed_with_its_children(tmp_path):
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
            "print('started', flush=True); time.sleep(60)"
    started = time.time()
    status = gpu_programme.run_logged([sys.executable, "-c", child], tmp_path / "log", tmp_path, timeout=3)
    assert status == "timeout" and time.time() - started < 20
    assert "started" in (tmp_path / "log").read_text()
    assert "time.sleep(60)" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_device_machine_gets_a_shared_folder_pointing_into_the_carried_folders(tmp_path):
    """On the GPU machine ../shared does not travel: the folders carried in .carry/ stand in for it."""
    root, link_shared = tmp_path / "repo", gpu_programme.link_shared
    for name in ("equivalence/reference/official", "equivalence/data/mvtec-mini/bottle"):
        (root / ".carry" / name).mkdir(parents=True)
    link_shared(root)  # call 1: the equivalence carry only
    shared = tmp_path / "shared"
    assert (shared / "data").resolve() == (root / ".carry/equivalence/data").resolve()
    assert (shared / "reference/official").is_dir() and not (shared / "weights").exists()
    for name in ("train/data/mvtec-mini/cashew", "train/weights"):
        (root / ".carry" / name).mkdir(parents=True)
    link_shared(root)  # a later call on the same machine: the full data wins, the reference stays
    assert (shared / "data").resolve() == (root / ".carry/train/data").resolve()
    assert (shared / "weights").resolve() == (root / ".carry/train/weights").resolve()
    assert (shared / "reference").resolve() == (root / ".carry/equivalence/reference").resolve()
    other = tmp_path / "other"  # a real ../shared (the CPU machine) is left alone
    (other / "repo" / ".carry" / "train" / "data").mkdir(parents=True)
    (other / "shared").mkdir()
    link_shared(other / "repo")
    assert list((other / "shared").iterdir()) == []


def test_training_pieces_leave_the_baselines_to_their_step(data_root, tmp_path):
    """A training piece on the GPU must not spend device time on baseline cells: reproduce.py gets --no_baselines
    until the baselines step has made them, and then leaves those columns as 'not run'."""
    piece = gpu_programme.Programme(tmp_path, tmp_path, tmp_path / "return", gpu_programme.DRY,
                                    gpu_programme.parse_args(["--dry_run", "--work", str(tmp_path)]))
    assert "--no_baselines" in piece.table("--train_targets", "bottle")
    assert "--no_baselines" not in piece.table("--no_training", baselines=True)
    piece.state["steps"]["baselines"] = {"status": "done"}
    assert "--no_baselines" not in piece.table("--train_targets", "bottle")

    table = subprocess.run([sys.executable, "reproduce.py", "--data_path", data_root, "--backbone", "resnet18",
                            "--epochs", "7", "--no_training", "--no_baselines", "--out", tmp_path / "table"],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)  # 7 epochs: no checkpoint here
    assert table.returncode == 0, table.stderr[-3000:]
    assert "$ python test.py" not in table.stdout  # nothing scored
    cells = json.loads((tmp_path / "table.json").read_text())["cells"]
    for method in ("registration_free", "patchcore"):
        assert cells[method]["bottle"] == {k: {"not_run": "--no_baselines"} for k in ("2", "4", "8")}
    assert "8" in cells["patchcore"]["leather"]["8"]["not_run"]  # K=8 > the 4 normal images, as ever


def test_a_fresh_machine_goes_on_from_the_committed_state(tmp_path):
    """Without .carry/restore (another session, another checkout) the programme takes bench/
    gpu_programme_state.json, the state --collect wrote and a session committed, unless it is another setting's."""
    committed = tmp_path / "bench" / "gpu_programme_state.json"
    committed.parent.mkdir()
    for settings, expected in (("gpu", {}), ("dry_run", {"eval_speed": {"status": "done"}})):
        committed.write_text(json.dumps({"settings": settings, "steps": {"eval_speed": {"status": "done"}},
                                         "runs": {}, "to_return": [], "calls": []}))
        work = tmp_path / settings
        state = gpu_programme.Programme(tmp_path, work, work / "return", gpu_programme.DRY,
                                        gpu_programme.parse_args(["--dry_run", "--work", str(work)])).state
        assert state["steps"] == expected and state["settings"] == "dry_run"


def test_a_run_starts_only_if_it_can_finish_in_the_call(tmp_path):
    """The machine gives a part-trained run up 30 s after the call, so a run that fits a whole call waits for
    the next one rather than start in the time left; one no call could hold starts anyway (pieces)."""
    for budget, elapsed, reason in ((100, 50, "the whole run"), (60, 15, "the next epoch")):
        piece = gpu_programme.Programme(tmp_path, tmp_path / str(budget), tmp_path / "return", gpu_programme.DRY,
                                        gpu_programme.parse_args(["--dry_run", "--time_budget", str(budget)]))
        piece.started -= elapsed  # DRY: 2 epochs x 20 s + 30 s = 70 s for the whole run
        piece.state["precision"] = "fp32"
        run = {"target": "bottle", "shot": 2, "epoch": 0, "status": "todo"}
        assert piece.train(run) is False and run["status"] == "todo"
        assert piece.state["calls"][-1]["stopped"].startswith(f"train bottle k2: {reason}")


def test_a_tag_that_is_no_folder_name_is_refused_in_one_line(data_root, tmp_path):
    bad = subprocess.run([sys.executable, "reproduce.py", "--data_path", data_root, "--tag", "../gpu",
                          "--no_training", "--no_baselines", "--out", tmp_path / "table"], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--tag '../gpu'" in bad.stderr
    assert not (tmp_path / "table.json").exists()


def test_device_time_goes_first_to_the_runs_the_committed_table_lacks(data_root, tmp_path):
    """A run part-trained on this machine first (lost when it goes back), then the runs the committed table
    lacks at its whole schedule (a run stopped at 45 of 50 counts as lacking), last those it has."""
    root = tmp_path / "repo"
    (root / "results").mkdir(parents=True)
    (tmp_path / "shared").symlink_to(data_root.parents[1])
    cells = {"bottle": {"2": {"meta": {"epoch": 50, "epochs": 50}}, "4": {"not_run": "not trained"}},
             "pill": {"2": {"meta": {"epoch": 45, "epochs": 50}}},
             "screw": {"8": {"meta": {"epoch": 50, "epochs": 50}}}}
    (root / "results" / "mvtec-mini_resnet18.json").write_text(json.dumps({"cells": {"regad": cells}}))
    args = gpu_programme.parse_args(["--restore", str(tmp_path / "none.tar.gz")])
    programme = gpu_programme.Programme(root, tmp_path / "work", tmp_path / "out", gpu_programme.GPU, args)
    programme.state["precision"] = "fp32"
    last = programme.checkpoints({"target": "pill", "shot": 8})[0] / "last.pt"
    last.parent.mkdir(parents=True)
    last.touch()
    order = [f"{run['target']} k{run['shot']}" for run in programme.plan_runs()]
    targets = ["bottle", "leather", "metal_plate", "pill", "screw", "transistor"]
    assert order == (["pill k8"] + [f"{t} k2" for t in targets[1:]] + [f"{t} k4" for t in targets]
                     + ["bottle k8", "metal_plate k8", "transistor k8", "bottle k2", "screw k8"])
