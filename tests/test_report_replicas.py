"""The report of runs that hold seeds as replicas, and ``mnistgen reproduce --replicas N`` end to end.

The replica runs are real (trained, evaluated and plotted on the 5,000-digit sample shipped with mnistgen, a couple
of epochs each); every interval the page shows is checked against one computed here with scipy's Student t, from
the numbers each seed wrote into its own folder.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from browser_support import browser, open_page, overflow  # noqa: F401 - browser is a fixture
from report_support import REFERENCE, embedded_images, make_reproduction, parse
from scipy import stats

from mnistgen import reproduce as pipeline
from mnistgen.cli import main
from mnistgen.config import DataConfig, GANConfig, ReproduceConfig, VAEConfig, VAEEvalConfig, to_dict
from mnistgen.plots import report as report_plots
from mnistgen.report import build_report
from mnistgen.runs import RunDir, write_json

pytestmark = pytest.mark.slow  # whole trainings, processes and pipelines: `pytest -m slow`

VAE_SEEDS = (1234, 1235, 1236)  # --replicas 3 from the VAE's default seed
GAN_SEEDS = (2, 5)  # --seeds 2,5: the report follows the run's own seeds, not a count from its first
SAMPLE = DataConfig(dataset="mnist-sample", offline=True)
GAN_SCORES = {2: (123.456, 3.25), 5: (140.25, 2.75)}  # Frechet distance and classifier score of each GAN seed


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval, independently of mnistgen.stats."""
    n = len(values)
    return float(np.mean(values)), float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def read(path: Path):
    return json.loads(path.read_text())


