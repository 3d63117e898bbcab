"""docs/theory.md names the tests that check each statement: those tests must exist, and every derivation
section must name at least one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DOC = PROJECT_ROOT / "docs" / "theory.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _test_functions(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_named_in_the_theory_doc_exists():
    references = REFERENCE.findall(DOC.read_text())
    assert len(references) >= 30
    missing = [f"{file}::{name}" for file, name in references
               if not (PROJECT_ROOT / file).is_file() or name not in _test_functions(PROJECT_ROOT / file)]
    assert missing == []


def test_every_derivation_section_ends_with_the_tests_that_check_it():
    sections = re.split(r"^## ", DOC.read_text(), flags=re.MULTILINE)[1:]
    derivations = [s for s in sections if re.match(r"\d+\. ", s) and not s.startswith("12.")]
    assert len(derivations) == 12  # 1-11, and 13 (the importance-weighted bound)
    for section in derivations:
        last_paragraph = section.strip().removesuffix("---").strip().split("\n\n")[-1]
        assert last_paragraph.startswith("Checked by") and REFERENCE.search(last_paragraph), section.splitlines()[0]
