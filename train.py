"""Aggregated training (leave-one-category-out): the registration network learns to align pairs of
normal images of every category except the target, which stays unseen until test.py.

The saved model is the LAST epoch. The official code instead keeps the epoch with the best test-set
AUROC; that is available only as the explicitly labelled --select_on_test option.
"""
import math
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.mvtec import discover_categories, get_category, load_images
from datasets.sampler import PairSampler
from datasets.support_set import read_support_sets, support_source
from models.checkpoint import checkpoint_path, read_checkpoint, save_checkpoint
from models.config import ModelConfig
from models.regad import RegAD
from scoring.evaluation import evaluate, load_test_data
from scoring.scorers import GaussianScorer
from utils.cli import (Parser, add_data_args, add_device_args, check_writable_dir, command_line, pick_device,
                       positive_int, run_main)
from utils.errors import UserError
from utils.hardware import code_version
from utils.io import atomic_torch_save, atomic_write_json, lock_folder, release_folders
from utils.precision import PRECISIONS, autocast

ROOT = Path(__file__).resolve().parent
VAL_FRACTION = 0.2  # of each --val_categories pool, held out for the validation loss


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--obj", required=True, help="target category, left out of training")
    parser.add_argument("--shot", type=int, default=2, help="K support images per query")
    add_data_args(parser)
    ModelConfig.add_args(parser, defaults=True)
    add_device_args(parser, training=True)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=668)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="tf32 (CUDA) and bf16 are faster, but move the gradients by more than the "
                             "batch noise at the start of training (bench/train_speed.py): opt-in")
    parser.add_argument("--save_dir", default="save_checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from <save_dir>/.../last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start afresh, replacing an earlier run's last.pt")
    parser.add_argument("--stop_after", type=int, metavar="N",
                        help="stop after epoch N of the --epochs schedule (saves the model at epoch N); "
                             "continue later with --resume and the same --epochs")
    parser.add_argument("--val_categories", nargs="*", default=[],
                        help=f"hold out {VAL_FRACTION:.0%} of these training categories' normal images "
                             "for a validation loss curve")
    parser.add_argument("--max_images_per_category", type=positive_int,
                        help="use only the first N normal images of each category (quick runs, CI)")
    parser.add_argument("--select_on_test", action="store_true",
                        help="PAPER PROTOCOL, OPTIMISTIC: as the official train.py, evaluate on the target's "
                             "test set before each epoch's training (so epoch 0, the untrained network, too) and "
                             "keep the best image + pixel AUROC in a separate file; every evaluation is recorded "
                             "in the meta's test_curve")
    parser.add_argument("--rounds", type=int, default=10, help="support rounds for --select_on_test")
    return parser.parse_args(argv)


def split_pools(args):
    """{category: (train image paths, held-out validation paths)} for every category but the target."""
    target = get_category(args.data_path, args.obj, need_test=args.select_on_test)
    categories = {n: c for n, c in discover_categories(args.data_path).items() if n != target.name}
    unknown = set(args.val_categories) - set(categories)
    if unknown:
        raise UserError(f"--val_categories {', '.join(sorted(unknown))} not among the training categories "
                        f"{', '.join(categories)}")
    pools = {}
    for name, category in categories.items():
        paths = category.train_images[:args.max_images_per_category]
        held = []
        if name in args.val_categories:
            paths = random.Random(f"{args.seed}-{name}").sample(paths, len(paths))
            cut = max(args.shot + 1, int(len(paths) * VAL_FRACTION))
            held, paths = sorted(paths[:cut]), sorted(paths[cut:])
        pools[name] = (paths, held)
    return target, pools


def pair_batches(batches, images, device):
    """(query, support) float batches of one category each, images in [0, 1]."""
    for category, query_idx, support_idx in batches:
        stack = images[category]
        query = stack[query_idx].to(device).float().div_(255)
        support = stack[torch.tensor(support_idx)].to(device).float().div_(255)
        yield query, support


