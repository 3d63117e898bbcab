"""Training the VAE of SPEC §2: one plain loop, :func:`train_vae`, that returns its history.

Per epoch: the batch order comes from :func:`mnistgen.data.batches.shuffled_batches`; the epoch's images
are gathered once in that order (each batch is then a contiguous slice); each step draws (full protocol:
a fresh binary image from each gray image, then) one eps ~ N(0, I) per image, computes the ELBO and its
gradient, and takes an Adam step. After the epoch the ELBO of the evaluation images (test for ``hw``,
validation for ``full``) is measured, one line is appended to RUN/metrics.jsonl and RUN/checkpoint.pt is
replaced atomically.

Speed without changing the mathematics (bench/vae_speed.py measures it; tests/test_vae_speed.py and
tests/test_vae_native.py prove the equality). A step is computed by one of two :class:`VAEKernels`
(``--cpu-kernels``, chosen by :func:`choose_vae_kernels`): PyTorch's (:class:`TorchSteps`: the gradient
of the batch-mean ELBO derived by hand in :func:`elbo_with_gradients` instead of recorded by autograd,
Adam as one fused kernel; on GPUs and wherever no C compiler works) or mnistgen's C kernels on CPU
(:class:`NativeSteps`, :mod:`mnistgen.kernels.vae`: sums over the images' nonzero pixels instead of the
two products that read them, PyTorch's matrix multiply for the other three). Either way the per-step
ELBOs stay on the device until the end of the epoch (no host sync per step).

Randomness: one CPU generator orders the batches, one generator on the device draws eps (and the
binary images of the full protocol), and the evaluation draws from a generator seeded anew per
epoch. Their states are in every checkpoint, so ``--resume`` ends with the same weights as an
uninterrupted run, whether the run stopped between epochs or (Ctrl-C) in the middle of one.

Ready for torchrun: batches are sharded by rank in ``shuffled_batches``, gradients are averaged over
ranks in :func:`mnistgen.train.common.average_over_ranks` (both kinds of steps call it before Adam), and
only rank 0 writes (through :class:`mnistgen.runs.RunDir`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import VAEConfig, to_dict
from ..data.batches import shuffled_batches
from ..data.protocols import Protocol, binarize_batch
from ..device import resolve_device, seed_everything
from ..errors import MnistgenError
from ..evaluate import elbo_samples, load_vae_protocol
from ..kernels.native import load_vae_library, use_native_kernels
from ..kernels.vae import NativeVAEStep
from ..models.vae import VAE
from ..runs import RunDir, is_main_process, write_json
from .common import (
    average_over_ranks,
    check_finite,
    distributed_rank_and_size,
    generator_states,
    progress,
    refuse_changed_settings,
    restore_generators,
    sigint_requests_stop,
    stream_seed,
    synchronize_gradients,
    torch_threads,
)

NOISE_STREAM = 1  # key of the generator that draws eps and the full protocol's binary images
EVAL_STREAM = 2  # key of the per-epoch generators of the evaluation ELBO
RESUMABLE_FIELDS = ("epochs", "device", "threads", "cpu_kernels")  # may differ on --resume: same mathematics


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a completed step; the state was saved. ``str()`` says how to continue."""


# --------------------------------------------------------------------------- small pieces


