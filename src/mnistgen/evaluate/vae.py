"""Measuring and drawing a trained VAE: ELBO and importance-weighted estimates of log p(x), latent codes,
decodes and samples (pure: tensors in, tensors out), and the run-level operations behind ``mnistgen vae
eval|plot|sample``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import VAEConfig, VAEEvalConfig
from ..data.protocols import Protocol, binarize_batch, load_protocol
from ..data.registry import DATASETS
from ..data.sources import load_raw
from ..device import resolve_device
from ..distributed import is_main_process
from ..distributions import log_normal_logvar, log_standard_normal, sample_bernoulli
from ..errors import MnistgenError, UsageError
from ..files import read_json, write_json
from ..losses import elbo_samples
from ..models.vae import IMAGE_SIZE, VAE
from ..runs import RunDir
from .replicas import seeds_summary

EVAL_CHUNK_IMAGES = 1000  # images per forward pass when evaluating a data set
IW_CHUNK_ELEMENTS = 1 << 22  # logits per importance-sampling chunk (16 MiB in float32: in the L3 cache), whatever K is
IW_IMAGES_PER_GROUP = 100  # images whose K samples are drawn together

SAMPLE_ROWS = 10  # SPEC figure 1: ten z from the prior
INTERPOLATION_PAIRS = 3  # SPEC figure 3: three pairs of training images...
INTERPOLATION_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # ...and alpha = 0, 0.1, ..., 1
MANIFOLD_POINTS = 20  # the manifold figure: a 20 x 20 grid of latent points...
MANIFOLD_HALF_WIDTH = 3.0  # ...over [-3, 3]^2, where the prior N(0, I) puts 99.5% of its mass
HEADLINES = ("test_elbo", "train_elbo", "test_iw_log_likelihood")  # what a replica run's eval.json summarizes


@torch.inference_mode()
def iw_log_likelihood(model: VAE, images: torch.Tensor, k: int = 1000, generator: torch.Generator | None = None,
                      max_elements: int = IW_CHUNK_ELEMENTS,
                      on_group: Callable[[int], Any] | None = None) -> torch.Tensor:
    """log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x) (the one-sample ELBO at K = 1):
    (N, 784) -> (N,). Memory does not grow with K: chunks of at most ``max_elements`` logits (the draws depend on
    it), each logit's x l - softplus(l) in place, combined by a running logsumexp. ``on_group(n)`` is called after
    each group of n images."""
    results = torch.empty(len(images), device=images.device, dtype=images.dtype)
    for start in range(0, len(images), IW_IMAGES_PER_GROUP):
        x = images[start:start + IW_IMAGES_PER_GROUP]  # (b, 784)
        b, pixels = x.shape
        mean, logvar = model.encoder(x)  # (b, D_z) each
        std = torch.exp(0.5 * logvar)
        per_chunk = max(1, max_elements // (b * pixels))  # samples of every image in one chunk
        running = torch.full((b,), -math.inf, device=x.device, dtype=x.dtype)
        for done in range(0, k, per_chunk):
            n = min(per_chunk, k - done)
            eps = torch.randn((n, b, mean.shape[1]), generator=generator, device=x.device, dtype=x.dtype)
            z = (mean + std * eps).reshape(n * b, -1)  # (n*b, D_z), sample-major
            logits = model.decoder.logits(z).view(n, b, pixels)
            softplus = F.softplus(logits)
            log_weights = logits.mul_(x).sub_(softplus).sum(2) + (  # log p(x|z) = sum x l - softplus(l), in place
                log_standard_normal(z) - log_normal_logvar(z, mean.repeat(n, 1), logvar.repeat(n, 1))).view(n, b)
            running = torch.logaddexp(running, torch.logsumexp(log_weights, dim=0))
        results[start:start + b] = running - math.log(k)
        if on_group is not None:
            on_group(b)
    return results


@torch.inference_mode()
def log_marginal_quadrature(model: VAE, images: torch.Tensor, half_width: float = 6.0,
                            points: int = 301) -> torch.Tensor:
    """log p(x) by the midpoint rule on ``points`` x ``points`` cells over [-half_width, half_width]^2 of a 2-D latent
    plane: (N, 784) -> (N,). No encoder: an independent check, good where p(z|x) is wider than a cell."""
    if model.latent_dim != 2:
        raise MnistgenError(f"quadrature needs a 2-D latent space, this model has {model.latent_dim}")
    step = 2.0 * half_width / points
    axis = -half_width + step * (0.5 + torch.arange(points, device=images.device, dtype=images.dtype))
    z = torch.cartesian_prod(axis, axis)  # (points^2, 2) cell centres
    log_joint = []
    for start in range(0, len(z), EVAL_CHUNK_IMAGES):
        chunk = z[start:start + EVAL_CHUNK_IMAGES]
        logits = model.decoder.logits(chunk)  # (c, 784)
        # log p(x|z) = x . l - sum softplus(l): one matrix product for all images and grid points
        log_likelihood = images @ logits.t() - F.softplus(logits).sum(dim=1)  # (N, c)
        log_joint.append(log_likelihood + log_standard_normal(chunk))
    return torch.logsumexp(torch.cat(log_joint, dim=1), dim=1) + 2.0 * math.log(step)


@torch.inference_mode()
def encode_means(model: VAE, images: torch.Tensor, chunk_size: int = EVAL_CHUNK_IMAGES) -> torch.Tensor:
    """The mean of q(z|x) of each image: (N, 784) -> (N, D_z)."""
    return torch.cat([model.encoder(images[s:s + chunk_size])[0] for s in range(0, len(images), chunk_size)])


@torch.inference_mode()
def decode(model: VAE, z: torch.Tensor, chunk_size: int = EVAL_CHUNK_IMAGES) -> torch.Tensor:
    """The decoder's probabilities p(x|z): (M, D_z) -> (M, 784)."""
    return torch.cat([model.decoder(z[s:s + chunk_size]) for s in range(0, len(z), chunk_size)])


