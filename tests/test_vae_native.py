"""The VAE's C kernels (kernels/vae_cpu.c through kernels/vae.py and accelerate/vae.py's NativeVAESteps) against
PyTorch: the vector functions, the ELBO and every gradient against the hand-derived and the autograd
backward, odd sizes (hidden widths that leave vector tails, gray images, empty and full images), NaN,
independence of the thread count, Adam against PyTorch's, the state copied in and out, and whole training
runs against PyTorch's kernels (tests/test_vae_speed.py: both against the plain loop of the benchmark)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from bench_support import perturbed, vae_epochs

from mnistgen.accelerate.engines import OneAfterAnother
from mnistgen.accelerate.vae import (
    NATIVE,
    TORCH,
    NativeVAESteps,
    choose_vae_accelerator,
    elbo_with_gradients,
    held_out_elbo,
)
from mnistgen.config import DataConfig, VAEConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.device import seed_everything
from mnistgen.errors import MnistgenError
from mnistgen.kernels import native as native_build
from mnistgen.kernels import vae as vae_kernels
from mnistgen.kernels.native import load_vae_library
from mnistgen.kernels.vae import NativeVAEStep
from mnistgen.losses import elbo_analytic, elbo_mc, elbo_samples
from mnistgen.models.vae import VAE, make_optimizer
from mnistgen.runs import RunDir
from mnistgen.train.vae import train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread", "needs_native_kernels")

EXP, LOG1P, TANH = 0, 1, 2
ULP = 2.0 ** -23  # float32's relative spacing at 1


def vector_math(function: int, values: torch.Tensor) -> torch.Tensor:
    values = values.float().contiguous()
    out = torch.empty_like(values)
    assert load_vae_library().mnistgen_vae_math(function, values.data_ptr(), out.data_ptr(), values.numel()) == 0
    return out


def binary_images(count: int, density: float = 0.13, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 784, generator=generator) < density).float()


def native_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool, capacity: int | None = None):
    """The C kernels' ELBO sum and gradients, in the model's parameters' layout and order."""
    native = NativeVAEStep(model, capacity or len(x))
    native.load(torch.optim.Adam(model.parameters()))
    elbo = native.compute_gradients(x, eps, analytic_kl)
    return elbo, native.parameter_gradients()


def reference_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool):
    for parameter in model.parameters():
        parameter.grad = None
    elbo = elbo_with_gradients(model, x, eps, analytic_kl)
    return float(elbo), [parameter.grad.clone() for parameter in model.parameters()]


def assert_gradients_close(mine, theirs, tolerance: float):
    for index, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        scale = b.abs().max().item() + 1e-30
        assert (a - b).abs().max().item() <= tolerance * scale, f"parameter {index}"


# --------------------------------------------------------------------------- vector functions


def test_exp_log1p_and_tanh_are_accurate_to_a_few_units_in_the_last_place():
    # exp over the whole range it serves (arguments <= 0 in the kernels, both signs tested)
    x = torch.linspace(-87.0, 88.0, 200_001)
    exact = torch.exp(x.double())
    assert ((vector_math(EXP, x).double() - exact).abs() / exact).max() < 4 * ULP
    # log1p(e) for e in [0, 1], including tiny e where log(1 + e) would lose everything
    e = torch.cat([torch.linspace(0.0, 1.0, 200_001), torch.logspace(-30, -1, 1000)])
    exact = torch.log1p(e.double())
    error = (vector_math(LOG1P, e).double() - exact).abs() / exact.clamp_min(1e-300)
    assert error[e > 0].max() < 4 * ULP and vector_math(LOG1P, torch.zeros(3)).eq(0).all()
    # tanh across both branches (|a| < 0.5 by its series, beyond by exp), tiny values and saturation
    a = torch.cat([torch.linspace(-12.0, 12.0, 200_001), torch.logspace(-30, 0, 1000), -torch.logspace(-30, 0, 1000)])
    exact = torch.tanh(a.double())
    error = (vector_math(TANH, a).double() - exact).abs() / exact.abs().clamp_min(1e-300)
    assert error[a != 0].max() < 4 * ULP
    assert vector_math(TANH, torch.tensor([40.0, -40.0, math.inf, -math.inf])).tolist() == [1.0, -1.0, 1.0, -1.0]


def test_the_vector_functions_propagate_nan():
    nan = torch.full((11,), math.nan)  # 11: one full vector and a padded tail
    for function in (EXP, LOG1P, TANH):
        assert vector_math(function, nan).isnan().all(), function


# --------------------------------------------------------------------------- one step's numbers


