"""SPEC §3's GAN: the discriminator and the generator, layer for layer as the spec's tables list them, and how they
train: :func:`train_step`, the one training step (D's step, G's step, then the moving average of G's weights and the
lookahead where they are kept).

Each network defines its layers in the constructor in the tables' order, and nothing else: the reshapes (8x5x5 ->
200 in D, 1568 -> 32x7x7 in G) are views in ``forward``. Initialization (SPEC §3): ``torch.nn.init.kaiming_uniform_``
with its defaults for every weight, zero for every bias. Shapes below are per image; a batch adds a leading B.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import GANConfig, parse_betas
from ..distributed import average_gradients, gathered_over_ranks, rank_and_size
from ..losses import discriminator_loss, generator_loss, mmd_squared

IMAGE_SHAPE = (1, 28, 28)
GENERATOR_START = (32, 7, 7)  # the Linear's 1568 outputs, viewed as 32 channels of 7x7
DISCRIMINATOR_FEATURES = (8, 5, 5)  # what the last convolution leaves, flattened into the Linear
LEAKY_SLOPE = 0.2
STATS = ("d_loss", "g_loss", "d_real", "d_fake")  # what a training step returns, in this order
AVERAGE = "generator_ema"  # the key of G's moving average (--ema-decay), in a run's checkpoint and its Replica
SLOW = ("generator_slow", "discriminator_slow")  # the keys of the slow weights (--lookahead-steps) of G, then D


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


def build_models(config: GANConfig, device: torch.device) -> tuple[Generator, Discriminator]:
    """G and D initialised per SPEC §3 from the global RNG (seeded by the caller), on ``device``."""
    return Generator(config.zdim).to(device), Discriminator().to(device)


def make_optimizers(generator: nn.Module, discriminator: nn.Module,
                    config: GANConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for each network (SPEC: lr 2e-4 each, PyTorch's betas and eps), with ``config.lr_g`` / ``lr_d`` and
    ``config.betas``, as one fused kernel where the device has it; returns (for G, for D)."""
    fused = next(generator.parameters()).device.type in ("cpu", "cuda", "mps")
    betas = parse_betas(config.betas)
    return (torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=betas, fused=fused),
            torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=betas, fused=fused))


def weight_average(module: nn.Module) -> nn.Module:
    """A copy of ``module`` to hold an average of its weights (G's moving average, ``--ema-decay``; the slow weights
    of ``--lookahead-steps``), starting from its present weights, in their memory layout; it takes no gradients."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def update_ema(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float | torch.Tensor) -> None:
    """ema = decay * ema + (1 - decay) * w for each pair of tensors (same shapes, device and dtype), in place; decay
    a number, or a tensor ([R]) of the step (``--ema-warmup``: for stacked replicas, one per replica)."""
    ema_params = list(ema_params)
    if not torch.is_tensor(decay):
        torch._foreach_mul_(ema_params, decay)
        torch._foreach_add_(ema_params, list(params), alpha=1.0 - decay)
        return
    decays = [decay.view(*decay.shape, *[1] * (ema.dim() - decay.dim())) for ema in ema_params]  # ([R,] 1, ...)
    torch._foreach_mul_(ema_params, decays)
    torch._foreach_add_(ema_params, torch._foreach_mul(list(params), [1 - d for d in decays]))


def ema_decays(config: GANConfig, steps_before: int, like: torch.Tensor) -> Callable[[int], tuple[torch.Tensor, ...]]:
    """The decay input of step s after ``steps_before`` steps of the run: with ``--ema-warmup``, (min(D, (1 + n) /
    (10 + n)),) for the run's step n = steps_before + s, a 0-d tensor like ``like``; else () (the step uses D)."""
    if config.ema_decay is None or not config.ema_warmup:
        return lambda step: ()
    decay = config.ema_decay
    return lambda step: (torch.tensor(min(decay, (1 + steps_before + step) / (10 + steps_before + step)),
                                      dtype=like.dtype, device=like.device),)


def lookahead_syncs(config: GANConfig, steps_before: int,
                    like: torch.Tensor) -> Callable[[int], tuple[torch.Tensor, ...]]:
    """The lookahead input of step s after ``steps_before`` steps of the run: (1,) where the run's step n =
    steps_before + s, from 0, ends a period of ``--lookahead-steps`` k (n + 1 a multiple of k), (0,) between, ()
    without lookahead; a 0-d tensor like ``like``."""
    if config.lookahead_steps is None:
        return lambda step: ()
    on, off = (torch.full((), value, dtype=like.dtype, device=like.device) for value in (1.0, 0.0))
    return lambda step: (on,) if (steps_before + step + 1) % config.lookahead_steps == 0 else (off,)


