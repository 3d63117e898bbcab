"""The GAN's forward passes on CPU with mnistgen's C kernels (``gan_cpu.c``), as autograd functions: D whole, 8 or
16 images per vector register, and G from act1's output to before the sigmoid, its upsample-convolutions in phase
form; both equal the spec's modules to float32 rounding. The sizes are the C code's, as declared here (``LAYOUT``)."""

from __future__ import annotations

import math

import torch

from ..models.gan import Discriminator, Generator
from .native import checked_pointer, load_gan_library
from .native import kernel_threads as _threads

# What gan_cpu.c's code is written for, as it reports it (mnistgen_gan_layout)
LANES = {"avx512": 16, "avx2": 8, "generic": 8}  # D's images per vector register, by the library's instruction set
PIXELS = 28 * 28  # one image: D's input, G's output
D_PARAMETERS = 593
# D's parameters in its flat vector (Discriminator.parameters() order): name, shape
D_PIECES = (("conv1.weight", (2, 1, 3, 3)), ("conv1.bias", (2,)), ("conv2.weight", (4, 2, 3, 3)), ("conv2.bias", (4,)),
            ("conv3.weight", (8, 4, 3, 3)), ("conv3.bias", (8,)), ("linear.weight", (1, 200)), ("linear.bias", (1,)))
G_PARAMETERS = 10337
# G's packed parameters (:func:`_g_parameters`): name, shape (phase kernels: (a, b, dy, dx, C_in, C_out))
G_PIECES = (("conv1.phase_kernels", (2, 2, 2, 2, 32, 16)), ("conv1.bias", (16,)),
            ("conv2.phase_kernels", (2, 2, 2, 2, 16, 8)), ("conv2.bias", (8,)),
            ("conv3.weight", (1, 8, 3, 3)), ("conv3.bias", (1,)))
G_INPUT = 32 * 7 * 7  # act1's output per image
G_KEPT = 28 * 28 * 8 + 14 * 14 * 16  # conv2's and conv1's outputs per image, kept by the forward
G_CHUNK = 8  # images whose parameter gradients the C kernel sums together


def _pieces(prefix: str, pieces: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, int]:
    layout, offset = {}, 0
    for name, shape in pieces:
        length = math.prod(shape)
        layout |= {f"{prefix}.{name}.offset": offset, f"{prefix}.{name}.length": length}
        offset += length
    return layout


LAYOUT = {"lanes": LANES, "pixels": PIXELS, "d.parameters": D_PARAMETERS, **_pieces("d", D_PIECES),
          "g.parameters": G_PARAMETERS, **_pieces("g", G_PIECES), "g.input": G_INPUT, "g.kept": G_KEPT,
          "g.chunk": G_CHUNK}


def _check(status: int, what: str) -> None:
    if status != 0:
        raise MemoryError(f"{what}: the C kernel could not allocate its working memory")


def _d_forward(images: torch.Tensor, parameters: torch.Tensor, logits: torch.Tensor) -> None:
    """mnistgen_d_forward: logits (B, 1) of the images (B, 1, 28, 28), D's parameters (593,); buffers checked."""
    count = len(images)
    _check(load_gan_library().mnistgen_d_forward(
        checked_pointer(images, "D forward: images", count * PIXELS),
        checked_pointer(parameters, "D forward: parameters", D_PARAMETERS),
        checked_pointer(logits, "D forward: logits", count), count, _threads()), "D forward")


def _d_backward(images: torch.Tensor, parameters: torch.Tensor, grad_logits: torch.Tensor,
                grad_images: torch.Tensor | None, grad_parameters: torch.Tensor | None) -> None:
    """mnistgen_d_backward: given dL/dlogits (B, 1), dL/dimages (B, 1, 28, 28) into ``grad_images`` and
    dL/dparameters (593,) into ``grad_parameters``, each only if given; buffers checked."""
    count = len(images)
    _check(load_gan_library().mnistgen_d_backward(
        checked_pointer(images, "D backward: images", count * PIXELS),
        checked_pointer(parameters, "D backward: parameters", D_PARAMETERS),
        checked_pointer(grad_logits, "D backward: dL/dlogits", count),
        checked_pointer(grad_images, "D backward: dL/dimages", count * PIXELS) if grad_images is not None else None,
        checked_pointer(grad_parameters, "D backward: dL/dparameters", D_PARAMETERS)
        if grad_parameters is not None else None, count, _threads()), "D backward")


