"""The small MNIST classifier of ``mnistgen score``: three 3x3 conv blocks (conv, batch norm, ReLU, max pool), then
a 128-unit ReLU layer (the features of the Frechet distance), then 10 class logits; 98,666 parameters. Use it in eval
mode, so that batch norm's running statistics make the features independent of the batch."""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10
FEATURE_DIM = 128
IMAGE_SIZE = 28


class MnistClassifier(nn.Module):
    """Input (B, 1, 28, 28) in [0, 1]; :meth:`features` -> (B, 128); :meth:`forward` -> (B, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        # conv -> batch norm -> ReLU -> 2x2 max pool, three times; batch norm makes a few epochs enough
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)  # (B, 16, 28, 28) -> pool (B, 16, 14, 14)
        self.norm1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)  # (B, 32, 14, 14) -> pool (B, 32, 7, 7)
        self.norm2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1)  # (B, 64, 7, 7) -> pool (B, 64, 3, 3)
        self.norm3 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(2)  # floor: 7 -> 3 drops the last row/column, which is background in MNIST
        self.relu = nn.ReLU()
        self.hidden = nn.Linear(64 * 3 * 3, FEATURE_DIM)  # (B, 576) -> (B, 128): the feature layer
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # (B, 128) -> (B, 10) logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, 128): the post-ReLU penultimate activations."""
        x = self.pool(self.relu(self.norm1(self.conv1(images))))
        x = self.pool(self.relu(self.norm2(self.conv2(x))))
        x = self.pool(self.relu(self.norm3(self.conv3(x))))
        return self.relu(self.hidden(x.flatten(1)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 128) features -> (B, 10) class logits."""
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(images))