def learning_rate(config: VAEConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under ``config.lr_schedule``."""
    if config.lr_schedule == "cosine":
        return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * epoch / config.epochs))
    if config.lr_schedule == "step":
        return config.lr * config.lr_decay ** (epoch // config.lr_decay_every)
    return config.lr


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam (SPEC: lr 1e-3, PyTorch's betas and eps) as one fused kernel where the device has it."""
    device = next(model.parameters()).device
    fused = device.type in ("cpu", "cuda", "mps")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


def validate_vae_config(config: VAEConfig) -> None:
    """Reject settings the generic checks of ``config.validate`` cannot know about."""
    if config.threads < 0:
        raise MnistgenError(f"--threads must be 0 (torch's default) or a positive integer, got {config.threads}")
    if not 0.0 < config.lr_decay <= 1.0:
        raise MnistgenError(f"--lr-decay must be in (0, 1], got {config.lr_decay}")
    if config.lr_schedule == "cosine" and config.lr_min > config.lr:
        raise MnistgenError(f"--lr-min ({config.lr_min}) must not exceed --lr ({config.lr})")


def build_model(config: VAEConfig, device: torch.device) -> VAE:
    return VAE(latent_dim=config.latent_dim, hidden=config.hidden).to(device)


# --------------------------------------------------------------------------- one step, one epoch


@torch.no_grad()
def elbo_with_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool) -> torch.Tensor:
    """Forward pass and hand-derived backward pass of loss = -mean_b ELBO_b; fills every ``.grad``.

    x (B, 784) binary images; eps (B, D_z) standard normal draws (z = mean + exp(logvar / 2) * eps).
    Returns the sum over the batch of the ELBO estimates (a 0-d tensor on the device: no host sync).

    The same mathematics as autograd through :func:`mnistgen.losses.vae_elbo` (tests compare both):
    with s = 1/B, l the decoder's logits, h1 = tanh(a1) the encoder's and h2 = tanh(a2) the decoder's
    hidden layer, and std = exp(logvar / 2):

    - dL/dl = s (sigmoid(l) - x), since log p(x|z) = sum x l - softplus(l);
    - back through the decoder to dL/dz = (dL/da2) W_dec1 (+ s z, from -log p(z), in Eq. 2);
    - z = mean + std eps gives dL/dmean = dL/dz and dL/dlogvar = dL/dz * std * eps / 2;
    - Eq. 2: log q(z|x) = -1/2 sum(eps^2 + logvar + log 2 pi) at z = mean + std eps, so its total
      derivative is 0 in the mean and -1/2 in logvar (its z-path and direct terms cancel);
    - Eq. 1: KL = 1/2 sum(mean^2 + exp(logvar) - logvar - 1) adds s mean and s (exp(logvar) - 1) / 2;
    - back through the two heads (their gradients add up in h1) and the encoder's hidden layer.
    """
    encoder, decoder = model.encoder, model.decoder
    for parameter in model.parameters():
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    scale = 1.0 / x.shape[0]

    # forward
    h1 = torch.addmm(encoder.hidden.bias, x, encoder.hidden.weight.t()).tanh_()  # (B, H)
    mean = torch.addmm(encoder.mean.bias, h1, encoder.mean.weight.t())  # (B, D_z)
    logvar = torch.addmm(encoder.logvar.bias, h1, encoder.logvar.weight.t())  # (B, D_z)
    std = torch.exp(0.5 * logvar)
    z = torch.addcmul(mean, std, eps)  # (B, D_z)
    h2 = torch.addmm(decoder.hidden.bias, z, decoder.hidden.weight.t()).tanh_()  # (B, H)
    logits = torch.addmm(decoder.output.bias, h2, decoder.output.weight.t())  # (B, 784)

    # value: sum_b ELBO_b (the log 2 pi terms of log p(z) and log q(z|x) cancel in Eq. 2)
    log_likelihood = torch.dot(x.reshape(-1), logits.reshape(-1)) - torch.nn.functional.softplus(logits).sum()
    if analytic_kl:
        kl = 0.5 * (mean.square() + logvar.exp() - logvar - 1.0).sum()
        elbo_sum = log_likelihood - kl
    else:
        elbo_sum = log_likelihood - 0.5 * z.square().sum() + 0.5 * (eps.square().sum() + logvar.sum())

    # backward
    d_logits = torch.sigmoid(logits).sub_(x).mul_(scale)  # (B, 784)
    torch.mm(d_logits.t(), h2, out=decoder.output.weight.grad)
    torch.sum(d_logits, 0, out=decoder.output.bias.grad)
    d_h2 = torch.mm(d_logits, decoder.output.weight)  # (B, H)
    d_a2 = d_h2.addcmul_(d_h2 * h2, h2, value=-1.0)  # times tanh' = 1 - h2^2
    torch.mm(d_a2.t(), z, out=decoder.hidden.weight.grad)
    torch.sum(d_a2, 0, out=decoder.hidden.bias.grad)
    d_z = torch.mm(d_a2, decoder.hidden.weight)  # (B, D_z)
    if analytic_kl:
        d_mean = d_z + scale * mean
        d_logvar = (0.5 * d_z * std * eps).add_(0.5 * scale * (logvar.exp() - 1.0))
    else:
        d_z.add_(z, alpha=scale)
        d_mean = d_z
        d_logvar = (0.5 * d_z * std * eps).sub_(0.5 * scale)
    torch.mm(d_mean.t(), h1, out=encoder.mean.weight.grad)
    torch.sum(d_mean, 0, out=encoder.mean.bias.grad)
    torch.mm(d_logvar.t(), h1, out=encoder.logvar.weight.grad)
    torch.sum(d_logvar, 0, out=encoder.logvar.bias.grad)
    d_h1 = torch.mm(d_mean, encoder.mean.weight).addmm_(d_logvar, encoder.logvar.weight)  # (B, H)
    d_a1 = d_h1.addcmul_(d_h1 * h1, h1, value=-1.0)  # times tanh' = 1 - h1^2
    torch.mm(d_a1.t(), x, out=encoder.hidden.weight.grad)
    torch.sum(d_a1, 0, out=encoder.hidden.bias.grad)
    return elbo_sum


