"""RegAD against its baselines on every target category of a data folder, K = 2/4/8, one backbone:

- RegAD, honest: leave-one-category-out training, the LAST epoch, scored by test.py;
- RegAD, paper protocol: the epoch with the best test-set AUROC (train.py --select_on_test), optimistic;
- registration-free: the untrained network (identity STNs), test.py --checkpoint none;
- few-shot PatchCore: test.py --checkpoint none --method patchcore.

Every cell comes from the ordinary entry points run as subprocesses, and the table lists those exact
commands, so a reader reruns any cell by copying one line. A run whose JSON already exists is reused:
the table can be built in pieces (baselines on a CPU, training where a GPU is) and cells that were not
run say why.

    python bench/run_table.py --data_path ../shared/data/mvtec-mini --backbone efficientnet_lite0 \
        --epochs 50 [--train_targets bottle pill] [--train_shots 2]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.mvtec import discover_categories  # noqa: E402
from models.stn import BACKBONES  # noqa: E402
from utils.checkpoint import checkpoint_path, code_version  # noqa: E402
from utils.hardware import cpu_model  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from utils.precision import PRECISIONS  # noqa: E402

METHODS = {  # name -> label in the table
    "regad": "RegAD (honest: last epoch)",
    "regad_selected": "RegAD (PAPER PROTOCOL: epoch selected on test AUROC, optimistic)",
    "registration_free": "Registration-free (untrained STN, PaDiM-like)",
    "patchcore": "Few-shot PatchCore",
}
PAPER_EPOCHS = 50
TABLE_METRICS = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO (FPR <= 0.3)"}


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
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="default results/<dataset>_<backbone>[-random]")
    return parser.parse_args()


class Runner:
    """Runs (or reuses) the train.py/test.py calls of one table and remembers their commands."""

    def __init__(self, args):
        self.args = args
        self.tag = args.backbone + ("-random" if args.backbone_weights == "random" else "")
        self.dataset = Path(args.data_path).resolve().name
        self.runs = ROOT / "results" / "runs" / f"{self.dataset}_{self.tag}"
        self.training = f"e{args.epochs}_{args.precision}"
        self.save_dir = ROOT / "save_checkpoints" / f"{self.dataset}_{self.tag}_{self.training}"
        self.commands = []

    def common(self):
        extra = ["--backbone_weights", self.args.backbone_weights] if self.args.backbone_weights else []
        return ["--data_path", self.args.data_path, "--device", self.args.device, *extra]

    def call(self, script, options, output):
        """Run script unless output exists; return output's path. A failure stops the table."""
        options = [str(o) for o in options]
        self.commands.append(" ".join(["python", script, *options]).replace(str(ROOT) + "/", ""))
        if not Path(output).exists():
            print("$", self.commands[-1], flush=True)
            if subprocess.run([sys.executable, script, *options], cwd=ROOT).returncode:
                raise UserError(f"'{self.commands[-1]}' failed (its message is above); fix that and rerun: "
                                "finished runs are reused")
        return Path(output)

    def baseline(self, method, target, shots):
        out = self.runs / f"{method}_{target}_k{'-'.join(map(str, shots))}"
        scorer = "patchcore" if method == "patchcore" else "regad"
        self.call("test.py", ["--obj", target, "--shot", *shots, "--checkpoint", "none", "--method", scorer,
                              "--backbone", self.args.backbone, "--rounds", self.args.rounds, "--seed",
                              self.args.seed, "--out", out, *self.common()], out.with_suffix(".json"))
        return json.loads(out.with_suffix(".json").read_text())["results"][target]

    def regad(self, target, shot, selected):
        """Train (once for both columns) and score the honest or the test-selected checkpoint."""
        ckpt = checkpoint_path(self.save_dir, self.args.backbone, "rotation_scale", shot, target,
                               selected_on_test=selected)
        select = [] if self.args.no_select_on_test else ["--select_on_test"]
        self.call("train.py", ["--obj", target, "--shot", shot, "--backbone", self.args.backbone, "--epochs",
                               self.args.epochs, "--precision", self.args.precision, "--rounds",
                               self.args.rounds, "--seed", self.args.seed,
                               "--save_dir", self.save_dir, *select, *self.common()], ckpt)
        method = "regad_selected" if selected else "regad"
        out = self.runs / f"{method}_{self.training}_{target}_k{shot}"
        self.call("test.py", ["--obj", target, "--shot", shot, "--checkpoint", ckpt, "--rounds",
                              self.args.rounds, "--seed", self.args.seed, "--out", out, *self.common()],
                  out.with_suffix(".json"))
        result = json.loads(out.with_suffix(".json").read_text())["results"][target][str(shot)]
        history = torch.load(ckpt, map_location="cpu", weights_only=True)["meta"]["history"]
        result["train_seconds_per_epoch"] = float(np.mean([h["seconds"] for h in history]))
        return result


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
            cells[method][name] = {**too_large, **(runner.baseline(method, name, shots) if shots else {})}
        for method in ("regad", "regad_selected"):
            cells[method][name] = dict(too_large)
        for k in shots:
            if args.no_select_on_test:
                cells["regad_selected"][name][str(k)] = {"not_run": "--no_select_on_test"}
            if name not in train_targets or k not in train_shots:
                reason = {"not_run": "not trained in this run (CPU-only session; wants a GPU)"}
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


