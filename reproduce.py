"""The paper's tables from your data: RegAD's image and pixel AUROC for every category of a data folder in the
MVTec AD layout (MVTec AD, MPDD, your own), K = 2 / 4 / 8, beside the paper's numbers (utils/paper_numbers.csv).

For every (target, K): the leave-one-category-out training at the paper's schedule (train.py, 50 epochs, the test
set evaluated before each epoch as the official code does), then test.py on its last epoch (honest), on the epoch
the test set chose (the paper's protocol, optimistic) and with the nearest-neighbour scorer on the trained network
(what registration training gives PatchCore); per target the untrained baselines (registration-free, PatchCore).

Every cell is made by train.py / test.py run as subprocesses, and the table lists those commands. Rerunnable:
finished test.py results are reused and trainings resume from their last.pt, so a killed run goes on where it
stopped. The work is cut into jobs - one per (target, K) training with its test.py calls, one per target for the
baselines - run one after another (--launcher sequential), one per GPU on this machine (--launcher local) or as a
SLURM job array (--launcher slurm), both through submitit; the table is built from whatever finished.

    python reproduce.py --data_path DATA [--backbone_weights FILE] [--launcher local | slurm --partition P]
"""
import glob
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import submitit
import torch

from datasets.mvtec import discover_categories
from models.backbones import BACKBONES
from models.checkpoint import checkpoint_path
from models.config import ModelConfig
from utils.cli import Parser, run_main
from utils.comparison import comparison_table
from utils.errors import UserError
from utils.figures import save_learning_curves
from utils.hardware import code_version, cpu_model
from utils.io import atomic_write_json, atomic_write_text
from utils.paper import COLUMNS, METRICS, paper_value, published_means, read_paper_numbers
from utils.precision import PRECISIONS
from utils.tables import TITLES

