"""The VAE's accelerators: two faster ways to take the reference training step, their checks, and the engine that
takes the steps of a run's replicas.

The reference step (:func:`mnistgen.models.vae.train_step`) is autograd through the model's forward (its training
objective) and the optimizer's step. An accelerator replaces that whole step for SPEC §2's network (any hidden width
and latent size, both objectives of SPEC with one draw of z per image, float32; ``--objective iwae`` and
``--train-samples`` K > 1 train on the reference step):

- ``native`` (CPU): mnistgen's C kernels (:class:`mnistgen.kernels.vae.NativeVAEStep`): the forward and
  backward pass with sums over the images' nonzero pixels instead of the two products that read them,
  PyTorch's matrix multiply for the other three, and Adam over flat buffers;
- ``torch`` (every device): the gradient derived by hand (:func:`elbo_with_gradients`) instead of recorded by
  autograd, then the optimizer's own step.

:func:`choose_vae_accelerator` picks one for ``--cpu-kernels`` (see :func:`mnistgen.accelerate.choose`);
:func:`vae_engine` how the replicas' steps are taken (:mod:`mnistgen.accelerate.engines`); :func:`held_out_elbo` the
held-out ELBO after each epoch, by the C kernels' forward where they train.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import VAEConfig
from ..distributed import average_gradients, average_over_ranks
from ..kernels.vae import NativeVAEStep
from ..losses import ELBO_CHUNK_IMAGES, elbo_samples, standard_normal_draws
from ..models import vae as vae_model
from ..models.vae import IMAGE_PIXELS, VAE, draws_per_image
from . import (
    PROBE_SEED,
    Accelerator,
    Choice,
    choose,
    gradients_of,
    layout_mismatch,
    on_meta_device,
    parameter_mismatch,
    probe_generator,
    probe_mismatch,
    probing,
)
from .engines import Bound, Engine, OneAfterAnother, Replica, choose_engine

OBJECTIVES = ("mc", "analytic")  # the ELBO forms both accelerators compute (Eq. 2 and Eq. 1)
PROBE_IMAGES = 8  # images in the start-up probe's batch
PROBE_DENSITY = 0.2  # fraction of lit pixels in the probe's random binary images (MNIST: about 0.13)


def spec_layers(config: VAEConfig) -> dict[str, nn.Module]:
    """The leaf modules of SPEC §2's VAE with ``config``'s widths, as the accelerators read them."""
    hidden, latent = config.hidden, config.latent_dim
    return {"encoder.hidden": nn.Linear(IMAGE_PIXELS, hidden), "encoder.mean": nn.Linear(hidden, latent),
            "encoder.logvar": nn.Linear(hidden, latent), "decoder.hidden": nn.Linear(latent, hidden),
            "decoder.output": nn.Linear(hidden, IMAGE_PIXELS)}


# --------------------------------------------------------------------------- the hand-derived step


@torch.no_grad()
def elbo_with_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool) -> torch.Tensor:
    """Forward pass and hand-derived backward pass of loss = -mean_b ELBO_b; fills every ``.grad``.

    x (B, 784) binary images; eps (B, D_z) standard normal draws (z = mean + exp(logvar / 2) * eps).
    Returns the sum over the batch of the ELBO estimates (a 0-d tensor on the device: no host sync).

    The same mathematics as autograd through :func:`mnistgen.losses.vae_elbo` for SPEC §2's network (the
    probe and the tests compare both): with s = 1/B, l the decoder's logits, h1 = tanh(a1) the encoder's
    and h2 = tanh(a2) the decoder's hidden layer, and std = exp(logvar / 2):

    - dL/dl = s (sigmoid(l) - x), since log p(x|z) = sum x l - softplus(l);
    - back through the decoder to dL/dz = (dL/da2) W_dec1 (+ s z, from -log p(z), in Eq. 2);
    - z = mean + std eps gives dL/dmean = dL/dz and dL/dlogvar = dL/dz * std * eps / 2;
    - Eq. 2: log q(z|x) = -1/2 sum(eps^2 + logvar + log 2 pi) at z = mean + std eps, so its total
      derivative is 0 in the mean and -1/2 in logvar (its z-path and direct terms cancel);
    - Eq. 1: KL = 1/2 sum(mean^2 + exp(logvar) - logvar - 1) adds s mean and s (exp(logvar) - 1) / 2;
    - back through the two heads (their gradients add up in h1) and the encoder's hidden layer."""
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


