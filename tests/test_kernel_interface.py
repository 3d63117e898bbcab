"""The C kernels' interface has one source of truth: each library reports its own sizes, the Python side checks
them when it loads the library, and every buffer is checked before its address goes to C.

- What the libraries report equals the Python declarations and the real modules: D's and G's parameter pieces
  (offsets and lengths against the modules' parameters), the per-image sizes, the VAE's ctypes structs
  against the C structs' sizeof and offsetof.
- A library that reports other sizes (built from another source: a stale or foreign library), or Python
  declarations that drifted from the C code, are refused at load in one line (KernelLayoutMismatch, a
  NativeKernelsUnavailable: callers fall back); these tests fail, not skip, where the library reports another
  layout.
- Each C call refuses, before calling C, a buffer of another element count, dtype or memory layout, and a
  missing one: D's and G's forward and backward, the VAE's step and Adam. A D or G or VAE that is not the
  spec's (other channel counts) or not float32 is refused with a MnistgenError.
"""

from __future__ import annotations

import ctypes
import itertools

import pytest
import torch

from mnistgen.errors import MnistgenError
from mnistgen.kernels import gan as kernels
from mnistgen.kernels import native
from mnistgen.kernels import vae as vae_kernels
from mnistgen.kernels.vae import NativeVAEStep
from mnistgen.models.gan import Discriminator, Generator
from mnistgen.models.vae import VAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def loaded(load):
    """The library that ``load`` returns, or a skip with the reason where the C kernels cannot be built here (but
    a failure where it was built and reports another layout than the Python side declares)."""
    try:
        return load()
    except native.KernelLayoutMismatch:
        raise
    except native.NativeKernelsUnavailable as exc:
        pytest.skip(f"mnistgen's C kernels are unavailable here: {exc}")


@pytest.fixture
def fresh_load():
    """No library loaded yet in this process (so the next load checks the layout again); restored afterwards."""
    native.load_library.cache_clear()
    yield
    native.load_library.cache_clear()


def cumulative(lengths: list[int]) -> list[int]:
    return [0, *itertools.accumulate(lengths)][:-1]


# --------------------------------------------------------------------------- what the libraries report


def test_the_gan_library_reports_what_the_python_side_declares(kernel_instruction_set):
    reported = native.reported_layout(loaded(native.load_gan_library), native.GAN_SOURCE)
    assert reported == native.expected_layout(native.GAN_SOURCE, kernel_instruction_set)
    assert kernels.LANES == {"avx512": 16, "avx2": 8, "generic": 8}  # one AVX-512 or AVX2 register of floats
    assert reported["lanes"] == kernels.LANES[kernel_instruction_set] and reported["pixels"] == kernels.PIXELS == 784


def test_d_pieces_are_the_discriminators_parameters_in_order():
    reported = native.reported_layout(loaded(native.load_gan_library), native.GAN_SOURCE)
    named = list(Discriminator().named_parameters())
    lengths = [parameter.numel() for _, parameter in named]
    assert [(name, tuple(parameter.shape)) for name, parameter in named] == list(kernels.D_PIECES)
    assert [reported[f"d.{name}.offset"] for name, _ in named] == cumulative(lengths)
    assert [reported[f"d.{name}.length"] for name, _ in named] == lengths
    assert reported["d.parameters"] == sum(lengths) == kernels.D_PARAMETERS == 593


