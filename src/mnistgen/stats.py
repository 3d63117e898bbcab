"""Numbers with their spread over a few seeds: the mean, the sample standard deviation and Student's t interval of
the mean, mean ± t_{0.975, n-1} · s / sqrt(n) (the seeds' values taken as independent normal draws)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

INTERVAL_NAME = "95% Student-t interval of the mean"

# t_{0.975, df} for df = 1..30: the half-width of a 95% interval is t * s / sqrt(n), df = n - 1
T_975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def is_number(value: Any) -> bool:
    """Whether a JSON value is a number (an int or a float; not a boolean, which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile for ``df``: a table to df 30, beyond it Cornish-Fisher in 1/df (within 1e-7)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959963984540054  # the normal's 0.975 quantile
    terms = ((z**3 + z) / 4,
             (5 * z**5 + 16 * z**3 + 3 * z) / 96,
             (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(term / df ** (power + 1) for power, term in enumerate(terms))


@dataclass(frozen=True)
class Spread:
    """Each seed's value, their mean, sample standard deviation and 95% interval half-width (None for one value)."""

    values: tuple[float, ...]
    mean: float
    std: float | None
    half_width: float | None

    def text(self, digits: int = 2, grouping: str = "") -> str:
        """"-137.62 ± 0.41" (mean ± half-width), or the single value; ``grouping`` "," for thousands separators."""
        form = f"{grouping}.{digits}f"
        return f"{self.mean:{form}}" + ("" if self.half_width is None else f" ± {self.half_width:{form}}")

    def as_dict(self) -> dict[str, Any]:
        """What eval.json and score.json hold: n, the values, mean, std, the interval's ends and its name."""
        low, high = (None, None) if self.half_width is None else (self.mean - self.half_width,
                                                                   self.mean + self.half_width)
        return {"n": len(self.values), "values": list(self.values), "mean": self.mean, "std": self.std,
                "ci95_low": low, "ci95_high": high, "ci95_half_width": self.half_width, "interval": INTERVAL_NAME}


def spread(values: Sequence[float]) -> Spread:
    """The :class:`Spread` of one number over seeds (``values`` in the seeds' order)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    half_width = None if std is None else t_quantile_975(n - 1) * std / math.sqrt(n)
    return Spread(tuple(float(v) for v in values), mean, std, half_width)


Interval, interval = Spread, spread  # the sweep's names: the mean and half_width of a Spread
