"""What the speed tests share: the baseline loops of bench/ (loaded from their files), a relative error, networks
with weights off their init, and epochs of mnistgen's own VAE loop with a chosen accelerator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from mnistgen.accelerate import Choice
from mnistgen.accelerate.engines import Replica
from mnistgen.accelerate.vae import vae_engine
from mnistgen.config import VAEConfig
from mnistgen.data.batches import epoch_order, num_batches
from mnistgen.device import seed_everything, stream_seed
from mnistgen.models.vae import build_model, make_optimizer
from mnistgen.train.common import take_steps
from mnistgen.train.vae import NOISE_STREAM, step_inputs

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_module(name: str) -> ModuleType:
    """bench/<name>.py as a module (bench/ is not a package; its scripts import bench/bench_args.py as a script
    run from bench/ would)."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def perturbed(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Weights off their init and non-zero biases, so no term of a check is trivially zero."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return module


def vae_epochs(config: VAEConfig, accelerator, images: torch.Tensor, epochs: int,
               dynamic_binarization: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[float]]:
    """``epochs`` epochs of mnistgen's VAE loop for ``config.seed`` on ``images`` (its step inputs, its engine,
    ``take_steps``; no evaluation, no checkpoints), taking ``accelerator`` 's step (None: the reference step).
    Returns the model, its optimizer and every step's ELBO sum (this rank's share under torch.distributed)."""
    cpu = torch.device("cpu")
    order = seed_everything(config.seed)
    model = build_model(config, cpu)
    optimizer = make_optimizer(model, config)
    noise = torch.Generator().manual_seed(stream_seed(config.seed, NOISE_STREAM))
    engine = vae_engine([Replica({"model": model}, {"model": optimizer})], config, cpu, Choice(accelerator, ()),
                        say=lambda line: None)
    steps, elbos = num_batches(len(images), config.batch_size, drop_last=False), []
    for _ in range(epochs):
        inputs = step_inputs(images, [epoch_order(len(images), config.batch_size, order, cpu)], [noise],
                             config.batch_size, config.latent_dim, None, dynamic_binarization)
        values = torch.zeros(1, steps)
        take_steps(engine, 0, steps, inputs, values)
        elbos += values[0].tolist()
    return model, optimizer, elbos
