"""The trained models shipped with mnistgen (``mnistgen pretrained``): their provenance and numbers, listed; each
exported as an ordinary run folder that every command reads; loaded and explored offline, without data or network;
and their numbers measured again on real MNIST (a VAE's on a subset of the test images, within its statistical error;
a GAN's Frechet distance of 10,000 samples in full) agree with what ``list`` prints."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from report_support import make_reproduction

import mnistgen
from mnistgen import pretrained
from mnistgen.cli import main
from mnistgen.errors import MnistgenError, UsageError
from mnistgen.runs import RunDir

NAMES = ("vae-spec", "vae-iwae", "gan-spec", "gan-improved")
VAES, GANS = NAMES[:2], NAMES[2:]
NUMBERS = {"vae": {"test_elbo", "test_iw_log_likelihood"}, "gan": {"frechet_distance", "real_vs_real"}}
SUBSET = 400  # test images of a VAE's numbers measured again
TOLERANCE_SE = 4.0  # ... which agree with the stored mean within this many standard errors of the subset's mean
ELBO_TOLERANCE_SE = 5.0  # the test ELBO of all test images: Monte Carlo errors estimated from 10 draws each


def test_the_four_models_ship_with_their_provenance_and_numbers():
    models = pretrained.manifest()
    assert tuple(models) == NAMES
    for name, info in models.items():
        assert info["kind"] == name[:3]
        assert info["command"].startswith(f"mnistgen {info['kind']} train --out RUN")
        assert re.fullmatch(r"[0-9a-f]{7,40}", info["commit"]) and isinstance(info["seed"], int)
        assert info["machine"] and re.match(r"\d{4}-\d\d-\d\d", info["date"])
        assert set(info["numbers"]) == NUMBERS[info["kind"]]
        assert all(math.isfinite(value) for value in info["numbers"].values())
        checkpoint = pretrained.stored(name)["checkpoint"]  # the SHA-256 checked
        weights = [t for value in checkpoint.values() if isinstance(value, dict) for t in value.values()]
        assert weights and all(t.dtype == torch.float16 for t in weights)
    assert models["vae-spec"]["epochs"] == models["vae-iwae"]["epochs"] == 200
    assert models["gan-spec"]["epochs"] == models["gan-improved"]["epochs"] == 100
    assert "--recipe improved" in models["gan-improved"]["command"]
    assert "--objective iwae" in models["vae-iwae"]["command"]


def test_list_prints_each_model_with_its_numbers_and_provenance(capsys):
    assert main(["pretrained", "list"]) == 0
    out = capsys.readouterr().out
    for name, info in pretrained.manifest().items():
        (line,) = [line for line in out.splitlines() if line.startswith(f"{name}: ")]
        for key, value in info["numbers"].items():
            assert f"{pretrained.LABELS[key]} {value:.2f}" in line
        assert info["command"] in out and f"commit {info['commit'][:7]}, seed {info['seed']}" in out


def test_an_unknown_name_is_one_line_naming_the_models(tmp_path, capsys):
    assert main(["pretrained", "export", "vae-spek", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vae-spek" in err and ", ".join(NAMES) in err
    assert not (tmp_path / "run").exists()


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=20).filter(lambda name: name not in NAMES))
def test_load_pretrained_refuses_any_other_name_in_one_line(name):
    with pytest.raises(UsageError) as caught:
        mnistgen.load_pretrained(name)
    assert "\n" not in str(caught.value) and ", ".join(NAMES) in str(caught.value)


def test_an_export_is_a_run_folder_of_the_stored_weights(tmp_path, capsys):
    for name in NAMES:
        out = tmp_path / name
        assert main(["pretrained", "export", name, "--out", str(out)]) == 0
        run = mnistgen.load_run(out, device="cpu")
        checkpoint = pretrained.stored(name)["checkpoint"]
        generator = "generator_ema" if "generator_ema" in checkpoint else "generator"  # the average, when there is one
        models = [("model", run.vae)] if run.kind == "vae" else [(generator, run.generator),
                                                                 ("discriminator", run.discriminator)]
        for key, model in models:
            for parameter, value in model.state_dict().items():
                assert torch.equal(value, checkpoint[key][parameter].float()), (name, parameter)
        assert run.epochs == pretrained.manifest()[name]["epochs"] == len(run.metrics)
        assert json.loads((out / "pretrained.json").read_text()) == {name: pretrained.entry(name)}
    assert main(["pretrained", "export", "gan-spec", "--out", str(tmp_path / "gan-spec")]) == 1
    assert "holds a run already" in capsys.readouterr().err


def test_gan_commands_work_on_an_export_unchanged(tmp_path, capsys):
    run = pretrained.export("gan-improved", tmp_path / "gan")
    assert main(["gan", "plot", str(run.path)]) == 0  # SPEC's epochs 0, 30, 70 from the shipped grids
    assert (run.figures / "progress.png").is_file() and (run.figures / "training.png").is_file()
    assert main(["gan", "sample", str(run.path), "--n", "16", "--out", str(tmp_path / "g.npy")]) == 0
    assert np.load(tmp_path / "g.npy").shape == (16, 28, 28)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), mnistgen.load_run(run.path).sample(16))
    assert main(["report", str(run.path)]) == 0
    score = pretrained.entry("gan-improved")["numbers"]["frechet_distance"]
    assert f"{score:.4f}" in (run.path / "report.html").read_text()  # the shipped score of its 10,000 samples


def test_load_pretrained_samples_good_digits_of_every_class():
    """What a newcomer sees: the shipped classifier reads each model's samples as confident digits of (almost) every
    class, as it would not an untrained model's."""
    from mnistgen.scoring import classify, load_classifier

    classifier = load_classifier()
    for name in NAMES:
        images = mnistgen.load_pretrained(name, device="cpu").sample(200)
        assert images.shape == (200, 28, 28) and images.dtype == np.float32
        _, probabilities = classify(classifier, images)
        assert len(set(probabilities.argmax(axis=1))) >= 9, name
        assert probabilities.max(axis=1).mean() > 0.7, name