def cosine_lr(base_lr, epoch, epochs):
    """The official adjust_learning_rate, set at the start of each epoch (counted from 1):
    base_lr * 0.5 * (1 + cos(pi * epoch / epochs)). Epoch 1 already runs below base_lr (0.999 of it at 50
    epochs) and the last epoch at rate 0, as in the official code; so a 1-epoch schedule trains nothing,
    which run() refuses."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def make_optimiser(model, lr, momentum):
    """The official code's three SGD optimisers (STN, ENC, PRED) with equal settings, as one over all parameters."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def train_step(model, optimiser, query, support, precision):
    """One SGD step on a (query, support) batch, as the official code's step; returns the loss."""
    with autocast(query.device, precision):
        loss = model.loss(query, support)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.detach()


def train_epoch(model, optimiser, lr, pairs, precision):
    """One epoch as the official loop runs it: the epoch's rate set before its first step, then one SGD step per
    (query, support) batch; yields each step's loss."""
    for group in optimiser.param_groups:
        group["lr"] = lr
    model.train()
    for query, support in pairs:
        yield train_step(model, optimiser, query, support, precision)


@torch.no_grad()
def validation_loss(model, sampler, images, device, precision):
    model.eval()
    with autocast(device, precision):
        losses = [model.loss(q, s).item() for q, s in pair_batches(sampler.batches(0), images, device)]
    return float(np.mean(losses)) if losses else None


def run(args):
    """train(), with the run folder's lock released however it ends."""
    try:
        return train(args)
    finally:
        release_folders()