@pytest.mark.parametrize("analytic_kl", [False, True], ids=["eq2-mc", "eq1-analytic"])
def test_elbo_and_every_gradient_equal_the_hand_derived_backward(analytic_kl):
    torch.manual_seed(0)
    model = VAE()
    x, eps = binary_images(100), torch.randn(100, 2)
    elbo, gradients = native_gradients(model, x, eps, analytic_kl)
    reference_elbo, reference = reference_gradients(model, x, eps, analytic_kl)
    assert elbo == pytest.approx(reference_elbo, rel=1e-6)
    assert_gradients_close(gradients, reference, 1e-5)


@pytest.mark.parametrize("hidden, latent", [(5, 1), (13, 3), (70, 2), (136, 4)])
def test_odd_widths_gray_images_and_small_batches_equal_autograd(hidden, latent):
    """Widths below one vector, with a tail, one full block plus a tail, two blocks; gray levels (the sums
    use the values, not just 1); 7 images in buffers for 10; autograd through losses.vae_elbo in float64."""
    torch.manual_seed(1)
    model = VAE(latent_dim=latent, hidden=hidden)
    gray = torch.rand(7, 784) * binary_images(7, density=0.3, seed=1)
    eps = torch.randn(7, latent)
    for analytic_kl in (False, True):
        elbo, gradients = native_gradients(model, gray, eps, analytic_kl, capacity=10)
        exact = VAE(latent_dim=latent, hidden=hidden).double()
        exact.load_state_dict(model.state_dict())
        x64 = gray.double()
        mean, logvar = exact.encoder(x64)
        z = mean + torch.exp(0.5 * logvar) * eps.double()
        logits = exact.decoder.logits(z)
        elbos = elbo_analytic(x64, logits, mean, logvar) if analytic_kl else elbo_mc(x64, logits, z, mean, logvar)
        loss = -elbos.mean()
        exact.zero_grad()
        loss.backward()
        assert elbo == pytest.approx(-loss.item() * len(gray), rel=1e-5)
        assert_gradients_close(gradients, [p.grad.float() for p in exact.parameters()], 2e-5)


def test_empty_and_full_images_and_extreme_latents_stay_finite():
    torch.manual_seed(2)
    model = VAE()
    with torch.no_grad():
        model.encoder.logvar.bias.fill_(-40.0)  # std = exp(-20)
        model.encoder.mean.bias.fill_(30.0)  # z far out in the tails of the prior
    x = torch.cat([torch.zeros(3, 784), torch.ones(3, 784)])  # no nonzero pixel at all / every pixel on
    eps = torch.randn(6, 2) * 5
    for analytic_kl in (False, True):
        elbo, gradients = native_gradients(model, x, eps, analytic_kl)
        reference_elbo, reference = reference_gradients(model, x, eps, analytic_kl)
        assert math.isfinite(elbo) and all(g.isfinite().all() for g in gradients)
        assert elbo == pytest.approx(reference_elbo, rel=1e-6)
        assert_gradients_close(gradients, reference, 1e-5)


def test_a_nan_weight_gives_a_nan_elbo():
    for poison in ("encoder.hidden.weight", "decoder.output.bias", "encoder.logvar.weight"):
        torch.manual_seed(3)
        model = VAE()
        with torch.no_grad():
            model.get_parameter(poison).view(-1)[0] = math.nan  # pixel 0's weight, or logit 0's bias, ...
        x = binary_images(4)
        x[:, 0] = 1.0  # pixel 0 is on, so the poisoned weight is read
        elbo, _ = native_gradients(model, x, torch.randn(4, 2), analytic_kl=False)
        assert math.isnan(elbo), poison


def test_results_do_not_depend_on_the_number_of_threads(monkeypatch):
    # The C kernels' threads vary; PyTorch's, which run the decoder's three output products, stay at one: MKL's
    # sums over the 784 pixels may split by thread on some CPUs (on one of ours, (50 x 784) @ (784 x 140) rounds
    # differently at 2 threads), which is MKL's business, not the C kernels' claim.
    torch.manual_seed(4)
    model = VAE(hidden=140)  # two column blocks and a tail: the jobs split differently
    x, eps = binary_images(50), torch.randn(50, 2)
    torch.set_num_threads(1)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(vae_kernels, "_threads", lambda threads=threads: threads)
        results.append(native_gradients(model, x, eps, analytic_kl=False))
    for elbo, gradients in results[1:]:
        assert elbo == results[0][0]
        assert all(torch.equal(a, b) for a, b in zip(gradients, results[0][1], strict=True))


@pytest.mark.parametrize(("hidden", "latent", "analytic_kl"), [(500, 2, False), (136, 3, True)],
                         ids=["spec-eq2", "odd-eq1"])
