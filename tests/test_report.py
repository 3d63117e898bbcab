"""report.html from a reproduction folder written by hand: embedded figures, tables, provenance, no requests."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
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
from mnistgen.report import build_report, write_report
from mnistgen.report.html import Markup, Measured, duration, format_column, format_value, table
from mnistgen.stats import spread


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


def test_vae_curves_show_every_point_even_a_far_lower_first_epoch():
    """The first training ELBO (the mean over an epoch that starts untrained) is far below the rest: it must stay
    inside the axes, and the later epochs must not be squashed into a flat line."""
    from mnistgen.plots.vae import curves_figure

    history = [{"epoch": e, "train_elbo": -150.0 - 20.0 / e - (250.0 if e == 1 else 0.0),
                "test_elbo": -155.0 - 20.0 / e} for e in range(1, 31)]
    figure = curves_figure(history)
    plotted = set()
    for axis in figure.axes:
        low, high = axis.get_ylim()
        for line in axis.get_lines():
            ys = np.asarray(line.get_ydata(), dtype=float)
            assert low <= ys.min() and ys.max() <= high, (axis.get_title(), line.get_label(), (low, high))
            plotted |= {(x, y) for x, y in zip(line.get_xdata(), ys, strict=True)}
        assert axis.get_xlabel() == "epoch" and "ELBO" in axis.get_ylabel()
        assert axis.get_legend() is not None
    assert {(1, -420.0), (1, -175.0)} <= plotted  # the first epoch's points are drawn
    assert figure.get_suptitle()
    # one panel shows the later epochs on a scale where the train-test gap (5 nats) is readable
    zoomed = [a for a in figure.axes if a.get_ylim()[1] - a.get_ylim()[0] < 60]
    assert zoomed, [a.get_ylim() for a in figure.axes]
    # a history without a far first epoch keeps one panel; an empty one says so
    assert len(curves_figure(history[1:3]).axes) == 1
    assert len(curves_figure([]).axes) == 1


def test_settings_and_identifiers_are_shown_as_typed_and_measurements_with_decimals(text):
    # the configuration: SPEC's seed 1234 and the download timeout 15.0, as typed
    assert re.search(r"<td>seed</td><td>1234</td>", text) and "1,234" not in text
    assert re.search(r"<td>seed</td><td>2</td>", text)  # the GAN's
    assert re.search(r"<td>download_timeout</td><td>15\.0</td>", text) and "15.0000" not in text
    assert re.search(r"<td>validation_size</td><td>10000</td>", text)
    assert re.search(r"<td>lr_min</td><td>1e-05</td>", text)
    # measurements: ELBOs with 2 decimals, a count of five digits or more with separators (10,000 images)
    assert "-170.50" in text and "-160.25" in text
    assert re.search(r"<td>10,000</td>", text) and "9,912,422" in text
    from mnistgen.report.html import format_setting, value_html

    assert format_value(1000) == "1000" and format_value(12345) == "12,345" and format_value(-170.5) == "-170.50"
    assert format_setting(15.0) == "15.0" and format_setting(0.0002) == "0.0002" and format_setting(1234) == "1234"
    assert format_setting(True) == "True" and format_setting(None) == "—"
    # a seed is an identifier wherever it appears
    assert "<td>12345</td>" in value_html({"seed": 12345, "sampler_seed": 54321})
    assert "<td>54321</td>" in value_html({"seed": 12345, "sampler_seed": 54321})


def summary_rows(text: str) -> list[list[str]]:
    summary = text.split('<table class="summary">')[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", summary.split("<tbody>")[1])
    return [re.findall(r"<td>(.*?)</td>", row) for row in rows]


def test_every_row_of_results_at_a_glance_says_how_to_read_it(text):
    rows = summary_rows(text)
    assert {row[0] for row in rows} == {"VAE", "GAN", "score"}
    assert [row for row in rows if not row[3].strip()] == []
    notes = {row[1]: row[3] for row in rows if row[0] == "GAN"}
    assert set(notes) == {"epochs trained", "d_loss (last epoch)", "g_loss (last epoch)", "d_real (last epoch)",
                          "d_fake (last epoch)"}
    assert "2 log 2 \u2248 1.386" in notes["d_loss (last epoch)"] and "D = 1/2" in notes["d_loss (last epoch)"]
    assert "-log D(G(z))" in notes["g_loss (last epoch)"] and "log 2 \u2248 0.693" in notes["g_loss (last epoch)"]
    assert "real images" in notes["d_real (last epoch)"] and "1/2" in notes["d_real (last epoch)"]
    assert "generated images" in notes["d_fake (last epoch)"] and "1/2" in notes["d_fake (last epoch)"]
    assert notes["epochs trained"] == "of 100 configured; SPEC trains 100"
    vae = {row[1]: row[3] for row in rows if row[0] == "VAE"}
    assert vae["epochs trained"] == "of 200 configured; SPEC trains 200"
    assert "SPEC uses K = 1000" in vae["K, importance samples per image"]


def test_a_vae_run_without_evaluation_reads_its_last_epoch(tmp_path):
    root = make_reproduction(tmp_path / "RUN")
    (root / "vae" / "eval.json").unlink()
    rows = [row for row in summary_rows(build_report(root)) if row[0] == "VAE"]
    assert [row[1] for row in rows] == ["epochs trained", "train_elbo (last epoch)", "test_elbo (last epoch)"]
    assert all("higher is better" in row[3] for row in rows[1:])


def test_libraries_that_are_not_installed_are_left_out(reproduction, monkeypatch):
    from mnistgen.report import sections

    monkeypatch.setattr(sections, "LIBRARIES", ("numpy", "no-such-library-for-mnistgen"))
    versions = sections.library_versions()
    assert set(versions) == {"mnistgen", "numpy"}
    text = build_report(reproduction)
    assert "not installed" not in text and "no-such-library-for-mnistgen" not in text
    assert f"<td>numpy</td><td>{np.__version__}</td>" in text


def cells(text: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td>(.*?)</td>", text)]


def test_numbers_have_one_format_down_a_column():
    assert format_column([0.5, 0.5486]) == ["0.5000", "0.5486"]  # not "0.5" beside "0.5486"
    assert format_column([0.75, 123.456]) == ["0.75", "123.46"]  # the decimals of the column's largest number
    assert format_column([0.00012, 0.000345]) == ["0.0001200", "0.0003450"]  # 4 significant digits of the largest
    assert format_column([1000, 12345, 2.5]) == ["1,000", "12,345", "2.5000"]  # separators once one number has 5 digits
    assert format_column([None, "a <b>", Markup("<i>x</i>"), True]) == ["—", "a &lt;b&gt;", "<i>x</i>", "True"]
    interval = Measured(spread([40.5, 47.25]), 3)  # of 3 seeds, one without the number
    assert format_column([interval, 131.85]) == [
        '<span class="spread" title="mean ± 95% Student-t interval over 2 seeds">43.88 ± 42.88 (2 of 3 seeds)</span>',
        "131.85"]
    # a table formats each column as a whole; a table whose rows are the quantities, each row
    assert cells(table(("d_real", "g_loss"), [[0.5, 1.25], [0.5486, 0.5]])) == ["0.5000", "1.2500", "0.5486", "0.5000"]
    assert cells(table(("quantity", "seed 1", "seed 2"), [["test_elbo", -170.5, -99.125], ["d_real", 0.5, 0.5486]],
                       by_row=True)) == ["test_elbo", "-170.50", "-99.12", "d_real", "0.5000", "0.5486"]


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=12))
@example([0.5, 0.5486])
@example([1e-300, -0.0])
def test_every_float_of_a_column_has_its_decimals_and_reads_back(column):
    shown = [text.replace(",", "") for text in cells(table(("x",), [[v] for v in column]))]
    assert len({len(text.partition(".")[2]) for text in shown}) == 1, shown  # the same decimals down the column
    places, largest = len(shown[0].partition(".")[2]), max(map(abs, column))
    assert all(abs(float(text) - v) <= 0.5 * 10 ** -places + 1e-9 for text, v in zip(shown, column, strict=True))
    if largest >= 1 or largest == 0:  # 2 decimals from 100 on, else 4
        assert places == (2 if largest >= 100 else 4)
    elif largest >= 1e-4:  # 4 significant digits of the largest number
        assert 999.5 <= largest * 10**places < 10_000


def test_the_header_shows_the_settings_as_a_key_value_table(text):
    header = text.split("<header>")[1].split("</header>")[0]
    assert "{" not in header and "&quot;" not in header  # no JSON
    settings = cells(header.split("Settings: ")[1].split("</table>")[0])
    assert dict(zip(settings[::2], settings[1::2], strict=True)) == {
        "vae_epochs": "200", "gan_epochs": "100", "grid_every": "10", "iw_samples": "1000", "score_samples": "10000",
        "replicas": "1", "beyond": "False", "device": "auto"}  # as typed (10000, not 10,000); data in Data sections