@torch.inference_mode()
def sample_prior(model: VAE, n: int, generator: torch.Generator | None = None,
                 binary: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws z ~ N(0, I) and their images: (z (n, D_z), p(x|z) (n, 784), or x ~ p(x|z) if ``binary``)."""
    device = next(model.parameters()).device
    z = torch.randn((n, model.latent_dim), generator=generator, device=device)
    probabilities = decode(model, z)
    return z, sample_bernoulli(probabilities, generator) if binary else probabilities


@dataclass(frozen=True)
class TrainedVAE:
    config: VAEConfig
    model: VAE
    epochs: int  # completed epochs in the checkpoint
    steps: int  # steps of the next epoch already taken (a run stopped by Ctrl-C mid-epoch), else 0
    device: torch.device


def check_same_data(run: RunDir, provenance: dict) -> None:
    """Refuse to draw other images than the run's (e.g. the bundled sample standing in for missing MNIST)."""
    recorded = read_json(run.data) if run.data.is_file() else {}
    for key in ("dataset", "sample"):
        if key in recorded and recorded[key] != provenance.get(key):
            raise MnistgenError(f"{run.path}: trained on {recorded.get('title', recorded['dataset'])} (sample: "
                                f"{recorded.get('sample')}), but only {provenance.get('title')} (sample: "
                                f"{provenance.get('sample')}) could be loaded now; pass the data's folder with "
                                "MNISTGEN_DATA_DIR")


def load_run_protocol(run: RunDir, config: VAEConfig) -> Protocol:
    """The protocol of a trained run, from the very data it was trained on (or a one-line error): unless ``config``
    names a folder, the data are pinned (offline) to the one data.json records, so that a run that found its data
    through $MNISTGEN_DATA_DIR reads the same images today, or fails, never another dataset's."""
    recorded = read_json(run.data) if run.data.is_file() else {}
    if config.data.data_dir is None and recorded.get("folder") and not recorded.get("sample"):
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=recorded["folder"],
                                                                      offline=True))
    protocol = load_protocol(config.protocol, load_raw(config.data), config.validation_size)
    check_same_data(run, protocol.provenance)
    return protocol


