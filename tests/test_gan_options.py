"""The GAN's training-only options: ``--ema-decay`` (a moving average of G's weights), ``--betas`` and
``--lr-d`` / ``--lr-g`` (Adam's arguments), R1, ``--translate`` and ``--cutout`` (augmentation of D's inputs),
``--recipe``. SPEC's networks stay as they are.

Small random image sets and one CPU thread keep every run here to a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import native_kernels_build
from hypothesis import given, settings
from hypothesis import strategies as st

from mnistgen.cli import main
from mnistgen.config import (
    GAN_RECIPES,
    GANConfig,
    add_config_arguments,
    config_from_args,
    parse_betas,
    replica_config,
)
from mnistgen.device import seed_everything
from mnistgen.errors import MnistgenError
from mnistgen.evaluate import gan as evaluate
from mnistgen.models import gan as gan_models
from mnistgen.models.gan import Discriminator, Generator
from mnistgen.runs import RunDir
from mnistgen.train import gan as train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# far from 1, so that the average after a few steps lies far from G's weights and from G's start; not 1/2, where
# D and 1 - D swapped would give the same average
DECAY = 0.8
SMALL = GANConfig(epochs=3, batch_size=32, grid_every=2, device="cpu", threads=1, lr_g=1e-3, ema_decay=DECAY)


def images(count: int = 100, seed: int = 0) -> torch.Tensor:
    """Blurry random "digits" in [0, 1]: (count, 1, 28, 28). 100 images, batch 32 -> 3 steps per epoch."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((count, 1, 28, 28), generator=generator).pow(4)


def checkpoint(run: RunDir) -> dict:
    return torch.load(run.checkpoint, weights_only=True)


def stop_after(steps: int):
    """A ``stop`` for train_gan that stops the run after ``steps`` steps (it is polled before each step)."""
    polls = iter(range(1000))
    return lambda: next(polls) == steps


def trained(tmp_path, name: str, config: GANConfig, steps: int | None = None) -> dict:
    """``config``'s run on :func:`images` in ``tmp_path / name``, or its first ``steps`` steps; returns the
    checkpoint."""
    folder = RunDir(tmp_path / name)
    if steps is None:
        train.train_gan(config, images(), folder, show_progress=False)
    else:
        with pytest.raises(train.TrainingInterrupted):
            train.train_gan(config, images(), folder, stop=stop_after(steps), show_progress=False)
    return checkpoint(folder)


def generator_with(weights: dict[str, torch.Tensor]) -> Generator:
    generator = Generator(SMALL.zdim)
    generator.load_state_dict(weights)
    return generator


@pytest.fixture(scope="module")
def averaged(tmp_path_factory):
    """One complete small run with the average: its folder."""
    run = RunDir(tmp_path_factory.mktemp("gan-ema") / "run")
    train.train_gan(SMALL, images(), run, show_progress=False)
    return run


# --------------------------------------------------------------------------- the average


def test_update_ema_is_the_formula_on_every_tensor_of_the_lists():
    draws = torch.Generator().manual_seed(0)
    ema = [torch.randn(3, 4, generator=draws), torch.randn(2, 8, 3, 3, generator=draws)]
    ema[1] = ema[1].contiguous(memory_format=torch.channels_last)  # as G's convolutions on CPU under "torch"
    weights = [torch.randn(3, 4, generator=draws), torch.randn(2, 8, 3, 3, generator=draws)]
    expected = [0.9 * e.double() + 0.1 * w.double() for e, w in zip(ema, weights, strict=True)]
    gan_models.update_ema(ema, weights, 0.9)
    for mine, theirs in zip(ema, expected, strict=True):
        torch.testing.assert_close(mine.double(), theirs, rtol=0, atol=1e-6)


def test_update_ema_with_one_decay_per_stacked_replica_is_each_replicas_own_update():
    draws = torch.Generator().manual_seed(1)
    ema = [torch.randn(2, 3, 4, generator=draws, dtype=torch.float64), torch.randn(2, 5, generator=draws,
                                                                                  dtype=torch.float64)]
    weights = [torch.randn_like(e) for e in ema]
    decay = torch.tensor([0.25, 0.75], dtype=torch.float64)  # (R,)
    expected = [[d * e[r] + (1 - d) * w[r] for e, w in zip(ema, weights, strict=True)]
                for r, d in enumerate(decay.tolist())]
    gan_models.update_ema(ema, weights, decay)
    for r in range(2):
        for mine, theirs in zip((e[r] for e in ema), expected[r], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-15, atol=1e-15)


