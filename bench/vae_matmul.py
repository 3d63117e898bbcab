"""The floor under a VAE epoch on this CPU: how fast the matrix products of one training step run.

A step of batch 100 needs five products of 100 x 784 x 500 (78.4 MFLOP each): the encoder's and the
decoder's big layer forward, the decoder's weight gradient and input gradient, and the encoder's weight
gradient (no gradient flows into the images, so the sixth product autograd could do is not needed).
Over the 100 steps of an hw epoch that is 39.2 GFLOP (47 GFLOP would count the sixth). The small layers
(500 x 2) add 0.3 %. This times the five products exactly as the hand-derived step calls them
(``elbo_with_gradients`` in mnistgen/accelerate/vae.py), each alone, several repetitions, and prints the epoch
time the fastest repetition of each sets: no training loop can be faster.

It then times the sparse alternative for the two encoder products (the images are binary, about 13 % ones):
a1 = x W1^T + b1 as ``embedding_bag`` sums of the rows of W1^T picked by the nonzero pixels, and
dL/dW1 = da1^T x as ``embedding_bag`` sums of the rows of da1 picked by the images where each pixel is on,
with everything these need per step (listing the nonzeros, a pixel-major copy of W1 and of the gradient),
and the cost of storing W1 pixel-major instead (the fused Adam kernel then copies it every step).

    nice -n 10 python bench/vae_matmul.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

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

    sparse_alternatives(x, w_encoder, b_encoder, d_hidden, products, args.repeat)


def starts(counts: torch.Tensor) -> torch.Tensor:
    """(0, c0, c0 + c1, ...): where each run of the given lengths begins."""
    result = torch.zeros_like(counts)
    torch.cumsum(counts[:-1], 0, out=result[1:])
    return result


def sparse_alternatives(x, w_encoder, b_encoder, d_hidden, products, repeat: int) -> None:
    """Time the encoder's two products as sums over the nonzero pixels, with their per-step overheads."""
    def by_image():  # the nonzero pixels image by image: (nnz,) pixel indices and (B,) starts
        nonzero = x != 0
        return torch.remainder(nonzero.view(-1).nonzero().squeeze(1), PIXELS), starts(nonzero.sum(1))

    def by_pixel():  # the nonzero pixels pixel by pixel: (nnz,) image indices and (D,) starts
        nonzero = (x != 0).t().contiguous()
        return torch.remainder(nonzero.view(-1).nonzero().squeeze(1), BATCH), starts(nonzero.sum(1))

    pixels, image_starts = by_image()
    images, pixel_starts = by_pixel()
    w_pixel_major = w_encoder.t().contiguous()  # (D, H)
    pieces = {
        "list nonzeros image by image": by_image,
        "list nonzeros pixel by pixel": by_pixel,
        "pixel-major copy of W1 (D, H)": lambda: w_encoder.t().contiguous(),
        "a1 = embedding_bag(W1^T rows) + b1": lambda: F.embedding_bag(pixels, w_pixel_major, image_starts,
                                                                       mode="sum").add_(b_encoder),
        "dW1^T = embedding_bag(da1 rows)": lambda: F.embedding_bag(images, d_hidden, pixel_starts, mode="sum"),
    }
    dw_pixel_major = pieces["dW1^T = embedding_bag(da1 rows)"]()
    pieces["dW1 back to (H, D) layout"] = lambda: dw_pixel_major.t().contiguous()
    dense = {name: fastest_seconds(product, repeat, calls=50)
             for name, product in products.items() if name.startswith("encoder")}
    print(f"sparse encoder products ({int(x.sum())} of {x.numel()} pixels on):")
    sparse = {}
    for name, piece in pieces.items():
        sparse[name] = fastest_seconds(piece, repeat, calls=50)
        print(f"  {name:36s} {sparse[name] * 1e3:7.3f} ms")
    forward = sparse["list nonzeros image by image"] + sparse["pixel-major copy of W1 (D, H)"] + sparse[
        "a1 = embedding_bag(W1^T rows) + b1"]
    gradient = sum(sparse[name] for name in ("list nonzeros pixel by pixel", "dW1^T = embedding_bag(da1 rows)",
                                             "dW1 back to (H, D) layout"))
    dense_forward, dense_gradient = dense.values()
    sums_alone = sparse["a1 = embedding_bag(W1^T rows) + b1"]
    print(f"  forward: sparse {forward * 1e3:.3f} ms (sums alone {sums_alone * 1e3:.3f}) against dense "
          f"{dense_forward * 1e3:.3f} ms")
    print(f"  weight gradient: sparse {gradient * 1e3:.3f} ms (sums alone "
          f"{sparse['dW1^T = embedding_bag(da1 rows)'] * 1e3:.3f}) against dense {dense_gradient * 1e3:.3f} ms")

    # Keeping W1 pixel-major instead (no copies): what it costs the fused Adam step of that weight.
    adam_seconds = {}
    for layout, weight in (("(H, D) row-major", w_encoder.clone()), ("pixel-major", w_pixel_major.clone().t())):
        parameter = torch.nn.Parameter(weight)
        parameter.grad = torch.randn_like(parameter)  # same layout as the parameter (zeros_like keeps it)
        optimizer = torch.optim.Adam([parameter], lr=1e-3, fused=True)
        adam_seconds[layout] = fastest_seconds(optimizer.step, repeat, calls=20)
    print("  fused Adam step of W1: " + ", ".join(f"{layout} {seconds * 1e3:.3f} ms"
                                                   for layout, seconds in adam_seconds.items()))


if __name__ == "__main__":
    main()
