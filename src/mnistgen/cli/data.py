"""``mnistgen data``: fetch, verify and describe dataset files (argument parsing and printing only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DataConfig, add_config_arguments, config_from_args

GRID_EXAMPLES_PER_CLASS = 10
GRID_SCALE = 2  # PNG pixels per image pixel
NETWORK_FIELDS = ("offline", "mirrors", "download_timeout", "download_retries")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="fetch, verify and describe dataset files",
        description="Dataset files are looked for in --data-dir, else $MNISTGEN_DATA_DIR, else the user cache "
                    "($MNISTGEN_CACHE_DIR or the platform's cache folder); missing ones are downloaded there.")
    commands = parser.add_subparsers(title="data commands", metavar="COMMAND", parser_class=type(parser))
    commands.required = True

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
    from ..data.describe import describe, example_grid

    data = config_from_args(DataConfig, args)
    raw, lines = describe(data)
    from ..imaging import save_png  # imports torch (via runs): only once there is something to save

    for label, text in lines:
        print(f"{label:<9} {text}")
    out = Path(args.out).expanduser() if args.out else cache_root() / "figures" / f"{data.dataset}-examples.png"
    save_png(out.resolve(), example_grid(raw, GRID_EXAMPLES_PER_CLASS), scale=GRID_SCALE)
    print(f"{'examples':<9} {out.resolve()} (row k: the first {GRID_EXAMPLES_PER_CLASS} training images of class k)")
    return 0