def load_trained_vae(run: RunDir, device: str = "auto") -> TrainedVAE:
    config = run.read_config_as("vae", VAEConfig, "a VAE run")
    state = run.load_checkpoint(map_location="cpu")
    model = VAE(latent_dim=config.latent_dim, hidden=config.hidden)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise MnistgenError(f"{run.checkpoint}: weights do not fit the run's config ({type(exc).__name__})") from None
    resolved = resolve_device(device)
    return TrainedVAE(config, model.to(resolved).eval(), int(state["epoch"]), int(state["step"]), resolved)


def evaluate_run(run: RunDir, options: VAEEvalConfig | None = None,
                 on_progress: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """The test ELBO (mean over images and ``options.samples`` draws), the K = ``options.iw`` estimate of log p(x)
    and the training ELBO, written to RUN/eval.json; ``on_progress(done, total)``: test images of the estimate."""
    options = options or VAEEvalConfig()
    trained = load_trained_vae(run, options.device)
    config, model = trained.config, trained.model
    seed = config.seed if options.seed is None else options.seed
    data = load_run_protocol(run, config).to(trained.device)
    analytic_kl = config.objective == "analytic"
    generator = torch.Generator(device=trained.device).manual_seed(seed)
    train_images = data.train_images
    if data.dynamic_binarization:
        train_images = binarize_batch(train_images, generator)
    test = elbo_samples(model, data.test_images, options.samples, analytic_kl, generator)  # (S, N)
    train = elbo_samples(model, train_images, options.samples, analytic_kl, generator)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, len(data.test_images))

    iw = iw_log_likelihood(model, data.test_images, options.iw, generator, on_group=advance)
    per_draw = test.mean(dim=1)  # (S,): the test-set mean of each draw
    standard_error = float(per_draw.std() / math.sqrt(options.samples)) if options.samples > 1 else None
    result = {"test_elbo": float(test.mean()), "test_elbo_mc_standard_error": standard_error,
              "test_iw_log_likelihood": float(iw.mean()), "train_elbo": float(train.mean()), "iw_samples": options.iw,
              "elbo_samples": options.samples, "objective": config.objective, "test_images": len(data.test_images),
              "train_images": len(train_images), "epochs": trained.epochs, "steps_into_next_epoch": trained.steps,
              "seed": seed, "device": str(trained.device)}
    if is_main_process():
        write_json(run.eval, result)
    return result


