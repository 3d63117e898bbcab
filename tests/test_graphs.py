"""The CUDA graphs (mnistgen.accelerate.graphs, engines.Captured) where no GPU is: when they step aside, the Adam
state they hand back and forth, and the bookkeeping around a capture. What they compute is checked on a GPU by
bench/graph_device_check.py (its latest output is in docs/BENCHMARKS.md): captured steps against the eager
reference step, and an exact resume."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

import mnistgen.accelerate.engines as engines
from mnistgen.accelerate.graphs import CapturedStep, capturable_adam, copy_state, graph_problem
from mnistgen.config import DataConfig, GANConfig, VAEConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.errors import TrainingInterrupted
from mnistgen.models.vae import VAE
from mnistgen.runs import RunDir
from mnistgen.train.gan import train_gan
from mnistgen.train.vae import train_vae


def test_graphs_step_aside_off_cuda_and_with_a_changing_learning_rate(mnist_raw, tmp_path):
    assert graph_problem(torch.device("cpu")) == "CUDA graphs run on CUDA devices only"
    assert "learning rate changes" in graph_problem(torch.device("cuda"), fixed_lr=False)
    # on the CPU no graph is captured, silently: the C kernels or PyTorch's fast path train
    notes = []
    history = train_vae(VAEConfig(epochs=1, device="cpu", data=DataConfig(offline=True)), RunDir(tmp_path / "run"),
                        protocol=small_hw(mnist_raw), show_progress=False, say=notes.append)
    assert "cuda-graph" not in history[-1]["trained_by"] and not any("CUDA graph" in note for note in notes)


def test_the_graph_probe_refuses_another_optimizer():
    replica = engines.Replica({"model": VAE(hidden=10)}, {})
    replica.optimizers["model"] = torch.optim.SGD(replica.modules["model"].parameters(), lr=0.1)
    reason = engines.check_graph([replica], False, lambda r: None, [], torch.device("cuda"), fixed_lr=True)
    assert reason == "it is written for SPEC's optimizer, Adam; the optimizer is SGD"


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


# --------------------------------------------------------------------------- the bookkeeping around the capture


class EagerCapture(CapturedStep):
    """CapturedStep with its three CUDA calls done eagerly: "capturing" runs the step once (undone with the warm-up,
    as a real capture runs nothing), and a "replay" runs it again on the static inputs, writing into the captured
    output. Everything else (warm-up, restore, input copies, the eager path for other shapes, the Adam copies) is the
    real code, so these tests check that bookkeeping; bench/graph_device_check.py checks real graphs on a GPU."""

    @contextlib.contextmanager
    def _side_stream(self):
        yield

    def _capture(self):
        return self.step(*self.inputs)

    def _replay(self):
        self.output.copy_(self.step(*self.inputs))


@pytest.fixture
def graphs_on_the_cpu(monkeypatch):
    """CUDA graphs allowed on the CPU, with EagerCapture; float64, where no accelerator applies (the C kernels and
    PyTorch's fast paths compute in float32), so every step that is captured is the reference step."""
    monkeypatch.setattr(engines, "CapturedStep", EagerCapture)
    monkeypatch.setattr(engines, "graph_problem", lambda device, fixed_lr=True: None if fixed_lr else "lr")
    torch.set_default_dtype(torch.float64)  # the captured Adam (capturable) and the plain one round alike here
    yield
    torch.set_default_dtype(torch.float32)


def small_hw(mnist_raw):
    protocol = load_protocol("hw", mnist_raw)
    return dataclasses.replace(protocol, train_images=protocol.train_images[:550],
                               eval_images=protocol.eval_images[:200])


def without_times(records):
    return [{k: v for k, v in r.items() if "seconds" not in k and k != "trained_by"} for r in records]


def stop_after(steps):
    count = {"n": 0}

    def stop():
        count["n"] += 1
        return count["n"] > steps

    return stop


@pytest.mark.slow
def test_vae_captured_step_trains_like_the_reference_path_and_resumes_exactly(graphs_on_the_cpu, mnist_raw, tmp_path):
    """550 images: 5 steps of 100 replayed and a last one of 50 taken eagerly, each epoch."""
    protocol = small_hw(mnist_raw)
    config = VAEConfig(epochs=3, device="cpu", data=DataConfig(offline=True))
    graph = train_vae(config, RunDir(tmp_path / "graph"), protocol=protocol, show_progress=False)
    eager = train_vae(dataclasses.replace(config, cpu_kernels="reference"), RunDir(tmp_path / "eager"),
                      protocol=protocol, show_progress=False)
    assert graph[-1]["trained_by"] == "cuda-graph (reference)" and eager[-1]["trained_by"] == "reference"
    for a, b in zip(graph, eager, strict=True):
        assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-12)
    mine, theirs = (RunDir(tmp_path / name).load_checkpoint() for name in ("graph", "eager"))
    for key, value in theirs["model"].items():
        torch.testing.assert_close(mine["model"][key], value, rtol=1e-10, atol=1e-13)
    for index, state in theirs["optimizer"]["state"].items():  # store() handed the captured Adam's state back
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(mine["optimizer"]["state"][index][name], state[name], rtol=1e-10, atol=1e-16)
        assert float(mine["optimizer"]["state"][index]["step"]) == float(state["step"]) == 18
    stopped = RunDir(tmp_path / "stopped")
    with pytest.raises(TrainingInterrupted):
        train_vae(config, stopped, protocol=protocol, stop=stop_after(8), show_progress=False)
    resumed = train_vae(config, stopped, resume=True, protocol=protocol, show_progress=False)
    assert without_times(resumed) == without_times(graph)
    for key, value in mine["model"].items():
        assert torch.equal(stopped.load_checkpoint()["model"][key], value), key


