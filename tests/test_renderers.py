"""Every view on the one Renderer interface (render/base.py): what `render` and `write` give, console cells through
the one µs formatter, the dashboard's inlined assets, the trace views written one by one."""
from __future__ import annotations

import errno
import gzip
import json
import re
from pathlib import Path

from hand_records import call, report
from plotly.offline import get_plotlyjs
from seed_runs import H100_TRACES
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import attnprof.render
from attnprof.analysis.kernel_counters import KernelCountersSection
from attnprof.pipeline import analyze_path, analyze_run, write_reports
from attnprof.render.chrome_trace import TraceOverlayRenderer
from attnprof.render.console import ConsoleRenderer, us_cell
from attnprof.render.correlate import Correlation, CorrelationRenderer
from attnprof.render.dashboard import DashboardRenderer
from attnprof.render.json_report import JsonRenderer
from attnprof.render.kernel_counters import CountersRenderer
from attnprof.render.tensorboard import ScalarsRenderer

H200_GPT2 = Path(__file__).resolve().parents[1] / "traces" / "h200" / "gpt2-eager"
ASSETS = Path(attnprof.render.__file__).parent / "assets"


def test_console_cells_are_numbers_without_unit_and_a_dash_when_missing():
    assert us_cell(None) == "—"
    assert us_cell(12.34) == "12.3"
    assert us_cell(1234.6) == "1,235"
    assert us_cell(-1500.0) == "-1,500"  # a negative thousand drops its decimal too


def test_console_render_keeps_to_its_width():
    r = report([call("model.py:9", "flash", id=i, compute=1234.6, launch=None) for i in (1, 2)])
    narrow = ConsoleRenderer(width=80).render(r).splitlines()
    wide = ConsoleRenderer(width=240).render(r).splitlines()
    assert max(map(len, narrow)) <= 80 and max(map(len, wide)) > 80
    # the compact table (ph, %) below 140 columns, the full one (window µs) above; launch is n/a on a CPU-like run
    assert any(re.search(r"\bph\b", line) for line in narrow) and not any("window µs" in line for line in narrow)
    assert any("window µs" in line for line in wide)
    assert any("1,235" in line for line in wide)  # compute 1234.6 µs, the window is compute alone


def test_correlation_render_fits_80_with_both_tools_numbers():
    text = CorrelationRenderer(width=80).render(Correlation(analyze_path(H100_TRACES / "seed-fwd"),
                                                            analyze_path(H100_TRACES / "nsys-seed")))
    assert max(len(line) for line in text.splitlines()) <= 80
    # the seed's flash site: compute 69.6 µs under torch.profiler, 68.9 under nsys (traces/h100/README.md)
    assert "69.6" in text and "68.9" in text and "-1.1%" in text


def test_counters_render_says_when_no_kernel_was_profiled():
    text = CountersRenderer().render(KernelCountersSection(source="r.csv", kernels=[], sites=[], outside_calls=3))
    assert "median per call; r.csv" in text
    assert "no profiled kernel ran inside an attnprof range" in text


def test_json_write_is_the_report_with_a_final_newline(tmp_path):
    r = report([call("model.py:9", "flash", id=1), call("seed.py:47", "cudnn", id=2)])
    path = JsonRenderer().write(r, tmp_path)
    text = path.read_text()
    assert path == tmp_path / "attnprof.json" and text.endswith("}\n") and not text.endswith("\n\n")
    assert sorted(s["site"] for s in json.loads(text)["sites"]) == ["model.py:9", "seed.py:47"]


def test_scalars_render_and_an_event_file_replaced_by_one_without_scalars(tmp_path):
    calls = [call("model.py:42", "flash", id=i, compute=c) for i, c in ((1, 10.0), (2, 30.0))]
    r = report(calls)
    # no step recorded: both calls are step 0; their mean window (launch and other are 0 here) is (10 + 30) / 2
    assert json.loads(ScalarsRenderer().render(r))["attnprof/model.py:42 fwd/window_us"] == [[0, 20.0]]
    first = ScalarsRenderer().write(r, tmp_path)
    empty = ScalarsRenderer().write(report([]), tmp_path)
    assert first != empty and list(tmp_path.glob("events.out.tfevents.*")) == [empty]  # the first one removed
    values = [v for ev in EventFileLoader(str(empty)).Load() for v in ev.summary.value]
    assert values == []


def test_overlay_write_is_its_render_gzipped_beside_a_copy_of_every_event(tmp_path):
    r = analyze_path(H200_GPT2)
    (trace,) = [Path(t) for t in r.trace_files]
    view = TraceOverlayRenderer(trace)
    path = view.write(r, tmp_path)
    assert path == tmp_path / view.output_name and view.output_name.endswith(".attnprof.pt.trace.json.gz")
    written = json.loads(gzip.decompress(path.read_bytes()))
    original = json.loads(gzip.decompress(trace.read_bytes()))
    assert written == json.loads(view.render(r))
    events = written["traceEvents"]
    assert events[:len(original["traceEvents"])] == original["traceEvents"]
    calls = [e for e in events[len(original["traceEvents"]):] if e.get("ph") == "X" and " → " in e["name"]]
    assert len(calls) == len(r.calls)


def test_a_failing_overlay_leaves_the_other_views_written(monkeypatch, tmp_path):
    run = analyze_run(H200_GPT2)

    def full_disk(self, report, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TraceOverlayRenderer, "write", full_disk)
    missing = write_reports(run, tmp_path, console=False)
    assert len(missing) == 1 and ".attnprof.pt.trace.json.gz: no space left on the device" in missing[0]
    assert (tmp_path / "attnprof.json").is_file() and (tmp_path / "dashboard.html").is_file()
    assert len(list(tmp_path.glob("events.out.tfevents.*.attnprof"))) == 1  # the scalars, written on their own


def test_dashboard_inlines_its_assets_and_plotly_unless_told_to_share_it():
    css, js = (ASSETS / "dashboard.css").read_text(), (ASSETS / "dashboard.js").read_text()
    page = DashboardRenderer().render(None)
    assert f"<style>\n{css}</style>" in page and f"<script>\n{js}</script>" in page
    inlined = f"<script>{get_plotlyjs()}</script>"
    assert page.count(inlined) == 1
    rest = page.replace(inlined, "")
    assert "<link" not in rest and "src=" not in rest  # nothing else to fetch: the page opens offline on its own
    shared = DashboardRenderer(plotly_src="plotly.min.js").render(None)
    assert '<script src="plotly.min.js"></script>' in shared and inlined not in shared
    assert f"<script>\n{js}</script>" in shared
