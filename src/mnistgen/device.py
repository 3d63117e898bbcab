"""Choosing the compute device, and seeding: ``--device auto`` means CUDA, then MPS, then CPU."""

from __future__ import annotations

import random

import numpy as np
import torch

from .errors import MnistgenError


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda|mps`` to a device; asking for one that is absent is an error, not a fallback."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MnistgenError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MnistgenError("--device mps: no MPS device is available (use --device auto or cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise MnistgenError(f"--device {name}: unknown device (choose auto, cpu, cuda or mps)")
    return torch.device(name)


def stream_seed(seed: int, *keys: int) -> int:
    """A seed for one random stream of a run, independent of the others (NumPy's SeedSequence mixes the keys)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a CPU generator for data order (saved in checkpoints)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator(device="cpu").manual_seed(seed)