def torch_vae_steps(model: VAE, optimizer: torch.optim.Optimizer, config: VAEConfig) -> Bound:
    """Training steps with PyTorch's kernels: :func:`elbo_with_gradients`, then ``optimizer.step()``; the
    model's and the optimizer's own tensors are the state."""
    analytic_kl = config.objective == "analytic"

    def step(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:  # x (B, 784), eps (B, D_z) -> the ELBO sum, ()
        elbo_sum = elbo_with_gradients(model, x, eps, analytic_kl)
        average_gradients(optimizer)
        optimizer.step()
        return elbo_sum

    return Bound(step, "torch")


def _torch_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool):
    elbo_sum = elbo_with_gradients(model, x, eps, analytic_kl)
    return elbo_sum, [parameter.grad for parameter in model.parameters()]


# --------------------------------------------------------------------------- the C kernels


class NativeVAESteps:
    """Training steps with mnistgen's C kernels (:class:`mnistgen.kernels.vae.NativeVAEStep`), for batches of at most
    ``config.batch_size`` images. The weights and Adam's state are copied in once, here, and live in the kernels'
    flat buffers until :meth:`store`. Adam's hyper-parameters are read from the optimizer at every step (the
    learning rate schedule sets them per epoch)."""

    name = "native"

    def __init__(self, model: VAE, optimizer: torch.optim.Optimizer, config: VAEConfig):
        self.optimizer = optimizer
        self.analytic_kl = config.objective == "analytic"
        self.native = NativeVAEStep(model, config.batch_size)
        self.native.load(optimizer)
        self.evaluator: NativeVAEStep | None = None  # buffers of 1,000 images for held_out_elbo

    def step(self, x: torch.Tensor, eps: torch.Tensor) -> float:
        """One step on x (B, 784) with the draws eps (B, D_z); returns the batch's ELBO sum."""
        elbo_sum = self.native.compute_gradients(x, eps, self.analytic_kl)
        average_over_ranks([self.native.gradients])
        group = self.optimizer.param_groups[0]
        self.native.adam_step(group["lr"], group["betas"], group["eps"])
        return elbo_sum

    def store(self) -> None:
        self.native.store(self.optimizer)


def _native_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool):
    native = NativeVAEStep(model, len(x))
    native.load(torch.optim.Adam(model.parameters()))
    elbo_sum = native.compute_gradients(x, eps, analytic_kl)
    return torch.tensor(elbo_sum), native.parameter_gradients()


# --------------------------------------------------------------------------- checks


def _probe(model: VAE, config: VAEConfig, gradients: Callable) -> str | None:
    """The model's forward (the step's objective, differentiated by autograd) against the accelerator's
    ``gradients(model, x, eps, analytic_kl)`` on a small random batch: why the objective or a gradient differs."""
    with probing(model, model) as (reference, accelerated):
        x, eps = probe_batch(config, next(model.parameters()), PROBE_IMAGES, probe_generator(torch.device("cpu")))
        values = reference(x, eps, config.objective)  # (B,)
        names, parameters = zip(*reference.named_parameters(), strict=True)
        expected = gradients_of(-values.mean(), parameters)
        value_sum, actual = gradients(accelerated, x, eps, config.objective == "analytic")
        return probe_mismatch([("the ELBO", value_sum, values.detach().sum())] + [
            (f"the gradient of {name}", mine, theirs)
            for name, mine, theirs in zip(names, actual, expected, strict=True)])


