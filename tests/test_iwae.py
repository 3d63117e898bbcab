"""The importance-weighted objective (``--objective iwae --train-samples K``, Burda et al. 2016), K draws per
image for mc and analytic, and the importance-weighted estimate of log p(x) that ``mnistgen vae eval`` reports.

Each value is checked against a computation written out here: the network in NumPy float64 from the weights (the
log weights from eps directly, not from (z - mean) / std as the product does), log p(x) by quadrature over the
latent plane, the gradient by ``torch.func`` on a separate implementation (itself checked by finite differences),
and whole training runs against a plain autograd loop.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from bench_support import load_bench_module
from torch.func import grad

from mnistgen.cli import main
from mnistgen.config import DataConfig, VAEConfig
from mnistgen.data.batches import shuffled_batches
from mnistgen.data.protocols import Protocol
from mnistgen.device import seed_everything, stream_seed
from mnistgen.errors import MnistgenError
from mnistgen.evaluate import vae as evaluate_vae
from mnistgen.losses import vae_elbo
from mnistgen.models import vae as vae_models
from mnistgen.models.vae import VAE
from mnistgen.plots.vae import curves_figure
from mnistgen.runs import RunDir
from mnistgen.train import vae as vae_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOG_2PI = math.log(2 * math.pi)
PIXELS = 20  # the tiny model's images: 20 pixels keep p(z|x) wide enough for quadrature on a grid


# --------------------------------------------------------------------------- independent computations


def tiny_model(seed: int = 0) -> VAE:
    """A float64 VAE with 20 pixels, 7 hidden units and a 2-D latent, its weights scaled so that q(z|x) is not
    the prior and the decoder's pixels depend on z."""
    torch.manual_seed(seed)
    model = VAE(latent_dim=2, hidden=7, input_dim=PIXELS).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(2.0)
    return model


def numpy_weights(model: VAE) -> dict[str, np.ndarray]:
    return {name: value.detach().double().numpy() for name, value in model.state_dict().items()}


