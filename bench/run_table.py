"""RegAD against its baselines on every target category of a data folder, K = 2/4/8, one backbone:

- RegAD, honest: leave-one-category-out training, the LAST epoch, scored by test.py;
- RegAD, paper protocol: as the official train.py, the best test-set image + pixel AUROC among the weights
  evaluated before each epoch (the untrained network and epochs 1..E-1; train.py --select_on_test), optimistic;
- registration-free: the untrained network (identity STNs), test.py --checkpoint none;
- few-shot PatchCore: test.py --checkpoint none --method patchcore.

Every cell comes from the ordinary entry points run as subprocesses, and the table lists those exact
commands, so a reader reruns any cell by copying one line. A run whose JSON already exists is reused:
the table can be built in pieces (baselines on a CPU, training where a GPU is) and cells that were not
run say why. Training can be built in pieces too: --stop_after N trains (or resumes) every run up to epoch N
of the --epochs schedule, and the table says "epoch N of 50"; --no_training only scores the checkpoints that
exist. Beside the table: the paper's and the official implementation's numbers (--paper_table) and a
learning-curve figure per trained target (train loss; test image and pixel AUROC of every evaluated epoch).

    python bench/run_table.py --data_path ../shared/data/mvtec-mini --backbone resnet18 \
        --backbone_weights ../shared/weights/resnet18_imagenet_to_layer3.pth --epochs 50 --stop_after 10 \
        [--train_targets bottle pill] [--train_shots 2]
"""
import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.mvtec import discover_categories  # noqa: E402
from models.backbones import BACKBONES  # noqa: E402
from models.checkpoint import checkpoint_path  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.figures import plt, save_plot  # noqa: E402
from utils.hardware import code_version, cpu_model  # noqa: E402
from utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from utils.precision import PRECISIONS  # noqa: E402
from utils.tables import TITLES  # noqa: E402

METHODS = {  # name -> label in the table
    "regad": "RegAD (honest: last epoch)",
    "regad_selected": "RegAD (PAPER PROTOCOL: epoch selected on test AUROC, optimistic)",
    "registration_free": "Registration-free (untrained STN, PaDiM-like)",
    "patchcore": "Few-shot PatchCore",
}
PAPER_EPOCHS = 50
PAPER_TABLE = ROOT.parent / "shared" / "reference" / "paper_table.md"
PAPER_COLUMNS = {"image_auroc": ("image RegAD", "image impl."), "pixel_auroc": ("pixel RegAD", "pixel impl.")}
TABLE_METRICS = {m: TITLES[m] for m in ("image_auroc", "pixel_auroc", "aupro")}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", default=str(ROOT.parent / "shared" / "data" / "mvtec-mini"))
    parser.add_argument("--backbone", choices=BACKBONES, default="efficientnet_lite0")
    parser.add_argument("--backbone_weights", help="'random' for a random init (resnet18 only)")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=668)
    parser.add_argument("--epochs", type=int, default=50, help="training epochs of every RegAD run")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="train.py --precision")
    parser.add_argument("--train_targets", nargs="*", help="targets to train RegAD for (default: all)")
    parser.add_argument("--train_shots", type=int, nargs="*", help="K to train RegAD for (default: --shots)")
    parser.add_argument("--no_select_on_test", action="store_true", help="skip the paper-protocol column")
    parser.add_argument("--stop_after", type=int, metavar="N",
                        help="train (or resume) every RegAD run only up to epoch N of the --epochs schedule")
    parser.add_argument("--no_training", action="store_true",
                        help="never start train.py: score the RegAD checkpoints that exist, at their epoch")
    parser.add_argument("--tag", help="names these RegAD runs apart in save_checkpoints/ and results/runs/ (the GPU "
                                      "programme's are 'gpu'), so runs trained elsewhere never mix with them")
    parser.add_argument("--no_baselines", action="store_true",
                        help="leave the registration-free and PatchCore columns empty (a training machine: they "
                             "are computed once, elsewhere)")
    parser.add_argument("--paper_table", default=str(PAPER_TABLE),
                        help="Markdown table of the paper's per-category numbers, shown beside ours")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--img_size", type=int, help=f"train.py/test.py --img_size (quick runs; default theirs, {ModelConfig.img_size})")
    parser.add_argument("--out", help="default results/<dataset>_<backbone>[-random]")
    return parser.parse_args()