def evaluate_replicas(run: RunDir, options: VAEEvalConfig | None = None,
                      on_progress: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """:func:`evaluate_run` of each seed of a replica run, then RUN/eval.json: every seed's result and the summary of
    :data:`HEADLINES` (:func:`mnistgen.evaluate.replicas.seeds_summary`); ``on_progress`` counts all seeds' images."""
    run.read_config_as("vae", VAEConfig, "a VAE run")
    replicas = run.replicas()
    if not replicas:
        raise MnistgenError(f"{run.path}: a single-seed run, not a replica run")
    per_seed = {}
    for index, (seed, seed_run) in enumerate(replicas):
        def advance(done: int, total: int, index: int = index) -> None:
            if on_progress is not None:
                on_progress(index * total + done, len(replicas) * total)

        per_seed[seed] = evaluate_run(seed_run, options, advance)
    aggregate = seeds_summary(per_seed, HEADLINES)
    if is_main_process():
        write_json(run.eval, aggregate)
    return aggregate


def sample_run(run: RunDir, n: int, binary: bool = False, options: VAEEvalConfig | None = None) -> np.ndarray:
    """n images from the prior of a trained run: (n, 28, 28) float32 in [0, 1] (decoder means, or binary draws)."""
    if n <= 0:
        raise UsageError(f"--n must be a positive integer, got {n}")
    options = options or VAEEvalConfig()
    trained = load_trained_vae(run, options.device)
    seed = trained.config.seed if options.seed is None else options.seed
    _, images = sample_prior(trained.model, n, torch.Generator(device=trained.device).manual_seed(seed), binary)
    return images.reshape(n, IMAGE_SIZE, IMAGE_SIZE).float().cpu().numpy()


def write_figures(run: RunDir, options: VAEEvalConfig | None = None) -> list[Path]:
    """RUN/figures/{samples,latent,interpolation,manifold (2-D latents only),curves}.png; returns their paths. A
    replica run's figures show its first seed's model, and its training curves every seed's."""
    from ..plots import vae as plots

    options = options or VAEEvalConfig()
    run.read_config_as("vae", VAEConfig, "a VAE run")
    replicas = run.replicas()
    source = replicas[0][1] if replicas else run
    trained = load_trained_vae(source, options.device)
    config, model, device = trained.config, trained.model, trained.device
    if config.latent_dim < 2:
        raise MnistgenError(f"the figures need at least 2 latent dimensions; this run has {config.latent_dim}")
    seed = config.seed if options.seed is None else options.seed
    data = load_run_protocol(source, config).to(device)
    classes = DATASETS[config.data.dataset].classes if config.data.dataset in DATASETS else None
    train_images = data.train_images
    if data.dynamic_binarization:  # the model saw binary draws of these gray images: encode one such draw
        train_images = binarize_batch(train_images, torch.Generator(device=device).manual_seed(seed))

    def to_numpy(images: torch.Tensor) -> np.ndarray:
        return images.reshape(*images.shape[:-1], IMAGE_SIZE, IMAGE_SIZE).float().cpu().numpy()

    generator = torch.Generator(device=device).manual_seed(seed)
    z, probabilities = sample_prior(model, SAMPLE_ROWS, generator)
    binary = sample_bernoulli(probabilities, generator)
    figures = {"samples": plots.samples_figure(to_numpy(probabilities), to_numpy(binary), z.cpu().numpy())}

    means = encode_means(model, train_images)
    figures["latent"] = plots.latent_figure(means.cpu().numpy(), data.train_labels.cpu().numpy(), classes,
                                            f"{len(means):,} training images ({config.protocol} protocol)")

    labels, draws = data.train_labels.cpu(), torch.Generator().manual_seed(seed)
    if len(torch.unique(labels)) < 2:
        raise MnistgenError("interpolation needs images of at least two classes")
    alpha = torch.tensor(INTERPOLATION_ALPHAS, dtype=means.dtype, device=means.device)[:, None]
    rows, pair_labels = [], []
    while len(rows) < INTERPOLATION_PAIRS:  # pairs of images of different classes, each along SPEC's line z_alpha
        a, b = torch.randint(len(labels), (2,), generator=draws).tolist()
        if labels[a] != labels[b]:
            rows.append(to_numpy(decode(model, alpha * means[a] + (1.0 - alpha) * means[b])))
            pair_labels.append((int(labels[a]), int(labels[b])))
    figures["interpolation"] = plots.interpolation_figure(np.stack(rows), pair_labels, INTERPOLATION_ALPHAS, classes)

    if config.latent_dim == 2:  # a grid in image order: rows from high z2 to low, columns from low z1 to high
        axis = np.linspace(-MANIFOLD_HALF_WIDTH, MANIFOLD_HALF_WIDTH, MANIFOLD_POINTS)
        z1, z2 = np.meshgrid(axis, axis[::-1])
        grid = torch.from_numpy(np.stack([z1.ravel(), z2.ravel()], axis=1).astype(np.float32))  # (P*P, 2)
        figures["manifold"] = plots.manifold_figure(to_numpy(decode(model, grid.to(device))), axis)
    if replicas:
        figures["curves"] = plots.replica_curves_figure({seed: seed_run.read_metrics() for seed, seed_run in replicas})
    else:
        figures["curves"] = plots.curves_figure(run.read_metrics())

    return run.save_figures(figures)
