"""Score new images of a product from a few normal ones, without retraining.

Fits the per-position Gaussians on the (augmented) support images, picks a decision threshold from the
support images alone (leave-one-out at a chosen false-positive rate, never from the images being
scored), then writes scores.csv, one figure per image and an index.html gallery sorted by score.
"""
import csv
import html
import io
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.mvtec import image_files, load_image
from models.checkpoint import load_model
from models.config import ModelConfig
from models.regad import RegAD
from scoring.gaussian import Gaussian
from scoring.maps import image_scores
from scoring.scorers import GaussianScorer
from utils.cli import Parser, add_device_args, check_writable_dir, check_writable_file, pick_device, run_main
from utils.errors import UserError
from utils.memory import reusing_freed_memory
from utils.figures import save_figure
from utils.hardware import code_version
from utils.io import all_or_nothing, atomic_torch_save, atomic_write_text, read_torch_file


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--support", nargs="+", help="normal images: folder(s) and/or files (2-8 is typical)")
    parser.add_argument("--images", nargs="+", required=True, help="images to score: folder(s) and/or files")
    parser.add_argument("--checkpoint", default="none", help="trained RegAD checkpoint, or 'none' for the "
                                                             "untrained network (ImageNet features)")
    ModelConfig.add_args(parser, defaults=False)
    add_device_args(parser, training=False)
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument("--fpr", type=float, default=0.05,
                        help="false-positive rate for the leave-one-out threshold on the support images")
    parser.add_argument("--threshold", type=float, help="fixed image-score threshold (skips leave-one-out)")
    parser.add_argument("--save_model", help="save the fitted model (Gaussians, threshold, network) here")
    parser.add_argument("--model", help="a model saved with --save_model: no support images or fitting needed")
    return parser.parse_args(argv)


def expand(inputs):
    """Folders become their sorted image files; files are kept as given (unreadable ones fail later)."""
    paths = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            paths += image_files(path)
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"'{given}' is neither an image file nor a folder; check the path")
    return paths


def read_images(paths, size, option):
    """Decode what can be decoded; unreadable files are named on stderr and skipped. When none can be read,
    one error line instead (before any fitting)."""
    good, images, failures = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, size))
            good.append(path)
        except UserError as exc:
            failures.append(exc)
    if not paths:
        raise UserError(f"no image file found in {option}; pass image files or folders that hold them")
    if not images:
        raise UserError(f"none of the {len(paths)} {option} images can be read (first: {failures[0]})")
    for failure in failures:
        print(f"skipped {option} image: {failure}", file=sys.stderr)
    return good, torch.stack(images)


def leave_one_out_scores(scorer, support):
    """Image score of each support image under the Gaussians fitted on the others."""
    scores = []
    for i in range(len(support)):
        gaussian = scorer.fit(torch.cat([support[:i], support[i + 1:]]))
        scores.append(float(image_scores(scorer.maps(gaussian, scorer.embed(support[i:i + 1]), support.shape[-1]))))
    return scores


def fit(args, model, meta, support_paths, device):
    files, support = read_images(support_paths, model.config.img_size, "--support")
    if len(support) < 2 and args.threshold is None:
        raise UserError(f"{len(support)} readable support image(s); the leave-one-out threshold needs at least 2 "
                        "(or pass --threshold)")
    print(f"fitting on {len(support)} support images ({meta['backbone']}, checkpoint {meta['checkpoint']})")
    scorer = GaussianScorer(model, device, args.eval_batch_size)
    gaussian = scorer.fit(support)
    if args.threshold is not None:
        threshold, loo = args.threshold, None
    else:
        loo = leave_one_out_scores(scorer, support)
        threshold = float(np.quantile(loo, 1 - args.fpr))
        print(f"leave-one-out support scores {', '.join(f'{s:.2f}' for s in loo)} -> threshold {threshold:.3f} "
              f"(FPR {args.fpr})")
    info = {**model.config.as_dict(), "checkpoint": meta["checkpoint"], "support": [str(f) for f in files],
            "threshold": threshold, "fpr": None if loo is None else args.fpr, "loo_scores": loo,
            "code_version": code_version()}
    return scorer, gaussian, info


