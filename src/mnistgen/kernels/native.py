"""Building and loading mnistgen's C kernels (``gan_cpu.c``, ``vae_cpu.c``) with the machine's C compiler,
once per user.

The sources ship with the package; the first use of one compiles it into a shared library in the user cache
(``CACHE/kernels/gan_cpu-<key>.so``, CACHE as in :mod:`mnistgen.data.cache`) and later uses load that
file. The key hashes the source, the compiler command and its version, so a changed source or compiler
builds a new library; the file is compiled to a temporary name, flushed to disk and renamed, so a half-written
library never sits under the name. The library is plain C with OpenMP and no Python or torch headers: compiling
takes about a second, and calls go through :mod:`ctypes` (which releases the GIL while the C code runs). Linked
with ``-fopenmp`` it needs ``libgomp.so.1``, and where torch has already loaded its own (the Linux wheels do)
the dynamic loader reuses that one: the kernels then run on torch's OpenMP threads, which would otherwise
spin idle beside them.

Loading a library runs its code as the user (its constructors run inside ``dlopen``), so the cache loads only
what this user built, intact:

- ``CACHE/kernels`` and ``CACHE/kernel-hashes`` are the user's own: created with mode 0700 (whatever the umask),
  and before each use opened without following a symbolic link and checked on that open handle: owned by the
  user and writable by nobody else. Otherwise :class:`UnsafeKernelFolder` (a :class:`NativeKernelsUnavailable`,
  one line naming the folder, why, and what to do), and nothing in it is loaded.
- Each build records the library's SHA-256 in ``CACHE/kernel-hashes/<library name>.sha256`` (``sha256sum``'s
  format: ``<hex>  <library name>``), written atomically once the library itself was flushed and renamed. A
  library is loaded only after the hash of its bytes equals that record: one that is missing, empty, truncated,
  changed, not a regular file or without a record is built again (silently, once); if the fresh build does not
  verify either, :class:`NativeKernelsUnavailable` (one line). The records live beside the ``kernels`` folder,
  not in it, so that folder holds only the libraries.
- The parent folders are not checked. On Linux the library is hashed and loaded through one open file found
  through the open folder (``dlopen("/proc/self/fd/N")``, the handle kept open while the process runs), so
  renaming the folder or the file after the checks changes nothing that is loaded. Where there is no
  ``/proc/self/fd`` (macOS, the BSDs) the library is loaded by name, after checking that the name still leads to
  the verified file; the short window between that check and ``dlopen`` is closed by refusing a parent folder
  that others could rename entries in: owned by another user (root excepted), or writable by group or others
  without the sticky bit.
- Without ``os.getuid`` (Windows, where the kernels would need a POSIX C compiler anyway) there are no owners
  and modes to check: the folders are created plainly, and the hash is still checked before loading.

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
    """A folder of the kernel cache is not the user's own (another owner, writable by others, a symbolic link, or
    where it has no ``/proc/self/fd``, in a folder where others can rename it): nothing in it is loaded, whatever
    the compiler flags."""


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
    return kernel_folders()[0] / f"{source.stem}-{key.hexdigest()[:16]}{suffix}"


def kernel_folders() -> tuple[Path, Path]:
    """The folders of the libraries and of their recorded hashes, ``CACHE/kernels`` and ``CACHE/kernel-hashes``,
    with CACHE's symbolic links resolved (so that the folders checked are the ones used)."""
    root = Path(os.path.realpath(cache_root()))
    return root / KERNELS_FOLDER, root / HASHES_FOLDER


def hash_path(library: Path) -> Path:
    """Where the SHA-256 of ``library`` (a :func:`library_path`) is recorded when it is built:
    ``CACHE/kernel-hashes/<library name>.sha256``, one line as ``sha256sum`` writes it."""
    return library.parent.parent / HASHES_FOLDER / f"{library.name}.sha256"


