"""mnistgen's C kernels (src/mnistgen/kernels/gan_cpu.c) compute the spec's networks: D, and G after act1.

Values and every gradient against the torch modules (ties of the max-pools included), independence from
the number of threads, a training step equal to PyTorch's kernels and to the classic loop, each with every
library this processor runs (AVX-512 and AVX2 where it has AVX-512: ``kernel_instruction_set``); and the build:
the instruction set torch finds, named in the library's file, cached once per user, atomic, and a clear one-line
refusal where no compiler works. The tests marked ``needs_native_kernels`` are skipped, with the reason, on a
machine without a C compiler.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from bench_support import load_bench_module, perturbed, relative_error

from mnistgen.accelerate.gan import ChosenCalls, choose_gan_calls
from mnistgen.config import GANConfig
from mnistgen.device import seed_everything
from mnistgen.distributions import sample_uniform_noise
from mnistgen.errors import MnistgenError
from mnistgen.kernels import gan as kernels
from mnistgen.kernels import native
from mnistgen.models import gan as gan_models
from mnistgen.models.gan import Discriminator, Generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_native_kernels = pytest.mark.usefixtures("needs_native_kernels")
# the library for this processor's best instruction set, then (where that is AVX-512) the AVX2 one
each_instruction_set = pytest.mark.usefixtures("kernel_instruction_set")


def digit_like_images(count: int, seed: int = 0) -> torch.Tensor:
    """MNIST-like batch: dark background (exact zeros), a saturated white block (exact ones), random strokes;
    plus an all-black and an all-white image. Equal values make equal conv outputs: ties in the max-pools."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((count, 1, 28, 28), generator=generator).pow(3)
    images[:, :, :6] = 0.0
    images[:, :, 10:20, 8:18] = 1.0
    images[0] = 0.0
    images[1] = 1.0
    return images


@needs_native_kernels
@each_instruction_set
@pytest.mark.parametrize("count", [13, 16, 37], ids=["13-images", "16-images", "37-images"])  # 8 or 16 lanes
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_native_discriminator_equals_the_module(count, memory_format):
    discriminator = perturbed(Discriminator(), seed=count).to(memory_format=memory_format)
    images = digit_like_images(count).requires_grad_()
    expected = discriminator(images)
    actual = kernels.native_discriminate(discriminator, images)
    assert actual.shape == (count, 1)
    assert relative_error(actual, expected) < 1e-5
    weights = torch.linspace(-1.0, 2.0, count).view(count, 1)  # each image's logit weighted differently
    inputs = [images, *discriminator.parameters()]
    want = torch.autograd.grad((expected * weights).sum(), inputs)
    got = torch.autograd.grad((actual * weights).sum(), inputs)
    names = ["images"] + [name for name, _ in discriminator.named_parameters()]
    for name, want_grad, got_grad in zip(names, want, got, strict=True):
        assert got_grad.shape == want_grad.shape, name
        assert relative_error(got_grad, want_grad) < 1e-5, name


@needs_native_kernels
@each_instruction_set
def test_max_pool_ties_send_the_gradient_to_the_first_maximum():
    # Positive ties: conv1 = its (positive) bias alone, so every window of the first pool holds four equal
    # positive values; PyTorch gives the window's gradient to its first (upper-left) element. conv1's
    # weight gradient then sums the images' pixels at the upper-left positions only: a kernel that split
    # the gradient among ties, or took another element, gets another weight gradient.
    discriminator = perturbed(Discriminator(), seed=3)
    with torch.no_grad():
        discriminator.conv1.weight.zero_()
        discriminator.conv1.bias.fill_(0.5)
    images = digit_like_images(8, seed=4)
    expected = torch.autograd.grad(discriminator(images).sum(), discriminator.conv1.weight)[0]
    actual = torch.autograd.grad(kernels.native_discriminate(discriminator, images).sum(),
                                 discriminator.conv1.weight)[0]
    assert expected.abs().max() > 0
    assert relative_error(actual, expected) < 1e-5


@needs_native_kernels
@each_instruction_set
def test_a_nan_pixel_makes_that_image_logit_nan_as_in_pytorch():
    # the training loop's NaN guard relies on it: PyTorch's max-pool and ReLU pass NaN on
    discriminator = perturbed(Discriminator(), seed=14)
    images = digit_like_images(9)
    images[3, 0, 14, 14] = float("nan")
    expected, actual = discriminator(images), kernels.native_discriminate(discriminator, images)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    assert torch.isnan(actual[3]).all() and not torch.isnan(actual[4:]).any()


