"""SimSiam-style encoder and predictor on the layer3 features (1x1 convolutions, per position)."""
import torch.nn as nn

from models.resnet import conv1x1


class Encoder(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, conv. `bn3` is never applied: the official code defines it
    but does not use it, and it is kept so official checkpoints load with strict=True."""

    def __init__(self, channels=256):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(channels, channels), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = conv1x1(channels, channels), nn.BatchNorm2d(channels)
        self.conv3, self.bn3 = conv1x1(channels, channels), nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.conv3(x)


class Predictor(nn.Module):
    """conv-BN-ReLU, conv."""

    def __init__(self, channels=256):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(channels, channels), nn.BatchNorm2d(channels)
        self.conv2 = conv1x1(channels, channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.conv2(self.relu(self.bn1(self.conv1(x))))
