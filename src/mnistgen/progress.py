"""The progress bar of every long loop: on stderr, on a terminal only (unless asked), from torchrun's rank 0 only."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .distributed import is_main_process


def progress(total: int, description: str, enabled: bool | None = None) -> tqdm:
    """A progress bar; ``enabled`` None: shown on a terminal only."""
    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, desc=description, unit="batch", leave=False, disable=disable or not is_main_process(),
                dynamic_ncols=True)