class Runner:
    """Runs (or reuses) the train.py/test.py calls of one table and remembers their commands."""

    def __init__(self, args):
        self.args = args
        self.tag = args.backbone + ("-random" if args.backbone_weights == "random" else "")
        self.dataset = Path(args.data_path).resolve().name
        self.runs = ROOT / "results" / "runs" / f"{self.dataset}_{self.tag}"
        self.training = f"e{args.epochs}_{args.precision}" + (f"_{args.tag}" if args.tag else "")
        self.save_dir = ROOT / "save_checkpoints" / f"{self.dataset}_{self.tag}_{self.training}"
        self.commands = []

    def common(self):
        extra = ["--backbone_weights", self.args.backbone_weights] if self.args.backbone_weights else []
        extra += ["--img_size", self.args.img_size] if self.args.img_size else []
        return ["--data_path", self.args.data_path, "--device", self.args.device, *extra]

    def call(self, script, options, output):
        """Run script unless output exists (None: always); return output's path. A failure stops the table."""
        options = [str(o) for o in options]
        self.commands.append(shlex.join(["python", script, *options]).replace(str(ROOT) + "/", ""))
        if output is None or not Path(output).exists():
            print("$", self.commands[-1], flush=True)
            if subprocess.run([sys.executable, script, *options], cwd=ROOT).returncode:
                raise UserError(f"'{self.commands[-1]}' failed (its message is above); fix that and rerun: "
                                "finished runs are reused")
        return None if output is None else Path(output)

    def baseline(self, method, target, shots):
        out = self.runs / f"{method}_{target}_k{'-'.join(map(str, shots))}"
        scorer = "patchcore" if method == "patchcore" else "regad"
        self.call("test.py", ["--obj", target, "--shot", *shots, "--checkpoint", "none", "--method", scorer,
                              "--backbone", self.args.backbone, "--rounds", self.args.rounds, "--seed",
                              self.args.seed, "--out", out, *self.common()], out.with_suffix(".json"))
        return json.loads(out.with_suffix(".json").read_text())["results"][target]

    def train(self, target, shot):
        """Train, or resume, up to --stop_after (default: the whole schedule); None when nothing can be scored."""
        honest = checkpoint_path(self.save_dir, self.args.backbone, ModelConfig.stn_mode, shot, target)
        stop = self.args.stop_after or self.args.epochs
        reached = checkpoint_epoch(honest)
        if self.args.no_training or (reached or 0) >= stop:
            return honest if reached is not None else None
        resume = ["--resume"] if (honest.parent / "last.pt").is_file() else []
        select = [] if self.args.no_select_on_test else ["--select_on_test"]
        self.call("train.py", ["--obj", target, "--shot", shot, "--backbone", self.args.backbone, "--epochs",
                               self.args.epochs, "--stop_after", stop, "--precision", self.args.precision,
                               "--rounds", self.args.rounds, "--seed", self.args.seed, "--save_dir", self.save_dir,
                               *select, *resume, *self.common()], None)
        return honest

    def regad(self, target, shot, selected):
        """Score the honest (last trained epoch) or the test-selected checkpoint of a trained run."""
        ckpt = checkpoint_path(self.save_dir, self.args.backbone, ModelConfig.stn_mode, shot, target,
                               selected_on_test=selected)
        if not ckpt.is_file():
            return {"not_run": "no checkpoint yet (train with --stop_after, or without --no_training)"}
        meta = torch.load(ckpt, map_location="cpu", weights_only=True)["meta"]
        method = "regad_selected" if selected else "regad"
        # the honest model changes with every epoch trained; the selected one with every new best
        out = self.runs / f"{method}_{self.training}_{target}_k{shot}_epoch{meta['epoch']}"
        self.call("test.py", ["--obj", target, "--shot", shot, "--checkpoint", ckpt, "--rounds",
                              self.args.rounds, "--seed", self.args.seed, "--out", out, *self.common()],
                  out.with_suffix(".json"))
        result = json.loads(out.with_suffix(".json").read_text())["results"][target][str(shot)]
        history = meta["history"]
        cpu = [h["cpu_seconds"] for h in history if "cpu_seconds" in h]  # recorded since commit a189207
        result.update(epoch=meta["epoch"], epochs=meta.get("epochs", self.args.epochs),
                      train_seconds_per_epoch=float(np.mean([h["seconds"] for h in history])) if history else None,
                      train_cpu_seconds_per_epoch=float(np.mean(cpu)) if cpu else None)
        if not selected:  # the learning curve of the run, from its last epoch's meta
            result["curve"] = {"history": history, "test_curve": meta.get("test_curve", [])}
        return result


