"""What ``mnistgen data info`` reports: split sizes, label counts, pixel statistics, a grid of examples."""

from __future__ import annotations

import numpy as np

from ..config import DataConfig
from .registry import DATASETS, NUM_CLASSES
from .sources import RawData, load_raw


def pixel_stats(images_uint8: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of pixel/255, exact, from a 256-bin histogram (no float copy of the images)."""
    counts = np.bincount(np.asarray(images_uint8).reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    mean = float(counts @ levels / total)
    return mean, float(counts @ (levels - mean) ** 2 / total) ** 0.5


def example_grid(raw: RawData, per_class: int) -> np.ndarray:
    """A (10 rows x per_class columns) tile of training images in [0, 1]: row k holds the first of class k."""
    from ..imaging import tile

    rows = []
    for digit in range(NUM_CLASSES):
        chosen = np.flatnonzero(raw.train_labels == digit)[:per_class]
        row = np.ones((per_class, *raw.train_images.shape[1:]), dtype=np.float32)  # a missing cell stays white
        row[: len(chosen)] = raw.train_images[chosen] / 255.0
        rows.append(row)
    return tile(np.concatenate(rows), rows=NUM_CLASSES, cols=per_class)


def describe(data: DataConfig) -> tuple[RawData, list[tuple[str, str]]]:
    """The dataset and its (label, text) lines, in print order."""
    raw = load_raw(data)
    prov = raw.provenance
    if prov.get("sample"):
        where = f"{prov['source']}: {prov['folder']}"
    else:
        where = f"{prov['folder']} ({prov['located_by']})"
    lines = [("dataset", f"{prov['title']} ({prov['dataset']}) from {where}")]
    if prov.get("requested_dataset"):
        lines.append(("note", f"stands in for {prov['requested_dataset']}: {prov['fallback_reason']}"))
    spec = DATASETS.get(prov["dataset"])
    if spec is not None and spec.classes != tuple(str(d) for d in range(NUM_CLASSES)):
        lines.append(("classes", ", ".join(f"{i} {name}" for i, name in enumerate(spec.classes))))
    for split, images, labels in (("train", raw.train_images, raw.train_labels),
                                  ("test", raw.test_images, raw.test_labels)):
        mean, std = pixel_stats(images)
        counts = " ".join(f"{digit}:{count}" for digit, count in enumerate(np.bincount(labels, minlength=NUM_CLASSES)))
        shape = "x".join(map(str, images.shape[1:]))
        lines.append((split, f"{len(images):,} images {shape}, pixel/255 mean {mean:.4f} std {std:.4f}; "
                             f"labels {counts}"))
    return raw, lines