@torch.no_grad()
def sync_lookahead(slow: Sequence[torch.Tensor], fast: Sequence[torch.Tensor], alpha: float,
                   sync: torch.Tensor) -> None:
    """Lookahead (Zhang et al., 2019) on each pair of tensors, in place: where ``sync`` is 1, slow <- slow + alpha
    (fast - slow), then fast <- slow; where it is 0, nothing changes. ``sync``: a 0-d tensor, or [R] for stacked
    replicas. Without a branch, so that a stacked or captured step takes it too: two lerps, by alpha * sync and by
    sync, each exact at weight 0 (slow + 0) and 1 (fast - 0)."""
    slow, fast, step = list(slow), list(fast), alpha * sync
    if sync.dim() == 0:  # one replica: the 0-d weights broadcast
        steps, syncs = [step] * len(slow), [sync] * len(slow)
    else:  # stacked: ([R], 1, ...) like each tensor
        steps, syncs = ([x.view(*x.shape, *[1] * (tensor.dim() - x.dim())) for tensor in slow] for x in (step, sync))
    torch._foreach_lerp_(slow, fast, steps)
    torch._foreach_lerp_(fast, slow, syncs)


@dataclass(frozen=True)
class GANCalls:
    """How the step computes G(z) and D's logits: the modules' own calls (:data:`REFERENCE`), or an accelerator's
    (:mod:`mnistgen.accelerate.gan`) computing the same function of the inputs and parameters."""

    generate: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (G, z ([R,] B, zdim)) -> ([R,] B, 1, 28, 28)
    # (D, real, generated) -> D's logits ([R,] B, 1) of each, for D's step
    discriminate_both: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    discriminate: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (D, generated) -> logits, for G's step


REFERENCE = GANCalls(generate=lambda generator, z: generator(z),
                     discriminate_both=lambda discriminator, real, fake: (discriminator(real), discriminator(fake)),
                     discriminate=lambda discriminator, fake: discriminator(fake))