@needs_native_kernels
@each_instruction_set
def test_the_g_step_gets_no_discriminator_gradients():
    discriminator = perturbed(Discriminator(), seed=5)
    images = digit_like_images(8).requires_grad_()
    logits = kernels.native_discriminate(discriminator, images, parameter_gradients=False)
    logits.sum().backward()
    assert images.grad is not None and images.grad.abs().max() > 0
    assert all(parameter.grad is None for parameter in discriminator.parameters())


@needs_native_kernels
@each_instruction_set
@pytest.mark.parametrize("count", [5, 11], ids=["one-chunk", "two-chunks"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_native_generator_after_act1_equals_g_s_layers(memory_format, count):
    generator = perturbed(Generator(), seed=6).to(memory_format=memory_format)
    h0 = torch.randn(count, 32 * 7 * 7, requires_grad=True)  # both signs
    u1 = generator.conv1(F.interpolate(h0.view(count, 32, 7, 7), scale_factor=2, mode="nearest"))
    u2 = generator.conv2(F.interpolate(F.leaky_relu(u1, 0.2), scale_factor=2, mode="nearest"))
    expected = generator.conv3(F.leaky_relu(u2, 0.2))
    actual = kernels.native_generator_after_act1(generator, h0)
    assert actual.shape == (count, 1, 28, 28)
    assert relative_error(actual, expected) < 1e-5
    # every pixel weighted differently, borders and interior; positive, so that conv3's bias gradient (the
    # sum of the weights) is not a difference of large numbers that float32 rounding would dominate
    weights = torch.rand(count, 1, 28, 28) + 0.5
    inputs = [h0, *generator.conv1.parameters(), *generator.conv2.parameters(), *generator.conv3.parameters()]
    want = torch.autograd.grad((expected * weights).sum(), inputs)
    got = torch.autograd.grad((actual * weights).sum(), inputs)
    names = ["h0", "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias"]
    for name, want_grad, got_grad in zip(names, want, got, strict=True):
        assert relative_error(got_grad, want_grad) < 1e-5, name


def test_phase_kernels_by_hand():
    # one input channel, one output channel, 3x3 taps w[ky][kx] = 10 ky + kx: each phase kernel entry is the
    # sum of the taps its row and column groups select (rows: phase 0 -> (0), (1, 2); phase 1 -> (0, 1), (2))
    weight = torch.tensor([[10.0 * ky + kx for kx in range(3)] for ky in range(3)]).view(1, 1, 3, 3)
    kernels_ = kernels.phase_kernels(weight)[..., 0, 0]  # (a, b, dy, dx)
    groups = {(0, 0): [0], (0, 1): [1, 2], (1, 0): [0, 1], (1, 1): [2]}
    for a in range(2):
        for b in range(2):
            for dy in range(2):
                for dx in range(2):
                    expected = sum(10.0 * ky + kx for ky in groups[a, dy] for kx in groups[b, dx])
                    assert kernels_[a, b, dy, dx].item() == expected


@needs_native_kernels
@each_instruction_set
def test_native_generate_equals_the_layer_by_layer_generator():
    reference = perturbed(Generator(), seed=7)
    fast = Generator()
    fast.load_state_dict(reference.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    z = sample_uniform_noise(12, 64, torch.Generator().manual_seed(8))
    expected, actual = reference(z), kernels.native_generate(fast, z)
    assert relative_error(actual, expected) < 1e-5
    weights = torch.linspace(-1.0, 2.0, 784).view(1, 1, 28, 28)
    want = torch.autograd.grad((expected * weights).sum(), list(reference.parameters()))
    got = torch.autograd.grad((actual * weights).sum(), list(fast.parameters()))
    for (name, _), want_grad, got_grad in zip(reference.named_parameters(), want, got, strict=True):
        assert relative_error(got_grad, want_grad) < 1e-4, name


@needs_native_kernels
@each_instruction_set
def test_the_number_of_threads_does_not_change_any_bit():
    discriminator = perturbed(Discriminator(), seed=11)
    generator = perturbed(Generator(), seed=12).to(memory_format=torch.channels_last)
    images = digit_like_images(40).requires_grad_()
    z = sample_uniform_noise(24, 64, torch.Generator().manual_seed(13))

    def everything() -> list[torch.Tensor]:
        logits = kernels.native_discriminate(discriminator, images)
        fake = kernels.native_generate(generator, z)
        inputs = [images, *discriminator.parameters(), *generator.parameters()]
        return [logits, fake, *torch.autograd.grad(logits.sum() + fake.square().sum(), inputs)]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = everything()
        torch.set_num_threads(3)
        three = everything()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)


def chosen_calls(generator, discriminator, config: GANConfig, say=None) -> ChosenCalls:
    """The calls ``--cpu-kernels`` chooses for these networks (with Adam, as ``gan train`` makes), their modules
    prepared for them."""
    chosen = choose_gan_calls(generator, discriminator, *gan_models.make_optimizers(generator, discriminator, config),
                              config, torch.device("cpu"), say)
    chosen.prepare(generator, discriminator, torch.device("cpu"))
    return chosen


@needs_native_kernels
@each_instruction_set
def test_training_steps_with_native_kernels_equal_pytorch_kernels_and_the_classic_loop():
    baseline = load_bench_module("gan_baseline")
    config = GANConfig(device="cpu")
    seed_everything(config.seed)
    generator, discriminator = gan_models.build_models(config, torch.device("cpu"))
    twins = {}
    for name in ("torch", "classic"):
        g, d = Generator(), Discriminator()
        g.load_state_dict(generator.state_dict())
        d.load_state_dict(discriminator.state_dict())
        twins[name] = (g, d)
    native_calls = chosen_calls(generator, discriminator, dataclasses.replace(config, cpu_kernels="native"))
    torch_calls = chosen_calls(*twins["torch"], dataclasses.replace(config, cpu_kernels="torch"))  # channels-last
    optimizer_g, optimizer_d = gan_models.make_optimizers(generator, discriminator, config)
    torch_optimizers = gan_models.make_optimizers(*twins["torch"], config)
    assert (native_calls.name, torch_calls.name) == ("G native, D native", "G torch, D torch")
    classic_g = torch.optim.Adam(twins["classic"][0].parameters(), lr=config.lr_g)
    classic_d = torch.optim.Adam(twins["classic"][1].parameters(), lr=config.lr_d)

    data = torch.Generator().manual_seed(0)
    for _ in range(4):
        real = digit_like_images(32, seed=int(torch.randint(1000, (1,), generator=data)))
        z = sample_uniform_noise(32, config.zdim, data)
        native_stats = gan_models.train_step(generator, discriminator, optimizer_g, optimizer_d, real, z,
                                             native_calls.calls).tolist()
        torch_stats = gan_models.train_step(*twins["torch"], *torch_optimizers, real, z, torch_calls.calls).tolist()
        classic_losses = baseline.classic_step(*twins["classic"], classic_g, classic_d, real, z)
        assert native_stats == pytest.approx(torch_stats, rel=1e-5)
        assert native_stats[:2] == pytest.approx(list(classic_losses), rel=1e-5)
    # Adam's first steps move each weight by about lr = 2e-4 whatever the gradient's size: agreeing to a
    # tenth of one step after four means every step went the same way (a wrong gradient, even a wrong
    # sign of a small one, moves a weight by a whole step).
    mine = list(generator.parameters()) + list(discriminator.parameters())
    for name, (g, d) in twins.items():
        for index, (a, b) in enumerate(zip(mine, list(g.parameters()) + list(d.parameters()), strict=True)):
            assert (a - b).abs().max().item() < 0.1 * config.lr_g, (name, index)


# --------------------------------------------------------------------------- building and choosing


@pytest.fixture
def fresh_library(tmp_path, monkeypatch):
    """An empty user cache and no library loaded yet in this process (restored afterwards)."""
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "cache"))
    native.load_library.cache_clear()
    yield tmp_path / "cache" / "kernels"
    native.load_library.cache_clear()


