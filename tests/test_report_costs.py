"""benchmarks/report.py copies costs.py's table into docs/costs.md
(benchmarks/common.py ``splice_costs``): the measured part is replaced, the
hand-written history kept byte for byte."""

import importlib.util
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _common():
    spec = importlib.util.spec_from_file_location(
        "peernet_bench_common", os.path.join(ROOT, "benchmarks", "common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _common()


def test_splice_replaces_the_measured_part_and_keeps_the_history():
    history = common.COSTS_HISTORY + " (issue 9)\n\nFirst pass: 300 us.\n"
    doc = "## Real-process costs\n\nold table: 207 us\n\n" + history
    out = common.splice_costs("## Real-process costs\n\nnew table: 273 us\n\n\n", doc)
    assert out == "## Real-process costs\n\nnew table: 273 us\n\n" + history
    assert "207 us" not in out


def test_splice_without_a_history_is_the_measured_part_alone():
    out = common.splice_costs("## Real-process costs\n\n273 us", "## Real-process costs\n\nold")
    assert out == "## Real-process costs\n\n273 us\n"


def test_docs_costs_quotes_the_stored_run():
    # The page's measured part is the stored run's own text: a rerun of
    # costs.py without `report.py` after it (or a hand edit of the figures)
    # shows up here.
    with open(os.path.join(ROOT, "benchmarks", "results", "costs.md")) as f:
        measured = f.read()
    with open(os.path.join(ROOT, "docs", "costs.md")) as f:
        doc = f.read()
    assert common.COSTS_HISTORY in doc
    assert common.splice_costs(measured, doc) == doc
