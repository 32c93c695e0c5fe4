"""`attnprof correlate PROFILER_RUN NSYS_RUN`: one script seen by torch.profiler and by Nsight Systems."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correlate",
        help="per call site, the torch.profiler split beside the Nsight Systems split of the same script",
        description="Analyses both runs (run folders or trace files: a torch.profiler trace and an nsys SQLite "
                    "export or .nsys-rep) and prints their splits side by side per call site, phase by phase.",
    )
    p.add_argument("profiler", type=Path, help="an `attnprof trace` run folder (or torch.profiler trace)")
    p.add_argument("nsys", type=Path, help="an `attnprof nsys` run folder (or nsys SQLite export / .nsys-rep)")
    p.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from attnprof.pipeline import analyze_path
    from attnprof.render.console import table_console
    from attnprof.render.correlate import Correlation, CorrelationRenderer

    CorrelationRenderer().print_to(table_console(), Correlation(analyze_path(ns.profiler), analyze_path(ns.nsys)))
    return 0
