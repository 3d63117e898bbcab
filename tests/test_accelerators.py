"""A user who changes a network gets that network trained: the accelerators step aside, with a note.

Each test changes ``mnistgen.models`` as a user editing the source would (the class itself, patched for the
test), trains a few steps with ``--cpu-kernels auto`` and compares the weights with a plain autograd loop
written out here over the same changed model, the same initial weights, batches and noise. The note must
name the reason, and the metrics must record what trained. The spec's models, and a 10-D latent, stay
accelerated; ``--cpu-kernels native`` with a changed model is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import native_kernels_build
from torch import nn

from mnistgen.accelerate import choose
from mnistgen.accelerate.gan import choose_gan_accelerators
from mnistgen.accelerate.vae import choose_vae_accelerator
from mnistgen.cli import main
from mnistgen.config import DataConfig, GANConfig, VAEConfig
from mnistgen.data.batches import shuffled_batches
from mnistgen.data.protocols import Protocol
from mnistgen.device import seed_everything, stream_seed
from mnistgen.distributions import sample_uniform_noise
from mnistgen.errors import MnistgenError
from mnistgen.models import gan as gan_models
from mnistgen.models import vae as vae_models
from mnistgen.models.gan import init_spec_
from mnistgen.runs import RunDir
from mnistgen.train import gan as gan_training
from mnistgen.train import vae as vae_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FASTEST = "native" if native_kernels_build() else "torch"  # what --cpu-kernels auto takes on this machine's CPU
CPU = torch.device("cpu")
LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- the changes, as source edits


def extra_encoder_layer(monkeypatch):
    original = vae_models.Encoder.__init__

    def __init__(self, input_dim=784, hidden=500, latent_dim=2):
        original(self, input_dim, hidden, latent_dim)
        self.hidden2 = nn.Linear(hidden, hidden)

    def forward(self, x):
        h = torch.tanh(self.hidden2(torch.tanh(self.hidden(x))))
        return self.mean(h), self.logvar(h)

    monkeypatch.setattr(vae_models.Encoder, "__init__", __init__)
    monkeypatch.setattr(vae_models.Encoder, "forward", forward)


def relu_encoder(monkeypatch):
    def forward(self, x):
        h = torch.relu(self.hidden(x))
        return self.mean(h), self.logvar(h)

    monkeypatch.setattr(vae_models.Encoder, "forward", forward)


def relu_decoder(monkeypatch):
    monkeypatch.setattr(vae_models.Decoder, "logits", lambda self, z: self.output(torch.relu(self.hidden(z))))


def float64_vae(monkeypatch):
    original = vae_models.VAE.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.double()

    monkeypatch.setattr(vae_models.VAE, "__init__", __init__)


def wide_first_convolution(monkeypatch):
    original = gan_models.Discriminator.__init__

    def __init__(self):
        original(self)
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(16, 4, kernel_size=3, stride=1, padding=1)
        init_spec_(self)

    monkeypatch.setattr(gan_models.Discriminator, "__init__", __init__)


def average_pooling(monkeypatch):
    original = gan_models.Discriminator.__init__

    def __init__(self):
        original(self)
        self.pool1, self.pool2 = nn.AvgPool2d(2, 2), nn.AvgPool2d(2, 2)

    monkeypatch.setattr(gan_models.Discriminator, "__init__", __init__)


def relu_generator(monkeypatch):
    def forward(self, z):
        h = F.relu(self.linear(z)).view(-1, 32, 7, 7)
        h = F.relu(self.conv1(self.up1(h)))
        h = F.relu(self.conv2(self.up2(h)))
        return self.sigmoid(self.conv3(h))

    monkeypatch.setattr(gan_models.Generator, "forward", forward)


def float64_gan(monkeypatch):
    for cls in (gan_models.Generator, gan_models.Discriminator):
        original = cls.__init__

        def __init__(self, *args, _original=original, **kwargs):
            _original(self, *args, **kwargs)
            self.double()

        monkeypatch.setattr(cls, "__init__", __init__)


# --------------------------------------------------------------------------- the VAE


@pytest.fixture(scope="module")
def vae_data() -> Protocol:
    """300 random binary "images" (3 steps of 100) and 100 held out."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(400, 784, generator=generator) < 0.15).float()
    labels = torch.zeros(400, dtype=torch.long)
    return Protocol(name="hw", train_images=images[:300], train_labels=labels[:300], eval_images=images[300:],
                    eval_labels=labels[300:], test_images=images[300:], test_labels=labels[300:], eval_name="test",
                    dynamic_binarization=False, provenance={"dataset": "random"})


