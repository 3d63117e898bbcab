"""Training the VAE of SPEC §2: one plain loop, :func:`train_vae`, that returns its history.

Per epoch: the batch order comes from :func:`mnistgen.data.batches.shuffled_batches`; the epoch's images
are gathered once in that order (each batch is then a contiguous slice); each step draws (full protocol:
a fresh binary image from each gray image, then) one eps ~ N(0, I) per image (K = ``--train-samples`` of them
with ``--objective iwae`` or K > 1) and takes one Adam step on the batch's negative mean objective: the ELBO (Eq. 2
or Eq. 1; with K > 1 the mean of K one-sample estimates), or iwae's K-sample bound. After the epoch the
one-sample ELBO of the evaluation images (test for ``hw``, validation for ``full``; Eq. 2 for iwae) is measured,
one line is appended to RUN/metrics.jsonl and RUN/checkpoint.pt is replaced atomically.

The step is :func:`reference_step`: the ELBO from the modules' own code (:func:`mnistgen.losses.vae_elbo`),
back-propagated by autograd. Where an accelerator applies to the model as it is (:mod:`mnistgen.accelerate.vae`:
mnistgen's C kernels on CPU, or the hand-derived gradient), it takes that step instead, with the same
mathematics; ``--cpu-kernels`` chooses, and each metrics line records ``trained_by``.

Randomness: one CPU generator orders the batches, one generator on the device draws eps (and the
binary images of the full protocol), and the evaluation draws from a generator seeded anew per
epoch. Their states are in every checkpoint, so ``--resume`` ends with the same weights as an
uninterrupted run, whether the run stopped between epochs or (Ctrl-C) in the middle of one.

Under torchrun (:mod:`mnistgen.distributed`) ``batch_size`` is the global batch: every rank draws the same
order and, per step, the same binary images and eps for the whole batch, and trains on its equal slice of them;
the gradients are averaged over the ranks before each Adam step, the step ELBOs summed once per epoch, the
stop request combined before each step, and only rank 0 reads and writes the run folder (the others receive the
checkpoint from it). So N processes take the steps of one process to float rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from ..accelerate import note_choice
from ..accelerate.vae import choose_vae_accelerator
from ..config import VAEConfig, is_replicated, to_dict, validate
from ..data.batches import shuffled_batches
from ..data.protocols import Protocol, binarize_batch, load_protocol
from ..data.sources import load_raw
from ..device import resolve_device, seed_everything, stream_seed
from ..distributed import (
    check_device,
    check_global_batch,
    from_main_rank,
    main_rank_first,
    rank_share,
    ranks_agree,
    stop_on_every_rank,
    sum_over_ranks,
)
from ..errors import MnistgenError
from ..files import write_json
from ..losses import elbo_samples, standard_normal_draws, vae_elbo
from ..models.vae import VAE
from ..progress import progress
from ..runs import RunDir, is_main_process
from .common import (
    RunState,
    TrainingInterrupted,
    claim_run,
    distributed_rank_and_size,
    end_steps,
    epochs_left,
    record_epoch,
    synchronize_gradients,
    training_context,
)

NOISE_STREAM = 1  # key of the generator that draws eps and the full protocol's binary images
EVAL_STREAM = 2  # key of the per-epoch generators of the evaluation ELBO
RESUMABLE_FIELDS = ("epochs", "device", "threads", "cpu_kernels", "flush_denormals")  # may differ on --resume:
# the same mathematics
COMMAND = "mnistgen vae train"

__all__ = ["TrainingInterrupted", "train_vae", "train_epoch", "reference_step", "build_model", "make_optimizer",
           "learning_rate"]


# --------------------------------------------------------------------------- small pieces


def metric_keys(config: VAEConfig) -> tuple[str, ...]:
    """The numbers every metrics line of a VAE run holds: the training ELBO and the held-out one (the test set's
    under hw, the validation set's under full)."""
    return ("train_elbo", "validation_elbo" if config.protocol == "full" else "test_elbo")


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


def training_value(config: VAEConfig) -> dict[str, str]:
    """What a metrics line's ``train_elbo`` is, where it is not SPEC's one-sample ELBO: {"train_elbo_is": ...}
    for ``--objective iwae`` (the K-sample bound L_K, above the ELBO for K > 1) or ``--train-samples`` K > 1 (the
    mean of K one-sample ELBOs); {} otherwise, so the lines of SPEC's objectives stay as they were. The held-out
    ELBO after each epoch is the one-sample ELBO under every objective (Eq. 2 for iwae)."""
    samples = config.train_samples
    if config.objective == "iwae":
        return {"train_elbo_is": f"the importance-weighted bound L_{samples} ({samples} draws per image)"}
    if samples > 1:
        equation = 1 if config.objective == "analytic" else 2
        return {"train_elbo_is": f"the mean of {samples} one-sample ELBOs (Eq. {equation})"}
    return {}


def build_model(config: VAEConfig, device: torch.device) -> VAE:
    """SPEC §2's VAE with ``config``'s widths, initialized from the global RNG (seeded by the caller)."""
    return VAE(latent_dim=config.latent_dim, hidden=config.hidden).to(device)


# --------------------------------------------------------------------------- one step, one epoch


def reference_step(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
                   analytic_kl: bool, importance_weighted: bool = False) -> torch.Tensor:
    """One Adam step on the batch's -mean ELBO, computed by the modules and differentiated by autograd.

    x (B, 784) binary images; eps (B, D_z) the standard normal draws of z = mean + std * eps, or (K, B, D_z) for
    K draws per image (:func:`mnistgen.losses.vae_elbo`: the mean of K one-sample ELBOs, or with
    ``importance_weighted`` the K-sample bound). Returns the batch's sum of that value (0-d, on the device: no
    host synchronisation).
    """
    elbo = vae_elbo(model, x, eps, analytic_kl, importance_weighted)  # (B,) per image: Eq. 1, Eq. 2 or L_K
    loss = -elbo.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    synchronize_gradients(model)  # the mean over torchrun ranks (nothing in one process)
    optimizer.step()
    return elbo.detach().sum()


def train_epoch(model: VAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, batches: list[torch.Tensor],
                *, noise: torch.Generator, analytic_kl: bool, dynamic_binarization: bool,
                step_elbos: torch.Tensor, start_step: int = 0, stop: Callable[[], bool] | None = None,
                on_step: Callable[[], Any] | None = None, accelerator: Any = None, rank: int = 0,
                world_size: int = 1, importance_weighted: bool = False, samples: int = 1) -> int:
    """The steps ``start_step..`` of one epoch; returns the number of steps done (fewer if ``stop()`` said so).

    images (N, 784) on the model's device and in its dtype (binary, or gray levels when
    ``dynamic_binarization``); batches: index tensors from ``shuffled_batches``; step_elbos (len(batches),)
    receives each step's ELBO sum. ``stop`` is polled before each step; ``on_step`` is called after each.
    ``accelerator``: None for :func:`reference_step`, else the object made by the chosen accelerator for this
    model and optimizer (its ``step(x, eps)`` replaces the reference step; its ``store()`` runs before
    returning, so the model and the optimizer are current).

    ``samples`` K > 1, or ``importance_weighted`` (the iwae objective, even with K = 1), draw eps (K, B, D_z)
    per step (with K = 1 the very numbers of the one-sample draw) for the reference step; the accelerators
    take one draw per image and step aside there (:func:`mnistgen.accelerate.vae.choose_vae_accelerator`).

    With ``world_size`` > 1 each batch is a global batch: its binary images and eps are drawn whole (the same
    draws on every rank, and as one process draws them), and this rank trains on its slice ``rank`` of them
    (:func:`mnistgen.distributed.rank_share`); step_elbos then receives the sums over that slice.
    """
    draws = samples if importance_weighted or samples > 1 else None  # None: one (B, D_z) draw, as SPEC's ELBO
    order = torch.cat(batches).to(images.device)
    epoch_images = images.index_select(0, order)  # (n, 784): one gather, then contiguous slices
    ends = np.cumsum([len(b) for b in batches]).tolist()
    try:
        for step in range(start_step, len(batches)):
            if stop is not None and stop():
                return step
            x = epoch_images[ends[step] - len(batches[step]):ends[step]]  # (B, 784)
            if dynamic_binarization:
                x = binarize_batch(x, noise)
            eps = standard_normal_draws(len(x), model.latent_dim, noise, x, draws)  # (B, D_z) or (K, B, D_z)
            if world_size > 1:  # this rank's share of the global batch and of its draws
                start, end = rank_share(len(x), rank, world_size)
                x, eps = x[start:end], eps[..., start:end, :]
            if accelerator is None:
                step_elbos[step] = reference_step(model, optimizer, x, eps, analytic_kl, importance_weighted)
            else:
                step_elbos[step] = accelerator.step(x, eps)
            if on_step is not None:
                on_step()
        return len(batches)
    finally:
        if accelerator is not None:
            accelerator.store()


# --------------------------------------------------------------------------- the loop


def train_vae(config: VAEConfig, run: RunDir, *, resume: bool = False, protocol: Protocol | None = None,
              stop: Callable[[], bool] | None = None, show_progress: bool | None = None,
              say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train (or, with ``resume``, continue) the VAE of ``config`` into ``run``; return the metric records.

    ``protocol`` defaults to the data ``config`` names (pass one to train on other tensors, e.g. in
    tests). ``stop`` is polled before every step; when it returns True the state is saved and
    :class:`TrainingInterrupted` is raised. Without ``stop``, Ctrl-C does that (a second Ctrl-C aborts).
    ``say`` gets the one-line note when a faster accelerator does not apply (default: stderr, rank 0).
    Raises :class:`mnistgen.train.common.NonFiniteLossError` if the ELBO becomes NaN or infinite (the
    checkpoint of the last completed epoch is kept).

    A config with several seeds (``--seeds``, ``--replicas``) trains them as replicas into RUN/seed=N
    (:func:`mnistgen.train.replicas.train_vae_replicas`) and returns their histories by seed.
    """
    if is_replicated(config):
        from .replicas import train_vae_replicas

        return train_vae_replicas(config, run, resume=resume, protocol=protocol, stop=stop,
                                  show_progress=show_progress, say=say)
    with ranks_agree():  # under torchrun: the same checks on every rank, an error stops them all
        validate(config)
        device = resolve_device(config.device)
        check_device(device)
        check_global_batch(config.batch_size)
    with ExitStack() as held:  # one process per run folder (rank 0 holds it)
        checkpoint = claim_run(held, run, resume, "vae", config, RESUMABLE_FIELDS, say, metric_keys(config))
        with training_context(config.threads, stop, config.flush_denormals, say) as stop_requested:
            return _train(config, run, checkpoint, protocol, device, stop_on_every_rank(stop_requested),
                          show_progress, say)


def _train(config: VAEConfig, run: RunDir, checkpoint: dict[str, Any] | None, protocol: Protocol | None,
           device: torch.device,
           stop: Callable[[], bool], show_progress: bool | None,
           say: Callable[[str], None] | None) -> list[dict[str, Any]]:
    with ranks_agree():
        order_generator = seed_everything(config.seed)  # also seeds the global RNG that initialises the weights
        model = build_model(config, device)
        choice = choose_vae_accelerator(model, config, device)  # before any file is written: "native" may refuse
        note_choice("VAE", {"": choice}, say)
        optimizer = make_optimizer(model, config.lr)
        noise = torch.Generator(device=device)
        noise.manual_seed(stream_seed(config.seed, NOISE_STREAM))
        state = RunState(run, config, {"model": model, "optimizer": optimizer},
                         {"order": order_generator, "noise": noise}, "step_elbos")
        epochs_done, start_step, saved_elbos, seconds_before, complete = 0, 0, None, 0.0, False
        if checkpoint is not None:
            epochs_done, start_step, saved_elbos, seconds_before = state.restore(checkpoint)
            complete = not epochs_left(run, config, epochs_done, start_step, say)
    if complete:
        return from_main_rank(lambda: run.read_metrics(metric_keys(config), say))
    if protocol is None:  # each machine's first process first: a download happens once
        protocol = main_rank_first(lambda: load_protocol(config.protocol, load_raw(config.data),
                                                         config.validation_size))
    with ranks_agree():
        if protocol.train_images.dim() != 2:
            raise MnistgenError(f"protocol {protocol.name!r} has no flat images; the VAE trains on hw or full")
        check_global_batch(config.batch_size, len(protocol.train_images), drop_last=False)

    history = from_main_rank(lambda: [r for r in run.read_metrics(metric_keys(config), say)
                                      if r["epoch"] <= epochs_done] if epochs_done else [])
    run.truncate_metrics(epochs_done, say=lambda line: None)  # epochs the checkpoint lacks (all on a new start)
    run.write_config(to_dict(config), kind="vae")
    if is_main_process():
        write_json(run.data, {**protocol.provenance, "dynamic_binarization": protocol.dynamic_binarization})

    dtype = next(model.parameters()).dtype
    data = protocol.to(device)  # moved once; every batch is a slice of these tensors
    train_images, eval_images = data.train_images.to(dtype), data.eval_images.to(dtype)
    rank, world_size = distributed_rank_and_size()
    analytic_kl, importance_weighted = config.objective == "analytic", config.objective == "iwae"
    accelerator = None if choice.accelerator is None else choice.accelerator.implementation(model, optimizer, config)
    steps_per_epoch = len(range(0, len(train_images), config.batch_size))
    bar = progress(total=steps_per_epoch * (config.epochs - epochs_done) - start_step, description="vae",
                   enabled=show_progress)
    try:
        for epoch in range(epochs_done, config.epochs):
            lr = learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            bar.set_description(f"vae epoch {epoch + 1}/{config.epochs}")
            order_state = order_generator.get_state()
            batches = list(shuffled_batches(len(train_images), config.batch_size, order_generator))  # global
            step_elbos = torch.zeros(len(batches), device=device, dtype=dtype)
            if start_step:
                step_elbos[:start_step] = saved_elbos.to(device)
            started = time.perf_counter()
            done = train_epoch(model, optimizer, train_images, batches, noise=noise, analytic_kl=analytic_kl,
                               dynamic_binarization=data.dynamic_binarization, step_elbos=step_elbos,
                               start_step=start_step, stop=stop, on_step=lambda: bar.update(1),
                               accelerator=accelerator, rank=rank, world_size=world_size,
                               importance_weighted=importance_weighted, samples=config.train_samples)
            sum_over_ranks(step_elbos[start_step:done])  # the sums over the global batches (done: the same everywhere)
            train_seconds = seconds_before + time.perf_counter() - started
            elbos = end_steps(state, epoch=epoch, done=done, steps=len(batches), step_values=step_elbos,
                              value_names=("the training ELBO",), order_state=order_state, seconds=train_seconds,
                              command=COMMAND)
            evaluation = torch.Generator(device=device)
            evaluation.manual_seed(stream_seed(config.seed, EVAL_STREAM, epoch))
            eval_elbo = float(elbo_samples(model, eval_images, samples=1, analytic_kl=analytic_kl,
                                           generator=evaluation).mean())
            record = record_epoch(state, {
                "epoch": epoch + 1, "train_elbo": float(elbos.sum()) / sum(len(b) for b in batches),
                f"{data.eval_name}_elbo": eval_elbo, "lr": lr, "train_seconds": train_seconds,
                "seconds": seconds_before + time.perf_counter() - started, "trained_by": choice.name,
                **training_value(config)})
            history.append(record)
            bar.set_postfix(train=f"{record['train_elbo']:.2f}", **{data.eval_name: f"{eval_elbo:.2f}"})
            start_step, seconds_before = 0, 0.0
    finally:
        bar.close()
    return history
