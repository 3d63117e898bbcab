"""report.html and a sweep's summary.html in a real headless Chromium: the report loads from file:// with no request
and every image decodes; both pages fit the screen (no table wider than its card) at a laptop's and a narrow width."""

from __future__ import annotations

import pytest
from browser_support import browser, missing, open_page, overflow  # noqa: F401 - browser is a fixture
from report_support import make_reproduction

from mnistgen.config import DataConfig
from mnistgen.data.sources import load_raw
from mnistgen.report import write_report
from mnistgen.sweep import SweepOptions, TrialResult, parse_sweep, summarize, summary_html

SWEEP = """\
model = "vae"
seeds = [1, 2, 3]
[base]
epochs = 5
dataset = "mnist-sample"
[grid]
lr = [0.001, 0.0003]
hidden = [100, 400]
batch_size = [32, 128]
"""


def images_state(page) -> list[dict]:
    return page.evaluate("""() => Array.from(document.images).map(img => ({
        alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}))""")


def test_report_loads_offline_and_every_image_decodes(browser, tmp_path):  # noqa: F811 - fixture
    report = write_report(make_reproduction(tmp_path / "RUN"))
    page, traffic = open_page(browser, report)
    try:
        images = images_state(page)
        assert len(images) == 9
        assert [i for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)] == []
        assert traffic.requests == [report.as_uri()]  # the page itself, nothing else
        assert traffic.failed == [] and traffic.console_errors == []
        # the navigation reaches every section and the folded per-epoch tables open
        anchors = page.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.hash)")
        assert anchors == ["#summary", "#vae", "#gan", "#scores", "#stages", "#environment"]
        assert all(page.locator(a).count() == 1 for a in anchors)
    finally:
        page.context.close()


def test_the_report_fits_its_cards_at_1280_and_900_px(browser, tmp_path):  # noqa: F811 - fixture
    # the data.json that loading the bundled sample writes: its paths, checksums and file names
    provenance = load_raw(DataConfig(dataset="mnist-sample", offline=True)).provenance
    report = write_report(make_reproduction(tmp_path / "RUN", data=provenance))
    assert overflow(browser, report) == {}


def test_the_sweep_summary_fits_its_cards_at_1280_and_900_px(browser, tmp_path):  # noqa: F811 - fixture
    sweep = parse_sweep(SWEEP)
    results = [TrialResult(name, seed, "trained", {"held_out_elbo": -150.0 - 7.25 * i - seed / 3,
                                                   "train_elbo": -145.5 - 7.25 * i + seed / 7})
               for i, (name, _) in enumerate(sweep.configurations) for seed in sweep.seeds]
    results[-1] = TrialResult(sweep.configurations[-1][0], 3, "failed", error=(
        f"MnistgenError: {tmp_path}/sweep/trials/{sweep.configurations[-1][0]}/seed=3: holds a run trained with "
        "other settings than the sweep file's (--hidden, --batch-size); move it away or choose another --out"))
    summary = tmp_path / "summary.html"
    summary.write_text(summary_html(sweep, summarize(sweep, results), results, SweepOptions()))
    assert overflow(browser, summary) == {}


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("MNISTGEN_REQUIRE_REAL_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="no Chromium"):
        missing("no Chromium found")
    monkeypatch.delenv("MNISTGEN_REQUIRE_REAL_DATA")
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        missing("no Chromium found")
