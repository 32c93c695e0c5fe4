"""The console table: one row per call site and phase, then the layout copies with their source lines."""
from __future__ import annotations

import os
import re

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from attnprof.analysis.records import CallSplit, Report, SiteSummary
from attnprof.render.base import PIPE_WIDTH, ConsoleView
from attnprof.render.kernel_counters import CountersRenderer
from attnprof.units import us_text

#: From this many columns on, the full table; below it, one line per site (name, backend, calls, µs, the split in %).
FULL_TABLE_WIDTH = 140


def table_console(file=None) -> Console:
    """A rich console for attnprof's tables: a terminal's own width; on a pipe or in a file, the width COLUMNS
    gives, else PIPE_WIDTH, so a log keeps the full table."""
    console = Console(file=file, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console.width = PIPE_WIDTH
    return console


def compact(console: Console) -> bool:
    return console.width < FULL_TABLE_WIDTH


def number_column(table: Table, header: str, cells: list) -> None:
    """A right-aligned column that rich may never cut or wrap: as wide as its widest cell."""
    widest = max([len(header)] + [max(len(line) for line in str(c).splitlines() or [""]) for c in cells])
    table.add_column(header, justify="right", no_wrap=True, min_width=widest)


def text_column(table: Table, header: str, max_width: int | None = None) -> None:
    """A column rich may fold (site names, paths): it gives way first when the terminal is narrow."""
    table.add_column(header, overflow="fold", max_width=max_width)


def short_site(site: str) -> str:
    """`examples/seed_case.py:34 via :47` -> `seed_case.py:34 via :47`: file names without their folders, for
    narrow terminals (the full path stays in the wide table and in attnprof.json)."""
    return re.sub(r"[^\s:]*/", "", site)


def site_label(s: SiteSummary) -> str:
    """The name a person reads (module path or functions); the site itself where analysis had no label."""
    return s.label or short_site(s.site)


def _true_text(s: SiteSummary) -> Text:
    """The true µs, and below it the middle half of its samples (q1-q3): how much to trust it."""
    text = Text(us_cell(s.true_us))
    if s.true_q1_us is not None:
        text.append(f"\n{s.true_q1_us:,.0f}–{s.true_q3_us:,.0f}", style="dim")
    return text


def pct_text(v: float | None, window: float) -> str:
    if v is None:
        return "—"
    return f"{100 * v / window:.0f}%" if window > 0 else "0%"


DTYPE_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


def us_cell(v: float | None) -> str:
    """A table cell's µs: the number alone (the header says µs), — where there is none."""
    return us_text(v, unit=False, missing="—")


def part_text(v: float | None, window: float) -> Text:
    if v is None:
        return Text("n/a", style="dim")
    pct = 100 * v / window if window > 0 else 0.0
    t = Text(us_cell(v))
    t.append(f" {pct:3.0f}%", style="bold" if pct >= 40 else "dim")
    return t


def _dims(s: SiteSummary | CallSplit) -> str:
    main = s.shapes.get("q") or s.shapes.get("qkv") or next(iter(s.shapes.values()), None)
    return "×".join(map(str, main)) if main else "?"


def _shape(s: SiteSummary | CallSplit) -> str:
    """The dims on one line, dtype and layout on the next: a shape never wraps inside a number."""
    rest = " ".join(b for b in (DTYPE_SHORT.get(s.dtype or "", s.dtype or ""), s.layout or "") if b)
    return _dims(s) + (f"\n{rest}" if rest else "")


def _mb(n: int) -> str:
    if n <= 0:
        return "?"  # the trace records no dtype (Nsight) or no shape
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def grid(rows: list[list], headers: list[tuple[str, str]], title: str | None = None) -> Table:
    """A table whose "text" columns fold when space runs out and whose "num" columns never do."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title=title, title_justify="left",
                  title_style="bold", collapse_padding=True)
    for i, (header, kind) in enumerate(headers):
        if kind == "num":
            number_column(table, header, [r[i] for r in rows])
        elif kind == "word":  # short labels (backend, phase): kept whole
            number_column(table, header, [r[i] for r in rows])
            table.columns[-1].justify = "left"
        else:
            text_column(table, header)
    for r in rows:
        table.add_row(*r)
    return table


class ConsoleRenderer(ConsoleView[Report]):
    """The report's tables: sites, their layout copies, Nsight Compute's counters, the ranks of a job, the calls
    (`show_calls`), then the notes and warnings."""

    def __init__(self, show_calls: bool = False, width: int | None = None, color: bool | None = None):
        super().__init__(width, color)
        self.show_calls = show_calls

    def print_to(self, console: Console, report: Report, notes_to: Console | None = None) -> None:
        """The tables on `console`; the notes on `notes_to` (stderr for the CLI), else after the tables."""
        where = f"{report.device}, torch {report.torch_version}" if report.torch_version else report.device
        console.print(Text(f"attnprof — {report.source}", style="bold").append(f"  [{where}]"))
        notes = notes_to or console
        if not report.sites:
            if report.kernel_counters is not None:
                CountersRenderer().print_to(console, report.kernel_counters)
            for note in report.notes:
                notes.print(Text(f"  {note}"))
            return
        on_cpu = all(s.launch_us is None for s in report.sites)
        corrected = any(s.window_true_us is not None and s.true_us is not None for s in report.sites)
        console.print(self._sites_table(report, console, corrected))
        if on_cpu:
            console.print(Text("CPU run: no device to wait for, so launch is n/a; time between ops is in other.",
                               style="dim"))
        if compact(console):
            console.print(Text(
                "µs per call: true (CUDA events around the call, outside the profiler) where measured, else the "
                "traced window; the split in % of that window. A terminal of 140+ columns (or a pipe) shows "
                "the full table.", style="dim"))
        elif corrected:
            console.print(Text(
                "µs per call. true: CUDA events around the attention call, outside the profiler; prof: the same "
                "inside it (×: inflation). * launch scaled by the GPU idle the profiler added (true idle / profiled "
                "idle of the call), and the window with it; the traced split is in attnprof.json.", style="dim"))
        copy_sites = [s for s in report.sites if s.copies]
        if copy_sites:
            console.print(Text("\nlayout copies attributed to the calls (per call)", style="bold"))
        for s in copy_sites:
            rows = [[c.site or "?", c.op, _mb(c.bytes), us_cell(c.dur_us)]
                    for c in sorted(s.copies, key=lambda c: -c.dur_us)]
            console.print(Text(f"  {site_label(s)} ({s.phase}):"))
            console.print(Padding(grid(rows, [("copy made at", "text"), ("op", "word"), ("bytes", "num"),
                                               ("µs", "num")]), (0, 0, 0, 4), expand=False))
        if report.kernel_counters is not None:
            CountersRenderer().print_to(console, report.kernel_counters)
        if report.ranks is not None:
            from attnprof.render.ranks import RanksRenderer  # a job of several ranks

            RanksRenderer().print_to(console, report.ranks)
        if self.show_calls:
            console.print(self._calls_table(report, console))
        for note in report.notes:
            notes.print(Text(f"note: {note}", style="yellow"))
        for s in report.sites:
            for warning in s.warnings:
                notes.print(Text(f"warning: {site_label(s)} ({s.phase}): {warning}", style="yellow"))

    def _sites_table(self, report: Report, console: Console, corrected: bool) -> Table:
        rows = []
        small = compact(console)
        for s in report.sites:
            use_true = s.window_true_us is not None and s.true_us is not None
            window = s.window_true_us if use_true and s.window_true_us is not None else s.window_us
            launch = s.launch_true_us if use_true else s.launch_us
            site = Text(site_label(s))
            if not small:  # narrow terminals: the name alone (location and op are in the wide table and the JSON)
                site.append(f"\n  {s.op} · {short_site(s.site)}", style="dim")
            if small:
                rows.append([site, s.backend, s.phase, str(s.calls), us_cell(s.true_us if s.true_us else window),
                             *(pct_text(v, window) for v in (s.compute_us, s.copy_us, launch, s.other_us))])
                continue
            prof = us_cell(s.profiled_us)
            if s.inflation:
                prof += f" ×{s.inflation:.2f}"
            rows.append([site, s.backend, s.phase, _shape(s), str(s.calls), _true_text(s), prof, us_cell(window),
                         *(part_text(v, window) for v in (s.compute_us, s.copy_us, launch, s.other_us))])
        star = "*" if corrected else ""
        if small:
            headers = [("site", "text"), ("backend", "word"), ("ph", "word"), ("calls", "num"), ("µs", "num"),
                       ("compute", "num"), ("copy", "num"), ("launch", "num"), ("other", "num")]
        else:
            headers = [("site / op", "text"), ("backend", "word"), ("phase", "word"), ("shape", "word"),
                       ("calls", "num"), ("true µs", "num"), ("prof µs", "num"), (f"window µs{star}", "num"),
                       ("compute", "num"), ("copy", "num"), (f"launch{star}", "num"), ("other", "num")]
        return grid(rows, headers)

    def _calls_table(self, report: Report, console: Console) -> Table:
        small = compact(console)
        rows = []
        for c in report.calls:
            if small:
                rows.append([str(c.id), c.phase, short_site(c.site), us_cell(c.window_us),
                             *(pct_text(v, c.window_us) for v in (c.compute_us, c.copy_us, c.launch_us, c.other_us))])
            else:
                rows.append([str(c.id), c.phase, c.site, c.backend, us_cell(c.window_us), us_cell(c.compute_us),
                             us_cell(c.copy_us), us_cell(c.launch_us), us_cell(c.other_us), str(len(c.kernels))])
        if small:
            headers = [("id", "num"), ("ph", "word"), ("site", "text"), ("window µs", "num"), ("compute", "num"),
                       ("copy", "num"), ("launch", "num"), ("other", "num")]
        else:
            headers = [("id", "num"), ("phase", "word"), ("site", "text"), ("backend", "word"), ("window µs", "num"),
                       ("compute", "num"), ("copy", "num"), ("launch", "num"), ("other", "num"), ("kernels", "num")]
        return grid(rows, headers, title="calls")
