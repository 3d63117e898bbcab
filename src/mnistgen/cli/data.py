"""``mnistgen data``: fetch, verify and describe dataset files (``info``: split sizes, label counts, pixel
statistics, a grid of examples)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..config import DataConfig, add_config_arguments, config_from_args
from ..data.registry import DATASETS, NUM_CLASSES
from ..data.sources import RawData
from ..imaging import save_png, tile

GRID_EXAMPLES_PER_CLASS = 10
GRID_SCALE = 2  # PNG pixels per image pixel
NETWORK_FIELDS = ("offline", "mirrors", "download_timeout", "download_retries")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="fetch, verify and describe dataset files",
        description="Dataset files are looked for in --data-dir, else $MNISTGEN_DATA_DIR, else the user cache "
                    "($MNISTGEN_CACHE_DIR or the platform's cache folder); missing ones are downloaded there.")
    commands = parser.add_subparsers(title="data commands", metavar="COMMAND", parser_class=type(parser), required=True)

    fetch = commands.add_parser(
        "fetch", help="download the dataset's missing files and verify all of them",
        description="Download what is missing (mirrors in order, checksum checked before the file is moved into "
                    "place), verify what is there, and print one line per file.")
    add_config_arguments(fetch, DataConfig)
    fetch.set_defaults(func=run_fetch)

    verify = commands.add_parser(
        "verify", help="check every file's checksum; exit 0 only if all pass",
        description="Hash every file of the dataset afresh and print 'OK NAME MD5' or 'FAIL NAME: REASON' per "
                    "file. Never downloads. Exit status 0 only when every file checks out.")
    add_config_arguments(verify, DataConfig, exclude=NETWORK_FIELDS)
    verify.set_defaults(func=run_verify)

    info = commands.add_parser(
        "info", help="sizes, label counts, pixel statistics and a PNG grid of examples",
        description="Load the dataset (downloading it if needed) and describe it; write a grid of examples, one "
                    "row per class.")
    add_config_arguments(info, DataConfig)
    info.add_argument("--out", metavar="PNG", default=None,
                      help="where to write the grid of examples (default: CACHE/figures/DATASET-examples.png)")
    info.set_defaults(func=run_info)


def run_fetch(args: argparse.Namespace) -> int:
    from ..data.sources import fetch_files

    data = config_from_args(DataConfig, args)
    folder, reports = fetch_files(data)
    for report in reports:
        print(report.line())
    where = f" in {folder}" if folder is not None else ""
    print(f"{data.dataset}: {len(reports)} file(s) present and verified{where}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from ..data.sources import verify_files

    data = config_from_args(DataConfig, args)
    _, reports = verify_files(data)
    for report in reports:
        print(report.line())
    return 0 if all(report.ok for report in reports) else 1


def run_info(args: argparse.Namespace) -> int:
    from ..data.cache import cache_root
    from ..data.sources import load_raw

    data = config_from_args(DataConfig, args)
    raw = load_raw(data)
    for label, text in describe(raw):
        print(f"{label:<9} {text}")
    out = Path(args.out).expanduser() if args.out else cache_root() / "figures" / f"{data.dataset}-examples.png"
    save_png(out.resolve(), example_grid(raw, GRID_EXAMPLES_PER_CLASS), scale=GRID_SCALE)
    print(f"{'examples':<9} {out.resolve()} (row k: the first {GRID_EXAMPLES_PER_CLASS} training images of class k)")
    return 0


def pixel_stats(images_uint8: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of pixel/255, exact, from a 256-bin histogram (no float copy of the images)."""
    counts = np.bincount(np.asarray(images_uint8).reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    mean = float(counts @ levels / total)
    return mean, float(counts @ (levels - mean) ** 2 / total) ** 0.5


def example_grid(raw: RawData, per_class: int) -> np.ndarray:
    """A (10 rows x per_class columns) tile of training images in [0, 1]: row k holds the first of class k."""
    rows = []
    for digit in range(NUM_CLASSES):
        chosen = np.flatnonzero(raw.train_labels == digit)[:per_class]
        row = np.ones((per_class, *raw.train_images.shape[1:]), dtype=np.float32)  # a missing cell stays white
        row[: len(chosen)] = raw.train_images[chosen] / 255.0
        rows.append(row)
    return tile(np.concatenate(rows), rows=NUM_CLASSES, cols=per_class)


def describe(raw: RawData) -> list[tuple[str, str]]:
    """The (label, text) lines of ``mnistgen data info``, in print order."""
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
    return lines