class TorchSteps:
    """Training steps with PyTorch's kernels: :func:`elbo_with_gradients`, then ``optimizer.step()``; the
    model's and the optimizer's own tensors are the state."""

    def __init__(self, model: VAE, optimizer: torch.optim.Optimizer, capacity: int):
        self.model, self.optimizer = model, optimizer

    def step(self, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool) -> torch.Tensor:
        """One Adam step on x (B, 784) with the draws eps (B, D_z); returns the batch's ELBO sum (0-d tensor)."""
        elbo_sum = elbo_with_gradients(self.model, x, eps, analytic_kl)
        synchronize_gradients(self.model)
        self.optimizer.step()
        return elbo_sum

    def store(self) -> None:
        """Nothing to do: the model and the optimizer are always up to date."""


class NativeSteps:
    """Training steps with mnistgen's C kernels (:class:`mnistgen.kernels.vae.NativeVAEStep`), for batches
    of at most ``capacity`` images. The weights and Adam's state are copied in once, here, and live in the
    kernels' flat buffers; :meth:`store` copies them back into the model and the optimizer (train_epoch does
    at the end of every epoch, so evaluation and checkpoints see them). Adam's hyper-parameters are read from
    the optimizer at every step (the learning rate schedule sets them per epoch)."""

    def __init__(self, model: VAE, optimizer: torch.optim.Optimizer, capacity: int):
        self.model, self.optimizer = model, optimizer
        self.native = NativeVAEStep(model, capacity)
        self.native.load(optimizer)

    def step(self, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool) -> float:
        """As :meth:`TorchSteps.step`; returns the ELBO sum as a float."""
        elbo_sum = self.native.compute_gradients(x, eps, analytic_kl)
        average_over_ranks([self.native.gradients])
        group = self.optimizer.param_groups[0]
        self.native.adam_step(group["lr"], group["betas"], group["eps"])
        return elbo_sum

    def store(self) -> None:
        self.native.store(self.optimizer)


VAESteps = TorchSteps | NativeSteps


@dataclass(frozen=True)
class VAEKernels:
    """How training steps are computed. Both choices compute the same steps (to float32 rounding)."""

    kernels: str  # "native" or "torch", as recorded in the run's metrics
    steps: Callable[[VAE, torch.optim.Optimizer, int], VAESteps]  # (model, optimizer, most images per batch)


TORCH_KERNELS = VAEKernels("torch", TorchSteps)
NATIVE_KERNELS = VAEKernels("native", NativeSteps)


def choose_vae_kernels(cpu_kernels: str, device: torch.device, say: Callable[[str], None] | None = None) -> VAEKernels:
    """The VAEKernels for the ``--cpu-kernels`` setting on ``device`` (see
    :func:`mnistgen.kernels.native.use_native_kernels`: "auto" falls back to PyTorch's kernels with a note)."""
    note = "the VAE trains with PyTorch's CPU kernels, about 1.5x slower"
    return NATIVE_KERNELS if use_native_kernels(cpu_kernels, device, load_vae_library, note, say) else TORCH_KERNELS