def build(source: Path, compiler: str, flags: tuple[str, ...], target: Path) -> None:
    """Compile ``source`` into ``target`` and record its SHA-256 in :func:`hash_path`. The library is compiled to
    a temporary file in the same folder, flushed to disk and renamed; only then is the record written (atomically
    too), so that a record never describes a library that is not complete under its name."""
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


# --------------------------------------------------------------------------- the user's own folders


def _refusal(folder: Path, reason: str, advice: str) -> UnsafeKernelFolder:
    return UnsafeKernelFolder(f"the C kernels' cache folder {folder} {reason}; mnistgen loads libraries only from a "
                              f"folder of your own ({advice})")


def open_private_folder(folder: Path) -> int | None:
    """An open handle on ``folder`` (created with mode 0700 where missing, whatever the umask), after checking on
    that handle that it is a folder, not a symbolic link, owned by the user and writable by nobody else; otherwise
    :class:`UnsafeKernelFolder` (one line). :class:`NativeKernelsUnavailable` where it cannot be created. None
    without ``os.getuid`` (Windows): the folder is only created, there are no owner and mode to check."""
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
    """Raises UnsafeKernelFolder where others could rename entries of ``folder``'s parent (swap ``folder`` for
    their own): a parent owned by another user than this one or root, or writable by group or others without the
    sticky bit. Only needed where a library is loaded by name (no ``/proc/self/fd``)."""
    status = os.stat(folder.parent)
    mode = stat.S_IMODE(status.st_mode)
    if status.st_uid not in (os.getuid(), 0):
        raise _refusal(folder, f"is in {folder.parent}, which is owned by uid {status.st_uid}", _OWN_FOLDER)
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise _refusal(folder, f"is in {folder.parent}, which others may write without the sticky bit "
                       f"(mode {mode:04o})", _OWN_FOLDER)


@contextlib.contextmanager
def _private_folders() -> Iterator[tuple[int | None, int | None]]:
    """Open handles on the kernels and hashes folders (see :func:`open_private_folder`), closed afterwards."""
    handles: list[int | None] = []
    try:
        for folder in kernel_folders():
            handles.append(open_private_folder(folder))
        yield handles[0], handles[1]
    finally:
        for handle in handles:
            if handle is not None:
                os.close(handle)


# --------------------------------------------------------------------------- verified loading


def _open_in(folder: Path, handle: int | None, name: str) -> int:
    """Open ``name`` in ``folder`` for reading, through the folder's open ``handle`` where there is one."""
    if handle is None:
        return os.open(folder / name, _READ_FLAGS)
    return os.open(name, _READ_FLAGS, dir_fd=handle)


def _recorded_hash(record: bytes, name: str) -> str | None:
    """The SHA-256 in a record (``<64 hex digits>  <name>``) for the library ``name``; None if it is not one."""
    parts = record.decode("ascii", "replace").split()
    if len(parts) == 2 and parts[1] == name and len(parts[0]) == 64 and set(parts[0]) <= set("0123456789abcdef"):
        return parts[0]
    return None


def open_verified(target: Path, folders: tuple[int | None, int | None]) -> int | None:
    """An open handle on the library ``target`` if it is a regular file whose SHA-256 is the one recorded when it
    was built; None if it is missing, not a regular file, has no record, or has another hash (empty, truncated,
    damaged, or not the library that was built). ``folders``: from :func:`_private_folders`."""
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
    """Load the library ``target``, open as ``handle`` and verified (the handle is taken over)."""
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
    """The library ``target``, loaded once its SHA-256 matched its record: the one built earlier if intact, else
    built again now (once); never a file whose hash was not checked."""
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

    Only a library in the user's own folders whose SHA-256 is the one recorded when it was built is loaded; a
    missing, damaged or foreign one is built again (see the module's docstring). Raises
    :class:`NativeKernelsUnavailable` (one line: why) where they cannot be built or loaded.
    """
    compiler = find_compiler()
    version = compiler_version(compiler)
    failures = []
    with _private_folders() as folders:
        for flags in flag_sets():
            target = library_path(source, compiler, version, flags)
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