def test_the_held_out_elbo_by_the_kernels_forward_is_elbo_samples_from_the_same_draws(hidden, latent, analytic_kl):
    """``held_out_elbo`` by the C kernels' forward (in ``elbo_samples``' chunks of 1,000 draws) on 2,300 images, gray,
    binary and empty, after one step and again after another: each image's value is ``elbo_samples``' of the model
    as trained so far, from the same seed, to float32 rounding; the generator ends in the same state, and the
    training step's weights and Adam's moments stay as they were."""
    config = VAEConfig(device="cpu", hidden=hidden, latent_dim=latent, batch_size=64,
                       objective="analytic" if analytic_kl else "mc")
    model = perturbed(VAE(latent_dim=latent, hidden=hidden), seed=5)
    runner = NativeVAESteps(model, make_optimizer(model, config), config)
    engine = OneAfterAnother([runner], [runner.optimizer])
    images = binary_images(2300, density=0.2, seed=6)
    images[:1150] *= torch.rand(1150, 784)  # gray levels
    images[5] = 0.0
    for step in range(2):
        runner.step(binary_images(64, seed=step), torch.randn(64, latent))  # Adam's moments become nonzero
        runner.store()
        state = (runner.native.parameters, runner.native.exp_avg, runner.native.exp_avg_sq)
        kept = [tensor.clone() for tensor in state]
        mine, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        values = held_out_elbo(engine, 0, model, images, analytic_kl, mine)
        expected = elbo_samples(model, images, 1, analytic_kl, theirs)[0]
        torch.testing.assert_close(values.float(), expected, rtol=1e-5, atol=1e-4)
        assert torch.equal(mine.get_state(), theirs.get_state())
        assert all(torch.equal(before, after) for before, after in zip(kept, state, strict=True))


def test_a_batch_above_the_capacity_is_refused():
    native = NativeVAEStep(VAE(hidden=8), capacity=4)
    with pytest.raises(ValueError, match="capacity of 4"):
        native.compute_gradients(binary_images(5), torch.randn(5, 2), analytic_kl=False)


# --------------------------------------------------------------------------- Adam and the state


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "for-loop"])
def test_adam_steps_equal_pytorchs_adam(fused):
    torch.manual_seed(5)
    model = VAE(hidden=24)
    twin = VAE(hidden=24)
    twin.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(twin.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-6, fused=fused)
    native = NativeVAEStep(model, capacity=1)
    native.load(torch.optim.Adam(model.parameters()))
    for _ in range(25):
        for parameter, transposed, where, shape in native._views:
            gradient = torch.randn_like(parameter) * 0.1
            parameter.grad = None
            twin.get_parameter(_name(model, parameter)).grad = gradient
            native.gradients[where].view(shape).copy_(gradient.t() if transposed else gradient)
        optimizer.step()
        native.adam_step(3e-3, (0.8, 0.99), 1e-6)
    native.store(torch.optim.Adam(model.parameters()))
    for (name, mine), theirs in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6, msg=name)


def _name(model: torch.nn.Module, parameter: torch.nn.Parameter) -> str:
    return next(name for name, p in model.named_parameters() if p is parameter)


def test_state_goes_in_and_out_unchanged_and_pytorchs_adam_can_continue_it():
    torch.manual_seed(6)
    x, eps = binary_images(20), torch.randn(20, 2)
    model = VAE(hidden=40)
    optimizer = make_optimizer(model, VAEConfig(lr=1e-3))
    for _ in range(3):  # PyTorch's Adam first: its state is what the kernels must take over
        elbo_with_gradients(model, x, eps, analytic_kl=False)
        optimizer.step()
    native = NativeVAEStep(model, capacity=20)
    native.load(optimizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()}
    native.store(optimizer)  # no step in between: everything comes back bit for bit
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for parameter in model.parameters():
        for key, value in optimizer.state[parameter].items():
            assert torch.equal(value, moments[id(parameter)][key]), key

    # five steps by the kernels, stored, then five by PyTorch's Adam == ten by PyTorch's Adam
    twin = VAE(hidden=40)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = make_optimizer(twin, VAEConfig(lr=1e-3))
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # (it would share the moments)
    for _ in range(5):
        native.compute_gradients(x, eps, analytic_kl=False)
        native.adam_step(1e-3, (0.9, 0.999), 1e-8)
        elbo_with_gradients(twin, x, eps, analytic_kl=False)
        twin_optimizer.step()
    native.store(optimizer)
    assert int(optimizer.state[model.encoder.hidden.weight]["step"]) == 8
    for _ in range(5):
        for m, o in ((model, optimizer), (twin, twin_optimizer)):
            elbo_with_gradients(m, x, eps, analytic_kl=False)
            o.step()
    for (name, mine), theirs in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=2e-6, msg=name)


