"""A lean install: the declared runtime dependencies are exactly six, no source file imports a heavy library, and a
built wheel carries the MNIST sample, which loads from an installed copy with nothing else.

The full check of a fresh environment's `pip install .` (what it installs, and its size on disk) takes minutes:
it is scripts/check_lean_install.sh, run by hand; its output is in the README."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = {"torch", "numpy", "matplotlib", "pillow", "tqdm", "platformdirs"}
HEAVY = {"mlxtend", "pandas", "sklearn", "scipy", "pooch"}  # module names
HEAVY_DISTRIBUTIONS = {"mlxtend", "pandas", "scikit-learn", "scipy", "pooch"}
SAMPLE_FILES = {"sample-train-images-idx3-ubyte.gz", "sample-train-labels-idx1-ubyte.gz",
                "sample-t10k-images-idx3-ubyte.gz", "sample-t10k-labels-idx1-ubyte.gz", "README.md"}


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11+ or tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def distribution_name(requirement: str) -> str:
    """'Pillow>=9.5' -> 'pillow' (PEP 503 normalized)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_runtime_dependencies_are_exactly_six():
    project = pyproject()["project"]
    assert {distribution_name(r) for r in project["dependencies"]} == RUNTIME
    for extra, requirements in project.get("optional-dependencies", {}).items():
        assert not {distribution_name(r) for r in requirements} & (HEAVY_DISTRIBUTIONS - {"scipy"}), extra
    # scipy is for the tests only (independent checks): the dev extra, never the runtime
    assert "scipy" in {distribution_name(r) for r in project["optional-dependencies"]["dev"]}


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of the modules a file imports: import statements, and importlib.import_module /
    importlib.util.find_spec / __import__ calls with a literal name."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "find_spec", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return {name.split(".")[0] for name in names}


def test_no_source_file_imports_a_heavy_library():
    sources = sorted((ROOT / "src" / "mnistgen").rglob("*.py"))
    assert len(sources) > 20
    offenders = {}
    for path in sources:
        found = imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path))) & HEAVY
        if found:
            offenders[str(path.relative_to(ROOT))] = sorted(found)
    assert offenders == {}


def test_the_import_scan_sees_each_form():
    code = ("import scipy.linalg\nfrom pandas import DataFrame\nimport importlib\nimportlib.import_module('pooch')\n"
            "importlib.util.find_spec('mlxtend')\n__import__('sklearn')\nfrom . import sibling\n")
    assert imported_modules(ast.parse(code)) == HEAVY | {"importlib"}


# --------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the sources (the checkout itself is not written to), without network."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = work / "dist"
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
               "-q", "-w", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=work)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel offline here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("mnistgen-*.whl")
    return built


def test_the_wheel_holds_the_sample_and_declares_only_the_six(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1] for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("mnistgen/assets/mnist-sample/")} == SAMPLE_FILES
    assert {distribution_name(r) for r in requires if "extra ==" not in r} == RUNTIME


def test_the_sample_loads_from_an_installed_copy_alone(wheel, tmp_path):
    """The wheel unpacked (as pip installs it) and first on the path; offline, no data folder, an empty cache, and
    every heavy library unimportable: MNIST falls back to the sample in the installed copy."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
import mnistgen
from mnistgen.config import DataConfig
from mnistgen.data.sources import load_raw
raw = load_raw(DataConfig())
print(mnistgen.__file__)
print(raw.provenance["dataset"], raw.provenance["folder"], len(raw.train_labels), len(raw.test_labels))
"""
    env = {k: v for k, v in os.environ.items() if k != "MNISTGEN_DATA_DIR"}
    env.update(PYTHONPATH=str(site), MNISTGEN_OFFLINE="1", MNISTGEN_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    where, loaded = result.stdout.splitlines()
    assert Path(where).is_relative_to(site)
    assert loaded == f"mnist-sample {site / 'mnistgen' / 'assets' / 'mnist-sample'} 4000 1000"
    assert "WARNING: using the 5,000-digit MNIST sample shipped with mnistgen" in result.stderr


PRETRAINED_BYTES = 8_000_000  # what the shipped trained models may add to the wheel, all together


def test_the_wheel_ships_the_pretrained_models_within_8_mb_and_an_installed_copy_loads_them(wheel, tmp_path):
    from mnistgen.pretrained import manifest

    prefix = "mnistgen/assets/pretrained/"
    with zipfile.ZipFile(wheel) as archive:
        shipped = {info.filename: info.compress_size for info in archive.infolist() if info.filename.startswith(prefix)}
        archive.extractall(tmp_path / "site")
    expected = {prefix + "pretrained.json"} | {f"{prefix}{name}/{file}" for name in manifest()
                                               for file in ("weights.pt", "config.json", "metrics.jsonl")}
    assert expected <= set(shipped) and len(manifest()) == 4
    assert sum(shipped.values()) <= PRETRAINED_BYTES
    code = "import mnistgen; print(mnistgen.__file__, mnistgen.load_pretrained('gan-spec').sample(4).shape)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "MNISTGEN_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    where, shape = result.stdout.strip().split(" ", 1)
    assert Path(where).is_relative_to(tmp_path / "site") and shape == "(4, 28, 28)"
