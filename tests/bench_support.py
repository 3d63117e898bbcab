"""What the speed tests share: the baseline loops of bench/ (loaded from their files), a relative error, and
networks with weights off their init."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_module(name: str) -> ModuleType:
    """bench/<name>.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def perturbed(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Weights off their init and non-zero biases, so no term of a check is trivially zero."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return module
