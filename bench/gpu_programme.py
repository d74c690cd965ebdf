"""The GPU programme of issue 16, as one rerunnable command: (1) the CUDA equivalence tests, (2) eval and
train speed on CUDA (TF32/bf16 numerics against fp32 and the batch noise), (3) the 50-epoch RegAD trainings of
results/mvtec-mini_resnet18.md (K = 2, 4, 8, every target with a test split, the paper-protocol evaluation
before each epoch, epoch 0 included), (4) test.py for every trained model and the table. Every step is a
subprocess of the project's own entry points (pytest, bench/eval_speed.py, bench/train_speed.py,
reproduce.py -> train.py / test.py); its output goes to <work>/logs/<step>.log and its outcome to
<work>/state.json. A rerun skips what the state records as done and resumes trainings from their last.pt.

    python bench/gpu_programme.py --pack               # here, on the CPU: build .carry/ (once per data change)
    python3 bench/gpu_programme.py --time_budget 540   # on the GPU machine (device tool `run`), repeatedly
    python bench/gpu_programme.py --collect FILES_AT   # here: unpack what a call returned
    python bench/gpu_programme.py --dry_run            # here: the same steps on the CPU, tiny, in a temp folder

--time_budget: no step starts whose estimate (a guess, then measured times) would pass it, and a step still
running at the budget is killed (a training keeps its last finished epoch in last.pt); keep it below the
command's timeout_s so the export at the end happens. --precision auto: the fastest of tf32/bf16 that
bench/train_speed.py reports within the gradient noise, else fp32; chosen once, kept in the state.

Sizes, measured here (MiB = 2^20 bytes of file content): a call carries the working tree (0.4 MiB) plus its
`carry` paths, 64 MiB in all; it returns at most 8 files of 16 MiB from $OUT.
- .carry/equivalence, 56.1 MiB: ../shared/reference/official (50.9; checkpoint.pt 29.4, forward.pt 12.8) and
  mvtec-mini/bottle (5.2): what step (1) reads.
- .carry/train, 44.9 MiB: all of mvtec-mini (34.6, JPEG/PNG, incompressible) and the ResNet-18 weights (10.7):
  what steps (2)-(4) read. Together the two are ~100 MiB: call 1 carries the first, later calls the second
  (on a warm machine what an earlier call carried stays there).
- .carry/restore/programme.tar.gz, < 1 MiB: state, logs, the table so far and results/runs/ (every test.py
  result, so no evaluation is redone), as the last call returned it; unpacked when <work> has no state.
- A ResNet-18 RegAD last.pt (7.69 M parameters + SGD momentum) is 58.7 MiB (38 gzipped after one step), a
  model without optimiser 29.4 MiB (27.0 gzipped). Beside .carry/train only 18.7 MiB are left: no checkpoint
  fits, so a training cannot move to a fresh machine. Each run (target, K) trains from epoch 0 to 50 on one
  machine, in pieces (reproduce.py --stop_after N) across calls while it stays warm (save_checkpoints/ stays
  between calls); a run cut by the machine going back restarts from 0 next time (its results/runs files from
  the lost machine are deleted first). Hence runs go one by one (--train_targets T --train_shots K), not
  all 17 to epoch N together, and a run that one call can hold starts only when it can finish in this one (a
  machine is given back 30 s after a call, too soon to count on the next).
- Return: state.json, programme.tar.gz, and a finished run's model, test-selected model and train_log.json
  (58.8 MiB) as a plain tar in 15 MiB parts, models_<T>_k<K>.tar.partNN: 4 parts, so one run per call (another
  finished run waits for the next call on the same machine). All 17 runs' models (~1 GiB) come back over ~17
  calls; the complete table needs them in one place: here, after --collect, python reproduce.py
  --data_path ../shared/data/mvtec-mini --backbone resnet18 --backbone_weights ../shared/weights/resnet18_imagenet_to_layer3.pth --epochs 50
  --shots 2 4 8 --tag gpu --no_training (the --precision the state chose). The runs are named apart (--tag
  gpu): a run trained or resumed on the CPU is another run, and --collect never replaces a file this tree has.

The device tool's run, from the checkout the GPU session sends, after --pack there (each <= 600 s):
    call 1: command "python3 bench/gpu_programme.py --time_budget 540", carry [".carry/equivalence"], timeout_s 600
            (only while the state has not the equivalence step done; since 2026-11-26 it has)
    then:   the same command, carry [".carry/train", ".carry/restore"], timeout_s 600, again while time is left,
            --collect FILES_AT after each call (it also puts programme.tar.gz into .carry/restore for the next
            and the state into bench/gpu_programme_state.json, to commit).
Time, measured on an H100 (results/gpu_h100.md): steps (1)-(2) take ~100 s; a K=2 run of 50 epochs ~6 min
(1.9 s of training + 3.7 s of test-set evaluation per epoch, plus ~60 s); K=4 and K=8 take longer (guessed
9 and 14 s per epoch). A task's 15 minutes of device time, a machine's start included, hold one or two runs:
the table needs its 17 runs over several GPU sessions, each going on from the committed state. The 11 runs the
committed table lacks (K = 4 and 8) go first: its K = 2 runs were trained to 50 epochs on the CPU (plan_runs).
Steps (1)-(2) are done (results/gpu_h100.md: 10 CUDA tests passed, the speed figures) and the committed
bench/gpu_programme_state.json says so, so a later GPU session starts at the trainings with the second kind of
call. This is the development environment's driver for its lent GPU; a user with GPUs runs reproduce.py
(--launcher local or slurm).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2 ** 20
CARRY_LIMIT, PART, RETURN_FILES = 64 * MiB, 15 * MiB, 8
WEIGHTS = "resnet18_imagenet_to_layer3.pth"
BOTTLE_TEST = {"good": 2, "broken_large": 2}  # the dry run's tiny test set
CUDA_TEST = "tests/test_models.py::test_cpu_and_cuda_give_the_same_outputs"
OFFICIAL = "official RegAD on an H100, K=2: 3.5-4.8 s per training epoch (869 queries) + ~243 s of test-set evaluation"
STATE = "bench/gpu_programme_state.json"  # committed by --collect: where the programme stands, across sessions
TAG = "gpu"  # reproduce.py --tag: these runs' names, apart from any trained on the CPU (a resumed CPU run is another run)
STEPS = ("equivalence", "eval_speed", "train_speed", "baselines")  # then one training step per run, then "table"

GPU = {"device": "cuda", "dataset": "mvtec-mini", "shots": [2, 4, 8], "epochs": 50, "rounds": 10, "piece_epochs": 0,
       "img_size": [],
       "pytest": ["-rs"], "eval_speed": [], "train_speed": ["--steps", "8"],  # screw: 10 full batches of 32
       # seconds until measured here: step wall time; per epoch (train + evaluation) by K; per piece. Measured on
       # an H100 (2026-11-26): equivalence 23, eval_speed 44, train_speed 32, baselines ~230, K=2 epoch 5.7 (1.9
       # training + 3.7 test-set evaluation), a piece's start, first epoch and two test.py ~60; K=4/8 are guesses
       "guess": {"equivalence": 60, "eval_speed": 90, "train_speed": 60, "baselines": 300, "table": 60},
       "epoch_guess": {2: 6, 4: 9, 8: 14}, "piece_overhead": 60}
DRY = {"device": "cpu", "dataset": "mvtec-tiny", "shots": [2], "epochs": 2, "rounds": 1, "piece_epochs": 1,
       "img_size": ["--img_size", 64],  # reproduce.py passes it to train.py and test.py
       "pytest": ["-k", "(forward_matches_official and eval and cpu) or cpu_and_cuda"],
       "eval_speed": ["--rounds", "1", "--n_test", "2", "--naive_positions", "8", "--repeat", "1"],
       "train_speed": ["--img_size", "64", "--batch_size", "2", "--steps", "1"],
       "guess": dict.fromkeys(STEPS + ("table",), 60), "epoch_guess": {2: 20}, "piece_overhead": 30}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true",
                      help="the same steps on the CPU with tiny settings and data, in a copy of this tree under "
                           "--work (default: a new temporary folder)")
    mode.add_argument("--pack", action="store_true", help="build .carry/ from ../shared and print its sizes (CPU)")
    mode.add_argument("--collect", metavar="DIR", help="unpack what a device call returned (its files_at folder)")
    parser.add_argument("--work", help="state.json, logs/, table.* (default out/gpu_programme)")
    parser.add_argument("--out", help="what comes back: default $OUT, else <work>/return (dry run: <work>/return)")
    parser.add_argument("--restore", default=".carry/restore/programme.tar.gz",
                        help="a returned programme.tar.gz, unpacked when --work holds no state (a fresh machine)")
    parser.add_argument("--time_budget", type=float, default=540, help="seconds; keep below the call's timeout_s")
    parser.add_argument("--precision", choices=("auto", "fp32", "tf32", "bf16"), default="auto")
    parser.add_argument("--skip", nargs="*", default=[], choices=STEPS, help="steps to pass over, recorded as skipped")
    parser.add_argument("--baseline_commit", default="2055442", help="eval_speed.py --baseline, where git has it")
    return parser.parse_args(argv)


def files_under(path):
    path = Path(path)
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def size(paths):
    return sum(p.stat().st_size for path in paths for p in files_under(path))


def copy_files(source, target, names=None):
    """Copy files (not permissions: ../shared is read-only) from source to target, keeping relative paths."""
    for path in (files_under(source) if names is None else [source / n for n in names]):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def tree_files(root):
    """What the device tool sends: tracked and untracked-not-ignored files."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                             text=True, check=True).stdout
    return [name for name in listing.split("\0") if name and (root / name).is_file()]


