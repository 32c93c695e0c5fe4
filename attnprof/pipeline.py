"""The stages end to end, for the CLI and for library users: load -> analyze -> render."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from attnprof.analysis import analyze
from attnprof.analysis.compare import case_labels_by_trace
from attnprof.analysis.diagnosis import Explanation
from attnprof.analysis.insights import insights
from attnprof.analysis.records import Report
from attnprof.render.console import ConsoleRenderer, table_console
from attnprof.render.json_report import JsonRenderer
from attnprof.trace.ceilings import Ceilings, load_ceilings
from attnprof.trace.compare import COMPARE_FILE
from attnprof.trace.load import load_path
from attnprof.trace.runinfo import CallInfo, RunInfo


@dataclass
class AnalyzedRun:
    """A run folder or trace, analysed: the report and what capture recorded about its calls."""

    report: Report
    runinfo: RunInfo | None

    @property
    def call_info(self) -> dict[int, CallInfo]:
        return {c.id: c for c in self.runinfo.calls} if self.runinfo else {}


def analyze_run(path: Path) -> AnalyzedRun:
    run = load_path(Path(path))
    compare = read_compare(run.folder) if run.folder else None
    cases = case_labels_by_trace(compare["rows"]) if compare else None
    return AnalyzedRun(analyze(run.traces, run.runinfo, run.source, cases), run.runinfo)


def analyze_path(path: Path) -> Report:
    return analyze_run(path).report


def render_json(report: Report) -> str:
    return JsonRenderer().render(report)


def render_console(report: Report, show_calls: bool = False, file=None) -> None:
    """The tables on stdout (or `file`), the notes on stderr: `attnprof ... > report.txt` keeps the tables."""
    console = table_console(file or sys.stdout)
    ConsoleRenderer(show_calls=show_calls).print_to(console, report, notes_to=table_console(sys.stderr))


def read_compare(folder: Path) -> dict | None:
    """The folder's compare.json document (`attnprof compare`'s rows), None when absent or unreadable."""
    path = Path(folder) / COMPARE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("rows"), list) else None


def dashboard_ceilings(report: Report | None, compare: dict | None) -> Ceilings | None:
    """The ceilings compare.json recorded, else this machine's cache for the report's device."""
    if compare and compare.get("ceilings"):
        try:
            return msgspec.convert(compare["ceilings"], Ceilings)
        except msgspec.ValidationError:
            pass  # an older or damaged record: fall back to the cache
    if report is not None and report.device:
        return load_ceilings(report.device)
    return None


def dashboard_html(report: Report | None, folder: Path, explanations: list[Explanation] | None = None,
                   compare: dict | None = None, ceilings: Ceilings | None = None, title: str | None = None,
                   call_info: dict[int, CallInfo] | None = None) -> str:
    """The dashboard page of a report and/or the folder's compare.json, as write_dashboard_for writes it."""
    from attnprof.render.dashboard import DashboardRenderer  # lazy: importing plotly costs time

    if compare is None:
        compare = read_compare(folder)
    if ceilings is None:
        ceilings = dashboard_ceilings(report, compare)
    renderer = DashboardRenderer(insights(report, call_info, ceilings, explanations), compare,
                                 title or f"attnprof — {Path(folder).resolve().name}")
    return renderer.render(report)


def write_dashboard_for(report: Report | None, folder: Path, explanations: list[Explanation] | None = None,
                        compare: dict | None = None, ceilings: Ceilings | None = None, name: str | None = None,
                        title: str | None = None, call_info: dict[int, CallInfo] | None = None) -> Path:
    """Write `folder/name` (default dashboard.html) for a report and/or the folder's compare.json; returns its path.

    `explanations`: waterfalls to show (None: explain comparable call sites of the report). `compare`: the
    compare.json document (None: read it from the folder if there). `ceilings`: for the roofline (None: those
    compare.json recorded, else this machine's cache for the report's device). `call_info`: runinfo.json's
    calls by id (`AnalyzedRun.call_info`), for the fallback reasons in the causes.
    """
    from attnprof.render.dashboard import DASHBOARD_FILE

    path = Path(folder) / (name or DASHBOARD_FILE)
    path.write_text(dashboard_html(report, folder, explanations, compare, ceilings, title, call_info))
    return path


def write_reports(run: AnalyzedRun, folder: Path, console: bool = True) -> None:
    """What `attnprof trace` leaves in a run folder after the run: attnprof.json, dashboard.html, the Perfetto overlay
    and the TensorBoard scalars; and the table, on stdout after the script's own output (notes on stderr)."""
    from attnprof.render.trace_views import write_trace_views  # lazy: importing tensorboard costs ~0.2 s

    report = run.report
    renderer = JsonRenderer()
    (Path(folder) / renderer.output_name).write_text(renderer.render(report) + "\n")
    write_dashboard_for(report, folder, call_info=run.call_info)
    write_trace_views(report, folder)
    if console:
        sys.stdout.flush()
        render_console(report)
