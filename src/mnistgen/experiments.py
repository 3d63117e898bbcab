"""The two experiments of docs/theory.md §12 (what they measure, and why) on a trained VAE: computations on tensors,
then :func:`run_elbo_estimators` and :func:`run_fixed_encoder`, which write RUN/experiments/<name>.{json,png}."""

from __future__ import annotations

import dataclasses
import io
import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig, ElboEstimatorsConfig, FixedEncoderConfig, VAEConfig, to_dict
from .distributed import is_main_process
from .distributions import log_bernoulli_logits
from .errors import MnistgenError
from .evaluate.vae import load_run_protocol, load_trained_vae
from .files import atomic_write, read_json, save_figure, write_json
from .losses import elbo_analytic, elbo_mc
from .plots.experiments import elbo_estimators_figure, fixed_encoder_figure
from .progress import progress
from .runs import RunDir, environment
from .theory import kl_diag_gaussians, kl_estimator_noise_variance

ELBO_ESTIMATORS = "elbo-estimators"  # experiment names: the CLI subcommands and the files they write
FIXED_ENCODER = "fixed-encoder"
EXPERIMENTS_FOLDER = "experiments"  # RUN/experiments/<name>.{json,png}
EXAMPLE_IMAGES = 8  # test images shown in the fixed-encoder figure
SHARED_FIT_TOLERANCE = 1e-9  # L-BFGS stops when the gradient's largest entry is below this


@dataclass(frozen=True)
class VAEParts:
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (B, 784) -> mu, logvar (B, D)
    decode_logits: Callable[[torch.Tensor], torch.Tensor]  # (B, D) -> logits of p(x|z), (B, 784)
    parameter_groups: dict[str, Sequence[torch.nn.Parameter]]  # {"encoder": [...], "decoder": [...]}
    latent_dim: int