def pack():
    """.carry/equivalence and .carry/train from ../shared; prints what each call carries."""
    shared, carry = ROOT.parent / "shared", ROOT / ".carry"
    sets = {"equivalence": ["reference/official", "data/mvtec-mini/bottle"],
            "train": ["data/mvtec-mini", f"weights/{WEIGHTS}"]}  # the paper's numbers ship in utils/
    tree = size(ROOT / name for name in tree_files(ROOT))
    restore = size([carry / "restore"]) if (carry / "restore").is_dir() else 0
    for name, parts in sets.items():
        shutil.rmtree(carry / name, ignore_errors=True)
        for part in parts:
            source = shared / part
            if source.is_dir():
                copy_files(source, carry / name / part)
            else:
                copy_files(source.parent, (carry / name / part).parent, [source.name])
        total = tree + size([carry / name]) + (restore if name == "train" else 0)
        print(f".carry/{name}: {size([carry / name]) / MiB:.1f} MiB ({', '.join(parts)}); with the tree "
              f"({tree / MiB:.1f} MiB){' and .carry/restore' if name == 'train' else ''}: {total / MiB:.1f} MiB "
              f"of {CARRY_LIMIT / MiB:.0f}" + ("" if total <= CARRY_LIMIT else "  TOO LARGE"))
    (carry / "restore").mkdir(exist_ok=True)
    print('device tool run: command "python3 bench/gpu_programme.py --time_budget 540", timeout_s 600; '
          'carry [".carry/equivalence"] first, then [".carry/train", ".carry/restore"]')


