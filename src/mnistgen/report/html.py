"""The report's HTML: values as a person reads them, tables, figures, sections, and the self-contained page; every
value from a folder is escaped (only :class:`Markup` is not), and the page loads nothing.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from ..imaging import to_uint8
from ..stats import Spread, is_number, spread

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
LONG_TOKEN = 24  # words longer than this (paths, checksums) may break anywhere
SEPARATOR_FROM = 10_000  # numbers from here on get thousands separators (10,000 images); 4-digit ones read fine
MOST_DECIMALS = 8  # of the smallest measurements (4 significant digits of 0.0001234, fewer below)
PLAIN_KEYS = ("seed",)  # identifiers: shown as typed wherever they appear, never as a count (1234, not 1,234)
HISTOGRAM_BAR_HEIGHT = 30  # pixels of the tallest bar of a class histogram


class Markup(str):
    """A string that is already HTML (not escaped again)."""


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Measured:
    """A number measured on several seeds, shown as their mean ± 95% interval (:func:`measured`)."""

    spread: Spread
    seeds: int  # the seeds asked; more than the spread's values where a seed lacks one


def number_format(values: Sequence[Any]) -> Callable[[Any], str]:
    """The one format of a column's numbers: floats (and :class:`Measured` means ± half-widths) with the decimals its
    largest float needs (2 from 100 on, 4 from 1 on, else 4 significant digits), thousands separators from
    SEPARATOR_FROM; None as "—", text escaped, :class:`Markup` as it is."""
    numbers = [x for v in values for x in (v.spread.values if isinstance(v, Measured) else (v,))
               if is_number(x) and math.isfinite(x)]
    grouping = "," if max(map(abs, numbers), default=0) >= SEPARATOR_FROM else ""
    size = max((abs(x) for x in numbers if isinstance(x, float)), default=0.0)
    places = 2 if size >= 100 else 4 if size >= 1 or not size else min(3 - math.floor(math.log10(size)), MOST_DECIMALS)

    def one(value: Any) -> str:
        if isinstance(value, Markup):
            return value
        if isinstance(value, Measured):
            found, n = value.spread, len(value.spread.values)
            text = found.text(places, grouping) + (f" ({n} of {value.seeds} seeds)" if n < value.seeds else "")
            return f'<span class="spread" title="mean ± {escape(interval_name(n))}">{escape(text)}</span>'
        if is_number(value) and math.isfinite(value):
            return f"{value:{grouping}.{places}f}" if isinstance(value, float) else f"{value:{grouping}}"
        return "—" if value is None else text_html(value)

    return one


def format_column(values: Sequence[Any]) -> list[str]:
    """A column of a table as HTML, its numbers in one format (:func:`number_format`): 0.5 beside 0.5486 is 0.5000."""
    return list(map(number_format(values), values))


def format_value(value: Any) -> str:
    """One measured number alone as a person reads it (:func:`number_format`); text escaped."""
    return number_format([value])(value)


def text_html(value: Any) -> str:
    """Text escaped, each word longer than LONG_TOKEN (a path, a checksum) in a span that may break anywhere."""
    return re.sub(rf"\S{{{LONG_TOKEN + 1},}}", lambda word: f'<span class="token">{word[0]}</span>', escape(value))


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


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], css_class: str = "", by_row: bool = False) -> str:
    """An HTML table, its numbers in one format per column (:func:`format_column`; a short row filled with "—"), or
    with ``by_row`` per row (a table whose rows are the quantities); cells already HTML passed as :class:`Markup`."""
    cells = map(format_column, rows) if by_row else zip(*map(format_column, itertools.zip_longest(*rows)), strict=True)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def is_plain_key(key: Any) -> bool:
    return isinstance(key, str) and (key in PLAIN_KEYS or key.endswith("_seed"))


def value_html(value: Any, settings: bool = False) -> Any:
    """Any JSON value for a table's cell: dicts and lists of dicts as tables, other lists as one line; with
    ``settings`` as typed (:func:`format_setting`), as identifiers such as a seed always are, else as it is: a
    measurement, formatted with its column (:func:`number_format`)."""
    if isinstance(value, dict):
        return Markup(table(("key", "value"), ((k, value_html(v, settings or is_plain_key(k)))
                                               for k, v in value.items()), "kv", by_row=True) if value else "—")
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        headers = list(dict.fromkeys(k for v in value for k in v))
        return Markup(table(headers, ([value_html(v.get(h), settings or is_plain_key(h)) for h in headers]
                                      for v in value), "kv"))
    if isinstance(value, list):
        return Markup(", ".join(format_column([value_html(v, settings) for v in value])) or "—")
    return Markup(format_setting(value)) if settings else value


def histogram_html(counts: Sequence[int]) -> Markup:
    """Class counts as a row of small bars with the count under each digit."""
    if not counts:
        return Markup("—")
    top = max(max(counts), 1)
    bars = "".join(
        f'<span class="bar" title="digit {d}: {format_value(c)}"><span style="height:'
        f'{round(HISTOGRAM_BAR_HEIGHT * c / top)}px"></span><small>{d}</small></span>' for d, c in enumerate(counts))
    listed = ", ".join(format_column(counts))
    return Markup(f'<span class="hist">{bars}</span> <small>{listed}</small>')


def interval_name(n: int) -> str:
    return f"95% Student-t interval over {n} seed{'' if n == 1 else 's'}"


def measured(values: dict[int | None, Any]) -> Any:
    """A single-seed run's measurement, ``{None: value}``, as it is; a replica run's, ``{seed: value}``, the
    :class:`Measured` mean ± 95% interval of its finite numbers (None where there is none)."""
    if None in values:
        return values[None]
    numbers = [float(v) for v in values.values() if is_number(v) and math.isfinite(v)]
    return Measured(spread(numbers), len(values)) if numbers else None


def seeds_html(values: dict[int, Any]) -> Markup:
    """Each seed's value, in one format (:func:`format_column`): "seed S: value; ...", "seed S: value" unbroken."""
    shown = dict(zip(values, format_column(list(values.values())), strict=True))
    return Markup("; ".join(f'<span class="seed">seed&nbsp;{seed}:&nbsp;{text}</span>' for seed, text in shown.items()))


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
    return table(headers, rows, "kv seeds", by_row=True)


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
    sub = "".join(f"<div>{line}</div>" for line in subtitle)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>\n{style}</style></head><body>"
            f"<header><h1>{escape(title)}</h1>{sub}</header><nav>{nav}</nav><main>"
            + "".join(body for _, _, body in present) + "</main></body></html>\n")
