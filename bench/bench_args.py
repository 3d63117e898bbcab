"""The bench scripts' shared command line: where the MNIST files are (``--data-dir``, default $MNISTGEN_DATA_DIR)
and how many CPU threads torch uses (``--threads``)."""

from __future__ import annotations

import argparse
import os

import torch

from mnistgen.config import DataConfig


def bench_parser(doc: str, *, data: bool = True, threads: bool = True) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line, with ``--data-dir`` and ``--threads`` where asked for."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if data:
        parser.add_argument("--data-dir", default=os.environ.get("MNISTGEN_DATA_DIR"),
                            help="folder with the four MNIST .gz files (default: $MNISTGEN_DATA_DIR)")
    if threads:
        parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser


def parse_bench_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments; a missing data folder is the parser's one-line error; ``--threads`` N > 0 is set in torch."""
    args = parser.parse_args()
    if hasattr(args, "data_dir") and not args.data_dir:
        parser.error("give --data-dir or set MNISTGEN_DATA_DIR")
    if getattr(args, "threads", 0) > 0:
        torch.set_num_threads(args.threads)
    return args


def local_data(args: argparse.Namespace) -> DataConfig:
    """The MNIST files of ``--data-dir``, never downloaded."""
    return DataConfig(data_dir=args.data_dir, offline=True)