def plain(cell: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", cell)).replace("\xa0", " ")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def mean_and_half(cell: str) -> tuple[float, float]:
    """'-196.26 ± 19.75' -> (-196.26, 19.75)."""
    found = re.fullmatch(r"\s*([-\d.,]+) ± ([\d.,]+)\s*", plain(cell))
    assert found, cell
    return number(found[1]), number(found[2])


def assert_interval(cell: str, values: list[float], decimals: int) -> None:
    """The cell shows mean ± half-width of the values' 95% Student-t interval, rounded to ``decimals``."""
    shown_mean, shown_half = mean_and_half(cell)
    mean, half = t_interval(values)
    tolerance = 0.5 * 10 ** -decimals + 1e-9
    assert abs(shown_mean - mean) <= tolerance and abs(shown_half - half) <= tolerance, (cell, mean, half)


def assert_each_seed(cell: str, values: dict[int, float]) -> None:
    """The cell lists 'seed S: value' for every seed in order, each value as the seed's own (to its rounding)."""
    found = re.findall(r"seed (\d+): ([-\d.,]+)", plain(cell))
    assert [int(seed) for seed, _ in found] == list(values), cell
    for (seed, shown), value in zip(found, values.values(), strict=True):
        assert math.isclose(number(shown), value, rel_tol=1e-3), (seed, shown, value)


def summary_rows(text: str) -> dict[tuple[str, str], list[str]]:
    summary = text.split('<table class="summary">')[1].split("</table>")[0]
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", summary.split("<tbody>")[1])]
    return {(row[0], row[1]): row for row in rows}


def section_of(text: str, anchor: str) -> str:
    return text.split(f'<section id="{anchor}">')[1].split("</section>")[0]


# --------------------------------------------------------------------------- real replica runs, built once


@pytest.fixture(scope="module")
def replica_folder(tmp_path_factory) -> Path:
    """A reproduction folder whose VAE holds 3 seeds (1 epoch, each evaluated, the first two plotted) and whose GAN
    holds 2 (1 epoch, each plotted, each with a score of chosen numbers), trained with mnistgen's own code."""
    from mnistgen.data.protocols import load_protocol
    from mnistgen.data.sources import load_raw
    from mnistgen.evaluate import gan as gan_evaluation
    from mnistgen.evaluate import vae as vae_evaluation
    from mnistgen.train.gan import train_gan
    from mnistgen.train.vae import train_vae

    root = tmp_path_factory.mktemp("replicas") / "RUN"
    root.mkdir()
    RunDir(root).write_config(to_dict(ReproduceConfig(data=SAMPLE, vae_epochs=1, gan_epochs=1, replicas=3)),
                              kind="reproduce")
    vae = RunDir(root / "vae")
    train_vae(VAEConfig(data=SAMPLE, epochs=1, replicas=3, hidden=50, device="cpu"), vae, show_progress=False)
    for seed in VAE_SEEDS:
        vae_evaluation.evaluate_run(vae.seed_run(seed), VAEEvalConfig(iw=3, samples=2, device="cpu"))
    for seed in VAE_SEEDS[:2]:  # the second seed's figures too: a page showing them instead would be caught
        vae_evaluation.write_figures(vae.seed_run(seed), VAEEvalConfig(device="cpu"))
    protocol = load_protocol("gan", load_raw(SAMPLE))
    gan = RunDir(root / "gan")
    train_gan(GANConfig(data=SAMPLE, epochs=1, seeds="2,5", grid_every=1, device="cpu"), protocol.train_images, gan,
              provenance=protocol.provenance, show_progress=False)
    for seed, (distance, score) in GAN_SCORES.items():
        gan_evaluation.write_figures(gan.seed_run(seed), [0, 1])
        write_json(gan.seed_run(seed).path / "gan.score.json",
                   {"n_images": 64, "frechet_distance": distance, "classifier_score": score,
                    "class_histogram": [7, 6, 6, 6, 7, 6, 6, 7, 6, 7], "real_vs_real_reference": REFERENCE})
        np.save(gan.seed_run(seed).path / "gan.npy", np.random.default_rng(seed).random((64, 28, 28)))
    return root


@pytest.fixture(scope="module")
def page_text(replica_folder) -> str:
    return build_report(replica_folder)


def test_headline_numbers_show_the_mean_and_95_interval_first_then_every_seed(replica_folder, page_text):
    assert parse(page_text).errors == []
    rows = summary_rows(page_text)
    header = page_text.split('<table class="summary">')[1].split("</thead>")[0]
    assert re.findall(r"<th>(.*?)</th>", header) == ["part", "quantity", "mean ± 95% interval", "each seed",
                                                     "how to read it"]
    assert ("VAE: the 95% Student-t interval over 3 seeds (1234, 1235, 1236); GAN: the 95% Student-t interval over 2 "
            "seeds (2, 5)") in page_text
    vae = RunDir(replica_folder / "vae")
    for key, label in (("test_elbo", "test ELBO (nats per image)"), ("train_elbo", "training ELBO (nats per image)"),
                       ("test_iw_log_likelihood", "test log p(x), importance-weighted estimate")):
        values = {seed: read(vae.seed_run(seed).eval)[key] for seed in VAE_SEEDS}
        _, _, centre, each, _ = rows[("VAE", label)]
        assert_interval(centre, list(values.values()), decimals=2)
        assert_each_seed(each, values)
    assert plain(rows[("VAE", "epochs trained")][2]) == "1"  # a count every seed shares is shown once
    assert plain(rows[("VAE", "K, importance samples per image")][2]) == "3"
    gan = RunDir(replica_folder / "gan")
    for key in ("d_loss", "g_loss", "d_real", "d_fake"):
        values = {seed: gan.seed_run(seed).read_metrics()[-1][key] for seed in GAN_SEEDS}
        _, _, centre, each, _ = rows[("GAN", f"{key} (last epoch)")]
        assert_interval(centre, list(values.values()), decimals=4)
        assert_each_seed(each, values)


def test_the_scores_of_every_seed_and_their_interval(page_text):
    title = "GAN, G(z), z ~ U[-1, 1]^zdim"
    _, _, centre, each, _ = summary_rows(page_text)[("score", f"{title}: Frechet distance / classifier score")]
    distance, score = centre.split("</span> / ")
    assert_interval(distance, [d for d, _ in GAN_SCORES.values()], decimals=2)
    assert_interval(score, [s for _, s in GAN_SCORES.values()], decimals=4)
    assert plain(each) == "seed 2: 123.46 / 3.2500; seed 5: 140.25 / 2.7500"
    table = section_of(page_text, "scores").split('<table class="scores">')[1].split("<tbody>")[1]
    rows = [[plain(cell) for cell in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table)]
    labels = [row[0] for row in rows]
    first = labels.index(f"{title}: mean ± 95% Student-t interval over 2 seeds")
    assert labels[first + 1:first + 3] == [f"{title}, seed 2", f"{title}, seed 5"]  # the mean first, then each seed
    assert rows[first + 1][2:4] == ["123.46", "3.2500"] and rows[first + 2][2:4] == ["140.25", "2.7500"]


def test_each_run_section_tabulates_every_seed_beside_the_mean(replica_folder, page_text):
    vae = section_of(page_text, "vae")
    assert "3 seeds (1234, 1235, 1236) trained as replicas" in vae
    evaluation = vae.split("<h3>Evaluation</h3>")[1].split("</table>")[0]
    assert re.findall(r"<th>(.*?)</th>", evaluation) == ["quantity", "mean ± 95% Student-t interval over 3 seeds",
                                                         "seed 1234", "seed 1235", "seed 1236"]
    row = re.search(r"<tr><td>test_iw_log_likelihood</td>(.*?)</tr>", evaluation)[1]
    cells = re.findall(r"<td>(.*?)</td>", row)
    values = [read(RunDir(replica_folder / "vae").seed_run(seed).eval)["test_iw_log_likelihood"] for seed in VAE_SEEDS]
    assert_interval(cells[0], values, decimals=2)
    assert [number(plain(c)) for c in cells[1:]] == pytest.approx(values, rel=1e-4)
    assert re.search(r"<tr><td>seed</td><td>differs by seed</td><td>1234</td><td>1235</td><td>1236</td></tr>",
                     evaluation)
    for seed in VAE_SEEDS:  # every seed's metrics by epoch
        assert f"Seed {seed} (<code>seed={seed}/metrics.jsonl</code>)" in vae


def test_figures_come_from_the_first_seed_and_say_so(replica_folder, page_text):
    images = embedded_images(page_text)
    first, other = RunDir(replica_folder / "vae").seed_run(1234), RunDir(replica_folder / "vae").seed_run(1235)
    for name in ("samples.png", "latent.png", "interpolation.png", "manifold.png"):
        assert images.count((first.figures / name).read_bytes()) == 1, name
        assert (other.figures / name).read_bytes() not in images, name
    assert (first.figures / "curves.png").read_bytes() not in images  # one seed's curves: replaced by every seed's
    assert "Seed 1234, the first of the 3 seeds. SPEC figure 2." in page_text
    gan_first, gan_other = RunDir(replica_folder / "gan").seed_run(2), RunDir(replica_folder / "gan").seed_run(5)
    assert images.count((gan_first.figures / "progress.png").read_bytes()) == 1
    assert (gan_other.figures / "progress.png").read_bytes() not in images
    assert (gan_first.grids / "epoch_001.png").read_bytes() in images
    assert (gan_other.grids / "epoch_001.png").read_bytes() not in images
    assert "all 2 grids of seed 2 (the first seed)" in page_text
    assert "Seed 2, the first of the 2 seeds. SPEC §3 progress figure" in page_text
    assert "the first 72 of the scored images: gan, g(z), z ~ u[-1, 1]^zdim, seed 2 (the first of 2 seeds)" in \
        html.unescape(page_text).lower()


def test_the_training_curves_draw_one_line_per_seed(replica_folder, monkeypatch):
    drawn = {}
    real = report_plots.metric_curves

    def recording(epochs, panels, title):
        drawn[title] = (list(epochs), {panel: series for panel, _, series in panels})
        return real(epochs, panels, title)

    monkeypatch.setattr(report_plots, "metric_curves", recording)
    text = build_report(replica_folder)
    epochs, panels = drawn["VAE (SPEC §2): training curves of 3 seeds"]
    assert epochs == [1] and list(panels) == ["ELBO"]
    vae = RunDir(replica_folder / "vae")
    expected = {f"seed {seed}: {label}": [r[key] for r in vae.seed_run(seed).read_metrics()]
                for key, label in (("train_elbo", "training images"), ("test_elbo", "test images"))
                for seed in VAE_SEEDS}
    assert panels["ELBO"] == expected
    epochs, panels = drawn["GAN (SPEC §3): training curves of 2 seeds"]
    gan = RunDir(replica_folder / "gan")
    assert epochs == [1]
    assert panels["GAN losses"] == {f"seed {seed}: {label}": [gan.seed_run(seed).read_metrics()[0][key]]
                                    for key, label in (("d_loss", "D: cross-entropy on real and generated"),
                                                       ("g_loss", "G: -log D(G(z)) (non-saturating)"))
                                    for seed in GAN_SEEDS}
    assert "Training curves of every seed (1234, 1235, 1236), one line per seed" in text


def test_a_seed_without_its_eval_json_is_read_from_the_aggregate_or_left_out(tmp_path, monkeypatch):
    """RUN/eval.json's per_seed stands in for a seed's missing eval.json; a seed with neither is left out of the
    interval, and the cell says over how many seeds it is. A seed that trained fewer epochs has a gap in the curves."""
    run = RunDir(tmp_path / "vae")
    run.write_config(to_dict(VAEConfig(replicas=3)), kind="vae")
    results = {1234: -160.5, 1235: -161.25, 1236: -159.75}
    for seed, elbo in results.items():
        run.seed_run(seed).write_config(to_dict(VAEConfig(seed=seed)), kind="vae")
        for epoch in range(1, 2 if seed == 1234 else 3):
            run.seed_run(seed).append_metrics({"epoch": epoch, "train_elbo": elbo - epoch, "test_elbo": elbo + epoch})
    write_json(run.seed_run(1234).eval, {"test_elbo": results[1234]})
    write_json(run.eval, {"seeds": [1234, 1235, 1236], "per_seed": {"1235": {"test_elbo": results[1235]}}})
    drawn, real = [], report_plots.metric_curves
    monkeypatch.setattr(report_plots, "metric_curves", lambda epochs, panels, title: drawn.append((epochs, panels))
                        or real(epochs, panels, title))
    rows = summary_rows(build_report(run.path))
    [(epochs, [(_, _, lines)])] = drawn
    assert epochs == [1, 2] and lines["seed 1234: test images"] == [results[1234] + 1, None]
    assert lines["seed 1236: training images"] == [results[1236] - 1, results[1236] - 2]
    _, _, centre, each, _ = rows[("VAE", "test ELBO (nats per image)")]
    assert plain(centre).endswith(" (2 of 3 seeds)")
    assert_interval(plain(centre).removesuffix(" (2 of 3 seeds)"), [results[1234], results[1235]], decimals=2)
    assert plain(each) == "seed 1234: -160.50; seed 1235: -161.25; seed 1236: —"


def test_a_single_seed_run_shows_no_interval(tmp_path):
    text = build_report(make_reproduction(tmp_path / "RUN"))
    assert "Student-t" not in text and "each seed" not in text and "±" not in text


# --------------------------------------------------------------------------- mnistgen reproduce --replicas 2


def tiny_flags(mnist_dir) -> list[str]:
    """--quick's pipeline cut to 1 epoch and a few samples (the flags given win over --quick's)."""
    return ["--quick", "--replicas", "2", "--dataset", "mnist-sample", "--data-dir", str(mnist_dir), "--offline",
            "--vae-epochs", "1", "--gan-epochs", "1", "--iw-samples", "3", "--score-samples", "200", "--device", "cpu"]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("reproduce-replicas") / "RUN"
    assert main(["reproduce", "--out", str(out), *tiny_flags(mnist_dir)]) == 0
    return out


def test_reproduce_trains_evaluates_and_scores_every_seed(replicated):
    stages = read(replicated / "stages.json")
    assert all(record["status"] == "done" for record in stages["stages"].values())
    assert "--replicas" in stages["command"] and read(replicated / "config.json")["config"]["replicas"] == 2
    assert "seed 1234, the first of 2 seeds" in stages["stages"]["vae-plots"]["note"]
    vae, gan = RunDir(replicated / "vae"), RunDir(replicated / "gan")
    assert [seed for seed, _ in vae.replicas()] == [1234, 1235] and [seed for seed, _ in gan.replicas()] == [2, 3]
    assert read(vae.eval)["seeds"] == [1234, 1235]  # the aggregate, beside each seed's own eval.json
    for seed, run in vae.replicas():
        assert read(run.eval)["seed"] == seed and read(run.eval)["iw_samples"] == 3
        for name in ("vae_means", "vae_binary"):
            assert read(run.path / f"{name}.score.json")["n_images"] == 200
    for _, run in gan.replicas():
        assert read(run.path / "gan.score.json")["n_images"] == 200
    assert not (replicated / "samples").exists()
    means = [np.load(run.path / "vae_means.npz")["images"] for _, run in vae.replicas()]
    assert not np.array_equal(*means)  # each seed's own model

    text = (replicated / "report.html").read_text()
    rows = summary_rows(text)
    elbos = {seed: read(run.eval)["test_elbo"] for seed, run in vae.replicas()}
    assert_interval(rows[("VAE", "test ELBO (nats per image)")][2], list(elbos.values()), decimals=2)
    assert_each_seed(rows[("VAE", "test ELBO (nats per image)")][3], elbos)
    distances = [read(run.path / "gan.score.json")["frechet_distance"] for _, run in gan.replicas()]
    centre = rows[("score", "GAN, G(z), z ~ U[-1, 1]^zdim: Frechet distance / classifier score")][2]
    assert_interval(centre.split("</span> / ")[0], distances, decimals=2)
    images = embedded_images(text)
    assert images.count((vae.figures / "latent.png").read_bytes()) == 1  # vae plot RUN: the first seed's model
    assert "Seed 1234, the first of the 2 seeds. SPEC figure 2." in text
    assert "Every seed (1234, 1235), one line per seed. Training curves" in text
    assert images.count((gan.figures / "progress.png").read_bytes()) == 1  # gan plot RUN: the first seed's grids
    assert "Seed 2, the first of the 2 seeds. SPEC §3 progress figure" in text
    assert images.count((gan.figures / "training.png").read_bytes()) == 1
    assert "Every seed (2, 3), one line per seed. Training curves: left, the mean losses" in text
    assert images.count((gan.seed_run(2).grids / "epoch_001.png").read_bytes()) == 1
    assert (gan.seed_run(3).grids / "epoch_001.png").read_bytes() not in images
    assert len(images) == 5 + 2 + 2 + 3  # VAE figures, GAN progress and curves, 2 grids, 3 previews
    assert (replicated / "explorer.html").stat().st_size > 100_000


def test_the_interval_is_visible_in_chromium(replicated, browser):  # noqa: F811 - fixture
    page, traffic = open_page(browser, replicated / "report.html")
    try:
        assert page.get_by_text("VAE: the 95% Student-t interval over 2 seeds (1234, 1235)").is_visible()
        cell = page.locator("table.summary tr", has_text="test ELBO (nats per image)").locator("span.spread")
        assert cell.is_visible() and re.fullmatch(r"-?[\d,]+\.\d\d ± [\d,]+\.\d\d", cell.inner_text())
        assert page.get_by_text("mean ± 95% Student-t interval over 2 seeds").first.is_visible()
        images = page.evaluate("Array.from(document.images).map(i => i.naturalWidth * i.naturalHeight)")
        assert len(images) == 12 and all(images)
        assert traffic.non_local == [] and traffic.failed == [] and traffic.console_errors == []
    finally:
        page.context.close()
    assert overflow(browser, replicated / "report.html") == {}  # each seed's column beside the mean fits too


def test_a_finished_replica_reproduction_resumes_to_nothing(replicated, mnist_dir, capsys):
    assert main(["reproduce", "--out", str(replicated), "--resume"]) == 0
    assert capsys.readouterr().err.count("done before") == len(pipeline.STAGES)
    assert main(["reproduce", "--out", str(replicated), "--resume", "--replicas", "3"]) == 1
    assert "--replicas" in capsys.readouterr().err


def test_an_interrupted_replica_training_resumes_from_its_checkpoints(replicated, tmp_path, monkeypatch):
    """Forget the GAN's training, interrupt it mid-epoch, then --resume: the stage continues the replicas'
    checkpoints (it does not clear them) and ends with the weights of the uninterrupted run."""
    copy = tmp_path / "RUN"
    shutil.copytree(replicated, copy)
    stages = read(copy / "stages.json")
    del stages["stages"]["gan-train"]
    (copy / "stages.json").write_text(json.dumps(stages))
    shutil.rmtree(copy / "gan")

    from mnistgen.train import gan as gan_training

    real_train_gan = gan_training.train_gan
    resumed = []
    polls = {"count": 0}

    def stop_at_the_second_poll():  # 15 steps per epoch on the sample, polled at steps 0 and 10 (one by one,
        polls["count"] += 1           # ONE_BY_ONE_STEPS): this stops after step 10 of epoch 1
        return polls["count"] > 1

    def interrupted(*args, **kwargs):
        resumed.append(kwargs["resume"])
        return real_train_gan(*args, **kwargs, stop=stop_at_the_second_poll)

    monkeypatch.setattr(gan_training, "train_gan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.reproduce(copy, ReproduceConfig(), resume=True)
    assert read(copy / "stages.json")["stages"]["gan-train"]["status"] == "interrupted"
    for seed in (2, 3):
        assert torch.load(copy / "gan" / f"seed={seed}" / "checkpoint.pt", weights_only=True)["step"] > 0

    monkeypatch.setattr(gan_training, "train_gan", lambda *args, **kwargs: resumed.append(kwargs["resume"])
                        or real_train_gan(*args, **kwargs))
    pipeline.reproduce(copy, ReproduceConfig(), resume=True)
    assert resumed == [False, True]
    for seed in (2, 3):
        weights = torch.load(copy / "gan" / f"seed={seed}" / "checkpoint.pt", weights_only=True)["generator"]
        reference = torch.load(replicated / "gan" / f"seed={seed}" / "checkpoint.pt", weights_only=True)["generator"]
        assert weights.keys() == reference.keys()
        for key in weights:
            torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=0)


def test_beyond_section_shows_each_option_over_the_seeds_beside_spec(replica_folder, tmp_path, browser):  # noqa: F811 - fixture
    """RUN/beyond of a replica reproduction: each option's numbers as the mean ± 95% interval over its seeds, each
    seed's beside it, SPEC's first; the ratio of mean distances to SPEC's."""
    root = tmp_path / "RUN"
    shutil.copytree(replica_folder, root)
    improved = root / "beyond" / "gan-improved"
    shutil.copytree(root / "gan", improved)  # the seed folders of a trained replica run; its scores chosen here
    chosen = {"average": {2: (40.5, 8.5), 5: (47.25, 8.0)}, "raw": {2: (70.0, 7.5), 5: (61.0, 7.75)}}
    for name, by_seed in chosen.items():
        for seed, (distance, score) in by_seed.items():
            write_json(improved / f"seed={seed}" / f"{name}.score.json",
                       {"n_images": 64, "frechet_distance": distance, "classifier_score": score,
                        "class_histogram": [7, 6, 6, 6, 7, 6, 6, 7, 6, 7], "real_vs_real_reference": REFERENCE})
    iwae = root / "beyond" / "vae-iwae"
    shutil.copytree(root / "vae", iwae)
    iwae_numbers = {1234: (-150.5, -145.25), 1235: (-152.0, -146.0), 1236: (-149.0, -144.5)}
    for seed, (elbo, log_px) in iwae_numbers.items():
        path = iwae / f"seed={seed}" / "eval.json"
        write_json(path, {**read(path), "test_elbo": elbo, "test_iw_log_likelihood": log_px})

    text = build_report(root)
    beyond = section_of(text, "beyond")
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", beyond)]
    gan_rows, vae_rows = [row for row in rows if len(row) == 7], [row for row in rows if len(row) == 5]
    assert [plain(row[2]) for row in gan_rows] == ["G", "the moving average of G", "the trained G"]
    assert "SPEC" in gan_rows[0][0] and "--recipe improved" in plain(gan_rows[1][1])
    spec_distances = [distance for distance, _ in GAN_SCORES.values()]
    assert_interval(gan_rows[0][3], spec_distances, 2)
    for row, name in zip(gan_rows[1:], ("average", "raw"), strict=True):
        distances, scores = ([pair[i] for pair in chosen[name].values()] for i in (0, 1))
        assert_interval(row[3], distances, 2)
        assert float(plain(row[4])) == pytest.approx(np.mean(distances) / np.mean(spec_distances), abs=0.006)
        assert_interval(row[5], scores, 4)
        assert_each_seed(row[6], dict(zip(chosen[name], distances, strict=True)))
    assert "95% Student-t interval over 2 seeds" in beyond
    assert "SPEC" in vae_rows[0][0] and "iwae" in plain(vae_rows[1][1])
    spec_log_px = [read(root / "vae" / f"seed={seed}" / "eval.json")["test_iw_log_likelihood"] for seed in VAE_SEEDS]
    assert_interval(vae_rows[0][3], spec_log_px, 2)
    assert_interval(vae_rows[1][2], [elbo for elbo, _ in iwae_numbers.values()], 2)
    assert_interval(vae_rows[1][3], [log_px for _, log_px in iwae_numbers.values()], 2)
    assert_each_seed(vae_rows[1][4], {seed: elbo for seed, (elbo, _) in iwae_numbers.items()})
    # SPEC's first seed's last grid, then the recipe's best and worst seed by the average's distance, side by side
    # (this copy of SPEC's run kept no average: no grids/raw, no trained G's grid)
    def last_grid_png(run: Path, seed: int) -> bytes:
        return sorted((run / f"seed={seed}" / "grids").glob("epoch_*.png"))[-1].read_bytes()

    assert embedded_images(beyond) == [last_grid_png(root / "gan", 2), last_grid_png(improved, 2),
                                       last_grid_png(improved, 5)]
    assert last_grid_png(improved, 2) != last_grid_png(improved, 5)  # the seeds' grids differ: the order is seen
    assert "the best seed (2: Frechet distance 40.5)" in beyond
    assert "the worst seed (5: Frechet distance 47.2)" in beyond
    (root / "report.html").write_text(text)
    assert overflow(browser, root / "report.html") == {}  # 7 columns, each seed's pair among them