def test_the_warmup_decay_is_min_of_d_and_1_plus_n_over_10_plus_n_counted_from_the_runs_first_step():
    like = torch.zeros((), dtype=torch.float64)
    config = dataclasses.replace(SMALL, ema_decay=0.5, ema_warmup=True)
    decays = gan_models.ema_decays(config, 7, like)  # the run's steps 7, 8, ...
    assert [float(d) for step in range(4) for d in decays(step)] == [8 / 17, 0.5, 0.5, 0.5]
    assert decays(0)[0].dtype == torch.float64 and decays(0)[0].dim() == 0
    assert gan_models.ema_decays(SMALL, 7, like)(0) == ()  # without the warm-up: the step uses D itself


@pytest.mark.parametrize("warmup", [False, True])
def test_the_average_is_the_formula_by_hand_after_0_to_3_steps_of_a_run(tmp_path, warmup):
    # Stopping the run after k steps leaves G's weights w_k and the average in its checkpoint. By hand:
    # ema_0 = w_0 (G's initial weights), ema_k = d_k * ema_(k-1) + (1 - d_k) * w_k, one update after each G step,
    # d_k = D, or with the warm-up min(D, (1 + n) / (10 + n)) for the run's step n = k - 1.
    config = dataclasses.replace(SMALL, epochs=1, ema_warmup=warmup)  # 3 steps
    decays = [min(DECAY, n / (9 + n)) if warmup else DECAY for n in (1, 2, 3)]
    raw, average = [], []
    for steps in range(4):
        run = RunDir(tmp_path / f"after-{steps}")
        if steps < 3:
            with pytest.raises(train.TrainingInterrupted, match=f"after step {steps} of 3"):
                train.train_gan(config, images(), run, stop=stop_after(steps), show_progress=False)
        else:
            train.train_gan(config, images(), run, show_progress=False)
        state = checkpoint(run)
        raw.append(state["generator"])
        average.append(state["generator_ema"])
    seed_everything(config.seed)
    initial = Generator(config.zdim).state_dict()
    for name in initial:
        assert torch.equal(raw[0][name], initial[name]) and torch.equal(average[0][name], initial[name]), name
        expected = initial[name].double()
        for steps, decay in zip((1, 2, 3), decays, strict=True):
            expected = decay * expected + (1 - decay) * raw[steps][name].double()
            torch.testing.assert_close(average[steps][name].double(), expected, rtol=0, atol=1e-6)
        # the check can fail: G moved, and the average lies measurably between its start and G
        assert (raw[3][name] - average[3][name]).abs().max() > 1e-5, name


def _all_tensors(run: RunDir, keys: tuple[str, ...] = ("generator", "discriminator", "generator_ema")
                 ) -> dict[str, torch.Tensor]:
    state = checkpoint(run)
    return {f"{net}.{key}": value for net in keys for key, value in state[net].items()}


def assert_stacked_replicas_follow_their_separate_runs(config: GANConfig, tmp_path, keys: tuple[str, ...] = (
        "generator", "discriminator", "generator_ema")) -> None:
    """``config``'s replicas (seeds 11 and 12, ``--cpu-kernels reference``) train stacked (vmap over the reference
    step) and, in float64, each ends where its separate run ends, to rounding (the checkpoint's ``keys``)."""
    torch.set_default_dtype(torch.float64)
    try:
        config = dataclasses.replace(config, seeds="11,12", cpu_kernels="reference")
        run = RunDir(tmp_path / "replicas")
        histories = train.train_gan(config, images().double(), run, show_progress=False)
        for seed in (11, 12):
            assert "batched (vmap" in histories[seed][-1]["trained_by"]
            separate = RunDir(tmp_path / f"seed-{seed}")
            train.train_gan(replica_config(config, seed), images().double(), separate, show_progress=False)
            mine, theirs = _all_tensors(run.seed_run(seed), keys), _all_tensors(separate, keys)
            for key in theirs:
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-10, atol=1e-12, msg=key)
    finally:
        torch.set_default_dtype(torch.float32)


