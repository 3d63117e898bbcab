"""Where a dataset's files come from: --data-dir, then $MNISTGEN_DATA_DIR, then the user cache.

(Skeleton: finds and reads local files. Verification, caching of the verdict, downloading and the
offline sample fallback are completed in this module.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .idx import read_idx
from .registry import DATASETS


@dataclass(frozen=True)
class RawData:
    """A whole dataset in memory: uint8 images (N, 28, 28) and int64 labels (N,), with provenance."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)


def candidate_dirs(data: DataConfig) -> list[Path]:
    if data.data_dir:
        return [Path(data.data_dir).expanduser()]
    env = os.environ.get("MNISTGEN_DATA_DIR")
    if env:
        return [Path(env).expanduser()]
    return []


def load_raw(data: DataConfig) -> RawData:
    spec = DATASETS[data.dataset]
    for folder in candidate_dirs(data):
        paths = {f.role: folder / f.name for f in spec.files}
        if all(p.is_file() for p in paths.values()):
            arrays = {f.role: read_idx(paths[f.role], f.magic) for f in spec.files}
            return RawData(
                arrays["train_images"], arrays["train_labels"].astype(np.int64),
                arrays["test_images"], arrays["test_labels"].astype(np.int64),
                {"dataset": data.dataset, "folder": str(folder)},
            )
    raise DataError(f"{data.dataset}: files not found")
