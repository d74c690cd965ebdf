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

import torch
from tqdm import tqdm

from datasets.mvtec import image_files, load_image
from models.checkpoint import load_model
from models.config import ModelConfig
from models.regad import RegAD
from scoring.gaussian import Gaussian
from scoring.maps import image_scores
from scoring.scorers import GaussianScorer
from scoring.threshold import leave_one_out, threshold_from, warnings_for
from utils.cli import (Parser, add_device_args, check_writable_dir, check_writable_file, command_line, pick_device,
                       run_main)
from utils.errors import UserError
from utils.memory import reusing_freed_memory
from utils.figures import save_figure
from utils.hardware import code_version
from utils.io import all_or_nothing, atomic_torch_save, atomic_write_json, atomic_write_text, read_torch_file

DEFAULT_FPR = 0.05


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--support", nargs="+", help="normal images: folder(s) and/or files (2-8 is typical)")
    parser.add_argument("--images", nargs="+", required=True, help="images to score: folder(s) and/or files")
    parser.add_argument("--recursive", action="store_true", help="also take the images in sub-folders of the "
                                                                 "--support and --images folders")
    parser.add_argument("--checkpoint", default="none", help="trained RegAD checkpoint, or 'none' for the "
                                                             "untrained network (ImageNet features)")
    ModelConfig.add_args(parser, defaults=False)
    add_device_args(parser, training=False)
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument("--fpr", type=float, help=f"false-positive rate for the leave-one-out threshold on the support "
                                                  f"images (default {DEFAULT_FPR}); with --model it re-derives the "
                                                  "saved fit's threshold")
    parser.add_argument("--threshold", type=float, help="fixed image-score threshold (skips leave-one-out)")
    parser.add_argument("--save_model", help="save the fitted model (Gaussians, threshold, network) here")
    parser.add_argument("--model", help="a model saved with --save_model: no support images or fitting needed")
    return parser.parse_args(argv)


def expand(inputs, recursive=False):
    """Folders become their sorted image files (with recursive, those of every sub-folder too); files are kept
    as given (unreadable ones fail later)."""
    paths = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            folders = [path] + (sorted(p for p in path.rglob("*") if p.is_dir()) if recursive else [])
            paths += [f for folder in folders for f in image_files(folder)]
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"'{given}' is neither an image file nor a folder; check the path")
    return paths


def read_images(paths, size, option, given=(), recursive=False):
    """Decode what can be decoded; unreadable files are named on stderr and skipped. When none can be read,
    one error line instead (before any fitting); given: the command line's paths, to point at sub-folders."""
    good, images, failures = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, size))
            good.append(path)
        except UserError as exc:
            failures.append(exc)
    if not paths:
        nested = [g for g in given if Path(g).is_dir() and any(p.is_dir() for p in Path(g).iterdir())]
        hint = f" (sub-folders of '{nested[0]}' are not searched: pass --recursive)" if nested and not recursive else ""
        raise UserError(f"no image file found in {option}{hint}; pass image files or folders that hold them")
    if not images:
        raise UserError(f"none of the {len(paths)} {option} images can be read (first: {failures[0]})")
    for failure in failures:
        print(f"skipped {option} image: {failure}", file=sys.stderr)
    return good, torch.stack(images)


def fit(args, model, meta, support_paths, device):
    files, support = read_images(support_paths, model.config.img_size, "--support", args.support, args.recursive)
    if len(support) < 2 and args.threshold is None:
        raise UserError(f"{len(support)} readable support image(s); the leave-one-out threshold needs at least 2 "
                        "(or pass --threshold)")
    print(f"fitting on {len(support)} support images ({meta['backbone']}, checkpoint {meta['checkpoint']})")
    scorer = GaussianScorer(model, device, args.eval_batch_size)
    if args.threshold is not None:
        gaussian, loo = scorer.fit(support), None
    else:
        gaussian, loo = leave_one_out(scorer, support)
        loo = loo.tolist()
    info = {**model.config.as_dict(), "checkpoint": meta["checkpoint"], "support": [str(f) for f in files],
            "loo_scores": loo, "code_version": code_version()}
    return scorer, gaussian, {**info, **threshold_info(args.threshold, args.fpr, loo)}


def threshold_info(fixed, fpr, loo):
    """The threshold and how it was set: fixed (--threshold) as given, else the leave-one-out scores' at fpr."""
    if fixed is not None:
        return {"threshold": fixed, "fpr": None, "interval": None, "warnings": [], "method": "fixed with --threshold"}
    info = threshold_from(loo, DEFAULT_FPR if fpr is None else fpr)
    return {**info, "warnings": warnings_for(info)}


def load_fitted(args, device):
    saved = read_torch_file(args.model, "fitted model", missing="create it with --save_model",
                            unreadable="pass a model saved by predict.py --save_model")
    try:
        info, gaussian = saved["info"], Gaussian.from_dict(saved["gaussian"])
    except Exception as exc:
        raise UserError(f"'{args.model}' is not a model saved by predict.py --save_model ({type(exc).__name__})")
    model = RegAD(ModelConfig.from_meta(info)).eval()  # only the network is needed; it comes from the file
    model.STN.load_state_dict(saved["STN"])
    if args.fpr is not None and info.get("loo_scores") is None:
        raise UserError(f"'{args.model}' was saved with a fixed --threshold, so --fpr cannot apply; pass --threshold")
    if args.threshold is not None or args.fpr is not None:
        info = {**info, **threshold_info(args.threshold, args.fpr, info.get("loo_scores"))}
    elif "method" not in info:  # saved by an earlier version (one leave-one-out score per image): described anew
        loo = info.get("loo_scores")
        info = {**info, **threshold_info(None if loo else info["threshold"], info.get("fpr"), loo)}
    return GaussianScorer(model.to(device), device, args.eval_batch_size), gaussian, info