def train_epoch(model: VAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, batches: list[torch.Tensor],
                *, noise: torch.Generator, analytic_kl: bool, dynamic_binarization: bool,
                step_elbos: torch.Tensor, start_step: int = 0, stop: Callable[[], bool] | None = None,
                on_step: Callable[[], Any] | None = None, steps: VAESteps | None = None) -> int:
    """The steps ``start_step..`` of one epoch; returns the number of steps done (fewer if ``stop()`` said so).

    images (N, 784) on the model's device (binary, or gray levels when ``dynamic_binarization``);
    batches: index tensors from ``shuffled_batches``; step_elbos (len(batches),) receives each step's
    ELBO sum. ``stop`` is polled before each step; ``on_step`` is called after each. ``steps``: how a step
    is computed, made by :func:`choose_vae_kernels`'s ``steps`` for this model and optimizer (default:
    PyTorch's kernels); its :meth:`store` runs before returning, so the model and the optimizer are current.
    """
    steps = steps if steps is not None else TorchSteps(model, optimizer, 0)
    device = images.device
    order = torch.cat(batches).to(device)
    epoch_images = images.index_select(0, order)  # (n, 784): one gather, then contiguous slices
    ends = np.cumsum([len(b) for b in batches]).tolist()
    latent_dim = model.latent_dim
    try:
        for step in range(start_step, len(batches)):
            if stop is not None and stop():
                return step
            x = epoch_images[ends[step] - len(batches[step]):ends[step]]  # (B, 784)
            if dynamic_binarization:
                x = binarize_batch(x, noise)
            eps = torch.randn((x.shape[0], latent_dim), generator=noise, device=device, dtype=x.dtype)
            step_elbos[step] = steps.step(x, eps, analytic_kl)
            if on_step is not None:
                on_step()
        return len(batches)
    finally:
        steps.store()


# --------------------------------------------------------------------------- the loop


def _resume_config(run: RunDir, config: VAEConfig) -> None:
    saved = run.read_config_as("vae", VAEConfig, "a VAE run")
    refuse_changed_settings(run.path, saved, config, RESUMABLE_FIELDS)


