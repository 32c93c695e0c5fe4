"""The records between analysis and render for `attnprof explain` and `attnprof compare`: whether the causes
explain a time is decided once, in analysis, and render prints what the record says; compare.json reads back as
typed rows (the dashboard's and the gallery's input), and what the renderers write reads back the same."""
from __future__ import annotations

import dataclasses
import json

import msgspec
import pytest
from hand_records import call, compare_doc, report
from seed_runs import H100_TRACES

from attnprof.analysis import diagnosis as dg
from attnprof.analysis.compare import CompareRow, Comparison
from attnprof.pipeline import read_compare
from attnprof.render.compare_table import CompareDocumentRenderer, CompareTableRenderer
from attnprof.render.explain import DiagnosesRenderer
from attnprof.trace.ceilings import Ceilings
from attnprof.trace.compare import CompareRun


def _kernels_beyond_true_time():
    """a.py:1: 40 µs of kernels + 10 µs idle in a 50 µs true time; b.py:1: 200 µs of kernels in a 120 µs true
    time (a noisy or stretched timing): no cause can cover the 80 µs b's kernels take beyond its time."""
    calls = [call("a.py:1", "flash", id=1, compute=40.0, launch=10.0),
             call("b.py:1", "flash", id=2, compute=200.0, launch=10.0)]
    return report(calls, {("a.py:1", "fwd"): (50.0, 50.0), ("b.py:1", "fwd"): (120.0, 210.0)})


def test_a_diagnosis_carries_whether_its_causes_explain_its_time():
    r = _kernels_beyond_true_time()
    a, b = dg.diagnose(dg.select(r, site="a.py:1")), dg.diagnose(dg.select(r, site="b.py:1"))
    assert a.subject.us == pytest.approx(50.0) and a.unexplained_us == pytest.approx(0.0, abs=1e-6)
    assert a.explained
    assert b.subject.us == pytest.approx(120.0) and b.unexplained_us == pytest.approx(120.0 - 200.0)
    assert not b.explained  # 80 µs of 120 is far beyond the 5% the causes may miss


def test_the_explain_table_prints_what_the_record_says_about_the_remainder():
    r = _kernels_beyond_true_time()
    b = dg.diagnose(dg.select(r, site="b.py:1"))
    shown = DiagnosesRenderer(width=200).render([b])
    assert "unexplained" in shown and "-80.0" in shown
    # the record is the one judge: told the causes explain it, render shows no remainder row
    trusted = DiagnosesRenderer(width=200).render([dataclasses.replace(b, explained=True)])
    assert "unexplained" not in trusted
    doc = json.loads(DiagnosesRenderer(as_json=True).render([b]))
    assert doc["diagnoses"][0]["explained"] is False


def test_compare_json_reads_back_typed_and_a_damaged_ceilings_entry_costs_only_the_ceilings(tmp_path):
    doc = compare_doc()
    doc["ceilings"] = {"device": "x"}  # no bandwidth, no TFLOP/s: not a Ceilings
    (tmp_path / "compare.json").write_text(json.dumps(doc))
    back = read_compare(tmp_path)
    assert back.ceilings is None
    # compare_doc's sdpa-auto rows: 40 µs at L=256, times L/256
    assert [(r.backend, r.shape[2], r.median_us) for r in back.rows[:3]] == [
        ("sdpa-auto", 256, 40.0), ("sdpa-auto", 1024, 160.0), ("sdpa-auto", 4096, 640.0)]
    assert back.rows[-1].unsupported == "flash_attn_interface missing" and back.rows[-1].median_us is None
    del doc["rows"][0]["backend"]  # a row that does not say what ran is no row
    (tmp_path / "compare.json").write_text(json.dumps(doc))
    assert read_compare(tmp_path) is None


def test_what_the_compare_renderers_write_reads_back_as_the_same_rows(tmp_path):
    doc = json.loads((H100_TRACES / "compare" / "compare.json").read_text())
    compared = Comparison(run=msgspec.convert({**doc["run"], "measurements": []}, CompareRun),
                          rows=msgspec.convert(doc["rows"], list[CompareRow]),
                          ceilings=msgspec.convert(doc["ceilings"], Ceilings), notes=["a note"])
    assert CompareDocumentRenderer().write(compared, tmp_path) == tmp_path / "compare.json"
    back = read_compare(tmp_path)
    assert back.rows == compared.rows and back.ceilings == compared.ceilings and back.notes == ["a note"]
    assert back.run["device"] == doc["run"]["device"] and "measurements" not in back.run
    assert json.loads(CompareTableRenderer(as_json=True).render(compared)) == doc["rows"]
    # the table from the typed comparison: the H100 closing note, SDPA auto 44.6 µs, FA2 through the seed wrapper
    # 225.9 µs at 12,64,256,64
    table = CompareTableRenderer(width=160).render(compared)
    assert "44.6" in table and "225.9" in table