@needs_native_kernels
def test_the_library_is_built_into_the_user_cache_once(fresh_library, monkeypatch):
    native.load_gan_library()
    built = sorted(fresh_library.iterdir())
    assert len(built) == 1 and built[0].name.startswith("gan_cpu-")  # no temporary file left behind
    native.load_library.cache_clear()

    def no_second_build(*args):
        raise AssertionError("compiled again although the cached library was there")

    monkeypatch.setattr(native, "build", no_second_build)
    native.load_gan_library()


def simulate_processor(monkeypatch, machine: str, capability: str) -> None:
    monkeypatch.setattr(native.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)


@pytest.mark.parametrize("machine, capability, no_avx512, expected", [
    ("x86_64", "AVX512", "", "avx512"), ("x86_64", "AVX512", "1", "avx2"), ("AMD64", "AVX2", "", "avx2"),
    ("x86_64", "DEFAULT", "", "generic"), ("aarch64", "SVE256", "", "generic"), ("arm64", "DEFAULT", "", "generic"),
])
def test_the_instruction_set_is_what_torch_finds_in_the_processor(monkeypatch, machine, capability, no_avx512,
                                                                   expected):
    simulate_processor(monkeypatch, machine, capability)
    monkeypatch.setenv(native.NO_AVX512, no_avx512)
    assert native.instruction_set() == expected
    flags = native.flag_sets(expected)[0]
    assert ("-mavx512f" in flags, "-mavx2" in flags) == (expected == "avx512", expected != "generic")
    assert not any(flag.startswith("-march") for flag in flags)  # the library may be loaded on another machine