@pytest.mark.slow
def test_gan_captured_step_trains_like_the_reference_path_and_resumes_exactly(graphs_on_the_cpu, mnist_raw, tmp_path):
    images = load_protocol("gan", mnist_raw).train_images[:160].clone()  # 5 steps of 32
    # with lookahead: its sync is an input of the captured step (steps 3, 6 and 9 sync, the others do not)
    config = GANConfig(epochs=2, batch_size=32, device="cpu", data=DataConfig(offline=True), lookahead_steps=3)
    graph = train_gan(config, images, RunDir(tmp_path / "graph"), show_progress=False)
    eager = train_gan(dataclasses.replace(config, cpu_kernels="reference"), images, RunDir(tmp_path / "eager"),
                      show_progress=False)
    assert graph[-1]["trained_by"] == "cuda-graph (G reference, D reference)"  # float64: no accelerator
    assert eager[-1]["trained_by"] == "G reference, D reference"
    for a, b in zip(graph, eager, strict=True):
        for stat in ("d_loss", "g_loss", "d_real", "d_fake"):
            assert a[stat] == pytest.approx(b[stat], rel=1e-9), stat
    mine, theirs = (RunDir(tmp_path / name).load_checkpoint() for name in ("graph", "eager"))
    for network in ("generator", "discriminator", "generator_slow", "discriminator_slow"):
        for key, value in theirs[network].items():
            torch.testing.assert_close(mine[network][key], value, rtol=1e-8, atol=1e-12)
    assert float(mine["optimizer_g"]["state"][0]["step"]) == 10
    stopped = RunDir(tmp_path / "stopped")
    with pytest.raises(TrainingInterrupted):
        train_gan(config, images, stopped, stop=stop_after(7), show_progress=False)
    resumed = train_gan(config, images, stopped, resume=True, show_progress=False)
    assert without_times(resumed) == without_times(graph)
    for network in ("generator", "discriminator", "generator_slow", "discriminator_slow"):
        for key, value in mine[network].items():
            assert torch.equal(stopped.load_checkpoint()[network][key], value), key


@pytest.mark.slow
def test_replicas_captured_batched_step_equals_the_eager_one(graphs_on_the_cpu, mnist_raw, tmp_path, monkeypatch):
    protocol = small_hw(mnist_raw)
    config = VAEConfig(epochs=2, device="cpu", replicas=2, data=DataConfig(offline=True))  # float64: stacked
    captured = train_vae(config, RunDir(tmp_path / "captured"), protocol=protocol, show_progress=False)
    monkeypatch.setattr(engines, "graph_problem", lambda device, fixed_lr=True: "off")
    eager = train_vae(config, RunDir(tmp_path / "eager"), protocol=protocol, show_progress=False)
    for seed in captured:
        assert captured[seed][-1]["trained_by"] == ("2 replicas, batched (vmap over the reference path), captured in "
                                                    "a CUDA graph")
        assert eager[seed][-1]["trained_by"] == "2 replicas, batched (vmap over the reference path)"
        assert without_times(captured[seed]) == without_times(eager[seed])
        a = RunDir(tmp_path / "captured" / f"seed={seed}").load_checkpoint()
        b = RunDir(tmp_path / "eager" / f"seed={seed}").load_checkpoint()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        for index, state in b["optimizer"]["state"].items():  # store() handed the captured Adam's state back
            assert all(torch.equal(a["optimizer"]["state"][index][k], value) for k, value in state.items())
