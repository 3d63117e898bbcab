"""The CUDA-graph accelerators (mnistgen.accelerate.graphs) where no GPU is: when they step aside, and the Adam
state they hand back and forth. What they compute is checked on a GPU by bench/graph_device_check.py (its latest
output is in docs/BENCHMARKS.md): captured steps against the eager reference path, and an exact resume."""

from __future__ import annotations

import pytest
import torch

from mnistgen.accelerate.graphs import capturable_adam, copy_state, graph_problem
from mnistgen.accelerate.vae import GRAPH, choose_vae_accelerator
from mnistgen.config import VAEConfig
from mnistgen.models.vae import VAE


def test_graphs_step_aside_off_cuda_and_with_a_changing_learning_rate():
    assert graph_problem(torch.device("cpu")) == "CUDA graphs run on CUDA devices only"
    assert "learning rate changes" in graph_problem(torch.device("cuda"), fixed_lr=False)
    # on the CPU the graph accelerator is passed over silently: the C kernels or PyTorch's fast path train
    choice = choose_vae_accelerator(VAE(), VAEConfig(), torch.device("cpu"))
    assert choice.accelerator is not GRAPH and not any("cuda-graph" in reason for reason in choice.skipped)
    assert GRAPH.devices == ("cuda",)


def adam_after_steps(model: torch.nn.Module, steps: int) -> torch.optim.Adam:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9), fused=True)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("steps", [0, 3])
def test_the_adam_state_goes_to_the_capturable_copy_and_back_unchanged(steps):
    torch.manual_seed(0)
    model = VAE(hidden=20)
    optimizer = adam_after_steps(model, steps)
    captured = capturable_adam(optimizer)
    group = captured.param_groups[0]
    assert group["capturable"] and (group["lr"], group["betas"]) == (1e-3, (0.5, 0.9))
    assert [p for p in captured.param_groups[0]["params"]] == list(model.parameters())
    # a step of each from the same state and gradients gives the same weights and moments
    twin = VAE(hidden=20)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=1e-3, betas=(0.5, 0.9), fused=True)
    twin_optimizer.load_state_dict(optimizer.state_dict())
    grads = [torch.randn_like(p) for p in model.parameters()]
    for p, q, g in zip(model.parameters(), twin.parameters(), grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    captured.step()
    twin_optimizer.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)
    copy_state(captured, optimizer)  # back into the run's optimizer, which the checkpoint saves
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        mine, theirs = optimizer.state[p], twin_optimizer.state[q]
        assert float(mine["step"]) == float(theirs["step"]) == steps + 1
        torch.testing.assert_close(mine["exp_avg"], theirs["exp_avg"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(mine["exp_avg_sq"], theirs["exp_avg_sq"], rtol=1e-6, atol=1e-12)


def test_copy_state_writes_into_the_tensors_a_graph_reads():
    """A captured graph reads the optimizer's state tensors at fixed addresses: copying a restored state in must
    overwrite those tensors, not replace them."""
    torch.manual_seed(1)
    model = VAE(hidden=10)
    target = adam_after_steps(model, 1)
    held = {p: {k: v for k, v in target.state[p].items()} for p in model.parameters()}
    source = adam_after_steps(model, 2)
    copy_state(source, target)
    for p in model.parameters():
        for key, tensor in held[p].items():
            assert target.state[p][key] is tensor and torch.equal(tensor, source.state[p][key])
