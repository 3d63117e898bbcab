"""How fast mnistgen trains the GAN: mnistgen's training loop against the classic loop, same process.

The loops train SPEC §3's networks from the same weights on the 60,000 MNIST training images (batch
256); bench/gan_baseline.py is the classic loop (a DataLoader with shuffle=True, G(z) once for D's step
and again for G's step), tests/test_gan_speed.py shows they take the same steps. mnistgen's loop runs
twice: on its reference path (the modules' own calls) and with the accelerators that ``mnistgen gan train``
would choose (``--cpu-kernels``, default auto: its C kernels for D and G where a C compiler works; ``torch``
for PyTorch-only ones). Each repetition times each loop once, alternating the order; the medians and their
ratios to the classic loop are printed, as wall-clock time and as CPU time of this process.

A whole epoch (234 batches) of the classic loop takes about a minute on 2 CPU cores, so by default
each repetition times the first ``--batches`` batches of an epoch and the per-epoch figures are
extrapolated (x 234 / batches); ``--batches 0`` times whole epochs.

The C library's allocator: ``mnistgen gan train`` tunes its own process so that freed tensors' memory is
reused instead of page-faulted back every step (:func:`mnistgen.train.common.keep_freed_memory`).
``--tune-allocator`` does the same in this process (then both loops profit: the same-process ratio);
``--classic-in-subprocess`` times the classic loop instead in a fresh Python process per repetition
that does not tune it (what a user of the classic loop gets), alternating with mnistgen's timings here.

``--compare-avx2`` times the accelerated loop a second time, with the C kernels built for AVX2 (as
``MNISTGEN_NO_AVX512`` has them) where they would be built for AVX-512, in the same rotation.

    nice -n 10 python bench/gan_speed.py --data-dir ../shared/data/mnist --batches 20 --repeat 5
    nice -n 10 python bench/gan_speed.py --data-dir ../shared/data/mnist --threads 1 --tune-allocator \
        --classic-in-subprocess
    nice -n 10 python bench/gan_speed.py --data-dir ../shared/data/mnist --threads 1 --tune-allocator --compare-avx2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_args import bench_parser, local_data, parse_bench_args

from mnistgen.accelerate.engines import Replica
from mnistgen.accelerate.gan import choose_gan_calls, gan_engine
from mnistgen.config import GANConfig
from mnistgen.data.batches import epoch_order, num_batches
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.device import seed_everything, stream_seed
from mnistgen.kernels.native import NO_AVX512, instruction_set
from mnistgen.models.gan import STATS, Discriminator, Generator, build_models, make_optimizers
from mnistgen.train.common import keep_freed_memory, take_steps
from mnistgen.train.gan import NOISE_STREAM, step_inputs

HERE = Path(__file__).resolve().parent


def load_baseline():
    spec = importlib.util.spec_from_file_location("gan_baseline", HERE / "gan_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def minor_page_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(function) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, minor page faults of this process) of one call."""
    faults, wall, cpu = minor_page_faults(), time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu, minor_page_faults() - faults


