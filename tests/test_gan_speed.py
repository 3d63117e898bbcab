"""Every speed-up of the GAN's training loop leaves the mathematics unchanged (bench/gan_speed.py measures them).

- G(z) by phases (:func:`mnistgen.models.gan.generate`) = the layer-by-layer forward, values and gradients;
- channels-last weights give the same values;
- one D pass over real and generated images = two passes;
- fused Adam = PyTorch's default Adam;
- and all of it together: mnistgen's training step = the classic step of bench/gan_baseline.py (G(z) for
  D's step and again for G's step, D on each batch separately, default layout and Adam).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mnistgen.config import GANConfig
from mnistgen.device import seed_everything
from mnistgen.models.gan import Discriminator, Generator, generate
from mnistgen.train import gan as train

BASELINE = Path(__file__).resolve().parents[1] / "bench" / "gan_baseline.py"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_baseline():
    spec = importlib.util.spec_from_file_location("gan_baseline", BASELINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trained_looking_generator(seed: int = 0) -> Generator:
    """A generator with non-zero biases and weights off their init, so no term of the check is trivially zero."""
    torch.manual_seed(seed)
    generator = Generator()
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return generator


def copy_of(module: torch.nn.Module, memory_format=torch.contiguous_format) -> torch.nn.Module:
    twin = type(module)() if isinstance(module, Discriminator) else Generator(module.zdim)
    twin.load_state_dict(module.state_dict())
    return twin.to(memory_format=memory_format)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_generate_by_phases_equals_the_layer_by_layer_forward(memory_format):
    reference = trained_looking_generator()
    fast = copy_of(reference, memory_format)
    z = train.uniform_noise(16, 64, torch.Generator().manual_seed(1))
    expected, actual = reference(z), generate(fast, z)
    assert actual.shape == (16, 1, 28, 28)
    assert (actual - expected).abs().max().item() < 1e-5
    # a loss that weighs every pixel differently, so border and interior, even and odd pixels all count
    weights = torch.linspace(-1.0, 2.0, 784).view(1, 1, 28, 28)
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(reference.parameters()))
    actual_grads = torch.autograd.grad((actual * weights).sum(), list(fast.parameters()))
    for (name, _), want, got in zip(reference.named_parameters(), expected_grads, actual_grads, strict=True):
        assert got.shape == want.shape, name
        assert relative_error(got, want) < 1e-4, name


def test_generate_by_phases_sees_the_image_border():
    # Only conv3's bias and one corner tap: the border of the 28x28 image must get conv3's zero padding.
    generator = Generator()
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.zero_()
        generator.conv2.bias.fill_(1.0)  # every pixel of conv2's output is 1 (then LeakyReLU keeps 1)
        generator.conv3.weight[0, :, 0, 0] = 1.0  # reads the upper-left neighbour: 0 outside the image
    z = torch.zeros(1, 64)
    expected = generator(z)
    assert torch.equal(expected[0, 0, 0], torch.full((28,), 0.5))  # first row: the neighbour is padding
    assert (generate(generator, z) - expected).abs().max().item() < 1e-6


def test_one_discriminator_pass_over_both_batches_equals_two_passes():
    torch.manual_seed(0)
    discriminator = Discriminator()
    real, fake = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    together = discriminator(torch.cat([real, fake]))
    assert torch.allclose(together[:8], discriminator(real), atol=1e-6)
    assert torch.allclose(together[8:], discriminator(fake), atol=1e-6)


def test_fused_adam_takes_the_default_adam_steps():
    torch.manual_seed(0)
    first = torch.nn.Parameter(torch.randn(50))
    second = torch.nn.Parameter(first.detach().clone())
    fused = torch.optim.Adam([first], lr=2e-4, fused=True)
    default = torch.optim.Adam([second], lr=2e-4)
    for step in range(5):
        gradient = torch.randn(50, generator=torch.Generator().manual_seed(step))
        first.grad, second.grad = gradient.clone(), gradient.clone()
        fused.step()
        default.step()
    assert torch.allclose(first, second, atol=1e-7)
    assert not torch.allclose(first, torch.randn(50, generator=torch.Generator().manual_seed(0)))


def test_mnistgen_step_equals_the_classic_step():
    baseline = load_baseline()
    config = GANConfig(device="cpu")
    seed_everything(config.seed)
    generator, discriminator = train.build_models(config, torch.device("cpu"))  # channels-last G on CPU
    optimizer_g, optimizer_d = train.make_optimizers(generator, discriminator, config)
    plain_generator, plain_discriminator = copy_of(generator), copy_of(discriminator)
    plain_g = torch.optim.Adam(plain_generator.parameters(), lr=config.lr_g)
    plain_d = torch.optim.Adam(plain_discriminator.parameters(), lr=config.lr_d)

    data = torch.Generator().manual_seed(0)
    for _ in range(3):
        real = torch.rand((32, 1, 28, 28), generator=data).pow(3)
        z = train.uniform_noise(32, config.zdim, data)
        d_loss, g_loss, _, _ = train.train_step(generator, discriminator, optimizer_g, optimizer_d, real, z).tolist()
        plain_d_loss, plain_g_loss = baseline.classic_step(plain_generator, plain_discriminator, plain_g, plain_d,
                                                           real, z)
        assert d_loss == pytest.approx(plain_d_loss, rel=1e-5)
        assert g_loss == pytest.approx(plain_g_loss, rel=1e-5)
    # Adam's first steps move each weight by about lr = 2e-4 whatever the gradient's size: agreeing to a
    # small fraction of that means every step went the same way.
    for (name, mine), theirs in zip(list(generator.named_parameters()) + list(discriminator.named_parameters()),
                                    list(plain_generator.parameters()) + list(plain_discriminator.parameters()),
                                    strict=True):
        assert (mine - theirs).abs().max().item() < 1e-5, name
