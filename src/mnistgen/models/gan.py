"""SPEC §3's GAN: the discriminator and the generator, layer for layer as the spec's tables list them.

Each network defines its layers in the constructor in the tables' order, and nothing else: the two
reshapes (flattening 8x5x5 -> 200 in D, 1568 -> 32x7x7 in G) are views in ``forward``, not layers.
Initialization (SPEC §3): ``torch.nn.init.kaiming_uniform_`` with its defaults for every weight, zero
for every bias.

Shapes below are per image; a batch adds a leading dimension B.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
GENERATOR_START = (32, 7, 7)  # the Linear's 1568 outputs, viewed as 32 channels of 7x7
DISCRIMINATOR_FEATURES = (8, 5, 5)  # what the last convolution leaves, flattened into the Linear
LEAKY_SLOPE = 0.2
STATS = ("d_loss", "g_loss", "d_real", "d_fake")  # what a training step returns, in this order


def init_spec_(module: nn.Module) -> nn.Module:
    """kaiming_uniform_ (torch's defaults: a=0, fan_in, leaky_relu gain) on every weight, zeros on every bias."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module


class Discriminator(nn.Module):
    """D: a 1x28x28 image in [0, 1] -> one logit (the probability of "real" is its sigmoid). 593 parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, kernel_size=3, stride=1, padding=1)  # 1x28x28 -> 2x28x28
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)  # -> 2x14x14
        self.conv2 = nn.Conv2d(2, 4, kernel_size=3, stride=1, padding=1)  # -> 4x14x14
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)  # -> 4x7x7
        self.conv3 = nn.Conv2d(4, 8, kernel_size=3, stride=1, padding=0)  # -> 8x5x5
        self.relu3 = nn.ReLU()
        self.linear = nn.Linear(8 * 5 * 5, 1)  # flattened 200 -> 1 logit
        init_spec_(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, 1) logits."""
        h = self.pool1(self.relu1(self.conv1(images)))  # (B, 2, 14, 14)
        h = self.pool2(self.relu2(self.conv2(h)))  # (B, 4, 7, 7)
        h = self.relu3(self.conv3(h))  # (B, 8, 5, 5)
        return self.linear(h.flatten(1))  # (B, 200) -> (B, 1)


class Generator(nn.Module):
    """G: z in R^zdim -> a 1x28x28 image in (0, 1). 107,777 parameters with zdim = 64."""

    def __init__(self, zdim: int = 64):
        super().__init__()
        self.zdim = zdim
        self.linear = nn.Linear(zdim, 32 * 7 * 7)  # zdim -> 1568
        self.act1 = nn.LeakyReLU(LEAKY_SLOPE)
        self.up1 = nn.Upsample(scale_factor=2)  # viewed as 32x7x7 -> 32x14x14 (nearest)
        self.conv1 = nn.Conv2d(32, 16, kernel_size=3, stride=1, padding=1)  # -> 16x14x14
        self.act2 = nn.LeakyReLU(LEAKY_SLOPE)
        self.up2 = nn.Upsample(scale_factor=2)  # -> 16x28x28
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, stride=1, padding=1)  # -> 8x28x28
        self.act3 = nn.LeakyReLU(LEAKY_SLOPE)
        self.conv3 = nn.Conv2d(8, 1, kernel_size=3, stride=1, padding=1)  # -> 1x28x28
        self.sigmoid = nn.Sigmoid()
        init_spec_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, zdim) -> (B, 1, 28, 28) in (0, 1), layer by layer."""
        h = self.act1(self.linear(z)).view(-1, *GENERATOR_START)  # (B, 1568) -> (B, 32, 7, 7)
        h = self.act2(self.conv1(self.up1(h)))  # (B, 32, 14, 14) -> (B, 16, 14, 14)
        h = self.act3(self.conv2(self.up2(h)))  # (B, 16, 28, 28) -> (B, 8, 28, 28)
        return self.sigmoid(self.conv3(h))  # (B, 1, 28, 28)
