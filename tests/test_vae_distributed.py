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

from mnistgen.accelerate.vae import NATIVE, TORCH
from mnistgen.config import VAEConfig
from mnistgen.data.batches import shuffled_batches
from mnistgen.device import seed_everything, stream_seed
from mnistgen.train.common import distributed_rank_and_size
from mnistgen.train.vae import NOISE_STREAM, build_model, make_optimizer, train_epoch

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
        assert distributed_rank_and_size() == (rank, WORLD)
        config = VAEConfig(device="cpu")
        order = seed_everything(config.seed)
        model = build_model(config, torch.device("cpu"))
        optimizer = make_optimizer(model, config.lr)
        noise = torch.Generator().manual_seed(stream_seed(config.seed, NOISE_STREAM))
        accelerator = ACCELERATORS[path] and ACCELERATORS[path].implementation(model, optimizer, config)
        elbos = []
        for _ in range(2):  # 2 epochs: 8 batches of 100, 4 steps per rank each
            batches = list(shuffled_batches(len(images), config.batch_size, order, rank=rank, world_size=WORLD))
            step_elbos = torch.zeros(len(batches))
            train_epoch(model, optimizer, images, batches, noise=noise, analytic_kl=False,
                        dynamic_binarization=False, step_elbos=step_elbos, accelerator=accelerator)
            elbos += step_elbos.tolist()
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
