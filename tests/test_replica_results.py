"""Every result of a replica run (``--replicas`` / ``--seeds``) gives each seed's number beside their mean, standard
deviation and 95% Student-t interval: ``vae eval``, ``score RUN``; the figures and samples of a replica run come from
its first seed (and say so), its training curves show every seed; ``load_run`` reaches every seed.

Real replica runs on disk, trained on the 4,000-image MNIST sample (a VAE of 3 seeds, 2 epochs; a GAN of 2 seeds,
1 epoch). The spreads are checked against numpy and scipy.stats.t, the per-seed values against the seed folders' own
files and against single-seed evaluations of the same folders.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import scipy.stats
import torch

import mnistgen
from mnistgen.cli import main
from mnistgen.config import DataConfig, GANConfig, VAEConfig, to_dict
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.evaluate.vae import sample_run
from mnistgen.imaging import to_uint8
from mnistgen.runs import RunDir
from mnistgen.scoring import ScoreFile
from mnistgen.stats import INTERVAL_NAME

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE = DataConfig(dataset="mnist-sample")
VAE_SEEDS = (1234, 1235, 1236)
GAN_SEEDS = (2, 3)
EVAL_FLAGS = ["--iw", "5", "--samples", "2", "--device", "cpu"]
EVAL_HEADLINES = {"test_elbo": "test ELBO", "train_elbo": "train ELBO", "test_iw_log_likelihood": "test log p(x)"}


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> RunDir:
    from mnistgen.train.vae import train_vae

    run = RunDir(tmp_path_factory.mktemp("replicas") / "vae")
    train_vae(VAEConfig(replicas=3, epochs=2, hidden=50, data=SAMPLE, device="cpu", threads=1), run,
              show_progress=False)
    return run


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> RunDir:
    from mnistgen.train.gan import train_gan

    run = RunDir(tmp_path_factory.mktemp("replicas") / "gan")
    protocol = load_protocol("gan", load_raw(SAMPLE))
    train_gan(GANConfig(replicas=2, epochs=1, grid_every=1, data=SAMPLE, device="cpu", threads=1),
              protocol.train_images, run, provenance=protocol.provenance, show_progress=False)
    return run


@pytest.fixture
def saved_figures(monkeypatch) -> dict:
    """The figures a command saves, by name (the real files are still written)."""
    saved: dict = {}
    original = RunDir.save_figures

    def keep(self, figures):
        saved.update(figures)
        return original(self, figures)

    monkeypatch.setattr(RunDir, "save_figures", keep)
    return saved


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


def one_line_error(capsys, argv: list[str], code: int = 1) -> str:
    returned = run_main(argv)
    err = capsys.readouterr().err
    assert returned == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def expected_spread(values: list[float]) -> dict:
    """Mean, std (n - 1) and the 95% Student-t interval, computed independently with numpy and scipy."""
    array = np.asarray(values, dtype=np.float64)
    std = array.std(ddof=1)
    half = scipy.stats.t.ppf(0.975, len(array) - 1) * std / math.sqrt(len(array))
    return {"mean": array.mean(), "std": std, "half": half, "low": array.mean() - half, "high": array.mean() + half}


def check_summary(summary: dict, values: list[float]) -> dict:
    expected = expected_spread(values)
    assert summary["n"] == len(values) and summary["values"] == pytest.approx(values, abs=0, rel=0)
    assert summary["mean"] == pytest.approx(expected["mean"], rel=1e-12)
    assert summary["std"] == pytest.approx(expected["std"], rel=1e-9)
    assert summary["ci95_half_width"] == pytest.approx(expected["half"], rel=1e-6)
    assert summary["ci95_low"] == pytest.approx(expected["low"], rel=1e-6)
    assert summary["ci95_high"] == pytest.approx(expected["high"], rel=1e-6)
    return expected


def table_line(out: str, label: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(label + " ")]
    return line


# --------------------------------------------------------------------------- vae eval


def test_vae_eval_gives_each_seed_and_the_spread_of_every_headline(vae_run, capsys):
    assert main(["vae", "eval", str(vae_run.path), *EVAL_FLAGS]) == 0
    out = capsys.readouterr().out
    aggregate = json.loads(vae_run.eval.read_text())
    assert aggregate["seeds"] == list(VAE_SEEDS) and aggregate["interval"] == INTERVAL_NAME
    for seed in VAE_SEEDS:
        own = json.loads(vae_run.seed_run(seed).eval.read_text())
        assert aggregate["per_seed"][str(seed)] == own and own["seed"] == seed and own["iw_samples"] == 5
    assert "Student-t" in out and str(vae_run.eval) in out
    for key, label in EVAL_HEADLINES.items():
        values = [aggregate["per_seed"][str(seed)][key] for seed in VAE_SEEDS]
        assert len(set(values)) == len(VAE_SEEDS)  # three models, not one evaluated three times
        expected = check_summary(aggregate["summary"][key], values)
        line = table_line(out, label)
        assert f"{expected['mean']:.2f} ± {expected['half']:.2f}" in line and f"{expected['std']:.2f}" in line
        shown = line.split()[-len(VAE_SEEDS):]
        assert shown == [f"{value:.2f}" for value in values]  # each seed's value, in the seeds' order
    header = next(line for line in out.splitlines() if "seed=1234" in line)
    assert header.split()[-3:] == [f"seed={seed}" for seed in VAE_SEEDS]


def test_each_seed_is_evaluated_as_its_own_single_seed_run(vae_run, capsys):
    """RUN/seed=N is an ordinary run: evaluated alone it gives the numbers the replica run's eval.json holds for it,
    in the single-seed format and printout."""
    assert main(["vae", "eval", str(vae_run.path), *EVAL_FLAGS]) == 0
    aggregate = json.loads(vae_run.eval.read_text())
    capsys.readouterr()
    second = vae_run.seed_run(VAE_SEEDS[1])
    assert main(["vae", "eval", str(second.path), *EVAL_FLAGS]) == 0
    out = capsys.readouterr().out
    alone = json.loads(second.eval.read_text())
    assert "seeds" not in alone and alone == aggregate["per_seed"][str(VAE_SEEDS[1])]
    assert out.startswith("test ELBO ") and "±" not in out


# --------------------------------------------------------------------------- figures


def lines_by_seed(axis) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in axis.get_lines()
            if line.get_label().startswith("seed ")}


def test_vae_plot_shows_the_first_seed_and_every_seed_s_curves(vae_run, saved_figures, capsys):
    assert main(["vae", "plot", str(vae_run.path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    first = VAE_SEEDS[0]
    assert f"wrote {vae_run.figures / 'samples.png'} (seed {first}, the first of 3 seeds)" in out
    assert f"wrote {vae_run.figures / 'curves.png'} (every seed: 1234, 1235, 1236)" in out
    assert all((vae_run.figures / f"{name}.png").is_file() for name in ("samples", "latent", "curves"))
    curves = saved_figures["curves"]
    assert "3 seeds" in curves.get_suptitle()
    panels = [axis for axis in curves.axes if lines_by_seed(axis)]
    assert len(panels) == 2  # train and test ELBO, one panel each (2 epochs: no zoomed column)
    for axis, key in zip(panels, ("train_elbo", "test_elbo"), strict=True):
        drawn = lines_by_seed(axis)
        assert list(drawn) == [f"seed {seed}" for seed in VAE_SEEDS]
        for seed in VAE_SEEDS:
            assert drawn[f"seed {seed}"] == pytest.approx([r[key] for r in vae_run.seed_run(seed).read_metrics()])
        assert [text.get_text() for text in axis.get_legend().get_texts()] == [f"seed {s}" for s in VAE_SEEDS]
        assert axis.get_xlabel() == "epoch" and "ELBO" in axis.get_ylabel() and key.split("_")[0] in axis.get_title()
    # the other figures are the first seed's: the same pictures as that seed's own folder gives
    replica_samples = [image.get_array() for axis in saved_figures["samples"].axes for image in axis.get_images()]
    saved_figures.clear()
    assert main(["vae", "plot", str(vae_run.seed_run(first).path), "--device", "cpu"]) == 0
    own = [image.get_array() for axis in saved_figures["samples"].axes for image in axis.get_images()]
    assert len(own) == len(replica_samples) and all(np.array_equal(a, b) for a, b in zip(own, replica_samples,
                                                                                           strict=True))
    saved_figures.clear()
    assert main(["vae", "plot", str(vae_run.seed_run(VAE_SEEDS[1]).path), "--device", "cpu"]) == 0
    other = [image.get_array() for axis in saved_figures["samples"].axes for image in axis.get_images()]
    assert not all(np.array_equal(a, b) for a, b in zip(other, replica_samples, strict=True))
    capsys.readouterr()


def test_gan_plot_shows_the_first_seed_s_grids_and_every_seed_s_training(gan_run, saved_figures, capsys):
    assert main(["gan", "plot", str(gan_run.path), "--epochs", "0,1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"wrote {gan_run.figures / 'progress.png'} (seed 2, the first of 2 seeds)",
                   f"wrote {gan_run.figures / 'training.png'} (every seed: 2, 3)"]
    progress = [image.get_array() for axis in saved_figures["progress"].axes for image in axis.get_images()]
    assert len(progress) == 2
    first_grid = gan_run.seed_run(2).load_grid(1)  # the tile of the first seed's epoch-1 grid holds its images
    assert np.isclose(np.asarray(progress[1])[1:29, 1:29], first_grid[0]).all()
    assert not np.isclose(np.asarray(progress[1])[1:29, 1:29], gan_run.seed_run(3).load_grid(1)[0]).all()
    training = saved_figures["training"]
    panels = [axis for axis in training.axes if lines_by_seed(axis)]
    assert len(panels) == 4
    for axis, key in zip(panels, ("d_loss", "g_loss", "d_real", "d_fake"), strict=True):
        drawn = lines_by_seed(axis)
        assert list(drawn) == ["seed 2", "seed 3"]
        for seed in GAN_SEEDS:
            assert drawn[f"seed {seed}"] == pytest.approx([r[key] for r in gan_run.seed_run(seed).read_metrics()])
        assert axis.get_legend() is not None and axis.get_xlabel() == "epoch" and axis.get_title()
    assert "2 seeds" in training.get_suptitle()


# --------------------------------------------------------------------------- sample and load_run


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_sample_uses_the_first_seed_and_says_so(family, vae_run, gan_run, tmp_path, capsys):
    run, seeds = (vae_run, VAE_SEEDS) if family == "vae" else (gan_run, GAN_SEEDS)
    first = run.seed_run(seeds[0])
    assert main([family, "sample", str(run.path), "--n", "6", "--out", str(tmp_path / "a.npy"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnistgen: note: ") and f"the first, {first.path} " in err
    assert main([family, "sample", str(first.path), "--n", "6", "--out", str(tmp_path / "b.npy"), "--device",
                 "cpu"]) == 0
    assert capsys.readouterr().err == ""  # a single-seed run: no note
    second = run.seed_run(seeds[1])
    assert main([family, "sample", str(second.path), "--n", "6", "--out", str(tmp_path / "c.npy"), "--device",
                 "cpu"]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert not np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "c.npy"))


def test_load_run_gives_the_first_seed_and_reaches_every_seed(vae_run, gan_run, capsys):
    run = mnistgen.load_run(vae_run.path, device="cpu")
    err = capsys.readouterr().err
    assert run.path == vae_run.seed_run(1234).path and run.config.seed == 1234 and run.seeds == VAE_SEEDS
    assert err.count("\n") == 1 and "seed=N" in err and str(run.path) in err
    chosen = mnistgen.load_run(gan_run.path, device="cpu", seed=3)
    assert chosen.path == gan_run.seed_run(3).path and chosen.config.seed == 3 and chosen.seeds == GAN_SEEDS
    assert capsys.readouterr().err == ""
    reference = torch.load(gan_run.seed_run(3).checkpoint, weights_only=True)["generator"]
    assert all(torch.equal(value, chosen.generator.state_dict()[name]) for name, value in reference.items())
    single = mnistgen.load_run(gan_run.seed_run(2).path, device="cpu")
    assert single.seeds == (2,)
    with pytest.raises(mnistgen.MnistgenError, match=r"^.*: no replica of seed 9 here \(its seeds: 2, 3\)$"):
        mnistgen.load_run(gan_run.path, seed=9)
    with pytest.raises(mnistgen.MnistgenError, match="a single-seed run"):
        mnistgen.load_run(gan_run.seed_run(2).path, seed=2)


# --------------------------------------------------------------------------- score


def test_score_of_run_folders_per_seed_and_summarized(vae_run, gan_run, mnist_dir, tmp_path, capsys):
    """``score`` of a VAE replica run, a GAN replica run and a .npy file in one command."""
    images = np.random.default_rng(0).random((30, 28, 28), dtype=np.float32)
    np.save(tmp_path / "noise.npy", images)
    argv = ["score", str(vae_run.path), str(gan_run.path), str(tmp_path / "noise.npy"), "--samples", "40",
            "--data-dir", str(mnist_dir), "--offline", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "noise.score.json").is_file()  # a file keeps being scored as before
    for run, seeds, kind in ((vae_run, VAE_SEEDS, "vae"), (gan_run, GAN_SEEDS, "gan")):
        aggregate = json.loads((run.path / "score.json").read_text())
        assert aggregate["seeds"] == list(seeds) and aggregate["interval"] == INTERVAL_NAME
        for seed in seeds:
            folder = run.seed_run(seed).path
            with np.load(folder / "samples.npz") as stored:
                levels = stored["images"]
            assert levels.dtype == np.uint8 and levels.shape == (40, 28, 28)
            if kind == "vae":  # the decoder means of that seed's model with that seed, as `vae sample` draws them
                assert np.array_equal(levels, to_uint8(sample_run(run.seed_run(seed), 40)))
            own = json.loads((folder / "samples.score.json").read_text())
            assert aggregate["per_seed"][str(seed)] == own and own["n_images"] == 40
            assert str(folder / "samples.npz") in out
        assert not (run.path / "samples.npz").exists()
        summary_lines = out.split(f"{run.path}: 40 images of each seed's model\n", 1)[1].split(
            f"written: {run.path / 'score.json'}\n", 1)[0]
        for key, label in (("frechet_distance", "Frechet distance (lower)"),
                           ("classifier_score", "classifier score (max 10)"),
                           ("class_tv_distance", "class TV to uniform (lower)"),
                           ("min_class_share", "min class share (max 0.1)")):
            values = [aggregate["per_seed"][str(seed)][key] for seed in seeds]
            assert len(set(values)) == len(seeds) or key in ("class_tv_distance", "min_class_share")  # shares may tie
            expected = check_summary(aggregate["summary"][key], values)
            line = table_line(summary_lines, label)
            assert f"{expected['mean']:.3f} ± {expected['half']:.3f}" in line
            assert line.split()[-len(seeds):] == [f"{value:.3f}" for value in values]
        # each seed's class balance from its histogram by hand, and the worst seed: the largest TV, smallest share
        shares = {seed: np.array(aggregate["per_seed"][str(seed)]["class_histogram"]) / 40 for seed in seeds}
        tv = {seed: np.abs(shares[seed] - 0.1).sum() / 2 for seed in seeds}
        for seed in seeds:
            assert aggregate["per_seed"][str(seed)]["class_tv_distance"] == pytest.approx(tv[seed], abs=1e-12)
        worst_tv = [seed for seed in seeds if tv[seed] == max(tv.values())][0]
        worst_share = [seed for seed in seeds if shares[seed].min() == min(s.min() for s in shares.values())][0]
        assert aggregate["worst_seed"] == {
            "class_tv_distance": {"seed": worst_tv, "value": pytest.approx(tv[worst_tv], abs=1e-12)},
            "min_class_share": {"seed": worst_share, "value": pytest.approx(shares[worst_share].min(), abs=1e-12)}}
        assert (f"worst seed: class TV to uniform (lower) {tv[worst_tv]:.3f} (seed {worst_tv}), min class share "
                f"(max 0.1) {shares[worst_share].min():.3f} (seed {worst_share})") in summary_lines
        for seed in seeds:  # the real-vs-real reference beside each seed's: real digits are near uniform
            reference = aggregate["per_seed"][str(seed)]["real_vs_real_reference"]
            shares = np.array(reference["class_histogram"]) / reference["n_images"]
            assert reference["class_tv_distance"] == pytest.approx(np.abs(shares - 0.1).sum() / 2, abs=1e-12)
            assert reference["class_tv_distance"] < 0.05
    # what was scored is the stored file: scoring it again gives the same numbers
    seed_folder = gan_run.seed_run(3).path
    with np.load(seed_folder / "samples.npz") as stored:
        again = mnistgen.score(stored["images"], data_dir=mnist_dir, offline=True, device="cpu")
    assert again["frechet_distance"] == pytest.approx(
        json.loads((seed_folder / "samples.score.json").read_text())["frechet_distance"], rel=1e-9)


def test_the_class_balance_of_seeds_is_their_mean_and_worst_seed():
    """Three seeds' histograms of 20 images: TV to uniform 0, 0.2 and 0.1 (by hand), smallest shares 0.1, 0.05, 0."""
    from mnistgen.report.html import format_value
    from mnistgen.report.sections import TABLE_KEYS, score_cells
    from mnistgen.scoring import worst_seeds

    scores = {1: ScoreFile(20, 10.0, 5.0, (2,) * 10),  # balanced
              2: ScoreFile(20, 12.0, 5.5, (6, 2, 2, 2, 2, 2, 1, 1, 1, 1)),  # (0.2 + 5 * 0 + 4 * 0.05) / 2 = 0.2
              3: ScoreFile(20, 11.0, 5.2, (3, 2, 2, 2, 2, 2, 2, 2, 3, 0))}  # (0.05 + 0.05 + 0.1) / 2 = 0.1
    assert worst_seeds({seed: score.balance for seed, score in scores.items()}) == {
        "class_tv_distance": {"seed": 2, "value": pytest.approx(0.2, abs=1e-12)},
        "min_class_share": {"seed": 3, "value": 0.0}}
    frechet, _, tv, share = score_cells(scores, TABLE_KEYS)  # the report's cells of a replica set: mean ± interval
    expected_tv, expected_share = expected_spread([0.0, 0.2, 0.1]), expected_spread([0.1, 0.05, 0.0])
    assert f"{expected_tv['mean']:.4f} ± {expected_tv['half']:.4f}</span><br><small>worst: seed 2, 0.2000</small>" in tv
    assert (f"{expected_share['mean']:.4f} ± {expected_share['half']:.4f}</span><br><small>worst: seed 3, "
            "0.0000</small>") in share
    assert "worst" not in format_value(frechet)
    assert score_cells({None: scores[2]}, TABLE_KEYS)[2:] == [pytest.approx(0.2), pytest.approx(0.05)]  # one seed