VAE_CONFIG = VAEConfig(epochs=1, device="cpu", data=DataConfig(offline=True))


def plain_vae_loop(config: VAEConfig, images: torch.Tensor, make_optimizer=None) -> dict[str, torch.Tensor]:
    """The VAE of ``mnistgen.models`` (as it is now) trained the plain way: Eq. 2 written out, autograd, Adam (or
    ``make_optimizer(model, config)``'s), with mnistgen's seeds for the initial weights, the batch order and eps."""
    order = seed_everything(config.seed)
    model = vae_models.VAE(latent_dim=config.latent_dim, hidden=config.hidden)
    dtype = next(model.parameters()).dtype
    images = images.to(dtype)
    optimizer = (make_optimizer or (lambda m, c: torch.optim.Adam(m.parameters(), lr=c.lr)))(model, config)
    noise = torch.Generator().manual_seed(stream_seed(config.seed, vae_training.NOISE_STREAM))
    for _ in range(config.epochs):
        for batch in shuffled_batches(len(images), config.batch_size, order):
            x = images[batch]
            mean, logvar = model.encoder(x)
            eps = torch.randn((len(x), config.latent_dim), generator=noise, dtype=dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
            logits = model.decoder.logits(z)
            log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
            log_pz = -0.5 * (z ** 2 + LOG_2PI).sum(1)
            log_qz = -0.5 * ((z - mean) ** 2 / logvar.exp() + logvar + LOG_2PI).sum(1)
            optimizer.zero_grad()
            (-(log_px + log_pz - log_qz).mean()).backward()
            optimizer.step()
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_same_weights(trained: dict[str, torch.Tensor], plain: dict[str, torch.Tensor], lr: float) -> None:
    """The same weights but for float rounding, which Adam amplifies in a few places: a gradient that is zero
    but for rounding (a unit that hardly affects the loss) has a rounding-dependent sign, and Adam's first
    steps turn a sign into a step of about lr. So at most 1% of each tensor may differ by more than lr / 10
    (seen: up to 0.09%, a row or two of G's Linear). A layer left untrained, or trained as another network,
    differs by whole steps almost everywhere."""
    assert trained.keys() == plain.keys()
    for key in plain:
        assert trained[key].dtype == plain[key].dtype, key
        differing = float(((trained[key] - plain[key]).abs() > lr / 10).double().mean())
        assert differing <= 0.01, (key, differing)


def train_changed_vae(tmp_path, vae_data, config=VAE_CONFIG) -> tuple[RunDir, list[str]]:
    notes: list[str] = []
    run = RunDir(tmp_path / "run")
    vae_training.train_vae(config, run, protocol=vae_data, show_progress=False, say=notes.append)
    return run, notes


@pytest.mark.parametrize(("change", "reason"), [
    (extra_encoder_layer, "the VAE has encoder.hidden2"),
    (relu_encoder, "the probe found"),
    (relu_decoder, "the probe found"),
    (float64_vae, "float64"),
], ids=["extra-encoder-layer", "relu-encoder", "relu-decoder", "float64"])
def test_a_changed_vae_trains_on_the_reference_path_as_written(change, reason, monkeypatch, tmp_path, vae_data):
    change(monkeypatch)
    run, notes = train_changed_vae(tmp_path, vae_data)
    assert len(notes) == 1 and "the VAE trains with the reference path" in notes[0] and reason in notes[0], notes
    assert "torch: " in notes[0] and "native: " in notes[0]  # each skipped accelerator's reason
    assert [record["trained_by"] for record in run.read_metrics()] == ["reference"]
    trained = run.load_checkpoint()["model"]
    assert_same_weights(trained, plain_vae_loop(VAE_CONFIG, vae_data.train_images), VAE_CONFIG.lr)
    seed_everything(VAE_CONFIG.seed)
    initial = vae_models.VAE().state_dict()
    assert all(not torch.equal(trained[key], initial[key]) for key in initial)  # every layer trained, the new too


def test_the_spec_vae_and_a_10d_latent_stay_accelerated(tmp_path, vae_data):
    for latent_dim in (2, 10):
        config = dataclasses.replace(VAE_CONFIG, latent_dim=latent_dim)
        run, notes = train_changed_vae(tmp_path / str(latent_dim), vae_data, config)
        assert [record["trained_by"] for record in run.read_metrics()] == [FASTEST]
        assert notes == [] if FASTEST == "native" else (len(notes) == 1 and "native: " in notes[0])
        assert_same_weights(run.load_checkpoint()["model"], plain_vae_loop(config, vae_data.train_images), config.lr)


OTHER_OPTIMIZERS = {"SGD": lambda model, config: torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9),
                    "AdamW": lambda model, config: torch.optim.AdamW(model.parameters(), lr=config.lr)}


