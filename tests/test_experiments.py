"""The two theory experiments (docs/theory.md §12) on a real VAE trained here on real MNIST.

A module-scoped fixture trains the SPEC VAE for 2 epochs on the first 3,000 training images of the hw
protocol (a real run folder with a real checkpoint, written and read back). The tests assert what must
hold whatever the training: unbiasedness of both estimators (z statistics), decoder gradients equal
draw by draw, the KL-noise variance formula, the fast shared-q likelihood equal to the per-image one,
the encoder beating a shared q and the fitted shared q beating N(0, I).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mnistgen import experiments
from mnistgen.cli import main
from mnistgen.config import DataConfig, ElboEstimatorsConfig, FixedEncoderConfig, VAEConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.distributions import log_bernoulli_logits
from mnistgen.evaluate.vae import load_trained_vae
from mnistgen.losses import elbo_analytic, elbo_mc
from mnistgen.runs import RunDir, write_json
from mnistgen.theory import kl_diag_gaussians, kl_estimator_noise_variance
from mnistgen.train.vae import train_vae

TRAIN_IMAGES = 3000
EVAL_IMAGES = 500  # the per-epoch test ELBO of training: a subset is enough here


@pytest.fixture(scope="module")
def data_config(mnist_dir) -> DataConfig:
    return DataConfig(data_dir=str(mnist_dir), offline=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_raw, data_config) -> RunDir:
    """A VAE run folder: SPEC architecture, 2 epochs on the first 3,000 hw training images."""
    protocol = load_protocol("hw", mnist_raw)
    small = dataclasses.replace(protocol, train_images=protocol.train_images[:TRAIN_IMAGES],
                                train_labels=protocol.train_labels[:TRAIN_IMAGES],
                                eval_images=protocol.test_images[:EVAL_IMAGES],
                                eval_labels=protocol.test_labels[:EVAL_IMAGES])
    run = RunDir(tmp_path_factory.mktemp("experiments") / "vae")
    config = VAEConfig(data=data_config, epochs=2, seed=0, device="cpu")
    train_vae(config, run, protocol=small, show_progress=False)
    return run


@pytest.fixture(scope="module")
def parts(trained_run) -> experiments.VAEParts:
    return experiments.vae_parts(load_trained_vae(trained_run, "cpu").model)


@pytest.fixture(scope="module")
def test_images(mnist_raw) -> torch.Tensor:
    return load_protocol("hw", mnist_raw).test_images


# --------------------------------------------------------------------------- elbo-estimators


def test_elbo_estimators_on_a_trained_vae(trained_run, data_config):
    """Both estimators are unbiased for the same ELBO (every image's paired z statistic below 5), the decoder
    gradients are identical draw by draw (theta is only in log p(x|z)), the per-image variances and the
    gradient variances are positive, and the files are written."""
    config = ElboEstimatorsConfig(data=data_config, images=20, draws=30, seed=1, device="cpu")
    record = experiments.run_elbo_estimators(trained_run, config, show_progress=False)

    assert record["summary"]["largest_abs_z_of_mean_difference"] < 5
    assert record["elbo"]["eq1"]["mean"] == pytest.approx(record["elbo"]["eq2"]["mean"],
                                                          abs=5 * math.hypot(record["elbo"]["eq1"]["standard_error"],
                                                                             record["elbo"]["eq2"]["standard_error"]))
    assert record["decoder_gradient_max_abs_difference"] == 0.0
    decoder, encoder = record["gradients"]["decoder"], record["gradients"]["encoder"]
    assert decoder["eq1"]["trace_covariance_batch_mean"] == decoder["eq2"]["trace_covariance_batch_mean"]
    assert decoder["eq1"]["parameters"] == 2 * 500 + 500 + 500 * 784 + 784
    assert encoder["eq1"]["parameters"] == 784 * 500 + 500 + 2 * (500 * 2 + 2)
    for by_eq in (decoder, encoder):
        for values in by_eq.values():
            assert values["trace_covariance_per_image"] == pytest.approx(20 * values["trace_covariance_batch_mean"])
            assert values["trace_covariance_batch_mean"] > 0
    assert min(record["per_image"]["eq1_variance"]) > 0 and min(record["per_image"]["eq2_variance"]) > 0

    json_path, png_path = experiments.experiment_paths(trained_run, "elbo-estimators")
    saved = json.loads(json_path.read_text())
    assert saved["config"]["draws"] == 30 and len(saved["per_image"]["eq1_variance"]) == 20
    assert saved["command"].startswith("mnistgen experiment elbo-estimators ")
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width > 1000


def test_the_kl_noise_variance_formula_holds_on_the_trained_encoder(parts, test_images):
    """Var over eps of Eq. 2 - Eq. 1 (the Monte Carlo KL noise; the product's elbo_mc and elbo_analytic on
    the same z) for real images and the trained encoder equals sum_j mu_j^2 s_j^2 + (s_j^2 - 1)^2 / 2,
    within 5 standard errors of a sample variance, image by image."""
    images, draws = test_images[:6], 4000
    with torch.no_grad():
        mu, logvar = (t.double() for t in parts.encode(images))  # (6, 2) each
    eps = torch.randn(draws, 6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = (mu + (0.5 * logvar).exp() * eps).reshape(-1, 2)  # (draws * 6, 2), draw-major
    x = images.double().repeat(draws, 1)
    logits = torch.zeros_like(x)  # the likelihood term is common to both and cancels in the difference
    mu_rows, logvar_rows = mu.repeat(draws, 1), logvar.repeat(draws, 1)
    noise = (elbo_mc(x, logits, z, mu_rows, logvar_rows) - elbo_analytic(x, logits, mu_rows, logvar_rows))
    noise = noise.reshape(draws, 6)
    centered = noise - noise.mean(0)
    sample_variance = centered.square().mean(0)
    standard_error = ((centered.pow(4).mean(0) - sample_variance.square()) / draws).sqrt()
    predicted = kl_estimator_noise_variance(mu, logvar)
    assert torch.all((sample_variance - predicted).abs() < 5 * standard_error)
    assert torch.all(predicted > 0)


# --------------------------------------------------------------------------- fixed-encoder


def test_the_shared_q_likelihood_matrix_equals_the_per_image_likelihoods(parts, test_images):
    """The one-matrix-product log p(x_n|z_s) equals the product's log_bernoulli_logits image by image; and for
    a gray 'mean image' it is the mean of the per-image values (linearity in x), which the shared-q fit uses."""
    images = test_images[:30]
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = parts.decode_logits(z)
        matrix = experiments.log_likelihood_matrix(images, logits)  # (30, 7)
        direct = torch.stack([log_bernoulli_logits(images, logits[s].expand(30, -1)) for s in range(7)], dim=1)
        torch.testing.assert_close(matrix, direct, rtol=1e-5, atol=1e-3)
        of_mean_image = experiments.log_likelihood_matrix(images.mean(0, keepdim=True), logits)[0]
        torch.testing.assert_close(of_mean_image, direct.mean(0), rtol=1e-5, atol=1e-3)

        mu, logvar = torch.tensor([0.3, -0.2]), torch.tensor([-1.0, -0.5])
        eps = torch.randn(11, 2, generator=torch.Generator().manual_seed(4))
        shared = experiments.shared_q_elbos(parts, images, mu, logvar, eps, chunk=8)
        z = mu + (0.5 * logvar).exp() * eps
        by_hand = torch.stack([log_bernoulli_logits(images, parts.decode_logits(z[s:s + 1]).expand(30, -1))
                               for s in range(11)]).mean(0) - kl_diag_gaussians(mu[None], logvar[None])
        torch.testing.assert_close(shared, by_hand, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_fixed_encoder_on_a_trained_vae(trained_run, data_config):
    """Encoder ELBO > shared-Gaussian ELBO > N(0, I) ELBO on the test set (differences above 5 standard
    errors), the shared fit does not lose on its training objective, the shared q's pictures are the same
    for every image while the encoder's are not, and the JSON, PNG and NPZ files are written."""
    config = FixedEncoderConfig(data=data_config, draws=1, shared_samples=200, max_iterations=40, starts=2,
                                seed=0, device="cpu")
    record = experiments.run_fixed_encoder(trained_run, config, show_progress=False)
    elbo = record["test_elbo"]
    json_path, png_path = experiments.experiment_paths(trained_run, "fixed-encoder")
    per_image = np.load(json_path.with_suffix(".npz"))
    assert set(per_image.files) == {"encoder", "shared_gaussian", "standard_normal"}
    assert all(len(per_image[name]) == 10_000 for name in per_image.files)

    def paired_gap(a: str, b: str) -> tuple[float, float]:
        difference = per_image[a].astype(np.float64) - per_image[b]
        return difference.mean(), difference.std(ddof=1) / math.sqrt(difference.size)

    for better, worse in (("encoder", "shared_gaussian"), ("shared_gaussian", "standard_normal")):
        gap, standard_error = paired_gap(better, worse)
        assert gap > 5 * standard_error, (better, worse, gap, standard_error)
        assert elbo[better]["mean"] > elbo[worse]["mean"]
    fit = record["shared_gaussian"]
    assert fit["train_objective_at_fit"] >= fit["train_objective_at_standard_normal"]
    assert len(fit["all_starts"]) == 2 and fit["all_starts"][0]["start_mu"] == [0.0, 0.0]
    assert fit["kl_to_prior"] == pytest.approx(float(kl_diag_gaussians(torch.tensor([fit["mu"]]),
                                                                       torch.tensor([fit["logvar"]]))[0]), rel=1e-6)

    saved = json.loads(json_path.read_text())
    assert saved["test_elbo"] == elbo and saved["config"]["starts"] == 2
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width > 1000


def test_the_shared_q_pictures_do_not_depend_on_the_image(parts, test_images):
    generator = torch.Generator().manual_seed(5)
    study = experiments.fixed_encoder_study(parts, test_images[:500], test_images[:40], draws=1, shared_samples=50,
                                            max_iterations=5, starts=1, generator=generator, show_progress=False)
    pictures = study["pictures"]
    for name in ("shared_gaussian", "standard_normal"):
        assert np.array_equal(pictures[name], np.broadcast_to(pictures[name][0], pictures[name].shape))
    assert np.abs(pictures["encoder"] - pictures["encoder"][0]).max() > 0.1
    assert pictures["images"].shape == (experiments.EXAMPLE_IMAGES, 28, 28)


# --------------------------------------------------------------------------- command line


def test_the_commands_write_their_files_and_reject_bad_input(trained_run, tmp_path, capsys, mnist_dir):
    data_flags = ["--data-dir", str(mnist_dir), "--offline"]
    assert main(["experiment", "elbo-estimators", str(trained_run.path), "--images", "4", "--draws", "3",
                 "--device", "cpu", *data_flags]) == 0
    out = capsys.readouterr().out
    assert "Eq. 1" in out and "decoder gradient variance" in out
    assert json.loads((trained_run.path / "experiments" / "elbo-estimators.json").read_text())["images"] == 4

    def one_line_error(argv: list[str], code: int = 1) -> str:
        assert main(argv) == code
        err = capsys.readouterr().err.strip()
        start = "mnistgen: error:" if code == 1 else f"mnistgen {' '.join(argv[:2])}: error:"  # usage: the command
        assert err.startswith(start) and "\n" not in err and "Traceback" not in err
        return err

    assert "not a run folder" in one_line_error(["experiment", "fixed-encoder", str(tmp_path)])
    assert "--draws must be a positive integer" in one_line_error(
        ["experiment", "elbo-estimators", str(trained_run.path), "--draws", "0"], code=2)  # a flag's value: 2
    assert "only 10000 images" in one_line_error(
        ["experiment", "elbo-estimators", str(trained_run.path), "--images", "10001", *data_flags])
    gan_run = RunDir(tmp_path / "gan")
    write_json(gan_run.config, {"kind": "gan", "config": {}})
    assert "need a VAE run" in one_line_error(["experiment", "fixed-encoder", str(gan_run.path)])

    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "fixed-encoder", "--help"])
    assert exit_info.value.code == 0
    assert "--shared-samples" in capsys.readouterr().out