def _checkpoint(model, optimizer, generators, config, epoch, step, order_state, step_elbos, seconds):
    """Everything needed to continue exactly: weights, Adam's moments, generator states and the epoch position."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generators": generator_states(generators),
        "order_state": order_state,  # state the batch order of epoch ``epoch + 1`` is drawn from
        "epoch": epoch,  # epochs completed
        "step": step,  # steps completed of epoch ``epoch + 1`` (0 between epochs)
        "step_elbos": step_elbos[:step].cpu(),
        "seconds": seconds,  # training seconds spent so far in epoch ``epoch + 1``
        "config": to_dict(config),
    }


def train_vae(config: VAEConfig, run: RunDir, *, resume: bool = False, protocol: Protocol | None = None,
              stop: Callable[[], bool] | None = None, show_progress: bool | None = None) -> list[dict[str, Any]]:
    """Train (or, with ``resume``, continue) the VAE of ``config`` into ``run``; return the metric records.

    ``protocol`` defaults to the data ``config`` names (pass one to train on other tensors, e.g. in
    tests). ``stop`` is polled before every step; when it returns True the state is saved and
    :class:`TrainingInterrupted` is raised. Without ``stop``, Ctrl-C does that (a second Ctrl-C aborts).
    Raises :class:`mnistgen.train.common.NonFiniteLossError` if the ELBO becomes NaN or infinite (the
    checkpoint of the last completed epoch is kept).
    """
    validate_vae_config(config)
    device = resolve_device(config.device)
    if resume:
        if not run.checkpoint.is_file():
            raise MnistgenError(f"{run.path}: nothing to resume (no checkpoint.pt); train without --resume first")
        _resume_config(run, config)
    elif run.config.is_file() or run.checkpoint.is_file():
        raise MnistgenError(f"{run.path} already holds a run: add --resume to continue it, or choose another --out")
    kernels = choose_vae_kernels(config.cpu_kernels, device)  # before any file is written: "native" may refuse
    protocol = protocol if protocol is not None else load_vae_protocol(config)
    if protocol.train_images.dim() != 2:
        raise MnistgenError(f"protocol {protocol.name!r} has no flat images; the VAE trains on hw or full")

    with torch_threads(config.threads), (
            sigint_requests_stop() if stop is None else _given(stop)) as stop_requested:
        return _train(config, run, resume, protocol, device, kernels, stop_requested, show_progress)


@contextmanager
def _given(stop: Callable[[], bool]) -> Iterator[Callable[[], bool]]:
    yield stop


def _train(config: VAEConfig, run: RunDir, resume: bool, protocol: Protocol, device: torch.device,
           kernels: VAEKernels, stop: Callable[[], bool], show_progress: bool | None) -> list[dict[str, Any]]:
    order_generator = seed_everything(config.seed)  # also seeds the global RNG that initialises the weights
    model = build_model(config, device)
    optimizer = make_optimizer(model, config.lr)
    noise = torch.Generator(device=device)
    noise.manual_seed(stream_seed(config.seed, NOISE_STREAM))
    generators = {"order": order_generator, "noise": noise}

    epochs_done, start_step, saved_elbos, seconds_before = 0, 0, None, 0.0
    if resume:
        state = run.load_checkpoint(map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_generators(generators, state["generators"])
        order_generator.set_state(state["order_state"])
        epochs_done, start_step = int(state["epoch"]), int(state["step"])
        saved_elbos, seconds_before = state["step_elbos"], float(state["seconds"])
        if config.epochs < epochs_done + (start_step > 0):
            raise MnistgenError(f"{run.path}: {epochs_done} epochs are done already; give --epochs of at least "
                                f"{epochs_done + (start_step > 0)} to continue")
        run.truncate_metrics(epochs_done)
    run.write_config(to_dict(config), kind="vae")
    if is_main_process():
        write_json(run.data, {**protocol.provenance, "dynamic_binarization": protocol.dynamic_binarization})
    history = run.read_metrics()

    data = protocol.to(device)  # moved once; every batch is a slice of these tensors
    rank, world_size = distributed_rank_and_size()
    num_train = len(data.train_images)
    analytic_kl = config.objective == "analytic"
    steps_per_epoch = len(range(0, num_train, config.batch_size))
    steps = kernels.steps(model, optimizer, config.batch_size)  # after the checkpoint is loaded: native copies it
    bar = progress(total=steps_per_epoch * (config.epochs - epochs_done) - start_step, description="vae",
                   enabled=show_progress)
    try:
        for epoch in range(epochs_done, config.epochs):
            lr = learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            bar.set_description(f"vae epoch {epoch + 1}/{config.epochs}")
            order_state = order_generator.get_state()
            batches = list(shuffled_batches(num_train, config.batch_size, order_generator,
                                            rank=rank, world_size=world_size))
            step_elbos = torch.zeros(len(batches), device=device)
            if start_step:
                step_elbos[:start_step] = saved_elbos.to(device)
            started = time.perf_counter()
            done = train_epoch(model, optimizer, data.train_images, batches, noise=noise, analytic_kl=analytic_kl,
                               dynamic_binarization=data.dynamic_binarization, step_elbos=step_elbos,
                               start_step=start_step, stop=stop, on_step=lambda: bar.update(1), steps=steps)
            train_seconds = seconds_before + time.perf_counter() - started
            if done < len(batches):
                run.save_checkpoint(_checkpoint(model, optimizer, generators, config, epoch, done, order_state,
                                                step_elbos, train_seconds))
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch + 1} after step {done} of {len(batches)}; saved "
                    f"{run.checkpoint}; continue with: mnistgen vae train --out {run.path} --resume")
            elbos = step_elbos.cpu()
            bad = torch.nonzero(~torch.isfinite(elbos))
            if len(bad):
                step = int(bad[0, 0])
                check_finite(float(elbos[step]), "the training ELBO", epoch + 1, step + 1)
            train_elbo = float(elbos.sum()) / sum(len(b) for b in batches)
            evaluation_generator = torch.Generator(device=device)
            evaluation_generator.manual_seed(stream_seed(config.seed, EVAL_STREAM, epoch))
            eval_elbo = float(elbo_samples(model, data.eval_images, samples=1, analytic_kl=analytic_kl,
                                           generator=evaluation_generator).mean())
            record = {"epoch": epoch + 1, "train_elbo": train_elbo, f"{data.eval_name}_elbo": eval_elbo, "lr": lr,
                      "seconds": seconds_before + time.perf_counter() - started, "train_seconds": train_seconds,
                      "kernels": kernels.kernels}
            run.append_metrics(record)
            run.save_checkpoint(_checkpoint(model, optimizer, generators, config, epoch + 1, 0,
                                            order_generator.get_state(), step_elbos, 0.0))
            history.append(record)
            bar.set_postfix(train=f"{train_elbo:.2f}", **{data.eval_name: f"{eval_elbo:.2f}"})
            start_step, seconds_before = 0, 0.0
    finally:
        bar.close()
    return history