@pytest.mark.parametrize("optimizer", list(OTHER_OPTIMIZERS))
def test_another_optimizer_trains_on_the_reference_step_with_a_note(optimizer, monkeypatch, tmp_path, vae_data):
    """Every accelerator is written for SPEC's optimizer, Adam: with SGD or AdamW (``make_optimizer`` edited) the
    VAE trains on the reference step, as a plain loop with that optimizer does, with the usual note."""
    monkeypatch.setattr(vae_models, "make_optimizer", OTHER_OPTIMIZERS[optimizer])
    run, notes = train_changed_vae(tmp_path, vae_data)
    assert len(notes) == 1 and "the VAE trains with the reference path" in notes[0], notes
    assert f"written for SPEC's optimizer, Adam; the optimizer is {optimizer}" in notes[0]
    assert [record["trained_by"] for record in run.read_metrics()] == ["reference"]
    assert_same_weights(run.load_checkpoint()["model"],
                        plain_vae_loop(VAE_CONFIG, vae_data.train_images, OTHER_OPTIMIZERS[optimizer]), VAE_CONFIG.lr)
    with pytest.raises(MnistgenError, match="the C kernels do not apply: native: it is written for SPEC's optimizer"):
        train_changed_vae(tmp_path / "native", vae_data, dataclasses.replace(VAE_CONFIG, cpu_kernels="native"))


def test_cpu_kernels_torch_and_reference_choose_without_a_note(tmp_path, vae_data):
    for cpu_kernels in ("torch", "reference"):
        config = dataclasses.replace(VAE_CONFIG, cpu_kernels=cpu_kernels)
        run, notes = train_changed_vae(tmp_path / cpu_kernels, vae_data, config)
        assert notes == [] and [r["trained_by"] for r in run.read_metrics()] == [cpu_kernels]


# --------------------------------------------------------------------------- the GAN


def gan_images() -> torch.Tensor:
    """96 blurry random "digits": 3 steps of 32."""
    return torch.rand((96, 1, 28, 28), generator=torch.Generator().manual_seed(0)).pow(4)


GAN_CONFIG = GANConfig(epochs=1, batch_size=32, device="cpu")


def plain_gan_loop(config: GANConfig, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The GAN of ``mnistgen.models`` (as it is now) trained the classic way with the modules' own calls,
    mnistgen's seeds for the weights, the batch order and z."""
    order = seed_everything(config.seed)
    generator, discriminator = gan_models.Generator(config.zdim), gan_models.Discriminator()
    images = images.to(next(discriminator.parameters()).dtype)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_d)
    noise = torch.Generator().manual_seed(stream_seed(config.seed, gan_training.NOISE_STREAM))
    bce = F.binary_cross_entropy_with_logits
    for _ in range(config.epochs):
        for batch in shuffled_batches(len(images), config.batch_size, order, drop_last=True):
            real = images[batch]
            z = sample_uniform_noise(len(real), config.zdim, noise).to(next(generator.parameters()).dtype)
            fake = generator(z)
            real_logits, fake_logits = discriminator(real), discriminator(fake.detach())
            d_loss = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
            optimizer_d.zero_grad()
            d_loss.backward()
            optimizer_d.step()
            logits = discriminator(fake)
            g_loss = bce(logits, torch.ones_like(logits))
            optimizer_g.zero_grad()
            g_loss.backward()
            optimizer_g.step()
    return {f"{name}.{key}": value.detach().clone() for name, module in (("generator", generator),
                                                                         ("discriminator", discriminator))
            for key, value in module.state_dict().items()}


