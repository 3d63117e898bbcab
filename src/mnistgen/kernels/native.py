"""Building and loading mnistgen's C kernels (``gan_cpu.c``, ``vae_cpu.c``) with the machine's C compiler
(docs/TRAINING.md, 'The C kernels'): only what this user built, intact, is loaded (docs/RELIABILITY.md). Calls go
through :mod:`ctypes`; with ``-fopenmp`` the kernels run on the OpenMP threads of the ``libgomp`` torch loaded."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib
import os
import platform
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..data.cache import cache_root
from ..errors import MnistgenError
from ..files import atomic_write, replacing

GAN_SOURCE = Path(__file__).with_name("gan_cpu.c")
VAE_SOURCE = Path(__file__).with_name("vae_cpu.c")
# -fno-math-errno: sqrtf may become one vector instruction (the kernels never read errno)
BASE_FLAGS = ("-O3", "-std=c11", "-ffp-contract=fast", "-fno-math-errno", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120
KERNELS_FOLDER = "kernels"  # in the user cache: the libraries
HASHES_FOLDER = "kernel-hashes"  # in the user cache: each library's SHA-256, recorded when it was built
FD_FOLDER = Path("/proc/self/fd")  # names of the process's open files, which dlopen can open (Linux)
_OWN_FOLDER = "set $MNISTGEN_CACHE_DIR to a folder of your own"
# opening a file in the cache: never through a symbolic link, never waiting on a FIFO
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


class NativeKernelsUnavailable(MnistgenError):
    """The C kernels cannot be built or loaded here; the message says why in one line."""


class UnsafeKernelFolder(NativeKernelsUnavailable):
    """A folder of the kernel cache is not the user's own: nothing in it is loaded, whatever the compiler flags."""


class KernelLayoutMismatch(NativeKernelsUnavailable):
    """The library reports another layout than the Python side declares (a stale or foreign library)."""


class KernelArgumentError(MnistgenError):
    """A tensor for a C kernel is not what the kernel reads: refused before the call."""


def find_compiler() -> str:
    if os.environ.get("CC"):
        return os.environ["CC"]
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    raise NativeKernelsUnavailable("no C compiler found (set $CC, or install gcc or clang)")


