"""The console table: one row per call site and phase, then the layout copies with their source lines."""
from __future__ import annotations

import io

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnprof.analysis.records import CallSplit, Report, SiteSummary
from attnprof.render.base import Renderer

def table_console(file=None) -> Console:
    """A rich console for attnprof's tables: on a pipe or a log file, wide enough not to squeeze them to 80 columns."""
    console = Console(file=file, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


DTYPE_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


def us_text(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def part_text(v: float | None, window: float) -> Text:
    if v is None:
        return Text("n/a", style="dim")
    pct = 100 * v / window if window > 0 else 0.0
    t = Text(us_text(v))
    t.append(f" {pct:3.0f}%", style="bold" if pct >= 40 else "dim")
    return t


def _shape(s: SiteSummary | CallSplit) -> str:
    main = s.shapes.get("q") or s.shapes.get("qkv") or next(iter(s.shapes.values()), None)
    dims = "×".join(map(str, main)) if main else "?"
    bits = [dims, DTYPE_SHORT.get(s.dtype or "", s.dtype or "")]
    if s.layout:
        bits.append(s.layout)
    return " ".join(b for b in bits if b)


def _mb(n: int) -> str:
    if n <= 0:
        return "?"  # the trace records no dtype (Nsight) or no shape
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


class ConsoleRenderer(Renderer):
    def __init__(self, show_calls: bool = False, width: int | None = None, color: bool | None = None):
        self.show_calls = show_calls
        self.width = width
        self.color = color

    def render(self, report: Report) -> str:
        buf = io.StringIO()
        console = Console(file=buf, width=self.width or 160, force_terminal=self.color, no_color=self.color is False,
                          highlight=False)
        self.print_to(console, report)
        return buf.getvalue()

    def print_to(self, console: Console, report: Report) -> None:
        title = f"attnprof — {report.source}  [{report.device}"
        title += f", torch {report.torch_version}]" if report.torch_version else "]"
        console.print(Text(title, style="bold"))
        if not report.sites:
            for note in report.notes:
                console.print(f"  {note}")
            return
        on_cpu = all(s.launch_us is None for s in report.sites)
        corrected = any(s.window_true_us is not None and s.true_us is not None for s in report.sites)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column("site / op", no_wrap=True)
        table.add_column("backend")
        table.add_column("phase")
        table.add_column("shape", overflow="fold", max_width=22)
        table.add_column("calls", justify="right")
        table.add_column("true µs", justify="right")
        table.add_column("prof µs", justify="right")
        table.add_column("window µs" + ("*" if corrected else ""), justify="right")
        table.add_column("compute", justify="right")
        table.add_column("copy", justify="right")
        table.add_column("launch" + ("*" if corrected else ""), justify="right")
        table.add_column("other", justify="right")
        for s in report.sites:
            prof = us_text(s.profiled_us)
            if s.inflation:
                prof += f" ×{s.inflation:.2f}"
            use_true = s.window_true_us is not None and s.true_us is not None
            window = s.window_true_us if use_true else s.window_us
            launch = s.launch_true_us if use_true else s.launch_us
            table.add_row(
                Text(s.site).append(f"\n  {s.op}", style="dim"), s.backend, s.phase, _shape(s), str(s.calls),
                us_text(s.true_us), prof,
                us_text(window), part_text(s.compute_us, window), part_text(s.copy_us, window),
                part_text(launch, window), part_text(s.other_us, window),
            )
        console.print(table)
        if on_cpu:
            console.print(Text("CPU run: no device to wait for, so launch is n/a; time between ops is in other.",
                               style="dim"))
        if corrected:
            console.print(Text(
                "µs per call. true: CUDA events around the attention call, outside the profiler; prof: the same "
                "inside it (×: inflation). * launch scaled by the GPU idle the profiler added (true idle / profiled "
                "idle of the call), and the window with it; the traced split is in attnprof.json.", style="dim"))
        copy_sites = [s for s in report.sites if s.copies]
        if copy_sites:
            console.print(Text("\nlayout copies attributed to the calls (per call)", style="bold"))
            for s in copy_sites:
                console.print(f"  {s.site} ({s.phase}):")
                for c in sorted(s.copies, key=lambda c: -c.dur_us):
                    console.print(f"    {c.site or '?':<40} {c.op:<22} {_mb(c.bytes):>10} {us_text(c.dur_us):>10} µs")
        if self.show_calls:
            calls = Table(box=box.SIMPLE_HEAD, title="calls", pad_edge=False, show_edge=False)
            for col in ("id", "phase", "site", "backend", "window µs", "compute", "copy", "launch", "other", "kernels"):
                calls.add_column(col, justify="right" if col not in ("site", "backend", "phase") else "left")
            for c in report.calls:
                calls.add_row(str(c.id), c.phase, c.site, c.backend, us_text(c.window_us), us_text(c.compute_us),
                              us_text(c.copy_us), us_text(c.launch_us), us_text(c.other_us), str(len(c.kernels)))
            console.print(calls)
        for note in report.notes:
            console.print(Text(f"note: {note}", style="yellow"))
