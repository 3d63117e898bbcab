"""report.html in a real headless Chromium: it loads from file:// with no request, and every image decodes."""

from __future__ import annotations

import pytest
from browser_support import browser, missing, open_page  # noqa: F401 - browser is a fixture
from report_support import make_reproduction

from mnistgen.report import write_report


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


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("MNISTGEN_REQUIRE_REAL_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="no Chromium"):
        missing("no Chromium found")
    monkeypatch.delenv("MNISTGEN_REQUIRE_REAL_DATA")
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        missing("no Chromium found")
