"""Speed of few-shot evaluation, side by side in one run on one machine:
(b) the wall time of a full 10-round test.py-style evaluation, split by stage, and with --baseline COMMIT the
same evaluation by an earlier commit's code (its own bench, run from a temporary git worktree), so the
speed-up of every stage is a ratio measured in the same run; (a) our batched fit_gaussian + mahalanobis
against the official per-position NumPy/SciPy loops, on the same real features.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 python bench/eval_speed.py --backbone resnet18 \
        --backbone_weights ../shared/weights/resnet18_imagenet_to_layer3.pth [--baseline 2055442] [--device cpu]

On cores shared with other work, set those two variables: otherwise idle OpenMP (torch) and OpenBLAS
(numpy) threads spin while the busy one waits for a core, which made torch's batched linear algebra
~20x and numpy's np.linalg.inv ~100x slower here, and the speed-up meaningless.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from bench.worktree import checkout
from datasets.mvtec import get_category
from datasets.support_set import support_sets_for
from models.checkpoint import load_model
from scoring.evaluation import evaluate, load_test_data
from scoring.gaussian import fit_gaussian, mahalanobis
from scoring.scorers import GaussianScorer
from utils.cli import pick_device, run_main
from utils.hardware import describe_machine, timed

START = time.perf_counter()
RATIO_TARGET, EVAL_TARGET_S, METRICS_SPEEDUP_TARGET = 30, 20, 5
STAGES = ("embed", "fit", "maps", "metrics")


class TimedScorer(GaussianScorer):
    """GaussianScorer adding up the time of each step, so evaluate() itself can be split without copying it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seconds = {"embed": 0.0, "fit": 0.0, "maps": 0.0}

    def _timed(self, step, *args):
        result, seconds = timed(lambda: getattr(GaussianScorer, step)(self, *args), self.device)
        self.seconds[step] += seconds
        return result

    def embed(self, images):
        return self._timed("embed", images)

    def fit(self, support):
        return self._timed("fit", support)

    def maps(self, gaussian, embeddings, image_size):
        return self._timed("maps", gaussian, embeddings, image_size)


def naive_distances(support, test, positions):
    """The official RegAD loops on the first `positions` positions: np.cov + 0.01*I per position, then
    np.linalg.inv and one scipy mahalanobis call per (position, test image). support [N,C,P], test [B,C,P]."""
    identity = np.identity(support.shape[1])
    mean = support.mean(0)
    cov = np.stack([np.cov(support[:, :, i], rowvar=False) + 0.01 * identity for i in range(positions)], -1)
    distances = []
    for i in range(positions):
        cov_inv = np.linalg.inv(cov[:, :, i])
        distances.append([scipy_mahalanobis(sample[:, i], mean[:, i], cov_inv) for sample in test])
    return np.array(distances)  # [positions, B]


def met(ok):
    return "MET" if ok else "NOT MET"


def full_evaluation(args, device, category):
    """(b): what test.py --obj bottle --shot K --checkpoint none does, timed step by step."""
    print(f"\n(b) full evaluation: {category.name} K={args.shot}, {args.rounds} rounds, untrained network, "
          f"{args.backbone} (run first, cold like test.py)")
    start = time.perf_counter()
    (model, _), load_s = timed(lambda: load_model("none", {"backbone": args.backbone, "stn_mode": None,
                                                           "img_size": None}, args.backbone_weights), device)
    model.to(device)
    img_size = model.config.img_size
    test, decode_s = timed(lambda: load_test_data(category, img_size), device)
    supports, support_s = timed(lambda: support_sets_for(category, args.shot, args.rounds, 668, None,
                                                         img_size), device)
    scorer = TimedScorer(model, device)
    result, evaluate_s = timed(lambda: evaluate(scorer, test, supports), device)
    total = time.perf_counter() - start
    s = scorer.seconds
    rounds_s = evaluate_s - s["embed"]
    print(f"  model load ({args.backbone_weights or 'ImageNet'} weights)   {load_s:7.2f} s")
    print(f"  test image decode ({len(test.labels)} images)    {decode_s:7.2f} s")
    print(f"  support image decode              {support_s:7.2f} s")
    print(f"  embedding of the test images      {s['embed']:7.2f} s")
    print(f"  {args.rounds} rounds                         {rounds_s:7.2f} s  = fit (augment + embed "
          f"{args.shot}x22 + fit_gaussian) {s['fit']:.2f} + maps (mahalanobis + blur) {s['maps']:.2f} "
          f"+ metrics {rounds_s - s['fit'] - s['maps']:.2f}")
    summary = result["summary"]
    print(f"  total                             {total:7.2f} s   (image AUROC {summary['image_auroc']['mean']:.4f}, "
          f"pixel AUROC {summary['pixel_auroc']['mean']:.4f})")
    return model, test, supports, {**s, "metrics": rounds_s - s["fit"] - s["maps"], "total": total}


def parse_stages(text):
    """Stage seconds from (b)'s printout (the format above, unchanged since commit 309a854)."""
    found = re.search(r"embedding of the test images\s+([\d.]+) s.*?fit \(.*?\) ([\d.]+) \+ maps \(.*?\) ([\d.]+) "
                      r"\+ metrics ([\d.]+).*?total\s+([\d.]+) s", text, re.S)
    if not found:
        raise SystemExit(f"cannot read the baseline's stage times from its output:\n{text}")
    return dict(zip(STAGES + ("total",), map(float, found.groups())))