def test_g_pieces_are_the_generators_packed_parameters_in_order():
    reported = native.reported_layout(loaded(native.load_gan_library), native.GAN_SOURCE)
    generator = Generator()
    pieces = [kernels.phase_kernels(generator.conv1.weight), generator.conv1.bias,
              kernels.phase_kernels(generator.conv2.weight), generator.conv2.bias,
              generator.conv3.weight, generator.conv3.bias]
    assert [tuple(piece.shape) for piece in pieces] == [shape for _, shape in kernels.G_PIECES]
    names = [f"g.{name}" for name, _ in kernels.G_PIECES]
    lengths = [piece.numel() for piece in pieces]
    assert [reported[f"{name}.offset"] for name in names] == cumulative(lengths)
    assert [reported[f"{name}.length"] for name in names] == lengths
    packed = kernels._g_parameters(generator)
    assert reported["g.parameters"] == packed.numel() == sum(lengths) == kernels.G_PARAMETERS
    for name, piece, offset in zip(names, pieces, cumulative(lengths), strict=True):  # _g_parameters's order
        assert torch.equal(packed[offset:offset + piece.numel()], piece.reshape(-1)), name
    assert reported["g.input"] == generator.linear.out_features == kernels.G_INPUT
    # conv2's output at 28x28 and conv1's at 14x14, as the forward keeps them
    assert reported["g.kept"] == generator.conv2.out_channels * 28 * 28 + generator.conv1.out_channels * 14 * 14


@pytest.mark.parametrize("struct, c_name", [(vae_kernels._Buffers, "VAEBuffers"), (vae_kernels._AdamStep, "AdamStep")])
def test_the_vae_structs_mirror_the_c_structs(struct, c_name):
    reported = native.reported_layout(loaded(native.load_vae_library), native.VAE_SOURCE)
    assert reported[f"sizeof({c_name})"] == ctypes.sizeof(struct)
    fields = [name for name, _ in struct._fields_]
    assert [reported[f"offsetof({c_name}, {name})"] for name in fields] == [getattr(struct, n).offset for n in fields]
    start = f"offsetof({c_name}, "
    reported_fields = [name[len(start):-1] for name in reported if name.startswith(start)]
    assert reported_fields == fields  # every C field mirrored, in the C order
    assert reported == vae_kernels.LAYOUT


# --------------------------------------------------------------------------- a library of another layout


def assert_one_line_refusal(load, *phrases: str) -> None:
    with pytest.raises(native.KernelLayoutMismatch) as error:  # a NativeKernelsUnavailable: callers fall back
        load()
    message = str(error.value)
    assert "\n" not in message and "stale or foreign library" in message
    for phrase in phrases:
        assert phrase in message


@pytest.mark.parametrize("change, phrase", [
    (lambda layout: layout.update({"d.parameters": 600}), "d.parameters is 593, mnistgen expects 600"),
    (lambda layout: layout.update({"g.conv2.bias.offset": 10255}), "g.conv2.bias.offset is 10256"),
    (lambda layout: layout.update({"g.spare": 1}), "g.spare is missing"),
    (lambda layout: layout.pop("g.chunk"), "g.chunk = 8 is unknown to mnistgen"),
], ids=["count", "offset", "missing", "unknown"])
def test_python_declarations_other_than_the_librarys_are_refused_at_load(fresh_load, monkeypatch, change, phrase):
    loaded(native.load_gan_library)
    native.load_library.cache_clear()
    layout = dict(kernels.LAYOUT)
    change(layout)
    monkeypatch.setattr(kernels, "LAYOUT", layout)
    assert_one_line_refusal(native.load_gan_library, phrase)


def test_a_vae_struct_mirror_with_fields_out_of_order_is_refused_at_load(fresh_load, monkeypatch):
    loaded(native.load_vae_library)
    native.load_library.cache_clear()
    fields = list(vae_kernels._Buffers._fields_)
    where = {name: index for index, (name, _) in enumerate(fields)}
    fields[where["h1"]], fields[where["mean"]] = fields[where["mean"]], fields[where["h1"]]
    swapped = type("Swapped", (ctypes.Structure,), {"_fields_": fields})
    monkeypatch.setattr(vae_kernels, "LAYOUT", {**vae_kernels.struct_layout(swapped, "VAEBuffers"),
                                                **vae_kernels.struct_layout(vae_kernels._AdamStep, "AdamStep")})
    mean, h1 = vae_kernels._Buffers.mean.offset, vae_kernels._Buffers.h1.offset
    assert_one_line_refusal(native.load_vae_library, f"offsetof(VAEBuffers, mean) is {mean}, mnistgen expects {h1}",
                            "(and 1 more)")