@needs_native_kernels
@pytest.mark.parametrize("capability, expected, lanes", [("AVX2", "avx2", 8), ("AVX512", "avx512", 16)])
def test_each_library_is_named_by_its_instruction_set(fresh_library, monkeypatch, capability, expected, lanes):
    # a processor without AVX-512 (simulated where this one has it) gets the AVX2 library, 8 images per register
    if native.instruction_set() not in {"avx2": ("avx2", "avx512"), "avx512": ("avx512",)}[expected]:
        pytest.skip(f"this processor cannot run {expected} code")
    simulate_processor(monkeypatch, "x86_64", capability)
    library = native.load_gan_library()
    assert native.reported_layout(library, native.GAN_SOURCE)["lanes"] == lanes
    assert [path.name.split("-")[:2] for path in fresh_library.iterdir()] == [["gan_cpu", expected]]


@needs_native_kernels
def test_a_changed_source_builds_a_new_library(fresh_library, monkeypatch, tmp_path):
    native.load_gan_library()
    changed = tmp_path / "gan_cpu.c"
    changed.write_text(native.GAN_SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(native, "GAN_SOURCE", changed)
    native.load_library.cache_clear()
    native.load_gan_library()
    assert len(list(fresh_library.iterdir())) == 2


@needs_native_kernels
def test_a_failing_compiler_gives_one_line_and_leaves_no_file(fresh_library, monkeypatch, tmp_path):
    broken = tmp_path / "gan_cpu.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(native, "GAN_SOURCE", broken)
    with pytest.raises(native.NativeKernelsUnavailable) as error:
        native.load_gan_library()
    assert "\n" not in str(error.value) and "compiling gan_cpu.c" in str(error.value)
    assert not fresh_library.exists() or not any(fresh_library.iterdir())


def test_no_compiler_means_pytorch_kernels_with_a_note_or_a_refusal(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    seed_everything(0)
    generator, discriminator = Generator(), Discriminator()
    notes: list[str] = []
    assert chosen_calls(generator, discriminator, GANConfig(), say=notes.append).name == "G torch, D torch"
    assert len(notes) == 1 and "/nonexistent/cc" in notes[0] and notes[0].startswith("mnistgen: note: the GAN")
    with pytest.raises(MnistgenError, match="--cpu-kernels native: the C kernels do not apply: native: "):
        chosen_calls(generator, discriminator, GANConfig(cpu_kernels="native"))
    notes.clear()
    assert chosen_calls(generator, discriminator, GANConfig(cpu_kernels="torch"), say=notes.append).name == \
        "G torch, D torch"
    assert notes == []


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gan", "vae"])
def test_cli_refuses_native_kernels_without_a_compiler_in_one_line(tmp_path, model):
    environment = {**os.environ, "CC": "/nonexistent/cc", "MNISTGEN_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "mnistgen", model, "train", "--out", str(tmp_path / "run"), "--dataset",
               "mnist-sample", "--epochs", "1", "--cpu-kernels", "native", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--cpu-kernels native" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