def r1_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., 2018): the batch's mean of ||d D(x) / dx||^2, the squared norm of the gradient of D's
    logit with respect to each real image, through D's own forward and differentiable in D's parameters.
    real ([R,] B, 1, 28, 28) -> ([R],)."""
    real = real.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)  # like real
    return gradient.square().sum(dim=(-3, -2, -1)).mean(dim=-1)


def r1_weights(config: GANConfig, steps_before: int, like: torch.Tensor) -> Callable[[int], tuple[torch.Tensor, ...]]:
    """The R1 input of step s after ``steps_before`` steps of the run: (gamma/2 * k,) on every k-th step (``--r1-gamma``
    and ``--r1-every``: the lazy penalty, counted from the run's first step), (0,) between, () without R1; a 0-d
    tensor like ``like``."""
    if config.r1_gamma is None:
        return lambda step: ()
    on = torch.tensor(config.r1_gamma / 2 * config.r1_every, dtype=like.dtype, device=like.device)
    off = torch.zeros((), dtype=like.dtype, device=like.device)
    return lambda step: (on,) if (steps_before + step) % config.r1_every == 0 else (off,)


D_CALLS = 3  # D sees three batches a step: the real images and the generated ones in D's step, the generated in G's


@dataclass(frozen=True)
class Augmentation:
    """Differentiable augmentation of every image D sees, real and generated alike (DiffAugment, Zhao et al., 2020;
    ``--translate``, ``--cutout``): a shift of up to ``translate`` pixels along each axis (the image moved, zeros
    shifted in), then a ``cutout`` x ``cutout`` square of zeros centred on a pixel of the image (clipped at the
    border). The random part is a plan of integers drawn by the loop, so the step stays a function of its inputs."""

    translate: int
    cutout: int

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """The plan of one step: (B, D_CALLS, 4) integers (dy, dx, top, left) for each image and call of D."""
        device = generator.device
        shifts = (torch.randint(-self.translate, self.translate + 1, (batch, D_CALLS, 2), generator=generator,
                                device=device) if self.translate else torch.zeros(batch, D_CALLS, 2, dtype=torch.long,
                                                                                  device=device))
        centres = (torch.randint(0, IMAGE_SHAPE[-1], (batch, D_CALLS, 2), generator=generator, device=device)
                   if self.cutout else torch.zeros(batch, D_CALLS, 2, dtype=torch.long, device=device))
        return torch.cat([shifts, centres - self.cutout // 2], dim=-1)

    def __call__(self, images: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """images ([R,] B, 1, H, W), plan ([R,] B, 4) -> the augmented images, like ``images``: out[a, b] =
        images[a - dy, b - dx], 0 where that is outside the image or top <= a < top + cutout and left <= b < left +
        cutout. A gather and a mask: exact, and differentiable (the gradient goes back to the pixel it came from)."""
        side = images.shape[-1]  # H = W
        rows = torch.arange(side, device=images.device)
        dy, dx, top, left = (plan[..., i, None] for i in range(4))  # ([R,] B, 1) each
        source_row, source_column = rows - dy, rows - dx  # ([R,] B, H): where each row and column comes from
        keep = (((source_row >= 0) & (source_row < side))[..., :, None]
                & ((source_column >= 0) & (source_column < side))[..., None, :])  # ([R,] B, H, W)
        if self.cutout:
            keep &= ~(((rows >= top) & (rows < top + self.cutout))[..., :, None]
                      & ((rows >= left) & (rows < left + self.cutout))[..., None, :])
        flat = images.flatten(-3)  # ([R,] B, H*W)
        if self.translate:
            source = source_row.clamp(0, side - 1)[..., :, None] * side + source_column.clamp(0, side - 1)[..., None, :]
            flat = flat.gather(-1, source.flatten(-2))
        return (flat * keep.flatten(-2)).view_as(images)


def augmentation(config: GANConfig) -> Augmentation | None:
    """``config``'s augmentation of D's inputs, or None without one."""
    return Augmentation(config.translate, config.cutout) if config.translate or config.cutout else None


def optimized_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors ``optimizer`` steps, in its order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def train_step(generator: nn.Module, discriminator: nn.Module, optimizer_g: torch.optim.Optimizer,
               optimizer_d: torch.optim.Optimizer, real: torch.Tensor, z: torch.Tensor, calls: GANCalls = REFERENCE,
               ema: tuple[Sequence[torch.Tensor], float] | None = None,
               r1_weight: torch.Tensor | None = None,
               augment: tuple[Augmentation, torch.Tensor] | None = None,
               lookahead: tuple[Sequence[torch.Tensor], float, torch.Tensor] | None = None,
               mmd_weight: float | None = None) -> torch.Tensor:
    """One D step then one G step on the same z, then the moving average of G's weights and the lookahead where they
    are kept.

    real (B, 1, 28, 28) in [0, 1]; z (B, zdim); ``ema``: (the average's tensors in ``optimizer_g``'s order, the
    decay) or None; ``r1_weight``: None, or a 0-d tensor w: D's objective gains w * :func:`r1_penalty` where w is
    not 0 (``--r1-gamma``: gamma/2 times k on every k-th step, 0 between); ``augment``: None, or (the augmentation,
    its plan (B, D_CALLS, 4)): each of D's three input batches augmented by its own plan (the penalty at the real
    images as D sees them); ``lookahead``: None, or (the slow weights, of ``optimizer_g``'s tensors then
    ``optimizer_d``'s, alpha, the sync input of :func:`lookahead_syncs`): :func:`sync_lookahead` on both players
    after the average; ``mmd_weight``: None, or w: G's objective gains w * :func:`mmd_squared` of the generated and
    the real batch (the global batch under torchrun). Returns (4,) detached on the device, :data:`STATS` (D(x) and
    D(G(z)) before D's step, of D's inputs; D's loss without the penalty, G's without the discrepancy); for R
    replicas stacked (:mod:`mnistgen.accelerate.engines`) every tensor gains a leading R, the result (R, 4)."""
    fake = calls.generate(generator, z)  # ([R,] B, 1, 28, 28), computed once for both steps

    def seen(images: torch.Tensor, call: int) -> torch.Tensor:  # what D's call number ``call`` is given
        return images if augment is None else augment[0](images, augment[1][..., call, :])

    # D step: towards 1 on real and 0 on generated images; G is not reached (fake is detached)
    real_seen = seen(real, 0)  # what D's step and the penalty see of the real images
    real_logits, fake_logits = calls.discriminate_both(discriminator, real_seen,
                                                       seen(fake.detach(), 1))  # ([R,] B, 1) each
    d_loss = discriminator_loss(real_logits, fake_logits)  # ([R],)
    objective = d_loss
    if r1_weight is not None and bool(r1_weight):  # a data-dependent branch: no vmap, no CUDA graph (they step aside)
        objective = d_loss + r1_weight * r1_penalty(discriminator, real_seen)
    optimizer_d.zero_grad(set_to_none=True)
    objective.sum().backward()
    average_gradients(optimizer_d)  # the mean over torchrun ranks (nothing in one process)
    optimizer_d.step()

    # G step: -log D(G(z)) with the D just updated; only G's parameters get gradients
    g_loss = generator_loss(calls.discriminate(discriminator, seen(fake, 2)))  # ([R],)
    objective = g_loss
    if mmd_weight is not None:  # each rank's gradient is of its share of the global batch; the average adds them up
        ranks = rank_and_size()[1]
        objective = g_loss + ranks * mmd_weight * mmd_squared(gathered_over_ranks(fake, dim=-4),
                                                               gathered_over_ranks(real, dim=-4))
    optimizer_g.zero_grad(set_to_none=True)
    objective.sum().backward(inputs=optimized_parameters(optimizer_g))
    average_gradients(optimizer_g)
    optimizer_g.step()
    if ema is not None:
        update_ema(ema[0], optimized_parameters(optimizer_g), ema[1])
    if lookahead is not None:
        slow, alpha, sync = lookahead
        sync_lookahead(slow, optimized_parameters(optimizer_g) + optimized_parameters(optimizer_d), alpha, sync)

    with torch.no_grad():
        return torch.stack([d_loss.detach(), g_loss.detach(), torch.sigmoid(real_logits).mean(dim=(-2, -1)),
                            torch.sigmoid(fake_logits).mean(dim=(-2, -1))], dim=-1)
