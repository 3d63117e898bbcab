"""Every speed-up of the GAN's training loop leaves the mathematics unchanged (bench/gan_speed.py measures them).

- nearest-upsample + 3x3 conv as one stride-2 transposed conv (:func:`mnistgen.accelerate.gan.upsample_conv`):
  a hand-computed case at the border, and values and gradients against the layers;
- G(z) by the torch accelerator (:func:`mnistgen.accelerate.gan.torch_generate`) = the layer-by-layer
  forward, values and gradients, whatever the weights' memory layout;
- one D call over real and generated images = two calls;
- keeping freed memory (:func:`mnistgen.train.common.keep_freed_memory`) stops the page faults of every step;
- and all of it together: mnistgen's training step, on the reference path and with each accelerator, = the
  classic step of bench/gan_baseline.py (G(z) for D's step and again for G's step, D on each batch
  separately, the default Adam).
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch
from bench_support import load_bench_module, perturbed, relative_error

from mnistgen.accelerate.gan import choose_gan_calls, torch_discriminate_both, torch_generate, upsample_conv
from mnistgen.config import GANConfig
from mnistgen.device import seed_everything
from mnistgen.distributions import sample_uniform_noise
from mnistgen.models import gan as gan_models
from mnistgen.models.gan import Discriminator, Generator
from mnistgen.train import common

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def copy_of(module: torch.nn.Module, memory_format=torch.contiguous_format) -> torch.nn.Module:
    twin = type(module)() if isinstance(module, Discriminator) else Generator(module.zdim)
    twin.load_state_dict(module.state_dict())
    return twin.to(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_generate_equals_the_layer_by_layer_forward(memory_format):
    reference = perturbed(Generator(), seed=0)
    fast = copy_of(reference, memory_format)
    z = sample_uniform_noise(16, 64, torch.Generator().manual_seed(1))
    expected, actual = reference(z), torch_generate(fast, z)
    assert actual.shape == (16, 1, 28, 28)
    assert (actual - expected).abs().max().item() < 1e-5
    # a loss that weighs every pixel differently, so border and interior, even and odd pixels all count
    weights = torch.linspace(-1.0, 2.0, 784).view(1, 1, 28, 28)
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(reference.parameters()))
    actual_grads = torch.autograd.grad((actual * weights).sum(), list(fast.parameters()))
    for (name, _), want, got in zip(reference.named_parameters(), expected_grads, actual_grads, strict=True):
        assert got.shape == want.shape, name
        assert relative_error(got, want) < 1e-4, name


def test_upsample_conv_by_hand_at_the_border():
    # Only the upper-left tap: each output pixel is the upsampled pixel up-left of it, 0 in the first row/column.
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
        conv.bias.fill_(0.5)
    images = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    upsampled = torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]])
    expected = torch.zeros(4, 4)
    expected[1:, 1:] = upsampled[:3, :3]
    assert torch.equal(upsample_conv(conv, images)[0, 0], expected + 0.5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(("channels_in", "channels_out", "side"), [(32, 16, 7), (16, 8, 14), (3, 2, 5)])
def test_upsample_conv_equals_upsample_then_conv(channels_in, channels_out, side, memory_format):
    torch.manual_seed(side)
    conv = torch.nn.Conv2d(channels_in, channels_out, 3, padding=1)
    with torch.no_grad():
        conv.bias.normal_()
    fast = torch.nn.Conv2d(channels_in, channels_out, 3, padding=1).to(memory_format=memory_format)
    fast.load_state_dict(conv.state_dict())
    images = torch.randn(4, channels_in, side, side).contiguous(memory_format=memory_format).requires_grad_()
    expected = conv(torch.nn.functional.interpolate(images, scale_factor=2, mode="nearest"))
    actual = upsample_conv(fast, images)
    assert actual.shape == (4, channels_out, 2 * side, 2 * side)
    assert relative_error(actual, expected) < 1e-5
    weights = torch.randn_like(expected)  # every output pixel weighted differently
    want = torch.autograd.grad((expected * weights).sum(), [images, conv.weight, conv.bias])
    got = torch.autograd.grad((actual * weights).sum(), [images, fast.weight, fast.bias])
    for name, w, g in zip(["images", "weight", "bias"], want, got, strict=True):
        assert relative_error(g, w) < 1e-5, name


PAGE_FAULTS = """
import resource, torch
from mnistgen.config import GANConfig
from mnistgen.models import gan as gan_models
from mnistgen.train import common
torch.set_num_threads(1)
config = GANConfig(device="cpu")
generator, discriminator = gan_models.build_models(config, torch.device("cpu"))
optimizer_g, optimizer_d = gan_models.make_optimizers(generator, discriminator, config)
real, z = torch.rand(256, 1, 28, 28), torch.rand(256, 64) * 2 - 1
def faults_per_step():
    for _ in range(2):  # warm-up: the heap grows to the step's needs once
        gan_models.train_step(generator, discriminator, optimizer_g, optimizer_d, real, z)
    counts = []
    for _ in range(5):  # the median step: a late growth of the heap (it happens) is not a step's steady cost
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        gan_models.train_step(generator, discriminator, optimizer_g, optimizer_d, real, z)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(counts)[2]
default = faults_per_step()
assert common.keep_freed_memory()
print(default, faults_per_step())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only (a no-op elsewhere)")
def test_keeping_freed_memory_stops_the_page_faults_of_every_step():
    # A fresh process: glibc's default returns the step's few-MB tensors to the system, thousands of page
    # faults (4 KiB each) per step; once keep_freed_memory() is called they are reused from the heap.
    output = subprocess.run([sys.executable, "-c", PAGE_FAULTS], check=True, capture_output=True, text=True).stdout
    default, kept = map(float, output.split()[-2:])
    assert default > 1000
    assert kept < default / 10