ROOT = Path(__file__).resolve().parent
PAPER_EPOCHS = 50
METHODS = {  # name in the JSON -> column heading, left to right as in the paper's tables (its RegAD first)
    "regad_selected": "RegAD, paper protocol",
    "regad": "RegAD, honest",
    "registration_free": "registration-free",
    "patchcore": "PatchCore",
    "patchcore_trained": "PatchCore, registration-trained",
}
DESCRIPTIONS = {
    "regad_selected": "the epoch with the best test-set image + pixel AUROC among the untrained network and epochs "
                      "1..E-1, as the official train.py and the paper (optimistic: chosen on test images; the "
                      "chosen epoch in brackets)",
    "regad": "the last epoch trained, no choice on test images",
    "registration_free": "the untrained network (identity STNs, ImageNet backbone) with RegAD's Gaussians, PaDiM-like",
    "patchcore": "few-shot PatchCore (nearest neighbour in a 1% coreset of the augmented support patches) on the "
                 "untrained network",
    "patchcore_trained": "the same PatchCore scorer on the registration-trained network of `RegAD, honest`",
}
TABLE_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", required=True, help="MVTec-layout folder (CAT/train/good, CAT/test/...)")
    parser.add_argument("--backbone", choices=BACKBONES, default="resnet18")
    parser.add_argument("--backbone_weights", help="train.py --backbone_weights ('random': a random init)")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--targets", nargs="+", help="the table's rows (default: every category with a test split)")
    parser.add_argument("--rounds", type=int, default=10, help="support sets per (target, K)")
    parser.add_argument("--seed", type=int, default=668)
    parser.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help="the training schedule of every run")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="train.py --precision")
    parser.add_argument("--batch_size", type=int, help="train.py --batch_size (default its 32, the paper's)")
    parser.add_argument("--img_size", type=int, help=f"train.py/test.py --img_size (default {ModelConfig.img_size})")
    parser.add_argument("--max_images_per_category", type=int, help="train.py's (quick runs)")
    parser.add_argument("--train_targets", nargs="*", help="targets to train RegAD for (default: all)")
    parser.add_argument("--train_shots", type=int, nargs="*", help="K to train RegAD for (default: --shots)")
    parser.add_argument("--stop_after", type=int, metavar="N",
                        help="train (or resume) every run only up to epoch N of the --epochs schedule")
    parser.add_argument("--no_training", action="store_true", help="score the checkpoints that exist, train none")
    parser.add_argument("--no_baselines", action="store_true", help="leave the untrained-network columns empty")
    parser.add_argument("--no_select_on_test", action="store_true", help="train without the paper protocol column")
    parser.add_argument("--table_only", action="store_true",
                        help="run nothing: the table from the results that exist (e.g. while SLURM jobs run)")
    parser.add_argument("--tag", help="names these runs apart in --save_dir and --runs_dir")
    parser.add_argument("--save_dir", default="save_checkpoints", help="checkpoints go below it")
    parser.add_argument("--runs_dir", default="results/runs", help="every test.py result goes below it")
    parser.add_argument("--out", help="the table's prefix: writes .md, .json, _curves.png "
                                      "(default results/<dataset>_<backbone>)")
    parser.add_argument("--device", default="auto", help="train.py/test.py --device")
    launch = parser.add_argument_group("launcher (submitit)")
    launch.add_argument("--launcher", choices=("sequential", "local", "slurm"), default="sequential",
                        help="sequential: here, one job after another; local: one job per GPU of this machine; "
                             "slurm: a job array, one job per (target, K)")
    launch.add_argument("--gpus", type=int, help="local: jobs side by side, one GPU each (default: every visible "
                                                 "GPU; 0: one job on the CPU)")
    launch.add_argument("--jobs_dir", default="out/jobs", help="submitit's folder: each job's pickle and logs")
    launch.add_argument("--partition", help="slurm: the partition")
    launch.add_argument("--timeout_min", type=int, default=24 * 60,
                        help="a job's time limit; a job stopped by it (or preempted) is requeued and resumes")
    launch.add_argument("--cpus_per_task", type=int, default=8, help="slurm")
    launch.add_argument("--mem_gb", type=int, default=32, help="slurm")
    launch.add_argument("--array_parallelism", type=int, default=64, help="slurm: jobs of the array at once")
    launch.add_argument("--slurm", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more sbatch options, e.g. account=abc qos=high constraint=a100")
    launch.add_argument("--no_wait", action="store_true", help="slurm: submit and return; build the table later "
                                                              "with --table_only")
    args = parser.parse_args(argv)
    if args.tag is not None and not (args.tag.replace("-", "").replace("_", "").isalnum() and args.tag.isascii()):
        raise UserError(f"--tag '{args.tag}': use letters, digits, '-' and '_' (it becomes part of folder names)")
    if args.epochs < 2:
        raise UserError(f"--epochs {args.epochs}: the schedule needs at least 2 epochs (the paper's is 50)")
    if not Path(args.data_path).is_dir():
        raise UserError(f"--data_path '{args.data_path}' is not a folder: give a folder in the MVTec AD layout")
    if args.no_wait and args.launcher != "slurm":
        raise UserError("--no_wait is for --launcher slurm; local jobs are waited for, the table made when they end")
    if any(pair.count("=") != 1 for pair in args.slurm):
        raise UserError(f"--slurm {' '.join(args.slurm)}: give KEY=VALUE pairs, e.g. account=abc")
    return args


def portable(value):
    """This checkout's and its parent's absolute paths as relative ones, in every string of value."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str):
        return value.replace(str(ROOT) + "/", "").replace(str(ROOT.parent) + "/", "../")
    return value


class Runner:
    """The train.py / test.py calls of one table: names of their outputs, and (execute=True) running them."""

    def __init__(self, args, execute):
        self.args, self.execute = args, execute
        self.tag = args.backbone + ("-random" if args.backbone_weights == "random" else "")
        self.dataset = Path(args.data_path).resolve().name
        self.runs = ROOT / args.runs_dir / f"{self.dataset}_{self.tag}"
        self.training = f"e{args.epochs}_{args.precision}" + (f"_{args.tag}" if args.tag else "")
        self.save_dir = ROOT / args.save_dir / f"{self.dataset}_{self.tag}_{self.training}"
        self.commands = []

    def common(self):
        a = self.args
        extra = ["--backbone_weights", a.backbone_weights] if a.backbone_weights else []
        extra += ["--img_size", a.img_size] if a.img_size else []
        return ["--data_path", a.data_path, "--device", a.device, *extra]

    def call(self, script, options, done, extra=()):
        """Record the command; when executing and not done, run it (with extra options, e.g. --resume)."""
        options = [str(o) for o in options]
        self.commands.append(portable(shlex.join(["python", script, *options])))
        if self.execute and not done:
            command = shlex.join(["python", script, *map(str, [*options, *extra])])
            print("$", portable(command), flush=True)
            if subprocess.run([sys.executable, script, *options, *map(str, extra)], cwd=ROOT).returncode:
                raise UserError(f"'{portable(command)}' failed (its message is above); fix that and rerun: "
                                "finished runs are reused")

    def test(self, target, shots, out, *options):
        """test.py for one target; its result per K ({} when it has not run)."""
        a, out = self.args, Path(out)
        self.call("test.py", ["--obj", target, "--shot", *shots, *options, "--rounds", a.rounds, "--seed", a.seed,
                              "--out", out, *self.common()], out.with_suffix(".json").is_file())
        return json.loads(out.with_suffix(".json").read_text())["results"][target] if out.with_suffix(
            ".json").is_file() else {}

    def baselines(self, target, shots):
        name = f"{target}_k{'-'.join(map(str, shots))}"
        return {"registration_free": self.test(target, shots, self.runs / f"registration_free_{name}",
                                               "--checkpoint", "none", "--backbone", self.args.backbone),
                "patchcore": self.test(target, shots, self.runs / f"patchcore_{name}", "--checkpoint", "none",
                                       "--method", "patchcore", "--backbone", self.args.backbone)}

    def checkpoint(self, target, shot, selected=False):
        return checkpoint_path(self.save_dir, self.args.backbone, ModelConfig.stn_mode, shot, target,
                               selected_on_test=selected)

    def train(self, target, shot):
        """Train, or resume, up to --stop_after (default: the whole schedule); only record with --no_training."""
        a = self.args
        stop, reached = a.stop_after or a.epochs, checkpoint_epoch(self.checkpoint(target, shot))
        resume = ["--resume"] if (self.checkpoint(target, shot).parent / "last.pt").is_file() else []
        select = [] if a.no_select_on_test else ["--select_on_test", "--rounds", a.rounds, "--seed", a.seed]
        extra = ["--batch_size", a.batch_size] if a.batch_size else []
        extra += ["--max_images_per_category", a.max_images_per_category] if a.max_images_per_category else []
        self.call("train.py", ["--obj", target, "--shot", shot, "--backbone", a.backbone, "--epochs", a.epochs,
                               *(["--stop_after", stop] if stop < a.epochs else []), "--precision", a.precision,
                               "--save_dir", self.save_dir, *extra, *select, *self.common()],
                  a.no_training or (reached or 0) >= stop, resume)

    def scored(self, method, target, shot, checkpoint):
        """test.py on a trained checkpoint; the result is named by the checkpoint's epoch (the honest model changes
        with every epoch trained, the selected one with every new best). Without the checkpoint (it was trained
        elsewhere) the result of the latest epoch, if any."""
        stem = f"{method}_{self.training}_{target}_k{shot}_epoch"
        epoch = checkpoint_epoch(checkpoint)
        if epoch is None:
            found = sorted(glob.glob(glob.escape(str(self.runs / stem)) + "*.json"),
                           key=lambda p: int(Path(p).stem[len(stem):]))
            if not found:
                return {}
            out = Path(found[-1]).with_suffix("")
        else:
            out = self.runs / f"{stem}{epoch}"
        scorer = ["--method", "patchcore"] if method == "patchcore" else []
        return self.test(target, [shot], out, "--checkpoint", checkpoint, *scorer).get(str(shot), {})

    def regad(self, target, shot):
        """{method: result} of one trained run: honest, paper protocol, PatchCore on the trained network."""
        honest = self.checkpoint(target, shot)
        results = {"regad": self.scored("regad", target, shot, honest),
                   "patchcore_trained": self.scored("patchcore", target, shot, honest)}
        if not self.args.no_select_on_test:
            results["regad_selected"] = self.scored("regad_selected", target, shot, self.checkpoint(target, shot,
                                                                                                    True))
        return results


def checkpoint_epoch(path):
    """The training epoch stored in a checkpoint's meta, or None when there is no checkpoint."""
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]["epoch"]


