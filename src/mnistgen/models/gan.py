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


# --------------------------------------------------------------------------- G(z), computed by phases
#
# The generator's last stage, "nearest 2x upsampling, 3x3 convolution, LeakyReLU, 3x3 convolution" on the
# 28x28 grid, is computed on the 14x14 grid instead, with the same parameters and the same values:
#
# 1. Upsampling by 2 then a 3x3 convolution (padding 1) gives, at the even rows 2i of the output, the rows
#    i-1 and i of the input weighted by (w0, w1 + w2), and at the odd rows 2i+1 the rows i and i+1 weighted by
#    (w0 + w1, w2); the same holds along columns. So the 28x28 output is four interleaved "phases", each a
#    2x2 convolution of the 14x14 input: one Conv2d with 4x the output channels and 2x2 kernels (padding 1,
#    a 15x15 grid on which phase (a, b) sits shifted by (a, b)). That is 16 multiply-adds per input pixel
#    and channel pair instead of 36, and the 16x28x28 upsampled map is never formed.
# 2. LeakyReLU acts pixel by pixel, so on the phases as well; the grid cells that lie outside the 28x28 image
#    are then set to 0, the zero padding the next convolution expects.
# 3. The final 3x3 convolution of the interleaved 28x28 map reads, for each output phase, three rows (and
#    columns) that belong to known input phases at grid offsets 0 or 1: a 2x2 convolution of the 15x15 phase
#    maps (32 channels -> 4 output phases) with the 3x3 weights placed accordingly (and zeros elsewhere).
# 4. pixel_shuffle interleaves the 4 output phases into the 1x28x28 image.
#
# tests/test_gan_speed.py checks values and gradients against the layer-by-layer forward.


def _phase_taps(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Upsample-then-filter along ``dim`` as 2-tap filters per output phase: (.., 3, ..) -> (2 phases, .., 2 taps, ..).

    Phase 0 (even outputs) reads input offsets (-1, 0) with (w0, w1 + w2); phase 1 reads (0, +1) with (w0 + w1, w2).
    """
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)])


def _phase_reads(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """A 3-tap filter of an interleaved signal, read from its phase maps: (.., 3, ..) -> (2, 2, .., 2 taps, ..).

    Index [A, a, .., u, ..]: output phase A takes from input phase a at grid offset u (phase a's value for
    signal position 2p - a is stored at grid position p). Output 2i reads 2i-1 (phase 1, u=0) with w0, 2i
    (phase 0, u=0) with w1, 2i+1 (phase 1, u=1) with w2; output 2i+1 reads 2i (phase 0, u=0) with w0,
    2i+1 (phase 1, u=1) with w1, 2i+2 (phase 0, u=1) with w2.
    """
    w0, w1, w2 = weight.unbind(dim)
    zero = torch.zeros_like(w0)
    even = torch.stack([torch.stack([w1, zero], dim), torch.stack([w0, w2], dim)])
    odd = torch.stack([torch.stack([w0, w2], dim), torch.stack([zero, w1], dim)])
    return torch.stack([even, odd])


def _inside_image(side: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 4*channels, side+1, side+1) mask of the phase grid: 1 where phase (a, b)'s cell is inside the image."""
    cells = torch.arange(side + 1, device=like.device)
    valid = torch.stack([cells <= side - 1, cells >= 1])  # (2, side+1): phase 0 holds rows 0..side-1 at 0..side-1
    mask = valid[:, None, None, :, None] & valid[None, :, None, None, :]  # (a, b, 1, side+1, side+1)
    return mask.expand(2, 2, channels, side + 1, side + 1).reshape(1, 4 * channels, side + 1, side + 1).to(like.dtype)


def _layout_of(kernel: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The kernel in the memory format of the feature maps it convolves (keeps oneDNN on its channels-last path)."""
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        return kernel.contiguous(memory_format=torch.channels_last)
    return kernel.contiguous()


def generate(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    """G(z): the same function of z and of G's parameters as ``generator(z)``, faster (see the comment above).

    (B, zdim) -> (B, 1, 28, 28) in (0, 1). Gradients reach G's Conv2d parameters through the phase kernels.
    """
    h = generator.act1(generator.linear(z)).view(-1, *GENERATOR_START)  # (B, 32, 7, 7)
    if generator.conv1.weight.is_contiguous(memory_format=torch.channels_last):
        h = h.contiguous(memory_format=torch.channels_last)  # channels-last weights: keep every map channels-last
    h = generator.act2(generator.conv1(generator.up1(h)))  # (B, 16, 14, 14)
    conv2, conv3 = generator.conv2, generator.conv3
    side, mid = h.shape[-1], conv2.out_channels
    # 1. up2 + conv2 as four 2x2 phase convolutions: (B, 16, 14, 14) -> (B, 4*8, 15, 15), channels (a, b, out)
    kernel2 = _phase_taps(_phase_taps(conv2.weight, dim=2), dim=-1)  # (b, a, 8, 16, 2, 2)
    kernel2 = kernel2.transpose(0, 1).reshape(4 * mid, conv2.in_channels, 2, 2)
    h = F.conv2d(h, _layout_of(kernel2, h), conv2.bias.repeat(4), padding=1)
    # 2. act3 on every phase; cells outside the 28x28 image become the zero padding of conv3
    h = generator.act3(h) * _inside_image(side, mid, h)
    # 3. conv3 read from the phases: (B, 32, 15, 15) -> (B, 4, 14, 14), channels = output phases (A, B)
    kernel3 = _phase_reads(_phase_reads(conv3.weight, dim=2), dim=-1)  # (B', b, A, a, 1, 8, 2, 2)
    kernel3 = kernel3.permute(4, 2, 0, 3, 1, 5, 6, 7).reshape(4 * conv3.out_channels, 4 * mid, 2, 2)
    h = F.conv2d(h, _layout_of(kernel3, h), conv3.bias.repeat_interleave(4))
    # 4. interleave the output phases: (B, 4, 14, 14) -> (B, 1, 28, 28)
    return generator.sigmoid(F.pixel_shuffle(h, 2))