def link_shared(root):
    """On the device machine there is no ../shared: make one whose folders point into the carried .carry/."""
    shared, carry, mark = root.parent / "shared", root / ".carry", ".made_by_gpu_programme"
    if not carry.is_dir() or (shared.exists() and not (shared / mark).exists()):
        return  # no carry, or a real ../shared (the CPU machine): leave it
    shared.mkdir(exist_ok=True)
    (shared / mark).touch()
    for name, sources in (("data", ("train", "equivalence")), ("weights", ("train",)),
                          ("reference", ("equivalence", "train"))):
        source = next((carry / s / name for s in sources if (carry / s / name).exists()), None)
        link = shared / name
        if link.is_symlink():
            link.unlink()
        if source is not None:
            link.symlink_to(source.resolve())


def prepare_dry_run(work):
    """work/repo: a copy of this tree (so results/ and save_checkpoints/ stay out of it); work/shared: links to
    the real ../shared, and data/mvtec-tiny, a few bottle (target) and screw (training) images."""
    real = ROOT.parent / "shared"
    for need in (real / "data" / "mvtec-mini" / "bottle", real / "weights" / WEIGHTS, real / "reference" / "official"):
        if not need.exists():
            sys.exit(f"the dry run needs {need}")
    repo, shared = work / "repo", work / "shared"
    if not repo.is_dir():
        copy_files(ROOT, repo, tree_files(ROOT))
    if not shared.is_dir():
        (shared / "data").mkdir(parents=True)
        for name in ("data/mvtec-mini", "weights", "reference"):
            (shared / name).symlink_to(real / name)
        source, tiny = real / "data" / "mvtec-mini", shared / "data" / "mvtec-tiny"
        for category, tests in (("bottle", BOTTLE_TEST), ("screw", {})):
            links = [f"train/good/{p.name}" for p in sorted((source / category / "train" / "good").iterdir())[:6]]
            for defect, count in tests.items():
                for path in sorted((source / category / "test" / defect).iterdir())[:count]:
                    links.append(f"test/{defect}/{path.name}")
                    if defect != "good":
                        links.append(f"ground_truth/{defect}/{path.stem}_mask.png")
            for name in links:
                (tiny / category / name).parent.mkdir(parents=True, exist_ok=True)
                (tiny / category / name).symlink_to(source / category / name)
    return repo


