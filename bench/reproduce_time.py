"""The whole of `mnistgen reproduce`, stage by stage: each stage's wall and CPU time (from the stages.json of one or
more reproduction folders, for example after and before a change on the same machine) beside its floor.

A stage's floor is the matrix products its mathematics needs over this machine's best product speed, measured here
with as many threads as torch uses (``--threads``), on the product of ``bench/gemm_peak.py``, (1000 x 500) @
(500 x 784). The products are counted by ``torch.utils.flop_counter`` on mnistgen's own modules and steps (forward
and backward), less the sums that are exactly zero or repeated by construction, which the C kernels skip:

- the encoder's first product (and its weight's gradient) over the pixels that are 1 in the binary images (the
  share measured on the hw training images), not all 784;
- G's convolutions of an upsampled input in phase form: each output pixel of a 3x3 convolution of a nearest-
  upsampled input is a 2x2 convolution of the input, 4 products where 9 are written.

Counted, from the folder's config.json:

- vae-train: per epoch, the training steps over the hw training images, then the held-out ELBO of the test images
  (one forward each);
- vae-eval: the test and training ELBOs (``vae eval``'s 10 draws per image: an encoder and a decoder pass each) and
  the importance-weighted estimate (an encoder pass per test image, K decoder passes);
- gan-train: per epoch, 60,000 // batch steps of D and G;
- the other stages draw, score and plot: their products take far below a second, and no floor is given.

Adam's step is memory-bound: for each float32 parameter it reads the value, the gradient and two moments and writes
three of them, 28 bytes a step. The floor adds that traffic of every training step over the memory speed of a
working set of the parameters' size, measured in the same run (``bench/gemm_peak.py``'s sweep a = b + 0.5 c): the
steps run their products and then Adam, one after the other. The table gives the floor of the products alone too.
Other elementwise work (tanh, softplus, batch statistics) is not in the count: the floor is a lower bound.

Last, for each folder, the median time of vae-train's steps over each 20 epochs (metrics.jsonl): on a VM whose two
vCPUs the hypervisor moves, they take about 0.17 s an epoch while the two CPUs share a cache and 0.22 s while they
are far apart (``bench/core_round_trip.py``).

    mnistgen reproduce --out RUN                       # SPEC's defaults; stages.json records each stage's times
    python bench/reproduce_time.py RUN [BEFORE ...] [--threads 2] [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from itertools import pairwise
from pathlib import Path

import torch
from gemm_peak import PIXELS, memory_rates, product_rates  # beside this script
from torch.utils.flop_counter import FlopCounterMode

from mnistgen.config import DataConfig, GANConfig, VAEConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.models import gan as gan_models
from mnistgen.models import vae as vae_models

HW_TRAIN_IMAGES, TEST_IMAGES, GAN_TRAIN_IMAGES = 10_000, 10_000, 60_000  # SPEC §2's hw protocol, §3's GAN data
ELBO_DRAWS = 10  # `mnistgen vae eval`'s draws of z per image for the test and training ELBOs
HEAVY = ("vae-train", "vae-eval", "gan-train")
STRETCH = 20  # epochs of vae-train (about 5 s) whose steps' median is printed
ADAM_BYTES = 7 * 4  # per float32 parameter and step: value, gradient and two moments read, three of them written


def products(run, scale: dict[str, float]) -> float:
    """The matrix-product FLOPs of ``run()`` as torch's counter finds them, each module's named in ``scale`` times
    its factor."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counts["Global"] - sum(counts.get(name, 0) * (1 - factor) for name, factor in scale.items())


def vae_flops(epochs: int, iw_samples: int, density: float) -> dict[str, float]:
    config = VAEConfig(device="cpu")
    model = vae_models.build_model(config, torch.device("cpu"))
    optimizer = vae_models.make_optimizer(model, config)
    x = torch.bernoulli(torch.full((config.batch_size, PIXELS), density))  # (B, 784)
    eps = torch.randn(config.batch_size, config.latent_dim)  # (B, D_z)
    sparse = {"VAE.encoder.hidden": density, "Encoder.hidden": density}  # as a submodule, and called alone

    def per_image(run) -> float:
        return products(run, sparse) / config.batch_size

    step = per_image(lambda: vae_models.train_step(model, optimizer, x, eps))
    with torch.no_grad():
        encoder, decoder = per_image(lambda: model.encoder(x)), per_image(lambda: model.decoder.logits(eps))
    per_epoch = HW_TRAIN_IMAGES * step + TEST_IMAGES * (encoder + decoder)
    elbos = (TEST_IMAGES + HW_TRAIN_IMAGES) * ELBO_DRAWS * (encoder + decoder)
    return {"vae-train": epochs * per_epoch, "vae-eval": elbos + TEST_IMAGES * (encoder + iw_samples * decoder)}


