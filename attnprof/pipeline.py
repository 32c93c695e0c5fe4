"""The stages end to end, for the CLI and for library users: load -> analyze -> render."""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from attnprof.analysis import analyze
from attnprof.analysis.compare import case_labels_by_trace
from attnprof.analysis.diagnosis import Explanation
from attnprof.analysis.insights import insights
from attnprof.analysis.records import Report
from attnprof.errors import AttnprofError
from attnprof.files import DEFAULT_MAX_INPUT_MB, atomic_write, write_failure
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
    run = load_path(Path(path), max_mb)
    compare = read_compare(run.folder) if run.folder else None
    cases = case_labels_by_trace(compare["rows"]) if compare else None
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
    return atomic_write(path, dashboard_html(report, folder, explanations, compare, ceilings, title, call_info))


def write_reports(run: AnalyzedRun, folder: Path, console: bool = True) -> list[str]:
    """What `attnprof trace` leaves in a run folder after the run: attnprof.json, dashboard.html, the Perfetto overlay
    and the TensorBoard scalars; and the table, on stdout after the script's own output (notes on stderr).

    Each file is written atomically and on its own: one that cannot be written (a full disk, a read-only folder)
    leaves its previous version or none, and the others are still written. Returns one line per file missing."""
    from attnprof.render.dashboard import DASHBOARD_FILE
    from attnprof.render.trace_views import write_overlays, write_trace_views  # lazy: tensorboard ~0.2 s

    report = run.report
    renderer = JsonRenderer()
    folder = Path(folder)
    pieces = [
        (folder / renderer.output_name, lambda: atomic_write(folder / renderer.output_name,
                                                             renderer.render(report) + "\n")),
        (folder / DASHBOARD_FILE, lambda: write_dashboard_for(report, folder, call_info=run.call_info)),
        (folder / "trace views (Perfetto overlay, TensorBoard scalars)", lambda: write_trace_views(report, folder)),
    ]
    for rank_report in run.other_ranks:  # a job: every rank's Perfetto overlay
        overlay_of = Path(rank_report.trace_files[0]).name if rank_report.trace_files else "a rank"
        pieces.append((folder / f"Perfetto overlay of {overlay_of}",
                       functools.partial(write_overlays, rank_report, folder)))
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
