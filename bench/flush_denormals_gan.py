"""What `gan train --flush-denormals` gains: seconds per GAN step with IEEE arithmetic against the same steps with
subnormal floats flushed to zero, from a trained run's state, measured in the same run.

Late in training many of G's background pixels are sigmoid outputs below float32's smallest normal number, and
D's convolutions and both backward passes slow down on them; an untrained G has none. So the script loads the
checkpoint of a trained GAN run (e.g. `mnistgen gan train --out RUN --epochs 30`), and times `--steps` steps of
its config (batch size, optimizers) from that one state: each repetition restores the same weights, Adam moments,
images and draws, and runs the steps with IEEE arithmetic and with flushing, in turn, on one CPU thread, for the
accelerated calls that `--cpu-kernels auto` chooses and for the reference path. It prints the share of subnormal
pixels in G's images, the medians, their ratios, and the last step's values of each (equal to float rounding).

    python bench/flush_denormals_gan.py RUN --data-dir ../shared/data/mnist --steps 50 --repeat 5
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_args import bench_parser, parse_bench_args

from mnistgen.accelerate.gan import choose_gan_calls
from mnistgen.config import GANConfig, from_dict
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.distributions import sample_uniform_noise
from mnistgen.models.gan import REFERENCE, build_models, make_optimizers, train_step
from mnistgen.runs import load_checkpoint
from mnistgen.train.common import flushed_denormals


def main() -> None:
    parser = bench_parser(__doc__, threads=False)
    parser.add_argument("run", type=Path, help="a trained GAN run folder (its checkpoint.pt)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps of each loop per repetition")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions")
    args = parse_bench_args(parser)
    torch.set_num_threads(1)  # one thread: the threads torch starts while flushing would keep flushing after it
    device = torch.device("cpu")
    checkpoint = load_checkpoint(args.run / "checkpoint.pt")
    config = from_dict(GANConfig, checkpoint["config"])
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=args.data_dir, offline=True),
                                 device="cpu", threads=1)
    images = load_protocol("gan", load_raw(config.data)).train_images  # (60000, 1, 28, 28) in [0, 1]
    noise = torch.Generator().manual_seed(0)
    batches = [images[i * config.batch_size:(i + 1) * config.batch_size] for i in range(args.steps)]
    draws = [sample_uniform_noise(config.batch_size, config.zdim, noise) for _ in range(args.steps)]

    def trained_state():
        generator, discriminator = build_models(config, device)
        generator.load_state_dict(checkpoint["generator"])
        discriminator.load_state_dict(checkpoint["discriminator"])
        return generator, discriminator

    with torch.no_grad():
        pixels = trained_state()[0](draws[0])
    tiny = torch.finfo(torch.float32).tiny
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"1 torch thread; load average {os.getloadavg()[0]:.1f} at start")
    print(f"{args.run}: epoch {checkpoint['epoch']}, batch {config.batch_size}; G's pixels: "
          f"{float(((pixels > 0) & (pixels < tiny)).float().mean()):.2%} subnormal, "
          f"{float((pixels == 0).float().mean()):.1%} zero", flush=True)

    def steps(calls_of, flush: bool) -> tuple[float, list[float]]:
        generator, discriminator = trained_state()
        optimizer_g, optimizer_d = make_optimizers(generator, discriminator, config)
        # before the optimizers hold any state: an accelerator may change the weights' layout
        calls = calls_of(generator, discriminator, optimizer_g, optimizer_d)
        optimizer_g.load_state_dict(copy.deepcopy(checkpoint["optimizer_g"]))
        optimizer_d.load_state_dict(copy.deepcopy(checkpoint["optimizer_d"]))
        with flushed_denormals(flush, print):
            started = time.perf_counter()
            for real, z in zip(batches, draws, strict=True):  # no moving average of G (--ema-decay) is kept
                values = train_step(generator, discriminator, optimizer_g, optimizer_d, real, z, calls)
            return time.perf_counter() - started, values.tolist()

    def chosen_calls(generator, discriminator, optimizer_g, optimizer_d):
        chosen = choose_gan_calls(generator, discriminator, optimizer_g, optimizer_d, config, device,
                                  say=lambda line: None)
        chosen.prepare(generator, discriminator, device)
        return chosen.calls

    loops = {"auto": chosen_calls, "reference": lambda generator, discriminator, optimizer_g, optimizer_d: REFERENCE}
    wall = {(name, flush): [] for name in loops for flush in (False, True)}
    last = {}
    for repetition in range(args.repeat):
        for name, calls_of in loops.items():
            for flush in (False, True):
                seconds, last[name, flush] = steps(calls_of, flush)
                wall[name, flush].append(seconds)
        print(f"  repetition {repetition + 1}: " + ", ".join(
            f"{name} {'flushed' if flush else 'IEEE'} {times[-1]:.2f} s" for (name, flush), times in wall.items()),
            flush=True)
    print(f"\n{args.steps} steps, median of {args.repeat} (wall clock):")
    print(f"{'calls':10s} {'IEEE s':>8s} {'flushed s':>10s} {'speed-up':>9s}  last step's values (IEEE | flushed)")
    for name in loops:
        ieee, flushed = statistics.median(wall[name, False]), statistics.median(wall[name, True])
        print(f"{name:10s} {ieee:8.2f} {flushed:10.2f} {ieee / flushed:8.2f}x  "
              f"{[round(v, 5) for v in last[name, False]]} | {[round(v, 5) for v in last[name, True]]}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
