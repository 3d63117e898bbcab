"""How steep each trained D is where the data are: the mean over real training images of ||dD(x)/dx||^2, the squared
norm of the gradient of D's logit with respect to the image (what R1, ``--r1-gamma``, penalizes), and the same over
G's images, for the checkpoint of each seed of each run folder given; beside it D's mean logit on each. A D whose
logits stay near 0 while this grows by orders of magnitude has become a jagged function, and G's gradient with it.

    MNISTGEN_DATA_DIR=../shared/data/mnist python bench/gan_d_sharpness.py runs/recipes/improved runs/recipes/imp-b32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mnistgen.config import DataConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.distributions import sample_uniform_noise
from mnistgen.models.gan import Discriminator, Generator, r1_penalty

IMAGES = 2000  # real images (the first of the training set) and G's images per checkpoint


def seed_folders(run: Path) -> list[Path]:
    return sorted(run.glob("seed=*"), key=lambda p: int(p.name[5:])) or [run]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="GAN run folders (a replica folder: each of its seeds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    real = load_protocol("gan", load_raw(DataConfig())).train_images[:IMAGES]  # (N, 1, 28, 28) in [0, 1]
    print("| run | seed | epoch | mean ||dD/dx||^2 real | G's images | D's mean logit real | G's images |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in map(Path, args.runs):
        for folder in seed_folders(run):
            state = torch.load(folder / "checkpoint.pt", weights_only=True)
            discriminator, generator = Discriminator(), Generator(state["config"]["zdim"])
            discriminator.load_state_dict(state["discriminator"])
            generator.load_state_dict(state["generator"])
            with torch.no_grad():
                fake = generator(sample_uniform_noise(IMAGES, generator.zdim, torch.Generator().manual_seed(0)))
            steepness = [float(r1_penalty(discriminator, images).detach()) for images in (real, fake)]
            with torch.no_grad():
                logits = [float(discriminator(images).mean()) for images in (real, fake)]
            print(f"| {run.name} | {folder.name.removeprefix('seed=')} | {state['epoch']} | {steepness[0]:.3g} | "
                  f"{steepness[1]:.3g} | {logits[0]:.2f} | {logits[1]:.2f} |")


if __name__ == "__main__":
    main()
