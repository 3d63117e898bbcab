"""This machine's matrix-product speed with one and with two threads, and the floor it sets for the importance-
weighted estimate of `mnistgen vae eval` (10,000 test images x K = 1,000 draws through the decoder 2 -> 500 -> 784).

The product timed is the decoder's output layer as the estimate computes it, logits = h2 Wo^T + bo
(``torch.addmm``) for a block of rows of h2 (rows x 500) -> (rows x 784), float32, back to back. For each thread
count: the median and the best of ``--repeat`` timings, in GFLOP/s (2 x rows x 500 x 784 per product). The floor is
the estimate's products (2 x N x K x (2 x 500 + 500 x 784) FLOP: 7.9 TFLOP for SPEC's defaults) over the best speed;
its 7.8 G softplus terms and 5 G tanh come on top. The machine may run other jobs: the load average is printed.

    python bench/gemm_peak.py --repeat 9 [--rows 300,1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

HIDDEN, PIXELS, LATENT = 500, 784, 2
IMAGES, DRAWS = 10_000, 1000  # the importance-weighted stage of `mnistgen vae eval`


def rates(call, work: float, repeat: int, seconds: float = 0.5) -> list[float]:
    """``repeat`` timings of ``call()`` back to back for about ``seconds`` each, in ``work`` units per second."""
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < 0.1:  # warm-up, and calls per timing
        call()
        calls += 1
    calls = max(1, round(calls * seconds / 0.1))
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        timings.append(work * calls / (time.perf_counter() - started))
    return timings


def product_rates(rows: int, repeat: int, seconds: float = 0.5) -> list[float]:
    """``repeat`` timings of (rows x 500) @ (500 x 784) + bias, back to back for about ``seconds`` each, in FLOP/s."""
    weight, bias = torch.randn(PIXELS, HIDDEN), torch.randn(PIXELS)
    h2, out = torch.randn(rows, HIDDEN).tanh(), torch.empty(rows, PIXELS)
    return rates(lambda: torch.addmm(bias, h2, weight.t(), out=out), 2.0 * rows * HIDDEN * PIXELS, repeat, seconds)


def memory_rates(elements: int, repeat: int, seconds: float = 0.5) -> list[float]:
    """``repeat`` timings of the sweep a = b + 0.5 c over float32 arrays of ``elements`` (two read, one written: 12
    bytes an element), back to back for about ``seconds`` each, in bytes/s: the memory speed of a working set of
    that size, as an elementwise optimizer step sees it."""
    a, b, c = torch.empty(elements), torch.randn(elements), torch.randn(elements)
    return rates(lambda: torch.add(b, c, alpha=0.5, out=a), 12.0 * elements, repeat, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="timings of each size and thread count")
    parser.add_argument("--rows", default="300,1000", help="comma-separated rows of h2 per product")
    parser.add_argument("--seconds", type=float, default=0.5, help="about how long one timing runs")
    args = parser.parse_args()
    total = 2.0 * IMAGES * DRAWS * (LATENT * HIDDEN + HIDDEN * PIXELS)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        best = 0.0
        for rows in (int(text) for text in args.rows.split(",")):
            rates = [rate / 1e9 for rate in product_rates(rows, args.repeat, args.seconds)]
            best = max(best, max(rates))
            print(f"{threads} thread(s), {rows:5d} rows: median {statistics.median(rates):6.1f} GFLOP/s, best "
                  f"{max(rates):6.1f}", flush=True)
        print(f"{threads} thread(s): the importance-weighted estimate's {total / 1e12:.2f} TFLOP of products take at "
              f"least {total / best / 1e9:.0f} s at {best:.1f} GFLOP/s", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