def run_logged(command, log, cwd, timeout):
    """Run command, its stdout and stderr appended to log; 'done', 'failed' or 'timeout' (its process group
    killed, train.py included, so nothing runs on into the next call)."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(map(str, command))}\n")
        out.flush()
        process = subprocess.Popen(list(map(str, command)), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, process_group=0)
        try:
            code = process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
        out.write(f"# exit {code}\n")
    return "done" if code == 0 else "timeout" if code is None else "failed"


def extract(archive, folders, keep=()):
    """Unpack members '<prefix>/rest' of a tar into folders[prefix]; the files of the prefixes in keep that
    already exist there are left alone. Returns the paths left alone."""
    kept = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            prefix, _, rest = member.name.partition("/")
            if prefix in folders and rest:
                if prefix in keep and member.isfile() and (Path(folders[prefix]) / rest).exists():
                    kept.append(rest)
                    continue
                member.name = rest
                tar.extract(member, folders[prefix], filter="data")
    return kept


def committed_runs(table, epochs):
    """(target, K) whose honest RegAD cell in a committed reproduce.py table ran the whole schedule."""
    if not table.is_file():
        return set()
    have = set()
    for target, per_k in json.loads(table.read_text())["cells"]["regad"].items():
        for k, result in per_k.items():
            meta = result.get("meta", {})
            if meta.get("epoch") == meta.get("epochs") == epochs:
                have.add((target, int(k)))
    return have


class Programme:
    def __init__(self, root, work, out, cfg, args):
        self.root, self.work, self.out, self.cfg, self.args = root, work, out, cfg, args
        self.started, self.python = time.time(), sys.executable
        self.data = f"../shared/data/{cfg['dataset']}"
        self.weights = f"../shared/weights/{WEIGHTS}"
        self.name = f"{cfg['dataset']}_resnet18"  # reproduce.py's: results/<name>.json, runs/<name>/, checkpoints
        self.runs_dir = root / "results" / "runs" / self.name
        (work / "logs").mkdir(parents=True, exist_ok=True)
        state_file, settings = work / "state.json", "dry_run" if args.dry_run else "gpu"
        restore, committed = root / args.restore, root / STATE
        if not state_file.is_file() and restore.is_file():
            extract(restore, {"work": work, "repo": root})
            print(f"restored {restore}")
        elif not state_file.is_file() and committed.is_file() and json.loads(committed.read_text())[
                "settings"] == settings:  # a fresh machine without .carry/restore: the state the tree has
            shutil.copyfile(committed, state_file)
            print(f"state from {STATE}")
        self.state = json.loads(state_file.read_text()) if state_file.is_file() else {
            "settings": settings, "steps": {}, "runs": {}, "to_return": [], "calls": []}
        self.state["calls"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget": args.time_budget})

    # -- bookkeeping
    def left(self):
        return self.args.time_budget - (time.time() - self.started)

    def save(self):
        path = self.work / "state.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.state, indent=1) + "\n")
        path.with_suffix(".tmp").replace(path)

    def stop(self, reason):
        print(f"stopped: {reason}")
        self.state["calls"][-1]["stopped"] = reason
        return False

    def execute(self, name, command, estimate, needs=(), fail_if=None):
        """Run a step unless the state says it is done; False when the programme has to stop here. fail_if: a
        word that fails the step when it is in the end of the log (pytest's 'skipped' on the GPU)."""
        record = self.state["steps"].get(name, {})
        if record.get("status") in ("done", "skipped"):
            print(f"{name}: {record['status']} earlier, skipped")
            return True
        missing = [n for n in needs if not (self.root / n).exists()]
        if missing:
            return self.stop(f"{name} needs {', '.join(missing)}: carry " +
                             (".carry/equivalence" if name == "equivalence" else ".carry/train"))
        estimate = max(estimate, record.get("seconds", 0))
        if estimate > self.left():
            return self.stop(f"{name} (~{estimate:.0f} s) does not fit the {self.left():.0f} s left")
        print(f"{name}: running (log {self.work / 'logs' / name}.log)", flush=True)
        started = time.time()
        log = self.work / "logs" / f"{name}.log"
        status = run_logged(command, log, self.root, self.left())
        if status == "done" and fail_if and fail_if in log.read_text()[-300:]:
            status = f"failed ('{fail_if}')"
        self.state["steps"][name] = {"status": status, "seconds": round(time.time() - started, 1),
                                     "command": " ".join(map(str, command))}
        self.export()
        print(f"{name}: {status} in {time.time() - started:.0f} s")
        return status == "done" or self.stop(f"{name} {status}; see its log")

    def table(self, *extra, baselines=False):
        """reproduce.py with this programme's settings; --out in <work>. The baseline columns only once
        the baselines step has made them (or for that step): a training piece must not spend its device time
        on them (a skipped baselines step left 12 test.py calls, 230 s on an H100, to the first piece)."""
        c = self.cfg
        baselines = baselines or self.state["steps"].get("baselines", {}).get("status") == "done"
        return [self.python, "reproduce.py", "--data_path", self.data, "--backbone", "resnet18",
                "--backbone_weights", self.weights, "--shots", *c["shots"], "--rounds", c["rounds"], "--epochs",
                c["epochs"], "--precision", self.state.get("precision", "fp32"), "--device", c["device"],
                *c["img_size"], "--tag", TAG, "--out", self.work / "table", *([] if baselines else ["--no_baselines"]),
                *extra]

    # -- the steps
    def run(self):
        c, py = self.cfg, self.python
        for name in self.args.skip:
            self.state["steps"].setdefault(name, {"status": "skipped", "note": "--skip"})
        self.export()  # the state comes back even if nothing else happens
        common = ["--device", c["device"], "--backbone", "resnet18", "--backbone_weights", self.weights,
                  "--data_path", self.data]
        baseline = shutil.which("git") and subprocess.run(
            ["git", "rev-parse", "--verify", "-q", f"{self.args.baseline_commit}^{{commit}}"], cwd=self.root,
            capture_output=True).returncode == 0
        if not baseline:
            self.state["eval_speed_note"] = f"no git checkout with {self.args.baseline_commit}: --baseline not run"
        carried = [self.weights, self.data]  # .carry/train
        steps = [("equivalence", [py, "-m", "pytest", "-q", "tests/test_official_equivalence.py", CUDA_TEST,
                                  *c["pytest"]], ["../shared/reference/official", "../shared/data/mvtec-mini/bottle"]),
                 ("eval_speed", [py, "bench/eval_speed.py", *common, *c["eval_speed"],
                                 *(["--baseline", self.args.baseline_commit] if baseline else [])], carried),
                 ("train_speed", [py, "bench/train_speed.py", *common, *c["train_speed"]], carried),
                 ("baselines", self.table("--no_training", baselines=True), carried)]
        gpu_skips = "skipped" if c["device"] == "cuda" else None  # a CUDA test skipped on the GPU fails the step
        ok = all(self.execute(name, command, c["guess"][name], needs, gpu_skips if name == "equivalence" else None)
                 for name, command, needs in steps)
        if ok:
            self.choose_precision()
            ok = all(self.train(run) for run in self.plan_runs())
        trained = any(name.startswith("train ") for name in self.state["calls"][-1].get("ran", []))
        if ok and (self.state["steps"].get("table", {}).get("status") != "done" or trained):
            self.state["steps"].pop("table", None)  # redone: a progress table until every run is done
            if self.execute("table", self.table("--no_training"), c["guess"]["table"], carried):
                if not all(r["status"] == "done" for r in self.state["runs"].values()):
                    self.state["steps"]["table"]["status"] = "partial"
        self.speed_summary()
        self.export()
        self.report()

    def choose_precision(self):
        """Once: --precision, or with auto the fastest reduced precision train_speed.py found within noise."""
        if "precision" in self.state:
            return
        choice, why = self.args.precision, "--precision"
        if choice == "auto":
            text = (self.work / "logs" / "train_speed.log").read_text() if self.state["steps"].get(
                "train_speed", {}).get("status") == "done" else ""
            speeds = {p: float(s) for p, s in re.findall(r"^\s+(fp32|tf32|bf16), NCHW\s+([\d.]+) images/s", text, re.M)}
            within = set(re.findall(r"^(tf32|bf16), \S+: gradient deviation .* -> within noise", text, re.M))
            faster = [p for p in within if speeds.get(p, 0) > speeds.get("fp32", float("inf"))]
            choice = max(faster, key=speeds.get, default="fp32")
            why = f"train_speed: {speeds} images/s, within noise: {sorted(within) or 'none'}"
        self.state["precision"], self.state["precision_why"] = choice, why
        print(f"precision {choice} ({why})")

    def plan_runs(self):
        """Every (target with a test split, K <= its normal images), kept in the state. Device time goes first to
        a run part-trained on this machine (lost when the machine goes back), then to the runs the committed
        table lacks at its whole schedule, last to those it has (trained on the CPU): the GPU only repeats them.
        Otherwise in the state's order, K = 2 before 4 before 8."""
        from datasets.mvtec import discover_categories
        categories = discover_categories(self.root.parent / "shared" / "data" / self.cfg["dataset"])
        for k in self.cfg["shots"]:
            for name, category in categories.items():
                if category.has_test and k <= len(category.train_images):
                    self.state["runs"].setdefault(f"{name} k{k}", {"target": name, "shot": k, "epoch": 0,
                                                                   "status": "todo"})
        have = committed_runs(self.root / "results" / f"{self.name}.json", self.cfg["epochs"])
        todo = [run for run in self.state["runs"].values() if run["status"] != "done"]
        return sorted(todo, key=lambda run: (not (self.checkpoints(run)[0] / "last.pt").is_file(),
                                             (run["target"], run["shot"]) in have))

    def checkpoints(self, run):
        from models.checkpoint import checkpoint_path
        from models.config import ModelConfig
        training = f"e{self.cfg['epochs']}_{self.state['precision']}_{TAG}"  # reproduce.py's name of the run
        save_dir = self.root / "save_checkpoints" / f"{self.name}_{training}"
        return checkpoint_path(save_dir, "resnet18", ModelConfig.stn_mode, run["shot"], run["target"]).parent, training

    def trained(self, run):
        """(epoch of this machine's last.pt, seconds per epoch: training + the evaluation before it, or None)."""
        import torch
        last = self.checkpoints(run)[0] / "last.pt"
        if not last.is_file():
            return 0, None
        meta = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["meta"]
        train = [h["seconds"] for h in meta["history"]]
        evaluation = [c["seconds"] for c in meta.get("test_curve", [])] or [0]
        run["train_s_per_epoch"] = round(sum(train) / len(train), 2)
        run["eval_s_per_epoch"] = round(sum(evaluation) / len(evaluation), 2)
        return meta["epoch"], run["train_s_per_epoch"] + run["eval_s_per_epoch"]

    def per_epoch(self, run):
        """Seconds per epoch (training + evaluation) of a run at this K: measured in any run of the state, or
        the guess."""
        same_k = [r["train_s_per_epoch"] + r["eval_s_per_epoch"] for r in self.state["runs"].values()
                  if r["shot"] == run["shot"] and "train_s_per_epoch" in r]
        return max(same_k) if same_k else self.cfg["epoch_guess"][run["shot"]]

    def train(self, run):
        """Pieces of reproduce.py (train.py up to the epoch the budget allows, resumed from last.pt, then test.py
        on the model) until the run reaches the last epoch; False when the programme has to stop. A run starts
        only if it can finish in this call, unless no call could hold it: its machine gives up a part-trained run
        30 s after the call, so a piece left for the next call is usually lost."""
        c, name = self.cfg, f"train {run['target']} k{run['shot']}"
        folder, training = self.checkpoints(run)
        reached, per_epoch = self.trained(run)
        if reached == 0 and run["epoch"] > 0:
            print(f"{name}: epoch {run['epoch']} was on a machine that has gone back; restarting from 0")
        whole = c["epochs"] * self.per_epoch(run) + c["piece_overhead"]
        if reached == 0 and self.left() < whole <= self.args.time_budget:
            return self.stop(f"{name}: the whole run (~{whole:.0f} s) does not fit the {self.left():.0f} s left; "
                             "the next call starts it")
        if reached == 0:  # a fresh start: earlier results of this run (another machine's) must not be reused
            for pattern in (f"regad_{training}_{run['target']}_k{run['shot']}_epoch*",
                            f"regad_selected_{training}_{run['target']}_k{run['shot']}_epoch*"):
                for stale in self.runs_dir.glob(pattern):
                    stale.unlink()
        while run["status"] != "done":  # at the last epoch already (a failed test.py): reproduce.py only scores
            per_epoch = per_epoch or self.per_epoch(run)
            stop = min(c["epochs"], reached + int((self.left() - c["piece_overhead"]) // per_epoch),
                       reached + (c["piece_epochs"] or c["epochs"]))
            if stop <= reached < c["epochs"] or self.left() < c["piece_overhead"]:
                return self.stop(f"{name}: the next epoch (~{per_epoch:.0f} s + {c['piece_overhead']} s) does not "
                                 f"fit the {self.left():.0f} s left (at epoch {reached} of {c['epochs']})")
            stop = max(stop, reached)
            print(f"{name}: epochs {reached + 1}..{stop} of {c['epochs']} (~{per_epoch:.0f} s each)", flush=True)
            started = time.time()
            status = run_logged(self.table("--train_targets", run["target"], "--train_shots", run["shot"],
                                           "--stop_after", stop), self.work / "logs" / f"train_{run['target']}_k"
                                f"{run['shot']}.log", self.root, self.left())
            reached, per_epoch = self.trained(run)
            run["epoch"], run["status"] = reached, "failed" if status == "failed" else "training"
            run["seconds"] = round(run.get("seconds", 0) + time.time() - started, 1)
            self.state["calls"][-1].setdefault("ran", []).append(name)
            if status == "done" and reached == c["epochs"]:
                run["status"] = "done"
                self.state["to_return"].append(str(folder.relative_to(self.root)))
            self.export()
            print(f"{name}: {status}, at epoch {reached} of {c['epochs']} after {time.time() - started:.0f} s")
            if status != "done":
                return self.stop(f"{name} {status}; see its log")
        return True

    # -- what comes back
    def export(self):
        """Into --out: finished runs' models (15 MiB parts, as many as the 8-file limit allows), then state.json
        and programme.tar.gz (state, logs, table, results/runs)."""
        self.save()
        self.out.mkdir(parents=True, exist_ok=True)
        ours = {"state.json", "programme.tar.gz"}
        for folder in list(self.state["to_return"]):
            if not (self.root / folder).is_dir():  # finished on a machine that went back before returning it
                self.state["to_return"].remove(folder)
                self.state["runs"][f"{Path(folder).name} k{Path(folder).parent.name}"].update(status="todo", epoch=0)
                print(f"{folder} was lost with its machine before it was returned: trained again")
                continue
            files = [p for p in sorted((self.root / folder).iterdir()) if p.suffix in (".pt", ".json")
                     and p.name != "last.pt"]
            stem = f"models_{Path(folder).name}_k{Path(folder).parent.name}"  # folder: .../<K>/<target>
            parts = -(-(size(files) + 10240 * (len(files) + 1)) // PART)
            if len(ours | {p.name for p in self.out.iterdir()}) + parts > RETURN_FILES:
                break  # the next call returns it (this machine keeps it while warm)
            tar_path = self.work / f"{stem}.tar"
            with tarfile.open(tar_path, "w") as tar:
                for path in files:
                    tar.add(path, arcname=f"repo/{path.relative_to(self.root)}")
            with open(tar_path, "rb") as whole:
                for index, chunk in enumerate(iter(lambda: whole.read(PART), b"")):
                    (self.out / f"{stem}.tar.part{index:02d}").write_bytes(chunk)
            tar_path.unlink()
            self.state["to_return"].remove(folder)
            self.state.setdefault("returned", []).append(folder)
        self.save()
        shutil.copyfile(self.work / "state.json", self.out / "state.json")
        with tarfile.open(self.out / "programme.tar.gz", "w:gz") as tar:
            for path in [self.work / "state.json", self.work / "logs"] + sorted(self.work.glob("table*")):
                tar.add(path, arcname=f"work/{path.relative_to(self.work)}")
            if self.runs_dir.is_dir():
                tar.add(self.runs_dir, arcname=f"repo/{self.runs_dir.relative_to(self.root)}")

    def speed_summary(self):
        runs = [r for r in self.state["runs"].values() if r["shot"] == 2 and "train_s_per_epoch" in r]
        if runs:
            train = sum(r["train_s_per_epoch"] for r in runs) / len(runs)
            evaluation = sum(r["eval_s_per_epoch"] for r in runs) / len(runs)
            self.state["speed"] = (f"ours, K=2 ({len(runs)} runs, {self.state['precision']}): {train:.1f} s per "
                                   f"training epoch + {evaluation:.1f} s of test-set evaluation; {OFFICIAL}")

    def report(self):
        print("\nsteps: " + "; ".join(f"{n} {s['status']}" + (f" {s['seconds']:.0f} s" if "seconds" in s else "")
                                     for n, s in self.state["steps"].items()))
        runs = self.state["runs"].values()
        print(f"runs: {sum(r['status'] == 'done' for r in runs)} of {len(runs)} done" + "".join(
            f"; {r['target']} k{r['shot']} {r['status']} at epoch {r['epoch']}" for r in runs if r["status"] != "done"))
        for key in ("precision", "eval_speed_note", "speed"):
            if key in self.state:
                print(f"{key}: {self.state[key]}")
        if self.state["to_return"]:
            print(f"still to return (next call, same machine): {', '.join(self.state['to_return'])}")
        print(f"state {self.work / 'state.json'}; returned files in {self.out}; {time.time() - self.started:.0f} s")


def collect(folder, root=ROOT):
    """Here, after a device call: models into save_checkpoints/, results/runs and the state into this tree, and
    programme.tar.gz into .carry/restore for the next call. A file this tree already has is never replaced (a
    run trained here, or a baseline computed here, stays what it was); the kept paths are listed."""
    folder, root = Path(folder), Path(root)
    kept = []
    for first in sorted(folder.glob("*.tar.part00")):
        with tempfile.NamedTemporaryFile(suffix=".tar") as joined:
            for part in sorted(folder.glob(first.name[:-2] + "*")):
                joined.write(part.read_bytes())
            joined.flush()
            kept += extract(joined.name, {"repo": root}, keep=("repo",))
        print(f"unpacked {first.name[:-len('.part00')]}")
    if (folder / "programme.tar.gz").is_file():
        kept += extract(folder / "programme.tar.gz", {"work": root / "out" / "gpu_programme", "repo": root},
                        keep=("repo",))
        (root / ".carry" / "restore").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "programme.tar.gz", root / ".carry" / "restore" / "programme.tar.gz")
        state = json.loads((root / "out" / "gpu_programme" / "state.json").read_text())
        (root / STATE).parent.mkdir(parents=True, exist_ok=True)
        (root / STATE).with_suffix(".tmp").write_text(json.dumps(state, indent=1) + "\n")
        (root / STATE).with_suffix(".tmp").replace(root / STATE)
        print(f"state in out/gpu_programme and {STATE} (commit it: a later session goes on from there); "
              f".carry/restore updated. When every run is here, the table:\n"
              f"python reproduce.py --data_path ../shared/data/mvtec-mini --backbone resnet18 --backbone_weights ../shared/weights/{WEIGHTS} "
              f"--epochs 50 --shots 2 4 8 --precision {state.get('precision', 'fp32')} --tag {TAG} --no_training")
    if kept:
        print(f"kept this tree's own {len(kept)} files, not the returned ones: {', '.join(kept[:3])}"
              + (", ..." if len(kept) > 3 else "") + " (move them away to take the returned ones)")


def main():
    args = parse_args()
    if args.pack:
        return pack()
    if args.collect:
        return collect(args.collect)
    if args.dry_run:
        work = Path(args.work or tempfile.mkdtemp(prefix="gpu_programme_")).resolve()
        root, out = prepare_dry_run(work), Path(args.out or work / "return")
    else:
        work, root = Path(args.work or ROOT / "out" / "gpu_programme").resolve(), ROOT
        out = Path(args.out or os.environ.get("OUT") or work / "return")
        link_shared(ROOT)
        import torch
        if not torch.cuda.is_available():
            sys.exit("no CUDA device here: the programme is for the GPU machine; --dry_run runs it on a CPU")
    Programme(root, work, out.resolve(), DRY if args.dry_run else GPU, args).run()


if __name__ == "__main__":
    main()