def train_changed_gan(tmp_path, config=GAN_CONFIG) -> tuple[RunDir, list[str], dict[str, torch.Tensor]]:
    notes: list[str] = []
    run = RunDir(tmp_path / "run")
    gan_training.train_gan(config, gan_images(), run, show_progress=False, say=notes.append)
    state = run.load_checkpoint()
    weights = {f"{name}.{key}": value for name in ("generator", "discriminator") for key, value in state[name].items()}
    return run, notes, weights


@pytest.mark.parametrize(("change", "trained_by", "reason"), [
    (wide_first_convolution, f"G {FASTEST}, D torch", "the discriminator.conv1 is Conv2d(1, 16"),
    (average_pooling, f"G {FASTEST}, D torch", "the discriminator.pool1 is AvgPool2d"),
    (relu_generator, "G reference, D {FASTEST}", "the probe found G(z)"),
    (float64_gan, "G reference, D reference", "float64"),
], ids=["d-16-channels", "d-average-pooling", "g-relu", "float64"])
def test_a_changed_gan_trains_as_written(change, trained_by, reason, monkeypatch, tmp_path):
    trained_by = trained_by.format(FASTEST=FASTEST)
    change(monkeypatch)
    run, notes, weights = train_changed_gan(tmp_path)
    assert len(notes) == 1 and reason in notes[0], notes
    assert [record["trained_by"] for record in run.read_metrics()] == [trained_by]
    assert_same_weights(weights, plain_gan_loop(GAN_CONFIG, gan_images()), GAN_CONFIG.lr_g)


def test_the_spec_gan_stays_accelerated(tmp_path):
    run, notes, weights = train_changed_gan(tmp_path)
    assert [record["trained_by"] for record in run.read_metrics()] == [f"G {FASTEST}, D {FASTEST}"]
    assert notes == [] if FASTEST == "native" else (len(notes) == 1 and "native for G and D: " in notes[0])
    assert_same_weights(weights, plain_gan_loop(GAN_CONFIG, gan_images()), GAN_CONFIG.lr_g)


# --------------------------------------------------------------------------- the choice itself


def test_the_spec_models_on_a_cpu_with_a_compiler_take_the_c_kernels(needs_native_kernels):
    seed_everything(0)
    model = vae_models.VAE()
    assert choose_vae_accelerator(model, vae_models.make_optimizer(model, VAE_CONFIG), VAE_CONFIG, CPU).name == "native"
    generator, discriminator = gan_models.Generator(), gan_models.Discriminator()
    for_g, for_d = choose_gan_accelerators(generator, discriminator,
                                           *gan_models.make_optimizers(generator, discriminator, GAN_CONFIG),
                                           GAN_CONFIG, CPU)
    assert (for_g.name, for_d.name, for_g.skipped, for_d.skipped) == ("native", "native", (), ())


def test_the_probes_leave_the_models_and_the_random_state_as_they_were():
    seed_everything(0)
    model = vae_models.VAE()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = torch.get_rng_state()
    choose_vae_accelerator(model, vae_models.make_optimizer(model, VAE_CONFIG),
                           dataclasses.replace(VAE_CONFIG, cpu_kernels="torch"), CPU)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_a_check_that_crashes_is_a_reason_not_a_crash():
    from mnistgen.accelerate import Accelerator

    def broken(*_):
        raise IndexError("out of range")

    adam = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    choice = choose([Accelerator("broken", "a broken one", False, ("cpu",), broken, None)], "auto", CPU, adam)
    assert choice.accelerator is None and choice.skipped == ("broken: its check failed (IndexError: out of range)",)
    with pytest.raises(MnistgenError, match="--cpu-kernels must be one of auto, native, torch, reference"):
        choose([], "fast", CPU, adam)


# --------------------------------------------------------------------------- native refuses a changed model


@pytest.mark.parametrize(("command", "change"), [("vae", relu_encoder), ("gan", average_pooling)])
def test_native_refuses_a_changed_model_before_writing_anything(command, change, monkeypatch, tmp_path, capsys,
                                                                needs_native_kernels):
    change(monkeypatch)
    folder = tmp_path / "run"
    code = main([command, "train", "--out", str(folder), "--epochs", "1", "--device", "cpu",
                 "--cpu-kernels", "native", "--offline", "--dataset", "mnist-sample"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--cpu-kernels native: the C kernels do not apply" in err
    assert ("the probe found" if command == "vae" else "pool1 is AvgPool2d") in err
    assert not folder.exists()