def test_score_of_a_single_seed_run_writes_no_summary(gan_run, mnist_dir, capsys):
    single = gan_run.seed_run(2)
    before = {path.name for path in gan_run.path.iterdir()}
    assert main(["score", str(single.path), "--samples", "20", "--data-dir", str(mnist_dir), "--offline", "--device",
                 "cpu"]) == 0
    out = capsys.readouterr().out
    report = json.loads((single.path / "samples.score.json").read_text())
    assert report["n_images"] == 20 and report["file"] == "samples.npz"
    assert not (single.path / "score.json").exists() and "±" not in out
    assert {path.name for path in gan_run.path.iterdir()} == before  # nothing written beside it


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_writes_nothing(vae_run, gan_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "empty: not a run folder (no config.json)" in one_line_error(capsys, ["score", str(tmp_path / "empty")])
    assert "no such file or run folder" in one_line_error(capsys, ["score", str(tmp_path / "missing")])
    RunDir(tmp_path / "repro").write_config({}, kind="reproduce")
    assert "a reproduction folder; score its runs" in one_line_error(capsys, ["score", str(tmp_path / "repro")])
    untrained = RunDir(tmp_path / "untrained")
    untrained.write_config(to_dict(VAEConfig(replicas=2)), kind="vae")  # a replica run whose seeds never trained
    err = one_line_error(capsys, ["score", str(untrained.path)])
    assert f"{untrained.seed_run(1234).checkpoint}: no checkpoint here" in err
    copy = tmp_path / "copy"
    shutil.copytree(gan_run.path, copy, ignore=shutil.ignore_patterns("samples*", "score.json"))
    err = one_line_error(capsys, ["score", str(copy), "--samples", "1"], code=2)
    assert "--samples 1: a run's score needs at least 2 images" in err
    assert not list(copy.rglob("samples*")) and not (copy / "score.json").exists()  # refused before any work
    assert "a 'gan' run folder, not a VAE run" in one_line_error(capsys, ["vae", "eval", str(gan_run.path)])
    assert "a 'gan' run folder, not a VAE run" in one_line_error(capsys, ["vae", "plot", str(gan_run.path)])
    assert "a 'vae' run folder, not a GAN run" in one_line_error(capsys, ["gan", "plot", str(vae_run.path)])
    err = one_line_error(capsys, ["gan", "sample", str(vae_run.path), "--n", "2", "--out", str(tmp_path / "x.npy")])
    assert "a 'vae' run folder, not a GAN run" in err and not (tmp_path / "x.npy").exists()
    err = one_line_error(capsys, ["gan", "plot", str(gan_run.path), "--epochs", "0,7"])
    assert f"{gan_run.seed_run(2).path}: no saved grid for epoch(s) 7; grids exist for epochs 0, 1" in err
    assert not (tmp_path / "empty" / "samples.npz").exists()
