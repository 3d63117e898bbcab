"""The VAE's step against how far apart the machine's two CPUs are: one hw epoch of the C kernels' steps (100 Adam
steps of batch 100), then the two CPUs' round trip (``bench/core_round_trip.c``: a cache line written on CPU 0 and
answered from CPU 1), in turn, for ``--seconds``.

A VM's two vCPUs may sit on two cores that share a last-level cache (a round trip of about 100 ns) or, when the
hypervisor moves them, farther apart (several times that). The step's two threads hand data to each other in every
phase, so the step is slower while they are far apart. The summary gives the median epoch with the CPUs near
(round trip under twice the fastest tenth's) and far, and their ratio.

    python bench/core_round_trip.py --data-dir ../shared/data/mnist [--seconds 120] [--threads 2]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_args import bench_parser, parse_bench_args
from vae_native_pieces import BATCH, hw_batches_and_native_step  # beside this script

from mnistgen.kernels.native import find_compiler

SOURCE = Path(__file__).with_name("core_round_trip.c")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to alternate the two (default 120)")
    args = parse_bench_args(parser)
    batches, native = hw_batches_and_native_step(args)
    eps = torch.randn(BATCH, 2)

    with tempfile.TemporaryDirectory() as folder:
        probe = str(Path(folder) / "round_trip")
        subprocess.run([find_compiler(), "-O2", "-pthread", str(SOURCE), "-o", probe], check=True)
        pairs = []  # (epoch seconds, round trip ns)
        stop = time.monotonic() + args.seconds
        while time.monotonic() < stop:
            start = time.perf_counter()
            for x in batches:
                native.compute_gradients(x, eps, analytic_kl=False)
                native.adam_step(1e-3, (0.9, 0.999), 1e-8)
            epoch = time.perf_counter() - start
            round_trip = float(subprocess.run([probe], capture_output=True, text=True, check=True).stdout)
            pairs.append((epoch, round_trip))
            print(f"epoch {epoch:.3f} s   round trip {round_trip:6.1f} ns", flush=True)

    trips = sorted(trip for _, trip in pairs)
    near_limit = 2 * trips[len(trips) // 10]  # twice the fastest tenth's: near CPUs answer in 1x, far ones in 4x
    near = [epoch for epoch, trip in pairs if trip < near_limit]
    far = [epoch for epoch, trip in pairs if trip >= near_limit]
    print(f"{torch.get_num_threads()} torch thread(s); {len(pairs)} epochs; CPUs near (round trip under "
          f"{near_limit:.0f} ns): {len(near)}, far: {len(far)}")
    if far:  # near holds the fastest tenth at least
        print(f"median epoch near {statistics.median(near):.3f} s, far {statistics.median(far):.3f} s: "
              f"far / near {statistics.median(far) / statistics.median(near):.2f}")
    else:  # near and far are relative: the round trip says which state it was
        print(f"one state throughout: median epoch {statistics.median(near):.3f} s, median round trip "
              f"{statistics.median(trips):.0f} ns")


if __name__ == "__main__":
    sys.exit(main())
