"""The same script seen by two tools: torch.profiler's split beside Nsight Systems' split, per call site."""
from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from attnprof.analysis.records import Report, SiteSummary
from attnprof.render.base import ConsoleView
from attnprof.render.console import compact, grid, short_site, us_cell

PARTS = ("compute", "copy", "launch", "other")


@dataclass
class Correlation:
    """One script's run under torch.profiler and its run under Nsight Systems, analysed."""

    profiler: Report
    nsys: Report


@dataclass
class SitePair:
    site: str
    op: str
    phase: str
    profiler: SiteSummary
    nsys: SiteSummary

    @property
    def compute_diff_pct(self) -> float | None:
        a, b = self.profiler.compute_us, self.nsys.compute_us
        return 100.0 * (b - a) / a if a else None


def pair_sites(profiler: Report, nsys: Report) -> list[SitePair]:
    """Sites (with op and phase) present in both reports, in the profiler report's order."""
    theirs = {(s.site, s.op, s.phase): s for s in nsys.sites}
    return [SitePair(s.site, s.op, s.phase, s, theirs[(s.site, s.op, s.phase)])
            for s in profiler.sites if (s.site, s.op, s.phase) in theirs]


def _parts(s: SiteSummary) -> list[str]:
    return [us_cell(s.window_us)] + [us_cell(getattr(s, f"{p}_us")) for p in PARTS]


class CorrelationRenderer(ConsoleView[Correlation]):
    """Per call site and phase, each tool's calls and split one above the other, and how far compute differs."""

    def print_to(self, console: Console, runs: Correlation) -> None:
        profiler, nsys = runs.profiler, runs.nsys
        pairs = pair_sites(profiler, nsys)
        console.print(Text(f"torch.profiler ({profiler.source}) beside Nsight Systems ({nsys.source}), µs per call",
                           style="bold"))
        if not pairs:
            console.print("  no call site in common: were both runs made by attnprof on the same script?")
            return
        rows = []
        small = compact(console)
        for p in pairs:
            diff = p.compute_diff_pct
            site = Text(short_site(p.site) if small else p.site).append(f"\n  {p.op}", style="dim")
            values = [f"{a}\n{b}" for a, b in zip(_parts(p.profiler), _parts(p.nsys))]
            if small:  # window and compute/copy: what the two tools must agree on
                values = values[:3]
            rows.append([site, p.phase, "torch.profiler\nnsys", f"{p.profiler.calls}\n{p.nsys.calls}", *values,
                         "—" if diff is None else f"{diff:+.1f}%"])
        parts = ("window", *PARTS)[:3] if small else ("window", *PARTS)
        table = grid(rows, [("site / op", "text"), ("phase", "word"), ("tool", "word"), ("calls", "num"),
                            *((c, "num") for c in parts), ("Δ compute", "num")])
        console.print(table)
        console.print(Text("The layout copies and launch gaps of each window come from the aten op ranges both tools "
                           "record; compute should agree (same kernels), launch differs by each tool's own CPU cost.",
                           style="dim"))