def checkpoint_epoch(path):
    """The training epoch stored in a checkpoint's meta, or None when there is no checkpoint."""
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]["epoch"]


def read_paper_table(path):
    """{(category, K): {column: value in %}} from the Markdown table of paper_table.md; {} when absent."""
    if not Path(path).is_file():
        return {}
    rows, header = {}, None
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or set(cells[0]) <= {"-"}:
            continue
        if header is None:
            header = cells
            continue
        record = dict(zip(header, cells))
        if record.get("K", "").isdigit():
            rows[(record["category"], int(record["K"]))] = record
    return rows


def collect(args, runner):
    """{method: {target: {K: result dict or {'not_run': reason}}}}."""
    targets = {n: c for n, c in discover_categories(args.data_path).items() if c.has_test}
    train_targets = set(args.train_targets if args.train_targets is not None else targets)
    train_shots = set(args.train_shots if args.train_shots is not None else args.shots)
    cells = {method: {} for method in METHODS}
    for name, category in targets.items():
        pool = len(category.train_images)
        shots = [k for k in args.shots if k <= pool]
        too_large = {str(k): {"not_run": f"K={k} > the {pool} normal images of {name}"}
                     for k in args.shots if k > pool}
        for method in ("registration_free", "patchcore"):
            if args.no_baselines:
                cells[method][name] = {**too_large, **{str(k): {"not_run": "--no_baselines"} for k in shots}}
            else:
                cells[method][name] = {**too_large, **(runner.baseline(method, name, shots) if shots else {})}
        for method in ("regad", "regad_selected"):
            cells[method][name] = dict(too_large)
        for k in shots:
            if args.no_select_on_test:
                cells["regad_selected"][name][str(k)] = {"not_run": "--no_select_on_test"}
            if name not in train_targets or k not in train_shots or runner.train(name, k) is None:
                reason = {"not_run": "not trained yet (the 50-epoch runs want a GPU; CPU sessions train K=2 "
                                     "in pieces)"}
                cells["regad"][name][str(k)] = reason
                cells["regad_selected"][name].setdefault(str(k), reason)
                continue
            cells["regad"][name][str(k)] = runner.regad(name, k, selected=False)
            if not args.no_select_on_test:
                cells["regad_selected"][name][str(k)] = runner.regad(name, k, selected=True)
    return cells


def mean_over_categories(per_category, k, metric):
    """Mean over the categories that have the metric, and the std over support rounds of that mean
    (round r of every category averaged first), so the spread is the support-set spread."""
    results = [r[str(k)] for r in per_category.values() if r.get(str(k), {}).get("summary", {}).get(metric)]
    if not results:
        return None
    per_round = np.mean([[rnd[metric] for rnd in r["rounds"]] for r in results], axis=0)
    return {"mean": float(per_round.mean()), "std": float(per_round.std()), "categories": len(results)}


def cell_text(result, metric, method):
    if "not_run" in result:
        return "not run"
    summary = result["summary"][metric]
    if summary is None:
        return "n/a (no masks)"
    text = f"{100 * summary['mean']:.1f}" + (f" ± {100 * summary['std']:.1f}" if summary["std"] is not None else "")
    if method == "regad_selected":
        return f"{text} (ep {result['epoch']})"
    if method == "regad" and result["epoch"] < result["epochs"]:
        return f"{text} (ep {result['epoch']}/{result['epochs']})"
    return text