def cell_text(result, metric):
    if "not_run" in result:
        return "not run"
    summary = result["summary"][metric]
    return "n/a (no masks)" if summary is None else f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}"


def markdown(args, runner, cells, hardware):
    shots = args.shots
    trained = any("train_seconds_per_epoch" in r for per in cells["regad"].values() for r in per.values())
    training = (f"RegAD trained {args.epochs} epoch(s), leave-one-category-out, {args.precision}" if trained
                else "RegAD not trained in this run (see Cells not run)")
    if trained and args.epochs < PAPER_EPOCHS:
        training += (f" (**SHORT TRAINING: {args.epochs} of the paper's {PAPER_EPOCHS} epochs; the "
                     f"{PAPER_EPOCHS}-epoch RegAD figures are still missing**)")
    lines = [f"# RegAD on {runner.dataset}, backbone {runner.tag}", "",
             f"Data `{args.data_path}`; backbone `{args.backbone}`"
             f"{' with RANDOM init (not the paper setting)' if args.backbone_weights == 'random' else ' (ImageNet)'}; "
             f"stn_mode rotation_scale; 224 px; {args.rounds} fixed support sets per (category, K), seed {args.seed}; "
             f"{training}; code {code_version()}.",
             f"Hardware: {hardware}.", "",
             "Cells: mean ± std over the support rounds, in percent. The mean row averages the categories with a "
             "value (their count in brackets when fewer than all); its ± is the std over rounds of the "
             "per-round category mean.", ""]
    for metric, title in TABLE_METRICS.items():
        header = "| category | " + " | ".join(f"{m} K={k}" for m in METHODS for k in shots) + " |"
        lines += [f"## {title}", "", header, "|---|" + "---|" * (len(METHODS) * len(shots))]
        names = list(cells["registration_free"])
        for name in names:
            lines.append(f"| {name} | " + " | ".join(cell_text(cells[m][name][str(k)], metric)
                                                     for m in METHODS for k in shots) + " |")
        means = []
        for m in METHODS:
            for k in shots:
                mean = mean_over_categories(cells[m], k, metric)
                means.append("—" if mean is None else f"{100 * mean['mean']:.1f} ± {100 * mean['std']:.1f}"
                             + (f" ({mean['categories']})" if mean["categories"] < len(names) else ""))
        lines += ["| **mean** | " + " | ".join(means) + " |", ""]
    lines += ["Columns: " + "; ".join(f"`{m}` = {label}" for m, label in METHODS.items()) + ".", ""]
    lines += ["## Cells not run", ""]
    lines += sorted({f"- {m} {n} K={k}: {r['not_run']}" for m in METHODS for n, per in cells[m].items()
                     for k, r in per.items() if "not_run" in r}) or ["- none"]
    lines += ["", "## Time", "", "| category | " + " | ".join(f"eval s ({m})" for m in METHODS)
              + " | RegAD train s/epoch |", "|---|" + "---|" * (len(METHODS) + 1)]
    for name in cells["registration_free"]:
        evals = [sum(r.get("seconds", 0) for r in cells[m][name].values()) for m in METHODS]
        train = [r["train_seconds_per_epoch"] for r in cells["regad"][name].values() if "train_seconds_per_epoch" in r]
        lines.append(f"| {name} | " + " | ".join(f"{s:.0f}" if s else "—" for s in evals)
                     + f" | {', '.join(f'{t:.0f}' for t in train) or '—'} |")
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
    runner = Runner(args)
    cells = collect(args, runner)
    hardware = hardware_line(args.device)
    out = Path(args.out or ROOT / "results" / f"{runner.dataset}_{runner.tag}")
    atomic_write_json(out.with_suffix(".json"), {"args": vars(args), "hardware": hardware,
                                                 "code_version": code_version(), "commands": runner.commands,
                                                 "methods": METHODS, "cells": cells})
    atomic_write_text(out.with_suffix(".md"), markdown(args, runner, cells, hardware))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    run_main(main)