class _RunningMoments:
    """Running mean and variance of a vector: float64 sums (on the CPU) of deviations from the first value,
    which keeps the sum of squares free of cancellation."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.total_squares: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", torch.float64, copy=True)  # a copy: modified in place below
        if self.shift is None:
            self.shift, self.total, self.total_squares = value.clone(), torch.zeros_like(value), torch.zeros_like(value)
        deviation = value.sub_(self.shift)
        self.total.add_(deviation)
        self.total_squares.addcmul_(deviation, deviation)
        self.count += 1

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.total / self.count

    def variance(self) -> torch.Tensor:
        return (self.total_squares - self.total.square() / self.count) / (self.count - 1)


def _flat_gradients(value: torch.Tensor, groups: dict[str, Sequence[torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """d value / d parameters, one flat vector per group."""
    parameters = [p for group in groups.values() for p in group]
    grads = iter(torch.autograd.grad(value, parameters, retain_graph=True))
    return {name: torch.cat([next(grads).reshape(-1) for _ in group]) for name, group in groups.items()}


def elbo_estimator_study(parts: VAEParts, images: torch.Tensor, draws: int, generator: torch.Generator,
                         show_progress: bool | None = None) -> dict:
    """Variance of Eq. 1 and Eq. 2 over ``draws`` independent eps (B, D), for each image (B, 784) and for the
    gradients of each estimator's batch mean per parameter group (times B: per image, docs/theory.md §12.1)."""
    if draws < 2:
        raise ValueError("a variance needs at least 2 draws")
    batch = images.shape[0]
    device = images.device
    values = {eq: torch.empty(draws, batch, dtype=torch.float64) for eq in ("eq1", "eq2")}
    moments = {(eq, group): _RunningMoments() for eq in values for group in parts.parameter_groups}
    decoder_difference = 0.0
    with progress(draws, "elbo-estimators draws", enabled=show_progress) as bar:
        for k in range(draws):
            eps = torch.randn(batch, parts.latent_dim, generator=generator).to(device)
            mu, logvar = parts.encode(images)
            z = mu + (0.5 * logvar).exp() * eps
            logits = parts.decode_logits(z)  # one decoder pass serves both: they differ only in the KL term
            eq1, eq2 = elbo_analytic(images, logits, mu, logvar), elbo_mc(images, logits, z, mu, logvar)  # (B,) each
            values["eq1"][k], values["eq2"][k] = eq1.detach().cpu(), eq2.detach().cpu()
            # one backward pass per estimator, for all parameters at once, then split into the groups
            g1 = _flat_gradients(eq1.mean(), parts.parameter_groups)
            g2 = _flat_gradients(eq2.mean(), parts.parameter_groups)
            for group in parts.parameter_groups:
                moments["eq1", group].add(g1[group])
                moments["eq2", group].add(g2[group])
            if "decoder" in parts.parameter_groups:
                decoder_difference = max(decoder_difference, float((g1["decoder"] - g2["decoder"]).abs().max()))
            bar.update(1)

    with torch.no_grad():
        mu, logvar = parts.encode(images)
        predicted_noise = kl_estimator_noise_variance(mu.cpu().double(), logvar.cpu().double()).numpy()
    per_image = {
        "eq1_mean": values["eq1"].mean(0).numpy(), "eq2_mean": values["eq2"].mean(0).numpy(),
        "eq1_variance": values["eq1"].var(0).numpy(), "eq2_variance": values["eq2"].var(0).numpy(),
        "kl_noise_variance_measured": (values["eq2"] - values["eq1"]).var(0).numpy(),
        "kl_noise_variance_predicted": predicted_noise,
    }
    # z statistic of the difference of the two per-image means (paired: same eps)
    difference = values["eq2"] - values["eq1"]
    difference_se = difference.std(0) / math.sqrt(draws)
    z_scores = (difference.mean(0) / difference_se.clamp_min(1e-300)).numpy()
    gradients = {}
    for (eq, group), moment in moments.items():
        trace = float(moment.variance().sum())
        signal = float(moment.mean.square().sum())
        gradients.setdefault(group, {})[eq] = {
            "trace_covariance_batch_mean": trace,
            "trace_covariance_per_image": trace * batch,
            "squared_norm_of_mean": signal,
            "signal_to_noise": signal / trace if trace > 0 else math.inf,
            "parameters": int(moment.mean.numel()),
        }
    overall = {eq: {"mean": float(v.mean()), "standard_error": float(v.mean(1).std() / math.sqrt(draws))}
               for eq, v in values.items()}
    return {
        "images": batch, "draws": draws,
        "elbo": overall,
        "per_image": per_image,
        "summary": {
            "eq1_variance_mean": float(per_image["eq1_variance"].mean()),
            "eq2_variance_mean": float(per_image["eq2_variance"].mean()),
            "eq1_variance_median": float(np.median(per_image["eq1_variance"])),
            "eq2_variance_median": float(np.median(per_image["eq2_variance"])),
            "fraction_of_images_where_eq1_has_lower_variance": float(
                np.mean(per_image["eq1_variance"] < per_image["eq2_variance"])),
            "kl_noise_variance_measured_mean": float(per_image["kl_noise_variance_measured"].mean()),
            "kl_noise_variance_predicted_mean": float(predicted_noise.mean()),
            "largest_abs_z_of_mean_difference": float(np.abs(z_scores).max()),
        },
        "gradients": gradients,
        "decoder_gradient_max_abs_difference": decoder_difference,
        "example_draws": {"eq1": values["eq1"][:, 0].numpy(), "eq2": values["eq2"][:, 0].numpy()},
    }


