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
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.cache import cache_root
from ..errors import MnistgenError

GAN_SOURCE = Path(__file__).with_name("gan_cpu.c")
VAE_SOURCE = Path(__file__).with_name("vae_cpu.c")
# -fno-math-errno: sqrtf may become one vector instruction (the kernels never read errno)
BASE_FLAGS = ("-O3", "-std=c11", "-ffp-contract=fast", "-fno-math-errno", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120


class NativeKernelsUnavailable(MnistgenError):
    """The C kernels cannot be built or loaded here; the message says why in one line."""


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
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        command = [compiler, *flags, "-o", temporary, str(source)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeKernelsUnavailable(f"compiling {source.name} failed: {exc}") from None
        if result.returncode != 0:
            first_error = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
            raise NativeKernelsUnavailable(f"compiling {source.name} with {compiler} failed: {first_error[:300]}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


_P, _N, _THREADS, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
# The C functions' signatures by source (pointers are passed as addresses: ``tensor.data_ptr()`` or None),
# each returning an int status unless given as (argtypes, restype).
SIGNATURES = {
    "gan_cpu": {
        "mnistgen_d_forward": [_P, _P, _P, _N, _THREADS],
        "mnistgen_d_backward": [_P, _P, _P, _P, _P, _P, _N, _THREADS],
        "mnistgen_g_forward": [_P, _P, _F, _F, _P, _P, _N, _THREADS],
        "mnistgen_g_backward": [_P, _P, _P, _F, _F, _P, _P, _P, _P, _N, _THREADS],
    },
    "vae_cpu": {
        "mnistgen_vae_forward": [_P, _P, _P, _N, _THREADS],
        "mnistgen_vae_output": [_P, _P, _N, _F, _THREADS],
        "mnistgen_vae_backward": [_P, _P, _N, _F, ctypes.c_int, _P, _THREADS],
        "mnistgen_adam": ([_P, _P, _P, _P, _N, _P, _THREADS], None),
        "mnistgen_vae_math": [ctypes.c_int, _P, _P, _N],
    },
}


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
            return _declare(ctypes.CDLL(str(target)), source)
        except NativeKernelsUnavailable as exc:
            failures.append(exc)
        except (OSError, AttributeError) as exc:
            failures.append(NativeKernelsUnavailable(f"cannot load {target}: {exc}"))
    raise failures[0]


def load_gan_library() -> ctypes.CDLL:
    """The GAN's kernels (``gan_cpu.c``): see :func:`load_library`."""
    return load_library(GAN_SOURCE)


def load_vae_library() -> ctypes.CDLL:
    """The VAE's kernels (``vae_cpu.c``): see :func:`load_library`."""
    return load_library(VAE_SOURCE)


def use_native_kernels(cpu_kernels: str, device: torch.device, load: Callable[[], ctypes.CDLL], fallback_note: str,
                       say: Callable[[str], None] | None = None) -> bool:
    """Whether training uses mnistgen's C kernels (``load`` builds them) under the ``--cpu-kernels`` setting.

    "torch": no. "native": yes, or an error (one line: why not) where they cannot be built. "auto": yes on
    CPU where they can be built; otherwise no, and ``say`` (default: stderr) gets ``fallback_note`` and the
    reason in one line. Off the CPU: never (PyTorch's kernels).
    """
    if cpu_kernels not in ("auto", "native", "torch"):
        raise MnistgenError(f"--cpu-kernels must be auto, native or torch, got {cpu_kernels!r}")
    if cpu_kernels == "torch" or device.type != "cpu":
        return False
    try:
        load()
    except NativeKernelsUnavailable as exc:
        if cpu_kernels == "native":
            raise MnistgenError(f"--cpu-kernels native: {exc}") from None
        (say or _stderr)(f"mnistgen: note: {fallback_note}: {exc}")
        return False
    return True


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
