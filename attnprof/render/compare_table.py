"""`attnprof compare` output: the console tables, the `--json` rows and the run folder's compare.json."""
from __future__ import annotations

import io
from itertools import groupby

import msgspec
from rich.console import Console
from rich.padding import Padding
from rich.text import Text

from attnprof.analysis.compare import CompareRow, Comparison
from attnprof.render.base import Renderer
from attnprof.render.console import DTYPE_SHORT, PIPE_WIDTH, compact, grid, part_text, pct_text, us_cell
from attnprof.render.json_report import round_floats
from attnprof.trace.ceilings import Ceilings
from attnprof.trace.compare import COMPARE_FILE, COMPARE_SCHEMA_VERSION, CompareRun


def rows_json(rows: list[CompareRow]) -> list[dict]:
    return round_floats(msgspec.to_builtins(rows))


def _json_text(doc) -> str:
    return msgspec.json.format(msgspec.json.encode(doc), indent=1).decode() + "\n"


def compare_document(run: CompareRun, rows: list[CompareRow], ceilings: Ceilings | None, notes: list[str]) -> dict:
    """compare.json: the environment, the ceilings the percentages divide by, and every row."""
    env = msgspec.to_builtins(run)
    env.pop("measurements")  # the rows carry them, joined with their split
    return {"schema_version": COMPARE_SCHEMA_VERSION, "run": env,
            "ceilings": msgspec.to_builtins(ceilings) if ceilings else None, "rows": rows_json(rows), "notes": notes}


def _rate(v: float | None) -> str:
    """Three significant figures: CPU rates are fractions of a TFLOP/s, H100 rates hundreds."""
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _case_title(row: CompareRow) -> str:
    bits = ["×".join(map(str, row.shape)), DTYPE_SHORT.get(row.dtype, row.dtype)]
    if row.causal:
        bits.append("causal")
    return " ".join(bits)


def print_compare(console: Console, run: CompareRun, rows: list[CompareRow], ceilings: Ceilings | None,
                  notes: list[str]) -> None:
    console.print(Text(f"attnprof compare — {run.device}  [torch {run.versions.get('torch', '?')}]", style="bold"))
    on_cpu = all(r.launch_us is None for r in rows)
    for title, group in groupby(rows, key=_case_title):
        case_rows = list(group)
        ran = [r for r in case_rows if r.unsupported is None]
        cells: list[list] = []  # the table's, one row per backend, variant and phase that ran
        for r in ran:
            window = r.window_us or 0.0
            peak = "—" if r.pct_of_peak is None or r.bound is None else f"{r.pct_of_peak:.0f}% {r.bound[0]}"
            if compact(console):
                parts: list[str | Text] = [pct_text(v, window) if r.window_us is not None else "—"
                                           for v in (r.compute_us, r.copy_us, r.launch_us, r.other_us)]
                cells.append([r.backend, r.variant, r.phase, us_cell(r.median_us), *parts, peak])
            else:
                parts = [part_text(v, window) if r.window_us is not None else Text("—")
                         for v in (r.compute_us, r.copy_us, r.launch_us, r.other_us)]
                cells.append([r.backend, r.variant, r.phase, r.kernels or "?", us_cell(r.median_us),
                             us_cell(r.window_us), *parts, _rate(r.tflops), _rate(r.gbps), peak])
        if compact(console):
            headers = [("backend", "word"), ("variant", "word"), ("ph", "word"), ("median µs", "num"),
                       ("compute", "num"), ("copy", "num"), ("launch", "num"), ("other", "num"), ("% peak", "num")]
        else:
            headers = [("backend", "word"), ("variant", "word"), ("phase", "word"), ("kernels", "text"),
                       ("median µs", "num"), ("window µs", "num"), ("compute", "num"), ("copy", "num"),
                       ("launch", "num"), ("other", "num"), ("TFLOP/s", "num"), ("GB/s", "num"), ("% peak", "num")]
        table = grid(cells, headers, title=title)
        console.print(table)
        # one line per backend, variant and reason: the phases that share a reason are listed together
        skipped: dict[tuple[str, str, str], list[str]] = {}
        for r in case_rows:
            if r.unsupported is not None:
                skipped.setdefault((r.backend, r.variant, r.unsupported), []).append(r.phase)
        if skipped:
            console.print(Text("  not run here:", style="bold"))
            cells = [[backend, variant, "+".join(phases), reason]
                     for (backend, variant, reason), phases in skipped.items()]
            console.print(Padding(grid(cells, [("backend", "word"), ("variant", "word"), ("phase", "word"),
                                              ("why", "text")]), (0, 0, 0, 4), expand=False))
    split_from = "launch is n/a on CPU; time between ops is in other" if on_cpu else \
        "launch = GPU idle inside the call's window"
    console.print(Text(
        f"median µs: {run.method}. compute/copy/launch/other: the profiled repetition's window split by attnprof "
        f"(% of that window; {split_from}). TFLOP/s and GB/s from the median and the minimum FLOPs/bytes "
        "(README: roofline).", style="dim"))
    if ceilings:
        console.print(Text(
            f"% peak: of this device's measured ceilings ({ceilings.copy_gbps:,.0f} GB/s copy, "
            f"{ceilings.matmul_tflops:,.1f} TFLOP/s {ceilings.dtype} matmul; c = compute-bound, m = memory-bound; "
            f"{ceilings.method}, {ceilings.measured_at}).", style="dim"))
    console.print(Text(f"traces: {run.folder}", style="dim"))
    for note in notes:
        console.print(Text(f"note: {note}", style="yellow"))


class CompareTableRenderer(Renderer[Comparison]):
    """`attnprof compare` on the console: a table per case, the rows that could not run, what the columns mean;
    with `as_json`, the rows as a JSON list. `render` gives the text (`width` columns); `print_to` prints the tables
    on a console (the CLI's terminal)."""

    def __init__(self, as_json: bool = False, width: int | None = None):
        self.as_json = as_json
        self.width = width

    def render(self, subject: Comparison) -> str:
        if self.as_json:
            return _json_text(rows_json(subject.rows))
        buf = io.StringIO()
        self.print_to(Console(file=buf, width=self.width or PIPE_WIDTH, highlight=False), subject)
        return buf.getvalue()

    def print_to(self, console: Console, subject: Comparison) -> None:
        print_compare(console, subject.run, subject.rows, subject.ceilings, subject.notes)


class CompareDocumentRenderer(Renderer[Comparison]):
    """The run folder's compare.json (compare_document)."""

    output_name = COMPARE_FILE

    def render(self, subject: Comparison) -> str:
        return _json_text(compare_document(subject.run, subject.rows, subject.ceilings, subject.notes))