def log_likelihood_matrix(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x_n | z_s) for every image n and latent point s: (N, 784), (S, 784) logits -> (N, S). Linear in x, so
    one matrix product per term; for gray levels in [0, 1] it is the expectation over x ~ Bernoulli(images)."""
    return images @ F.logsigmoid(logits).T + (1.0 - images) @ F.logsigmoid(-logits).T


def shared_q_elbos(parts: VAEParts, images: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                   eps: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    """ELBO(x_n) with the same q = N(mu, diag exp(logvar)) for every image, by Monte Carlo over the S
    rows of eps (S, D) shared by all images, the KL in closed form. -> (N,)."""
    with torch.no_grad():
        logits = parts.decode_logits(mu + (0.5 * logvar).exp() * eps)  # (S, 784)
        kl = kl_diag_gaussians(mu[None], logvar[None])[0]
        pieces = [log_likelihood_matrix(images[i:i + chunk], logits).mean(1) for i in range(0, len(images), chunk)]
    return torch.cat(pieces) - kl


def fit_shared_gaussian(parts: VAEParts, mean_image: torch.Tensor, eps: torch.Tensor, max_iterations: int,
                        start_mu: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The diagonal Gaussian q maximizing the training-set mean ELBO, a function of ``mean_image`` (784,) over the fixed
    eps (S, D), from N(start_mu (0), I) by L-BFGS with a strong-Wolfe line search (it never accepts a lower value)."""
    device = mean_image.device
    start = torch.zeros(parts.latent_dim) if start_mu is None else start_mu
    mu = start.clone().to(device).requires_grad_(True)
    logvar = torch.zeros(parts.latent_dim, device=device, requires_grad=True)

    def objective() -> torch.Tensor:  # mean training ELBO under the shared q
        logits = parts.decode_logits(mu + (0.5 * logvar).exp() * eps)
        return log_likelihood_matrix(mean_image[None], logits).mean() - kl_diag_gaussians(mu[None], logvar[None])[0]

    with torch.no_grad():
        start_value = float(objective())
    optimizer = torch.optim.LBFGS([mu, logvar], max_iter=max_iterations, tolerance_grad=SHARED_FIT_TOLERANCE,
                                  tolerance_change=0.0, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -objective()
        mu.grad, logvar.grad = torch.autograd.grad(loss, [mu, logvar])
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        end = float(objective())
    state = optimizer.state[optimizer._params[0]]
    return mu.detach(), logvar.detach(), {"start_mu": start.tolist(), "train_objective_at_start": start_value,
                                          "train_objective_at_fit": end, "iterations": int(state.get("n_iter", 0))}


def encoder_elbos(parts: VAEParts, images: torch.Tensor, draws: int, generator: torch.Generator,
                  chunk: int = 500, show_progress: bool | None = None) -> torch.Tensor:
    """ELBO(x_n) with the trained encoder's q(z|x_n), Eq. 1, E_q log p(x|z) over ``draws`` samples -> (N,)."""
    results = []
    with torch.no_grad(), progress(len(images), "encoder ELBO", enabled=show_progress) as bar:
        for start in range(0, len(images), chunk):
            x = images[start:start + chunk]  # (C, 784)
            mu, logvar = parts.encode(x)
            eps = torch.randn(draws, *mu.shape, generator=generator).to(x.device)  # (K, C, D)
            z = mu + (0.5 * logvar).exp() * eps
            logits = parts.decode_logits(z.reshape(-1, parts.latent_dim)).reshape(draws, len(x), -1)
            log_likelihood = log_bernoulli_logits(x.expand(draws, -1, -1).reshape(draws * len(x), -1),
                                                  logits.reshape(draws * len(x), -1)).reshape(draws, len(x))
            results.append(log_likelihood.mean(0) - kl_diag_gaussians(mu, logvar))
            bar.update(len(x))
    return torch.cat(results)


def _mean_and_se(values: torch.Tensor) -> dict[str, float]:
    values = values.cpu().double()  # float64 on the CPU: MPS has no float64
    return {"mean": float(values.mean()), "standard_error": float(values.std() / math.sqrt(values.numel()))}


def fixed_encoder_study(parts: VAEParts, train_images: torch.Tensor, test_images: torch.Tensor, draws: int,
                        shared_samples: int, max_iterations: int, starts: int, generator: torch.Generator,
                        show_progress: bool | None = None) -> dict:
    """Test-set ELBO with the trained encoder, with q = N(0, I) and with the best shared Gaussian (docs/theory.md
    §12.2), fitted from ``starts`` points, keeping the best (it may have several local maxima)."""
    device = test_images.device
    latent = parts.latent_dim
    fit_eps = torch.randn(shared_samples, latent, generator=generator).to(device)
    test_eps = torch.randn(shared_samples, latent, generator=generator).to(device)
    mean_image = train_images.cpu().double().mean(0).float().to(device)  # (784,), summed in float64
    start_means = [torch.zeros(latent)] + [torch.randn(latent, generator=generator) for _ in range(starts - 1)]
    fits = [fit_shared_gaussian(parts, mean_image, fit_eps, max_iterations, m) for m in start_means]
    mu, logvar, fit = max(fits, key=lambda result: result[2]["train_objective_at_fit"])
    fit = {"train_objective_at_standard_normal": fits[0][2]["train_objective_at_start"], **fit,
           "all_starts": [result[2] for result in fits]}
    zeros = torch.zeros(latent, device=device)
    per_image = {
        "encoder": encoder_elbos(parts, test_images, draws, generator, show_progress=show_progress),
        "shared_gaussian": shared_q_elbos(parts, test_images, mu, logvar, test_eps),
        "standard_normal": shared_q_elbos(parts, test_images, zeros, zeros, test_eps),
    }
    with torch.no_grad():
        examples = test_images[:EXAMPLE_IMAGES]
        encoder_means, _ = parts.encode(examples)
        pictures = {
            "images": examples,
            "encoder": torch.sigmoid(parts.decode_logits(encoder_means)),
            "shared_gaussian": torch.sigmoid(parts.decode_logits(mu[None])).expand(len(examples), -1),
            "standard_normal": torch.sigmoid(parts.decode_logits(zeros[None])).expand(len(examples), -1),
        }
    return {
        "test_images": int(len(test_images)), "train_images": int(len(train_images)),
        "draws_per_image_encoder": draws, "shared_samples": shared_samples,
        "test_elbo": {name: _mean_and_se(values) for name, values in per_image.items()},
        "shared_gaussian": {"mu": mu.cpu().tolist(), "logvar": logvar.cpu().tolist(),
                            "kl_to_prior": float(kl_diag_gaussians(mu[None], logvar[None])[0]), **fit},
        "per_image": {name: values.cpu().numpy() for name, values in per_image.items()},
        "pictures": {name: value.reshape(-1, 28, 28).cpu().numpy() for name, value in pictures.items()},
    }


def vae_parts(model: torch.nn.Module) -> VAEParts:
    return VAEParts(encode=model.encoder, decode_logits=model.decoder.logits,
                    parameter_groups={"encoder": list(model.encoder.parameters()),
                                      "decoder": list(model.decoder.parameters())},
                    latent_dim=model.latent_dim)


def experiment_paths(run: RunDir, name: str) -> tuple[Path, Path]:
    folder = run.path / EXPERIMENTS_FOLDER
    return folder / f"{name}.json", folder / f"{name}.png"


def vae_config(run: RunDir) -> VAEConfig:
    return run.read_config_as("vae", VAEConfig, "a VAE run (the experiments need a VAE run, from mnistgen vae train)")


def _command(name: str, run: RunDir, config: Any) -> str:
    """The command that repeats this experiment (data flags left out: they are in the JSON's config)."""
    flags = [f"--{f.name.replace('_', '-')} {getattr(config, f.name)}" for f in dataclasses.fields(config)
             if f.name != "data"]
    return " ".join(["mnistgen experiment", name, shlex.quote(str(run.path)), *flags])


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _load(run: RunDir, device: str, data: DataConfig):
    vae_config(run)  # a clear error for a non-VAE folder before anything heavy
    trained = load_trained_vae(run, device)
    protocol = load_run_protocol(run, dataclasses.replace(trained.config, data=data)).to(trained.device)
    return trained, protocol


def run_elbo_estimators(run: RunDir, config: ElboEstimatorsConfig, show_progress: bool | None = None) -> dict:
    """Experiment 1 on a VAE run folder: writes RUN/experiments/elbo-estimators.{json,png}; returns the record."""
    started = time.perf_counter()
    trained, protocol = _load(run, config.device, config.data)
    if config.images > len(protocol.test_images):
        raise MnistgenError(f"--images {config.images}: the test set has only {len(protocol.test_images)} images")
    images = protocol.test_images[:config.images]
    generator = torch.Generator().manual_seed(config.seed)  # eps drawn on the CPU: the same draws on any device
    study = elbo_estimator_study(vae_parts(trained.model), images, config.draws, generator, show_progress)
    per_image = study["per_image"]
    gradient_variance = {group: {eq: values["trace_covariance_per_image"] for eq, values in by_eq.items()}
                         for group, by_eq in study["gradients"].items()}
    title = (f"Eq. 1 vs Eq. 2 on {run.path.name} (epoch {trained.epochs}): {config.images} test images, "
             f"{config.draws} draws of eps each, the same draws for both estimators")
    figure = elbo_estimators_figure(per_image["eq1_variance"], per_image["eq2_variance"], study["example_draws"],
                                    gradient_variance, title)
    json_path, png_path = experiment_paths(run, ELBO_ESTIMATORS)
    record = {"experiment": ELBO_ESTIMATORS, "command": _command(ELBO_ESTIMATORS, run, config),
              "run": str(run.path), "epochs": trained.epochs, "training_objective": trained.config.objective,
              "config": to_dict(config), "figure": str(png_path), **_jsonable(study),
              "seconds": time.perf_counter() - started, "environment": environment()}
    if is_main_process():
        save_figure(png_path, figure)
        write_json(json_path, record)
    return record


def run_fixed_encoder(run: RunDir, config: FixedEncoderConfig, show_progress: bool | None = None) -> dict:
    """Experiment 2 on a VAE run folder: writes RUN/experiments/fixed-encoder.{json,png,npz}; returns the record."""
    started = time.perf_counter()
    trained, protocol = _load(run, config.device, config.data)
    generator = torch.Generator().manual_seed(config.seed)
    study = fixed_encoder_study(vae_parts(trained.model), protocol.train_images, protocol.test_images, config.draws,
                                config.shared_samples, config.max_iterations, config.starts, generator,
                                show_progress)
    reference = None
    if run.eval.is_file():  # the importance-weighted log p(x) of `mnistgen vae eval`, if it was run
        evaluation = read_json(run.eval)
        if evaluation.get("test_iw_log_likelihood") is not None:
            reference = (f"log p(x), importance-weighted K={evaluation.get('iw_samples')} (vae eval)",
                         float(evaluation["test_iw_log_likelihood"]))
    elbo = study["test_elbo"]
    title = (f"Why an encoder: test-set ELBO of {run.path.name} (epoch {trained.epochs}) with three choices of "
             f"q(z|x): encoder {elbo['encoder']['mean']:.1f}, shared Gaussian {elbo['shared_gaussian']['mean']:.1f}, "
             f"N(0, I) {elbo['standard_normal']['mean']:.1f} nats")
    figure = fixed_encoder_figure(study["per_image"], study["pictures"], title, reference)
    json_path, png_path = experiment_paths(run, FIXED_ENCODER)
    arrays_path = json_path.with_suffix(".npz")
    summary = {name: {"quantiles_5_50_95": np.quantile(values, [0.05, 0.5, 0.95]).tolist()}
               for name, values in study["per_image"].items()}
    record = {"experiment": FIXED_ENCODER, "command": _command(FIXED_ENCODER, run, config),
              "run": str(run.path), "epochs": trained.epochs, "config": to_dict(config),
              "figure": str(png_path), "per_image_values": str(arrays_path),
              **{k: v for k, v in study.items() if k not in ("per_image", "pictures")},
              "per_image_summary": summary,
              "gap_encoder_minus_shared": elbo["encoder"]["mean"] - elbo["shared_gaussian"]["mean"],
              "gap_shared_minus_standard_normal": elbo["shared_gaussian"]["mean"] - elbo["standard_normal"]["mean"],
              "reference_log_likelihood": reference[1] if reference else None,
              "seconds": time.perf_counter() - started, "environment": environment()}
    if is_main_process():
        save_figure(png_path, figure)
        buffer = io.BytesIO()
        np.savez(buffer, **study["per_image"])
        atomic_write(arrays_path, lambda handle: handle.write(buffer.getvalue()))
        write_json(json_path, record)
    return record