def paper_text(paper, name, k, column):
    value = paper.get((name, k), {}).get(column)
    return value if value not in (None, "", "–") else "—"


def training_line(args, cells):
    """What the RegAD columns are: epochs reached per run, and the measured time per epoch."""
    runs = {(n, k): r for n, per in cells["regad"].items() for k, r in per.items() if "not_run" not in r}
    if not runs:
        return "RegAD not trained yet (see Cells not run)"
    reached = ", ".join(f"{n} K={k} epoch {r['epoch']}" for (n, k), r in runs.items())
    wall = [r["train_seconds_per_epoch"] for r in runs.values() if r["train_seconds_per_epoch"]]
    cpu = [r["train_cpu_seconds_per_epoch"] for r in runs.values() if r["train_cpu_seconds_per_epoch"]]
    line = (f"RegAD leave-one-category-out training, {args.precision}, schedule of {args.epochs} epochs, trained "
            f"so far: {reached}")
    if any(r["epoch"] < PAPER_EPOCHS for r in runs.values()):
        line += (f" (**SHORT TRAINING: epoch N of the paper's {PAPER_EPOCHS}; the {PAPER_EPOCHS}-epoch RegAD "
                 "figures are still missing**)")
    line += (f". Time per training epoch measured in these runs: {np.mean(wall):.0f} s wall"
             + (f", {np.mean(cpu):.0f} s of process CPU time (all threads)" if cpu else "") +
             " on average (wall time includes other jobs on the same cores)")
    return line


def markdown(args, runner, cells, hardware, paper):
    shots = args.shots
    training = training_line(args, cells)
    lines = [f"# RegAD on {runner.dataset}, backbone {runner.tag}", "",
             f"Data `{args.data_path}`; backbone `{args.backbone}`"
             f"{' with RANDOM init (not the paper setting)' if args.backbone_weights == 'random' else ' (ImageNet)'}"
             f"{f', weights `{args.backbone_weights}`' if args.backbone_weights not in (None, 'random') else ''}; "
             f"stn_mode {ModelConfig.stn_mode}; {args.img_size or ModelConfig.img_size} px; {args.rounds} fixed support sets per (category, K), seed {args.seed}; "
             f"{training}; code {code_version()}.",
             f"Hardware: {hardware}.", "",
             "Cells: mean ± std over the support rounds, in percent. The mean row averages the categories with a "
             "value (their count in brackets when fewer than all); its ± is the std over rounds of the "
             "per-round category mean. `regad` cells trained for fewer epochs than the schedule say `(ep N/50)`; "
             "`regad_selected` cells say which epoch the test set chose `(ep e)`.", ""]
    for metric, title in TABLE_METRICS.items():
        extra = PAPER_COLUMNS.get(metric, ()) if paper else ()
        header = ("| category | " + " | ".join(f"{m} K={k}" for m in METHODS for k in shots)
                  + "".join(f" | {c} K={k}" for c in extra for k in shots) + " |")
        lines += [f"## {title}", "", header, "|---|" + "---|" * ((len(METHODS) + len(extra)) * len(shots))]
        names = list(cells["registration_free"])
        for name in names:
            lines.append(f"| {name} | " + " | ".join(cell_text(cells[m][name][str(k)], metric, m)
                                                     for m in METHODS for k in shots)
                         + "".join(f" | {paper_text(paper, name, k, c)}" for c in extra for k in shots) + " |")
        means = []
        for m in METHODS:
            for k in shots:
                mean = mean_over_categories(cells[m], k, metric)
                means.append("—" if mean is None else f"{100 * mean['mean']:.1f} ± {100 * mean['std']:.1f}"
                             + (f" ({mean['categories']})" if mean["categories"] < len(names) else ""))
        lines += ["| **mean** | " + " | ".join(means) + " | —" * (len(extra) * len(shots)) + " |", ""]
    lines += ["Columns: " + "; ".join(f"`{m}` = {label}" for m, label in METHODS.items()) + "."
              + (f" `RegAD` / `impl.`: the paper's and the official implementation's MVTec AD numbers "
                 f"(`{args.paper_table}`; full MVTec AD, 14 training categories, epoch chosen on the test set: "
                 "not directly comparable with this pack)." if paper else ""), ""]
    lines += ["## Cells not run", ""]
    lines += sorted({f"- {m} {n} K={k}: {r['not_run']}" for m in METHODS for n, per in cells[m].items()
                     for k, r in per.items() if "not_run" in r}) or ["- none"]
    lines += ["", "## Time", "", "| category | " + " | ".join(f"eval s ({m})" for m in METHODS)
              + " | RegAD train s/epoch (wall) | CPU s/epoch |", "|---|" + "---|" * (len(METHODS) + 2)]
    for name in cells["registration_free"]:
        evals = [sum(r.get("seconds", 0) for r in cells[m][name].values()) for m in METHODS]
        runs = [r for r in cells["regad"][name].values() if r.get("train_seconds_per_epoch")]
        wall = ", ".join(f"{r['train_seconds_per_epoch']:.0f}" for r in runs) or "—"
        cpu = ", ".join(f"{r['train_cpu_seconds_per_epoch']:.0f}" for r in runs
                        if r["train_cpu_seconds_per_epoch"]) or "—"
        lines.append(f"| {name} | " + " | ".join(f"{s:.0f}" if s else "—" for s in evals) + f" | {wall} | {cpu} |")
    lines += ["", "Eval seconds cover all K of a category (10 rounds each, test images embedded once per model).",
              "", "## Commands", "", "```", f"python bench/run_table.py {' '.join(sys.argv[1:])}",
              *dict.fromkeys(runner.commands), "```", ""]
    return "\n".join(lines)


