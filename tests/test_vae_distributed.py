"""Two ranks of a gloo process group on this CPU (what torchrun would start): each trains on its share of
the batches, the gradients are averaged over the ranks before every Adam step, so both ranks end with the
same weights, on the reference path and with each accelerator, and all of them agree (the C kernels do one
all-reduce of their flat gradient buffer, the others one per parameter)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_support import vae_epochs

from mnistgen.accelerate.vae import NATIVE, TORCH
from mnistgen.config import VAEConfig
from mnistgen.distributed import rank_and_size

WORLD = 2
ACCELERATORS = {"reference": None, "torch": TORCH, "native": NATIVE}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_trains(rank: int, port: int, path: str, images: torch.Tensor, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        assert rank_and_size() == (rank, WORLD)
        # 2 epochs of 8 global batches of 100: each rank trains on its half of every batch
        model, _, elbos = vae_epochs(VAEConfig(device="cpu"), ACCELERATORS[path], images, 2)
        results[rank] = ({k: v.clone() for k, v in model.state_dict().items()}, elbos)
    finally:
        dist.destroy_process_group()


def train_on_two_ranks(path: str, images: torch.Tensor):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_trains, args=(free_port(), path, images, results), nprocs=WORLD, join=True)
        return dict(results)


@pytest.fixture(scope="module")
def images(mnist_raw):
    return torch.from_numpy((mnist_raw.train_images[:800].reshape(800, 784) >= 128).astype(np.float32))


@pytest.mark.slow
def test_ranks_agree_and_every_path_agrees(images, needs_native_kernels):
    runs = {name: train_on_two_ranks(name, images) for name in ACCELERATORS}
    for name, results in runs.items():
        (weights0, elbos0), (weights1, elbos1) = results[0], results[1]
        assert elbos0 != elbos1  # the ranks saw different batches...
        for key in weights0:  # ...and still took the same steps: gradients were averaged before Adam
            assert torch.equal(weights0[key], weights1[key]), (name, key)
    reference = runs["reference"][0]
    for name in ("torch", "native"):
        accelerated = runs[name][0]
        np.testing.assert_allclose(accelerated[1], reference[1], rtol=2e-5, err_msg=name)
        for key in reference[0]:
            difference = (accelerated[0][key] - reference[0][key]).abs()
            assert int((difference > 2e-5).sum()) <= 10 and difference.max().item() < 1e-3, (name, key)
