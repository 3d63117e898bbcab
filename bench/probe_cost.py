"""What the accelerators' start-up checks cost: each check (structure, then the numerical probe) of the spec's
models, and the stacked engine's probe (one step of two replicas, stacked and one after another, in float64),
against one training step of the accelerated path measured in the same run.

Each check runs once untimed (the C libraries are built or loaded then), then ``--repeat`` times; the
medians are printed in milliseconds and as a number of training steps.

    python bench/probe_cost.py --repeat 9
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from bench_args import bench_parser, parse_bench_args

from mnistgen.accelerate.engines import Replica, check_stacked
from mnistgen.accelerate.gan import DISCRIMINATOR_ACCELERATORS, GENERATOR_ACCELERATORS, choose_gan_calls
from mnistgen.accelerate.vae import ACCELERATORS as VAE_ACCELERATORS
from mnistgen.config import GANConfig, VAEConfig
from mnistgen.device import seed_everything
from mnistgen.distributions import sample_uniform_noise
from mnistgen.models import gan as gan_model
from mnistgen.models import vae as vae_model


def median_ms(function: Callable[[], object], repeat: int) -> float:
    function()  # untimed: builds or loads the C library, warms the allocator
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = bench_parser(__doc__, data=False)
    parser.add_argument("--repeat", type=int, default=9, help="timed runs of each check and step")
    args = parse_bench_args(parser)
    cpu = torch.device("cpu")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    vae_config = VAEConfig(device="cpu")
    seed_everything(vae_config.seed)
    model = vae_model.build_model(vae_config, cpu)
    step = VAE_ACCELERATORS[0].implementation(model, vae_model.make_optimizer(model, vae_config), vae_config)
    x = (torch.rand(vae_config.batch_size, 784) < 0.13).float()
    eps = torch.randn(vae_config.batch_size, vae_config.latent_dim)
    vae_step = median_ms(lambda: step.step(x, eps), args.repeat)
    print(f"VAE: one training step with the C kernels (batch {vae_config.batch_size}): {vae_step:.2f} ms")
    for accelerator in VAE_ACCELERATORS:
        cost = median_ms(lambda a=accelerator: a.check(model, vae_config, cpu), args.repeat)
        print(f"  check of {accelerator.name:6s}: {cost:7.2f} ms = {cost / vae_step:5.1f} steps")

    gan_config = GANConfig(device="cpu")
    seed_everything(gan_config.seed)
    generator, discriminator = gan_model.build_models(gan_config, cpu)
    optimizer_g, optimizer_d = gan_model.make_optimizers(generator, discriminator, gan_config)
    chosen = choose_gan_calls(generator, discriminator, optimizer_g, optimizer_d, gan_config, cpu)
    chosen.prepare(generator, discriminator, cpu)  # before the optimizers hold any state, as the loop does
    real = torch.rand(gan_config.batch_size, 1, 28, 28)
    z = sample_uniform_noise(gan_config.batch_size, gan_config.zdim, torch.Generator().manual_seed(0))
    gan_step = median_ms(lambda: gan_model.train_step(generator, discriminator, optimizer_g, optimizer_d, real, z,
                                                      chosen.calls), args.repeat)
    print(f"GAN: one training step ({chosen.name}, batch {gan_config.batch_size}): {gan_step:.2f} ms")
    for network, module, accelerators in (("G", generator, GENERATOR_ACCELERATORS),
                                          ("D", discriminator, DISCRIMINATOR_ACCELERATORS)):
        for accelerator in accelerators:
            cost = median_ms(lambda a=accelerator, m=module: a.check(m, gan_config, cpu), args.repeat)
            print(f"  check of {network} {accelerator.name:6s}: {cost:7.2f} ms = {cost / gan_step:5.1f} steps")

    vae_replicas, gan_replicas = [], []
    for seed in (1, 2):
        seed_everything(seed)
        model = vae_model.build_model(vae_config, cpu)
        vae_replicas.append(Replica({"model": model}, {"model": vae_model.make_optimizer(model, vae_config)}))
        g, d = gan_model.build_models(gan_config, cpu)
        gan_replicas.append(Replica({"generator": g, "discriminator": d},
                                    dict(zip(("generator", "discriminator"),
                                             gan_model.make_optimizers(g, d, gan_config), strict=True))))

    def vae_bind(replica: Replica) -> Callable:
        return lambda x, eps: vae_model.train_step(replica.modules["model"], replica.optimizers["model"], x, eps)

    def gan_bind(replica: Replica) -> Callable:
        return lambda real, z: gan_model.train_step(*replica.modules.values(), *replica.optimizers.values(), real, z)

    for name, replicas, bind, inputs, step in (
            ("VAE", vae_replicas, vae_bind, [(x[:8], eps[:8])] * 2, vae_step),
            ("GAN", gan_replicas, gan_bind, [(real[:8], z[:8])] * 2, gan_step)):
        cost = median_ms(lambda r=replicas, b=bind, i=inputs: check_stacked(r, b, i), args.repeat)
        print(f"{name}: the stacked engine's probe: {cost:7.2f} ms = {cost / step:5.1f} steps")


if __name__ == "__main__":
    main()
