"""Building and loading mnistgen's C kernels (``gan_cpu.c``, ``vae_cpu.c``) with the machine's C compiler,
once per user.

The sources ship with the package; the first use of one compiles it into a shared library in the user cache
(``CACHE/kernels/gan_cpu-<key>.so``, CACHE as in :mod:`mnistgen.data.cache`) and later uses load that
file. The key hashes the source, the compiler command and its version, so a changed source or compiler
builds a new library; the file is compiled to a temporary name and renamed, so a half-written library is
never loaded. The library is plain C with OpenMP and no Python or torch headers: compiling takes about a
second, and calls go through :mod:`ctypes` (which releases the GIL while the C code runs). Linked with
``-fopenmp`` it needs ``libgomp.so.1``, and where torch has already loaded its own (the Linux wheels do)
the dynamic loader reuses that one: the kernels then run on torch's OpenMP threads, which would otherwise
spin idle beside them.

Compiler: ``$CC`` if set, else ``cc``, ``gcc`` or ``clang`` from PATH. Where none works (Windows, a
macOS without the command-line tools) :func:`load_library` raises :class:`NativeKernelsUnavailable`
with the reason in one line, and mnistgen's training uses PyTorch's own kernels (and says so).

The interface has one source of truth, the C source. Each library reports its own layout (``mnistgen_gan_layout``,
``mnistgen_vae_layout``: a table of names and values, such as D's parameter count, the offset and length of each
of its parameters, a struct's size and its fields' offsets); the Python side declares what it relies on
(``LAYOUT`` in :mod:`mnistgen.kernels.gan` and :mod:`mnistgen.kernels.vae`), and :func:`load_library` refuses a
library whose table differs (:class:`KernelLayoutMismatch`, a :class:`NativeKernelsUnavailable`, one line: a
stale or foreign library), so that callers fall back to PyTorch's kernels or refuse cleanly. Before every call,
each tensor whose address goes to C passes :func:`checked_pointer`: exactly the element count the C code will
read or write, its dtype, on the CPU, contiguous; anything else is a :class:`KernelArgumentError` (one line)
instead of a read out of bounds.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from ..data.cache import cache_root
from ..errors import MnistgenError
from ..files import replacing

GAN_SOURCE = Path(__file__).with_name("gan_cpu.c")
VAE_SOURCE = Path(__file__).with_name("vae_cpu.c")
# -fno-math-errno: sqrtf may become one vector instruction (the kernels never read errno)
BASE_FLAGS = ("-O3", "-std=c11", "-ffp-contract=fast", "-fno-math-errno", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120


class NativeKernelsUnavailable(MnistgenError):
    """The C kernels cannot be built or loaded here; the message says why in one line."""


class KernelLayoutMismatch(NativeKernelsUnavailable):
    """The library reports another layout than the Python side declares: a stale or foreign library, or one side
    of the interface changed without the other (a bug where the library is the one built from the source)."""


class KernelArgumentError(MnistgenError):
    """A tensor for a C kernel has another element count, dtype, device or memory layout than the kernel reads:
    refused before the call (one line: which buffer, what the kernel takes, what it got)."""


def find_compiler() -> str:
    """$CC, else the first of cc, gcc, clang on PATH; raises NativeKernelsUnavailable if there is none."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    raise NativeKernelsUnavailable("no C compiler found (set $CC, or install gcc or clang)")


def architecture_flags() -> tuple[str, ...]:
    """Vector instructions to compile for: AVX2 and FMA on x86-64 processors that torch found to have them.

    Not ``-march=native``: the cached library may be loaded on another machine sharing the home folder, and
    torch's own check of the processor is what decides whether its AVX2 kernels run here.
    """
    if platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in (
            "AVX2", "AVX512"):
        return ("-mavx2", "-mfma")
    return ()


