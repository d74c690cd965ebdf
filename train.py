"""Aggregated training (leave-one-category-out): the registration network learns to align pairs of
normal images of every category except the target, which stays unseen until test.py.

The saved model is the LAST epoch. The official code instead keeps the epoch with the best test-set
AUROC; that is available only as the explicitly labelled --select_on_test option.
"""
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.mvtec import discover_categories, get_category, load_images
from datasets.sampler import PairSampler
from datasets.support_set import support_sets_for
from models.regad import RegAD
from utils.checkpoint import checkpoint_path, code_version, read_checkpoint, save_checkpoint
from utils.cli import Parser, add_data_args, add_model_args, check_writable_dir, pick_device, run_main
from utils.errors import UserError
from utils.evaluation import evaluate, load_test_data
from utils.io import atomic_torch_save, atomic_write_json
from utils.precision import PRECISIONS, autocast, set_precision
from utils.scoring import GaussianScorer

ROOT = Path(__file__).resolve().parent
VAL_FRACTION = 0.2  # of each --val_categories pool, held out for the validation loss


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--obj", required=True, help="target category, left out of training")
    parser.add_argument("--shot", type=int, default=2, help="K support images per query")
    add_data_args(parser)
    add_model_args(parser, defaults=True)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=668)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="tf32 (CUDA) and bf16 are faster, but move the gradients by more than the "
                             "batch noise at the start of training (bench/train_speed.py): opt-in")
    parser.add_argument("--save_dir", default="save_checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from <save_dir>/.../last.pt")
    parser.add_argument("--val_categories", nargs="*", default=[],
                        help=f"hold out {VAL_FRACTION:.0%} of these training categories' normal images "
                             "for a validation loss curve")
    parser.add_argument("--max_images_per_category", type=int,
                        help="use only the first N normal images of each category (quick runs, CI)")
    parser.add_argument("--select_on_test", action="store_true",
                        help="PAPER PROTOCOL, OPTIMISTIC: keep the epoch with the best test-set AUROC of the "
                             "target (recorded in the checkpoint's meta and written to a separate file)")
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
    """Cosine schedule set at the start of each epoch (counted from 1). The official code uses
    cos(pi * epoch / epochs), which makes the last epoch's rate 0 (and a 1-epoch run train nothing);
    starting at epoch - 1 keeps the same curve shifted by one epoch."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


@torch.no_grad()
def validation_loss(model, sampler, images, device, precision):
    model.eval()
    with autocast(device, precision):
        losses = [model.loss(q, s).item() for q, s in pair_batches(sampler.batches(0), images, device)]
    return float(np.mean(losses)) if losses else None


def run(args):
    if args.shot < 1 or args.epochs < 1 or args.batch_size < 1:
        raise UserError("--shot, --epochs and --batch_size must be at least 1")
    device = pick_device(args.device)
    if args.precision == "tf32" and device.type != "cuda":
        raise UserError("--precision tf32 needs a CUDA device; use fp32 or bf16 on the CPU")
    set_precision(args.precision)
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    target, pools = split_pools(args)
    out_dir = checkpoint_path(args.save_dir, args.stn_mode, args.shot, args.obj).parent
    check_writable_dir(out_dir)
    last_path = out_dir / "last.pt"
    if args.resume and not last_path.is_file():
        raise UserError(f"nothing to resume: '{last_path}' does not exist; drop --resume to start training")
    resume_state = read_checkpoint(last_path) if args.resume else None
    if resume_state is not None:
        check_resume(resume_state["meta"], args)
    torch.manual_seed(args.seed)
    model = RegAD(args.backbone, args.stn_mode, args.img_size)
    if resume_state is None:
        model.load_backbone_weights(args.backbone_weights)
    model.to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)

    print(f"target {target.name} (left out); training on {', '.join(pools)} ({device}, {args.precision}); "
          "decoding images once")
    # uint8 on the training device (mvtec-mini: 200 MB): no host-to-device copy per step on a GPU
    train_images = {n: load_images(p, args.img_size).to(device) for n, (p, _) in pools.items()}
    sampler = PairSampler({n: len(p) for n, (p, _) in pools.items()}, args.shot, args.batch_size, args.seed)
    if sampler.skipped:
        print(f"note: {', '.join(sampler.skipped)} skipped: fewer than K+1={args.shot + 1} normal images")
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
            selection.best = resume_state["meta"].get("best_on_test")
        print(f"resumed from {last_path} after epoch {first_epoch - 1}")

    for epoch in range(first_epoch, args.epochs + 1):
        lr = cosine_lr(args.lr, epoch, args.epochs)
        for group in optimiser.param_groups:
            group["lr"] = lr
        model.train()
        started, losses, seen = time.time(), [], 0
        epoch_batches = sampler.batches(epoch)
        batches = tqdm(pair_batches(epoch_batches, train_images, device), total=len(epoch_batches),
                       desc=f"epoch {epoch}/{args.epochs}", leave=False, disable=None)
        for query, support in batches:
            with autocast(device, args.precision):
                loss = model.loss(query, support)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            seen += len(query) * (1 + args.shot)
            batches.set_postfix(loss=f"{loss.item():.4f}")
        seconds = time.time() - started
        record = {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)), "seconds": seconds,
                  "images_per_second": seen / seconds}
        if val_sampler:
            record["val_loss"] = validation_loss(model, val_sampler, val_images, device, args.precision)
        history.append(record)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        meta = {"shot": args.shot, "obj": args.obj, "epoch": epoch, "train_categories": list(pools),
                "seed": args.seed, "precision": args.precision, "code_version": code_version(),
                "history": history, "command": " ".join(["python"] + sys.argv), "selected_on_test": False}
        if selection:
            selection.after_epoch(model, meta)
            meta["best_on_test"] = selection.best
        atomic_torch_save({**model.checkpoint_state(), "optimiser": optimiser.state_dict(),
                           "meta": {**model.config, **meta}}, last_path)
    final = checkpoint_path(args.save_dir, args.stn_mode, args.shot, args.obj)
    save_checkpoint(final, model, meta)
    atomic_write_json(out_dir / "train_log.json", {**model.config, **meta})
    print(f"saved the last epoch to {final}")
    return history


class SelectOnTest:
    """The official code's model selection on the target's test AUROC. Optimistic: labelled loudly."""

    def __init__(self, args, target, device):
        print("WARNING: --select_on_test picks the epoch on TEST images (the paper's protocol); "
              "its figures are optimistic and are saved separately with selected_on_test=True")
        self.args, self.device, self.best = args, device, None
        self.test = load_test_data(target, args.img_size)
        self.supports = support_sets_for(target, args.shot, args.rounds, args.seed, args.dataset,
                                         args.img_size, root=ROOT)
        self.path = checkpoint_path(args.save_dir, args.stn_mode, args.shot, args.obj, selected_on_test=True)

    def after_epoch(self, model, meta):
        summary = evaluate(GaussianScorer(model, self.device), self.test, self.supports)["summary"]
        score = sum(summary[m]["mean"] for m in ("image_auroc", "pixel_auroc") if summary[m])
        print(f"  test-set selection score (image + pixel AUROC) {score:.4f}")
        if self.best is None or score > self.best["score"]:
            self.best = {"epoch": meta["epoch"], "score": score}
            save_checkpoint(self.path, model, {**meta, "selected_on_test": True, "test_summary": summary})


def check_resume(meta, args):
    """Resuming must continue the same run, and one that still has epochs to go."""
    keys = ("backbone", "stn_mode", "img_size", "shot", "precision")
    if any(meta.get(k) != getattr(args, k) for k in keys):
        raise UserError(f"last.pt was written with {', '.join(f'{k}={meta.get(k)}' for k in keys)}; "
                        "resume with the same options")
    if meta["epoch"] >= args.epochs:
        raise UserError(f"last.pt already finished epoch {meta['epoch']}; pass a larger --epochs to go on")


if __name__ == "__main__":
    run_main(lambda: run(parse_args()))
