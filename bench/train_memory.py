"""Peak memory (RSS) of train.py's training step on the CPU, per backbone and K, each in a fresh process.

One step pushes batch_size * (1 + K) images through the network (batch_size queries, each with K supports),
forward and backward, and their activations make the peak, which grows linearly with that image count. The
script measures small steps (K = 2 and 4 at batch 4 and 8 queries), then larger ones (K = 8 at batch 4, then
train.py's default batch of 32 queries at K = 2/4/8), each only when a line through the steps measured before
predicts it stays below the memory available now minus a margin; otherwise it reports that prediction,
labelled so.
train.py holds the decoded training images on top (3 * img_size^2 bytes each: 0.15 MB at 224 px).

    OMP_WAIT_POLICY=PASSIVE python bench/train_memory.py --backbone_weights PATH/resnet18-f37072fd.pth
"""
import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np  # noqa: E402

from models.resnet import find_resnet18_weights  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.hardware import THREAD_ENV, cpu_model  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402

BACKBONES = ("efficientnet_lite0", "resnet18")
FIT_STEPS = [(2, 4), (4, 4), (2, 8), (4, 8)]  # (K, batch size), always measured: small
TARGET_STEPS = [(8, 4), (2, 32), (4, 32), (8, 32)]  # K=8 at batch 4 checks the line; then train.py's default batch
GIB = 1024 ** 3
MARGIN = 1.1  # a step runs only if 1.1 x its predicted peak fits in the budget


def one_step(backbone, shot, batch_size, img_size, weights):
    """Child process: train.py's model, optimiser and train_step on a random batch, twice (the second step
    also holds the momentum buffers); prints its peak RSS in bytes."""
    import torch

    from models.config import ModelConfig
    from models.regad import RegAD
    from train import make_optimiser, train_step
    model = RegAD(ModelConfig(backbone, img_size=img_size))
    model.load_backbone_weights(weights if backbone == "resnet18" else None)
    optimiser = make_optimiser(model, 1e-4, 0.9)
    model.train()
    query = torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8).float().div_(255)
    support = torch.randint(0, 256, (batch_size, shot, 3, img_size, img_size), dtype=torch.uint8).float().div_(255)
    for _ in range(2):
        train_step(model, optimiser, query, support, "fp32")
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def measure(args, backbone, shot, batch_size):
    command = [sys.executable, __file__, "--child", backbone, str(shot), str(batch_size), "--img_size",
               str(args.img_size)] + (["--backbone_weights", args.backbone_weights] if args.backbone_weights else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{backbone} K={shot} batch {batch_size} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"]


def available():
    """MemAvailable of /proc/meminfo, in bytes: what can be used now without swapping others out."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(meminfo["MemAvailable"].split()[0]) * 1024, int(meminfo["MemTotal"].split()[0]) * 1024


def run(args):
    if args.backbone_weights != "random":
        find_resnet18_weights(args.backbone_weights)  # a missing file fails now, not in a child process
    free, total = available()
    budget = min(free - args.margin_gb * GIB, args.max_gb * GIB)
    print(f"MemAvailable {free / GIB:.1f} GiB of {total / GIB:.1f} GiB; larger steps run only if 1.1 x their "
          f"predicted peak < {budget / GIB:.1f} GiB", flush=True)
    rows, fits = [], {}
    for backbone in BACKBONES:
        measured = []  # (images per step, peak)
        for index, (shot, batch) in enumerate(FIT_STEPS + TARGET_STEPS):
            images = batch * (1 + shot)
            predicted = np.polyval(np.polyfit(*zip(*measured), 1), images) if index >= len(FIT_STEPS) else None
            if predicted is None or MARGIN * predicted < budget:
                peak = measure(args, backbone, shot, batch)
                measured.append((images, peak))
                how = "measured" + (f" (the rows above predicted {predicted / GIB:.2f})" if predicted else "")
            else:
                peak, how = predicted, "PREDICTED by a line through the measured rows above; not run"
            rows.append((backbone, shot, batch, peak, how))
            print(f"{backbone} K={shot} batch {batch}: {peak / GIB:.2f} GiB, {how}", flush=True)
        fits[backbone] = np.polyfit(*zip(*measured), 1)
    report = markdown(args, rows, fits, free, total, budget)
    print(report)
    if args.out:
        atomic_write_text(args.out, report)
        print(f"wrote {args.out}")


def markdown(args, rows, fits, free, total, budget):
    threading = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    lines = [f"Command: `python bench/train_memory.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: CPU {cpu_model()}, {len(os.sched_getaffinity(0))} usable cores, {total / GIB:.1f} GiB RAM "
             f"({free / GIB:.1f} GiB available at start; budget for a measured step {budget / GIB:.1f} GiB); "
             f"threading env {threading or 'unset'}; {args.img_size} px, fp32, stn_mode rotation_scale.", "",
             "| backbone | K | batch (queries) | images per step | peak RSS (GiB) | how |", "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {k} | {n} | {n * (1 + k)} | {peak / GIB:.2f} | {how} |" for b, k, n, peak, how in rows]
    lines += ["", "Line through all measured rows, per backbone: peak ~ a + b x images per step "
              "(images = batch x (1 + K)):"]
    lines += [f"- {b}: a = {a / GIB:.2f} GiB, b = {slope / 2 ** 20:.1f} MiB" for b, (slope, a) in fits.items()]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone_weights", help="resnet18 ImageNet state dict (else the hub cache); 'random': "
                                                   "none (the same memory)")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--max_gb", type=float, default=10.0, help="never run a step predicted above this")
    parser.add_argument("--margin_gb", type=float, default=4.0, help="keep this much of MemAvailable free")
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument("--child", nargs=3, metavar=("BACKBONE", "K", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backbone, shot, batch = args.child
        one_step(backbone, int(shot), int(batch), args.img_size, args.backbone_weights)
    else:
        run_main(lambda: run(args))


if __name__ == "__main__":
    main()
