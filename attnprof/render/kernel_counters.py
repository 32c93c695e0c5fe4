"""The console table of Nsight Compute's counters: one row per call site and kernel, then the bound and why."""
from __future__ import annotations

from rich.console import Console
from rich.padding import Padding
from rich.text import Text

from attnprof.analysis.kernel_counters import KernelCountersSection, kernel_label, tensor_path
from attnprof.render.base import ConsoleView


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}%"


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def counters_rows(section: KernelCountersSection) -> list[list[str]]:
    # a copy's tensor-pipe counters say nothing about attention's tensor-core path: shown as — (kept in the JSON)
    return [[s.site, kernel_label(s), str(s.calls), _num(s.duration_us, "{:,.1f}"), _pct(s.sm_pct), _pct(s.dram_pct),
             _pct(s.achieved_occupancy_pct), _num(s.registers_per_thread),
             _num(None if s.shared_mem_per_block is None else s.shared_mem_per_block / 1e3, "{:,.1f}"),
             *(["—"] * 3 if s.category == "copy" else [_num(s.gmma_inst), _num(s.mma_sync_inst),
                                                        _pct(s.tensor_pipe_pct)]),
             _num(None if s.dram_bytes is None else s.dram_bytes / 1e6, "{:,.1f}"), s.bound or "—"]
            for s in section.sites]


HEADERS = [("site", "text"), ("kernel", "text"), ("calls", "num"), ("ncu µs", "num"), ("SM", "num"),
           ("DRAM", "num"), ("occupancy", "num"), ("regs", "num"), ("smem KB", "num"), ("wgmma", "num"),
           ("mma.sync", "num"), ("tensor pipe", "num"), ("DRAM MB", "num"), ("bound", "word")]


class CountersRenderer(ConsoleView[KernelCountersSection]):
    """Nsight Compute's counters: one row per site and kernel, then each kernel's tensor-core path and bound."""

    def print_to(self, console: Console, section: KernelCountersSection) -> None:
        from attnprof.render.console import grid  # console imports this module: import its helper late

        console.print(Text(f"\nNsight Compute counters per kernel (median per call; {section.source})",
                           style="bold"))
        if not section.sites:
            console.print(Text("  no profiled kernel ran inside an attnprof range", style="yellow"))
            return
        console.print(grid(counters_rows(section), HEADERS))
        for s in section.sites:
            console.print(Padding(Text(f"{kernel_label(s)} at {s.site}: {tensor_path(s)}; {s.bound or '?'}-bound: "
                                       f"{s.bound_evidence}", style="dim"), (0, 0, 0, 2)))
