"""The floor under a VAE epoch on this CPU: how fast the matrix products of one training step run.

A step of batch 100 needs five products of 100 x 784 x 500 (78.4 MFLOP each): the encoder's and the
decoder's big layer forward, the decoder's weight gradient and input gradient, and the encoder's weight
gradient (no gradient flows into the images, so the sixth product autograd could do is not needed).
Over the 100 steps of an hw epoch that is 39.2 GFLOP (47 GFLOP would count the sixth). The small layers
(500 x 2) add 0.3 %. This times the five products exactly as train/vae.py calls them, each alone, several
repetitions, and prints the epoch time the fastest repetition of each sets: no training loop can be faster.

    nice -n 10 python bench/vae_matmul.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

BATCH, PIXELS, HIDDEN, STEPS = 100, 784, 500, 100
FLOP = 2 * BATCH * PIXELS * HIDDEN


def fastest_seconds(product, repeat: int, calls: int) -> float:
    """Seconds per call of the fastest of ``repeat`` timed runs: on a shared machine the least disturbed one."""
    product()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            product()
        times.append((time.perf_counter() - start) / calls)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((BATCH, PIXELS), 0.13), generator=generator)  # binary images
    w_encoder, b_encoder = torch.randn(HIDDEN, PIXELS, generator=generator) * 0.03, torch.zeros(HIDDEN)
    w_decoder, b_decoder = torch.randn(PIXELS, HIDDEN, generator=generator) * 0.03, torch.zeros(PIXELS)
    h = torch.tanh(torch.randn(BATCH, HIDDEN, generator=generator))
    d_logits = torch.randn(BATCH, PIXELS, generator=generator) * 0.01
    d_hidden = torch.randn(BATCH, HIDDEN, generator=generator) * 0.01
    grad_decoder, grad_encoder = torch.empty(PIXELS, HIDDEN), torch.empty(HIDDEN, PIXELS)
    products = {
        "encoder forward   x W1^T + b1": lambda: torch.addmm(b_encoder, x, w_encoder.t()),
        "decoder forward   h2 W2^T + b2": lambda: torch.addmm(b_decoder, h, w_decoder.t()),
        "decoder dL/dW2 =  dl^T h2": lambda: torch.mm(d_logits.t(), h, out=grad_decoder),
        "decoder dL/dh2 =  dl W2": lambda: torch.mm(d_logits, w_decoder),
        "encoder dL/dW1 =  da1^T x": lambda: torch.mm(d_hidden.t(), x, out=grad_encoder),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {BATCH} x {PIXELS} x {HIDDEN} products")
    step = 0.0
    for name, product in products.items():
        seconds = fastest_seconds(product, args.repeat, calls=50)
        step += seconds
        print(f"  {name:32s} {seconds * 1e3:7.3f} ms  {FLOP / seconds / 1e9:6.1f} GFLOP/s")
    print(f"five products per step: {step * 1e3:.2f} ms -> {step * STEPS:.3f} s per hw epoch "
          f"({5 * FLOP * STEPS / 1e9:.1f} GFLOP at {5 * FLOP / step / 1e9:.1f} GFLOP/s): the floor of an epoch")


if __name__ == "__main__":
    main()
