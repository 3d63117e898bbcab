"""The trained models shipped with mnistgen (``mnistgen pretrained``) in ``assets/pretrained/``: ``pretrained.json``
(provenance and numbers) and a folder per model (``weights.pt`` in float16); :func:`export` writes one as a run folder.
"""

from __future__ import annotations

import hashlib
import io
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .data.cache import cache_root
from .errors import MnistgenError, UsageError
from .files import atomic_write, read_json, write_json
from .runs import RunDir

WEIGHTS = "weights.pt"
MANIFEST = "pretrained.json"  # in assets/pretrained/, and in an exported run folder: that model's entry
EXPLORER = ("vae-iwae", "gan-improved")  # the models of ``mnistgen explore --pretrained``
LABELS = {"test_elbo": "test ELBO", "test_iw_log_likelihood": "IW log p(x) (K = 1000)",
          "frechet_distance": "Frechet distance (10,000 samples)", "real_vs_real": "real vs real"}


def assets() -> Path:
    return Path(str(resources.files("mnistgen") / "assets" / "pretrained"))


def manifest() -> dict[str, dict[str, Any]]:
    """Each model's entry by name: kind, title, command, commit, seed, machine, date, numbers, sha256 of its weights."""
    return read_json(assets() / MANIFEST)


def entry(name: str) -> dict[str, Any]:
    models = manifest()
    if name not in models:
        raise UsageError(f"no pretrained model {name!r}; the models: {', '.join(models)}")
    return models[name]


def headline(name: str) -> str:
    """'vae-spec: test ELBO -160.42, IW log p(x) (K = 1000) -155.17' (the numbers of ``name``'s entry)."""
    numbers = entry(name)["numbers"]
    return f"{name}: " + ", ".join(f"{LABELS.get(key, key)} {value:.2f}" for key, value in numbers.items())


def stored(name: str) -> dict[str, Any]:
    """The arrays of ``name``'s weights.pt, checked against the manifest's SHA-256."""
    path = assets() / name / WEIGHTS
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry(name)["sha256"]:
        raise MnistgenError(f"{path}: checksum mismatch with {MANIFEST}: this copy of mnistgen is damaged")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def export(name: str, out: str | os.PathLike, replace: bool = False) -> RunDir:
    """Write ``name`` as an ordinary run folder ``out`` (the weights in float32, as training saves them); a folder
    holding a run is refused unless ``replace``."""
    info, arrays, run = entry(name), stored(name), RunDir(out)
    if run.config.is_file() and not replace:
        raise MnistgenError(f"{run.path} holds a run already; choose another --out")
    for file in (assets() / name).iterdir():
        if file.name != WEIGHTS:
            atomic_write(run.path / file.name, lambda handle, file=file: handle.write(file.read_bytes()))
    write_json(run.path / MANIFEST, {name: info})
    run.save_checkpoint({key: {k: v.float() for k, v in value.items()} if isinstance(value, dict) else value
                         for key, value in arrays["checkpoint"].items()})
    for key, raw in (("grids", False), ("raw_grids", True)):
        for epoch, levels in arrays.get(key, {}).items():
            run.save_grid(epoch, levels.float().div(255).numpy(), raw)
    return run


def cached_run(name: str) -> Path:
    """``name`` exported into the user cache (written again each time: a command may have changed the folder)."""
    return export(name, cache_root() / "pretrained" / name, replace=True).path