@contextlib.contextmanager
def avx2_kernels():
    """Inside: the C kernels built for AVX2 whatever the processor has (``MNISTGEN_NO_AVX512``)."""
    before = os.environ.get(NO_AVX512)
    os.environ[NO_AVX512] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[NO_AVX512]
        else:
            os.environ[NO_AVX512] = before


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--batches", type=int, default=20,
                        help="batches timed per repetition, extrapolated to an epoch (0: whole epochs)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of each loop")
    parser.add_argument("--tune-allocator", action="store_true",
                        help="keep freed memory in this process, as `mnistgen gan train` does")
    parser.add_argument("--classic-in-subprocess", action="store_true",
                        help="time the classic loop in a fresh, untuned Python process per repetition")
    parser.add_argument("--cpu-kernels", choices=("auto", "native", "torch"), default="auto",
                        help="mnistgen's accelerators: its C kernels or PyTorch-only ones (as `mnistgen gan train`)")
    parser.add_argument("--compare-avx2", action="store_true",
                        help="also time the accelerated loop with the C kernels built for AVX2")
    parser.add_argument("--only-classic-json", action="store_true",
                        help=argparse.SUPPRESS)  # the subprocess: one timed classic run, printed as JSON
    args = parse_bench_args(parser)
    allocator_tuned = keep_freed_memory() if args.tune_allocator else False
    baseline = load_baseline()

    config = GANConfig(data=local_data(args), device="cpu",
                       cpu_kernels=args.cpu_kernels)
    images = load_protocol("gan", load_raw(config.data)).train_images  # (60000, 1, 28, 28) in [0, 1]
    device = torch.device("cpu")
    per_epoch = num_batches(len(images), config.batch_size, drop_last=True)
    batches_timed = args.batches if 0 < args.batches < per_epoch else per_epoch

    seed_everything(config.seed)
    initial = build_models(config, device)  # the weights every loop starts from (never trained itself)

    def mnistgen_loop(accelerated: bool):
        """An epoch function of mnistgen's loop (reference path, or with the accelerators) and its step's name."""
        order = torch.Generator().manual_seed(config.seed)
        generator, discriminator = Generator(config.zdim), Discriminator()
        generator.load_state_dict(initial[0].state_dict())
        discriminator.load_state_dict(initial[1].state_dict())
        loop_config = config if accelerated else dataclasses.replace(config, cpu_kernels="reference")
        optimizer_g, optimizer_d = make_optimizers(generator, discriminator, config)
        chosen = choose_gan_calls(generator, discriminator, optimizer_g, optimizer_d, loop_config, device)
        chosen.prepare(generator, discriminator, device)
        noise = torch.Generator().manual_seed(stream_seed(config.seed, NOISE_STREAM))
        engine = gan_engine([Replica({"generator": generator, "discriminator": discriminator},
                                     {"generator": optimizer_g, "discriminator": optimizer_d})],
                            loop_config, device, chosen, say=print)

        def run() -> None:
            orders = [epoch_order(len(images), config.batch_size, order, device, drop_last=True)]
            step_stats = torch.zeros(1, batches_timed, len(STATS))
            take_steps(engine, 0, batches_timed, step_inputs(images, orders, [noise], config.batch_size, config.zdim,
                                                             torch.float32), step_stats)
            step_stats.tolist()  # what the loop does at the end of an epoch

        return run, engine.name

    generator, discriminator = initial
    plain_generator, plain_discriminator = Generator(config.zdim), Discriminator()  # PyTorch's default layout
    plain_generator.load_state_dict(generator.state_dict())
    plain_discriminator.load_state_dict(discriminator.state_dict())
    plain_optimizer_g = torch.optim.Adam(plain_generator.parameters(), lr=config.lr_g)
    plain_optimizer_d = torch.optim.Adam(plain_discriminator.parameters(), lr=config.lr_d)
    plain_order = torch.Generator().manual_seed(config.seed)
    plain_noise = torch.Generator().manual_seed(stream_seed(config.seed, NOISE_STREAM))
    loader = baseline.make_loader(images, config.batch_size, plain_order)

    def classic_run() -> None:
        baseline.baseline_epoch(plain_generator, plain_discriminator, plain_optimizer_g, plain_optimizer_d,
                                loader, plain_noise, config.zdim, max_batches=batches_timed)

    if args.only_classic_json:
        classic_run()  # warm-up: oneDNN primitives, allocator
        print(json.dumps(timed(classic_run)))
        return

    def classic_subprocess() -> None:
        command = [sys.executable, __file__, "--data-dir", args.data_dir, "--batches", str(batches_timed),
                   "--threads", str(args.threads), "--only-classic-json"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        subprocess_times.append(tuple(json.loads(output.strip().splitlines()[-1])))

    subprocess_times: list[tuple[float, float, int]] = []
    reference_run, _ = mnistgen_loop(accelerated=False)
    accelerated_run, accelerated_name = mnistgen_loop(accelerated=True)
    loops = {"classic loop": classic_subprocess if args.classic_in_subprocess else classic_run,
             "mnistgen, reference": reference_run, "mnistgen, accelerated": accelerated_run}
    if args.compare_avx2:
        with avx2_kernels():
            avx2_run, _ = mnistgen_loop(accelerated=True)  # its start-up probe on the AVX2 kernels too

        def accelerated_avx2_run() -> None:
            with avx2_kernels():
                avx2_run()

        loops["mnistgen, accel., AVX2"] = accelerated_avx2_run
    for name, run in loops.items():  # warm-up: oneDNN primitives, allocator
        if name != "classic loop" or not args.classic_in_subprocess:
            run()
    times = {name: [] for name in loops}
    for repetition in range(args.repeat):
        names = list(loops) if repetition % 2 == 0 else list(reversed(loops))
        for name in names:
            if name == "classic loop" and args.classic_in_subprocess:
                loops[name]()
                times[name].append(subprocess_times[-1])
            else:
                times[name].append(timed(loops[name]))

    scale = per_epoch / batches_timed
    print(f"GAN training speed, {batches_timed} of {per_epoch} batches of {config.batch_size} per timing"
          + (f", extrapolated x{scale:.2f} to an epoch" if scale != 1 else "") + f"; {args.repeat} repetitions")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {datetime.date.today().isoformat()}")
    where = ("a fresh untuned subprocess per repetition" if args.classic_in_subprocess
             else "this process")
    print(f"mnistgen, accelerated: {accelerated_name}; C kernels for {instruction_set()}")
    print(f"allocator: mnistgen {'tuned (keep_freed_memory)' if allocator_tuned else 'glibc default'}; "
          f"classic loop in {where}, "
          + ("glibc default" if args.classic_in_subprocess or not allocator_tuned else "tuned (keep_freed_memory)"))
    medians = {}
    for name, samples in times.items():
        wall = statistics.median(s[0] for s in samples) * scale
        cpu = statistics.median(s[1] for s in samples) * scale
        medians[name] = (wall, cpu)
        faults = statistics.median(s[2] for s in samples) / batches_timed
        every = ", ".join(f"{s[0] * scale:.1f}" for s in samples)
        print(f"  {name:21s} epoch: median {wall:7.1f} s wall, {cpu:7.1f} s CPU, {faults:7.0f} page faults per batch"
              f"   (wall per repetition: {every})")
    base_wall, base_cpu = medians["classic loop"]
    for name in list(loops)[1:]:
        ours_wall, ours_cpu = medians[name]
        print(f"speed-up of {name} over the classic loop: {base_wall / ours_wall:.2f}x wall-clock, "
              f"{base_cpu / ours_cpu:.2f}x CPU time")


if __name__ == "__main__":
    main()