def plan(args):
    """The table's rows: ({target: [the K its normal images allow]}, {target: its number of normal images})."""
    categories = {n: c for n, c in discover_categories(args.data_path).items() if c.has_test}
    if args.targets:
        unknown = sorted(set(args.targets) - set(categories))
        if unknown:
            raise UserError(f"--targets {' '.join(unknown)}: no such category with a test split in "
                            f"{args.data_path} (it has {', '.join(categories)})")
        categories = {n: categories[n] for n in args.targets}
    return {n: [k for k in args.shots if k <= len(c.train_images)] for n, c in categories.items()}, \
        {n: len(c.train_images) for n, c in categories.items()}


def units_of(args, shots):
    """The jobs' units: ('regad', target, K) for every run to train or score, ('baselines', target, Ks)."""
    train_targets = set(args.train_targets if args.train_targets is not None else shots)
    train_shots = set(args.train_shots if args.train_shots is not None else args.shots)
    units = [("regad", t, k) for t, ks in shots.items() for k in ks if t in train_targets and k in train_shots]
    units.sort(key=lambda u: -u[2])  # the longest (K=8) first: they finish last otherwise
    return units + ([] if args.no_baselines else [("baselines", t, ks) for t, ks in shots.items() if ks])


def run_unit(args, unit):
    runner = Runner(args, execute=True)
    kind, target, shots = unit
    if kind == "baselines":
        runner.baselines(target, shots)
        return
    runner.train(target, shots)
    runner.regad(target, shots)