def test_an_interrupted_run_resumes_to_the_same_average_bit_for_bit(averaged, tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(train.TrainingInterrupted, match="interrupted in epoch 2 after step 1 of 3"):
        train.train_gan(SMALL, images(), run, stop=stop_after(4), show_progress=False)
    train.train_gan(SMALL, images(), run, resume=True, show_progress=False)
    mine, theirs = _all_tensors(run), _all_tensors(averaged)
    warm = dataclasses.replace(SMALL, ema_warmup=True)  # the warm-up's step count crosses the stop
    runs = [RunDir(tmp_path / name) for name in ("warm", "warm-resumed")]
    train.train_gan(warm, images(), runs[0], show_progress=False)
    with pytest.raises(train.TrainingInterrupted):
        train.train_gan(warm, images(), runs[1], stop=stop_after(4), show_progress=False)
    train.train_gan(warm, images(), runs[1], resume=True, show_progress=False)
    warm_tensors, resumed = _all_tensors(runs[0]), _all_tensors(runs[1])
    assert all(torch.equal(resumed[key], warm_tensors[key]) for key in warm_tensors)
    assert not torch.equal(warm_tensors["generator_ema.conv1.weight"], theirs["generator_ema.conv1.weight"])
    assert mine.keys() == theirs.keys() and any(key.startswith("generator_ema.") for key in mine)
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key
    for raw in (False, True):
        assert averaged.grid_epochs(raw) == [0, 2, 3]
        for epoch in averaged.grid_epochs(raw):
            assert np.array_equal(run.load_grid(epoch, raw), averaged.load_grid(epoch, raw)), (epoch, raw)


@pytest.mark.parametrize("change, flag", [({"ema_decay": 0.9}, "--ema-decay"), ({"ema_decay": None}, "--ema-decay"),
                                          ({"betas": "0.5,0.999"}, "--betas"), ({"recipe": "improved"}, "--recipe"),
                                          ({"r1_gamma": 0.1}, "--r1-gamma"), ({"r1_every": 4}, "--r1-every"),
                                          ({"translate": 1}, "--translate"), ({"cutout": 3}, "--cutout"),
                                          ({"ema_warmup": True}, "--ema-warmup"),
                                          ({"lookahead_steps": 5}, "--lookahead-steps"),
                                          ({"lookahead_alpha": 0.25}, "--lookahead-alpha"),
                                          ({"mmd_weight": 1.0}, "--mmd-weight")])
def test_resume_refuses_a_changed_average_betas_recipe_or_penalty(averaged, change, flag):
    with pytest.raises(MnistgenError, match=f"these differ from its checkpoint .*{flag}"):
        train.train_gan(dataclasses.replace(SMALL, **change), images(), averaged, resume=True, show_progress=False)


# --------------------------------------------------------------------------- grids, samples, figures


def test_grids_are_the_averages_and_the_raw_grids_g_own(averaged):
    state = checkpoint(averaged)
    noise = train.grid_noise(SMALL, torch.device("cpu"))
    with torch.no_grad():
        mean_images = generator_with(state["generator_ema"])(noise)[:, 0].numpy()
        raw_images = generator_with(state["generator"])(noise)[:, 0].numpy()
    assert np.abs(mean_images - raw_images).max() > 1e-4  # they differ: each check below can fail
    np.testing.assert_allclose(averaged.load_grid(3), mean_images, atol=1e-6)
    np.testing.assert_allclose(averaged.load_grid(3, raw=True), raw_images, atol=1e-6)


def test_load_generator_gives_the_average_and_g_on_request(averaged):
    state = checkpoint(averaged)
    for raw, key in ((False, "generator_ema"), (True, "generator")):
        generator, config = evaluate.load_generator(averaged, torch.device("cpu"), raw=raw)
        assert config == SMALL
        for name, value in generator.state_dict().items():
            assert torch.equal(value, state[key][name]), (raw, name)


def test_gan_sample_uses_the_average_says_so_and_raw_on_request(averaged, tmp_path, capsys):
    out, raw_out = tmp_path / "mean.npy", tmp_path / "raw.npy"
    assert main(["gan", "sample", str(averaged.path), "--n", "20", "--out", str(out), "--device", "cpu"]) == 0
    assert "G_ema(z) (G's weights averaged, EMA decay 0.8)" in capsys.readouterr().out
    assert main(["gan", "sample", str(averaged.path), "--n", "20", "--out", str(raw_out), "--device", "cpu",
                 "--raw"]) == 0
    assert "the trained G, not its average" in capsys.readouterr().out
    state = checkpoint(averaged)
    for path, key in ((out, "generator_ema"), (raw_out, "generator")):
        expected = evaluate.sample_images(generator_with(state[key]), 20, SMALL.seed)
        np.testing.assert_allclose(np.load(path), expected, atol=1e-6)
    assert not np.allclose(np.load(out), np.load(raw_out), atol=1e-4)


def test_the_progress_figure_shows_the_averages_grids_and_g_on_request(averaged, monkeypatch):
    from mnistgen.plots import gan as plots

    drawn = []
    real = plots.progress_figure
    monkeypatch.setattr(plots, "progress_figure",
                        lambda epochs, grids, side, generator: drawn.append((grids, generator)) or real(
                            epochs, grids, side, generator))
    evaluate.write_figures(averaged, [0, 3])
    evaluate.write_figures(averaged, [0, 3], raw=True)
    (mean_grids, mean_title), (raw_grids, raw_title) = drawn
    assert "EMA decay 0.8" in mean_title and "not its average" in raw_title
    assert np.array_equal(mean_grids[1], averaged.load_grid(3))
    assert np.array_equal(raw_grids[1], averaged.load_grid(3, raw=True))


def test_a_run_without_the_average_is_as_before(tmp_path):
    run = RunDir(tmp_path / "run")
    train.train_gan(dataclasses.replace(SMALL, epochs=1, ema_decay=None), images(), run, show_progress=False)
    assert "generator_ema" not in checkpoint(run) and not (run.grids / "raw").exists()
    generator, _ = evaluate.load_generator(run, torch.device("cpu"), raw=False)
    assert all(torch.equal(v, checkpoint(run)["generator"][k]) for k, v in generator.state_dict().items())
    assert evaluate.generator_label(GANConfig()) == "G(z)"


# --------------------------------------------------------------------------- the R1 penalty


def float64_discriminator(seed: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator().double()


def test_r1_penalty_is_the_mean_squared_input_gradient_and_its_parameter_gradient_is_right():
    discriminator, real = float64_discriminator(), images(5).double()
    penalty = gan_models.r1_penalty(discriminator, real)
    # independently: each image's gradient by torch.func, no autograd.grad with create_graph
    params = dict(discriminator.named_parameters())

    def penalty_of(params):
        logit = lambda x: torch.func.functional_call(discriminator, params, (x[None],))[0, 0]  # noqa: E731
        gradients = torch.func.vmap(torch.func.grad(logit))(real)  # (5, 1, 28, 28)
        return gradients.square().sum(dim=(1, 2, 3)).mean()

    torch.testing.assert_close(penalty, penalty_of(params), rtol=1e-12, atol=0)
    assert penalty > 0
    # its gradient in D's parameters against a central difference along a random direction of all of them
    gradients = torch.autograd.grad(penalty, list(params.values()), materialize_grads=True)  # the last bias: 0
    draws = torch.Generator().manual_seed(1)
    direction = {name: torch.randn(value.shape, generator=draws, dtype=torch.float64) for name, value in params.items()}
    step = 1e-6
    with torch.no_grad():
        moved = [penalty_of({name: value + sign * step * direction[name] for name, value in params.items()})
                 for sign in (1, -1)]
    slope = (moved[0] - moved[1]) / (2 * step)
    along = sum((gradient * direction[name]).sum() for gradient, name in zip(gradients, params, strict=True))
    torch.testing.assert_close(along, slope, rtol=1e-6, atol=0)


def one_step(r1_weight: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """D's and G's weights after one float64 step (plain SGD, lr 1: each weight less its gradient)."""
    torch.manual_seed(0)
    generator, discriminator = Generator(SMALL.zdim).double(), Discriminator().double()
    optimizers = [torch.optim.SGD(module.parameters(), lr=1.0) for module in (generator, discriminator)]
    real, z = images(6).double(), torch.rand(6, SMALL.zdim, generator=torch.Generator().manual_seed(2)).double()
    gan_models.train_step(generator, discriminator, *optimizers, real, z, r1_weight=r1_weight)
    return generator.state_dict(), discriminator.state_dict()


def test_the_step_adds_the_weighted_penalty_to_ds_loss_and_a_zero_weight_changes_nothing():
    no_r1, zero = one_step(None), one_step(torch.zeros((), dtype=torch.float64))
    weighted = one_step(torch.tensor(0.3, dtype=torch.float64))
    for network in (0, 1):  # a zero weight: the step without the penalty, bit for bit
        assert all(torch.equal(zero[network][name], value) for name, value in no_r1[network].items())
    # by hand: D's weights move by 0.3 times the penalty's gradient more (at D's start, on the real batch)
    torch.manual_seed(0)
    Generator(SMALL.zdim)  # the draws before D's in one_step
    discriminator = Discriminator().double()
    penalty = gan_models.r1_penalty(discriminator, images(6).double())
    gradients = torch.autograd.grad(penalty, list(discriminator.parameters()), materialize_grads=True)
    for (name, value), gradient in zip(no_r1[1].items(), gradients, strict=True):
        # (a ReLU network's input gradient is piecewise constant in its biases: they get none from the penalty)
        assert name.endswith("bias") or not torch.equal(weighted[1][name], value), name
        torch.testing.assert_close(weighted[1][name], value - 0.3 * gradient, rtol=1e-10, atol=1e-12)


def test_the_lazy_penalty_weighs_every_kth_step_of_the_run_by_k():
    config = dataclasses.replace(SMALL, r1_gamma=0.5, r1_every=3)
    weights = gan_models.r1_weights(config, 7, torch.zeros((), dtype=torch.float64))  # steps 7, 8, ... of the run
    assert [float(w) for step in range(6) for w in weights(step)] == [0, 0, 0.75, 0, 0, 0.75]  # 9 and 12: 0.5/2*3
    assert weights(2)[0].dtype == torch.float64
    recipe = dataclasses.replace(SMALL, r1_gamma=0.01, r1_every=16)  # 0.08: no float32 rounding on the way
    assert float(gan_models.r1_weights(recipe, 0, torch.zeros((), dtype=torch.float64))(0)[0]) == 0.01 / 2 * 16
    assert gan_models.r1_weights(SMALL, 7, torch.zeros(()))(2) == ()  # without R1: no input


# 3 steps an epoch: the penalized steps cross epochs; D's rate high enough for the penalty to show in 9 steps
R1 = dataclasses.replace(SMALL, r1_gamma=50.0, r1_every=2, lr_d=0.01)


def input_gradient_norm(run: RunDir) -> float:
    """mean ||d D(x) / dx||^2 of the run's D over the training images."""
    discriminator = Discriminator()
    discriminator.load_state_dict(checkpoint(run)["discriminator"])
    return float(gan_models.r1_penalty(discriminator, images()).detach())


@pytest.mark.parametrize("cpu_kernels", ["reference", "auto"])
def test_r1_keeps_d_smooth_is_recorded_and_resumes_bit_for_bit(tmp_path, monkeypatch, cpu_kernels):
    config = dataclasses.replace(R1, cpu_kernels=cpu_kernels)
    runs = {name: RunDir(tmp_path / name) for name in ("plain", "r1", "resumed")}
    train.train_gan(dataclasses.replace(config, r1_gamma=None), images(), runs["plain"], show_progress=False)
    penalized, penalty = [], gan_models.r1_penalty
    monkeypatch.setattr(gan_models, "r1_penalty", lambda *args: penalized.append(1) or penalty(*args))
    train.train_gan(config, images(), runs["r1"], show_progress=False)
    monkeypatch.undo()
    if cpu_kernels == "reference":  # no probe: steps 0, 2, 4, 6, 8 of the run (3 epochs of 3), counted across epochs
        assert len(penalized) == 5
    else:  # R1 leaves SPEC's networks their accelerators
        fastest = "native" if native_kernels_build() else "torch"
        assert runs["r1"].read_metrics()[-1]["trained_by"] == f"G {fastest}, D {fastest}"
    assert input_gradient_norm(runs["r1"]) < input_gradient_norm(runs["plain"]) / 2
    saved = json.loads((runs["r1"].path / "config.json").read_text())["config"]
    assert (saved["r1_gamma"], saved["r1_every"]) == (50.0, 2)
    with pytest.raises(train.TrainingInterrupted, match="interrupted in epoch 2 after step 2 of 3"):
        train.train_gan(config, images(), runs["resumed"], stop=stop_after(5), show_progress=False)
    train.train_gan(config, images(), runs["resumed"], resume=True, show_progress=False)
    mine, theirs = _all_tensors(runs["resumed"]), _all_tensors(runs["r1"])
    assert all(torch.equal(mine[key], theirs[key]) for key in theirs)


def test_replicas_with_r1_train_one_after_another_each_as_its_own_run(tmp_path):
    config = dataclasses.replace(R1, epochs=1, seeds="11,12", cpu_kernels="reference")
    notes, run = [], RunDir(tmp_path / "replicas")
    train.train_gan(config, images(), run, show_progress=False, say=notes.append)
    assert any("not stacked: the stacked step fails" in note for note in notes), notes  # vmap: a data-dependent if
    for seed in (11, 12):
        separate = RunDir(tmp_path / f"seed-{seed}")
        train.train_gan(replica_config(config, seed), images(), separate, show_progress=False)
        mine, theirs = _all_tensors(run.seed_run(seed)), _all_tensors(separate)
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs)


def test_a_constant_d_is_said_at_each_epoch_and_a_living_one_is_not(tmp_path, monkeypatch):
    notes = []
    train.train_gan(dataclasses.replace(SMALL, epochs=1), images(), RunDir(tmp_path / "alive"), show_progress=False,
                    say=notes.append)
    assert not any("constant" in note for note in notes), notes
    init = gan_models.init_spec_

    def dead_relus(module):  # D's last ReLU is 0 for every image: its logit is its last bias, the same for all
        init(module)
        if isinstance(module, Discriminator):
            torch.nn.init.constant_(module.conv3.bias, -1e4)
        return module

    monkeypatch.setattr(gan_models, "init_spec_", dead_relus)
    notes = []
    train.train_gan(dataclasses.replace(SMALL, epochs=2, seeds="11,12"), images(), RunDir(tmp_path / "dead"),
                    show_progress=False, say=notes.append)
    said = [note for note in notes if "constant" in note]
    assert [note.split(":")[2].strip() for note in said] == ["epoch 1", "epoch 1", "epoch 2", "epoch 2"], notes
    assert "seed 11's D gave real and generated images the same probability, 0.500, at every step" in said[0]


# --------------------------------------------------------------------------- Adam's arguments


@pytest.mark.parametrize("cpu_kernels", ["reference", "auto"])
def test_betas_and_each_learning_rate_reach_their_networks_optimizer(tmp_path, cpu_kernels):
    config = dataclasses.replace(SMALL, epochs=1, lr_d=4e-4, lr_g=1e-4, betas="0.5,0.99", cpu_kernels=cpu_kernels)
    run = RunDir(tmp_path / "run")
    train.train_gan(config, images(), run, show_progress=False)
    trained_by = run.read_metrics()[-1]["trained_by"]
    if cpu_kernels == "auto":  # the accelerated path is what this test exercises
        fastest = "native" if native_kernels_build() else "torch"
        assert trained_by == f"G {fastest}, D {fastest}"
    else:
        assert trained_by == "G reference, D reference"
    state = checkpoint(run)
    for optimizer, network, lr in (("optimizer_g", "generator", 1e-4), ("optimizer_d", "discriminator", 4e-4)):
        (group,) = state[optimizer]["param_groups"]
        assert group["lr"] == lr and tuple(group["betas"]) == (0.5, 0.99), optimizer
        # the optimizer holds that network's parameters: its moments have their shapes, in order
        shapes = [tuple(state[optimizer]["state"][index]["exp_avg"].shape) for index in group["params"]]
        assert shapes == [tuple(value.shape) for value in state[network].values()], optimizer


def test_parse_betas():
    assert parse_betas("0.5,0.999") == (0.5, 0.999) and parse_betas(" 0 , 0.9") == (0.0, 0.9)
    assert parse_betas(GANConfig().betas) == (0.9, 0.999)  # PyTorch's, as SPEC §3
    for bad in ("0.5", "0.5,0.9,0.99", "a,b", "1,0.9", "0.5,1", "-0.1,0.9", "nan,0.9", "0.5,inf", ""):
        with pytest.raises(MnistgenError):
            parse_betas(bad)


# --------------------------------------------------------------------------- the recipe


def parsed(*argv: str) -> GANConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, GANConfig)
    return config_from_args(GANConfig, parser.parse_args(list(argv)))


def test_recipe_spec_is_exactly_todays_defaults():
    spec = GANConfig()
    assert (spec.lr_d, spec.lr_g, spec.betas, spec.ema_decay, spec.recipe) == (2e-4, 2e-4, "0.9,0.999", None, "spec")
    assert {name: getattr(spec, name) for name in GAN_RECIPES["spec"]} == GAN_RECIPES["spec"]
    assert parsed("--recipe", "spec") == parsed() == spec
    assert GAN_RECIPES["improved"].keys() == GAN_RECIPES["spec"].keys()


def test_recipe_improved_fills_the_options_not_given():
    config = parsed("--recipe", "improved", "--lr-g", "5e-4")
    assert GAN_RECIPES["improved"]["lr_g"] != 5e-4
    assert config.recipe == "improved" and config.lr_g == 5e-4  # a flag given wins
    assert {name: getattr(config, name) for name in GAN_RECIPES["improved"] if name != "lr_g"} == {
        name: value for name, value in GAN_RECIPES["improved"].items() if name != "lr_g"}
    assert config != dataclasses.replace(GANConfig(), recipe="improved", lr_g=5e-4)  # it changed other fields


def test_off_turns_off_a_recipes_average_or_penalty_and_nothing_else():
    config = parsed("--recipe", "improved", "--r1-gamma", "off", "--ema-decay", "Off")
    assert (config.r1_gamma, config.ema_decay) == (None, None)
    assert config.ema_warmup and gan_models.ema_decays(config, 0, torch.zeros(()))(0) == ()  # no average to warm up
    assert config.lr_d == GAN_RECIPES["improved"]["lr_d"] and parsed("--recipe", "improved").r1_gamma is not None
    for flags in (["--lr-d", "off"], ["--r1-every", "off"], ["--seeds", "off"]):  # no "off" where None is no default
        with pytest.raises((SystemExit, MnistgenError)):  # argparse's refusal, or --seeds' own check
            parsed(*flags)


def test_recipe_improved_is_recorded_in_config_json(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["gan", "train", "--dataset", "mnist-sample", "--epochs", "1", "--grid-every", "1", "--device", "cpu",
            "--threads", "1", "--out", str(run), "--recipe", "improved", "--lr-d", "3e-4"]
    assert main(argv) == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["recipe"] == "improved" and saved["lr_d"] == 3e-4
    assert {name: saved[name] for name in GAN_RECIPES["improved"] if name != "lr_d"} == {
        name: value for name, value in GAN_RECIPES["improved"].items() if name != "lr_d"}
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ("generator_ema" in state) == (GAN_RECIPES["improved"]["ema_decay"] is not None)
    assert tuple(state["optimizer_g"]["param_groups"][0]["betas"]) == parse_betas(GAN_RECIPES["improved"]["betas"])
    # the resumed run keeps the recipe's values (from config.json), not the defaults
    assert main(["gan", "train", "--out", str(run), "--resume", "--epochs", "2", "--threads", "1"]) == 0
    assert json.loads((run / "config.json").read_text())["config"] == {**saved, "epochs": 2}


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("flags, message", [
    (["--betas", "0.5"], "--betas must be two comma-separated numbers B1,B2"),
    (["--betas", "0.5,0.9,0.99"], "--betas must be two comma-separated numbers B1,B2"),
    (["--betas", "0.5,x"], "--betas must be two comma-separated numbers B1,B2"),
    (["--betas", "0.5,1"], "--betas: each of B1,B2 must be in [0, 1)"),
    (["--betas=-0.5,0.9"], "--betas: each of B1,B2 must be in [0, 1)"),
    (["--ema-decay", "1"], "--ema-decay must be in (0, 1)"),
    (["--ema-decay", "0"], "--ema-decay must be in (0, 1)"),
    (["--ema-decay", "nan"], "--ema-decay must be in (0, 1)"),
    (["--lr-g", "0"], "--lr-g must be a positive number"),
    (["--lookahead-steps", "0"], "--lookahead-steps must be"),
    (["--lookahead-alpha", "0"], "--lookahead-alpha must be in (0, 1]"),
    (["--lookahead-alpha", "1.5"], "--lookahead-alpha must be in (0, 1]"),
    (["--mmd-weight", "0"], "--mmd-weight must be a positive number"),
    (["--mmd-weight", "-1"], "--mmd-weight must be a positive number"),
])
def test_bad_values_are_one_line_errors_with_exit_2(tmp_path, capsys, flags, message):
    assert main(["gan", "train", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_an_unknown_recipe_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["gan", "train", "--out", str(tmp_path / "run"), "--recipe", "best"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'best'" in err and err.count("\n") == 1, err


# --------------------------------------------------------------------------- augmentation of D's inputs


def augmented_by_hand(images: np.ndarray, plan: np.ndarray, cutout: int) -> np.ndarray:
    """The augmentation pixel by pixel: images (B, 1, 28, 28), plan (B, 4) -> out[a, b] = images[a - dy, b - dx]
    (0 outside), 0 in the cutout's square."""
    out = np.zeros_like(images)
    for k, (dy, dx, top, left) in enumerate(plan):
        for a in range(28):
            for b in range(28):
                inside = 0 <= a - dy < 28 and 0 <= b - dx < 28
                cut = cutout and top <= a < top + cutout and left <= b < left + cutout
                out[k, 0, a, b] = images[k, 0, a - dy, b - dx] if inside and not cut else 0.0
    return out


@given(translate=st.integers(0, 27), cutout=st.integers(0, 28), batch=st.integers(1, 3), seed=st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_the_augmentation_is_the_shift_then_the_square_pixel_by_pixel(translate, cutout, batch, seed):
    augmentation = gan_models.Augmentation(translate, cutout)
    draws = torch.Generator().manual_seed(seed)
    plan = augmentation.draw(batch, draws)  # (B, 3, 4)
    assert plan.shape == (batch, 3, 4) and plan.dtype == torch.long
    assert plan[..., :2].abs().max() <= translate
    if cutout:  # the square's centre is a pixel of the image
        assert (plan[..., 2:] + cutout // 2).min() >= 0 and (plan[..., 2:] + cutout // 2).max() <= 27
    else:
        assert (plan[..., 2:] == 0).all()
    x = torch.rand(batch, 1, 28, 28, generator=draws, dtype=torch.float64)
    for call in range(3):
        out = augmentation(x, plan[:, call])
        assert np.array_equal(out.numpy(), augmented_by_hand(x.numpy(), plan[:, call].numpy(), cutout))


def test_the_augmentation_takes_leading_replica_dimensions_and_is_differentiable():
    augmentation, draws = gan_models.Augmentation(3, 7), torch.Generator().manual_seed(5)
    plan = torch.stack([augmentation.draw(4, draws) for _ in range(2)])[..., 1, :]  # (R=2, B=4, 4)
    x = torch.rand(2, 4, 1, 28, 28, generator=draws, dtype=torch.float64, requires_grad=True)
    out = augmentation(x, plan)
    for r in range(2):  # each replica's images by its own plan
        assert torch.equal(out[r], augmentation(x[r], plan[r]))
    # the gradient: each pixel of the output hands its gradient back to the pixel it came from, once
    weights = torch.rand(2, 4, 1, 28, 28, generator=draws, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((out * weights).sum(), x)
    by_hand = np.zeros((4, 1, 28, 28))
    kept = augmented_by_hand(np.ones((4, 1, 28, 28)), plan[1].numpy(), 7)  # 1 where a pixel is kept
    for k, (dy, dx, _, _) in enumerate(plan[1].tolist()):
        for a in range(28):
            for b in range(28):
                if kept[k, 0, a, b]:
                    by_hand[k, 0, a - dy, b - dx] += weights[1, k, 0, a, b].item()
    assert np.array_equal(gradient[1].numpy(), by_hand)
    two = x[:, :2].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda images: augmentation(images, plan[:, :2]), (two,))


def test_the_step_gives_each_of_ds_three_batches_its_own_plan_and_real_and_generated_the_same_augmentation():
    torch.manual_seed(0)
    generator, discriminator = Generator(SMALL.zdim).double(), Discriminator().double()
    optimizers = [torch.optim.SGD(module.parameters(), lr=1.0) for module in (generator, discriminator)]
    draws = torch.Generator().manual_seed(3)
    real, z = images(6).double(), torch.rand(6, SMALL.zdim, generator=draws).double()
    augmentation = gan_models.Augmentation(2, 9)
    plan = augmentation.draw(6, draws)
    seen, fake = [], generator(z).detach()
    calls = gan_models.GANCalls(
        generate=gan_models.REFERENCE.generate,
        discriminate_both=lambda d, a, b: (seen.extend([a.detach(), b.detach()]), (d(a), d(b)))[1],
        discriminate=lambda d, a: (seen.append(a.detach()), d(a))[1])
    gan_models.train_step(generator, discriminator, *optimizers, real, z, calls, augment=(augmentation, plan))
    for call, batch in enumerate((real, fake, fake)):
        assert torch.equal(seen[call], augmentation(batch, plan[:, call])), call
    assert not torch.equal(seen[1], seen[2])  # the two looks at the generated images: each its own draw


AUGMENTED = dataclasses.replace(SMALL, translate=2, cutout=6)


@pytest.mark.parametrize("cpu_kernels", ["reference", "auto"])
def test_augmentation_changes_the_training_keeps_the_accelerators_and_resumes_bit_for_bit(tmp_path, cpu_kernels):
    config = dataclasses.replace(AUGMENTED, cpu_kernels=cpu_kernels)
    runs = {name: RunDir(tmp_path / name) for name in ("plain", "augmented", "resumed")}
    train.train_gan(dataclasses.replace(config, translate=0, cutout=0), images(), runs["plain"], show_progress=False)
    train.train_gan(config, images(), runs["augmented"], show_progress=False)
    if cpu_kernels == "auto":  # the augmentation is outside D: SPEC's networks keep their accelerators
        fastest = "native" if native_kernels_build() else "torch"
        assert runs["augmented"].read_metrics()[-1]["trained_by"] == f"G {fastest}, D {fastest}"
    mine, plain = _all_tensors(runs["augmented"]), _all_tensors(runs["plain"])
    assert not torch.equal(mine["discriminator.linear.weight"], plain["discriminator.linear.weight"])
    saved = json.loads((runs["augmented"].path / "config.json").read_text())["config"]
    assert (saved["translate"], saved["cutout"]) == (2, 6)
    with pytest.raises(train.TrainingInterrupted, match="interrupted in epoch 2 after step 2 of 3"):
        train.train_gan(config, images(), runs["resumed"], stop=stop_after(5), show_progress=False)
    train.train_gan(config, images(), runs["resumed"], resume=True, show_progress=False)
    resumed = _all_tensors(runs["resumed"])
    assert all(torch.equal(resumed[key], mine[key]) for key in mine)


def test_the_augmentations_draws_leave_the_noise_z_as_it_was(tmp_path, monkeypatch):
    config = dataclasses.replace(AUGMENTED, epochs=1)
    noises, sample = [], train.sample_uniform_noise
    for name, run_config in (("plain", dataclasses.replace(config, translate=0, cutout=0)), ("augmented", config)):
        drawn: list[torch.Tensor] = []
        monkeypatch.setattr(train, "sample_uniform_noise",
                            lambda *args, drawn=drawn: drawn.append(sample(*args)) or drawn[-1])
        train.train_gan(run_config, images(), RunDir(tmp_path / name), show_progress=False)
        noises.append(torch.cat(drawn))
    assert len(noises[0]) == 64 + 3 * 32 and torch.equal(noises[0], noises[1])  # the grid's noise, 3 steps'


def test_replicas_with_augmentation_take_each_seeds_own_draws(tmp_path):
    config = dataclasses.replace(AUGMENTED, epochs=1, seeds="11,12")
    run = RunDir(tmp_path / "replicas")
    train.train_gan(config, images(), run, show_progress=False)
    for seed in (11, 12):
        separate = RunDir(tmp_path / f"seed-{seed}")
        train.train_gan(replica_config(config, seed), images(), separate, show_progress=False)
        mine, theirs = _all_tensors(run.seed_run(seed)), _all_tensors(separate)
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs)


def test_stacked_replicas_with_the_warmup_and_augmentation_follow_their_separate_runs(tmp_path):
    """The stacked engine (vmap over the reference step) gives each replica its own decay and plans: in float64 each
    replica is its separate run to rounding."""
    assert_stacked_replicas_follow_their_separate_runs(dataclasses.replace(AUGMENTED, epochs=1, ema_warmup=True),
                                                        tmp_path)