def baseline_evaluation(args):
    """(b) by the code of commit args.baseline: its own bench/eval_speed.py, run from a temporary worktree
    with the same data, backbone and rounds, before ours, on the same machine."""
    options = ["--data_path", str(Path(args.data_path).resolve()), "--device", args.device, "--obj", args.obj,
               "--shot", str(args.shot), "--rounds", str(args.rounds), "--backbone", args.backbone,
               "--naive_positions", "8", "--repeat", "1"]
    if args.backbone_weights:
        weights = args.backbone_weights
        options += ["--backbone_weights", weights if weights == "random" else str(Path(weights).resolve())]
    with checkout(args.baseline) as tree:
        run = subprocess.run([sys.executable, "bench/eval_speed.py", *options], cwd=tree, capture_output=True,
                             text=True)
    text = run.stdout[run.stdout.find("(b)"):run.stdout.find("(a)")]
    print(f"\n(b, baseline) the same evaluation by commit {args.baseline}:\n" + text.rstrip())
    return parse_stages(text)


def gaussian_speed(args, device, model, test, supports):
    """(a): the same real features through our batched code and through the official loops."""
    scorer = GaussianScorer(model, device)
    support = scorer.support_features(supports[0])  # what GaussianScorer.fit fits
    queries = scorer.embed(test.images[:args.n_test or None])
    n, c, (h, w) = len(support), support.channels, support.shape
    positions = min(args.naive_positions or h * w, h * w)
    print(f"\n(a) Gaussian fit + Mahalanobis: {n} support embeddings ({args.shot} images x 22 augmentations), "
          f"{len(queries)} test images, C={c}, {h}x{w}={h * w} positions")

    def ours():
        gaussian, fit_s = timed(lambda: fit_gaussian(support), device)
        distances, score_s = timed(lambda: mahalanobis(gaussian, queries), device)
        return distances, fit_s, score_s

    ours()  # warm-up
    runs = [ours() for _ in range(args.repeat)]
    fit_s, score_s = (statistics.median(run[i] for run in runs) for i in (1, 2))
    ours_s = fit_s + score_s

    # [N or B, C, P], as the official code holds them (its embedding_concat output)
    support_np, queries_np = (x.rows(0, h).permute(1, 2, 0)[:, :, :positions].double().cpu().numpy()
                              for x in (support, queries))
    naive, naive_part_s = timed(lambda: naive_distances(support_np, queries_np, positions), device)
    naive_s = naive_part_s * h * w / positions

    ours_d = runs[0][0].flatten(1)[:, :positions].T.double().cpu().numpy()
    rel = float(np.max(np.abs(ours_d - naive) / np.abs(naive)))
    print(f"  max relative difference of distances over {positions} positions x {len(queries)} images: {rel:.2e}")
    assert rel < 1e-3, f"our distances differ from the official loop's by {rel:.2e}"
    print(f"  ours  (fit_gaussian + mahalanobis, median of {args.repeat}): {ours_s:8.3f} s"
          f"  (fit {fit_s:.3f} s, score {score_s:.3f} s)")
    note = "all positions measured" if positions == h * w else (
        f"EXTRAPOLATED x{h * w / positions:.1f} from {positions} of {h * w} positions ({naive_part_s:.2f} s measured)")
    print(f"  naive (np.cov / np.linalg.inv / scipy loops):        {naive_s:8.3f} s  {note}")
    ratio = naive_s / ours_s
    print(f"  speed-up: {ratio:.1f}x")
    return ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", default=str(ROOT.parent / "shared" / "data" / "mvtec-mini"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--obj", default="bottle")
    parser.add_argument("--shot", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="resnet18 gives the paper's feature size (C=448); its weights do not change timings")
    parser.add_argument("--backbone_weights", help="for resnet18: a state dict, or 'random'")
    parser.add_argument("--n_test", type=int, default=0,
                        help="test images scored in (a) (0: the whole test set, as an evaluation round does)")
    parser.add_argument("--naive_positions", type=int, default=392,
                        help="time the naive loops on this many positions and extrapolate (0: all)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of our code in (a), median reported")
    parser.add_argument("--baseline", help="a git commit: also time its evaluation in the same run (needs a checkout)")
    args = parser.parse_args()

    device = pick_device(args.device)
    print(describe_machine(device))
    category = get_category(args.data_path, args.obj, need_test=True)
    baseline = baseline_evaluation(args) if args.baseline else None
    model, test, supports, ours = full_evaluation(args, device, category)
    eval_s = ours["total"]
    if baseline:
        print(f"\nspeed-up over commit {args.baseline}, per stage (baseline s / ours s):")
        for stage in STAGES + ("total",):
            print(f"  {stage:<8}{baseline[stage]:8.2f} s / {ours[stage]:6.2f} s = x{baseline[stage] / ours[stage]:.1f}")
    ratio = gaussian_speed(args, device, model, test, supports)
    print(f"\nload average {os.getloadavg()[0]:.1f} (1 min) at end; process CPU {time.process_time():.0f} s "
          f"in {time.perf_counter() - START:.0f} s wall")
    print(f"target: Gaussian fit + Mahalanobis speed-up >= {RATIO_TARGET}x on {device.type}: "
          f"{ratio:.1f}x -> {met(ratio >= RATIO_TARGET)}")
    print(f"target: full {args.rounds}-round evaluation <= {EVAL_TARGET_S} s: {eval_s:.1f} s -> "
          f"{met(eval_s <= EVAL_TARGET_S)}")
    if baseline:
        speedup = baseline["metrics"] / ours["metrics"]
        print(f"target: metric stage >= {METRICS_SPEEDUP_TARGET}x faster than commit {args.baseline}: x{speedup:.1f} "
              f"-> {met(speedup >= METRICS_SPEEDUP_TARGET)}")


if __name__ == "__main__":
    run_main(main)
