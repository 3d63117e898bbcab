"""The GAN's training loop: what each step touches, the run folder, exact resume, the NaN guard.

Small random image sets and one CPU thread keep every run here to a few seconds.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import native_kernels_build

from mnistgen.config import GANConfig
from mnistgen.device import seed_everything
from mnistgen.distributions import sample_uniform_noise
from mnistgen.errors import MnistgenError, NonFiniteLossError
from mnistgen.evaluate.gan import load_generator, sample_images, write_figures
from mnistgen.models import gan as gan_models
from mnistgen.models.gan import Discriminator, Generator
from mnistgen.runs import GRID_PADDING, GRID_PNG_SCALE, RunDir
from mnistgen.train import gan as train
from mnistgen.train.common import match_state_layouts

SMALL = GANConfig(epochs=3, batch_size=32, grid_every=2, device="cpu", threads=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(count: int = 100, seed: int = 0) -> torch.Tensor:
    """Blurry random "digits" in [0, 1]: (count, 1, 28, 28). 100 images, batch 32 -> 3 steps per epoch."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((count, 1, 28, 28), generator=generator).pow(4)


def parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def models_and_optimizers():
    seed_everything(SMALL.seed)
    generator, discriminator = gan_models.build_models(SMALL, torch.device("cpu"))
    optimizer_g, optimizer_d = gan_models.make_optimizers(generator, discriminator, SMALL)
    return generator, discriminator, optimizer_g, optimizer_d


# --------------------------------------------------------------------------- one step


