"""``mnistgen reproduce`` end to end on a tiny budget, its stages.json, and ``--resume`` after an interruption.

The pipeline is the real one (every stage, the real models and writers) on the 5,000-digit sample shipped
with mnistgen, 1 epoch each, so that it runs in seconds; the score's reference is real MNIST (mnist_dir).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from browser_support import browser, open_page, overflow  # noqa: F401 - browser is a fixture
from report_support import embedded_images, parse

from mnistgen import reproduce as pipeline
from mnistgen.cli import main
from mnistgen.config import REPRODUCE_QUICK, DataConfig, ReproduceConfig
from mnistgen.errors import MnistgenError
from mnistgen.evaluate.gan import sample_images
from mnistgen.imaging import to_uint8
from mnistgen.models.gan import Generator
from mnistgen.reproduction import SAMPLE_SETS
from mnistgen.runs import RunDir

STAGE_NAMES = ["vae-train", "vae-eval", "vae-plots", "vae-samples", "gan-train", "gan-plots", "gan-samples",
               "scores", "explorer"]
GAN_STAGES = STAGE_NAMES[STAGE_NAMES.index("gan-train"):]
SCORE_SAMPLES = 300


def tiny_flags(mnist_dir) -> list[str]:
    return ["--dataset", "mnist-sample", "--data-dir", str(mnist_dir), "--offline", "--vae-epochs", "1",
            "--gan-epochs", "1", "--grid-every", "1", "--iw-samples", "3", "--score-samples", str(SCORE_SAMPLES),
            "--device", "cpu"]


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory, mnist_dir):
    """One uninterrupted tiny reproduction, made with the command a user types."""
    out = tmp_path_factory.mktemp("reproduce") / "RUN"
    assert main(["reproduce", "--out", str(out), *tiny_flags(mnist_dir)]) == 0
    return out


def test_every_stage_is_done_and_timed(reproduction, mnist_dir):
    stages = json.loads((reproduction / "stages.json").read_text())
    assert list(stages["stages"]) == STAGE_NAMES == [s.name for s in pipeline.STAGES]
    for name, record in stages["stages"].items():
        assert record["status"] == "done", name
        assert record["seconds"] > 0 and record["cpu_seconds"] > 0 and record["started"] <= record["finished"], name
    assert stages["command"] == ["mnistgen", "reproduce", "--out", str(reproduction), *tiny_flags(mnist_dir)]


def test_the_folder_holds_every_product(reproduction):
    vae, gan = RunDir(reproduction / "vae"), RunDir(reproduction / "gan")
    assert {p.name for p in vae.figures.glob("*.png")} >= {"samples.png", "latent.png", "interpolation.png",
                                                           "manifold.png", "curves.png"}
    assert json.loads(vae.eval.read_text())["iw_samples"] == 3
    assert (gan.figures / "progress.png").is_file()
    assert sorted(p.name for p in (gan.path / "grids").glob("*.png")) == ["epoch_000.png", "epoch_001.png"]
    for name in SAMPLE_SETS:
        score = json.loads((reproduction / "samples" / f"{name}.score.json").read_text())
        assert score["n_images"] == SCORE_SAMPLES
        assert score["frechet_distance"] > score["real_vs_real_reference"]["frechet_distance"]
    config = json.loads((reproduction / "config.json").read_text())
    assert config["kind"] == "reproduce" and config["config"]["gan_epochs"] == 1


def test_the_report_shows_all_of_it(reproduction):
    text = (reproduction / "report.html").read_text()
    parser = parse(text)
    assert parser.errors == [] and parser.stack == []
    images = embedded_images(text)
    # 5 VAE figures, GAN progress + 2 grids + curves drawn from metrics, 3 previews of scored samples
    assert len(images) == 5 + 1 + 2 + 1 + 3
    assert images.count((reproduction / "vae" / "figures" / "latent.png").read_bytes()) == 1
    for name in STAGE_NAMES:
        assert f"<td>{name}</td><td>done</td>" in text
    assert "the bundled sample (not the full dataset)" in text
    banner = "Trained on the bundled 5,000-digit MNIST sample</b> (VAE, GAN)"
    assert banner in text and text.index(banner) < text.index('id="vae"')  # above the results
    assert "real vs real" in text and 'href="explorer.html"' in text
    assert (reproduction / "explorer.html").stat().st_size > 100_000


def test_report_and_explorer_of_the_real_run_load_in_chromium(reproduction, browser):  # noqa: F811 - fixture
    report, traffic = open_page(browser, reproduction / "report.html")
    try:
        images = report.evaluate("Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight])")
        assert len(images) == 12 and all(w > 0 and h > 0 for w, h in images)
        assert traffic.non_local == [] and traffic.failed == [] and traffic.console_errors == []
    finally:
        report.context.close()
    assert overflow(browser, reproduction / "report.html") == {}  # its data.json's paths and checksums too
    explorer, traffic = open_page(browser, reproduction / "explorer.html")
    try:
        assert traffic.non_local == [] and traffic.failed == [] and traffic.console_errors == []
        assert explorer.evaluate("window.mnistgenExplorer.points") == 4000  # the sample's hw training images
        assert explorer.evaluate("window.mnistgenExplorer.gan !== null")  # the reproduction's GAN panel
    finally:
        explorer.context.close()


def test_a_finished_reproduction_resumes_to_nothing_and_refuses_changes(reproduction, mnist_dir, capsys):
    checkpoint = (reproduction / "vae" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["reproduce", "--out", str(reproduction), "--resume"]) == 0
    err = capsys.readouterr().err
    assert err.count("done before") == len(STAGE_NAMES)
    assert (reproduction / "vae" / "checkpoint.pt").stat().st_mtime_ns == checkpoint
    assert main(["reproduce", "--out", str(reproduction), "--resume", "--vae-epochs", "7"]) == 1
    assert "--vae-epochs" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(reproduction), "--resume", "--quick"]) == 1  # quick = other epochs
    assert main(["reproduce", "--out", str(reproduction), *tiny_flags(mnist_dir)]) == 1  # no --resume
    assert "already holds a reproduction" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupted_gan_training_resumes_to_the_same_weights(reproduction, tmp_path, monkeypatch):
    """Copy the finished run, forget its GAN stages, interrupt GAN training mid-epoch, then --resume."""
    copy = tmp_path / "RUN"
    shutil.copytree(reproduction, copy)
    stages_file = copy / "stages.json"
    stages = json.loads(stages_file.read_text())
    for name in GAN_STAGES:
        del stages["stages"][name]
    stages_file.write_text(json.dumps(stages))
    shutil.rmtree(copy / "gan")
    vae_checkpoint = (copy / "vae" / "checkpoint.pt").stat().st_mtime_ns

    from mnistgen.train import gan as gan_training

    real_train_gan = gan_training.train_gan
    steps = {"polled": 0}

    def stop_after_8_steps():  # 15 steps per epoch on the sample: this stops in the middle of it
        steps["polled"] += 1
        return steps["polled"] > 8

    monkeypatch.setattr(gan_training, "train_gan",
                        lambda *args, **kwargs: real_train_gan(*args, **kwargs, stop=stop_after_8_steps))
    with pytest.raises(KeyboardInterrupt):
        pipeline.reproduce(copy, ReproduceConfig(), resume=True)
    record = json.loads(stages_file.read_text())["stages"]["gan-train"]
    assert record["status"] == "interrupted" and record["seconds"] > 0
    interrupted_seconds, interrupted_cpu = record["seconds"], record["cpu_seconds"]
    assert torch.load(copy / "gan" / "checkpoint.pt", weights_only=True)["step"] > 0  # saved mid-epoch
    monkeypatch.setattr(gan_training, "train_gan", real_train_gan)

    pipeline.reproduce(copy, ReproduceConfig(), resume=True)
    stages = json.loads(stages_file.read_text())["stages"]
    assert all(stages[name]["status"] == "done" for name in STAGE_NAMES)
    assert stages["gan-train"]["seconds"] > interrupted_seconds  # time before the interruption is kept
    assert stages["gan-train"]["cpu_seconds"] > interrupted_cpu
    assert (copy / "vae" / "checkpoint.pt").stat().st_mtime_ns == vae_checkpoint  # VAE stages not rerun
    resumed = torch.load(copy / "gan" / "checkpoint.pt", weights_only=True)["generator"]
    uninterrupted = torch.load(reproduction / "gan" / "checkpoint.pt", weights_only=True)["generator"]
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0)


def test_quick_settings_are_defaults_with_fewer_epochs():
    quick = pipeline.quick_config()
    default = ReproduceConfig()
    assert default.vae_epochs == 200 and default.gan_epochs == 100  # SPEC's
    for name, value in REPRODUCE_QUICK.items():
        assert getattr(quick, name) == value < getattr(default, name)
    assert quick.data == default.data and quick.score_samples == default.score_samples



def test_the_quick_time_in_the_help_is_the_one_in_readme_and_commands(capsys):
    """`reproduce --help` says how long --quick takes; README and docs/COMMANDS.md say the same."""
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    claim = re.search(r"--quick a first look in (.+? CPU):", help_text)
    assert claim is not None, help_text
    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/COMMANDS.md"):
        quick = [line for line in (root / doc).read_text().splitlines() if "reproduce --quick --out" in line]
        assert quick and all(claim.group(1) in line for line in quick), (doc, claim.group(1), quick)


def test_progress_epochs_follow_spec_example():
    assert pipeline.progress_epochs(list(range(0, 101, 10)), 100) == [0, 30, 70]
    assert pipeline.progress_epochs([0, 1, 2], 2) == [0, 1, 2]
    assert pipeline.progress_epochs([0, 10, 20, 30], 30) == [0, 20, 30]


def test_resume_needs_a_reproduction(tmp_path):
    with pytest.raises(MnistgenError, match="nothing to resume"):
        pipeline.reproduce(tmp_path / "absent", ReproduceConfig(), resume=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(MnistgenError, match="not empty"):
        pipeline.reproduce(tmp_path / "full", ReproduceConfig())


def test_offline_without_mnist_the_scores_are_skipped_not_fatal(tmp_path, reproduction, monkeypatch):
    """Offline with no MNIST files the pipeline runs on the bundled sample; the score stage, whose
    real-vs-real reference needs full MNIST, says so and lets the reproduction finish."""
    copy = tmp_path / "RUN"
    shutil.copytree(reproduction, copy)
    for score in (copy / "samples").glob("*.score.json"):
        score.unlink()
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "empty-cache"))  # the sample stands in there only
    monkeypatch.delenv("MNISTGEN_DATA_DIR", raising=False)
    config = ReproduceConfig(data=DataConfig(dataset="mnist", offline=True))
    result = pipeline.stage_scores(pipeline.Reproduction(copy), config)
    assert result is not None and result["status"] == "skipped" and "needs full MNIST" in result["note"]
    assert result["note"].endswith(f"; to score: `mnistgen data fetch`, then `mnistgen reproduce --out {copy} "
                                   "--resume`")
    assert not list((copy / "samples").glob("*.score.json"))


def test_on_the_sample_the_score_stage_touches_no_network(tmp_path, reproduction, monkeypatch, capsys):
    """A reproduction on the bundled sample (``--dataset mnist-sample``) with no MNIST on disk: its score stage is
    skipped with the reason, and no mirror is asked (a real listening socket as the only mirror accepts no
    connection), nor is --dataset mnist-sample suggested."""
    import socket

    copy = tmp_path / "RUN"
    shutil.copytree(reproduction, copy)
    for score in (copy / "samples").glob("*.score.json"):
        score.unlink()
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MNISTGEN_DATA_DIR", raising=False)
    monkeypatch.delenv("MNISTGEN_OFFLINE", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as mirror:
        mirror.setblocking(False)
        monkeypatch.setenv("MNISTGEN_MIRRORS", f"http://127.0.0.1:{mirror.getsockname()[1]}/")
        config = ReproduceConfig(data=DataConfig(dataset="mnist-sample", download_timeout=1, download_retries=0))
        capsys.readouterr()
        result = pipeline.stage_scores(pipeline.Reproduction(copy), config)
        with pytest.raises(BlockingIOError):
            mirror.accept()  # nobody connected
    assert result is not None and result["status"] == "skipped" and result["note"].startswith(
        "on the bundled sample a reproduction downloads nothing: the score needs full MNIST (its test images and "
        "10,000 training images): 4 of 4 files missing from "), result
    assert "--dataset mnist-sample" not in capsys.readouterr().err
    assert not list((copy / "samples").glob("*.score.json"))


BEYOND_STAGES = ["beyond-gan-train", "beyond-gan-samples", "beyond-scores", "beyond-vae-train", "beyond-vae-eval"]


@pytest.mark.slow
def test_beyond_added_on_resume_trains_scores_and_reports_each_option(reproduction, tmp_path, capsys):
    """``--resume --beyond`` on a finished reproduction: SPEC's stages are not rerun; each option trains with the
    reproduction's data, epochs and seed, is scored or evaluated, and the report puts it beside SPEC's numbers."""
    from mnistgen.config import GAN_RECIPES
    from mnistgen.reproduction import GAN_OPTIONS, IWAE_TRAIN_SAMPLES

    copy = tmp_path / "RUN"
    shutil.copytree(reproduction, copy)
    assert main(["reproduce", "--out", str(copy), "--resume", "--beyond"]) == 0
    err = capsys.readouterr().err
    assert err.count("done before") == len(STAGE_NAMES)
    stages = json.loads((copy / "stages.json").read_text())["stages"]
    assert list(stages) == STAGE_NAMES + BEYOND_STAGES and all(r["status"] == "done" for r in stages.values())
    assert json.loads((copy / "config.json").read_text())["config"]["beyond"] is True  # kept for the next resume

    expected = {"gan-ema": {"ema_decay": 0.999, "lr_d": 2e-4, "lr_g": 2e-4, "betas": "0.9,0.999"},
                "gan-betas": {"ema_decay": 0.999, "lr_d": 2e-4, "lr_g": 2e-4, "betas": "0.5,0.999"},
                "gan-ttur": {"ema_decay": 0.999, "lr_d": 4e-4, "lr_g": 1e-4, "betas": "0.9,0.999"},
                "gan-improved": {**GAN_RECIPES["improved"], "recipe": "improved"}}
    assert [option.folder for option in GAN_OPTIONS] == list(expected)
    spec_gan = json.loads((copy / "gan" / "config.json").read_text())["config"]
    for folder, settings in expected.items():
        saved = json.loads((copy / "beyond" / folder / "config.json").read_text())["config"]
        assert {key: saved[key] for key in settings} == settings, folder
        assert {k: v for k, v in saved.items() if k not in {*settings, "recipe"}} == \
            {k: v for k, v in spec_gan.items() if k not in {*settings, "recipe"}}  # epochs, seed, data: SPEC run's
        sets = ["average"] if folder == "gan-ema" else ["average", "raw"]
        for name in sets:
            score = json.loads((copy / "beyond" / folder / f"{name}.score.json").read_text())
            assert score["n_images"] == SCORE_SAMPLES
            said = [line for line in err.splitlines() if line.startswith(f"  beyond/{folder}/{name}: ")]
            assert len(said) == 1, err  # the score said as it is written, the classes' balance beside the distance
            assert f"Frechet distance {score['frechet_distance']:.2f}" in said[0], said
            assert f"class TV to uniform {score['class_tv_distance']:.3f}" in said[0], said
            assert f"smallest class {score['min_class_share']:.1%}" in said[0], said
        assert not (folder == "gan-ema" and (copy / "beyond" / folder / "raw.npz").exists())
        # each sample set is drawn from the weights it names, with the run's own seed
        checkpoint = torch.load(copy / "beyond" / folder / "checkpoint.pt", weights_only=True)
        for name in sets:
            generator = Generator(saved["zdim"])
            generator.load_state_dict(checkpoint[{"average": "generator_ema", "raw": "generator"}[name]])
            drawn = to_uint8(sample_images(generator.eval(), SCORE_SAMPLES, saved["seed"]))
            with np.load(copy / "beyond" / folder / f"{name}.npz") as stored:
                np.testing.assert_array_equal(stored["images"], drawn, err_msg=f"{folder}/{name}")
    # the average is kept beside SPEC's training without changing it: the trained G is SPEC's run's, bit for bit
    spec_g = torch.load(copy / "gan" / "checkpoint.pt", weights_only=True)["generator"]
    ema_run = torch.load(copy / "beyond" / "gan-ema" / "checkpoint.pt", weights_only=True)
    for key in spec_g:
        torch.testing.assert_close(ema_run["generator"][key], spec_g[key], rtol=0, atol=0)
    assert any(not torch.equal(ema_run["generator_ema"][key], spec_g[key]) for key in spec_g)
    vae = json.loads((copy / "beyond" / "vae-iwae" / "config.json").read_text())["config"]
    assert (vae["objective"], vae["train_samples"], vae["epochs"]) == ("iwae", IWAE_TRAIN_SAMPLES, 1)
    assert json.loads((copy / "beyond" / "vae-iwae" / "eval.json").read_text())["iw_samples"] == 3

    text = (copy / "report.html").read_text()
    assert parse(text).errors == []
    beyond = text.split('<section id="beyond">')[1].split("</section>")[0]
    assert text.index('id="scores"') < text.index('id="beyond"')  # SPEC's results come first
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", beyond)]
    gan_rows = [row for row in rows if len(row) == 6]
    spec_score = json.loads((copy / "samples" / "gan.score.json").read_text())
    assert "SPEC" in gan_rows[0][0] and float(gan_rows[0][3]) == pytest.approx(spec_score["frechet_distance"],
                                                                               abs=0.006)
    assert gan_rows[0][4] == "1.00"  # its ratio to itself
    assert len(gan_rows) == 1 + 1 + 2 * 3  # SPEC, the EMA's average, then the average and G of the three others
    improved = json.loads((copy / "beyond" / "gan-improved" / "average.score.json").read_text())
    assert float(gan_rows[6][3]) == pytest.approx(improved["frechet_distance"], abs=0.006)
    assert float(gan_rows[6][4]) == pytest.approx(improved["frechet_distance"] / spec_score["frechet_distance"],
                                                  abs=0.006)
    assert "the moving average of G" in gan_rows[6][2] and "--recipe improved" in gan_rows[6][1]
    assert len(embedded_images(beyond)) == 3  # SPEC's last grid, the recipe's average and trained G
    vae_rows = [row for row in rows if len(row) == 4]
    assert [row[0].startswith("SPEC") for row in vae_rows] == [True, False]
    iwae_eval = json.loads((copy / "beyond" / "vae-iwae" / "eval.json").read_text())
    assert float(vae_rows[1][3]) == pytest.approx(iwae_eval["test_iw_log_likelihood"], abs=0.006)

    assert main(["reproduce", "--out", str(copy), "--resume", "--no-beyond"]) == 1  # the options stay
    assert "--beyond" in capsys.readouterr().err


@pytest.mark.slow
def test_an_offline_start_says_so_once_and_shows_the_score_stage_skipped_with_its_fix(tmp_path, monkeypatch, capsys,
                                                                                     connections):
    """A fresh machine with no MNIST (an empty user cache) and no network (every mirror a port of 127.0.0.1 that
    refuses): `reproduce --quick` says in one line where it looked, that the network is unreachable and that it uses
    the bundled sample; asks the mirrors once in the whole run, not in every stage that loads data; and shows the
    score stage as skipped, with the reason and the fix, in its terminal lines, stages.json and the report (whose
    Data sections give the reason once each)."""
    import socket

    from mnistgen.data import sources

    monkeypatch.setattr(sources, "_ANNOUNCED_FALLBACKS", set())
    monkeypatch.setattr(sources, "_FAILED_DOWNLOADS", {})
    for name in ("MNISTGEN_DATA_DIR", "MNISTGEN_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "RUN"
    with socket.socket() as bound:  # bound, not listening: each connection to it is refused
        bound.bind(("127.0.0.1", 0))
        mirrors = [f"http://127.0.0.1:{bound.getsockname()[1]}/{name}/" for name in ("a", "b")]
        monkeypatch.setenv("MNISTGEN_MIRRORS", ",".join(mirrors))
        code = main(["reproduce", "--quick", "--out", str(out), "--vae-epochs", "1", "--gan-epochs", "1",
                     "--iw-samples", "3", "--score-samples", str(SCORE_SAMPLES), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert len(connections) == len(mirrors), connections  # one attempt per mirror in the whole run
    about = [line for line in err.splitlines()
             if re.search(r"network|mirror|127\.0\.0\.1|sample shipped|download", line)]
    assert len(about) <= 3, about
    about_data = "\n".join(line for line in err.splitlines() if "C compiler" not in line)  # not the kernels' note
    assert not re.search(r"Errno|refused|URLError|Traceback", about_data), err
    reason = (f"4 of 4 files missing from {tmp_path / 'cache' / 'mnist'} (user cache), and the download failed: the "
              f"network is unreachable (no answer from {', '.join(mirrors)})")
    assert sum(reason in line and "5,000-digit MNIST sample" in line for line in err.splitlines()) == 1, err
    fix = f"`mnistgen data fetch`, then `mnistgen reproduce --out {out} --resume`"
    [scores_line] = [line for line in err.splitlines() if line.startswith("[8/9] scores: ") and "score the" not in line]
    assert scores_line.startswith("[8/9] scores: skipped in ") and fix in scores_line, scores_line
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert stages["scores"]["status"] == "skipped" and stages["scores"]["note"].endswith(fix)
    assert all(record["status"] == "done" for name, record in stages.items() if name != "scores")
    text = (out / "report.html").read_text()
    assert re.search(r"<td>scores</td><td>skipped</td>(<td>[^<]*</td>){3}<td>((?!</tr>).)*mnistgen data fetch", text)
    assert 'id="scores"' in text and "Not scored: " in text
    data_sections = [part for part in text.split("<section")[1:] if "<h3>Data</h3>" in part]
    assert len(data_sections) == 2
    for part in data_sections:
        assert part.count("network is unreachable") == 1, part
