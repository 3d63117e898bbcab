"""What the VAE's two evaluations cost, each against the way it was computed before, in the same process.

- **The held-out ELBO after each epoch** (hw protocol: the 10,000 test images, one draw each). Before: the model's
  forward in PyTorch (:func:`mnistgen.losses.elbo_samples`, a dense encoder product per 1,000 images). Now:
  :func:`mnistgen.accelerate.vae.held_out_elbo`, the C kernels' forward where they train (the encoder's product as
  sums over the nonzero pixels, 1,000 images a call). Each repetition trains one epoch of mnistgen's loop (the
  accelerator that ``--cpu-kernels auto`` chooses), then evaluates its weights both ways, in alternating order, from
  the same seed.
- **The importance-weighted estimate of log p(x)** (``mnistgen vae eval``: K = 1,000 draws per image), on
  ``--iw-images`` test images and the trained weights. Before: :func:`old_iw_log_likelihood` below (the images
  repeated for every draw of a chunk, then x * l, softplus, their difference and its sum, each a new 16 MiB array).
  Now: :func:`mnistgen.evaluate.vae.iw_log_likelihood` (x l - softplus(l) in place in the logits). Both take the
  same draws: tests/test_iwae.py checks that they agree.

Printed: each repetition's seconds, the medians, and the median of the per-repetition ratios new/old; the held-out
ELBO's share of an epoch (training + evaluation); the importance-weighted estimate's products per second and its
time extrapolated to 10,000 images. The machine may run other jobs: the load average is printed at start and end.

With ``--pieces``, only the time of each piece of one chunk of the estimate, against its product.

    python bench/eval_speed.py --data-dir ../shared/data/mnist --repeat 7 [--threads 1] [--iw-images 200] [--pieces]
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_args import bench_parser, local_data, parse_bench_args

from mnistgen.accelerate.engines import Replica
from mnistgen.accelerate.vae import choose_vae_accelerator, held_out_elbo, vae_engine
from mnistgen.config import VAEConfig
from mnistgen.data.batches import epoch_order, num_batches
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.device import seed_everything, stream_seed
from mnistgen.distributions import log_bernoulli_logits, log_normal_logvar, log_standard_normal
from mnistgen.evaluate.vae import IW_CHUNK_ELEMENTS, IW_IMAGES_PER_GROUP, iw_log_likelihood
from mnistgen.losses import elbo_samples
from mnistgen.models.vae import IMAGE_PIXELS, build_model, make_optimizer
from mnistgen.train.common import take_steps
from mnistgen.train.vae import EVAL_STREAM, NOISE_STREAM, step_inputs

FULL_TEST_SET, FULL_DRAWS = 10_000, 1000  # the importance-weighted stage of `mnistgen vae eval`: images, K


@torch.inference_mode()
def old_iw_log_likelihood(model: torch.nn.Module, images: torch.Tensor, k: int = 1000,
                          generator: torch.Generator | None = None, max_elements: int = 1 << 22) -> torch.Tensor:
    """The importance-weighted estimate as it was computed before: the same draws, log p(x|z) out of place."""
    results = torch.empty(len(images), device=images.device)
    for start in range(0, len(images), IW_IMAGES_PER_GROUP):
        x = images[start:start + IW_IMAGES_PER_GROUP]  # (b, 784)
        b, pixels = x.shape
        mean, logvar = model.encoder(x)  # (b, D_z) each
        std = torch.exp(0.5 * logvar)
        per_chunk = max(1, max_elements // (b * pixels))  # samples of every image in one chunk
        running = torch.full((b,), -math.inf, device=x.device)
        for done in range(0, k, per_chunk):
            n = min(per_chunk, k - done)
            eps = torch.randn((n, b, mean.shape[1]), generator=generator, device=x.device, dtype=x.dtype)
            z = (mean + std * eps).reshape(n * b, -1)  # (n*b, D_z), sample-major
            logits = model.decoder.logits(z)  # (n*b, 784)
            log_weights = (log_bernoulli_logits(x.repeat(n, 1), logits) + log_standard_normal(z)
                           - log_normal_logvar(z, mean.repeat(n, 1), logvar.repeat(n, 1)))
            running = torch.logaddexp(running, torch.logsumexp(log_weights.view(n, b), dim=0))
        results[start:start + b] = running - math.log(k)
    return results


@torch.inference_mode()
def chunk_pieces(model: torch.nn.Module, x: torch.Tensor, repeat: int) -> None:
    """Where one chunk of the estimate (the draws of 100 images in ``IW_CHUNK_ELEMENTS`` logits) spends its time:
    each piece's median over ``repeat`` rounds, relative to the decoder's output product."""
    b, pixels = x.shape
    n = IW_CHUNK_ELEMENTS // (b * pixels)
    decoder, z = model.decoder, torch.randn(n * b, model.latent_dim)
    first = decoder.hidden(z)
    hidden = torch.tanh(first)
    logits = decoder.output(hidden).view(n, b, pixels)
    softplus, scratch = F.softplus(logits), torch.empty_like(logits)
    pieces = {"first layer (2 -> 500)": lambda: decoder.hidden(z), "tanh": lambda: torch.tanh(first),
              "output product (500 -> 784)": lambda: decoder.output(hidden), "softplus": lambda: F.softplus(logits),
              "x l - softplus(l) and its sum": lambda: torch.mul(logits, x, out=scratch).sub_(softplus).sum(2),
              "the whole chunk": lambda: (lambda out: out.mul_(x).sub_(F.softplus(out)).sum(2))(
                  decoder.logits(z).view(n, b, pixels))}
    seconds: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(repeat):
        for name, piece in pieces.items():
            seconds[name].append(timed(piece)[0])
    product = statistics.median(seconds["output product (500 -> 784)"])
    print(f"one chunk of the estimate ({n} draws of {b} images), median of {repeat}:")
    for name, times in seconds.items():
        print(f"  {name:30s} {statistics.median(times) * 1e3:8.2f} ms  {statistics.median(times) / product:5.2f}x "
              "the output product")


def timed(function: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions of each evaluation")
    parser.add_argument("--iw-images", type=int, default=200, help="test images of the importance-weighted estimate")
    parser.add_argument("--k", type=int, default=1000, help="draws per image of the importance-weighted estimate")
    parser.add_argument("--pieces", action="store_true", help="only the pieces of one chunk of the estimate")
    args = parse_bench_args(parser)
    device = torch.device("cpu")
    config = VAEConfig(data=local_data(args), device="cpu")
    protocol = load_protocol("hw", load_raw(config.data))
    train_images, test_images = protocol.train_images, protocol.eval_images  # (10000, 784) binary each
    order = seed_everything(config.seed)
    model = build_model(config, device)
    optimizer = make_optimizer(model, config)
    noise = torch.Generator(device).manual_seed(stream_seed(config.seed, NOISE_STREAM))
    choice = choose_vae_accelerator(model, optimizer, config, device)
    engine = vae_engine([Replica({"model": model}, {"model": optimizer})], config, device, choice, say=print)
    steps = num_batches(len(train_images), config.batch_size, drop_last=False)
    analytic_kl = config.objective == "analytic"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s), trained by {engine.name}; load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    if args.pieces:
        chunk_pieces(model, test_images[:IW_IMAGES_PER_GROUP], args.repeat)
        return

    def epoch() -> None:
        orders = [epoch_order(len(train_images), config.batch_size, order, device)]
        take_steps(engine, 0, steps, step_inputs(train_images, orders, [noise], config.batch_size, config.latent_dim,
                                                 None, False), torch.zeros(1, steps))

    def evaluations(seed: int) -> dict[str, Callable[[], torch.Tensor]]:
        def draws() -> torch.Generator:
            return torch.Generator().manual_seed(stream_seed(config.seed, EVAL_STREAM, seed))

        return {"old": lambda: elbo_samples(model, test_images, 1, analytic_kl, draws())[0],
                "new": lambda: held_out_elbo(engine, 0, model, test_images, analytic_kl, draws())}

    epoch()  # warm-up: an epoch and both evaluations, untimed
    for evaluate in evaluations(0).values():
        evaluate()
    seconds: dict[str, list[float]] = {"train": [], "old": [], "new": []}
    for repetition in range(args.repeat):
        seconds["train"].append(timed(epoch)[0])
        values = {}
        named = list(evaluations(repetition).items())
        for name, evaluate in named if repetition % 2 == 0 else reversed(named):
            duration, values[name] = timed(evaluate)
            seconds[name].append(duration)
        gap = float((values["new"].double() - values["old"].double()).abs().max())
        print(f"  epoch {repetition + 1}: training {seconds['train'][-1]:.3f} s, held-out ELBO old "
              f"{seconds['old'][-1]:.3f} s, new {seconds['new'][-1]:.3f} s (means {float(values['old'].mean()):.5f}, "
              f"{float(values['new'].mean()):.5f}; largest difference of an image {gap:.1e})", flush=True)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    ratio = statistics.median(new / old for new, old in zip(seconds["new"], seconds["old"], strict=True))
    share = {name: median[name] / (median["train"] + median[name]) for name in ("old", "new")}
    print(f"\nheld-out ELBO of {len(test_images):,} images, median of {args.repeat}: training epoch "
          f"{median['train']:.3f} s; evaluation old {median['old']:.3f} s ({share['old']:.0%} of the epoch), new "
          f"{median['new']:.3f} s ({share['new']:.0%} of the epoch); new/old {ratio:.3f}", flush=True)

    images, k = test_images[:args.iw_images], args.k
    model.eval()
    estimators = {"old": old_iw_log_likelihood, "new": iw_log_likelihood}
    iw_seconds: dict[str, list[float]] = {name: [] for name in estimators}
    for repetition in range(args.repeat):
        values = {}
        named = list(estimators.items())
        for name, estimate in named if repetition % 2 == 0 else reversed(named):
            draws = torch.Generator().manual_seed(repetition)
            duration, values[name] = timed(lambda estimate=estimate, draws=draws: estimate(model, images, k, draws))
            iw_seconds[name].append(duration)
        gap = float((values["new"] - values["old"]).abs().max())
        print(f"  importance-weighted {repetition + 1}: old {iw_seconds['old'][-1]:.2f} s, new "
              f"{iw_seconds['new'][-1]:.2f} s (means {float(values['old'].mean()):.4f}, "
              f"{float(values['new'].mean()):.4f}; largest difference of an image {gap:.1e})", flush=True)
    hidden, latent = config.hidden, config.latent_dim
    products = 2.0 * len(images) * k * (latent * hidden + hidden * IMAGE_PIXELS)  # the decoder's, per estimate
    median = {name: statistics.median(times) for name, times in iw_seconds.items()}
    ratio = statistics.median(new / old for new, old in zip(iw_seconds["new"], iw_seconds["old"], strict=True))
    print(f"\nimportance-weighted estimate, {len(images)} images x K = {k}, median of {args.repeat}: old "
          f"{median['old']:.2f} s, new {median['new']:.2f} s; new/old {ratio:.3f}")
    for name, value in median.items():
        full = value * FULL_TEST_SET / len(images) * FULL_DRAWS / k
        print(f"  {name}: {products / value / 1e9:.1f} GFLOP/s of products; {FULL_TEST_SET:,} images x K = "
              f"{FULL_DRAWS:,} would take {full / 60:.1f} min")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