def adam_traffic(epochs: int, gan_epochs: int) -> tuple[dict[str, float], int]:
    """Adam's bytes over each training stage (:data:`ADAM_BYTES` per parameter and step), and the larger model's
    parameter count (the working set whose memory speed is measured)."""
    vae = sum(p.numel() for p in vae_models.build_model(VAEConfig(device="cpu"), torch.device("cpu")).parameters())
    gan = sum(p.numel() for module in gan_models.build_models(GANConfig(device="cpu"), torch.device("cpu"))
              for p in module.parameters())
    vae_steps = epochs * -(-HW_TRAIN_IMAGES // VAEConfig().batch_size)  # the last partial batch is a step
    gan_steps = gan_epochs * (GAN_TRAIN_IMAGES // GANConfig().batch_size)
    return {"vae-train": vae_steps * vae * ADAM_BYTES, "gan-train": gan_steps * gan * ADAM_BYTES}, max(vae, gan)


def gan_flops(epochs: int) -> float:
    config = GANConfig(device="cpu")
    generator, discriminator = gan_models.build_models(config, torch.device("cpu"))
    optimizer_g, optimizer_d = gan_models.make_optimizers(generator, discriminator, config)
    layers = list(generator.named_children())
    phase_form = {f"Generator.{name}": 4 / 9 for (_, before), (name, layer) in pairwise(layers)
                  if isinstance(before, torch.nn.Upsample) and isinstance(layer, torch.nn.Conv2d)}
    real = torch.rand(config.batch_size, 1, 28, 28)  # (B, 1, 28, 28)
    z = torch.rand(config.batch_size, config.zdim) * 2 - 1  # (B, zdim) ~ U[-1, 1]
    step = products(lambda: gan_models.train_step(generator, discriminator, optimizer_g, optimizer_d, real, z),
                    phase_form)
    return epochs * (GAN_TRAIN_IMAGES // config.batch_size) * step


def product_peak(repeat: int) -> float:
    """The best of ``repeat`` timings of bench/gemm_peak.py's product with 1,000 rows, in FLOP/s."""
    rates = product_rates(1000, repeat)
    print(f"products: median {statistics.median(rates) / 1e9:.1f} GFLOP/s, best {max(rates) / 1e9:.1f} "
          f"({torch.get_num_threads()} thread(s), {repeat} timings)", flush=True)
    return max(rates)


def memory_peak(elements: int, repeat: int) -> float:
    """The best of ``repeat`` timings of bench/gemm_peak.py's memory sweep over ``elements`` floats, in bytes/s."""
    rates = memory_rates(elements, repeat)
    print(f"memory, {elements:,} floats an array: median {statistics.median(rates) / 1e9:.1f} GB/s, best "
          f"{max(rates) / 1e9:.1f}", flush=True)
    return max(rates)


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.2f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="reproduction folders (the first is the one whose floors are given)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the product's timing")
    parser.add_argument("--repeat", type=int, default=9, help="timings of the product")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    records = [json.loads((Path(run) / "stages.json").read_text())["stages"] for run in args.runs]
    config = json.loads((Path(args.runs[0]) / "config.json").read_text())["config"]
    data = DataConfig(**config["data"])
    density = float(load_protocol("hw", load_raw(data)).train_images.mean())  # the share of 1s in binary images
    print(f"hw training images: {density:.1%} of the pixels are 1", flush=True)
    work = {**vae_flops(config["vae_epochs"], config["iw_samples"], density),
            "gan-train": gan_flops(config["gan_epochs"])}
    peak = product_peak(args.repeat)
    traffic, parameters = adam_traffic(config["vae_epochs"], config["gan_epochs"])
    bandwidth = memory_peak(parameters, args.repeat)

    header = ["stage"] + [f"{Path(run).name}: wall (CPU)" for run in args.runs]
    header += [f"{Path(args.runs[0]).name} / {Path(run).name}" for run in args.runs[1:]]
    header += ["TFLOP", "Adam GB", "floor: products", "x", "floor: + Adam", "x"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    totals = [0.0] * len(records)
    for name in records[0]:
        seconds = [record.get(name, {}).get("seconds") for record in records]
        cpu = [record.get(name, {}).get("cpu_seconds") for record in records]
        totals = [total + (value or 0.0) for total, value in zip(totals, seconds, strict=True)]
        cells = [name] + [f"{minutes(wall)} ({minutes(used)})" for wall, used in zip(seconds, cpu, strict=True)]
        cells += [f"{seconds[0] / other:.2f}" if other else "-" for other in seconds[1:]]
        if name in HEAVY:
            floor, adam = work[name] / peak, traffic.get(name, 0.0)
            cells += [f"{work[name] / 1e12:.2f}", f"{adam / 1e9:.0f}", minutes(floor), f"{seconds[0] / floor:.2f}",
                      minutes(floor + adam / bandwidth), f"{seconds[0] / (floor + adam / bandwidth):.2f}"]
        else:
            cells += [""] * 6
        print("| " + " | ".join(cells) + " |")
    cells = ["total"] + [minutes(total) for total in totals] + [f"{totals[0] / other:.2f}" for other in totals[1:]]
    print("| " + " | ".join(cells + [""] * 6) + " |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    for run in args.runs:  # the VAE's steps show the host's state: `bench/core_round_trip.py` gives its cause
        path = Path(run) / "vae" / "metrics.jsonl"
        if not path.is_file():
            continue
        metrics = [json.loads(line) for line in path.read_text().splitlines()]
        steps = [record["train_seconds"] for record in metrics]
        stretches = [statistics.median(steps[start:start + STRETCH]) for start in range(0, len(steps), STRETCH)]
        print(f"{Path(run).name}: vae-train's steps, median seconds an epoch of each {STRETCH} epochs: "
              + " ".join(f"{seconds:.3f}" for seconds in stretches))


if __name__ == "__main__":
    main()