def write_gallery(out, rows, info):
    cells = "\n".join(
        f"<tr><td>{rank}</td><td>{html.escape(r['file'])}</td><td>{r['score']:.3f}</td><td>{r['decision']}</td>"
        f"<td><a href='{html.escape(r['figure'])}'><img src='{html.escape(r['figure'])}' height='160'></a></td></tr>"
        for rank, r in enumerate(rows, start=1))
    notes = "".join(f"<p><b>{html.escape(w)}</b></p>" for w in info["warnings"])
    page = ("<!doctype html><meta charset='utf-8'><title>RegAD predictions</title>"
            f"<p>Threshold {info['threshold']:.3f}: {html.escape(info['method'])}. Anomalous: score above it.</p>"
            f"{notes}<table border='1' cellpadding='4'><tr><th>#</th><th>file</th><th>score</th><th>decision</th>"
            f"<th>figure</th></tr>\n{cells}\n</table>\n")
    atomic_write_text(out / "index.html", page)


def run(args):
    if args.model and args.support:
        raise UserError("pass either --support (fit now) or --model (a saved fit), not both")
    if not args.model and not args.support:
        raise UserError("pass normal images with --support, or a saved fit with --model")
    if args.fpr is not None and not 0 < args.fpr < 1:
        raise UserError("--fpr must be between 0 and 1")
    if args.fpr is not None and args.threshold is not None:
        raise UserError("--fpr sets the threshold from the support images and --threshold fixes it; pass one")
    if args.model:
        fixed = [f"--{k}" for k, v in {**ModelConfig.options(args), "backbone_weights": args.backbone_weights}.items()
                 if v is not None] + (["--checkpoint"] if args.checkpoint != "none" else [])
        if fixed:
            raise UserError(f"{' and '.join(fixed)} cannot apply to a saved fit (--model holds its network and "
                            "settings); drop them, or fit anew with --support")
    out = Path(args.out)
    check_output_folder(out)
    if args.save_model:
        check_writable_file(args.save_model, "--save_model")
    device = pick_device(args.device)
    support_paths, targets = expand(args.support or [], args.recursive), expand(args.images, args.recursive)
    with reusing_freed_memory():
        if args.model:
            scorer, gaussian, info = load_fitted(args, device)
            files, images = read_images(targets, info["img_size"], "--images", args.images, args.recursive)
        else:
            model, meta = load_model(args.checkpoint, ModelConfig.options(args), args.backbone_weights)
            # before minutes of fitting
            files, images = read_images(targets, model.config.img_size, "--images", args.images, args.recursive)
            scorer, gaussian, info = fit(args, model.to(device), meta, support_paths, device)
        print(f"threshold {info['threshold']:.3f}: {info['method']}")
        for line in info["warnings"]:
            print(line, file=sys.stderr)
        size, threshold = info["img_size"], info["threshold"]
        results = []
        for start in tqdm(range(0, len(images), args.eval_batch_size), desc="scoring", disable=None):
            batch = images[start:start + args.eval_batch_size]
            maps = scorer.maps(gaussian, scorer.embed(batch), size)
            results += list(zip(files[start:start + len(batch)], batch, maps.numpy(), image_scores(maps).tolist()))
    with all_or_nothing():  # the fit, figures, scores.csv and index.html replace earlier ones together or not at all
        rows = write_outputs(args, out, info, gaussian, scorer, results)
    for stale in (out / "figures").glob("*.png"):  # an earlier run's figures: only this run's outputs stay
        if f"figures/{stale.name}" not in {r["figure"] for r in rows}:
            stale.unlink()
    if args.save_model:
        print(f"saved the fitted model to {args.save_model}")
    anomalous = sum(r["decision"] == "anomalous" for r in rows)
    print(f"scored {len(rows)} image{'s' if len(rows) != 1 else ''} ({anomalous} anomalous at threshold "
          f"{threshold:.3f}); wrote {out / 'scores.csv'}, {out / 'threshold.json'}, {out / 'index.html'}")
    return rows


OUTPUTS = {"scores.csv", "threshold.json", "index.html", "figures"}


def check_output_folder(out):
    """--out is new, empty or an earlier predict.py output (replaced as a whole); a folder of other files is
    refused, since this run's outputs would be mixed with them."""
    if out.is_dir() and any(out.iterdir()) and not (out / "scores.csv").is_file():
        other = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
        raise UserError(f"--out '{out}' holds other files ({other[0] if other else 'figures'}, ...); choose a new "
                        "or empty folder")
    check_writable_dir(out)


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
        rows[-1]["threshold"] = threshold
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["file", "score", "decision", "threshold"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "scores.csv", buffer.getvalue())
    atomic_write_json(out / "threshold.json", {
        "command": command_line(), **{k: info.get(k) for k in (
            "threshold", "method", "fpr", "interval", "n_images", "n_scores", "warnings", "support", "loo_scores",
            "checkpoint", "backbone", "stn_mode", "img_size", "code_version")}, "model": args.model})
    write_gallery(out, sorted(rows, key=lambda r: -r["score"]), info)
    return rows


if __name__ == "__main__":
    run_main(lambda: run(parse_args()))