def test_keeping_freed_memory_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(common.sys, "platform", "darwin")
    assert common.keep_freed_memory() is False


def test_one_discriminator_call_over_both_batches_equals_two_calls():
    discriminator = perturbed(Discriminator(), seed=0)
    real, fake = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    real_logits, fake_logits = torch_discriminate_both(discriminator, real, fake)
    assert relative_error(real_logits, discriminator(real)) < 1e-6
    assert relative_error(fake_logits, discriminator(fake)) < 1e-6


@pytest.mark.parametrize("cpu_kernels", ["reference", "torch"])
def test_mnistgen_step_equals_the_classic_step(cpu_kernels):
    assert_steps_equal_the_classic_steps(cpu_kernels)


@pytest.mark.usefixtures("needs_native_kernels", "kernel_instruction_set")
def test_mnistgen_step_with_the_c_kernels_equals_the_classic_step():
    assert_steps_equal_the_classic_steps("native")


def assert_steps_equal_the_classic_steps(cpu_kernels: str) -> None:
    baseline = load_bench_module("gan_baseline")
    config = GANConfig(device="cpu", cpu_kernels=cpu_kernels)
    seed_everything(config.seed)
    generator, discriminator = gan_models.build_models(config, torch.device("cpu"))
    plain_generator, plain_discriminator = copy_of(generator), copy_of(discriminator)
    optimizer_g, optimizer_d = gan_models.make_optimizers(generator, discriminator, config)
    chosen = choose_gan_calls(generator, discriminator, optimizer_g, optimizer_d, config, torch.device("cpu"))
    chosen.prepare(generator, discriminator, torch.device("cpu"))  # may change the layout
    assert chosen.name == f"G {cpu_kernels}, D {cpu_kernels}"
    plain_g = torch.optim.Adam(plain_generator.parameters(), lr=config.lr_g)
    plain_d = torch.optim.Adam(plain_discriminator.parameters(), lr=config.lr_d)

    data = torch.Generator().manual_seed(0)
    for _ in range(3):
        real = torch.rand((32, 1, 28, 28), generator=data).pow(3)
        z = sample_uniform_noise(32, config.zdim, data)
        d_loss, g_loss, _, _ = gan_models.train_step(generator, discriminator, optimizer_g, optimizer_d, real, z,
                                                     chosen.calls).tolist()
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