def compiler_version(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeKernelsUnavailable(f"the C compiler {compiler!r} does not run: {exc}") from None
    if result.returncode != 0:
        raise NativeKernelsUnavailable(f"the C compiler {compiler!r} does not run ({result.stderr.strip()[:200]})")
    return result.stdout


def library_path(source: Path, compiler: str, version: str, flags: tuple[str, ...], instruction_set: str) -> Path:
    key = hashlib.sha256()
    for part in (source.read_bytes(), compiler.encode(), version.encode(), " ".join(flags).encode(),
                 platform.machine().encode(), sys.platform.encode()):
        key.update(part)
        key.update(b"\0")
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    return kernel_folders()[0] / f"{source.stem}-{instruction_set}-{key.hexdigest()[:16]}{suffix}"


def kernel_folders() -> tuple[Path, Path]:
    """``CACHE/kernels`` and ``CACHE/kernel-hashes``, symbolic links resolved (the folders checked are those used)."""
    root = Path(os.path.realpath(cache_root()))
    return root / KERNELS_FOLDER, root / HASHES_FOLDER


def hash_path(library: Path) -> Path:
    return library.parent.parent / HASHES_FOLDER / f"{library.name}.sha256"


def build(source: Path, compiler: str, flags: tuple[str, ...], target: Path) -> None:
    """Compile ``source`` into ``target``, then record its SHA-256 (so never that of an incomplete library)."""
    try:
        with replacing(target) as temporary:
            command = [compiler, *flags, "-o", str(temporary), str(source)]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as exc:
                raise NativeKernelsUnavailable(f"compiling {source.name} failed: {exc}") from None
            if result.returncode != 0:
                first_error = next((line for line in result.stderr.splitlines() if "error" in line),
                                   result.stderr.strip())
                raise NativeKernelsUnavailable(f"compiling {source.name} with {compiler} failed: {first_error[:300]}")
            with open(temporary, "rb") as library:
                digest = _sha256(library.fileno())
        atomic_write(hash_path(target), lambda record: record.write(f"{digest}  {target.name}\n"), mode="w")
    except NativeKernelsUnavailable:
        raise
    except MnistgenError as exc:  # from the file system: replacing and atomic_write name the file, and say why
        raise NativeKernelsUnavailable(str(exc)) from None


def _sha256(descriptor: int) -> str:
    """The SHA-256 (hex) of what is left to read from the open file ``descriptor``."""
    digest = hashlib.sha256()
    while chunk := os.read(descriptor, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _refusal(folder: Path, reason: str, advice: str) -> UnsafeKernelFolder:
    return UnsafeKernelFolder(f"the C kernels' cache folder {folder} {reason}; mnistgen loads libraries only from a "
                              f"folder of your own ({advice})")


def open_private_folder(folder: Path) -> int | None:
    """An open handle on ``folder`` (created 0700 where missing), not through a symbolic link, checked on that handle:
    a folder, the user's, writable by nobody else; None without ``os.getuid`` (Windows: only the hash is checked)."""
    created = False
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
            created = True
        if not hasattr(os, "getuid"):
            return None
        descriptor = os.open(folder, _FOLDER_FLAGS)
    except OSError as exc:
        if folder.is_symlink():
            raise _refusal(folder, "is a symbolic link", f"remove it, or {_OWN_FOLDER}") from None
        if folder.exists() and not folder.is_dir():
            raise _refusal(folder, "is not a folder", f"remove it, or {_OWN_FOLDER}") from None
        raise NativeKernelsUnavailable(f"cannot create the C kernels' cache folder {folder}: {exc.strerror or exc} "
                                       f"({_OWN_FOLDER})") from None
    try:
        status = os.fstat(descriptor)
        uid = os.getuid()
        if created and status.st_uid == uid:
            os.fchmod(descriptor, 0o700)  # mkdir's mode went through the umask
            status = os.fstat(descriptor)
        mode = stat.S_IMODE(status.st_mode)
        if not stat.S_ISDIR(status.st_mode):
            raise _refusal(folder, "is not a folder", f"remove it, or {_OWN_FOLDER}")
        if status.st_uid != uid:
            raise _refusal(folder, f"is owned by uid {status.st_uid}, not by you (uid {uid})", _OWN_FOLDER)
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            others = " and ".join(who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit)
            raise _refusal(folder, f"is writable by {others} (mode {mode:04o})",
                           f"remove it and mnistgen makes a private one, or {_OWN_FOLDER}")
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _check_parent(folder: Path) -> None:
    """Refuse a parent in which others could swap ``folder`` for their own (needed where loading is by name)."""
    status = os.stat(folder.parent)
    mode = stat.S_IMODE(status.st_mode)
    if status.st_uid not in (os.getuid(), 0):
        raise _refusal(folder, f"is in {folder.parent}, which is owned by uid {status.st_uid}", _OWN_FOLDER)
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise _refusal(folder, f"is in {folder.parent}, which others may write without the sticky bit "
                       f"(mode {mode:04o})", _OWN_FOLDER)


@contextlib.contextmanager
def _private_folders() -> Iterator[tuple[int | None, int | None]]:
    handles: list[int | None] = []
    try:
        for folder in kernel_folders():
            handles.append(open_private_folder(folder))
        yield handles[0], handles[1]
    finally:
        for handle in handles:
            if handle is not None:
                os.close(handle)


def _open_in(folder: Path, handle: int | None, name: str) -> int:
    if handle is None:
        return os.open(folder / name, _READ_FLAGS)
    return os.open(name, _READ_FLAGS, dir_fd=handle)


def _recorded_hash(record: bytes, name: str) -> str | None:
    """The SHA-256 in a record (sha256sum's ``<64 hex digits>  <name>``) of the library ``name``, else None."""
    parts = record.decode("ascii", "replace").split()
    if len(parts) == 2 and parts[1] == name and len(parts[0]) == 64 and set(parts[0]) <= set("0123456789abcdef"):
        return parts[0]
    return None


def open_verified(target: Path, folders: tuple[int | None, int | None]) -> int | None:
    """An open handle on the library ``target`` if it is a regular file with the SHA-256 recorded, else None."""
    record = hash_path(target)
    try:
        handle = _open_in(record.parent, folders[1], record.name)
        try:
            recorded = _recorded_hash(os.read(handle, 4096), target.name)
        finally:
            os.close(handle)
        if recorded is None:
            return None
        library = _open_in(target.parent, folders[0], target.name)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(library).st_mode) and _sha256(library) == recorded:
            return library
    except OSError:
        pass
    os.close(library)
    return None


# (device, inode) of each library loaded through FD_FOLDER -> the open handle it was loaded through. The handles
# stay open: glibc knows a loaded library by its name too, and a reused number would name another file.
_LOADED_THROUGH: dict[tuple[int, int], int] = {}


def _dlopen_verified(handle: int, target: Path) -> ctypes.CDLL:
    status = os.fstat(handle)
    identity = (status.st_dev, status.st_ino)
    if (FD_FOLDER / str(handle)).exists():  # dlopen opens that name again: this very file, whatever the names now
        if identity in _LOADED_THROUGH:
            os.close(handle)
        else:
            _LOADED_THROUGH[identity] = handle
        return ctypes.CDLL(str(FD_FOLDER / str(_LOADED_THROUGH[identity])))
    try:  # by name: after checking that no one else can rename the folder, and that the name is still the file
        if hasattr(os, "getuid"):
            _check_parent(target.parent)
            now = os.lstat(target)
            if (now.st_dev, now.st_ino) != identity:
                raise NativeKernelsUnavailable(f"the library {target} was replaced while it was being loaded")
        return ctypes.CDLL(str(target))
    finally:
        os.close(handle)


def _load_verified(source: Path, compiler: str, flags: tuple[str, ...], target: Path,
                   folders: tuple[int | None, int | None]) -> ctypes.CDLL:
    """The library ``target`` once its SHA-256 matched its record: built earlier if intact, else built now (once)."""
    handle = open_verified(target, folders)
    if handle is None:
        build(source, compiler, flags, target)
        handle = open_verified(target, folders)
        if handle is None:
            raise NativeKernelsUnavailable(f"the library {target}, built just now, does not have the SHA-256 recorded "
                                           "for it (changed by another process meanwhile?)")
    return _dlopen_verified(handle, target)


_P, _N, _THREADS, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
# a layout function: (index, *name, *value) -> 0, or -1 past the last entry
_LAYOUT = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_long)]
# The C functions' signatures by source (pointers are passed as addresses: ``checked_pointer(tensor, ...)`` or
# None), each returning an int status unless given as (argtypes, restype).
SIGNATURES = {
    "gan_cpu": {
        "mnistgen_gan_layout": _LAYOUT,
        "mnistgen_d_forward": [_P, _P, _P, _N, _THREADS],
        "mnistgen_d_backward": [_P, _P, _P, _P, _P, _N, _THREADS],
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


# By source: the library's layout function, and the module whose ``LAYOUT`` declares what it must report.
LAYOUTS = {"gan_cpu": ("mnistgen_gan_layout", "mnistgen.kernels.gan"),
           "vae_cpu": ("mnistgen_vae_layout", "mnistgen.kernels.vae")}
MAX_LAYOUT_ENTRIES = 1000  # a table longer than this is not one of mnistgen's


def reported_layout(library: ctypes.CDLL, source: Path) -> dict[str, int]:
    function = getattr(library, LAYOUTS[source.stem][0])
    name, value, layout = ctypes.c_char_p(), ctypes.c_long(), {}
    for index in range(MAX_LAYOUT_ENTRIES + 1):
        if function(index, ctypes.byref(name), ctypes.byref(value)) != 0:
            return layout
        layout[(name.value or b"").decode("ascii", "replace")] = value.value
    raise KernelLayoutMismatch(f"{source.name}'s library reports more than {MAX_LAYOUT_ENTRIES} layout entries")


def expected_layout(source: Path, instruction_set: str) -> Mapping[str, int]:
    """The module's ``LAYOUT``, where an entry given by instruction set is that of ``instruction_set``."""
    layout = importlib.import_module(LAYOUTS[source.stem][1]).LAYOUT
    return {name: value[instruction_set] if isinstance(value, Mapping) else value for name, value in layout.items()}


def check_layout(reported: Mapping[str, int], expected: Mapping[str, int], what: str) -> None:
    differences = [f"{name} is {reported[name] if name in reported else 'missing'}, mnistgen expects {value}"
                   for name, value in expected.items() if reported.get(name) != value]
    differences += [f"{name} = {reported[name]} is unknown to mnistgen" for name in reported if name not in expected]
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise KernelLayoutMismatch(f"{what} does not have the layout mnistgen's Python side declares, a stale or "
                                   f"foreign library: {differences[0]}{more}")


def _declare(library: ctypes.CDLL, source: Path) -> ctypes.CDLL:
    for name, signature in SIGNATURES[source.stem].items():
        function = getattr(library, name)
        function.argtypes, function.restype = signature if isinstance(signature, tuple) else (signature, ctypes.c_int)
    return library


# The x86-64 instruction sets a library is built for: their compiler flags (AVX-512: the parts that torch's AVX512
# capability requires)
INSTRUCTION_SETS = {"avx512": ("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"),
                    "avx2": ("-mavx2", "-mfma")}
NO_AVX512 = "MNISTGEN_NO_AVX512"  # set and not empty: AVX2 even where the processor has AVX-512


def instruction_set() -> str:
    """The best of INSTRUCTION_SETS that torch finds in this processor ("generic": none), never ``-march=native``:
    the cached library may be loaded on another machine sharing the home folder."""
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in ("x86_64", "amd64") or capability not in ("AVX2", "AVX512"):
        return "generic"
    return "avx512" if capability == "AVX512" and not os.environ.get(NO_AVX512) else "avx2"


def flag_sets(instruction_set: str) -> list[tuple[str, ...]]:
    """Compiler flags, best first: with OpenMP, then without (Apple's clang has none unless libomp is installed)."""
    flags = (*BASE_FLAGS, *INSTRUCTION_SETS.get(instruction_set, ()))
    return [(*flags, "-fopenmp"), flags]


@functools.cache
def load_library(source: Path, instruction_set: str) -> ctypes.CDLL:
    """The kernels of ``source`` compiled for ``instruction_set``, built on first use and loaded once per process
    (see above)."""
    compiler = find_compiler()
    version = compiler_version(compiler)
    failures = []
    with _private_folders() as folders:
        for flags in flag_sets(instruction_set):
            target = library_path(source, compiler, version, flags, instruction_set)
            try:
                library = _declare(_load_verified(source, compiler, flags, target, folders), source)
            except UnsafeKernelFolder:
                raise  # the folder holds every flags' library
            except NativeKernelsUnavailable as exc:
                failures.append(exc)
                continue
            except (OSError, AttributeError) as exc:
                failures.append(NativeKernelsUnavailable(f"cannot load {target}: {exc}"))
                continue
            # the layout is the source's, not the flags': a mismatch is final
            check_layout(reported_layout(library, source), expected_layout(source, instruction_set),
                         f"the library {target.name}")
            return library
    raise failures[0]


def library_instruction_set(source: Path) -> str:
    """What ``source``'s library is built for here: :func:`instruction_set`, AVX2 at most for the VAE's kernels,
    which AVX-512 does not make faster (docs/BENCHMARKS.md)."""
    best = instruction_set()
    return "avx2" if best == "avx512" and source.stem == VAE_SOURCE.stem else best


def load_gan_library() -> ctypes.CDLL:
    return load_library(GAN_SOURCE, library_instruction_set(GAN_SOURCE))


def load_vae_library() -> ctypes.CDLL:
    return load_library(VAE_SOURCE, library_instruction_set(VAE_SOURCE))


def check_tensor(tensor: torch.Tensor | None, name: str, count: int, dtype: torch.dtype = torch.float32,
                 contiguous: bool = True) -> None:
    """KernelArgumentError (one line naming buffer ``name``) unless ``tensor`` is a CPU tensor of exactly ``count``
    elements of ``dtype``, contiguous unless ``contiguous`` is False. O(1), no copy: it runs before every C call."""
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
    check_tensor(tensor, name, count, dtype)
    return tensor.data_ptr()


def kernel_threads() -> int:
    return max(1, torch.get_num_threads())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
