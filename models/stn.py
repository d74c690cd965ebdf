"""Feature registration network: backbone stages, each followed by a spatial transformer (STN).

Parameter names equal the official RegAD checkpoint's 'STN' entry (conv1, bn1, layer1-3, stn1-3)
for the ResNet-18 backbone, so official checkpoints load with strict=True.
"""
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import BACKBONES, EVAL_MEMORY_FORMAT
from models.resnet import conv3x3
from utils.precision import at_least_float32

# Number of regressed parameters and their identity values, per mode (as in the paper's code).
STN_MODES = {
    "affine": (1, 0, 0, 0, 1, 0),
    "translation": (0, 0),
    "rotation": (0,),
    "scale": (1, 1),
    "shear": (0, 0),
    "rotation_scale": (0, 1, 1),
    "translation_scale": (0, 0, 1, 1),
    "rotation_translation": (0, 0, 0),
    "rotation_translation_scale": (0, 0, 0, 1, 1),
}


def params_to_theta(params, mode):
    """Regressed STN parameters [B, n] -> affine matrices [B, 2, 3] (the paper's parameterisation)."""
    if mode == "affine":
        return params.view(-1, 2, 3)
    one, zero = torch.ones_like(params[:, 0]), torch.zeros_like(params[:, 0])
    sx = sy = one
    tx = ty = shx = shy = zero
    angle = None
    p = params.unbind(1)
    if mode == "translation":
        tx, ty = p
    elif mode == "rotation":
        angle = p[0]
    elif mode == "scale":
        sx, sy = p
    elif mode == "shear":
        shx, shy = p
    elif mode == "rotation_scale":
        angle, sx, sy = p
    elif mode == "translation_scale":
        tx, ty, sx, sy = p
    elif mode == "rotation_translation":
        angle, tx, ty = p
    elif mode == "rotation_translation_scale":
        angle, tx, ty, sx, sy = p
    if angle is not None:  # scale multiplies only the diagonal, exactly as the official code does
        cos, sin = torch.cos(angle), torch.sin(angle)
        row0 = torch.stack([cos * sx, -sin, tx], 1)
        row1 = torch.stack([sin, cos * sy, ty], 1)
    else:
        row0 = torch.stack([sx, shx, tx], 1)
        row1 = torch.stack([shy, sy, ty], 1)
    return torch.stack([row0, row1], 1)


def warp(x, theta):
    """Resample feature maps with affine matrices, reflection padding (as the paper's code).
    At least float32: under bf16 autocast the sampling grid would be off by up to a quarter pixel."""
    with torch.autocast(x.device.type, enabled=False):
        grid = F.affine_grid(at_least_float32(theta), list(x.shape), align_corners=False)
        return F.grid_sample(at_least_float32(x), grid, padding_mode="reflection", align_corners=False)


def invert_theta(theta):
    """Inverse of [B, 2, 3] affine matrices, on the tensor's own device (batched 3x3 inverse)."""
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=theta.dtype, device=theta.device).expand(theta.shape[0], 1, 3)
    return torch.linalg.inv(torch.cat([theta, bottom], 1))[:, :2]


def pooled_size(size):
    """Side after the STN's two 3x3/2 max-pools with padding 1."""
    for _ in range(2):
        size = (size - 1) // 2 + 1
    return size


class STNModule(nn.Module):
    """Small conv net regressing an affine transform that warps its input feature map."""

    def __init__(self, channels, feature_size, mode):
        super().__init__()
        self.mode = mode
        self.conv = nn.Sequential(
            conv3x3(channels, 64), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            conv3x3(64, 16), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        identity = torch.tensor(STN_MODES[mode], dtype=torch.float32)
        self.fc = nn.Sequential(
            nn.Linear(16 * pooled_size(feature_size) ** 2, 1024), nn.ReLU(True),
            nn.Linear(1024, len(identity)))
        nn.init.zeros_(self.fc[2].weight)  # start at the identity transform
        with torch.no_grad():
            self.fc[2].bias.copy_(identity)

    def forward(self, x):
        features = at_least_float32(self.conv(x).flatten(1))
        with torch.autocast(x.device.type, enabled=False):  # bf16 would round a scale of 1.003 to 1.0
            theta = params_to_theta(self.fc(features), self.mode)
        return warp(x, theta), theta


class STNOutput(NamedTuple):
    features: torch.Tensor  # layer3 after stn3: what the encoder/predictor see in training
    restored: list | None   # each stage's warped map warped back to the input frame (what test-time scores)
    thetas: list            # the three STN affine matrices [B, 2, 3]


class STNNet(nn.Module):
    """Backbone layer1-3 with an STN after each; returns the last warped features, the thetas and
    (unless restore=False, as in training) the restored maps of all three stages."""

    def __init__(self, config):
        """config: a models.config.ModelConfig (backbone, stn_mode, img_size)."""
        super().__init__()
        spec = BACKBONES[config.backbone]
        stem, layers, channels = spec.stages()
        self.stem_names = list(stem)
        for name, module in stem.items():
            self.add_module(name, module)
        self.layer1, self.layer2, self.layer3 = layers
        self.stage_channels = channels
        sizes = [config.img_size // 4, config.img_size // 8, config.img_size // 16]
        self.stn1, self.stn2, self.stn3 = [STNModule(c, s, config.stn_mode) for c, s in zip(channels, sizes)]
        norm = spec.normalisation
        self.normalise = norm is not None
        if self.normalise:  # non-persistent: keeps the state dict identical to the official layout
            self.register_buffer("mean", torch.tensor(norm[0]).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(norm[1]).view(1, 3, 1, 1), persistent=False)
        self.train_memory_format = spec.train_memory_format
        self.train()

    def train(self, mode=True):
        """Also switches the memory layout: the backbone's training layout, or channels_last for evaluation."""
        super().train(mode)
        self.use_memory_format(self.train_memory_format if mode else EVAL_MEMORY_FORMAT)
        return self

    def use_memory_format(self, memory_format):
        """bench/train_speed.py compares layouts with this."""
        self.memory_format = memory_format
        self.to(memory_format=memory_format)

    def forward(self, x, restore=True):
        """x: images in [0, 1], [B, 3, H, W] -> STNOutput."""
        x = x.contiguous(memory_format=self.memory_format)
        if self.normalise:
            x = (x - self.mean) / self.std
        for name in self.stem_names:
            x = getattr(self, name)(x)
        thetas, inverses, restored = [], [], []
        for layer, stn in ((self.layer1, self.stn1), (self.layer2, self.stn2), (self.layer3, self.stn3)):
            x, theta = stn(layer(x))
            thetas.append(theta)
            if restore:
                inverses.append(invert_theta(theta.detach()))
                back = x.detach()
                for inverse in reversed(inverses):  # undo this stage's warp, then the earlier ones
                    back = warp(back, inverse)
                restored.append(back)
        return STNOutput(x, restored if restore else None, thetas)
