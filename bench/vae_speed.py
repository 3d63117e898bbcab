"""How fast mnistgen trains the VAE: one hw-protocol epoch of mnistgen's loop against a plain PyTorch loop.

The loops train the same model from the same weights on the same 10,000 binary images with the same
random draws: the plain loop (bench/vae_baseline.py), and the steps of mnistgen's loop (its step inputs, its
engine, `take_steps`) on the reference step (autograd through the model's forward), with the hand-derived
gradient ("torch") and, where the accelerator that `--cpu-kernels` chooses is the C kernels, with those.
tests/test_vae_speed.py shows that they follow the same loss trajectory. Each repetition times one epoch of each
loop, in turn; the medians and their ratios to the plain loop are printed, as wall-clock and as CPU time
of this process.

    python bench/vae_speed.py --data-dir ../shared/data/mnist --repeat 7 [--threads 1] [--cpu-kernels torch]
"""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_args import bench_parser, local_data, parse_bench_args

from mnistgen.accelerate import Accelerator, Choice
from mnistgen.accelerate.engines import Replica
from mnistgen.accelerate.vae import NATIVE, TORCH, choose_vae_accelerator, vae_engine
from mnistgen.config import VAEConfig
from mnistgen.data.batches import epoch_order, num_batches
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.device import seed_everything, stream_seed
from mnistgen.models.vae import build_model, make_optimizer
from mnistgen.train.common import take_steps
from mnistgen.train.vae import NOISE_STREAM, step_inputs

HERE = Path(__file__).resolve().parent


def load_baseline():
    spec = importlib.util.spec_from_file_location("vae_baseline", HERE / "vae_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=7, help="timed epochs of each loop")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="where both loops run")
    parser.add_argument("--cpu-kernels", default="auto", choices=["auto", "native", "torch"],
                        help="mnistgen's kernels on CPU, as `mnistgen vae train --cpu-kernels` (default: auto)")
    args = parse_bench_args(parser)
    baseline = load_baseline()

    config = VAEConfig(data=local_data(args), device="cpu",
                       cpu_kernels=args.cpu_kernels)
    device = torch.device(args.device)
    images = load_protocol("hw", load_raw(config.data)).train_images.to(device)  # (10000, 784) binary

    def mnistgen_loop(accelerator: Accelerator | None, initial: dict) -> Callable[[], float]:
        """An epoch function of mnistgen's loop with this accelerator (None: the reference step), from the
        weights ``initial``."""
        order = seed_everything(config.seed)
        model = build_model(config, device)
        model.load_state_dict(initial)
        optimizer = make_optimizer(model, config)
        noise = torch.Generator(device).manual_seed(stream_seed(config.seed, NOISE_STREAM))
        engine = vae_engine([Replica({"model": model}, {"model": optimizer})], config, device,
                            Choice(accelerator, ()), say=print)
        steps = num_batches(len(images), config.batch_size, drop_last=False)

        def epoch() -> float:
            orders = [epoch_order(len(images), config.batch_size, order, device)]
            step_elbos = torch.zeros(1, steps, device=device)
            take_steps(engine, 0, steps, step_inputs(images, orders, [noise], config.batch_size, config.latent_dim,
                                                     None, False), step_elbos)
            return float(step_elbos.sum()) / len(images)

        return epoch

    seed_everything(config.seed)
    reference = build_model(config, device)  # the weights all loops start from (never trained itself)
    initial = reference.state_dict()
    plain = baseline.PlainVAE.copy_of(reference)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=config.lr)
    plain_order = torch.Generator().manual_seed(config.seed)
    plain_noise = torch.Generator(device).manual_seed(stream_seed(config.seed, NOISE_STREAM))

    def plain_epoch() -> float:
        losses = baseline.baseline_epoch(plain, plain_optimizer, images, plain_order, plain_noise,
                                         config.batch_size)
        return -statistics.fmean(losses)

    chosen = choose_vae_accelerator(reference, make_optimizer(reference, config), config, device).accelerator
    loops = {"plain PyTorch loop": plain_epoch, "mnistgen, reference": mnistgen_loop(None, initial),
             "mnistgen, torch": mnistgen_loop(TORCH, initial)}
    if chosen is NATIVE:
        loops["mnistgen, native"] = mnistgen_loop(NATIVE, initial)
    wall = {name: [] for name in loops}
    cpu = {name: [] for name in loops}
    elbo = {}
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else device.type
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} torch thread(s), loops on {where}; load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for loop in loops.values():  # one untimed warm-up epoch each
        loop()
    for repetition in range(args.repeat):
        for name, loop in loops.items():
            synchronize()
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            elbo[name] = loop()
            synchronize()
            wall[name].append(time.perf_counter() - wall_start)
            cpu[name].append(time.process_time() - cpu_start)
        print(f"  repetition {repetition + 1}: " + ", ".join(
            f"{name} {wall[name][-1]:.3f} s (ELBO {elbo[name]:.3f})" for name in loops), flush=True)

    base_wall, base_cpu = statistics.median(wall["plain PyTorch loop"]), statistics.median(cpu["plain PyTorch loop"])
    print(f"\none hw epoch (10,000 images, batch {config.batch_size}), median of {args.repeat}:")
    print(f"{'loop':26s} {'wall s':>8s} {'CPU s':>8s} {'speed-up (wall)':>16s} {'speed-up (CPU)':>15s}")
    for name in loops:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:26s} {w:8.3f} {c:8.3f} {base_wall / w:15.2f}x {base_cpu / c:14.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end; last epoch ELBOs: "
          + ", ".join(f"{k} {v:.3f}" for k, v in elbo.items()))


if __name__ == "__main__":
    sys.exit(main())
