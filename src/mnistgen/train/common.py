"""What every training loop shares: RNG state for exact resume, the NaN guard, the progress bar.

Kept as small functions (no trainer class): each loop in ``train/`` reads top to bottom.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import MnistgenError


class NonFiniteLossError(MnistgenError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def check_finite(value: float, what: str, epoch: int, step: int) -> None:
    """Stop the run with a clear message if ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"{what} became {value} at epoch {epoch}, step {step}; stopped, the checkpoint of the "
            f"last completed epoch is kept (try a lower learning rate)"
        )


def generator_states(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """The states of named generators, for a checkpoint (plain uint8 tensors: weights_only-safe)."""
    return {name: g.get_state() for name, g in generators.items()}


def restore_generators(generators: dict[str, torch.Generator], states: dict[str, torch.Tensor]) -> None:
    for name, g in generators.items():
        g.set_state(states[name].to("cpu") if g.device.type == "cpu" else states[name])


def cpu_rng_state() -> dict[str, Any]:
    """The global torch RNG state (CPU and, when present, CUDA): draws not made through a generator."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def progress(total: int, description: str, enabled: bool | None = None) -> tqdm:
    """A progress bar on stderr; shown only on a terminal unless ``enabled`` says otherwise."""
    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, desc=description, unit="batch", leave=False, disable=disable,
                dynamic_ncols=True)
