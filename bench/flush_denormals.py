"""What `--flush-denormals` gains: seconds per epoch of `--objective iwae --train-samples K` with IEEE
arithmetic against the same epoch with subnormal floats flushed to zero, measured in the same run.

The importance weights of a trained model underflow into subnormals (most draws of an image weigh next to
nothing), and subnormal operands slow the CPU's matrix products. An untrained model has none, so the script
first trains `--warm-epochs` epochs of `--protocol` (untimed), then times epochs from that one state: each
repetition restores the same weights, Adam moments, batch order and draws, and runs one epoch with IEEE arithmetic
and one with flushing, in turn, on one CPU thread. An epoch is the steps of mnistgen's loop (its step inputs, its
engine, `take_steps`) on the reference step, the one iwae trains with. It prints the share of subnormal normalized
weights at that state, the medians, their ratio, and each loop's training value (the two differ by float rounding
only).

    python bench/flush_denormals.py --data-dir ../shared/data/mnist --warm-epochs 100 --repeat 5
    python bench/flush_denormals.py --data-dir ../shared/data/mnist --protocol full --warm-epochs 8 --repeat 5
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from bench_args import bench_parser, local_data, parse_bench_args

from mnistgen.accelerate import Choice
from mnistgen.accelerate.engines import Replica
from mnistgen.accelerate.vae import vae_engine
from mnistgen.config import VAEConfig
from mnistgen.data.batches import epoch_order, num_batches
from mnistgen.data.protocols import binarize_batch, load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.device import seed_everything, stream_seed
from mnistgen.losses import standard_normal_draws, vae_elbo
from mnistgen.models.vae import build_model, draws_per_image, make_optimizer
from mnistgen.train.common import flushed_denormals, take_steps
from mnistgen.train.vae import NOISE_STREAM, step_inputs


def main() -> None:
    parser = bench_parser(__doc__, threads=False)
    parser.add_argument("--samples", type=int, default=5, help="K, draws per image of the iwae objective")
    parser.add_argument("--protocol", choices=("hw", "full"), default="hw",
                        help="hw: 10,000 binary images; full: 50,000 images binarized anew at each use")
    parser.add_argument("--warm-epochs", type=int, default=30, help="untimed epochs before the timed ones")
    parser.add_argument("--repeat", type=int, default=5, help="timed epochs of each arithmetic")
    args = parse_bench_args(parser)
    config = VAEConfig(data=local_data(args), device="cpu", objective="iwae",
                       train_samples=args.samples, protocol=args.protocol)
    protocol = load_protocol(config.protocol, load_raw(config.data), config.validation_size)
    images = protocol.train_images.to(torch.float32)  # (N, 784): binary (hw) or gray levels binarized per use (full)
    torch.set_num_threads(1)  # one thread: the threads torch starts while flushing would keep flushing after it
    device = torch.device("cpu")
    order = seed_everything(config.seed)
    model = build_model(config, device)
    optimizer = make_optimizer(model, config)
    noise = torch.Generator().manual_seed(stream_seed(config.seed, NOISE_STREAM))
    steps = num_batches(len(images), config.batch_size, drop_last=False)

    def epoch_of(model, optimizer) -> Callable[[], float]:
        """An epoch function of mnistgen's loop for this model and optimizer (the reference step), drawing the batch
        order and the draws from ``order`` and ``noise``."""
        engine = vae_engine([Replica({"model": model}, {"model": optimizer})], config, device, Choice(None, ()),
                            say=print)

        def epoch() -> float:
            orders = [epoch_order(len(images), config.batch_size, order, device)]
            step_elbos = torch.zeros(1, steps)
            take_steps(engine, 0, steps, step_inputs(images, orders, [noise], config.batch_size, config.latent_dim,
                                                     draws_per_image(config), protocol.dynamic_binarization),
                       step_elbos)
            return float(step_elbos.sum()) / len(images)

        return epoch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s); load average {os.getloadavg()[0]:.1f} at start", flush=True)
    warm_epoch = epoch_of(model, optimizer)
    started = time.perf_counter()
    with flushed_denormals(True, print):
        for _ in range(args.warm_epochs):
            value = warm_epoch()
    print(f"warm-up: {args.warm_epochs} {args.protocol} epochs of iwae K={args.samples} in "
          f"{time.perf_counter() - started:.0f} s, training value {value:.2f}", flush=True)

    with torch.no_grad():  # the normalized importance weights of 1,000 training images at this state
        x = binarize_batch(images[:1000], torch.Generator().manual_seed(1)) if protocol.dynamic_binarization \
            else images[:1000]  # (1000, 784) binary
        draws = standard_normal_draws(len(x), config.latent_dim, torch.Generator().manual_seed(0), x,
                                      samples=args.samples)  # (K, 1000, D_z)
        log_weights = torch.stack([vae_elbo(model, x, eps) for eps in draws])  # (K, 1000): Eq. 2's integrand
        weights = torch.softmax(log_weights, dim=0)
    tiny = torch.finfo(torch.float32).tiny
    print(f"normalized weights: {float(((weights > 0) & (weights < tiny)).float().mean()):.1%} subnormal, "
          f"{float((weights == 0).float().mean()):.1%} zero", flush=True)

    state = (model, optimizer, order.get_state(), noise.get_state())
    wall: dict[str, list[float]] = {"IEEE": [], "flushed": []}
    value_of: dict[str, float] = {}
    for repetition in range(args.repeat):
        for name in wall:
            model = copy.deepcopy(state[0])
            optimizer = make_optimizer(model, config)
            optimizer.load_state_dict(copy.deepcopy(state[1].state_dict()))  # its tensors would be shared
            order.set_state(state[2])
            noise.set_state(state[3])
            epoch = epoch_of(model, optimizer)
            with flushed_denormals(name == "flushed", print):
                started = time.perf_counter()
                value_of[name] = epoch()
                wall[name].append(time.perf_counter() - started)
        print(f"  repetition {repetition + 1}: " + ", ".join(f"{name} {wall[name][-1]:.2f} s" for name in wall),
              flush=True)
    medians = {name: statistics.median(times) for name, times in wall.items()}
    print(f"\none {args.protocol} epoch of iwae K={args.samples} ({len(images):,} images, batch {config.batch_size}) "
          f"after {args.warm_epochs} epochs, median of {args.repeat} (wall clock):")
    print(f"{'arithmetic':10s} {'s/epoch':>8s} {'x IEEE':>8s} {'train value':>12s}")
    for name in wall:
        print(f"{name:10s} {medians[name]:8.2f} {medians[name] / medians['IEEE']:7.2f}x {value_of[name]:12.4f}")
    print(f"speed-up from flushing: {medians['IEEE'] / medians['flushed']:.2f}x; "
          f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
