"""How fast real MNIST gets from gzip files into memory.

Prints, for each step, the median of several repetitions and its ratio to the baseline measured in the
same process: ``gzip.decompress`` of train-images-idx3-ubyte.gz alone (reading the file included), the
floor any gzip reader has to pay.

    nice -n 10 python bench/data_loading.py --data-dir ../shared/data/mnist --repeat 7
"""

from __future__ import annotations

import gzip
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_args import bench_parser, parse_bench_args

from mnistgen.config import DataConfig
from mnistgen.data.idx import read_idx
from mnistgen.data.protocols import load_protocol
from mnistgen.data.registry import IMAGES_MAGIC
from mnistgen.data.sources import load_raw


def median_seconds(step, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = bench_parser(__doc__, threads=False)
    parser.add_argument("--repeat", type=int, default=7)
    args = parse_bench_args(parser)
    folder = Path(args.data_dir).resolve()
    train_images = folder / "train-images-idx3-ubyte.gz"
    data = DataConfig(data_dir=str(folder), offline=True)

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["MNISTGEN_CACHE_DIR"] = scratch  # the user cache is left alone
        fresh = iter(range(10**6))

        def first_load():  # an empty verdict cache each time: every file is hashed
            os.environ["MNISTGEN_CACHE_DIR"] = str(Path(scratch) / f"fresh-{next(fresh)}")
            load_raw(data)

        def second_load():
            os.environ["MNISTGEN_CACHE_DIR"] = scratch
            load_raw(data)

        second_load()  # records the verdicts that second_load then reuses
        raw = load_raw(data)
        steps = [
            ("baseline: gzip.decompress(train-images .gz)", lambda: gzip.decompress(train_images.read_bytes())),
            ("read_idx(train-images .gz): 60k images", lambda: read_idx(train_images, IMAGES_MAGIC, (28, 28))),
            ("load_raw, all 4 files, verdicts remembered", second_load),
            ("load_raw, all 4 files, first time (hashing)", first_load),
            ("load_protocol('hw') from RawData", lambda: load_protocol("hw", raw)),
            ("load_protocol('full') from RawData", lambda: load_protocol("full", raw)),
            ("load_protocol('gan') from RawData", lambda: load_protocol("gan", raw)),
        ]
        results = [(name, median_seconds(step, args.repeat)) for name, step in steps]
    baseline = results[0][1]
    print(f"{'step':<48} {'median s':>9} {'x baseline':>11}   ({args.repeat} repetitions)")
    for name, seconds in results:
        print(f"{name:<48} {seconds:>9.3f} {seconds / baseline:>11.2f}")


if __name__ == "__main__":
    main()
