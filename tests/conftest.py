"""Shared fixtures. Real MNIST comes from $MNISTGEN_DATA_DIR, else ../shared/data/mnist beside the project, else
the user's cache, where `mnistgen data fetch` puts it.

Where none holds the files, real-data tests are skipped with the one command that enables them, unless
MNISTGEN_REQUIRE_REAL_DATA=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "mnist"


def _user_cache_mnist() -> Path:
    """The user's own cache folder of MNIST, as `mnistgen data fetch` fills it (read before the tests isolate the
    cache; the files are only read there, never written)."""
    from mnistgen.data.cache import cache_root

    return cache_root() / "mnist"


USER_CACHE_MNIST = _user_cache_mnist()
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def _holds_mnist(folder: Path) -> bool:
    return all((folder / f"{name}.gz").is_file() or (folder / name).is_file() for name in MNIST_FILES)


def real_data_dir() -> Path | None:
    """$MNISTGEN_DATA_DIR if set (and nothing else then), else ../shared/data/mnist, else the user cache."""
    env = os.environ.get("MNISTGEN_DATA_DIR")
    candidates = [Path(env)] if env else [DEFAULT_REAL_DATA, USER_CACHE_MNIST]
    return next((folder for folder in candidates if _holds_mnist(folder)), None)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = real_data_dir()
    if folder is None:
        if os.environ.get("MNISTGEN_REQUIRE_REAL_DATA") == "1":
            pytest.fail("MNISTGEN_REQUIRE_REAL_DATA=1 but no real MNIST found (set MNISTGEN_DATA_DIR)")
        pytest.skip("real MNIST not found: run `mnistgen data fetch` once (or set MNISTGEN_DATA_DIR to a folder "
                    "with the IDX files)")
    return folder


@pytest.fixture(scope="session")
def mnist_raw(mnist_dir):
    """The whole of real MNIST in memory (RawData), loaded once per test session."""
    from mnistgen.config import DataConfig
    from mnistgen.data.sources import load_raw

    return load_raw(DataConfig(dataset="mnist", data_dir=str(mnist_dir), offline=True))


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_dirs(tmp_path_factory):
    """Never touch the real user cache, and never the network, from a test.

    Session-scoped so that it is in place before any session fixture (``mnist_raw`` verifies the
    files and records the verdict in the cache); a test's own ``monkeypatch`` still overrides it.
    """
    cache = tmp_path_factory.getbasetemp() / "user-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNISTGEN_CACHE_DIR", str(cache))
        yield


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch) -> list:
    """Fail any connection to a host other than 127.0.0.1 (no test may reach the internet); returns the addresses
    this process's sockets connect to during the test, in order (the fixture ``connections``)."""
    real_connect = socket.socket.connect
    seen = []

    def guarded(self, address):
        seen.append(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to connect to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return seen


@pytest.fixture
def connections(only_localhost) -> list:
    """The addresses the test's sockets have connected to so far (each attempt, refused ones too)."""
    return only_localhost


@pytest.fixture(scope="module")
def one_torch_thread():
    """One CPU thread for the modules that use it: the tests check results, not speed, and stay quick on a busy machine
    (two threads that must meet at every matrix product stall when another program holds a core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def native_kernels_unavailable() -> str | None:
    """Why mnistgen's C kernels (both libraries) cannot be built or loaded on this machine, or None if they can.

    A library that was built but reports another layout than the Python side declares is a bug, not a missing
    compiler: its KernelLayoutMismatch is raised, so that the tests fail rather than skip."""
    from mnistgen.kernels.native import (
        KernelLayoutMismatch,
        NativeKernelsUnavailable,
        load_gan_library,
        load_vae_library,
    )

    try:
        load_gan_library()
        load_vae_library()
    except KernelLayoutMismatch:
        raise
    except NativeKernelsUnavailable as exc:
        return str(exc)
    return None


def native_kernels_build() -> bool:
    """Whether mnistgen's C kernels work here: what ``--cpu-kernels auto`` takes on this machine's CPU."""
    return native_kernels_unavailable() is None


@pytest.fixture
def needs_native_kernels():
    """For tests of the C kernels themselves: skipped, with the reason, on a machine without a C compiler."""
    reason = native_kernels_unavailable()
    if reason is not None:
        pytest.skip(f"needs mnistgen's C kernels, which cannot be built here: {reason}")


@pytest.fixture(params=["best", "avx2"], ids=["best", "no-avx512"])
def kernel_instruction_set(request, monkeypatch):
    """Each instruction set the GAN's C kernels are built for on this processor, in turn: the best it has, then
    AVX2 as ``MNISTGEN_NO_AVX512`` picks it, which is skipped where the best is not AVX-512 (it would repeat it)."""
    from mnistgen.kernels import native

    best = native.instruction_set()
    if request.param == "avx2":
        if best != "avx512":
            pytest.skip(f"no AVX-512 here: the kernels are tested once, for {best}")
        monkeypatch.setenv(native.NO_AVX512, "1")
    return native.instruction_set()
