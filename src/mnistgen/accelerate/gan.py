"""The GAN's accelerators: faster calls of G(z) and of D's logits inside the reference step
(:func:`mnistgen.models.gan.train_step`), chosen for each network on its own, their checks, and the engine of a run's
replicas. The losses, autograd, Adam, the moving average of G and the lookahead stay the step's own; the accelerators
and where they apply: docs/TRAINING.md, 'Accelerators and --cpu-kernels'."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GANConfig
from ..kernels.gan import native_discriminate, native_generate
from ..models import gan as gan_model
from ..models.gan import (
    DISCRIMINATOR_FEATURES,
    GENERATOR_START,
    IMAGE_SHAPE,
    LEAKY_SLOPE,
    REFERENCE,
    Discriminator,
    GANCalls,
    Generator,
)
from . import (
    PROBE_SEED,
    Accelerator,
    Choice,
    choose,
    gradients_of,
    layout_mismatch,
    note_choice,
    on_meta_device,
    parameter_mismatch,
    probe_generator,
    probe_mismatch,
    probing,
)
from .engines import Bound, Engine, Replica, choose_engine

PROBE_IMAGES = 17  # images in the start-up probes' batches (one more than the C kernels' widest group, 16)
ALL_DEVICES = ("cpu", "cuda", "mps")


def spec_generator_layers(zdim: int) -> dict[str, nn.Module]:
    """The leaf modules of SPEC §3's generator (the table's order), as the G accelerators read them."""
    channels = GENERATOR_START[0]
    return {"linear": nn.Linear(zdim, channels * GENERATOR_START[1] * GENERATOR_START[2]),
            "act1": nn.LeakyReLU(LEAKY_SLOPE), "up1": nn.Upsample(scale_factor=2),
            "conv1": nn.Conv2d(channels, 16, kernel_size=3, stride=1, padding=1), "act2": nn.LeakyReLU(LEAKY_SLOPE),
            "up2": nn.Upsample(scale_factor=2), "conv2": nn.Conv2d(16, 8, kernel_size=3, stride=1, padding=1),
            "act3": nn.LeakyReLU(LEAKY_SLOPE), "conv3": nn.Conv2d(8, 1, kernel_size=3, stride=1, padding=1),
            "sigmoid": nn.Sigmoid()}


def spec_discriminator_layers() -> dict[str, nn.Module]:
    """The leaf modules of SPEC §3's discriminator (the table's order), as the native D reads them."""
    features = DISCRIMINATOR_FEATURES[0] * DISCRIMINATOR_FEATURES[1] * DISCRIMINATOR_FEATURES[2]
    return {"conv1": nn.Conv2d(1, 2, kernel_size=3, stride=1, padding=1), "relu1": nn.ReLU(),
            "pool1": nn.MaxPool2d(kernel_size=2, stride=2),
            "conv2": nn.Conv2d(2, 4, kernel_size=3, stride=1, padding=1), "relu2": nn.ReLU(),
            "pool2": nn.MaxPool2d(kernel_size=2, stride=2),
            "conv3": nn.Conv2d(4, 8, kernel_size=3, stride=1, padding=0), "relu3": nn.ReLU(),
            "linear": nn.Linear(features, 1)}


def _upsample_taps(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """(w0, w1, w2) -> (w2, w1 + w2, w0 + w1, w0) along ``dim``: "nearest 2x upsampling, then a 3x3 convolution with
    padding 1" as one transposed convolution (stride 2, padding 1) with this 4x4 kernel, the same values.

    Along one axis, output row 2i reads input rows i-1 (tap w0) and i (w1 + w2), row 2i+1 reads rows i (w0 + w1) and
    i+1 (w2); a transposed convolution adds input row i into output row o through tap k = o - 2i + 1 (rows 2i: k = 3,
    1; rows 2i+1: k = 2, 0). Both pad with zeros, so the borders match too. 16 multiply-adds per input pixel and
    channel pair instead of 36; built from the Conv2d's own weight, so autograd reaches the spec's parameters."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def upsample_conv(conv: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """conv(Upsample(scale 2, nearest)(images)) for a 3x3, stride 1, padding 1 ``conv``, as one transposed convolution:
    (B, C_in, H, W) -> (B, C_out, 2H, 2W), the same values and gradients (of the images and ``conv``'s parameters)."""
    kernel = _upsample_taps(_upsample_taps(conv.weight, dim=2), dim=3)  # (C_out, C_in, 4, 4)
    kernel = kernel.transpose(0, 1)  # conv_transpose2d takes (C_in, C_out, kH, kW)
    # the kernel in the memory format of the maps it reads (keeps oneDNN on its channels-last path)
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    else:
        kernel = kernel.contiguous()
    return F.conv_transpose2d(images, kernel, conv.bias, stride=2, padding=1)


def torch_generate(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    """``generator(z)`` for SPEC §3's G, (B, zdim) -> (B, 1, 28, 28), faster: up1/conv1 and up2/conv2 as
    :func:`upsample_conv`, on CPU every map channels-last (oneDNN's fastest layout for these convolutions)."""
    h = generator.act1(generator.linear(z)).view(-1, *GENERATOR_START)  # (B, 32, 7, 7)
    if h.device.type == "cpu":
        h = h.contiguous(memory_format=torch.channels_last)
    # LeakyReLU in place: each convolution's output is used by nothing else (its backward reads the result)
    h = F.leaky_relu(upsample_conv(generator.conv1, h), generator.act2.negative_slope, inplace=True)  # (B, 16, 14, 14)
    h = F.leaky_relu(upsample_conv(generator.conv2, h), generator.act3.negative_slope, inplace=True)  # (B, 8, 28, 28)
    return generator.sigmoid(generator.conv3(h))  # (B, 1, 28, 28)


def torch_discriminate_both(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                            fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """D's step: the logits of the real and of the generated batch from one call of D on both."""
    logits = discriminator(torch.cat([real, fake]))  # (2B, 1)
    return logits[:len(real)], logits[len(real):]


# D's accelerators replace the step's two calls of D (their ``generate`` is the module's own, unused). The C kernels
# take the real and the generated batch in one call too; in G's step D's parameters get no gradient from them.
NATIVE_CALLS = GANCalls(
    REFERENCE.generate,
    lambda discriminator, real, fake: torch_discriminate_both(partial(native_discriminate, discriminator), real, fake),
    lambda discriminator, fake: native_discriminate(discriminator, fake, parameter_gradients=False))
TORCH_CALLS = GANCalls(REFERENCE.generate, torch_discriminate_both, REFERENCE.discriminate)


def _probe_generator(generator: Generator, generate: Callable) -> str | None:
    """``generate(G, z)`` against ``G(z)`` on a small batch, images and gradients: why they differ, or None."""
    device = next(generator.parameters()).device
    with probing(generator, generator) as (reference, accelerated):
        draws = probe_generator(torch.device("cpu"))
        z = (torch.rand(PROBE_IMAGES, generator.linear.in_features, generator=draws) * 2 - 1).to(device)
        weights = torch.randn(PROBE_IMAGES, *IMAGE_SHAPE, generator=draws).to(device)
        results = []
        for module, function in ((reference, REFERENCE.generate), (accelerated, generate)):
            images = function(module, z)
            results.append((images, gradients_of((images * weights).sum(), list(module.parameters()))))
        (expected, expected_gradients), (images, gradients) = results
        names = [name for name, _ in reference.named_parameters()]
        return probe_mismatch([("G(z)", images, expected)] + [
            (f"the gradient of generator.{name}", mine, theirs)
            for name, mine, theirs in zip(names, gradients, expected_gradients, strict=True)])


def _probe_discriminator(discriminator: nn.Module, calls: GANCalls) -> str | None:
    """D's ``calls`` against the module's own calls on small random batches: the logits and the gradients of a
    weighted sum of them in D's step and in G's step; the reason if they differ, else None."""
    device = next(discriminator.parameters()).device
    with probing(discriminator, discriminator) as (reference, accelerated):
        draws = probe_generator(torch.device("cpu"))
        real = torch.rand(PROBE_IMAGES, *IMAGE_SHAPE, generator=draws).to(device)
        fake = torch.rand(PROBE_IMAGES, *IMAGE_SHAPE, generator=draws).to(device)
        weights = torch.randn(3, PROBE_IMAGES, 1, generator=draws).to(device)
        results = []
        for module, module_calls in ((reference, REFERENCE), (accelerated, calls)):
            fake_input, fake_for_g = fake.clone().requires_grad_(), fake.clone().requires_grad_()
            real_logits, fake_logits = module_calls.discriminate_both(module, real, fake_input)
            parameters = list(module.parameters())
            d_gradients = gradients_of((real_logits * weights[0]).sum() + (fake_logits * weights[1]).sum(),
                                       [*parameters, fake_input])
            g_logits = module_calls.discriminate(module, fake_for_g)
            (g_gradient,) = torch.autograd.grad((g_logits * weights[2]).sum(), [fake_for_g])
            results.append((real_logits, fake_logits, d_gradients, g_logits, g_gradient))
        expected, actual = results
        names = [f"discriminator.{name}" for name, _ in reference.named_parameters()] + ["the generated images"]
        return probe_mismatch(
            [("D's logits of the real batch", actual[0], expected[0]),
             ("D's logits of the generated batch", actual[1], expected[1])]
            + [(f"the gradient of {name} in D's step", mine, theirs)
               for name, mine, theirs in zip(names, actual[2], expected[2], strict=True)]
            + [("D's logits in G's step", actual[3], expected[3]),
               ("the gradient of the generated images in G's step", actual[4], expected[4])])


def generator_check(generate: Callable) -> Callable[[Generator, GANConfig, torch.device], str | None]:
    """The check of a G accelerator that computes ``generate(G, z)``: why it does not apply to a generator (not SPEC
    §3's G in float32 on the device, or the probe differs), or None."""

    def check(generator: Generator, config: GANConfig, device: torch.device) -> str | None:
        return (layout_mismatch(generator, on_meta_device(lambda: spec_generator_layers(config.zdim)), "the generator")
                or parameter_mismatch(generator, device) or _probe_generator(generator, generate))

    return check


def channels_last_on_cpu(module: nn.Module, device: torch.device) -> None:
    """On CPU, the module's 4-D weights channels-last (same values), oneDNN's faster layout; elsewhere nothing."""
    if device.type == "cpu":
        module.to(memory_format=torch.channels_last)


def check_native_discriminator(discriminator: Discriminator, config: GANConfig, device: torch.device) -> str | None:
    """Why the C kernels do not apply to ``discriminator``, or None."""
    return (layout_mismatch(discriminator, on_meta_device(spec_discriminator_layers), "the discriminator")
            or parameter_mismatch(discriminator, device) or _probe_discriminator(discriminator, NATIVE_CALLS))


def check_torch_discriminator(discriminator: nn.Module, config: GANConfig, device: torch.device) -> str | None:
    """Why one call of ``discriminator`` on both batches is not the same as two, or None (any layers)."""
    return parameter_mismatch(discriminator, device) or _probe_discriminator(discriminator, TORCH_CALLS)


GENERATOR_ACCELERATORS = (  # fastest first
    Accelerator(name="native", description="mnistgen's C kernels", native=True, devices=("cpu",),
                check=generator_check(native_generate), implementation=native_generate),
    Accelerator(name="torch", description="transposed convolutions", native=False, devices=ALL_DEVICES,
                check=generator_check(torch_generate), implementation=torch_generate, prepare=channels_last_on_cpu),
)
DISCRIMINATOR_ACCELERATORS = (
    Accelerator(name="native", description="mnistgen's C kernels", native=True, devices=("cpu",),
                check=check_native_discriminator, implementation=NATIVE_CALLS),
    Accelerator(name="torch", description="one call on both batches", native=False, devices=ALL_DEVICES,
                check=check_torch_discriminator, implementation=TORCH_CALLS, prepare=channels_last_on_cpu),
)


def choose_gan_accelerators(generator: Generator, discriminator: nn.Module, optimizer_g: torch.optim.Optimizer,
                            optimizer_d: torch.optim.Optimizer, config: GANConfig,
                            device: torch.device) -> tuple[Choice, Choice]:
    """The choices (:func:`mnistgen.accelerate.choose`) for G(z) and for D's logits under ``config.cpu_kernels``."""
    return (choose(GENERATOR_ACCELERATORS, config.cpu_kernels, device, optimizer_g, generator, config, device),
            choose(DISCRIMINATOR_ACCELERATORS, config.cpu_kernels, device, optimizer_d, discriminator, config, device))


@dataclass(frozen=True)
class ChosenCalls:
    """What :func:`choose_gan_calls` decided: the calls, their name ("G native, D torch"), whether accelerated."""

    calls: GANCalls
    name: str
    accelerated: bool
    choices: tuple[Choice, Choice]

    def prepare(self, generator: nn.Module, discriminator: nn.Module, device: torch.device) -> None:
        """What the chosen accelerators change in their modules (the weights' memory layout, never their values; the
        parameters stay the same objects): call it for every replica before its optimizers hold any state."""
        for choice, module in zip(self.choices, (generator, discriminator), strict=True):
            if choice.accelerator is not None and choice.accelerator.prepare is not None:
                choice.accelerator.prepare(module, device)


def choose_gan_calls(generator: nn.Module, discriminator: nn.Module, optimizer_g: torch.optim.Optimizer,
                     optimizer_d: torch.optim.Optimizer, config: GANConfig, device: torch.device,
                     say: Callable[[str], None] | None = None) -> ChosenCalls:
    """The calls a step makes: each network's accelerator where one applies, else its own calls (with one note)."""
    for_g, for_d = choose_gan_accelerators(generator, discriminator, optimizer_g, optimizer_d, config, device)
    note_choice("GAN", {"G": for_g, "D": for_d}, say)
    generate = for_g.accelerator.implementation if for_g.accelerator is not None else REFERENCE.generate
    calls = replace(for_d.accelerator.implementation if for_d.accelerator is not None else REFERENCE, generate=generate)
    return ChosenCalls(calls, f"G {for_g.name}, D {for_d.name}",
                       for_g.accelerator is not None or for_d.accelerator is not None, (for_g, for_d))


def gan_engine(replicas: list[Replica], config: GANConfig, device: torch.device, chosen: ChosenCalls,
               say: Callable[[str], None]) -> Engine:
    """How the steps of the replicas (``Replica({"generator": G, "discriminator": D}, their optimizers, the averages
    the config keeps: {AVERAGE: G's moving average, SLOW[0]: G's slow weights, SLOW[1]: D's}, of
    :mod:`mnistgen.models.gan`)``) are taken (:func:`~mnistgen.accelerate.engines.choose_engine`), with ``chosen``."""
    augmentation = gan_model.augmentation(config)

    def step_with(calls: GANCalls) -> Callable[[Replica], Callable[..., torch.Tensor]]:
        def bind(replica: Replica) -> Callable[..., torch.Tensor]:
            generator, discriminator = replica.modules["generator"], replica.modules["discriminator"]
            optimizers, average = replica.optimizers, replica.averages.get(gan_model.AVERAGE)
            ema = None if average is None else (list(average.parameters()), config.ema_decay)
            slow = [p for key in gan_model.SLOW if key in replica.averages for p in replica.averages[key].parameters()]

            def step(real: torch.Tensor, z: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
                extra = list(more)  # as the loop gives them: [the augmentation's plan,] [the decay,] [R1's weight,]
                # [the lookahead's sync]
                augment = None if augmentation is None else (augmentation, extra.pop(0))
                averaged = ema if ema is None or not config.ema_warmup else (ema[0], extra.pop(0))
                r1_weight = extra.pop(0) if config.r1_gamma is not None else None
                ahead = (slow, config.lookahead_alpha, extra.pop(0)) if slow else None
                return gan_model.train_step(generator, discriminator, optimizers["generator"],
                                            optimizers["discriminator"], real, z, calls, averaged, r1_weight,
                                            augment, ahead, config.mmd_weight)

            return step

        return bind

    step = step_with(chosen.calls)
    like = next(replicas[0].modules["discriminator"].parameters())

    # replica k's inputs of a step; with R1, a penalized step's; with lookahead, one that syncs (--lookahead-steps - 1)
    def example(k: int, images: int) -> tuple[torch.Tensor, ...]:
        draws = torch.Generator().manual_seed(PROBE_SEED + k)
        real = torch.rand(images, *IMAGE_SHAPE, generator=draws, dtype=torch.float64)
        z = torch.rand(images, config.zdim, generator=draws, dtype=torch.float64) * 2 - 1
        plan = () if augmentation is None else (augmentation.draw(images, draws).to(like.device),)
        return (real.to(like), z.to(like), *plan, *gan_model.ema_decays(config, 0, like)(0),
                *gan_model.r1_weights(config, 0, like)(0),
                *gan_model.lookahead_syncs(config, (config.lookahead_steps or 1) - 1, like)(0))

    return choose_engine(replicas, bind=step_with(REFERENCE), step=step, step_name=chosen.name,
                         runner=lambda replica: Bound(step(replica), chosen.name), accelerated=chosen.accelerated,
                         example=example, batch_size=config.batch_size, cpu_kernels=config.cpu_kernels,
                         fixed_lr=True, device=device, say=say)