def load_fitted(args, device):
    saved = read_torch_file(args.model, "fitted model", missing="create it with --save_model",
                            unreadable="pass a model saved by predict.py --save_model")
    try:
        info, gaussian = saved["info"], Gaussian.from_dict(saved["gaussian"])
    except Exception as exc:
        raise UserError(f"'{args.model}' is not a model saved by predict.py --save_model ({type(exc).__name__})")
    model = RegAD(ModelConfig.from_meta(info)).eval()  # only the network is needed; it comes from the file
    model.STN.load_state_dict(saved["STN"])
    if args.threshold is not None:
        info = {**info, "threshold": args.threshold, "fpr": None}
    return GaussianScorer(model.to(device), device, args.eval_batch_size), gaussian, info


def write_gallery(out, rows):
    cells = "\n".join(
        f"<tr><td>{rank}</td><td>{html.escape(r['file'])}</td><td>{r['score']:.3f}</td><td>{r['decision']}</td>"
        f"<td><a href='{html.escape(r['figure'])}'><img src='{html.escape(r['figure'])}' height='160'></a></td></tr>"
        for rank, r in enumerate(rows, start=1))
    page = ("<!doctype html><meta charset='utf-8'><title>RegAD predictions</title>"
            "<table border='1' cellpadding='4'><tr><th>#</th><th>file</th><th>score</th><th>decision</th>"
            f"<th>figure</th></tr>\n{cells}\n</table>\n")
    atomic_write_text(out / "index.html", page)


def run(args):
    if args.model and args.support:
        raise UserError("pass either --support (fit now) or --model (a saved fit), not both")
    if not args.model and not args.support:
        raise UserError("pass normal images with --support, or a saved fit with --model")
    if not 0 < args.fpr < 1:
        raise UserError("--fpr must be between 0 and 1")
    out = Path(args.out)
    check_writable_dir(out)
    if args.save_model:
        check_writable_file(args.save_model, "--save_model")
    device = pick_device(args.device)
    support_paths, targets = expand(args.support or []), expand(args.images)
    with reusing_freed_memory():
        if args.model:
            scorer, gaussian, info = load_fitted(args, device)
            files, images = read_images(targets, info["img_size"], "--images")
        else:
            model, meta = load_model(args.checkpoint, ModelConfig.options(args), args.backbone_weights)
            files, images = read_images(targets, model.config.img_size, "--images")  # before minutes of fitting
            scorer, gaussian, info = fit(args, model.to(device), meta, support_paths, device)
        size, threshold = info["img_size"], info["threshold"]
        results = []
        for start in tqdm(range(0, len(images), args.eval_batch_size), desc="scoring", disable=None):
            batch = images[start:start + args.eval_batch_size]
            maps = scorer.maps(gaussian, scorer.embed(batch), size)
            results += list(zip(files[start:start + len(batch)], batch, maps.numpy(), image_scores(maps).tolist()))
    with all_or_nothing():  # the fit, figures, scores.csv and index.html replace earlier ones together or not at all
        rows = write_outputs(args, out, info, gaussian, scorer, results)
    if args.save_model:
        print(f"saved the fitted model to {args.save_model}")
    print(f"scored {len(rows)} images ({sum(r['decision'] == 'anomalous' for r in rows)} anomalous at threshold "
          f"{threshold:.3f}); wrote {out / 'scores.csv'}, {out / 'index.html'}")
    return rows


def write_outputs(args, out, info, gaussian, scorer, results):
    threshold = info["threshold"]
    if args.save_model:
        atomic_torch_save({"info": info, "gaussian": gaussian.state_dict(), "STN": scorer.model.STN.state_dict()},
                          args.save_model)
    rows = []
    vmax = max([score for *_, score in results] + [threshold])
    for index, (path, image, amap, score) in enumerate(results):
        decision = "anomalous" if score > threshold else "normal"
        figure = f"figures/{index:04d}_{path.stem}.png"
        save_figure(out / figure, image, amap, f"{path.name}  score {score:.2f}  ({decision}, threshold "
                                               f"{threshold:.2f})", vmax)
        rows.append({"file": str(path), "score": score, "decision": decision, "figure": figure})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["file", "score", "decision"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "scores.csv", buffer.getvalue())
    write_gallery(out, sorted(rows, key=lambda r: -r["score"]))
    return rows


if __name__ == "__main__":
    run_main(lambda: run(parse_args()))