class Job(submitit.helpers.Checkpointable):
    """One job: its units one after another. Stopped by its time limit or preempted, submitit requeues the same
    call (Checkpointable), which resumes the training from last.pt and reuses every finished result."""

    def __init__(self, args, units):
        self.args, self.units = args, units

    def __call__(self):
        for unit in self.units:
            run_unit(self.args, unit)


def launch(args, units):
    """Run the units: here in order, or as submitit jobs (waited for unless --no_wait). The failed jobs' lines."""
    if args.launcher == "sequential":
        for unit in units:
            run_unit(args, unit)
        return []
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    folder = ROOT / args.jobs_dir
    if args.launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(timeout_min=args.timeout_min, name="regad", gpus_per_node=1,
                                   cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                                   slurm_array_parallelism=args.array_parallelism, slurm_partition=args.partition,
                                   slurm_additional_parameters=dict(p.split("=") for p in args.slurm))
        with executor.batch():  # one array, one job per unit
            jobs = [executor.submit(Job(args, [unit])) for unit in units]
    else:  # one job per GPU, each running its share of the units (round robin, longest first)
        executor = submitit.LocalExecutor(folder=folder)
        gpus = torch.cuda.device_count() if args.gpus is None else args.gpus
        jobs = []
        for index in range(max(gpus, 1)):
            executor.update_parameters(timeout_min=args.timeout_min, visible_gpus=(index,) if gpus else (),
                                       gpus_per_node=1 if gpus else 0)
            jobs.append(executor.submit(Job(args, units[index::max(gpus, 1)])))
    print(f"submitted {len(jobs)} {args.launcher} jobs ({', '.join(j.job_id for j in jobs)}); logs in "
          f"{portable(str(ROOT / args.jobs_dir))}", flush=True)
    if args.no_wait:
        return []
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # the job's own error: the table is still built from what finished
            last = str(exc).strip().splitlines()[-1:] or ["failed"]
            failed.append(f"job {job.job_id}: {last[0]} (log {portable(str(job.paths.stderr))})")
    return failed


