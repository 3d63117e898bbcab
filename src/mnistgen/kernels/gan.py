"""The GAN's forward passes on CPU with mnistgen's C kernels, as autograd functions, and the choice between
them and PyTorch's kernels.

Two pieces of SPEC §3's networks run in ``gan_cpu.c`` (built by :mod:`mnistgen.kernels.native`):

- **D**, whole: images (B, 1, 28, 28) -> logits (B, 1), with gradients for the images and/or D's 593
  parameters. D's 1- to 8-channel layers are where PyTorch's CPU kernels are slowest (docs/BENCHMARKS.md);
  the C code runs eight images per vector register.
- **G after act1**, up to the sigmoid: the two upsample-convolutions (in their phase form,
  :func:`phase_kernels`), act2, act3 and conv3, for act1's output h0 (B, 1568) viewed as (B, 32, 7, 7),
  with gradients for h0 and for conv1's, conv2's and conv3's parameters. G's Linear, act1 and sigmoid stay
  in PyTorch.

Both are the same functions of the same parameters as the spec's modules: tests/test_native_kernels.py
checks values and every gradient against ``Discriminator.forward`` and G's layers to float32 rounding, ties
of the max-pools included, and that a training step gives the same losses and weights.
The parameters are read from the modules at each call (no copy to keep in sync); their gradients reach
the modules' parameters through autograd.

:func:`choose_gan_forward` turns the ``--cpu-kernels`` setting into one of the two :class:`GANForward`
objects; that is the only place the choice is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.gan import Discriminator, Generator, generate
from .native import load_gan_library, use_native_kernels

LANES = 8  # D's images per vector register in gan_cpu.c
D_PARAMETERS = 593
G_PARAMETERS = 10337  # conv1's phase kernels (8192) and bias (16), conv2's (2048, 8), conv3's weight (72) and bias
G_INPUT = 32 * 7 * 7  # act1's output per image
G_KEPT = 28 * 28 * 8 + 14 * 14 * 16  # conv2's and conv1's outputs per image, kept by the forward
G_CHUNK = 8  # images whose parameter gradients the C kernel sums together


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _check(status: int, what: str) -> None:
    if status != 0:
        raise MemoryError(f"{what}: the C kernel could not allocate its working memory")


# --------------------------------------------------------------------------- D


def _to_groups(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, 28, 28) -> (ceil(B / 8), 28 * 28, 8): eight images side by side per pixel (zero images pad B)."""
    flat = images.detach().reshape(len(images), 28 * 28).float()
    padding = -len(images) % LANES
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding, 28 * 28)])
    return flat.view(-1, LANES, 28 * 28).transpose(1, 2).contiguous()


def _from_groups(grouped: torch.Tensor, count: int) -> torch.Tensor:
    """The inverse of :func:`_to_groups`: (G, 784, 8) -> (count, 1, 28, 28)."""
    return grouped.transpose(1, 2).reshape(-1, 1, 28, 28)[:count]


class _NativeDiscriminator(torch.autograd.Function):
    """logits (B, 1) = D(images) with D's parameters given as one (593,) vector (Discriminator.parameters() order)."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        library = load_gan_library()
        grouped = _to_groups(images)  # (G, 784, 8)
        parameters = parameters.detach().contiguous()
        logits = torch.empty(len(grouped), LANES)
        _check(library.mnistgen_d_forward(grouped.data_ptr(), parameters.data_ptr(), logits.data_ptr(),
                                          len(grouped), _threads()), "D forward")
        ctx.save_for_backward(grouped, parameters)
        ctx.count = len(images)
        return logits.view(-1, 1)[:len(images)]

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        grouped, parameters = ctx.saved_tensors
        want_images, want_parameters = ctx.needs_input_grad
        grad = torch.zeros(len(grouped) * LANES)
        grad[:ctx.count] = grad_logits.reshape(-1)
        grad_grouped = torch.empty_like(grouped) if want_images else None
        grad_parameters = torch.empty(D_PARAMETERS) if want_parameters else None
        scratch = torch.empty(len(grouped), D_PARAMETERS) if want_parameters else None
        _check(load_gan_library().mnistgen_d_backward(
            grouped.data_ptr(), parameters.data_ptr(), grad.data_ptr(),
            grad_grouped.data_ptr() if want_images else None,
            grad_parameters.data_ptr() if want_parameters else None,
            scratch.data_ptr() if want_parameters else None, len(grouped), _threads()), "D backward")
        grad_images = _from_groups(grad_grouped, ctx.count) if want_images else None
        return grad_images, grad_parameters


def flat_parameters(module: torch.nn.Module) -> torch.Tensor:
    """All parameters of ``module`` as one vector, in ``parameters()`` order, each flattened in its logical
    (PyTorch default) order whatever its memory layout; differentiable."""
    return torch.cat([parameter.reshape(-1) for parameter in module.parameters()])


def native_discriminate(discriminator: Discriminator, images: torch.Tensor,
                        parameter_gradients: bool = True) -> torch.Tensor:
    """D(images) -> (B, 1) logits by the C kernel; D's parameters get gradients only if ``parameter_gradients``."""
    parameters = flat_parameters(discriminator) if parameter_gradients else flat_parameters(discriminator).detach()
    return _NativeDiscriminator.apply(images, parameters)


