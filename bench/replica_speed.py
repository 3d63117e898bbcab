"""How fast N seeds train as replicas in one process, against N separate runs one after another, same process.

For the VAE (hw protocol: 10,000 images, 100 steps of 100 an epoch) and the GAN (the first ``--gan-images`` of the
60,000 training images, batch 256), each repetition times, in turn:

- ``separate``: N single-seed runs of ``train_vae``/``train_gan`` one after another, each with the fastest
  single-run path (``--cpu-kernels auto``): the baseline;
- ``replicas``: one run with ``--replicas N`` and ``--cpu-kernels auto`` (on the CPU with an accelerator: the
  replicas stepped one by one; elsewhere batched);
- ``batched``: one run with ``--replicas N`` and ``--cpu-kernels reference`` (vmap over the reference path).

What is compared is the training time of an epoch (the metrics' ``train_seconds`` for the VAE, ``seconds`` for
the GAN: the steps, not the per-epoch evaluation and checkpoint), summed over the N seeds for ``separate``; medians
over the repetitions, and each one's ratio to ``separate`` (below 1: faster than the seeds one after another).
Also the time of one single-seed run alone (``one``), for the GPU goal: N replicas in at most 1.5x one.

    python bench/replica_speed.py --data-dir ../shared/data/mnist --replicas 4 --repeat 3
    python bench/replica_speed.py --device cuda --replicas 8 --gan-images 60000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mnistgen.config import DataConfig, GANConfig, VAEConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.runs import RunDir
from mnistgen.train.gan import train_gan
from mnistgen.train.vae import train_vae


def epoch_seconds(histories, key: str) -> float:
    """The training seconds of the last epoch, summed over the runs' histories."""
    return sum(history[-1][key] for history in histories)


def time_vae(kind: str, replicas: int, epochs: int, device: str, threads: int, protocol, folder: Path) -> float:
    base = VAEConfig(epochs=epochs, device=device, threads=threads, data=DataConfig(offline=True))
    if kind in ("separate", "one"):
        runs = range(replicas if kind == "separate" else 1)
        histories = [train_vae(VAEConfig(**{**base.__dict__, "seed": base.seed + k}), RunDir(folder / f"{kind}{k}"),
                               protocol=protocol, show_progress=False) for k in runs]
    else:
        config = VAEConfig(**{**base.__dict__, "replicas": replicas,
                              "cpu_kernels": "reference" if kind == "batched" else "auto"})
        histories = list(train_vae(config, RunDir(folder / kind), protocol=protocol, show_progress=False).values())
        histories = histories[:1]  # one shared clock: every replica records the same training seconds
    return epoch_seconds(histories, "train_seconds")


def time_gan(kind: str, replicas: int, epochs: int, device: str, threads: int, images, folder: Path) -> float:
    base = GANConfig(epochs=epochs, device=device, threads=threads, grid_every=epochs, data=DataConfig(offline=True))
    if kind in ("separate", "one"):
        runs = range(replicas if kind == "separate" else 1)
        histories = [train_gan(GANConfig(**{**base.__dict__, "seed": base.seed + k}), images,
                               RunDir(folder / f"{kind}{k}"), show_progress=False) for k in runs]
    else:
        config = GANConfig(**{**base.__dict__, "replicas": replicas,
                              "cpu_kernels": "reference" if kind == "batched" else "auto"})
        histories = list(train_gan(config, images, RunDir(folder / kind), show_progress=False).values())[:1]
    return epoch_seconds(histories, "seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNISTGEN_DATA_DIR"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--replicas", type=int, default=4, help="N, the seeds")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each timing (medians)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is timed")
    parser.add_argument("--gan-images", type=int, default=12800, help="GAN training images (50 steps of 256)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--models", default="vae,gan")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    raw = load_raw(DataConfig(data_dir=args.data_dir, offline=True))
    vae_protocol = load_protocol("hw", raw)
    gan_images = load_protocol("gan", raw).train_images[:args.gan_images].clone()
    kinds = ("one", "separate", "replicas", "batched")
    results: dict[str, dict[str, list[float]]] = {}
    for model in args.models.split(","):
        results[model] = {kind: [] for kind in kinds}
        for repetition in range(args.repeat):
            order = kinds if repetition % 2 == 0 else kinds[::-1]
            for kind in order:
                with tempfile.TemporaryDirectory() as folder:
                    if model == "vae":
                        seconds = time_vae(kind, args.replicas, args.epochs, args.device, args.threads,
                                           vae_protocol, Path(folder))
                    else:
                        seconds = time_gan(kind, args.replicas, args.epochs, args.device, args.threads,
                                           gan_images, Path(folder))
                results[model][kind].append(seconds)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if args.device == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    print(f"# replica_speed: N = {args.replicas}, device {args.device}, {machine}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("model | one seed, s/epoch | N separate, s/epoch | N replicas (auto) | N replicas (batched) | "
          "auto / separate | batched / separate | batched / one")
    summary = {}
    for model, timings in results.items():
        median = {kind: statistics.median(values) for kind, values in timings.items()}
        summary[model] = median
        print(f"{model} | {median['one']:.3f} | {median['separate']:.3f} | {median['replicas']:.3f} | "
              f"{median['batched']:.3f} | {median['replicas'] / median['separate']:.2f}x | "
              f"{median['batched'] / median['separate']:.2f}x | {median['batched'] / median['one']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": machine, "raw": results,
                                               "median": summary, "time": time.time()}, indent=1))


if __name__ == "__main__":
    main()
