"""The command families other than ``data``, in the order ``mnistgen --help`` lists them."""

from __future__ import annotations

from . import experiment, explore, gan, report, score, sweep, vae

FAMILIES = [vae, gan, score, experiment, report, explore, sweep]