def test_the_kernels_refuse_an_optimizer_they_cannot_follow():
    model = VAE(hidden=8)
    native = NativeVAEStep(model, capacity=2)
    with pytest.raises(MnistgenError, match="weight decay"):
        native.load(torch.optim.Adam(model.parameters(), weight_decay=0.1))
    with pytest.raises(MnistgenError, match="one parameter group"):
        native.load(torch.optim.Adam(list(model.parameters())[:4]))


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("dynamic_binarization", [False, True], ids=["hw-binary", "full-dynamic"])
def test_an_epoch_with_the_kernels_follows_the_reference_path(mnist_raw, dynamic_binarization):
    protocol = load_protocol("full" if dynamic_binarization else "hw", mnist_raw, validation_size=10000)
    images = protocol.train_images[:1000]
    runs = []
    for accelerator in (NATIVE, None):  # None: the reference step, autograd through the model's forward
        # 20 steps, the state stored and kept across the epoch boundary
        model, optimizer, elbos = vae_epochs(VAEConfig(device="cpu"), accelerator, images, 2, dynamic_binarization)
        runs.append((elbos, model.state_dict(), optimizer.state_dict()))
    (native_elbos, native_weights, native_adam), (torch_elbos, torch_weights, torch_adam) = runs
    np.testing.assert_allclose(native_elbos, torch_elbos, rtol=2e-5)
    assert native_elbos[-1] > native_elbos[0] + 100 * 100  # learning: 100 nats per image better
    # Weights equal to 2e-5, except at most a handful of the 392,000 encoder weights: a gradient summed to
    # nearly zero from terms that cancel (a pixel seen in few images) has a rounding-dependent sign, and Adam
    # turns a sign into a step of up to lr; so those stay within one step (lr = 1e-3).
    for key in torch_weights:
        difference = (native_weights[key] - torch_weights[key]).abs()
        assert int((difference > 2e-5).sum()) <= 10 and difference.max().item() < 1e-3, key
    for index, state in torch_adam["state"].items():
        assert int(native_adam["state"][index]["step"]) == int(state["step"]) == 20
        torch.testing.assert_close(native_adam["state"][index]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-5)


def test_choice_of_the_vae_accelerator(monkeypatch, tmp_path):
    cpu, config = torch.device("cpu"), VAEConfig(device="cpu")
    seed_everything(0)
    model = VAE()
    adam = make_optimizer(model, config)
    assert choose_vae_accelerator(model, adam, config, cpu).accelerator is NATIVE
    assert choose_vae_accelerator(model, adam, dataclasses.replace(config, cpu_kernels="torch"), cpu).accelerator \
        is TORCH
    assert choose_vae_accelerator(model, adam, dataclasses.replace(config, cpu_kernels="reference"),
                                  cpu).accelerator is None
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "cache"))
    native_build.load_library.cache_clear()
    try:
        choice = choose_vae_accelerator(model, adam, config, cpu)
        assert choice.accelerator is TORCH and len(choice.skipped) == 1 and "/nonexistent/cc" in choice.skipped[0]
        with pytest.raises(MnistgenError, match="--cpu-kernels native: the C kernels do not apply: native: "):
            choose_vae_accelerator(model, adam, dataclasses.replace(config, cpu_kernels="native"), cpu)
    finally:
        native_build.load_library.cache_clear()


def test_a_run_records_its_kernels_and_may_switch_them_on_resume(mnist_raw, tmp_path):
    protocol = load_protocol("hw", mnist_raw)
    small = dataclasses.replace(protocol, train_images=protocol.train_images[:500],
                                train_labels=protocol.train_labels[:500], eval_images=protocol.eval_images[:200],
                                eval_labels=protocol.eval_labels[:200])
    config = VAEConfig(epochs=2, device="cpu", data=DataConfig(offline=True))
    straight = RunDir(tmp_path / "native")
    train_vae(config, straight, protocol=small, show_progress=False)
    switched = RunDir(tmp_path / "switched")
    train_vae(dataclasses.replace(config, epochs=1, cpu_kernels="torch"), switched, protocol=small,
              show_progress=False)
    train_vae(config, switched, resume=True, protocol=small, show_progress=False)
    assert [r["trained_by"] for r in straight.read_metrics()] == ["native", "native"]
    assert [r["trained_by"] for r in switched.read_metrics()] == ["torch", "native"]
    mine, theirs = straight.load_checkpoint(), switched.load_checkpoint()
    for key, value in mine["model"].items():
        torch.testing.assert_close(value, theirs["model"][key], rtol=0, atol=2e-5, msg=key)
