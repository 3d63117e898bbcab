"""The C kernels' cache loads only what this user built, intact.

Each test injects a fault into a temporary user cache ($MNISTGEN_CACHE_DIR) and loads the kernels through the normal
API (``load_gan_library``, ``load_vae_library``):

- a library planted at the expected name (its constructor writes a marker file) is never loaded: it is built
  again, and the kernels work; so is a truncated one (loaded in a child process: a loader that does not check dies
  of SIGBUS), an empty one, a symbolic link, one without a record of its hash or with a damaged record;
- a kernels folder writable by group or others, owned by another user, or a symbolic link is refused in one line
  naming the folder (NativeKernelsUnavailable, which callers turn into PyTorch's kernels and one note), and nothing
  in it is loaded;
- a fresh cache's folders are created 0700 whatever the umask; the record is the library's SHA-256;
- where rebuilding fails, or the fresh build does not verify, the load fails in one line and nothing is loaded;
- where a library is loaded by name (no /proc/self/fd), a parent folder that others may write without the sticky
  bit is refused.

The tests that compile use the ``needs_native_kernels`` fixture (skipped, with the reason, without a C compiler);
the folder rules are also tested without one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mnistgen.kernels import native

PLANTED_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *marker = fopen(MARKER, "w");
    if (marker) { fputs("the planted library ran\n", marker); fclose(marker); }
}
"""


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty user cache and no library loaded yet in this process (restored afterwards): the cache folder."""
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "cache"))
    native.load_library.cache_clear()
    yield Path(os.path.realpath(tmp_path / "cache"))
    native.load_library.cache_clear()


@pytest.fixture
def cache(needs_native_kernels, empty_cache):
    """``empty_cache`` on a machine where the C kernels build (skipped otherwise)."""
    return empty_cache


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_libraries(source: Path) -> list[Path]:
    """Where the libraries of ``source`` are cached, one per set of compiler flags (best first)."""
    compiler = native.find_compiler()
    version = native.compiler_version(compiler)
    chosen = native.library_instruction_set(source)
    return [native.library_path(source, compiler, version, flags, chosen) for flags in native.flag_sets(chosen)]


def build_without_loading(source: Path) -> Path:
    """Build ``source``'s library into the cache as a first load does (the first flags that compile here), but
    without loading it into this process: damaging a library that this process has mapped would crash it."""
    compiler = native.find_compiler()
    version = native.compiler_version(compiler)
    failures, chosen = [], native.library_instruction_set(source)
    for flags in native.flag_sets(chosen):
        target = native.library_path(source, compiler, version, flags, chosen)
        private_folder(target.parent)
        private_folder(target.parent.parent / "kernel-hashes")
        try:
            native.build(source, compiler, flags, target)
        except native.NativeKernelsUnavailable as exc:
            failures.append(exc)
            continue
        return target
    raise failures[0]


def replace_with(library: Path, content: Path) -> None:
    """Put ``content`` at ``library`` by a rename, as another process would (never writing over a mapped file)."""
    temporary = library.with_name(f".{library.name}.planting")
    shutil.copyfile(content, temporary)
    os.replace(temporary, library)


def built_library(source: Path) -> Path:
    """The one library of ``source`` in the cache (the flags it built with here)."""
    built = [library for library in expected_libraries(source) if library.exists()]
    assert len(built) == 1, built
    return built[0]


def assert_works(library, source: Path) -> None:
    """The library runs its layout function and reports the layout mnistgen's Python side declares."""
    expected = native.expected_layout(source, native.library_instruction_set(source))
    assert native.reported_layout(library, source) == expected


def assert_verified(library: Path) -> None:
    """``library`` is a complete build: its record is its SHA-256, in ``sha256sum``'s format."""
    assert library.stat().st_size > 0
    assert native.hash_path(library).read_text() == f"{sha256(library)}  {library.name}\n"


def private_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def write_record(library: Path) -> None:
    """Record ``library``'s SHA-256 as a build would: a planted library with a matching record."""
    record = native.hash_path(library)
    private_folder(record.parent)
    record.write_text(f"{sha256(library)}  {library.name}\n")


def compile_planted(folder: Path) -> tuple[Path, Path]:
    """A library whose constructor writes a marker file, and that marker's path. Checked: loading it (in a child
    process) writes the marker, which is then removed."""
    source, library, marker = folder / "planted.c", folder / "planted.so", folder / "the-planted-library-ran"
    source.write_text(PLANTED_C)
    subprocess.run([native.find_compiler(), "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library),
                    str(source)], check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(library)], check=True,
                   timeout=60)
    assert marker.read_text() == "the planted library ran\n"
    marker.unlink()
    return library, marker