def torch_discriminate(discriminator: Discriminator, images: torch.Tensor,
                       parameter_gradients: bool = True) -> torch.Tensor:
    """D(images) -> (B, 1) logits by the module itself (the caller's backward chooses which gradients it needs)."""
    return discriminator(images)


# --------------------------------------------------------------------------- G after act1


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The 2x2 kernels of "nearest 2x upsample, then 3x3 convolution" in phase form; differentiable.

    weight (C_out, C_in, 3, 3) -> (a, b, dy, dx, C_in, C_out) = (2, 2, 2, 2, C_in, C_out): output pixel
    (2i + a, 2j + b) is the sum over dy, dx in {0, 1} of the zero-padded input at row i + a + dy, column
    j + b + dx (padded coordinates) times kernel [a, b, dy, dx]. Along each axis the taps are those of
    :func:`mnistgen.models.gan.upsample_conv`'s 4-tap filter (w2, w1 + w2, w0 + w1, w0), split by phase:
    phase 0 reads (w0, w1 + w2), phase 1 reads (w0 + w1, w2).
    """
    def split(w: torch.Tensor, dim: int) -> torch.Tensor:  # 3 taps along dim -> (phase, tap) in its place
        w0, w1, w2 = w.unbind(dim)
        return torch.stack([torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)], dim)

    kernels = split(split(weight, 3), 2)  # (C_out, C_in, a, dy, b, dx)
    return kernels.permute(2, 4, 3, 5, 1, 0)


def _g_parameters(generator: Generator) -> torch.Tensor:
    """(10337,): conv1's phase kernels (a, b, dy, dx, ci, co) and bias, conv2's the same, conv3's weight and bias."""
    return torch.cat([phase_kernels(generator.conv1.weight).reshape(-1), generator.conv1.bias,
                      phase_kernels(generator.conv2.weight).reshape(-1), generator.conv2.bias,
                      generator.conv3.weight.reshape(-1), generator.conv3.bias])


class _NativeGenerator(torch.autograd.Function):
    """s (B, 1, 28, 28) = G after act1, before the sigmoid, for act1's output h0 (B, 1568) (= (B, 32, 7, 7)),
    the parameters as :func:`_g_parameters` packs them, act2's and act3's slopes."""

    @staticmethod
    def forward(ctx, h0: torch.Tensor, parameters: torch.Tensor, slope2: float, slope3: float) -> torch.Tensor:
        h0 = h0.detach().float().reshape(len(h0), G_INPUT).contiguous()
        parameters = parameters.detach().contiguous()
        logits = torch.empty(len(h0), 1, 28, 28)
        kept = torch.empty(len(h0), G_KEPT)  # conv1's and conv2's outputs, for the backward
        _check(load_gan_library().mnistgen_g_forward(h0.data_ptr(), parameters.data_ptr(), slope2, slope3,
                                                     logits.data_ptr(), kept.data_ptr(), len(h0), _threads()),
               "G forward")
        ctx.save_for_backward(h0, kept, parameters)
        ctx.slopes = (slope2, slope3)
        return logits

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        h0, kept, parameters = ctx.saved_tensors
        grad = grad_logits.float().contiguous()
        grad_h0 = torch.empty_like(h0)
        grad_parameters = torch.empty(G_PARAMETERS)
        scratch = torch.empty(-(-len(h0) // G_CHUNK), G_PARAMETERS)
        _check(load_gan_library().mnistgen_g_backward(
            h0.data_ptr(), kept.data_ptr(), parameters.data_ptr(), *ctx.slopes, grad.data_ptr(), grad_h0.data_ptr(),
            grad_parameters.data_ptr(), scratch.data_ptr(), len(h0), _threads()), "G backward")
        return grad_h0, grad_parameters, None, None


def native_generator_after_act1(generator: Generator, h0: torch.Tensor) -> torch.Tensor:
    """G from act1's output h0 (B, 1568) to conv3's output (before the sigmoid), (B, 1, 28, 28), by the C kernel."""
    return _NativeGenerator.apply(h0, _g_parameters(generator), generator.act2.negative_slope,
                                  generator.act3.negative_slope)


def native_generate(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    """G(z), (B, zdim) -> (B, 1, 28, 28): the Linear and act1 in PyTorch, the rest by the C kernel."""
    h0 = generator.act1(generator.linear(z))  # (B, 1568) = (B, 32, 7, 7) channel-first
    return torch.sigmoid(native_generator_after_act1(generator, h0))


# --------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class GANForward:
    """How training computes G(z) and D's logits. Both choices compute the same functions (to float32 rounding)."""

    kernels: str  # "native" or "torch", as recorded in the run
    generate: Callable[[Generator, torch.Tensor], torch.Tensor]
    discriminate: Callable[..., torch.Tensor]  # (discriminator, images, parameter_gradients) -> logits (B, 1)


TORCH_KERNELS = GANForward("torch", generate, torch_discriminate)
NATIVE_KERNELS = GANForward("native", native_generate, native_discriminate)


def choose_gan_forward(cpu_kernels: str, device: torch.device, say: Callable[[str], None] | None = None) -> GANForward:
    """The GANForward for the ``--cpu-kernels`` setting on ``device`` (see
    :func:`mnistgen.kernels.native.use_native_kernels`: "auto" falls back to PyTorch's kernels with a note)."""
    note = "the GAN trains with PyTorch's CPU kernels, about 2.4x slower"
    return NATIVE_KERNELS if use_native_kernels(cpu_kernels, device, load_gan_library, note, say) else TORCH_KERNELS
