"""`attnprof analyze PATH`: the split of every attention call in a run folder or any torch.profiler trace."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnprof.cli import add_max_trace_mb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="split the attention calls of a run folder or any torch.profiler trace (.json, .json.gz)",
        description="Finds attention calls in a trace, attributes kernels and layout copies, and splits "
                    "every call into compute / copy / launch / other.",
    )
    p.add_argument("path", type=Path, help="run folder, or a torch.profiler trace file (.json / .json.gz)")
    p.add_argument("--json", action="store_true", help="print attnprof.json to stdout instead of the table")
    p.add_argument("--calls", action="store_true", help="also list every call, not only sites")
    add_max_trace_mb(p)
    p.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from attnprof.pipeline import analyze_path, render_console, render_json

    report = analyze_path(ns.path, ns.max_trace_mb)
    if ns.json:
        sys.stdout.write(render_json(report))
    else:
        render_console(report, show_calls=ns.calls)
    return 0