def test_train_step_is_the_recipe_written_out_d_step_first_on_the_same_z():
    # The step by hand, with the modules' own calls: G(z) once; D's step on real and G(z) detached; G's step
    # on -log D(G(z)) with the updated D. train_step must give the same losses and weights.
    first, second = models_and_optimizers(), models_and_optimizers()
    real, z = images()[:32], sample_uniform_noise(32, 64, torch.Generator().manual_seed(3))
    stats = gan_models.train_step(*first, real, z)
    generator, discriminator, optimizer_g, optimizer_d = second
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    fake = generator(z)
    real_logits, fake_logits = discriminator(real), discriminator(fake.detach())
    d_loss = bce(real_logits, torch.ones(32, 1)) + bce(fake_logits, torch.zeros(32, 1))
    optimizer_d.zero_grad()
    d_loss.backward()
    assert all(p.grad is None for p in generator.parameters())  # D's loss never reached G
    d_gradients = [p.grad.clone() for p in discriminator.parameters()]
    optimizer_d.step()
    g_loss = bce(discriminator(fake), torch.ones(32, 1))
    optimizer_g.zero_grad()
    g_loss.backward()
    optimizer_g.step()
    expected = [d_loss.item(), g_loss.item(), torch.sigmoid(real_logits).mean().item(),
                torch.sigmoid(fake_logits).mean().item()]
    assert stats.tolist() == pytest.approx(expected, rel=1e-6)
    for a, b in zip(list(first[0].parameters()) + list(first[1].parameters()),
                    list(generator.parameters()) + list(discriminator.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    # G's step left D's gradients as D's step made them (it computes none for D)
    for mine, theirs in zip(first[1].parameters(), d_gradients, strict=True):
        torch.testing.assert_close(mine.grad, theirs, rtol=0, atol=1e-7)
    # and G's loss is measured with the updated D: with the old D it differs
    with torch.no_grad():
        untouched = models_and_optimizers()[1]
        old_g_loss = bce(untouched(fake), torch.ones(32, 1)).item()
    assert old_g_loss != pytest.approx(stats[1].item(), rel=1e-6)


def test_noise_is_uniform_on_minus_one_one():
    z = sample_uniform_noise(20000, 64, torch.Generator().manual_seed(0))
    assert z.shape == (20000, 64) and z.min() >= -1.0 and z.max() < 1.0
    assert z.mean().item() == pytest.approx(0.0, abs=0.01)
    assert z.var().item() == pytest.approx(1.0 / 3.0, rel=0.01)  # Var U[-1, 1] = (b - a)^2 / 12


# --------------------------------------------------------------------------- the run folder


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One complete small run: its folder and history."""
    run = RunDir(tmp_path_factory.mktemp("gan") / "run")
    history = train.train_gan(SMALL, images(), run, provenance={"dataset": "random"}, show_progress=False)
    return run, history


def test_run_folder_contents(uninterrupted):
    run, history = uninterrupted
    saved = json.loads(run.config.read_text())
    assert saved["kind"] == "gan" and saved["config"]["batch_size"] == 32 and "environment" in saved
    assert json.loads(run.data.read_text()) == {"dataset": "random"}
    records = run.read_metrics()
    assert records == json.loads(json.dumps(history))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(set(r) == {"epoch", "d_loss", "g_loss", "d_real", "d_fake", "seconds", "trained_by"} for r in records)
    fastest = "native" if native_kernels_build() else "torch"  # --cpu-kernels auto: what this machine has
    assert all(r["trained_by"] == f"G {fastest}, D {fastest}" for r in records)
    assert all(0.0 < r["d_real"] < 1.0 and 0.0 < r["d_fake"] < 1.0 and r["seconds"] > 0 for r in records)
    assert run.grid_epochs() == [0, 2, 3]  # epoch 0, every 2 epochs, and the last
    grid = np.load(run.path / "grids" / "epoch_003.npy")
    assert grid.shape == (64, 28, 28) and grid.dtype == np.float32 and 0.0 < grid.min() and grid.max() < 1.0
    from PIL import Image

    with Image.open(run.path / "grids" / "epoch_000.png") as picture:
        side = (8 * 28 + 9 * GRID_PADDING) * GRID_PNG_SCALE
        assert picture.size == (side, side) and picture.mode == "L"


def test_grids_show_the_fixed_noise(uninterrupted):
    run, _ = uninterrupted
    state = torch.load(run.checkpoint, weights_only=True)
    generator = Generator(SMALL.zdim)
    generator.load_state_dict(state["generator"])
    with torch.no_grad():
        expected = generator(train.grid_noise(SMALL, torch.device("cpu")))[:, 0].numpy()
    np.testing.assert_allclose(np.load(run.path / "grids" / "epoch_003.npy"), expected, atol=1e-6)


def test_checkpoint_is_weights_only_and_complete(uninterrupted):
    run, _ = uninterrupted
    state = torch.load(run.checkpoint, weights_only=True)
    assert state["epoch"] == 3 and state["step"] == 0
    assert {"generator", "discriminator", "optimizer_g", "optimizer_d", "generators", "order_state"} <= set(state)


def _weights(run: RunDir) -> dict[str, torch.Tensor]:
    state = torch.load(run.checkpoint, weights_only=True)
    return {f"{net}.{k}": v for net in ("generator", "discriminator") for k, v in state[net].items()}


def _assert_same_run(run: RunDir, reference: RunDir) -> None:
    mine, theirs = _weights(run), _weights(reference)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(run.read_metrics()) == strip(reference.read_metrics())
    for epoch in reference.grid_epochs():
        assert np.array_equal(np.load(run.path / "grids" / f"epoch_{epoch:03d}.npy"),
                              np.load(reference.path / "grids" / f"epoch_{epoch:03d}.npy"))


def test_resume_between_epochs_ends_with_the_same_weights(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    run = RunDir(tmp_path / "run")
    train.train_gan(dataclasses.replace(SMALL, epochs=1), images(), run, show_progress=False)
    history = train.train_gan(SMALL, images(), run, resume=True, show_progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    _assert_same_run(run, reference)


def test_interrupted_mid_epoch_resumes_to_the_same_weights(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    run = RunDir(tmp_path / "run")
    polls = iter(range(100))
    stop_at_fifth_step = lambda: next(polls) == 4  # noqa: E731 - the 5th poll: epoch 2, before its 2nd step
    with pytest.raises(train.TrainingInterrupted, match="interrupted in epoch 2 after step 1 of 3"):
        train.train_gan(SMALL, images(), run, stop=stop_at_fifth_step, show_progress=False)
    state = torch.load(run.checkpoint, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    train.train_gan(SMALL, images(), run, resume=True, show_progress=False)
    _assert_same_run(run, reference)


def test_resume_refuses_changed_settings_and_missing_runs(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    with pytest.raises(MnistgenError, match="already holds a run"):
        train.train_gan(SMALL, images(), reference)
    with pytest.raises(MnistgenError, match="--lr-g"):
        train.train_gan(dataclasses.replace(SMALL, lr_g=1e-3), images(), reference, resume=True)
    with pytest.raises(MnistgenError, match="nothing to resume"):
        train.train_gan(SMALL, images(), RunDir(tmp_path / "empty"), resume=True)


def provenance(content: str, folder: str, **more) -> dict:
    return {"dataset": "mnist", "title": "MNIST", "folder": folder, **more,
            "files": [{"role": "train_images", "content_md5": content}, {"role": "test_images", "content_md5": "t"}]}


def test_a_resume_on_other_data_is_refused_before_a_step_and_a_moved_folder_is_not(tmp_path):
    run = RunDir(tmp_path / "run")
    trained_on = provenance("a", "/data/mnist")
    train.train_gan(dataclasses.replace(SMALL, epochs=1), images(), run, provenance=trained_on, show_progress=False)
    before = _weights(run)
    sample = provenance("b", "/assets/mnist-sample", title="MNIST 5,000-digit sample")
    with pytest.raises(MnistgenError, match=r"was trained on MNIST from /data/mnist, but the data found now are "
                                            r"MNIST 5,000-digit sample from /assets/mnist-sample: resume it with the "
                                            r"same files"):
        train.train_gan(SMALL, images(), run, resume=True, provenance=sample, show_progress=False)
    assert json.loads(run.data.read_text()) == trained_on  # nothing written, nothing trained
    assert all(torch.equal(value, before[key]) for key, value in _weights(run).items())
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    moved = provenance("a", "/elsewhere/mnist")  # the same files in another folder: it continues
    train.train_gan(dataclasses.replace(SMALL, epochs=2), images(), run, resume=True, provenance=moved,
                    show_progress=False)
    assert json.loads(run.data.read_text()) == moved and [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_bad_images_and_batch_size_are_one_line_errors(tmp_path):
    with pytest.raises(MnistgenError, match=r"\(N, 1, 28, 28\)"):
        train.train_gan(SMALL, torch.rand(10, 784), RunDir(tmp_path / "a"))
    with pytest.raises(MnistgenError, match="more than the 10 training images"):
        train.train_gan(SMALL, torch.rand(10, 1, 28, 28), RunDir(tmp_path / "b"))


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    poisoned = images()
    poisoned[:] = float("nan")
    run = RunDir(tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="d_loss became nan at epoch 1, step 1"):
        train.train_gan(SMALL, poisoned, run, show_progress=False)
    assert torch.load(run.checkpoint, weights_only=True)["epoch"] == 0  # the state before training
    assert run.read_metrics() == []


def test_figures(uninterrupted):
    run, _ = uninterrupted
    written = write_figures(run, [0, 3])
    assert [p.name for p in written] == ["progress.png", "training.png"]
    from PIL import Image

    with Image.open(written[0]) as picture:
        assert picture.width > 2 * picture.height * 0.8  # two grids side by side
    with pytest.raises(MnistgenError, match=r"no saved grid for epoch\(s\) 1; grids exist for epochs 0, 2, 3"):
        write_figures(run, [0, 1])


def test_sample_images_are_reproducible_and_in_range(uninterrupted):
    run, _ = uninterrupted
    generator, config = load_generator(run, torch.device("cpu"))
    first = sample_images(generator, 1500, seed=5)  # more than one batch of generation
    assert first.shape == (1500, 28, 28) and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert np.array_equal(first, sample_images(generator, 1500, seed=5))
    assert not np.array_equal(first[:10], sample_images(generator, 10, seed=6))
    np.testing.assert_allclose(first[:10], sample_images(generator, 10, seed=5), atol=1e-6)  # same z
    assert config == SMALL
    assert isinstance(generator, Generator) and not isinstance(generator, Discriminator)


def test_resume_may_switch_accelerators_and_weight_layouts(uninterrupted, tmp_path):
    # --cpu-kernels torch keeps the weights channels-last on CPU, the reference path in PyTorch's default layout;
    # Adam's moments come back from the checkpoint in the layout they were saved in, and a fused Adam that read
    # them in another layout than their parameter would mix their elements up (restore() re-lays them out).
    first = dataclasses.replace(SMALL, epochs=1, cpu_kernels="torch")
    run = RunDir(tmp_path / "run")
    train.train_gan(first, images(), run, show_progress=False)
    saved = torch.load(run.checkpoint, weights_only=True)["optimizer_d"]["state"][2]["exp_avg"]  # conv2.weight's
    assert saved.is_contiguous(memory_format=torch.channels_last) and not saved.is_contiguous()
    train.train_gan(dataclasses.replace(SMALL, cpu_kernels="reference"), images(), run, resume=True,
                    show_progress=False)
    assert [r["trained_by"] for r in run.read_metrics()] == ["G torch, D torch"] + ["G reference, D reference"] * 2
    straight = RunDir(tmp_path / "straight")
    train.train_gan(dataclasses.replace(SMALL, cpu_kernels="reference"), images(), straight, show_progress=False)
    mine, theirs = _weights(run), _weights(straight)
    # The convolutions' weights, whose layout changed: the two paths round differently (Adam turns the sign of a
    # gradient that is zero but for rounding into a step, seen on up to 1% of the elements after 9 steps), but
    # moments mixed up move nearly every element (seen: 86-99%).
    for key in (key for key in theirs if theirs[key].dim() == 4):
        differing = float(((mine[key] - theirs[key]).abs() > SMALL.lr_g / 10).double().mean())
        assert differing <= 0.1, (key, differing)


def test_adam_moments_take_their_parameters_layout():
    parameter = torch.nn.Parameter(torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last))
    optimizer = torch.optim.Adam([parameter], fused=True)
    optimizer.load_state_dict({"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.randn(4, 3, 3, 3),
                                             "exp_avg_sq": torch.rand(4, 3, 3, 3)}},
                               "param_groups": optimizer.state_dict()["param_groups"]})
    assert optimizer.state[parameter]["exp_avg"].is_contiguous()  # as saved: not the parameter's layout
    values = {key: value.clone() for key, value in optimizer.state[parameter].items()}
    match_state_layouts(optimizer)
    for key, value in optimizer.state[parameter].items():
        assert torch.equal(value, values[key])  # the same values...
        assert value.dim() == 0 or value.stride() == parameter.stride()  # ...laid out as the parameter
