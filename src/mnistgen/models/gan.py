"""SPEC §3's GAN: the discriminator and the generator, layer for layer as the spec's tables list them.

Each network defines its layers in the constructor in the tables' order, and nothing else: the two
reshapes (flattening 8x5x5 -> 200 in D, 1568 -> 32x7x7 in G) are views in ``forward``, not layers.
Initialization (SPEC §3): ``torch.nn.init.kaiming_uniform_`` with its defaults for every weight, zero
for every bias.

Shapes below are per image; a batch adds a leading dimension B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
GENERATOR_START = (32, 7, 7)  # the Linear's 1568 outputs, viewed as 32 channels of 7x7
DISCRIMINATOR_FEATURES = (8, 5, 5)  # what the last convolution leaves, flattened into the Linear
LEAKY_SLOPE = 0.2


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
        """(B, zdim) -> (B, 1, 28, 28) in (0, 1), layer by layer (training uses :func:`generate`, the same map)."""
        h = self.act1(self.linear(z)).view(-1, *GENERATOR_START)  # (B, 1568) -> (B, 32, 7, 7)
        h = self.act2(self.conv1(self.up1(h)))  # (B, 32, 14, 14) -> (B, 16, 14, 14)
        h = self.act3(self.conv2(self.up2(h)))  # (B, 16, 28, 28) -> (B, 8, 28, 28)
        return self.sigmoid(self.conv3(h))  # (B, 1, 28, 28)


# --------------------------------------------------------------------------- G(z), faster
#
# "Nearest 2x upsampling, then a 3x3 convolution with padding 1" is one transposed convolution with stride 2,
# a 4x4 kernel and padding 1, with the same parameters and the same values:
#
# Along one axis, output row 2i of the upsample-conv reads upsampled rows 2i-1, 2i, 2i+1 = input rows i-1, i, i
# with taps (w0, w1, w2): input i-1 with w0, input i with w1 + w2. Output row 2i+1 reads upsampled rows 2i,
# 2i+1, 2i+2 = input rows i, i, i+1: input i with w0 + w1, input i+1 with w2.
# A transposed convolution (stride 2, padding 1) adds input row i into output row o with kernel tap
# k = o - 2i + 1: row 2i gets input i-1 through k = 3 and input i through k = 1, row 2i+1 gets input i
# through k = 2 and input i+1 through k = 0. So its 1-D kernel is (w2, w1 + w2, w0 + w1, w0), and the 2-D
# kernel is that along both axes; the output side is 2 * side (no extra rows, no cropping), and the
# borders match because an input row outside the image contributes nothing in both forms (zero padding).
# That is 16 multiply-adds per input pixel and channel pair instead of 36, and the upsampled map is never
# formed. The kernel is built from the Conv2d's own weight inside the forward, so autograd carries the
# gradients back to the spec's parameters.
#
# tests/test_gan_speed.py checks values and gradients against the layer-by-layer forward.


def _upsample_taps(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Upsample-by-2-then-filter along ``dim`` as a stride-2 transposed-convolution filter: 3 taps -> 4 taps.

    (w0, w1, w2) -> (w2, w1 + w2, w0 + w1, w0) (see the comment above).
    """
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def upsample_conv(conv: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """conv(Upsample(scale 2, nearest)(images)) for a 3x3, stride 1, padding 1 ``conv``, as one transposed convolution.

    (B, C_in, H, W) -> (B, C_out, 2H, 2W). Same values and gradients (w.r.t. the images and ``conv``'s parameters).
    """
    kernel = _upsample_taps(_upsample_taps(conv.weight, dim=2), dim=3)  # (C_out, C_in, 4, 4)
    kernel = kernel.transpose(0, 1)  # conv_transpose2d takes (C_in, C_out, kH, kW)
    # the kernel in the memory format of the maps it reads (keeps oneDNN on its channels-last path)
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    else:
        kernel = kernel.contiguous()
    return F.conv_transpose2d(images, kernel, conv.bias, stride=2, padding=1)


def generate(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    """G(z): the same function of z and of G's parameters as ``generator(z)``, faster (see the comment above).

    (B, zdim) -> (B, 1, 28, 28) in (0, 1). Gradients reach G's Conv2d parameters through the 4x4 kernels.
    up1/conv1 and up2/conv2 run as :func:`upsample_conv`; act2 and act3 as the same LeakyReLU, in place.
    """
    h = generator.act1(generator.linear(z)).view(-1, *GENERATOR_START)  # (B, 32, 7, 7)
    if generator.conv1.weight.is_contiguous(memory_format=torch.channels_last):
        h = h.contiguous(memory_format=torch.channels_last)  # channels-last weights: keep every map channels-last
    # LeakyReLU in place: each convolution's output is used by nothing else (its backward reads the result)
    h = F.leaky_relu(upsample_conv(generator.conv1, h), generator.act2.negative_slope, inplace=True)  # (B, 16, 14, 14)
    h = F.leaky_relu(upsample_conv(generator.conv2, h), generator.act3.negative_slope, inplace=True)  # (B, 8, 28, 28)
    return generator.sigmoid(generator.conv3(h))  # (B, 1, 28, 28)
