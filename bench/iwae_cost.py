"""What the importance-weighted objective costs: seconds per hw epoch of `--objective iwae --train-samples K`
against SPEC's default (Eq. 2, one draw per image), measured in the same run.

Every loop is the steps of mnistgen's loop (its step inputs, its engine, `take_steps`) on the 10,000 binary images
of the hw protocol, from the same initial weights: the default with the accelerator `--cpu-kernels auto` chooses
here ("default, auto"), the default on the reference step (autograd through the model's forward), and iwae with
each K (always the reference step: the accelerators step aside for it). Each repetition times one epoch of each
loop, in turn, after one untimed warm-up epoch each; the medians and their ratios to both defaults are printed.

    python bench/iwae_cost.py --data-dir ../shared/data/mnist --samples 1,5,50 --repeat 3 --threads 1
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from bench_args import bench_parser, local_data, parse_bench_args

from mnistgen.accelerate.engines import Replica
from mnistgen.accelerate.vae import choose_vae_accelerator, vae_engine
from mnistgen.config import VAEConfig
from mnistgen.data.batches import epoch_order, num_batches
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.device import seed_everything, stream_seed
from mnistgen.models.vae import build_model, draws_per_image, make_optimizer
from mnistgen.train.common import take_steps
from mnistgen.train.vae import NOISE_STREAM, step_inputs


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--samples", default="1,5,50", help="comma-separated K of the iwae loops")
    parser.add_argument("--repeat", type=int, default=3, help="timed epochs of each loop")
    args = parse_bench_args(parser)
    device = torch.device("cpu")
    default = VAEConfig(data=local_data(args), device="cpu")
    images = load_protocol("hw", load_raw(default.data)).train_images.to(device)  # (10000, 784) binary
    seed_everything(default.seed)
    initial = build_model(default, device).state_dict()  # the weights every loop starts from

    def loop(config: VAEConfig) -> tuple[Callable[[], float], str]:
        """An epoch function of mnistgen's loop under ``config`` from ``initial``, and what trains it."""
        order = seed_everything(config.seed)
        model = build_model(config, device)
        model.load_state_dict(initial)
        optimizer = make_optimizer(model, config)
        noise = torch.Generator(device).manual_seed(stream_seed(config.seed, NOISE_STREAM))
        choice = choose_vae_accelerator(model, optimizer, config, device)
        engine = vae_engine([Replica({"model": model}, {"model": optimizer})], config, device, choice, say=print)
        steps = num_batches(len(images), config.batch_size, drop_last=False)

        def epoch() -> float:
            orders = [epoch_order(len(images), config.batch_size, order, device)]
            step_elbos = torch.zeros(1, steps, device=device)
            take_steps(engine, 0, steps, step_inputs(images, orders, [noise], config.batch_size, config.latent_dim,
                                                     draws_per_image(config), False), step_elbos)
            return float(step_elbos.sum()) / len(images)

        return epoch, engine.name

    loops: dict[str, Callable[[], float]] = {}
    auto, auto_name = loop(default)
    loops[f"default, auto ({auto_name})"] = auto
    loops["default, reference"] = loop(dataclasses.replace(default, cpu_kernels="reference"))[0]
    for k in (int(text) for text in args.samples.split(",")):
        loops[f"iwae K={k}"] = loop(dataclasses.replace(default, objective="iwae", train_samples=k))[0]
    names = list(loops)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s); load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for epoch in loops.values():  # one untimed warm-up epoch each
        epoch()
    wall: dict[str, list[float]] = {name: [] for name in names}
    value: dict[str, float] = {}
    for repetition in range(args.repeat):
        for name, epoch in loops.items():
            started = time.perf_counter()
            value[name] = epoch()
            wall[name].append(time.perf_counter() - started)
        print(f"  repetition {repetition + 1}: " + ", ".join(f"{name} {wall[name][-1]:.2f} s" for name in names),
              flush=True)
    medians = {name: statistics.median(times) for name, times in wall.items()}
    base_auto, base_reference = medians[names[0]], medians[names[1]]
    print(f"\none hw epoch (10,000 images, batch {default.batch_size}), median of {args.repeat} (wall clock):")
    print(f"{'loop':28s} {'s/epoch':>8s} {'x default auto':>15s} {'x default reference':>20s} {'train value':>12s}")
    for name in names:
        print(f"{name:28s} {medians[name]:8.2f} {medians[name] / base_auto:14.2f}x "
              f"{medians[name] / base_reference:19.2f}x {value[name]:12.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
