"""On a GPU (or any device): N seeds trained as batched replicas against separate single-seed runs, same device.

tests/test_replicas.py shows the equality on the CPU (bit for bit one by one, 1e-10 in float64 batched); this
script shows it where those tests cannot run: the last epoch's numbers of each seed, batched and separate, and the
largest difference of their weights (float32: the order of sums differs, so a few 1e-4 after Adam's steps). Each
seed's ``trained_by`` says how its steps were taken (on the CPU with an accelerator the replicas are stepped one
after another, not batched: then the difference is 0).

    python bench/replica_device_check.py --device cuda --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from mnistgen.config import DataConfig, GANConfig, VAEConfig, replica_config
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.runs import RunDir
from mnistgen.train.gan import train_gan
from mnistgen.train.vae import train_vae


def largest_difference(a: RunDir, b: RunDir, keys: tuple[str, ...]) -> float:
    first, second = a.load_checkpoint(), b.load_checkpoint()
    return max((first[key][name] - second[key][name]).abs().max().item() for key in keys for name in first[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=os.environ.get("MNISTGEN_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    raw = load_raw(DataConfig(data_dir=args.data_dir, offline=True))
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        vae = VAEConfig(epochs=args.epochs, device=args.device, replicas=3, data=DataConfig(offline=True))
        protocol = load_protocol("hw", raw)
        batched = train_vae(vae, RunDir(f"{folder}/vae"), protocol=protocol, show_progress=False)
        for seed, history in batched.items():
            alone = train_vae(replica_config(vae, seed), RunDir(f"{folder}/vae-{seed}"), protocol=protocol,
                              show_progress=False)
            out[f"vae seed {seed}"] = {
                "trained_by": [history[-1]["trained_by"], alone[-1]["trained_by"]],
                "test_elbo": [history[-1]["test_elbo"], alone[-1]["test_elbo"]],
                "largest_weight_difference": largest_difference(RunDir(f"{folder}/vae/seed={seed}"),
                                                                RunDir(f"{folder}/vae-{seed}"), ("model",))}
        gan = GANConfig(epochs=args.epochs, device=args.device, replicas=3, data=DataConfig(offline=True))
        images = load_protocol("gan", raw).train_images[:12800]
        batched = train_gan(gan, images, RunDir(f"{folder}/gan"), show_progress=False)
        for seed, history in batched.items():
            alone = train_gan(replica_config(gan, seed), images, RunDir(f"{folder}/gan-{seed}"), show_progress=False)
            out[f"gan seed {seed}"] = {
                "trained_by": [history[-1]["trained_by"], alone[-1]["trained_by"]],
                "d_loss": [history[-1]["d_loss"], alone[-1]["d_loss"]],
                "g_loss": [history[-1]["g_loss"], alone[-1]["g_loss"]],
                "largest_weight_difference": largest_difference(RunDir(f"{folder}/gan/seed={seed}"),
                                                                RunDir(f"{folder}/gan-{seed}"),
                                                                ("generator", "discriminator"))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    main()
