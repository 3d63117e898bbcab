"""report.html from a reproduction folder written by hand: embedded figures, tables, provenance, no requests."""

from __future__ import annotations

import re

import pytest
from report_support import (
    CHECKSUM,
    GAN_SCORE,
    REFERENCE,
    embedded_images,
    make_reproduction,
    parse,
    png_size,
)

from mnistgen.cli import main
from mnistgen.errors import MnistgenError
from mnistgen.report import build_report, duration, format_value, write_report


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory):
    """Built once per module: the tests below only read it (the one that changes it makes its own)."""
    return make_reproduction(tmp_path_factory.mktemp("report") / "RUN")


@pytest.fixture(scope="module")
def text(reproduction):
    return build_report(reproduction)


def test_every_figure_and_grid_is_embedded_byte_for_byte(reproduction, text):
    images = embedded_images(text)
    on_disk = [p.read_bytes() for p in sorted(reproduction.rglob("*.png"))]
    assert len(on_disk) == 2 + 3 + 1  # vae figures, gan grids, gan progress
    for png in on_disk:
        assert png in images
    # besides them: curves of both runs drawn from metrics.jsonl (neither folder has curves.png) and the
    # preview of the scored samples
    extra = [png for png in images if png not in on_disk]
    assert len(extra) == 3
    sizes = sorted(png_size(png) for png in extra)
    assert all(w >= 100 and h >= 60 for w, h in sizes)


def test_page_is_self_contained(text):
    tags = parse(text).tags
    assert not [t for t, _ in tags if t in ("link", "iframe", "object", "embed")]
    scripts = [a for t, a in tags if t == "script"]
    assert scripts == []
    for tag, attrs in tags:
        if "src" in attrs:
            assert attrs["src"].startswith("data:"), (tag, attrs["src"][:60])
        if "href" in attrs:
            assert attrs["href"].startswith("#") or attrs["href"] == "explorer.html", attrs["href"]
    assert not re.search(r"url\(|@import|https?://", text), "a stylesheet or text points outside the page"
    policy = [a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert policy == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]


def test_html_is_well_formed(text):
    parser = parse(text)
    assert parser.errors == []
    assert parser.stack == []


def test_tables_show_metrics_evaluation_scores_and_times(text):
    # evaluation and last-epoch metrics, formatted for people
    assert "-170.50" in text and "-160.25" in text
    assert "-175.00" in text  # test_elbo of epoch 3: -205 + 30
    # the score beside the real-vs-real reference
    assert "123.46" in text and "3.2500" in text
    assert format_value(REFERENCE["frechet_distance"]) in text and REFERENCE["what"] in text
    assert "real vs real" in text
    # stage times, in minutes and hours, and their total
    assert "1 min 5 s" in text and "1 h 2 min" in text and "1 h 3 min" in text
    assert "<td>scores</td><td>failed</td>" in text and "MnistgenError: no classifier &lt;here&gt;" in text
    # the configuration: SPEC's defaults of both models
    assert re.search(r"<td>lr_d</td><td>0\.0002</td>", text)
    assert re.search(r"<td>epochs</td><td>200</td>", text)


def test_provenance_versions_and_machine(text):
    import platform

    import torch

    assert CHECKSUM in text and "train-images-idx3-ubyte.gz" in text
    assert "the full dataset" in text
    assert torch.__version__ in text
    assert platform.machine() in text
    assert GAN_SCORE["classifier"]["sha256"] in text


def test_the_bundled_sample_is_called_out(tmp_path):
    root = make_reproduction(tmp_path / "RUN", data={"dataset": "mnist-sample", "files": []})
    assert "the bundled sample (not the full dataset)" in build_report(root)


def test_text_from_the_folder_is_escaped(tmp_path):
    root = make_reproduction(tmp_path / "RUN", data={"dataset": "<script>alert(1)</script>", "note": "a & b"})
    text = build_report(root)
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a &amp; b" in text


def test_single_run_folder_gets_its_own_report(reproduction):
    text = build_report(reproduction / "vae")
    assert "mnistgen: VAE run" in text
    assert 'id="vae"' in text and 'id="gan"' not in text
    # samples.png, latent.png, and curves drawn from metrics.jsonl since the folder has no curves.png
    assert len(embedded_images(text)) == 3
    assert 'alt="VAE (SPEC §2): training curves"' in text


def test_write_report_default_path_and_rebuild(tmp_path):
    root = make_reproduction(tmp_path / "RUN")
    path = write_report(root)
    assert path == root / "report.html"
    first = path.read_text()
    (root / "vae" / "figures" / "latent.png").unlink()
    write_report(root)
    assert len(embedded_images(path.read_text())) == len(embedded_images(first)) - 1


def test_not_a_run_folder(tmp_path):
    with pytest.raises(MnistgenError, match="no such folder"):
        build_report(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MnistgenError, match="no config.json"):
        build_report(tmp_path / "empty")


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err and err.startswith("mnistgen: error:")


def test_cli_report_writes_the_page(reproduction, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(reproduction), "--out", str(out)]) == 0
    assert out.is_file() and capsys.readouterr().out.strip() == str(out)
    assert len(embedded_images(out.read_text())) == 9


@pytest.mark.parametrize(("seconds", "text"), [(None, "—"), (4.25, "4.2 s"), (65, "1 min 5 s"),
                                               (3725, "1 h 2 min")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_a_shortened_reproduction_says_so(tmp_path):
    import dataclasses

    from mnistgen.config import to_dict
    from mnistgen.reproduce import quick_config
    from mnistgen.runs import RunDir

    root = make_reproduction(tmp_path / "RUN")
    assert "A shortened run" not in build_report(root)  # SPEC's defaults
    RunDir(root).write_config(to_dict(quick_config()), kind="reproduce")
    text = build_report(root)
    assert "A shortened run" in text and f"vae epochs {quick_config().vae_epochs} (SPEC: 200)" in text
    RunDir(root).write_config(to_dict(dataclasses.replace(quick_config(), vae_epochs=200)), kind="reproduce")
    assert "vae epochs" not in build_report(root).split("A shortened run")[1].split("</p>")[0]


def test_scores_are_listed_models_first_in_a_fixed_order(tmp_path):
    import shutil

    root = make_reproduction(tmp_path / "RUN")
    for name in ("vae_binary", "vae_means", "other"):
        shutil.copy(root / "samples" / "gan.score.json", root / "samples" / f"{name}.score.json")
    text = build_report(root)
    positions = [text.index(title) for title in ("VAE, decoder means", "VAE, binary draws", "GAN, G(z)")]
    assert positions == sorted(positions) and text.index("GAN, G(z)") < text.index("<td>other</td>")