def compiler_version(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeKernelsUnavailable(f"the C compiler {compiler!r} does not run: {exc}") from None
    if result.returncode != 0:
        raise NativeKernelsUnavailable(f"the C compiler {compiler!r} does not run ({result.stderr.strip()[:200]})")
    return result.stdout


def library_path(source: Path, compiler: str, version: str, flags: tuple[str, ...]) -> Path:
    """Where the library built from ``source`` with this compiler (``--version`` output) and flags is cached."""
    key = hashlib.sha256()
    for part in (source.read_bytes(), compiler.encode(), version.encode(), " ".join(flags).encode(),
                 platform.machine().encode(), sys.platform.encode()):
        key.update(part)
        key.update(b"\0")
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    return cache_root() / "kernels" / f"{source.stem}-{key.hexdigest()[:16]}{suffix}"


def build(source: Path, compiler: str, flags: tuple[str, ...], target: Path) -> None:
    """Compile ``source`` into ``target`` (atomically: a temporary file in the same folder, then a rename)."""
    with replacing(target) as temporary:
        command = [compiler, *flags, "-o", str(temporary), str(source)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeKernelsUnavailable(f"compiling {source.name} failed: {exc}") from None
        if result.returncode != 0:
            first_error = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
            raise NativeKernelsUnavailable(f"compiling {source.name} with {compiler} failed: {first_error[:300]}")


_P, _N, _THREADS, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
# a layout function: (index, *name, *value) -> 0, or -1 past the last entry
_LAYOUT = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_long)]
# The C functions' signatures by source (pointers are passed as addresses: ``checked_pointer(tensor, ...)`` or
# None), each returning an int status unless given as (argtypes, restype).
SIGNATURES = {
    "gan_cpu": {
        "mnistgen_gan_layout": _LAYOUT,
        "mnistgen_d_forward": [_P, _P, _P, _N, _THREADS],
        "mnistgen_d_backward": [_P, _P, _P, _P, _P, _P, _N, _THREADS],
        "mnistgen_g_forward": [_P, _P, _F, _F, _P, _P, _N, _THREADS],
        "mnistgen_g_backward": [_P, _P, _P, _F, _F, _P, _P, _P, _P, _N, _THREADS],
    },
    "vae_cpu": {
        "mnistgen_vae_layout": _LAYOUT,
        "mnistgen_vae_forward": [_P, _P, _P, _N, _THREADS],
        "mnistgen_vae_output": [_P, _P, _N, _F, _THREADS],
        "mnistgen_vae_backward": [_P, _P, _N, _F, ctypes.c_int, _P, _THREADS],
        "mnistgen_adam": ([_P, _P, _P, _P, _N, _P, _THREADS], None),
        "mnistgen_vae_math": [ctypes.c_int, _P, _P, _N],
    },
}


# By source: the function through which the library reports its layout, and the module whose ``LAYOUT`` (a dict
# of names and values) declares what the Python side expects it to report.
LAYOUTS = {
    "gan_cpu": ("mnistgen_gan_layout", "mnistgen.kernels.gan"),
    "vae_cpu": ("mnistgen_vae_layout", "mnistgen.kernels.vae"),
}
MAX_LAYOUT_ENTRIES = 1000  # a table longer than this is not one of mnistgen's


def reported_layout(library: ctypes.CDLL, source: Path) -> dict[str, int]:
    """The layout table that the library built from ``source`` reports: {name: value}, in its order."""
    function = getattr(library, LAYOUTS[source.stem][0])
    name, value, layout = ctypes.c_char_p(), ctypes.c_long(), {}
    for index in range(MAX_LAYOUT_ENTRIES + 1):
        if function(index, ctypes.byref(name), ctypes.byref(value)) != 0:
            return layout
        layout[(name.value or b"").decode("ascii", "replace")] = value.value
    raise KernelLayoutMismatch(f"{source.name}'s library reports more than {MAX_LAYOUT_ENTRIES} layout entries")


def expected_layout(source: Path) -> Mapping[str, int]:
    """The layout that mnistgen's Python side declares for the library built from ``source``."""
    return importlib.import_module(LAYOUTS[source.stem][1]).LAYOUT