@pytest.mark.parametrize("source, old, new, phrase", [
    ("GAN_SOURCE", "#define NPARAM 593", "#define NPARAM 600", "d.parameters is 600, mnistgen expects 593"),
    ("VAE_SOURCE", "    long pixels, hidden, latent, capacity;", "    long pixels, hidden, latent, capacity, spare;",
     "sizeof(VAEBuffers) is"),
], ids=["gan", "vae"])
def test_a_library_built_from_another_source_is_refused_at_load(fresh_load, tmp_path, source, old, new, phrase):
    original = getattr(native, source)
    loaded(lambda: native.load_library(original, native.library_instruction_set(original)))
    text = original.read_text()
    assert text.count(old) == 1
    stale = tmp_path / original.name  # the same name: the library of an older or newer mnistgen
    stale.write_text(text.replace(old, new))
    assert_one_line_refusal(lambda: native.load_library(stale, native.library_instruction_set(stale)), phrase)


def test_a_layout_table_without_end_is_refused():
    class Endless:  # a foreign library whose layout function never says "past the last entry"
        @staticmethod
        def mnistgen_gan_layout(index, name, value):
            name._obj.value, value._obj.value = b"lanes", 8
            return 0

    with pytest.raises(native.KernelLayoutMismatch, match="more than 1000 layout entries"):
        native.reported_layout(Endless(), native.GAN_SOURCE)


# --------------------------------------------------------------------------- every buffer, before every call


class Recording:
    """A library whose C functions record their name in ``calls`` before they run."""

    def __init__(self, library):
        self.library, self.calls = library, []

    def __getattr__(self, name):
        function = getattr(self.library, name)

        def call(*args):
            self.calls.append(name)
            return function(*args)

        return call


