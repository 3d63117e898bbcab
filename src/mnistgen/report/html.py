"""The report's HTML: values as a person reads them, tables, figures, sections, and the self-contained page.

Every value from a folder is escaped; only :class:`Markup` (HTML built here) is not. The page loads nothing: no script,
no font, no stylesheet from anywhere, and a Content-Security-Policy that forbids every request except ``data:`` images.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import numpy as np

from ..imaging import to_uint8
from ..stats import is_number, spread

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
LONG_TOKEN = 32  # strings longer than this without a space (paths, checksums) may break anywhere
SEPARATOR_FROM = 10_000  # counts from here on get thousands separators (10,000 images); 4-digit ones read fine
PLAIN_KEYS = ("seed",)  # identifiers: shown as typed wherever they appear, never as a count (1234, not 1,234)
HISTOGRAM_BAR_HEIGHT = 30  # pixels of the tallest bar of a class histogram


class Markup(str):
    """A string that is already HTML (not escaped again)."""


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_value(value: Any) -> str:
    """A measured number as a person reads it (ELBOs with 2 decimals, small values with 4 digits, counts of five
    digits or more with thousands separators); text escaped."""
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= SEPARATOR_FROM else str(value)
    if isinstance(value, float) and math.isfinite(value):
        if abs(value) >= 100:
            return f"{value:,.2f}"
        return f"{value:.4f}" if abs(value) >= 1 else f"{value:.4g}"
    return escape(value)


def format_setting(value: Any) -> str:
    """A setting or an identifier as it was typed: integers without separators (seed 1234), floats in their
    shortest exact form (15.0, 0.0002, 1e-05), never padded to a number of decimals; text escaped."""
    return str(value) if is_number(value) else format_value(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def cell_html(value: Any) -> str:
    return value if isinstance(value, Markup) else format_value(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], css_class: str = "") -> str:
    """An HTML table; cells that are already HTML are passed as :class:`Markup`."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell_html(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def is_plain_key(key: Any) -> bool:
    return isinstance(key, str) and (key in PLAIN_KEYS or key.endswith("_seed"))


def value_html(value: Any, settings: bool = False) -> Markup:
    """Any JSON value as HTML (dicts and lists of dicts as tables); numbers as measurements (:func:`format_value`), or
    with ``settings`` as typed (:func:`format_setting`), as identifiers such as a seed always are."""
    if isinstance(value, dict):
        if not value:
            return Markup("—")
        return Markup(table(("key", "value"), ((k, value_html(v, settings or is_plain_key(k)))
                                               for k, v in value.items()), "kv"))
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            headers = list(dict.fromkeys(k for v in value for k in v))
            return Markup(table(headers, ([value_html(v.get(h), settings or is_plain_key(h)) for h in headers]
                                          for v in value), "kv"))
        return Markup(", ".join(cell_html(value_html(v, settings)) for v in value) or "—")
    if isinstance(value, str) and len(value) > LONG_TOKEN and " " not in value:  # a path or a checksum
        return Markup(f'<span class="token">{escape(value)}</span>')
    return Markup(format_setting(value) if settings else format_value(value))


def histogram_html(counts: Sequence[int]) -> Markup:
    """Class counts as a row of small bars with the count under each digit."""
    if not counts:
        return Markup("—")
    top = max(max(counts), 1)
    bars = "".join(
        f'<span class="bar" title="digit {d}: {format_value(c)}"><span style="height:'
        f'{round(HISTOGRAM_BAR_HEIGHT * c / top)}px"></span><small>{d}</small></span>' for d, c in enumerate(counts))
    listed = ", ".join(format_value(c) for c in counts)
    return Markup(f'<span class="hist">{bars}</span> <small>{escape(listed)}</small>')


def interval_name(n: int) -> str:
    return f"95% Student-t interval over {n} seed{'' if n == 1 else 's'}"


def measured(values: dict[int | None, Any]) -> Any:
    """A single-seed run's measurement, ``{None: value}``, as it is; a replica run's, ``{seed: value}``, the mean ± 95%
    interval of its finite numbers (the count said where a seed lacks one), 2 decimals from 100 on, else 4."""
    if None in values:
        return values[None]
    numbers = [float(v) for v in values.values() if is_number(v) and math.isfinite(v)]
    if not numbers:
        return Markup("—")
    found = spread(numbers)
    text = found.text(2 if abs(found.mean) >= 100 else 4, ",")
    if len(numbers) < len(values):
        text += f" ({len(numbers)} of {len(values)} seeds)"
    return Markup(f'<span class="spread" title="mean ± {escape(interval_name(len(numbers)))}">{escape(text)}</span>')


def seeds_html(values: dict[int, Markup]) -> Markup:
    """Each seed's value (already HTML): "seed S: value; ...", a line breaking only between seeds."""
    return Markup("; ".join(f'<span class="seed">seed {seed}: {value}</span>' for seed, value in values.items()))


def across_seeds(values: dict[int | None, Any], plain: bool = False) -> tuple[Any, Markup | None]:
    """One quantity of a replica run, ``{seed: value}``: (the value every seed shares, such as a setting, else
    :func:`measured`; "seed S: value; ..."), ``plain`` for identifiers; of a single-seed run: (its value, None)."""
    if None in values:
        return values[None], None
    each = seeds_html({seed: value_html(value, plain) for seed, value in values.items()})
    listed = list(values.values())
    if len({json.dumps(v, sort_keys=True) for v in listed}) == 1:  # a setting (or a time) every seed shares
        return value_html(listed[0], plain), each
    if any(isinstance(v, float) for v in listed):
        return measured(values), each
    return Markup("differs by seed"), each


def seeds_table(results: dict[int, dict[str, Any]]) -> str:
    """Each quantity (a row): :func:`across_seeds`, then every seed's value (a column each)."""
    rows = []
    for key in dict.fromkeys(k for result in results.values() for k in result):
        values = {seed: result.get(key) for seed, result in results.items()}
        rows.append([key, across_seeds(values, is_plain_key(key))[0],
                     *(value_html(v, is_plain_key(key)) for v in values.values())])
    headers = ("quantity", f"mean ± {interval_name(len(results))}", *(f"seed {seed}" for seed in results))
    return table(headers, rows, "kv seeds")


def figure_html(png: bytes, caption: str, alt: str, css_class: str = "") -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure class="{css_class}"><img src="{uri}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def array_png(image: np.ndarray, scale: int) -> bytes:
    """A 2-D array in [0, 1] as grayscale PNG bytes, enlarged ``scale`` times (nearest neighbour)."""
    from PIL import Image

    picture = Image.fromarray(to_uint8(image), mode="L")
    buffer = io.BytesIO()
    picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{body}</section>'


def details(summary: str, body: str) -> str:
    return f"<details><summary>{escape(summary)}</summary>{body}</details>"


def page(title: str, subtitle: Sequence[str], sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: sections are (anchor, nav label, html); the style is ``assets/report.css``."""
    style = resources.files("mnistgen").joinpath("assets", "report.css").read_text(encoding="utf-8")
    present = [(a, label, body) for a, label, body in sections if body]
    nav = "".join(f'<a href="#{escape(a)}">{escape(label)}</a>' for a, label, _ in present)
    sub = "".join(f"<p>{line}</p>" for line in subtitle)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>\n{style}</style></head><body>"
            f"<header><h1>{escape(title)}</h1>{sub}</header><nav>{nav}</nav><main>"
            + "".join(body for _, _, body in present) + "</main></body></html>\n")
