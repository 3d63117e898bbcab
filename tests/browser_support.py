"""A real headless Chromium for the tests of pages (Debian's ``chromium``, driven by Playwright; no browser download).

Import the fixture into a test module with ``from browser_support import browser  # noqa: F401``; :func:`overflow`
checks that a page of mnistgen's fits the window, at WIDTHS.
Where Chromium or Playwright is missing the browser tests are skipped with the reason, except when
MNISTGEN_REQUIRE_REAL_DATA=1 (CI), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file:", "data:", "about:")
WIDTHS = (1280, 900)  # a laptop's window, and a narrow one (a window beside another)
# Whatever is wider than the card (a section, or the header) that holds it: the page's own sideways scroll, a card
# that scrolls sideways, a table past its card's content box. Folded tables are opened first.
OVERFLOW = """() => {
    document.querySelectorAll('details').forEach(d => d.open = true);
    const found = [], root = document.documentElement;
    if (root.scrollWidth > root.clientWidth) found.push(`the page: ${root.scrollWidth} > ${root.clientWidth} px`);
    for (const card of document.querySelectorAll('header, section')) {
        const name = card.id || card.localName, style = getComputedStyle(card), box = card.getBoundingClientRect();
        const right = box.left + card.clientLeft + card.clientWidth - parseFloat(style.paddingRight);
        if (card.scrollWidth > card.clientWidth) found.push(`${name}: ${card.scrollWidth} > ${card.clientWidth} px`);
        card.querySelectorAll('table').forEach((table, i) => {
            const edge = table.getBoundingClientRect().right;
            if (edge > right + 0.5 || table.scrollWidth > card.clientWidth)
                found.push(`${name}, table ${i} (${table.className}): ${Math.round(edge - right)} px past its card`);
        });
    }
    return found;
}"""


def chromium_path() -> str | None:
    """$MNISTGEN_CHROMIUM, else the first Chromium on PATH or at Debian's place."""
    env = os.environ.get("MNISTGEN_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def missing(reason: str):
    if os.environ.get("MNISTGEN_REQUIRE_REAL_DATA") == "1":
        pytest.fail(f"MNISTGEN_REQUIRE_REAL_DATA=1 but {reason} (CI installs chromium and playwright)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for this test module (closed at its end)."""
    executable = chromium_path()
    if executable is None:
        missing("no Chromium found (apt-get install chromium, or set MNISTGEN_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Traffic:
    """Every request a page made, and those that failed or left the local file."""

    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @property
    def non_local(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]


def open_page(browser, path: Path, viewport=(1400, 1000)):
    """Open ``path`` from file:// in a fresh context; any non-local request is recorded and aborted.

    Returns (page, traffic). The caller closes ``page.context``.
    """
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    traffic = Traffic()

    def route(route):
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda request: traffic.requests.append(request.url))
    page.on("requestfailed", lambda request: traffic.failed.append(f"{request.url} ({request.failure})"))
    page.on("console", lambda message: traffic.console_errors.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: traffic.console_errors.append(str(error)))
    page.goto(Path(path).resolve().as_uri(), wait_until="load")
    return page, traffic


def overflow(browser, path: Path) -> dict[int, list[str]]:
    """What of the page at ``path`` is wider than its card (:data:`OVERFLOW`), by window width: {} when it all fits."""
    found = {}
    for width in WIDTHS:
        page, traffic = open_page(browser, path, viewport=(width, 900))
        try:
            found[width] = page.evaluate(OVERFLOW)
            assert traffic.console_errors == []
        finally:
            page.context.close()
    return {width: wide for width, wide in found.items() if wide}