def embedded(page: str) -> dict:
    match = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def floats(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def test_explore_pretrained_draws_the_shipped_vae_and_gan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["explore", "--pretrained"]) == 0
    data = embedded((tmp_path / "explorer.html").read_text())
    vae_name, gan_name = pretrained.EXPLORER
    vae, gan = mnistgen.load_pretrained(vae_name).vae, mnistgen.load_pretrained(gan_name).generator
    np.testing.assert_array_equal(floats(data["w2"]), vae.decoder.output.weight.detach().numpy().ravel())
    np.testing.assert_array_equal(floats(data["gan"]["linear_w"]), gan.linear.weight.detach().numpy().ravel())
    stored = pretrained.stored(vae_name)["explorer"]
    np.testing.assert_array_equal(floats(data["means"]), stored["means"].float().numpy().ravel())
    assert len(stored["means"]) == len(stored["labels"]) >= 5000
    assert vae_name in html.unescape((tmp_path / "explorer.html").read_text())


def test_explore_needs_a_run_or_pretrained_one_of_them(tmp_path, capsys):
    assert main(["explore"]) == 2
    assert main(["explore", str(tmp_path), "--pretrained"]) == 2
    assert capsys.readouterr().err.count("one of them") == 2


OFFLINE = """
import socket, sys
def refuse(self, *address):
    raise AssertionError(f"a connection to {address}")
socket.socket.connect = socket.socket.connect_ex = refuse
import mnistgen
from mnistgen.cli import main
out = sys.argv[1]
assert main(["pretrained", "list"]) == 0
assert main(["pretrained", "export", "gan-spec", "--out", out + "/gan"]) == 0
images = mnistgen.load_pretrained("vae-spec").sample(16)
assert images.shape == (16, 28, 28) and 0 <= images.min() and images.max() <= 1, images.shape
assert main(["explore", "--pretrained", "--out", out + "/explorer.html"]) == 0
print("offline: done")
"""


def test_everything_works_offline_without_mnist(tmp_path):
    """No data (an empty data folder, an empty cache) and every socket refused, in a fresh process."""
    (tmp_path / "empty").mkdir()
    environment = {**os.environ, "MNISTGEN_DATA_DIR": str(tmp_path / "empty"),
                   "MNISTGEN_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", OFFLINE, str(tmp_path)], env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("offline: done\n") and "vae-spec: test ELBO" in result.stdout
    assert (tmp_path / "gan" / "checkpoint.pt").is_file() and (tmp_path / "explorer.html").stat().st_size > 100_000
    assert not any((tmp_path / "empty").iterdir())