def collect(args, runner, shots, pools):
    """{method: {target: {K: result or {'not_run': why}}}}, from what exists; runs nothing."""
    cells = {m: {t: {} for t in shots} for m in METHODS}
    units = {(t, k) for kind, t, k in units_of(args, shots) if kind == "regad"}
    for target, ks in shots.items():
        for k in args.shots:
            if k not in ks:
                for m in METHODS:
                    cells[m][target][str(k)] = {"not_run": f"K={k} > the {pools[target]} normal images of {target}"}
        base = runner.baselines(target, ks) if ks and not args.no_baselines else {}
        for k in ks:
            for m in ("registration_free", "patchcore"):
                cells[m][target][str(k)] = base.get(m, {}).get(str(k)) or {
                    "not_run": "--no_baselines" if args.no_baselines else "not computed yet"}
            if (target, k) in units:
                runner.train(target, k)
            trained = runner.regad(target, k)
            why = "not trained (--train_targets / --train_shots)" if (target, k) not in units else "not trained yet"
            epoch = checkpoint_epoch(runner.checkpoint(target, k))
            if epoch is not None:
                why = f"trained to epoch {epoch}, not scored yet"
            if any(trained.values()):
                why = "not scored yet (run without --table_only)"
            for m in ("regad", "regad_selected", "patchcore_trained"):
                cells[m][target][str(k)] = trained.get(m) or {
                    "not_run": "--no_select_on_test" if m == "regad_selected" and args.no_select_on_test else why}
    return cells


def mean_pct(result, metric):
    summary = result.get("summary", {}).get(metric)
    return None if summary is None else 100 * summary["mean"]


def stopped_early(result):
    """A training halted before its schedule's end (--stop_after): its cells and the legend say so."""
    meta = result.get("meta", {})
    return meta.get("epoch", 0) < meta.get("epochs", 0)


def cell_text(result, metric, method):
    if "not_run" in result:
        return "not run"
    summary = result["summary"].get(metric)
    if summary is None:
        return "n/a"
    text = f"{100 * summary['mean']:.1f}" + (f" ± {100 * summary['std']:.1f}" if summary["std"] is not None else "")
    meta = result.get("meta", {})
    if method == "regad_selected":
        return f"{text} ({meta.get('epoch')})"
    if method in ("regad", "patchcore_trained") and stopped_early(result):
        return f"{text} (ep {meta['epoch']}/{meta['epochs']})"
    return text


def markdown(args, runner, cells, paper, hardware):
    targets = list(cells["regad"])
    lines = [f"# RegAD on {runner.dataset}, backbone {runner.tag}", "",
             "Cells: mean ± sample std (ddof=1) over the support sets, in percent; `n/a`: no masks; `not run`: see *Cells not "
             "run*. `paper` / `impl.`: RegAD's published numbers and the official implementation's "
             "(utils/paper_numbers.csv; full MVTec AD, epoch chosen on the test set). Columns are described below "
             "the tables.", ""]
    for metric in TABLE_METRICS:
        for k in args.shots:
            columns = []
            if metric in METRICS:
                for column, heading in COLUMNS.items():
                    values = {t: paper_value(paper, t, k, metric, column) for t in targets}
                    if any(v is not None for v in values.values()):
                        columns.append((heading, values, {t: "—" if v is None else f"{v:.1f}"
                                                          for t, v in values.items()}))
            for m, heading in METHODS.items():
                per = {t: cells[m][t][str(k)] for t in targets}
                columns.append((heading, {t: None if "not_run" in r else mean_pct(r, metric) for t, r in per.items()},
                                {t: cell_text(r, metric, m) for t, r in per.items()}))
            lines += [f"## {TITLES[metric]}, K = {k}", "", *comparison_table(columns, targets)]
            if metric in METRICS:
                for dataset, count, value in published_means(paper, targets, k, metric, "paper"):
                    lines += [f"The paper's mean over the {count} {dataset} categories: {value:.1f}."]
            lines.append("")
    lines += ["## Columns", ""] + [f"- `{METHODS[m]}`: {d}." for m, d in DESCRIPTIONS.items()]
    if any(stopped_early(r) for per in cells["regad"].values() for r in per.values()):
        lines.append("- `(ep N/E)`: trained N epochs of an E-epoch schedule so far (SHORT TRAINING).")
    lines.append("")
    lines += ["## Setting", "", settings_line(args, runner, cells), f"Hardware: {hardware}; code {code_version()}.",
              "", "## Cells not run", ""]
    lines += sorted({f"- {METHODS[m]}, {t} K={k}: {r['not_run']}" for m in METHODS for t, per in cells[m].items()
                     for k, r in per.items() if "not_run" in r}) or ["- none"]
    lines += ["", "## Commands", "", "```", f"{shlex.join(['python', 'reproduce.py', *sys.argv[1:]])}",
              *dict.fromkeys(runner.commands), "```", ""]
    return portable("\n".join(lines))