def train(args):
    if args.shot < 1 or args.epochs < 1:
        raise UserError("--shot and --epochs must be at least 1")
    if args.epochs == 1:
        raise UserError("--epochs 1 trains nothing: the official cosine schedule runs the last epoch at learning "
                        "rate 0; for a one-epoch trial of the paper's schedule use --epochs 50 --stop_after 1")
    stop = args.epochs if args.stop_after is None else args.stop_after
    if not 1 <= stop <= args.epochs:
        raise UserError(f"--stop_after must be between 1 and --epochs ({args.epochs})")
    config = ModelConfig(**ModelConfig.options(args))
    device = pick_device(args.device)
    if args.precision == "tf32" and device.type != "cuda":
        raise UserError("--precision tf32 needs a CUDA device; use fp32 or bf16 on the CPU")
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    target, pools = split_pools(args)
    out_dir = checkpoint_path(args.save_dir, args.backbone, args.stn_mode, args.shot, args.obj).parent
    check_writable_dir(out_dir)
    lock_folder(out_dir, command_line())  # before last.pt is looked at: one writer per run
    last_path = out_dir / "last.pt"
    if args.resume and not last_path.is_file():
        raise UserError(f"nothing to resume: '{last_path}' does not exist; drop --resume to start training")
    if last_path.is_file() and not (args.resume or args.overwrite):
        raise UserError(f"'{last_path}' holds an earlier run; pass --resume to continue it, --overwrite to replace "
                        "it, or another --save_dir")
    resume_state = read_checkpoint(last_path) if args.resume else None
    if resume_state is not None:
        if not {"optimiser", "meta"} <= set(resume_state):
            raise UserError(f"'{last_path}' has no optimiser state or meta, so it cannot be resumed (train.py writes "
                            "both); drop --resume and pass --overwrite to start afresh")
        check_resume(resume_state["meta"], args, stop)
    torch.manual_seed(args.seed)
    model = RegAD(config)
    if resume_state is None:
        model.load_backbone_weights(args.backbone_weights)
    model.to(device)
    optimiser = make_optimiser(model, args.lr, args.momentum)

    print(f"target {target.name} (left out); training on {', '.join(pools)} ({device}, {args.precision}); "
          "decoding images once")
    # uint8 on the training device (mvtec-mini: 200 MB): no host-to-device copy per step on a GPU
    train_images = {n: load_images(p, args.img_size).to(device) for n, (p, _) in pools.items()}
    sampler = PairSampler({n: len(p) for n, (p, _) in pools.items()}, args.shot, args.batch_size, args.seed)
    if sampler.skipped:
        print(f"note: {', '.join(sampler.skipped)} skipped: fewer than 2 normal images")
    val_images = {n: load_images(h, args.img_size).to(device) for n, (_, h) in pools.items() if h}
    val_sampler = PairSampler({n: len(v) for n, v in val_images.items()}, args.shot, args.batch_size,
                              args.seed) if val_images else None
    selection = SelectOnTest(args, target, device) if args.select_on_test else None

    history, first_epoch = [], 1
    if resume_state is not None:
        model.load_checkpoint_state(resume_state)
        optimiser.load_state_dict(resume_state["optimiser"])
        history, first_epoch = resume_state["meta"]["history"], resume_state["meta"]["epoch"] + 1
        if selection:
            selection.resume(resume_state["meta"])
        print(f"resumed from {last_path} after epoch {first_epoch - 1}")

    def run_meta(epoch):
        return {"shot": args.shot, "obj": args.obj, "epoch": epoch, "epochs": args.epochs,
                "train_categories": list(pools), "seed": args.seed, "precision": args.precision,
                "code_version": code_version(), "history": history, "command": command_line(),
                "selected_on_test": False, **(selection.state() if selection else {})}

    for epoch in range(first_epoch, stop + 1):
        if selection:  # the official order: evaluate the weights of epoch - 1, then train
            selection.evaluate(model, run_meta(epoch - 1))
        lr = cosine_lr(args.lr, epoch, args.epochs)
        started, cpu_started, losses, seen = time.time(), time.process_time(), [], 0
        epoch_batches = sampler.batches(epoch)
        progress = Progress(f"epoch {epoch}/{args.epochs}", len(epoch_batches))
        steps = train_epoch(model, optimiser, lr, pair_batches(epoch_batches, train_images, device), args.precision)
        for batch, loss in zip(epoch_batches, steps, strict=True):
            losses.append(loss.item())
            seen += len(batch.query_indices) * (1 + args.shot)
            progress.update(losses[-1], seen / (time.time() - started))
        progress.close()
        seconds = time.time() - started
        # wall seconds count pauses and other jobs; CPU seconds (all threads) do not
        record = {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)), "seconds": seconds,
                  "cpu_seconds": time.process_time() - cpu_started, "images_per_second": seen / seconds}
        if val_sampler:
            record["val_loss"] = validation_loss(model, val_sampler, val_images, device, args.precision)
        history.append(record)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
              flush=True)
        atomic_torch_save({**model.checkpoint_state(), "optimiser": optimiser.state_dict(),
                           "meta": {**config.as_dict(), **run_meta(epoch)}}, last_path)
    final = checkpoint_path(args.save_dir, args.backbone, args.stn_mode, args.shot, args.obj)
    save_checkpoint(final, model, run_meta(stop))
    atomic_write_json(out_dir / "train_log.json", {**config.as_dict(), **run_meta(stop)})
    if stop < args.epochs:
        print(f"stopped after epoch {stop} of {args.epochs}; saved it to {final}. Continue with the same command, "
              "--resume and a larger --stop_after (or none)")
    else:
        print(f"saved the last epoch to {final}")
    return history


