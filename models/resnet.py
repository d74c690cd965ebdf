"""ResNet-18 stem and layer1-3, with torchvision's parameter names, and its ImageNet weights.

torchvision cannot be imported on CPU-only installs here, so the few layers we need are defined
again; the parameter names equal torchvision's (and the official RegAD checkpoint's), so a
torchvision state dict loads by key.
"""
from pathlib import Path

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.io import read_torch_file

RESNET18_FILES = ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth")
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_layer(inplanes, planes, stride, blocks=2):
    layers = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet18_stages():
    """(stem modules by name, [layer1, layer2, layer3], stage channels) of ResNet-18."""
    stem = {
        "conv1": nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
        "bn1": nn.BatchNorm2d(64),
        "relu": nn.ReLU(inplace=True),
        "maxpool": nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    }
    stages = [make_layer(64, 64, 1), make_layer(64, 128, 2), make_layer(128, 256, 2)]
    return stem, stages, (64, 128, 256)


def read_weights(path):
    """A state dict from a file, or one line saying why not."""
    fix = f"pass a torchvision ResNet-18 state dict such as {RESNET18_FILES[0]}"
    state = read_torch_file(path, "--backbone_weights", missing=fix, unreadable=fix)
    if not isinstance(state, dict):
        raise UserError(f"--backbone_weights '{path}' is not a state dict; pass a torchvision ResNet-18 state dict")
    return state


def find_resnet18_weights(path=None):
    """(state dict, where it came from): the torchvision ResNet-18 ImageNet weights from an explicit path
    (a partial state dict, stem to layer3, is enough), the torch hub cache, or a download."""
    if path:
        return read_weights(path), str(path)
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for name in RESNET18_FILES:
        if (hub_dir / name).is_file():
            return read_weights(hub_dir / name), str(hub_dir / name)
    try:
        return torch.hub.load_state_dict_from_url(RESNET18_URL, map_location="cpu", progress=False), RESNET18_URL
    except Exception:  # offline: fall through to the one-line instruction below
        pass
    raise UserError(
        f"ImageNet ResNet-18 weights not found: put {RESNET18_FILES[0]} (from {RESNET18_URL}) into {hub_dir} "
        "or pass --backbone_weights PATH (or --backbone_weights random, or --backbone efficientnet_lite0)")
