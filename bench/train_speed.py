"""Speed of train.py's training step, and what mixed precision does to it, side by side in one run.

Each setting starts from the same weights and times full training steps (query and K supports forward,
backward, SGD step) on real batches of one mvtec-mini category; images/s counts queries and supports, as
train.py does. Settings: fp32 in the NCHW layout (train.py's for ResNet-18: a step equals the official code's)
and in channels_last (train.py's for EfficientNet-Lite), then tf32 (CUDA only) and bf16 autocast in the
backbone's training layout (train.py --precision tf32 / bf16).

A faster setting must not change results beyond noise. On the same batch and weights, each setting's loss
and gradient are compared with the baseline's (fp32, NCHW), per part of the network, against the noise
SGD lives with anyway: the baseline's gradients on two different batches of the same category.

    OMP_WAIT_POLICY=PASSIVE python bench/train_speed.py [--backbone resnet18 --backbone_weights FILE]
        [--device cuda --steps 20]
"""
import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import torch

from datasets.mvtec import get_category, load_images
from datasets.sampler import PairSampler
from models.backbones import BACKBONES
from models.config import ModelConfig
from models.regad import RegAD
from train import make_optimiser, pair_batches, train_step
from utils.cli import pick_device, run_main
from utils.hardware import describe_machine, timed
from utils.precision import autocast

LAYOUT_NAMES = {torch.contiguous_format: "NCHW", torch.channels_last: "channels_last"}
WITHIN_NOISE = 0.1  # a setting's gradient deviation must stay below a tenth of the batch-to-batch one


def real_batches(args, device):
    """Warm-up batch, timed batches and one more for the noise reference, all from one category."""
    category = get_category(args.data_path, args.obj)
    images = {category.name: load_images(category.train_images, args.img_size)}
    sampler = PairSampler({category.name: len(category.train_images)}, args.shot, args.batch_size, args.seed)
    batches = [b for b in sampler.batches(1) if len(b.query_indices) == args.batch_size]
    if len(batches) < args.steps + 2:
        raise SystemExit(f"{category.name} gives {len(batches)} full batches; lower --steps or --batch_size")
    return list(pair_batches(batches[:args.steps + 2], images, device))


def settings(device, backbone):
    """(precision, memory format, label), the baseline first: fp32 in both layouts, then the reduced
    precisions in the backbone's training layout (what train.py --precision uses)."""
    layout = BACKBONES[backbone].train_memory_format
    reduced = ("tf32", "bf16") if device.type == "cuda" else ("bf16",)
    return ([("fp32", torch.contiguous_format, "fp32, NCHW"), ("fp32", torch.channels_last, "fp32, channels_last")]
            + [(p, layout, f"{p}, {LAYOUT_NAMES[layout]}") for p in reduced])


def images_per_second(model, batches, device, precision, memory_format, shot):
    model.STN.use_memory_format(memory_format)
    optimiser = make_optimiser(model, 1e-4, 0.9)
    train_step(model, optimiser, *batches[0], precision)  # warm-up: allocator, oneDNN/cuDNN kernel choice
    _, seconds = timed(lambda: [train_step(model, optimiser, *batch, precision) for batch in batches[1:]], device)
    return sum(len(q) * (1 + shot) for q, _ in batches[1:]) / seconds


def parts(model):
    """Parameter names grouped by network part: backbone stem/stages, STN heads, encoder, predictor."""
    groups = {}
    for name, param in model.named_parameters():
        key = ".".join(name.split(".")[:2]) if name.startswith("STN.") else name.split(".")[0]
        if key.startswith("STN.") and key[4:] in model.STN.stem_names:
            key = "STN.stem"
        groups.setdefault(key, []).append(param)
    return groups


def gradients(model, batch, device, precision, memory_format):
    """(loss, {part: flat gradient}) on one batch in train mode, as a training step sees it."""
    model.STN.use_memory_format(memory_format)
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = model.loss(*batch)
    loss.backward()
    return loss.item(), {key: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                         for p in params]).double()
                         for key, params in parts(model).items()}


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def gradient_effect(model, batches, device, candidates):
    """Each setting vs the baseline (the first) on the same batch and weights, next to the baseline on two
    different batches (the noise reference). Returns {label: worst ratio of deviation to noise over the parts}."""
    (precision, memory_format, _), *candidates = candidates
    loss0, grad0 = gradients(model, batches[1], device, precision, memory_format)
    _, grad_other = gradients(model, batches[-1], device, precision, memory_format)
    runs = {label: gradients(model, batches[1], device, p, m) for p, m, label in candidates}
    print(f"\nloss on one batch: baseline {loss0:.6f}; " + "; ".join(
        f"{label} {loss:.6f} (difference {abs(loss - loss0):.1e})" for label, (loss, _) in runs.items()))
    print("gradients, 1 - cosine similarity per part (A: same batch as the baseline, B: another batch):")
    print(f"{'part':<12}{'baseline A vs B':>18}" + "".join(f"{label:>32}" for label in runs))
    worst = dict.fromkeys(runs, 0.0)
    for key in grad0:
        if grad0[key].norm() == 0:
            print(f"{key:<12}{'no gradient at the identity initialisation':>50}")
            continue
        noise = 1 - cosine(grad_other[key], grad0[key])
        row = f"{key:<12}{noise:>18.2e}"
        for label, (_, grad) in runs.items():
            deviation = 1 - cosine(grad[key], grad0[key])
            worst[label] = max(worst[label], deviation / noise)
            row += f"{deviation:>32.2e}"
        print(row)
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", default=str(ROOT.parent / "shared" / "data" / "mvtec-mini"))
    parser.add_argument("--obj", default="screw", help="category the batches come from")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--backbone_weights", help="for resnet18: a state dict, or 'random'")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--shot", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--seed", type=int, default=668)
    args = parser.parse_args()

    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True  # as train.py
    print(describe_machine(device))
    print(f"{args.backbone} ({args.backbone_weights or 'ImageNet'} weights), {args.img_size} px, K={args.shot}, "
          f"batch {args.batch_size} queries = {args.batch_size * (1 + args.shot)} images per step, "
          f"{args.steps} timed steps per setting, batches from {args.obj}")
    torch.manual_seed(args.seed)
    initial = RegAD(ModelConfig(args.backbone, img_size=args.img_size))
    initial.load_backbone_weights(args.backbone_weights)
    batches = real_batches(args, device)

    speeds = {}
    for precision, memory_format, label in settings(device, args.backbone):
        model = copy.deepcopy(initial).to(device).train()
        speeds[label] = images_per_second(model, batches[:-1], device, precision, memory_format, args.shot)
        print(f"  {label:<36}{speeds[label]:8.1f} images/s  x{speeds[label] / next(iter(speeds.values())):.2f}",
              flush=True)
    print(f"train.py trains {args.backbone} in fp32, {LAYOUT_NAMES[BACKBONES[args.backbone].train_memory_format]} by default")
    worst = gradient_effect(copy.deepcopy(initial).to(device).train(), batches, device, settings(device, args.backbone))
    for label, ratio in worst.items():
        print(f"{label}: gradient deviation / batch-to-batch noise, worst part {ratio:.3f} -> "
              f"{'within' if ratio < WITHIN_NOISE else 'NOT within'} noise (limit {WITHIN_NOISE})")


if __name__ == "__main__":
    run_main(main)