def plant(folder: Path, source: Path, records: bool) -> Path:
    """Put the planted library where every library of ``source`` is expected (with matching records if
    ``records``); returns the marker that shows it ran."""
    planted, marker = compile_planted(folder)
    for library in expected_libraries(source):
        private_folder(library.parent)
        replace_with(library, planted)
        if records:
            write_record(library)
    return marker


def refusal(load) -> str:
    with pytest.raises(native.NativeKernelsUnavailable) as error:
        load()
    message = str(error.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- damaged or foreign libraries


@pytest.mark.parametrize("over_a_build", [False, True], ids=["no record", "over a recorded build"])
def test_a_planted_library_is_never_loaded_but_built_again(cache, kernel_instruction_set, tmp_path, over_a_build):
    if over_a_build:  # a library of ours, recorded, then replaced by the planted one (the record is the old one's)
        build_without_loading(native.GAN_SOURCE)
    marker = plant(tmp_path, native.GAN_SOURCE, records=False)
    assert_works(native.load_gan_library(), native.GAN_SOURCE)
    assert not marker.exists()
    rebuilt = [library for library in expected_libraries(native.GAN_SOURCE) if native.hash_path(library).exists()]
    assert len(rebuilt) == 1  # the flags that build here; the other file is still the planted one, never loaded
    assert_verified(rebuilt[0])
    assert sha256(rebuilt[0]) != sha256(tmp_path / "planted.so")


LOAD_IN_A_CHILD = """
from mnistgen.kernels import native
library = native.load_vae_library()
assert native.reported_layout(library, native.VAE_SOURCE) == native.expected_layout(
    native.VAE_SOURCE, native.library_instruction_set(native.VAE_SOURCE))
print("loaded and checked")
"""


def test_a_truncated_library_is_built_again(cache):
    library = build_without_loading(native.VAE_SOURCE)
    good = library.read_bytes()
    library.write_bytes(good[:len(good) // 2])  # a crash or a full disk after the record was written
    before = sorted(cache.rglob("*"))
    # in a child: loading the truncated file would kill the process with SIGBUS
    result = subprocess.run([sys.executable, "-c", LOAD_IN_A_CHILD], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded and checked" in result.stdout and result.stderr == ""  # built again, silently
    assert_verified(library)
    assert len(library.read_bytes()) == len(good)
    assert sorted(cache.rglob("*")) == before  # the same library again, not a slower build beside it


def empty_library(library: Path) -> None:
    library.write_bytes(b"")


def no_record(library: Path) -> None:
    native.hash_path(library).unlink()


def damaged_record(library: Path) -> None:
    record = native.hash_path(library)
    record.write_text(record.read_text()[:20])


def record_of_another_file(library: Path) -> None:
    native.hash_path(library).write_text(f"{hashlib.sha256(b'another').hexdigest()}  {library.name}\n")


def library_a_symlink(library: Path) -> None:  # even to a good copy: only a regular file in the folder is loaded
    copy = library.with_name("copy-elsewhere")
    shutil.copyfile(library, copy)
    library.unlink()
    library.symlink_to(copy)


@pytest.mark.parametrize("damage", [empty_library, no_record, damaged_record, record_of_another_file,
                                    library_a_symlink])
def test_a_damaged_library_or_record_means_building_again(cache, damage):
    library = build_without_loading(native.VAE_SOURCE)
    files = sorted(path for path in cache.rglob("*") if path.name != "copy-elsewhere")
    damage(library)
    assert_works(native.load_vae_library(), native.VAE_SOURCE)
    assert not library.is_symlink()
    assert_verified(library)
    # the same library again: not an empty file selecting a slower build forever
    assert sorted(path for path in cache.rglob("*") if path.name != "copy-elsewhere") == files


def test_when_building_again_fails_the_load_fails_in_one_line_and_loads_nothing(cache, tmp_path, monkeypatch):
    marker = plant(tmp_path, native.VAE_SOURCE, records=False)

    def failing_build(source, *args):
        raise native.NativeKernelsUnavailable(f"compiling {source.name} with cc failed: error: no space left")

    monkeypatch.setattr(native, "build", failing_build)
    assert "compiling vae_cpu.c" in refusal(native.load_vae_library)
    assert not marker.exists()


def test_a_library_changed_right_after_its_build_is_not_loaded(cache, tmp_path, monkeypatch):
    planted, marker = compile_planted(tmp_path)
    real_build = native.build

    def build_then_replace(source, compiler, flags, target):  # another process writes over it meanwhile
        real_build(source, compiler, flags, target)
        replace_with(target, planted)

    monkeypatch.setattr(native, "build", build_then_replace)
    assert "does not have the SHA-256 recorded for it" in refusal(native.load_vae_library)
    assert not marker.exists()


# --------------------------------------------------------------------------- the user's own folders


@pytest.mark.parametrize("mode, who", [(0o777, "group and others"), (0o770, "group"), (0o707, "others")],
                         ids=["0777", "0770", "0707"])
def test_a_kernels_folder_writable_by_others_is_refused(cache, tmp_path, mode, who):
    marker = plant(tmp_path, native.VAE_SOURCE, records=True)  # with matching records: the folder rule must hold
    kernels = cache / "kernels"
    os.chmod(kernels, mode)
    message = refusal(native.load_vae_library)
    assert f"{kernels} is writable by {who} (mode {mode:04o})" in message and "MNISTGEN_CACHE_DIR" in message
    assert not marker.exists()


def test_a_kernels_folder_owned_by_another_user_is_refused(cache, tmp_path, monkeypatch):
    marker = plant(tmp_path, native.VAE_SOURCE, records=True)
    kernels = cache / "kernels"
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # the folder is now someone else's
    message = refusal(native.load_vae_library)
    assert f"{kernels} is owned by uid {me}, not by you (uid {me + 1})" in message
    assert "MNISTGEN_CACHE_DIR" in message
    assert not marker.exists()


def test_a_symlinked_kernels_folder_is_refused(cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    marker = plant(tmp_path, native.VAE_SOURCE, records=True)
    kernels = cache / "kernels"
    kernels.rename(elsewhere)  # private, ours, with recorded libraries: only the link is wrong
    kernels.symlink_to(elsewhere)
    assert f"{kernels} is a symbolic link" in refusal(native.load_vae_library)
    assert not marker.exists()


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o022], ids=["umask 000", "umask 002", "umask 022"])
def test_a_fresh_cache_is_created_private(cache, umask):
    previous = os.umask(umask)
    try:
        assert_works(native.load_vae_library(), native.VAE_SOURCE)
    finally:
        os.umask(previous)
    for folder in (cache / "kernels", cache / "kernel-hashes"):
        assert stat.S_IMODE(folder.lstat().st_mode) == 0o700, folder


def test_the_record_is_the_libraries_sha256(cache, kernel_instruction_set):
    native.load_gan_library()
    native.load_vae_library()
    for source in (native.GAN_SOURCE, native.VAE_SOURCE):
        library = built_library(source)
        assert native.hash_path(library) == cache / "kernel-hashes" / f"{library.name}.sha256"
        assert native.hash_path(library).read_text() == f"{sha256(library)}  {library.name}\n"
    assert sorted(path.name for path in (cache / "kernels").iterdir()) == sorted(  # records beside, not among them
        built_library(source).name for source in (native.GAN_SOURCE, native.VAE_SOURCE))


@pytest.mark.parametrize("parent_mode, refused", [(0o777, True), (0o1777, False), (0o755, False)],
                         ids=["0777", "1777", "0755"])
def test_loading_by_name_refuses_a_parent_that_others_may_rename_in(cache, monkeypatch, tmp_path, parent_mode,
                                                                    refused):
    native.load_vae_library()
    native.load_library.cache_clear()
    monkeypatch.setattr(native, "FD_FOLDER", tmp_path / "no-proc-self-fd")  # as on macOS: dlopen by name
    os.chmod(cache, parent_mode)
    if refused:
        message = refusal(native.load_vae_library)
        assert f"{cache / 'kernels'} is in {cache}, which others may write without the sticky bit" in message
    else:
        assert_works(native.load_vae_library(), native.VAE_SOURCE)


# --------------------------------------------------------------------------- the folder rules, without a compiler


def test_open_private_folder_creates_0700_and_refuses_what_is_not_ones_own(empty_cache, monkeypatch):
    fresh = empty_cache / "fresh"
    previous = os.umask(0)
    try:
        os.close(native.open_private_folder(fresh))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(fresh.lstat().st_mode) == 0o700
    os.chmod(fresh, 0o777)
    with pytest.raises(native.UnsafeKernelFolder, match="is writable by group and others"):
        native.open_private_folder(fresh)
    os.chmod(fresh, 0o700)
    link = empty_cache / "link"
    link.symlink_to(fresh)
    with pytest.raises(native.UnsafeKernelFolder, match="is a symbolic link"):
        native.open_private_folder(link)
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)
    with pytest.raises(native.UnsafeKernelFolder, match=f"is owned by uid {me}"):
        native.open_private_folder(fresh)
