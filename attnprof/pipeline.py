"""The stages end to end, for the CLI and for library users: load -> analyze -> render; for `attnprof compare`,
capture -> load -> analyze -> render."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from attnprof.analysis import analyze
from attnprof.analysis.compare import CompareDocument, CompareRow, Comparison, case_labels_by_trace, comparison
from attnprof.analysis.diagnosis import Explanation
from attnprof.analysis.insights import insights
from attnprof.analysis.records import Report
from attnprof.capture.nsight import export_report
from attnprof.errors import AttnprofError
from attnprof.files import DEFAULT_MAX_INPUT_MB, write_failure
from attnprof.render.console import ConsoleRenderer, table_console
from attnprof.render.json_report import JsonRenderer
from attnprof.trace.ceilings import Ceilings, load_ceilings
from attnprof.trace.compare import COMPARE_FILE
from attnprof.trace.load import load_path, load_trace
from attnprof.trace.runinfo import CallInfo, RunInfo

if TYPE_CHECKING:
    from attnprof.capture.compare import CompareOptions
    from attnprof.render.dashboard import DashboardRenderer

#: `attnprof compare`'s progress: (what runs now, done, total)
CompareProgress = Callable[[str, int, int], None]


@dataclass
class AnalyzedRun:
    """A run folder or trace, analysed: the report and what capture recorded about its calls."""

    report: Report
    runinfo: RunInfo | None
    other_ranks: list[Report] = field(default_factory=list)  # a job: the other ranks' own reports (their overlays)

    @property
    def call_info(self) -> dict[int, CallInfo]:
        return {c.id: c for c in self.runinfo.calls} if self.runinfo else {}


def analyze_run(path: Path, max_mb: float = DEFAULT_MAX_INPUT_MB) -> AnalyzedRun:
    """Load and analyse a run folder or trace; `max_mb` caps each input file (decompressed)."""
    from attnprof.multirank import analyze_ranks, job_report, rank_inputs

    ranks = rank_inputs(Path(path))
    if ranks:  # a job of several ranks (torchrun): one report across them
        facts = analyze_ranks(ranks, str(path))
        runinfo = next(r.runinfo for r in ranks if r.files)
        return AnalyzedRun(job_report(facts, str(path), ranks), runinfo, [f.report for f in facts[1:]])
    run = load_path(Path(path), max_mb, export=export_report)
    compare = read_compare(run.folder) if run.folder else None
    cases = case_labels_by_trace(compare.rows) if compare else None
    report = analyze(run.traces, run.runinfo, run.source, run.ncu, cases)
    report.notes[:0] = run.notes  # what of the folder was left out comes first
    return AnalyzedRun(report, run.runinfo)


def analyze_path(path: Path, max_mb: float = DEFAULT_MAX_INPUT_MB) -> Report:
    return analyze_run(path, max_mb).report


def render_json(report: Report) -> str:
    return JsonRenderer().render(report)


def render_console(report: Report, show_calls: bool = False, file=None) -> None:
    """The tables on stdout (or `file`), the notes on stderr: `attnprof ... > report.txt` keeps the tables."""
    console = table_console(file or sys.stdout)
    ConsoleRenderer(show_calls=show_calls).print_to(console, report, notes_to=table_console(sys.stderr))


def read_compare(folder: Path) -> CompareDocument | None:
    """The folder's compare.json (`attnprof compare`'s rows), None when absent or unreadable. Ceilings that do
    not read (an older or damaged record) are left out: the dashboard then uses the device's cached ones."""
    path = Path(folder) / COMPARE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        return None
    try:
        ceilings = msgspec.convert(doc["ceilings"], Ceilings) if doc.get("ceilings") else None
    except msgspec.ValidationError:
        ceilings = None
    try:
        return CompareDocument(rows=msgspec.convert(doc["rows"], list[CompareRow]),
                               run=doc["run"] if isinstance(doc.get("run"), dict) else {}, ceilings=ceilings,
                               notes=[str(n) for n in doc.get("notes") or []])
    except msgspec.ValidationError:
        return None


def dashboard_ceilings(report: Report | None, compare: CompareDocument | None) -> Ceilings | None:
    """The ceilings compare.json recorded, else this machine's cache for the report's device."""
    if compare is not None and compare.ceilings is not None:
        return compare.ceilings
    if report is not None and report.device:
        return load_ceilings(report.device)
    return None