class Progress:
    """A progress bar on a terminal; in a log file (nohup, CI) a line every EVERY batches instead."""
    EVERY = 10

    def __init__(self, desc, total):
        self.desc, self.total, self.done, self.started = desc, total, 0, time.time()
        self.bar = tqdm(total=total, desc=desc, leave=False) if sys.stdout.isatty() else None

    def update(self, loss, images_per_second):
        self.done += 1
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.1f}")
        elif self.done % self.EVERY == 0:
            eta = (self.total - self.done) * (time.time() - self.started) / self.done
            print(f"  {self.desc} batch {self.done}/{self.total} loss {loss:.4f} {images_per_second:.1f} images/s "
                  f"ETA {eta:.0f} s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class SelectOnTest:
    """The official train.py's model selection: before each epoch's training, the test-set image + pixel
    AUROC of the current weights (epoch - 1, so the untrained network too); the best is kept. Optimistic:
    labelled loudly. Every evaluation goes into the learning curve (meta 'test_curve')."""

    def __init__(self, args, target, device):
        print("WARNING: --select_on_test picks the epoch on TEST images (the paper's protocol); "
              "its figures are optimistic and are saved separately with selected_on_test=True")
        self.device, self.best, self.curve = device, None, []
        self.test = load_test_data(target, args.img_size)
        path, self.source = support_source(target, args.shot, args.rounds, args.seed, args.dataset, root=ROOT)
        self.supports = read_support_sets(path, target, args.shot, args.rounds, args.seed, args.img_size)
        print(f"test-set evaluations on {self.source}")
        self.path = checkpoint_path(args.save_dir, args.backbone, args.stn_mode, args.shot, args.obj,
                                    selected_on_test=True)

    def resume(self, meta):
        self.best, self.curve = meta.get("best_on_test"), list(meta.get("test_curve", []))

    def state(self):
        return {"best_on_test": self.best, "test_curve": self.curve, "test_support": self.source}

    def evaluate(self, model, meta):
        started = time.time()
        summary = evaluate(GaussianScorer(model, self.device), self.test, self.supports)["summary"]
        score = sum(summary[m]["mean"] for m in ("image_auroc", "pixel_auroc") if summary[m])
        self.curve.append({"epoch": meta["epoch"], "score": score, "seconds": time.time() - started, **summary})
        print(f"  test set after epoch {meta['epoch']}: image + pixel AUROC {score:.4f} "
              f"({self.curve[-1]['seconds']:.0f} s)", flush=True)
        if self.best is None or score > self.best["score"]:  # strict, as the official: a tie keeps the earlier
            self.best = {"epoch": meta["epoch"], "score": score}
            save_checkpoint(self.path, model, {**meta, **self.state(), "selected_on_test": True,
                                               "test_summary": summary})


def check_resume(meta, args, stop):
    """Resuming must continue the same run (the same --epochs schedule too), and one that has epochs to go."""
    keys = ("backbone", "stn_mode", "img_size", "shot", "precision", "epochs")
    if any(meta.get(k, args.epochs if k == "epochs" else None) != getattr(args, k) for k in keys):
        raise UserError(f"last.pt was written with {', '.join(f'{k}={meta.get(k)}' for k in keys)}; "
                        "resume with the same options")
    if meta["epoch"] >= args.epochs:
        raise UserError(f"last.pt already finished all {args.epochs} epochs; nothing to resume")
    if meta["epoch"] >= stop:
        raise UserError(f"last.pt is already at epoch {meta['epoch']}; pass a --stop_after larger than that")


def resume_hint(args, started):
    """After Ctrl-C: which finished epoch last.pt holds, and the exact command that continues from it."""
    try:
        last_path = checkpoint_path(args.save_dir, args.backbone, args.stn_mode, args.shot, args.obj).parent / "last.pt"
        fresh = args.resume or last_path.stat().st_mtime >= started  # else it is an earlier run's
        meta = torch.load(last_path, map_location="cpu", weights_only=True)["meta"] if fresh else None
    except Exception:  # no last.pt yet, or not one of ours
        meta = None
    if meta is None:
        return "no epoch of this run finished, so nothing was saved"
    command = [a for a in sys.argv if a not in ("--overwrite", "--resume")]
    return (f"epoch {meta['epoch']} of {meta['epochs']} is saved in {last_path}; continue with: "
            f"{shlex.join(['python', *command, '--resume'])}")


if __name__ == "__main__":
    started, args = time.time(), parse_args()
    run_main(lambda: run(args), on_interrupt=lambda: resume_hint(args, started))
