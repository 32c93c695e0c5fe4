"""The stages end to end, for the CLI and for library users: load -> analyze -> render."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from attnprof.analysis import analyze
from attnprof.analysis.records import Report
from attnprof.render.console import ConsoleRenderer
from attnprof.render.json_report import JsonRenderer
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
    return AnalyzedRun(analyze(run.traces, run.runinfo, run.source), run.runinfo)


def analyze_path(path: Path) -> Report:
    return analyze_run(path).report


def render_json(report: Report) -> str:
    return JsonRenderer().render(report)


def render_console(report: Report, show_calls: bool = False, file=None) -> None:
    console = Console(file=file or sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a pipe or log file: do not squeeze the table to 80 columns
    ConsoleRenderer(show_calls=show_calls).print_to(console, report)


def write_reports(run: AnalyzedRun, folder: Path, console: bool = True) -> None:
    """What `attnprof trace` leaves in a run folder after the run (and prints, to stderr: stdout is the script's):
    attnprof.json, dashboard.html, the Perfetto overlay and the TensorBoard scalars."""
    from attnprof.render.dashboard import write_dashboard
    from attnprof.render.trace_views import write_trace_views  # lazy: importing tensorboard costs ~0.2 s

    report = run.report
    renderer = JsonRenderer()
    (Path(folder) / renderer.output_name).write_text(renderer.render(report) + "\n")
    write_dashboard(report, folder, call_info=run.call_info)
    write_trace_views(report, folder)
    if console:
        render_console(report, file=sys.stderr)