class _NativeDiscriminator(torch.autograd.Function):
    """logits (B, 1) = D(images) with D's parameters given as one (593,) vector (Discriminator.parameters() order)."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        images, parameters = images.detach().contiguous(), parameters.detach()  # images of another layout: copied
        logits = torch.empty(len(images), 1)
        _d_forward(images, parameters, logits)
        ctx.save_for_backward(images, parameters)
        return logits

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        images, parameters = ctx.saved_tensors
        want_images, want_parameters = ctx.needs_input_grad
        grad_images = torch.empty_like(images) if want_images else None
        grad_parameters = torch.empty(D_PARAMETERS) if want_parameters else None
        _d_backward(images, parameters, grad_logits.contiguous(), grad_images, grad_parameters)
        return grad_images, grad_parameters


def flat_parameters(module: torch.nn.Module) -> torch.Tensor:
    """All parameters of ``module`` as one differentiable vector, each in its logical order whatever its layout."""
    return torch.cat([parameter.reshape(-1) for parameter in module.parameters()])


def native_discriminate(discriminator: Discriminator, images: torch.Tensor,
                        parameter_gradients: bool = True) -> torch.Tensor:
    """D(images) -> (B, 1) logits by the C kernel; D's parameters get gradients only if ``parameter_gradients``."""
    parameters = flat_parameters(discriminator) if parameter_gradients else flat_parameters(discriminator).detach()
    return _NativeDiscriminator.apply(images, parameters)


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The 2x2 kernels of "nearest 2x upsample, then 3x3 convolution" in phase form; differentiable.

    weight (C_out, C_in, 3, 3) -> (a, b, dy, dx, C_in, C_out): output pixel (2i + a, 2j + b) is the sum over dy, dx
    in {0, 1} of the zero-padded input at (i + a + dy, j + b + dx) times kernel [a, b, dy, dx]. Along each axis
    phase 0 reads taps (w0, w1 + w2), phase 1 reads (w0 + w1, w2)."""
    def split(w: torch.Tensor, dim: int) -> torch.Tensor:  # 3 taps along dim -> (phase, tap) in its place
        w0, w1, w2 = w.unbind(dim)
        return torch.stack([torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)], dim)

    kernels = split(split(weight, 3), 2)  # (C_out, C_in, a, dy, b, dx)
    return kernels.permute(2, 4, 3, 5, 1, 0)


def _g_parameters(generator: Generator) -> torch.Tensor:
    """G's parameters packed as the C code reads them, (10337,) in the order and shapes of ``G_PIECES``."""
    return torch.cat([phase_kernels(generator.conv1.weight).reshape(-1), generator.conv1.bias,
                      phase_kernels(generator.conv2.weight).reshape(-1), generator.conv2.bias,
                      generator.conv3.weight.reshape(-1), generator.conv3.bias])


def _g_forward(h0: torch.Tensor, parameters: torch.Tensor, slope2: float, slope3: float, s: torch.Tensor,
               kept: torch.Tensor) -> None:
    """mnistgen_g_forward: s (B, 1, 28, 28) and ``kept`` (B, 9408) from h0 (B, 1568), parameters (10337,); checked."""
    images = len(h0)
    _check(load_gan_library().mnistgen_g_forward(
        checked_pointer(h0, "G forward: h0", images * G_INPUT),
        checked_pointer(parameters, "G forward: parameters", G_PARAMETERS), slope2, slope3,
        checked_pointer(s, "G forward: output", images * PIXELS),
        checked_pointer(kept, "G forward: kept outputs", images * G_KEPT), images, _threads()), "G forward")


def _g_backward(h0: torch.Tensor, kept: torch.Tensor, parameters: torch.Tensor, slope2: float, slope3: float,
                grad_s: torch.Tensor, grad_h0: torch.Tensor, grad_parameters: torch.Tensor,
                scratch: torch.Tensor) -> None:
    """mnistgen_g_backward: given dL/ds (B, 1, 28, 28) and the forward's ``kept``, dL/dh0 (B, 1568) and
    dL/dparameters (10337,) (with ``scratch`` (ceil(B / 8), 10337)); buffers checked."""
    images = len(h0)
    _check(load_gan_library().mnistgen_g_backward(
        checked_pointer(h0, "G backward: h0", images * G_INPUT),
        checked_pointer(kept, "G backward: kept outputs", images * G_KEPT),
        checked_pointer(parameters, "G backward: parameters", G_PARAMETERS), slope2, slope3,
        checked_pointer(grad_s, "G backward: dL/doutput", images * PIXELS),
        checked_pointer(grad_h0, "G backward: dL/dh0", images * G_INPUT),
        checked_pointer(grad_parameters, "G backward: dL/dparameters", G_PARAMETERS),
        checked_pointer(scratch, "G backward: scratch", -(-images // G_CHUNK) * G_PARAMETERS), images, _threads()),
        "G backward")


class _NativeGenerator(torch.autograd.Function):
    """s (B, 1, 28, 28) = G from act1's output h0 (B, 1568) to before the sigmoid, parameters packed for the C code."""

    @staticmethod
    def forward(ctx, h0: torch.Tensor, parameters: torch.Tensor, slope2: float, slope3: float) -> torch.Tensor:
        h0 = h0.detach().contiguous()  # (B, 1568) float32, else refused
        parameters = parameters.detach()
        logits = torch.empty(len(h0), 1, 28, 28)
        kept = torch.empty(len(h0), G_KEPT)  # conv1's and conv2's outputs, for the backward
        _g_forward(h0, parameters, slope2, slope3, logits, kept)
        ctx.save_for_backward(h0, kept, parameters)
        ctx.slopes = (slope2, slope3)
        return logits

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        h0, kept, parameters = ctx.saved_tensors
        grad = grad_logits.contiguous()  # (B, 1, 28, 28); autograd may give an expanded one
        grad_h0 = torch.empty_like(h0)
        grad_parameters = torch.empty(G_PARAMETERS)
        scratch = torch.empty(-(-len(h0) // G_CHUNK), G_PARAMETERS)
        _g_backward(h0, kept, parameters, *ctx.slopes, grad, grad_h0, grad_parameters, scratch)
        return grad_h0, grad_parameters, None, None


def native_generator_after_act1(generator: Generator, h0: torch.Tensor) -> torch.Tensor:
    """G from act1's output h0 (B, 1568) to conv3's output (before the sigmoid), (B, 1, 28, 28), by the C kernel."""
    return _NativeGenerator.apply(h0, _g_parameters(generator), generator.act2.negative_slope,
                                  generator.act3.negative_slope)


def native_generate(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    """G(z), (B, zdim) -> (B, 1, 28, 28): the Linear and act1 in PyTorch, the rest by the C kernel."""
    h0 = generator.act1(generator.linear(z))  # (B, 1568) = (B, 32, 7, 7) channel-first
    return torch.sigmoid(native_generator_after_act1(generator, h0))
