"""Checks of the VAE on an accelerator (CUDA or MPS) that the CPU-only test suite cannot make.

1. The hand-derived gradient equals autograd's on the device (both objectives, float32).
2. Two epochs of training on the device: --resume after epoch 1 ends with the same weights, and the
   reference protocol's test ELBO passes -200 nats (as tests/test_vae_train.py requires on CPU).
   (Both also show that every tensor the loop creates is on the device: a CPU tensor in a CUDA
   computation is an error, not a silent copy.)

    python bench/vae_device_check.py --device cuda --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from mnistgen.accelerate.vae import elbo_with_gradients
from mnistgen.config import DataConfig, VAEConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.losses import vae_elbo
from mnistgen.models.vae import VAE
from mnistgen.runs import RunDir
from mnistgen.train.vae import train_vae


def check(condition: bool, message: str) -> bool:
    print(f"{'ok  ' if condition else 'FAIL'} {message}", flush=True)
    return condition


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "mps", "cpu"])
    parser.add_argument("--data-dir", default=os.environ.get("MNISTGEN_DATA_DIR"))
    args = parser.parse_args()
    device = torch.device(args.device)
    passed = True

    torch.manual_seed(0)
    model = VAE().to(device)
    x = torch.bernoulli(torch.full((64, 784), 0.3, device=device))
    for analytic_kl in (False, True):
        eps = torch.randn((64, 2), generator=torch.Generator(device).manual_seed(1), device=device)
        elbo_with_gradients(model, x, eps, analytic_kl)
        by_hand = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        (-vae_elbo(model, x, eps, analytic_kl).mean()).backward()
        worst = max(float((a - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12))
                    for a, p in zip(by_hand, model.parameters(), strict=True))
        passed &= check(worst < 1e-3, f"hand gradient = autograd on {device} (analytic_kl={analytic_kl}): "
                                      f"largest difference {worst:.2e} of the gradient's scale")
        model.zero_grad(set_to_none=True)

    protocol = load_protocol("hw", load_raw(DataConfig(data_dir=args.data_dir, offline=True)))
    config = VAEConfig(epochs=2, device=args.device)
    with tempfile.TemporaryDirectory() as scratch:
        straight, resumed = RunDir(f"{scratch}/straight"), RunDir(f"{scratch}/resumed")
        start = time.perf_counter()
        history = train_vae(config, straight, protocol=protocol, show_progress=False)
        seconds = time.perf_counter() - start
        train_vae(VAEConfig(epochs=1, device=args.device), resumed, protocol=protocol, show_progress=False)
        train_vae(config, resumed, resume=True, protocol=protocol, show_progress=False)
        a, b = straight.load_checkpoint()["model"], resumed.load_checkpoint()["model"]
        same = all(torch.equal(a[k], b[k]) for k in a)
        close = max(float((a[k] - b[k]).abs().max()) for k in a)
        passed &= check(close < 1e-4, f"--resume after epoch 1 ends with the same weights on {device} "
                                      f"(bitwise: {same}; largest difference {close:.1e})")
        passed &= check(history[-1]["test_elbo"] > -200, f"2 epochs on {device}: test ELBO "
                                                         f"{history[-1]['test_elbo']:.2f} > -200 ({seconds:.1f} s)")
        optimizer_state = straight.load_checkpoint()["optimizer"]["state"]
        passed &= check(len(optimizer_state) == 10, "Adam state saved for all 10 parameter tensors")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