def settings_line(args, runner, cells):
    runs = [r for per in cells["regad"].values() for r in per.values() if "not_run" not in r]
    wall = [np.mean([h["seconds"] for h in r["meta"]["history"]]) for r in runs if r["meta"].get("history")]
    return (f"Data `{args.data_path}`; backbone {args.backbone}"
            f"{' with a RANDOM init (not the paper setting)' if args.backbone_weights == 'random' else ' (ImageNet)'}"
            f"; stn_mode {ModelConfig.stn_mode}; {args.img_size or ModelConfig.img_size} px; {args.rounds} fixed "
            f"support sets per (target, K), seed {args.seed}; leave-one-category-out training, {args.precision}, a "
            f"schedule of {args.epochs} epochs"
            + (f" (the paper's is {PAPER_EPOCHS})" if args.epochs != PAPER_EPOCHS else "")
            + (f"; {np.mean(wall):.1f} s per training epoch on average (wall)" if wall else "") + ".")


def hardware_line(device):
    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def learning_curves(args, cells, paper):
    """Panels for utils.figures.save_learning_curves: one per trained (target, K)."""
    panels = []
    for target, per in cells["regad"].items():
        for k, result in per.items():
            meta = result.get("meta", {})
            if "not_run" in result or not meta.get("history"):
                continue
            points = {p["epoch"]: p for p in meta.get("test_curve", [])}
            points[meta["epoch"]] = {"epoch": meta["epoch"], **result["summary"]}  # the honest last epoch
            free = cells["registration_free"][target][k]
            selected = cells["regad_selected"][target][k]
            panels.append({
                "title": f"{target} K={k} (epoch {meta['epoch']}/{meta['epochs']})",
                "epochs": sorted(points),
                "auroc": {m: [100 * points[e][m]["mean"] if points[e].get(m) else np.nan for e in sorted(points)]
                          for m in METRICS},
                "loss": ([h["epoch"] for h in meta["history"]], [h["train_loss"] for h in meta["history"]]),
                "free": {m: mean_pct(free, m) for m in METRICS} if "not_run" not in free else {},
                "paper": {m: paper_value(paper, target, int(k), m, "paper") for m in METRICS},
                "chosen": None if "not_run" in selected else selected.get("meta", {}).get("epoch")})
    return panels


def main():
    args = parse_args()
    shots, pools = plan(args)
    if not args.table_only:
        units = units_of(args, shots)
        failed = launch(args, units)
        if args.no_wait:
            print("when the jobs have finished: the same command with --table_only builds the table")
            return
    else:
        failed = []
    runner = Runner(args, execute=False)
    cells = collect(args, runner, shots, pools)
    hardware = hardware_line(args.device)
    paper = read_paper_numbers()
    out = ROOT / (args.out or Path("results") / f"{runner.dataset}_{runner.tag}")
    atomic_write_json(out.with_suffix(".json"), portable({
        "args": vars(args), "hardware": hardware, "code_version": code_version(), "commands": runner.commands,
        "methods": METHODS, "cells": cells}))
    atomic_write_text(out.with_suffix(".md"), markdown(args, runner, cells, paper, hardware))
    curves = save_learning_curves(out.with_name(f"{out.name}_curves.png"), learning_curves(args, cells, paper))
    print(f"wrote {portable(str(out.with_suffix('.md')))} and .json" + (" and _curves.png" if curves else ""))
    if failed:
        raise UserError(f"{len(failed)} job(s) failed, the table has what finished; rerun the same command to "
                        f"retry them: {'; '.join(failed)}")


if __name__ == "__main__":
    run_main(main)