def probe_batch(config: VAEConfig, like: torch.Tensor, images: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs of a step: x (images, 784) binary with :data:`PROBE_DENSITY` lit pixels, eps ([K,] images,
    D_z), drawn on the CPU from ``generator``, on ``like``'s device and in its dtype."""
    x = (torch.rand(images, IMAGE_PIXELS, generator=generator) < PROBE_DENSITY).double()
    draws = draws_per_image(config)
    eps = torch.randn((*((draws,) if draws else ()), images, config.latent_dim), generator=generator,
                      dtype=torch.float64)
    return x.to(like), eps.to(like)


def _common_mismatch(model: VAE, config: VAEConfig, device: torch.device) -> str | None:
    if config.objective not in OBJECTIVES:
        return f"the objective {config.objective!r} is not one it computes ({', '.join(OBJECTIVES)})"
    if config.train_samples != 1:
        return f"it draws one z per image, not --train-samples {config.train_samples}"
    return (layout_mismatch(model, on_meta_device(lambda: spec_layers(config)), "the VAE")
            or parameter_mismatch(model, device))


def check_torch(model: VAE, config: VAEConfig, device: torch.device) -> str | None:
    """Why the hand-derived gradient does not apply to ``model`` and ``config``, or None."""
    return _common_mismatch(model, config, device) or _probe(model, config, _torch_gradients)


def check_native(model: VAE, config: VAEConfig, device: torch.device) -> str | None:
    """Why the C kernels' step does not apply to ``model`` and ``config``, or None (the probe raises
    NativeKernelsUnavailable where the library cannot be built here)."""
    return _common_mismatch(model, config, device) or _probe(model, config, _native_gradients)


StepFactory = Callable[[VAE, torch.optim.Optimizer, VAEConfig], Bound | NativeVAESteps]
NATIVE = Accelerator[StepFactory](name="native", description="mnistgen's C kernels", native=True, devices=("cpu",),
                                  check=check_native, implementation=NativeVAESteps)
TORCH = Accelerator[StepFactory](name="torch", description="the hand-derived gradient in PyTorch's kernels",
                                 native=False, devices=("cpu", "cuda", "mps"), check=check_torch,
                                 implementation=torch_vae_steps)
ACCELERATORS = (NATIVE, TORCH)  # fastest first


def choose_vae_accelerator(model: VAE, optimizer: torch.optim.Optimizer, config: VAEConfig,
                           device: torch.device) -> Choice[StepFactory]:
    """The accelerator that trains ``model`` with ``optimizer`` under ``config.cpu_kernels`` on ``device`` (None: the
    reference step) and the reasons faster ones do not apply; ``--cpu-kernels native`` where they do not is a
    one-line error."""
    return choose(ACCELERATORS, config.cpu_kernels, device, optimizer, model, config, device)


def held_out_elbo(engine: Engine, k: int, model: VAE, images: torch.Tensor, analytic_kl: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """:func:`mnistgen.losses.elbo_samples` of one sample, (N,), of replica k of ``engine`` (``model``), its very draws:
    by the C kernels' forward where they train it (their probe checked it against the model's), else the model's."""
    runner = engine.runners[k] if isinstance(engine, OneAfterAnother) else None
    if not isinstance(runner, NativeVAESteps):
        return elbo_samples(model, images, 1, analytic_kl, generator)[0]
    holder = engine.runners[0]  # one evaluator for every replica (the same shapes), one call per elbo_samples chunk
    if holder.evaluator is None:
        holder.evaluator = NativeVAEStep(model, ELBO_CHUNK_IMAGES)
    evaluator = holder.evaluator
    evaluator.parameters.copy_(runner.native.parameters)  # replica k's weights, trained so far (the same layout)
    return torch.cat([evaluator.elbo(chunk, standard_normal_draws(len(chunk), model.latent_dim, generator, chunk),
                                     analytic_kl) for chunk in images.split(ELBO_CHUNK_IMAGES)])


def vae_engine(replicas: list[Replica], config: VAEConfig, device: torch.device, choice: Choice[StepFactory],
               say: Callable[[str], None]) -> Engine:
    """How the steps of the replicas (each ``Replica({"model": vae}, {"model": optimizer})``) are taken: see
    :func:`mnistgen.accelerate.engines.choose_engine`; ``choice``: the accelerator of each replica's own step."""

    def bind(replica: Replica) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        model, optimizer = replica.modules["model"], replica.optimizers["model"]
        return lambda x, eps: vae_model.train_step(model, optimizer, x, eps, config.objective)

    def runner(replica: Replica) -> NativeVAESteps | Bound:
        if choice.accelerator is None:
            return Bound(bind(replica))
        return choice.accelerator.implementation(replica.modules["model"], replica.optimizers["model"], config)

    like = next(replicas[0].modules["model"].parameters())

    def example(k: int, images: int) -> tuple[torch.Tensor, torch.Tensor]:
        return probe_batch(config, like, images, torch.Generator().manual_seed(PROBE_SEED + k))

    return choose_engine(replicas, bind=bind, step=bind, step_name="reference", runner=runner,
                         accelerated=choice.accelerator is not None, example=example, batch_size=config.batch_size,
                         cpu_kernels=config.cpu_kernels, fixed_lr=config.lr_schedule == "none", device=device, say=say)
