"""Where a step of the VAE's C kernels goes: each piece of `NativeVAEStep` timed alone and inside whole steps.

A step (mnistgen/kernels/vae.py) is seven calls: the C forward (nonzero lists, sparse encoder sums, tanh,
heads, decoder hidden layer), PyTorch's three dense 100 x 500 x 784 products (logits, the output weight's
gradient, dL/dh2), the C output pass (log-likelihood, dL/dlogits), the C backward (the rest, the encoder
weight's gradient as sparse sums) and the C Adam over all 788,788 parameters. This script times

- "alone": each call repeated back to back (its data stays in the caches): the floor for that piece;
- "in steps": each call inside whole steps over real batches, one timer per call (the caches hold what the
  step before left: weights, gradients and Adam's moments are 12.6 MB, more than this VM's L3 share).

It also prints the dense products' rate alone (GFLOP/s), which sets the floor for the three of them.

    python bench/vae_native_pieces.py --data-dir ../shared/data/mnist [--threads 1] [--repeat 15]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time

import torch
from bench_args import bench_parser, local_data, parse_bench_args

from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.kernels.vae import NativeVAEStep
from mnistgen.models.vae import VAE

BATCH = 100
PRODUCT_FLOP = 2 * BATCH * 784 * 500


def hw_batches_and_native_step(args: argparse.Namespace) -> tuple[list[torch.Tensor], NativeVAEStep]:
    """The hw training images in batches of 100, and the C kernels' step of a seeded VAE with Adam's state loaded."""
    images = load_protocol("hw", load_raw(local_data(args))).train_images
    batches = [images[start:start + BATCH] for start in range(0, len(images), BATCH)]  # (100, 784) each
    torch.manual_seed(0)
    native = NativeVAEStep(VAE(), BATCH)
    native.load(torch.optim.Adam(native.model.parameters()))
    return batches, native


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="repetitions (medians are printed)")
    args = parse_bench_args(parser)
    batches, native = hw_batches_and_native_step(args)
    library, buffers, threads = native.library, native._buffers_address, torch.get_num_threads()
    eps = torch.randn(BATCH, 2)
    elbo = ctypes.c_float()

    def adam() -> None:  # the same call as NativeVAEStep.adam_step, without advancing its step count
        native.adam_step(1e-3, (0.9, 0.999), 1e-8)
        native.adam_steps -= 1

    pieces = {
        "C forward": lambda x: library.mnistgen_vae_forward(buffers, x.data_ptr(), eps.data_ptr(), BATCH, threads),
        "logits (product)": lambda x: torch.addmm(native.out_bias, native.h2, native.out_weight.t(), out=native.logits),
        "C output": lambda x: library.mnistgen_vae_output(buffers, x.data_ptr(), BATCH, 1.0 / BATCH, threads),
        "Wo gradient (product)": lambda x: torch.mm(native.d_logits.t(), native.h2, out=native.out_weight_gradient),
        "dL/dh2 (product)": lambda x: torch.mm(native.d_logits, native.out_weight, out=native.d_h2),
        "C backward": lambda x: library.mnistgen_vae_backward(buffers, eps.data_ptr(), BATCH, 1.0 / BATCH, 0,
                                                              ctypes.byref(elbo), threads),
        "C Adam": lambda x: adam(),
    }
    alone = {name: [] for name in pieces}
    in_steps = {name: [] for name in pieces}
    whole = []
    for piece in pieces.values():  # warm-up
        piece(batches[0])
    for _ in range(args.repeat):
        for name, piece in pieces.items():
            start = time.perf_counter()
            for _ in range(20):
                piece(batches[0])
            alone[name].append((time.perf_counter() - start) / 20)
        totals = dict.fromkeys(pieces, 0.0)
        step_start = time.perf_counter()
        for x in batches:
            for name, piece in pieces.items():
                start = time.perf_counter()
                piece(x)
                totals[name] += time.perf_counter() - start
        whole.append((time.perf_counter() - step_start) / len(batches))
        for name in pieces:
            in_steps[name].append(totals[name] / len(batches))

    print(f"{os.cpu_count()} CPUs, {threads} torch thread(s), torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}; medians of {args.repeat}, ms per step (batch {BATCH})")
    print(f"{'piece':24s} {'alone':>8s} {'in steps':>9s}")
    for name in pieces:
        print(f"{name:24s} {1e3 * statistics.median(alone[name]):8.3f} {1e3 * statistics.median(in_steps[name]):9.3f}")
    sum_alone = sum(statistics.median(v) for v in alone.values())
    sum_steps = sum(statistics.median(v) for v in in_steps.values())
    print(f"{'sum':24s} {1e3 * sum_alone:8.3f} {1e3 * sum_steps:9.3f}   (whole steps, timed: "
          f"{1e3 * statistics.median(whole):.3f} ms)")
    products = [name for name in pieces if "product" in name]
    rate = 3 * PRODUCT_FLOP / sum(statistics.median(alone[name]) for name in products) / 1e9
    print(f"the three dense products alone: {rate:.1f} GFLOP/s; "
          f"at that rate an epoch's 23.5 GFLOP of them take {23.52 / rate:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