def numpy_log_weights(model: VAE, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for eps (K, B, D_z), in float64: (K, B); also
    log p(x|z_k) (K, B) and the closed-form KL(q || p(z)) (B,)."""
    p = numpy_weights(model)
    h = np.tanh(x @ p["encoder.hidden.weight"].T + p["encoder.hidden.bias"])
    mean = h @ p["encoder.mean.weight"].T + p["encoder.mean.bias"]  # (B, D)
    logvar = h @ p["encoder.logvar.weight"].T + p["encoder.logvar.bias"]
    z = mean + np.exp(0.5 * logvar) * eps  # (K, B, D)
    h2 = np.tanh(z @ p["decoder.hidden.weight"].T + p["decoder.hidden.bias"])
    logits = h2 @ p["decoder.output.weight"].T + p["decoder.output.bias"]  # (K, B, P)
    log_likelihood = (x * logits - np.logaddexp(0.0, logits)).sum(-1)  # log sigmoid(l)^x (1 - sigmoid(l))^(1-x)
    log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
    log_q = (-0.5 * eps**2 - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)  # N(mean + std eps | mean, std^2)
    kl = 0.5 * (mean**2 + np.exp(logvar) - logvar - 1.0).sum(-1)
    return log_likelihood + log_prior - log_q, log_likelihood, kl


def numpy_log_mean_exp(values: np.ndarray) -> np.ndarray:
    """log (1/K) sum_k exp(values_k) over axis 0, shifted by the maximum."""
    top = values.max(axis=0)
    return top + np.log(np.exp(values - top).mean(axis=0))


def quadrature_log_evidence(model: VAE, x: np.ndarray, half_width: float = 8.0, points: int = 801) -> np.ndarray:
    """log p(x) = log of the integral of p(x|z) p(z) over [-8, 8]^2 by the midpoint rule, in float64: (B,)."""
    p = numpy_weights(model)
    step = 2 * half_width / points
    axis = -half_width + step * (0.5 + np.arange(points))
    z = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)  # (G, 2)
    h2 = np.tanh(z @ p["decoder.hidden.weight"].T + p["decoder.hidden.bias"])
    logits = h2 @ p["decoder.output.weight"].T + p["decoder.output.bias"]  # (G, P)
    log_joint = x @ logits.T - np.logaddexp(0.0, logits).sum(-1) + (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)  # (B, G)
    top = log_joint.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(log_joint - top).sum(axis=1, keepdims=True)))[:, 0] + 2 * math.log(step)


def plain_log_weights(params: dict[str, torch.Tensor], x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The log weights written out in torch with the parameters as plain tensors (no modules): (K, B)."""
    h = torch.tanh(x @ params["encoder.hidden.weight"].T + params["encoder.hidden.bias"])
    mean = h @ params["encoder.mean.weight"].T + params["encoder.mean.bias"]
    logvar = h @ params["encoder.logvar.weight"].T + params["encoder.logvar.bias"]
    z = mean + torch.exp(0.5 * logvar) * eps  # (K, B, D)
    h2 = torch.tanh(z @ params["decoder.hidden.weight"].T + params["decoder.hidden.bias"])
    logits = h2 @ params["decoder.output.weight"].T + params["decoder.output.bias"]
    log_likelihood = (x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(torch.sigmoid(-logits))).sum(-1)
    return log_likelihood + (-0.5 * z**2).sum(-1) - (-0.5 * eps**2 - 0.5 * logvar).sum(-1)  # log 2 pi cancels


def plain_bound(params: dict[str, torch.Tensor], x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The batch mean of log (1/K) sum_k w_k, as the log of a mean of exponentials shifted by the maximum."""
    log_weights = plain_log_weights(params, x, eps)
    top = log_weights.max(dim=0).values.detach()
    return (top + torch.log(torch.exp(log_weights - top).mean(dim=0))).mean()


def binary(rows: int, seed: int, pixels: int = PIXELS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, pixels, generator=generator, dtype=torch.float64) < 0.3).double()


# --------------------------------------------------------------------------- (1) K = 1 is Eq. 2


def test_with_one_draw_the_bound_and_the_mean_are_eq_2_itself():
    torch.manual_seed(3)
    model = VAE(hidden=30)  # float32, the spec's 784 pixels
    x = (torch.rand(16, 784) < 0.2).float()
    eps = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    eq2 = vae_elbo(model, x, eps)
    one = torch.randn(1, 16, 2, generator=torch.Generator().manual_seed(5))  # the same numbers, (K, B, D_z)
    assert torch.equal(one[0], eps)
    assert torch.equal(vae_elbo(model, x, one, importance_weighted=True), eq2)
    assert torch.equal(vae_elbo(model, x, one), eq2)
    assert torch.equal(vae_elbo(model, x, one, analytic_kl=True), vae_elbo(model, x, eps, analytic_kl=True))


@pytest.fixture(scope="module")
def random_data() -> Protocol:
    """300 random binary "images" (3 steps of 100) and 100 held out."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(400, 784, generator=generator) < 0.15).float()
    labels = torch.zeros(400, dtype=torch.long)
    return Protocol(name="hw", train_images=images[:300], train_labels=labels[:300], eval_images=images[300:],
                    eval_labels=labels[300:], test_images=images[300:], test_labels=labels[300:], eval_name="test",
                    dynamic_binarization=False, provenance={"dataset": "random"})


BASE = VAEConfig(epochs=2, device="cpu", hidden=64, data=DataConfig(offline=True))


def train(tmp_path, data, **changes):
    notes: list[str] = []
    run = RunDir(tmp_path)
    history = vae_training.train_vae(dataclasses.replace(BASE, **changes), run, protocol=data, show_progress=False,
                                     say=notes.append)
    return run, history, notes


def test_iwae_with_one_draw_trains_the_very_weights_of_eq_2(tmp_path, random_data):
    """Six steps of iwae with K = 1 and of mc, both on the reference path: the same draws, the same weights bit
    for bit, the same training values."""
    iwae, iwae_history, _ = train(tmp_path / "iwae", random_data, objective="iwae", train_samples=1,
                                  cpu_kernels="reference")
    mc, mc_history, _ = train(tmp_path / "mc", random_data, objective="mc", cpu_kernels="reference")
    for name, value in mc.load_checkpoint()["model"].items():
        assert torch.equal(iwae.load_checkpoint()["model"][name], value), name
    assert [r["train_elbo"] for r in iwae_history] == [r["train_elbo"] for r in mc_history]
    assert [r["test_elbo"] for r in iwae_history] == [r["test_elbo"] for r in mc_history]  # held out: Eq. 2
    assert [r["train_elbo_is"] for r in iwae_history] == ["the importance-weighted bound L_1 (1 draws per image)"] * 2
    assert "train_elbo_is" not in mc_history[0]


# --------------------------------------------------------------------------- (2) the value of the bound


@pytest.mark.parametrize("samples", [1, 5])
def test_the_values_equal_a_float64_numpy_evaluation_with_the_same_draws(samples):
    model = tiny_model()
    x = binary(6, seed=1)
    eps = torch.randn(samples, 6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    log_weights, log_likelihood, kl = numpy_log_weights(model, x.numpy(), eps.numpy())
    with torch.no_grad():
        bound = vae_elbo(model, x, eps, importance_weighted=True).numpy()
        mean_eq2 = vae_elbo(model, x, eps).numpy()
        mean_eq1 = vae_elbo(model, x, eps, analytic_kl=True).numpy()
    np.testing.assert_allclose(bound, numpy_log_mean_exp(log_weights), rtol=0, atol=1e-10)
    np.testing.assert_allclose(mean_eq2, log_weights.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(mean_eq1, log_likelihood.mean(axis=0) - kl, rtol=0, atol=1e-10)
    if samples > 1:  # Jensen on the very same draws: log of the mean weight >= mean of the log weights
        assert (bound > mean_eq2 + 1e-3).all()


def test_the_bound_grows_with_k_and_stays_below_log_p_x():
    """E[L_1] < E[L_5] < E[L_50] < log p(x) for each of 4 images: 2000 independent estimates of each, the
    differences beyond 5 standard errors, and log p(x) from quadrature on a grid (no encoder, no sampling).
    Forgetting the 1/K puts L_50 log 50 = 3.9 nats above log p(x); a mean in place of the log-mean-exp leaves
    L_5 at L_1."""
    model = tiny_model()
    x = binary(4, seed=7)
    repeats = 2000
    generator = torch.Generator().manual_seed(11)
    estimates, errors = {}, {}
    with torch.no_grad():
        for samples in (1, 5, 50):
            eps = torch.randn(samples, repeats * 4, 2, generator=generator, dtype=torch.float64)
            values = vae_elbo(model, x.repeat(repeats, 1), eps, importance_weighted=True).view(repeats, 4).numpy()
            estimates[samples], errors[samples] = values.mean(0), values.std(0, ddof=1) / math.sqrt(repeats)
    log_evidence = quadrature_log_evidence(model, x.numpy())
    for small, large in ((1, 5), (5, 50)):
        margin = 5 * np.sqrt(errors[small] ** 2 + errors[large] ** 2)
        assert (estimates[large] - estimates[small] > margin).all(), (small, large, estimates, errors)
    assert (estimates[50] < log_evidence + 5 * errors[50]).all(), (estimates[50], log_evidence)
    assert (log_evidence - estimates[50] < 0.5 * (log_evidence - estimates[1])).all()  # L_K closes in on log p(x)


# --------------------------------------------------------------------------- (3) its gradient


def test_the_reference_step_follows_the_gradient_of_an_independent_bound():
    """One reference step with SGD(lr = 1) moves each weight by d(mean L_K)/d weight; torch.func on the plain
    implementation gives that gradient, itself checked against central finite differences in float64."""
    model = tiny_model(seed=4)
    x = binary(8, seed=5)
    eps = torch.randn(5, 8, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    params = {name: value.detach().clone() for name, value in model.named_parameters()}
    expected = grad(plain_bound)(params, x, eps)

    direction = {name: torch.randn(value.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
                 for name, value in params.items()}
    h = 1e-6
    shifted = [plain_bound({n: params[n] + sign * h * direction[n] for n in params}, x, eps) for sign in (1, -1)]
    numerical = float(shifted[0] - shifted[1]) / (2 * h)
    analytic = sum(float((expected[n] * direction[n]).sum()) for n in params)
    assert numerical == pytest.approx(analytic, rel=1e-6)

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    value = vae_models.train_step(model, optimizer, x, eps, "iwae")
    assert float(value) == pytest.approx(8 * float(plain_bound(params, x, eps)), rel=1e-12)  # the batch's sum
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.detach() - params[name], expected[name], rtol=0, atol=1e-12,
                                   msg=name)


def plain_training(config: VAEConfig, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``config``'s run written out: mnistgen's seeds for the weights, the batch order and eps (K draws per
    image, sample-major), the objective as :func:`plain_bound` (iwae) or the mean of the K log weights (mc),
    autograd and Adam."""
    order = seed_everything(config.seed)
    model = VAE(latent_dim=config.latent_dim, hidden=config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    noise = torch.Generator().manual_seed(stream_seed(config.seed, vae_training.NOISE_STREAM))
    for _ in range(config.epochs):
        for batch in shuffled_batches(len(images), config.batch_size, order):
            x = images[batch]
            eps = torch.randn((config.train_samples, len(x), config.latent_dim), generator=noise)
            params = dict(model.named_parameters())
            if config.objective == "iwae":
                objective = plain_bound(params, x, eps)
            else:
                objective = plain_log_weights(params, x, eps).mean()
            optimizer.zero_grad()
            (-objective).backward()
            optimizer.step()
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# --------------------------------------------------------------------------- (4) the accelerators step aside


@pytest.mark.parametrize(("objective", "samples", "reason"), [
    ("iwae", 3, "the objective 'iwae' is not one it computes (mc, analytic)"),
    ("mc", 3, "it draws one z per image, not --train-samples 3"),
])
def test_the_accelerators_step_aside_with_a_note_and_the_reference_path_trains_the_objective(
        objective, samples, reason, tmp_path, random_data):
    run, history, notes = train(tmp_path, random_data, objective=objective, train_samples=samples)
    assert len(notes) == 1 and "the VAE trains with the reference path" in notes[0], notes
    assert f"native: {reason}" in notes[0] and f"torch: {reason}" in notes[0], notes
    assert [r["trained_by"] for r in history] == ["reference", "reference"]
    plain = plain_training(dataclasses.replace(BASE, objective=objective, train_samples=samples),
                           random_data.train_images)
    for name, value in run.load_checkpoint()["model"].items():  # Adam turns rounding into steps of up to lr where
        # a gradient is 0 but for rounding (see tests/test_accelerators.py): at most 1% may differ by lr / 10; the
        # mean of the log weights in place of iwae's bound moves 40-100% of each tensor by more
        differing = float(((value - plain[name]).abs() > BASE.lr / 10).double().mean())
        assert differing <= 0.01, (name, differing)


def test_native_with_iwae_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    folder = tmp_path / "run"
    code = main(["vae", "train", "--out", str(folder), "--epochs", "1", "--device", "cpu", "--offline",
                 "--dataset", "mnist-sample", "--objective", "iwae", "--train-samples", "5", "--cpu-kernels", "native"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--cpu-kernels native: the C kernels do not apply: native: the objective 'iwae'" in err, err
    assert not folder.exists()


def test_train_samples_must_be_positive():
    from mnistgen.config import validate

    with pytest.raises(MnistgenError, match=r"^--train-samples must be a positive integer, got 0$"):
        validate(dataclasses.replace(BASE, train_samples=0))


# --------------------------------------------------------------------------- (5) the command line


def test_the_command_trains_records_and_resumes_iwae(tmp_path, capsys):
    folder = tmp_path / "run"
    common = ["vae", "train", "--out", str(folder), "--device", "cpu", "--offline", "--dataset", "mnist-sample",
              "--hidden", "64", "--objective", "iwae", "--train-samples", "5"]
    assert main([*common, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1: train the importance-weighted bound L_5 (5 draws per image) -" in out, out
    config = json.loads((folder / "config.json").read_text())["config"]
    assert (config["objective"], config["train_samples"]) == ("iwae", 5)
    (record,) = RunDir(folder).read_metrics()
    assert record["trained_by"] == "reference" and "L_5" in record["train_elbo_is"]

    assert main([*common, "--epochs", "2", "--resume"]) == 0
    assert [r["epoch"] for r in RunDir(folder).read_metrics()] == [1, 2]
    figure = curves_figure(RunDir(folder).read_metrics())  # the training curve is named for what it is
    legend = [text.get_text() for axis in figure.axes if axis.get_legend() for text in axis.get_legend().get_texts()]
    assert "train: the importance-weighted bound L_5 (5 draws per image)" in legend, legend
    capsys.readouterr()

    changed = [*common[:-1], "3", "--epochs", "3", "--resume"]
    assert main(changed) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--train-samples" in err and "Traceback" not in err, err
    assert [r["epoch"] for r in RunDir(folder).read_metrics()] == [1, 2]


# --------------------------------------------------------------------------- (6) the estimate of log p(x) of eval


def test_the_evaluation_estimate_is_the_log_mean_weight_of_the_very_draws_it_takes():
    """``iw_log_likelihood`` (the log p(x) of ``mnistgen vae eval``) equals log (1/K) sum_k w_k of the NumPy float64
    log weights of its draws: per group of 100 images (here 250: a group of 50 last), eps (n, b, D_z) for n =
    max_elements // (b * pixels) draws of every image at a time; here 4 (8 for the last group), and K = 23 leaves
    a short chunk at the end."""
    model, x, k, max_elements = tiny_model(), binary(250, seed=8), 23, 4 * 100 * PIXELS
    estimate = evaluate_vae.iw_log_likelihood(model, x, k, torch.Generator().manual_seed(3), max_elements)
    generator, expected = torch.Generator().manual_seed(3), []
    for start in range(0, len(x), 100):
        group = x[start:start + 100]
        per_chunk = max_elements // (len(group) * PIXELS)
        eps = torch.cat([torch.randn((min(per_chunk, k - done), len(group), 2), generator=generator,
                                     dtype=torch.float64) for done in range(0, k, per_chunk)])  # (K, b, 2)
        expected.append(numpy_log_mean_exp(numpy_log_weights(model, group.numpy(), eps.numpy())[0]))
    assert estimate.dtype == torch.float64
    np.testing.assert_allclose(estimate.numpy(), np.concatenate(expected), rtol=0, atol=1e-10)


@pytest.mark.parametrize(("k", "max_elements"), [(60, evaluate_vae.IW_CHUNK_ELEMENTS), (7, 2 * 100 * 784)],
                         ids=["chunks-of-53", "chunks-of-2"])
def test_the_evaluation_estimate_is_the_number_the_estimator_before_gave_from_the_same_seed(k, max_elements):
    """SPEC's float32 network on 130 binary 784-pixel images: the same seed gives the estimate of the estimator that
    computed log p(x|z) out of place from repeated images (bench/eval_speed.py keeps it as the baseline it times), to
    float32 rounding."""
    old_estimate = load_bench_module("eval_speed").old_iw_log_likelihood
    torch.manual_seed(0)
    model = VAE()
    x = (torch.rand(130, 784, generator=torch.Generator().manual_seed(1)) < 0.15).float()
    mine = evaluate_vae.iw_log_likelihood(model, x, k, torch.Generator().manual_seed(k), max_elements)
    theirs = old_estimate(model, x, k, torch.Generator().manual_seed(k), max_elements)
    torch.testing.assert_close(mine, theirs, rtol=2e-6, atol=0)
    other_seed = evaluate_vae.iw_log_likelihood(model, x, k, torch.Generator().manual_seed(k + 1), max_elements)
    assert (other_seed - theirs).abs().max() > 1e-2  # other draws, another estimate: the tolerance is far below