def defects(tensor: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """Stand-ins for ``tensor`` that a C kernel must not be given: the same shape but for one element fewer in
    the last dimension, the same shape in another dtype, the same shape strided (every other float), none."""
    shape, dtype = tuple(tensor.shape), tensor.dtype
    return {"count": torch.zeros((*shape[:-1], shape[-1] - 1), dtype=dtype),
            "dtype": torch.zeros(shape, dtype=torch.float64 if dtype != torch.float64 else torch.float32),
            "layout": torch.zeros((*shape, 2), dtype=dtype)[..., 0],
            "none": None}


def gan_calls() -> dict[str, tuple]:
    """Each checked C call of the GAN: (function, its arguments for 3 images, the names its refusals give the
    buffers, which buffers may be None). The first buffer gives the batch size."""
    d_parameters = kernels.flat_parameters(Discriminator()).detach()
    g_parameters = kernels._g_parameters(Generator()).detach()
    images = 3
    d_images = torch.rand(images, 1, 28, 28)
    h0 = torch.randn(images, kernels.G_INPUT)
    kept = torch.zeros(images, kernels.G_KEPT)
    chunks = -(-images // kernels.G_CHUNK)
    return {
        "d_forward": (kernels._d_forward, [d_images, d_parameters, torch.empty(images, 1)],
                      ["images", "parameters", "logits"], ()),
        "d_backward": (kernels._d_backward, [d_images, d_parameters, torch.randn(images, 1),
                                             torch.empty_like(d_images), torch.empty(kernels.D_PARAMETERS)],
                       ["images", "parameters", "dL/dlogits", "dL/dimages", "dL/dparameters"], (3, 4)),
        "g_forward": (kernels._g_forward, [h0, g_parameters, 0.2, 0.2, torch.empty(images, 1, 28, 28),
                                           torch.empty(images, kernels.G_KEPT)],
                      ["h0", "parameters", None, None, "output", "kept outputs"], ()),
        "g_backward": (kernels._g_backward, [h0, kept, g_parameters, 0.2, 0.2, torch.randn(images, 1, 28, 28),
                                             torch.empty_like(h0), torch.empty(kernels.G_PARAMETERS),
                                             torch.empty(chunks, kernels.G_PARAMETERS)],
                       ["h0", "kept outputs", "parameters", None, None, "dL/doutput", "dL/dh0", "dL/dparameters",
                        "scratch"], ()),
    }


@pytest.mark.parametrize("call", ["d_forward", "d_backward", "g_forward", "g_backward"])
def test_every_gan_buffer_is_checked_before_the_c_call(monkeypatch, kernel_instruction_set, call):
    library = Recording(loaded(native.load_gan_library))
    monkeypatch.setattr(kernels, "load_gan_library", lambda: library)
    function, arguments, names, optional = gan_calls()[call]
    prefix = call.replace("_", " ").capitalize().replace("d ", "D ").replace("g ", "G ")  # "D forward", ...
    for index, (argument, name) in enumerate(zip(arguments, names, strict=True)):
        if name is None:  # a slope
            continue
        for defect, stand_in in defects(argument).items():
            if defect == "none" and (index == 0 or index in optional):
                continue
            bad = [*arguments[:index], stand_in, *arguments[index + 1:]]
            with pytest.raises(native.KernelArgumentError) as error:
                function(*bad)
            message = str(error.value)
            assert message.startswith(f"{prefix}: {name}: the C kernel takes ") and "\n" not in message, (name, defect)
            assert library.calls == [], (name, defect)
    function(*arguments)  # the same call with the right buffers reaches C
    assert library.calls == ["mnistgen_" + call]


@pytest.mark.parametrize("wanted", [(True, False), (False, True), (False, False)], ids=["images", "parameters", "none"])
def test_d_backward_writes_only_the_gradients_asked_for(kernel_instruction_set, wanted):
    loaded(native.load_gan_library)
    function, arguments, _, _ = gan_calls()["d_backward"]
    full = [torch.full_like(arguments[index], float("nan")) for index in (3, 4)]
    function(*arguments[:3], *full)
    given = [torch.full_like(buffer, float("nan")) if want else None for buffer, want in zip(full, wanted, strict=True)]
    function(*arguments[:3], *given)  # a NULL buffer that C wrote would crash here
    for mine, theirs in zip(given, full, strict=True):
        assert mine is None or torch.equal(mine, theirs)


# --------------------------------------------------------------------------- models that are not the kernels'


def conv1_with_16_channels() -> Discriminator:
    discriminator = Discriminator()
    discriminator.conv1 = torch.nn.Conv2d(1, 16, kernel_size=3, padding=1)
    return discriminator


@pytest.mark.parametrize("discriminator, images, phrase", [
    (conv1_with_16_channels, lambda: torch.rand(5, 1, 28, 28), "D forward: parameters: the C kernel takes 593"),
    (lambda: Discriminator().double(), lambda: torch.rand(5, 1, 28, 28), "float64"),
    (lambda: Discriminator().double(), lambda: torch.rand(5, 1, 28, 28, dtype=torch.float64), "D forward: images"),
    (Discriminator, lambda: torch.rand(5, 1, 28, 28, dtype=torch.float64), "D forward: images"),
    (Discriminator, lambda: torch.rand(5, 1, 32, 32), "D forward: images"),
], ids=["conv1-16-channels", "float64-D", "float64-D-and-images", "float64-images", "32x32-images"])
def test_a_discriminator_or_images_the_kernel_was_not_built_for_are_refused(monkeypatch, discriminator, images,
                                                                           phrase):
    library = Recording(loaded(native.load_gan_library))
    monkeypatch.setattr(kernels, "load_gan_library", lambda: library)
    with pytest.raises(MnistgenError, match=phrase):
        kernels.native_discriminate(discriminator(), images())
    assert library.calls == []


def conv1_with_8_channels() -> Generator:
    generator = Generator()
    generator.conv1 = torch.nn.Conv2d(32, 8, kernel_size=3, padding=1)
    return generator


@pytest.mark.parametrize("generator, z, phrase", [
    (conv1_with_8_channels, lambda: torch.rand(3, 64), "G forward: parameters: the C kernel takes 10337"),
    (lambda: Generator().double(), lambda: torch.rand(3, 64, dtype=torch.float64), "G forward: h0: .* float64"),
], ids=["conv1-8-channels", "float64-G"])
def test_a_generator_the_kernel_was_not_built_for_is_refused(monkeypatch, generator, z, phrase):
    library = Recording(loaded(native.load_gan_library))
    monkeypatch.setattr(kernels, "load_gan_library", lambda: library)
    with pytest.raises(MnistgenError, match=phrase):
        kernels.native_generate(generator(), z())
    assert library.calls == []


def test_h0_of_another_width_is_refused():
    loaded(native.load_gan_library)
    with pytest.raises(MnistgenError, match="G forward: h0: the C kernel takes 4704"):
        kernels.native_generator_after_act1(Generator(), torch.randn(3, 32 * 7 * 6))


# --------------------------------------------------------------------------- the VAE's step


def vae_step(model: VAE | None = None, capacity: int = 4) -> NativeVAEStep:
    loaded(native.load_vae_library)
    step = NativeVAEStep(model or VAE(hidden=8), capacity)
    step.library = Recording(step.library)
    return step


def test_every_vae_step_buffer_is_checked_before_the_c_calls():
    step = vae_step()
    x, eps = (torch.rand(3, 784) < 0.2).float(), torch.randn(3, 2)
    for index, argument in enumerate((x, eps)):
        for defect, stand_in in defects(argument).items():
            if defect == "none" and index == 0:  # x gives the batch size
                continue
            arguments = [x, eps]
            arguments[index] = stand_in
            with pytest.raises(native.KernelArgumentError, match="VAE step: " + ("x", "eps")[index]):
                step.compute_gradients(*arguments, analytic_kl=False)
            assert step.library.calls == [], (index, defect)
    with pytest.raises(native.KernelArgumentError, match="VAE step: eps"):  # another batch than x's
        step.compute_gradients(x, torch.randn(4, 2), analytic_kl=False)
    step.compute_gradients(x, eps, analytic_kl=False)
    assert step.library.calls == ["mnistgen_vae_forward", "mnistgen_vae_output", "mnistgen_vae_backward"]


@pytest.mark.parametrize("buffer", ["parameters", "gradients", "exp_avg", "exp_avg_sq"])
def test_every_adam_buffer_is_checked_before_the_c_call(buffer):
    step = vae_step()
    right = getattr(step, buffer)
    for defect, stand_in in defects(right).items():
        setattr(step, buffer, stand_in)
        with pytest.raises(native.KernelArgumentError, match=f"Adam: {buffer}"):
            step.adam_step(1e-3, (0.9, 0.999), 1e-8)
        assert step.library.calls == [] and step.adam_steps == 0, defect
    setattr(step, buffer, right)
    step.adam_step(1e-3, (0.9, 0.999), 1e-8)
    assert step.library.calls == ["mnistgen_adam"] and step.adam_steps == 1


def decoder_wider_than_encoder() -> VAE:
    model = VAE(hidden=8)
    model.decoder.hidden = torch.nn.Linear(2, 9)  # the C code reads H = 8 rows of the encoder's width
    return model


@pytest.mark.parametrize("model, phrase", [
    (lambda: VAE(hidden=8).double(), "the VAE's encoder.hidden.weight: .* got 6272 float64"),
    (decoder_wider_than_encoder, "the VAE's decoder.hidden.weight: the C kernel takes 16 float32"),
], ids=["float64", "decoder-wider-than-encoder"])
def test_a_vae_the_kernels_were_not_built_for_is_refused(model, phrase):
    loaded(native.load_vae_library)
    with pytest.raises(MnistgenError, match=phrase):
        NativeVAEStep(model(), capacity=4)


def test_the_struct_points_to_buffers_kept_alive_with_it():
    step = vae_step(capacity=5)
    buffers = step._buffers
    assert (buffers.pixels, buffers.hidden, buffers.latent, buffers.capacity) == (784, 8, 2, 5)
    pointers = [name for name, kind in vae_kernels._Buffers._fields_ if kind is ctypes.c_void_p]
    assert all(getattr(buffers, name) for name in pointers)  # no NULL
    assert sorted(getattr(buffers, name) for name in pointers) == sorted(t.data_ptr() for t in step._struct_tensors)