def check_layout(reported: Mapping[str, int], expected: Mapping[str, int], what: str) -> None:
    """Raises KernelLayoutMismatch, a NativeKernelsUnavailable (one line: the first difference, and how many more),
    unless the library's reported layout is exactly the one expected: the same names, the same values."""
    differences = [f"{name} is {reported[name] if name in reported else 'missing'}, mnistgen expects {value}"
                   for name, value in expected.items() if reported.get(name) != value]
    differences += [f"{name} = {reported[name]} is unknown to mnistgen" for name in reported if name not in expected]
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise KernelLayoutMismatch(f"{what} does not have the layout mnistgen's Python side declares, a stale or "
                                   f"foreign library: {differences[0]}{more}")


def _declare(library: ctypes.CDLL, source: Path) -> ctypes.CDLL:
    for name, signature in SIGNATURES[source.stem].items():
        argtypes, restype = signature if isinstance(signature, tuple) else (signature, ctypes.c_int)
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = restype
    return library


def flag_sets() -> list[tuple[str, ...]]:
    """Compiler flags to try, best first: with OpenMP (threads), then without (one thread; Apple's clang has no
    OpenMP unless libomp is installed)."""
    flags = (*BASE_FLAGS, *architecture_flags())
    return [(*flags, "-fopenmp"), flags]


@functools.cache
def load_library(source: Path) -> ctypes.CDLL:
    """The compiled kernels of ``source`` (built into the user cache on first use; loaded once per process).

    Raises :class:`NativeKernelsUnavailable` (one line: why) where they cannot be built or loaded.
    """
    compiler = find_compiler()
    version = compiler_version(compiler)
    failures = []
    for flags in flag_sets():
        target = library_path(source, compiler, version, flags)
        try:
            if not target.is_file():
                build(source, compiler, flags, target)
            library = _declare(ctypes.CDLL(str(target)), source)
        except NativeKernelsUnavailable as exc:
            failures.append(exc)
            continue
        except (OSError, AttributeError) as exc:
            failures.append(NativeKernelsUnavailable(f"cannot load {target}: {exc}"))
            continue
        # the layout is the source's, not the flags': a mismatch is final
        check_layout(reported_layout(library, source), expected_layout(source), f"the library {target.name}")
        return library
    raise failures[0]


def load_gan_library() -> ctypes.CDLL:
    """The GAN's kernels (``gan_cpu.c``): see :func:`load_library`."""
    return load_library(GAN_SOURCE)


def load_vae_library() -> ctypes.CDLL:
    """The VAE's kernels (``vae_cpu.c``): see :func:`load_library`."""
    return load_library(VAE_SOURCE)


def check_tensor(tensor: torch.Tensor | None, name: str, count: int, dtype: torch.dtype = torch.float32,
                 contiguous: bool = True) -> None:
    """Raises KernelArgumentError (one line) unless ``tensor`` is a CPU tensor of exactly ``count`` elements of
    ``dtype``, contiguous unless ``contiguous`` is False; ``name`` says which buffer in the message.

    O(1) work, no copy: it runs before every C call, for every buffer."""
    if (not isinstance(tensor, torch.Tensor) or tensor.dtype != dtype or tensor.numel() != count or not tensor.is_cpu
            or (contiguous and not tensor.is_contiguous())):
        wanted = f"{count} {_dtype_name(dtype)}{' contiguous' if contiguous else ''} on the CPU"
        if isinstance(tensor, torch.Tensor):
            layout = "contiguous" if tensor.is_contiguous() else "non-contiguous"
            got = f"{tensor.numel()} {_dtype_name(tensor.dtype)} {layout} on {tensor.device} {tuple(tensor.shape)}"
        else:
            got = type(tensor).__name__
        raise KernelArgumentError(f"{name}: the C kernel takes {wanted}, got {got}")


def checked_pointer(tensor: torch.Tensor, name: str, count: int, dtype: torch.dtype = torch.float32) -> int:
    """The address of ``tensor``'s data for a C kernel that reads or writes ``count`` elements of ``dtype`` there,
    after :func:`check_tensor` (contiguous, on the CPU, exactly that count and dtype)."""
    check_tensor(tensor, name, count, dtype)
    return tensor.data_ptr()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