def hardware_line(device):
    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main():
    args = parse_args()
    if args.tag is not None and not (args.tag.replace("-", "").replace("_", "").isalnum() and args.tag.isascii()):
        raise UserError(f"--tag '{args.tag}': use letters, digits, '-' and '_' (it becomes part of folder names)")
    runner = Runner(args)
    cells = collect(args, runner)
    hardware = hardware_line(args.device)
    out = Path(args.out or ROOT / "results" / f"{runner.dataset}_{runner.tag}")
    atomic_write_json(out.with_suffix(".json"), {"args": vars(args), "hardware": hardware,
                                                 "code_version": code_version(), "commands": runner.commands,
                                                 "methods": METHODS, "cells": cells})
    atomic_write_text(out.with_suffix(".md"), markdown(args, runner, cells, hardware, read_paper_table(args.paper_table)))
    curves = save_learning_curves(out.with_name(f"{out.name}_curves.png"), cells["regad"])
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}" + (f" and {curves}" if curves else ""))


def save_learning_curves(path, regad_cells):
    """One panel per trained (target, K): train loss per epoch, and the test image and pixel AUROC of every
    evaluated epoch (the paper protocol's evaluations before each epoch, plus the honest last epoch)."""
    runs = {(n, k): r for n, per in regad_cells.items() for k, r in per.items() if r.get("curve")}
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.4), squeeze=False)
    for ax, ((name, k), result) in zip(axes[0], runs.items()):
        points = {p["epoch"]: p for p in result["curve"]["test_curve"]}
        points[result["epoch"]] = {"epoch": result["epoch"], **result["summary"]}  # the honest last epoch
        epochs = sorted(points)
        for metric, style in (("image_auroc", "o-"), ("pixel_auroc", "s-")):
            values = [points[e][metric]["mean"] if points[e].get(metric) else np.nan for e in epochs]
            ax.plot(epochs, values, style, label=metric.replace("_", " "))
        history = result["curve"]["history"]
        loss_ax = ax.twinx()
        loss_ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], "k--", label="train loss")
        loss_ax.set_ylabel("train loss (dashed)")
        ax.set(title=f"{name} K={k} (epoch {result['epoch']}/{result['epochs']})", xlabel="epoch",
               ylabel="test AUROC (mean of rounds)")
        ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    save_plot(fig, path)
    return path


if __name__ == "__main__":
    run_main(main)
