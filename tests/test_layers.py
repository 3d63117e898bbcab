"""The import layers: pyproject.toml declares them as import-linter contracts (networks and pure math at the bottom,
then data/runs/kernels, accelerate, train, evaluate/scoring/plots, reproduce/report/sweep, the faces on top; no
cycles). They hold for the package, they are a contract that can fail, and no module imports itself in a circle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mnistgen"


def lint_imports(source: Path) -> subprocess.CompletedProcess:
    """import-linter with the project's contracts (pyproject.toml, found in the project's root), on the package found
    first in ``source``."""
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
               "sys.argv = ['lint-imports', *sys.argv[1:]]; lint_imports_command()", "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(source)))


def test_the_package_keeps_its_import_contracts():
    result = lint_imports(PACKAGE.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_an_import_from_accelerate_into_train_breaks_the_contract(tmp_path):
    """An accelerator that imports the training loop's module (as they once did) is refused."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "mnistgen", ignore=shutil.ignore_patterns("__pycache__"))
    engines = copy / "mnistgen" / "accelerate" / "engines.py"
    future = "from __future__ import annotations\n"
    engines.write_text(engines.read_text().replace(future, future + "\nfrom ..train import common\n"))
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "mnistgen.accelerate is not allowed to import mnistgen.train" in result.stdout, result.stdout[-3000:]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def test_strongly_connected_finds_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("lazy", [True])
def test_no_module_imports_itself_in_a_circle(lazy):
    """Module by module, imports inside functions included (a package and its own modules too)."""
    graph = grimp.build_graph("mnistgen", cache_dir=None)
    edges = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    assert strongly_connected(edges) == []
