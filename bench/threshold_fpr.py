"""What false-positive rate does predict.py's support-only threshold really give? For several support sets of
each product, the threshold is set exactly as predict.py sets it (scoring/threshold.py: leave-one-out over the
22 augmentations of each held-out support image, (1 - FPR) quantile), then the product's test/good images, never
seen by the threshold, are scored: the share above it is the measured FPR; the share of defective test images
above it is the detection rate. The earlier rule (quantile of the K un-augmented leave-one-out scores) is
measured beside it from the same fits. Writes results/threshold_fpr.md and .json.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 python bench/threshold_fpr.py \
        --data_path ../shared/data/mvtec-mini --backbone_weights ../shared/weights/resnet18_imagenet_to_layer3.pth
"""
import argparse
import random
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np
import torch

from datasets.mvtec import get_category, load_images
from models.checkpoint import load_model
from scoring.evaluation import load_test_data
from scoring.maps import image_scores
from scoring.scorers import GaussianScorer
from scoring.threshold import leave_one_out, threshold_from
from utils.cli import pick_device, run_main
from utils.hardware import code_version, describe_machine
from utils.io import atomic_write_json, atomic_write_text


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--categories", nargs="+", default=["bottle", "pill", "screw", "metal_plate", "leather"])
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--sets", type=int, default=5, help="support sets per category and K")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--backbone_weights")
    parser.add_argument("--seed", type=int, default=668)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "results" / "threshold_fpr"))
    return parser.parse_args()


def support_sets(category, shot, count, seed):
    """count distinct sorted sets of shot training images (fewer when the pool has fewer combinations)."""
    rng, names, sets = random.Random(f"{seed}/{category.name}/{shot}"), range(len(category.train_images)), []
    for _ in range(50 * count):
        candidate = sorted(rng.sample(names, shot))
        if candidate not in sets:
            sets.append(candidate)
        if len(sets) == count:
            break
    return sets


def main():
    args = parse_args()
    device = pick_device(args.device)
    model, _ = load_model("none", {"backbone": args.backbone}, args.backbone_weights)
    scorer = GaussianScorer(model.to(device), device)
    started, rows, version = time.time(), [], code_version()  # the code measured, before any later commit
    for name in args.categories:
        category = get_category(args.data_path, name, need_test=True)
        test = load_test_data(category, model.config.img_size)
        with torch.no_grad():
            embedded = scorer.embed(test.images)
        for shot in args.shots:
            for chosen in support_sets(category, shot, args.sets, args.seed):
                support = load_images([category.train_images[i] for i in chosen], model.config.img_size)
                gaussian, loo = leave_one_out(scorer, support)
                scores = image_scores(scorer.maps(gaussian, embedded, model.config.img_size)).numpy()
                good, bad = scores[test.labels == 0], scores[test.labels == 1]
                new = threshold_from(loo, args.fpr)
                old = float(np.quantile(loo[:, 0], 1 - args.fpr))
                names = [category.train_images[i].name for i in chosen]
                rows.append({"category": name, "shot": shot, "support": names,
                             "threshold": new["threshold"], "interval": new["interval"], "old_threshold": old,
                             "n_good": len(good), "n_defective": len(bad),
                             "fpr": float(np.mean(good > new["threshold"])),
                             "tpr": float(np.mean(bad > new["threshold"])),
                             "old_fpr": float(np.mean(good > old)), "old_tpr": float(np.mean(bad > old))})
                r = rows[-1]
                print(f"{name} K={shot} {r['support']}: threshold {r['threshold']:.2f} "
                      f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}] FPR {r['fpr']:.3f} TPR {r['tpr']:.3f} | "
                      f"K-score rule {old:.2f} FPR {r['old_fpr']:.3f} TPR {r['old_tpr']:.3f}", flush=True)
    report = {"command": shlex.join(["python", "bench/threshold_fpr.py", *sys.argv[1:]]).replace(str(ROOT) + "/", ""),
              "data_path": args.data_path, "backbone": args.backbone, "backbone_weights": args.backbone_weights,
              "checkpoint": "none (untrained network: ImageNet backbone, identity STN)",
              "img_size": model.config.img_size,
              "fpr_asked": args.fpr, "seed": args.seed, "sets": args.sets, "code_version": version,
              "machine": describe_machine(device).replace("\n", "; "), "seconds": time.time() - started, "rows": rows}
    atomic_write_json(Path(args.out).with_suffix(".json"), report)
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(report))
    print(markdown(report))


def spread(values):
    return f"{np.mean(values):.3f} ({np.min(values):.2f}-{np.max(values):.2f})"


def markdown(report):
    rows = report["rows"]
    lines = [f"# Measured false-positive rate of predict.py's threshold (asked: FPR {report['fpr_asked']})", "",
             f"Command: `{report['command']}`  ",
             f"Data: `{report['data_path']}` (each product's test/good images, never seen by the threshold); backbone "
             f"{report['backbone']} (`{report['backbone_weights']}`), {report['checkpoint']}, {report['img_size']} px; "
             f"{report['sets']} support sets per product and K drawn from train/good with seed {report['seed']} "
             f"(fewer where the pool has fewer combinations); code {report['code_version']}; "
             f"{report['machine']}; {report['seconds']:.0f} s.", "",
             "Threshold now: the 0.95 quantile of 22K leave-one-out scores (each held-out support image's 22 "
             "augmentations). Before: the 0.95 quantile of the K un-augmented leave-one-out scores (with K <= 4, the "
             "largest). Cells: mean over the support sets (min-max); FPR = share of test/good images above the "
             "threshold, detection = share of defective test images above it.", "",
             "| product | K | sets | good / defective images | FPR now | detection now | FPR before | "
             "detection before | threshold now (min-max) |", "|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["category"], r["shot"]), []).append(r)
    for (name, shot), group in groups.items():
        lines.append(f"| {name} | {shot} | {len(group)} | {group[0]['n_good']} / {group[0]['n_defective']} | "
                     f"{spread([r['fpr'] for r in group])} | {spread([r['tpr'] for r in group])} | "
                     f"{spread([r['old_fpr'] for r in group])} | {spread([r['old_tpr'] for r in group])} | "
                     f"{np.min([r['threshold'] for r in group]):.1f}-{np.max([r['threshold'] for r in group]):.1f} |")
    for shot in sorted({r["shot"] for r in rows}):
        group = [r for r in rows if r["shot"] == shot]
        lines.append(f"| **all products** | {shot} | {len(group)} | | {spread([r['fpr'] for r in group])} | "
                     f"{spread([r['tpr'] for r in group])} | {spread([r['old_fpr'] for r in group])} | "
                     f"{spread([r['old_tpr'] for r in group])} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main)