def test_a_quick_reproductions_report_shows_what_full_trainings_give(tmp_path):
    from mnistgen.config import to_dict
    from mnistgen.report import build_report
    from mnistgen.reproduce import quick_config

    root = make_reproduction(tmp_path / "RUN")
    assert "pretrained" not in build_report(root)  # SPEC's epochs: nothing to compare with
    RunDir(root).write_config(to_dict(quick_config()), kind="reproduce")
    banner = html.unescape(build_report(root).split("A shortened run")[1].split("</p>")[0])
    for name in NAMES:
        assert pretrained.headline(name) in banner


def test_a_damaged_copy_is_one_line(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "pretrained"
    shutil.copytree(pretrained.assets(), copy)
    weights = copy / "gan-spec" / pretrained.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of a weight
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "assets", lambda: copy)
    with pytest.raises(MnistgenError, match="checksum mismatch"):
        pretrained.export("gan-spec", tmp_path / "run")


# --------------------------------------------------------------------------- the numbers, measured again


@pytest.mark.parametrize("name", VAES)
def test_a_vaes_numbers_are_measured_again(name, mnist_dir, monkeypatch, one_torch_thread):
    """The test ELBO on all 10,000 test images (cheap), within its Monte Carlo error; IW log p(x), K = 1000, on a
    subset, within the subset's standard error: directly, and (far tighter) as its gap above each image's ELBO."""
    from mnistgen.evaluate.vae import iw_log_likelihood, load_run_protocol, load_trained_vae
    from mnistgen.losses import elbo_samples

    monkeypatch.setenv("MNISTGEN_DATA_DIR", str(mnist_dir))
    run = RunDir(pretrained.cached_run(name))
    trained = load_trained_vae(run, "cpu")
    images, draws = load_run_protocol(run, trained.config).test_images, torch.Generator().manual_seed(1)
    stored, evaluation = pretrained.entry(name)["numbers"], json.loads((run.path / "eval.json").read_text())
    assert {key: evaluation[key] for key in stored} == stored and evaluation["iw_samples"] == 1000
    elbo = elbo_samples(trained.model, images, 10, trained.config.objective == "analytic", draws)  # (10, 10000)
    error = math.hypot(float(elbo.mean(dim=1).std()) / math.sqrt(10), evaluation["test_elbo_mc_standard_error"])
    assert abs(float(elbo.mean()) - stored["test_elbo"]) <= ELBO_TOLERANCE_SE * error
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:SUBSET]
    iw = iw_log_likelihood(trained.model, images[chosen], 1000, draws)  # (SUBSET,)
    finite_population = math.sqrt(1.0 - SUBSET / len(images))
    for values, target in ((iw, stored["test_iw_log_likelihood"]),
                           (iw - elbo[:, chosen].mean(dim=0), stored["test_iw_log_likelihood"] - stored["test_elbo"])):
        error = float(values.std()) / math.sqrt(SUBSET) * finite_population
        assert abs(float(values.mean()) - target) <= TOLERANCE_SE * error, (float(values.mean()), target, error)


@pytest.mark.parametrize("name", GANS)
def test_a_gans_frechet_distance_of_10000_samples_is_measured_again(name, mnist_dir, monkeypatch):
    from mnistgen.config import ScoreConfig
    from mnistgen.evaluate.score_runs import run_to_score, score_run
    from mnistgen.scoring import REFERENCE_KEY, load_classifier, reference_statistics

    monkeypatch.setenv("MNISTGEN_DATA_DIR", str(mnist_dir))
    config = ScoreConfig(samples=10_000, device="cpu")
    classifier = load_classifier()
    report = score_run(run_to_score(pretrained.cached_run(name)), classifier,
                       reference_statistics(classifier, config.data), config, say=lambda line: None)
    stored = pretrained.entry(name)["numbers"]
    assert report["frechet_distance"] == pytest.approx(stored["frechet_distance"], rel=1e-4)
    assert report[REFERENCE_KEY]["frechet_distance"] == pytest.approx(stored["real_vs_real"], rel=1e-6)


def test_vae_plot_and_score_work_on_an_export(tmp_path, mnist_dir, monkeypatch, capsys):
    monkeypatch.setenv("MNISTGEN_DATA_DIR", str(mnist_dir))
    run = pretrained.export("vae-spec", tmp_path / "vae")
    assert main(["vae", "plot", str(run.path)]) == 0
    assert {p.name for p in run.figures.glob("*.png")} >= {"samples.png", "latent.png", "manifold.png", "curves.png"}
    assert main(["score", str(run.path), "--samples", "500"]) == 0
    assert json.loads((run.path / "samples.score.json").read_text())["n_images"] == 500