def dashboard_renderer(report: Report | None, folder: Path, explanations: list[Explanation] | None = None,
                       compare: CompareDocument | None = None, ceilings: Ceilings | None = None, title: str | None = None,
                       call_info: dict[int, CallInfo] | None = None, output_name: str | None = None,
                       plotly_src: str | None = None) -> DashboardRenderer:
    """The dashboard of a report and/or the folder's compare.json, its insights computed.

    `explanations`: waterfalls to show (None: explain comparable call sites of the report). `compare`: the
    compare.json document (None: read it from the folder if there). `ceilings`: for the roofline (None: those
    compare.json recorded, else this machine's cache for the report's device). `call_info`: runinfo.json's
    calls by id (`AnalyzedRun.call_info`), for the fallback reasons in the causes. `output_name`: the page's file
    name (default dashboard.html). `plotly_src`: plotly.js from that file beside the page, not inlined.
    """
    from attnprof.render.dashboard import DASHBOARD_FILE, DashboardRenderer  # lazy: importing plotly costs time

    if compare is None:
        compare = read_compare(folder)
    if ceilings is None:
        ceilings = dashboard_ceilings(report, compare)
    return DashboardRenderer(insights(report, call_info, ceilings, explanations), compare,
                             title or f"attnprof — {Path(folder).resolve().name}", output_name or DASHBOARD_FILE,
                             plotly_src)


def dashboard_html(report: Report | None, folder: Path, explanations: list[Explanation] | None = None,
                   compare: CompareDocument | None = None, ceilings: Ceilings | None = None, title: str | None = None,
                   call_info: dict[int, CallInfo] | None = None) -> str:
    """The dashboard page of a report and/or the folder's compare.json, as write_dashboard_for writes it."""
    return dashboard_renderer(report, folder, explanations, compare, ceilings, title, call_info).render(report)


def write_dashboard_for(report: Report | None, folder: Path, explanations: list[Explanation] | None = None,
                        compare: CompareDocument | None = None, ceilings: Ceilings | None = None, name: str | None = None,
                        title: str | None = None, call_info: dict[int, CallInfo] | None = None,
                        plotly_src: str | None = None) -> Path:
    """Write `folder/name` (default dashboard.html) for a report and/or the folder's compare.json (see
    dashboard_renderer); returns its path."""
    renderer = dashboard_renderer(report, folder, explanations, compare, ceilings, title, call_info, name, plotly_src)
    return renderer.write(report, folder)


def write_reports(run: AnalyzedRun, folder: Path, console: bool = True) -> list[str]:
    """What `attnprof trace` leaves in a run folder after the run: attnprof.json, dashboard.html, the Perfetto overlay
    and the TensorBoard scalars; and the table, on stdout after the script's own output (notes on stderr).

    Each file is written atomically and on its own: one that cannot be written (a full disk, a read-only folder)
    leaves its previous version or none, and the others are still written. Returns one line per file missing."""
    from attnprof.render.dashboard import DASHBOARD_FILE
    from attnprof.render.trace_views import overlay_renderers, trace_view_renderers  # lazy: tensorboard ~0.2 s

    report = run.report
    folder = Path(folder)
    json_view = JsonRenderer()
    pieces = [(folder / json_view.output_name, partial(json_view.write, report, folder)),
              (folder / DASHBOARD_FILE, partial(write_dashboard_for, report, folder, call_info=run.call_info))]
    pieces += [(folder / (view.output_name or "TensorBoard scalars"), partial(view.write, report, folder))
               for view in trace_view_renderers(report)]
    pieces += [(folder / view.output_name, partial(view.write, rank_report, folder))  # a job: each rank's overlay
               for rank_report in run.other_ranks for view in overlay_renderers(rank_report)]
    missing = []
    for path, write in pieces:
        try:
            write()
        except OSError as e:
            missing.append(write_failure(path, e))
        except AttnprofError as e:
            missing.append(f"could not write {path}: {e}")
    if console:
        sys.stdout.flush()
        render_console(report)
    return missing


def run_comparison(options: CompareOptions, remeasure: bool = False,
                   progress_bar: Callable[[], AbstractContextManager[CompareProgress | None]] | None = None,
                   note: Callable[[str], None] | None = None) -> Comparison:
    """`attnprof compare`: time and profile every backend and variant on every case (capture, inside
    `progress_bar`), the device's ceilings (measured once, then cached; `note` says when it measures), each
    profiled trace analysed, joined into rows; compare.json written into the run folder. Returns the comparison."""
    import torch  # lazy: the rest of the pipeline never needs it

    from attnprof.capture.ceilings import device_ceilings, device_name
    from attnprof.capture.compare import run_compare
    from attnprof.render.compare_table import CompareDocumentRenderer

    with (progress_bar() if progress_bar else nullcontext()) as step:
        run = run_compare(options, progress=step)
    device = torch.device(options.device)
    ceilings: Ceilings | None
    if remeasure or any(m.unsupported is None for m in run.measurements):
        ceilings = device_ceilings(device, remeasure=remeasure, progress=note)
    else:  # nothing ran: no percentage to divide, so no minute spent measuring the device
        ceilings = load_ceilings(device_name(device))
    folder = Path(run.folder)
    calls_by_trace = {file: analyze([load_trace(folder / file)], None, file).calls
                      for file in sorted({m.trace for m in run.measurements if m.trace})}
    compared = comparison(run, calls_by_trace, ceilings)
    try:
        CompareDocumentRenderer().write(compared, folder)
    except OSError as e:
        raise AttnprofError(f"{write_failure(folder / COMPARE_FILE, e)} (traces kept in {folder})") from None
    return compared
