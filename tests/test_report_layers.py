"""The report and the pipeline that writes its folder, as layers: ``mnistgen reproduce`` may import the report, the
report imports nothing of the pipeline (both read a reproduction's layout from :mod:`mnistgen.reproduction`), scoring
a run imports nothing of it either, and no module of theirs comes back to itself through its imports."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")

PIPELINE = "mnistgen.reproduce"
AREA = ("mnistgen.report", "mnistgen.reproduce", "mnistgen.reproduction", "mnistgen.scoring",
        "mnistgen.evaluate.score_runs", "mnistgen.plots.report", "mnistgen.cli.report")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("mnistgen")


def modules_of(graph, name: str) -> set[str]:
    return {name} | graph.find_descendants(name) if graph.find_children(name) else {name}


@pytest.mark.parametrize("importer", ["mnistgen.report", "mnistgen.evaluate.score_runs"])
def test_the_report_and_a_run_s_score_import_nothing_of_the_pipeline(graph, importer):
    for module in sorted(modules_of(graph, importer)):
        assert not graph.chain_exists(importer=module, imported=PIPELINE), graph.find_shortest_chain(
            importer=module, imported=PIPELINE)


def test_no_module_of_the_report_or_the_pipeline_imports_itself_back(graph):
    for module in sorted(set().union(*(modules_of(graph, name) for name in AREA))):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            assert back is None, f"{module} imports {imported}, which imports it back: {' -> '.join(back)}"
