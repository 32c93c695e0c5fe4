"""`attnprof nsys [--nsys PATH] [nsys options] -- script.py args`: the script under Nsight Systems, analysed."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnprof.cli.nsight_args import own_parser, parse, report_run, run_folder, split_script_argv, trace_argv

__all__ = ["register", "run", "split_script_argv"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nsys",
        help="run a script under Nsight Systems with attnprof's NVTX ranges and analyse the export",
        usage="attnprof nsys [--nsys PATH] [--out DIR] [--beside RUN] [nsys options] -- (script.py | -m module) "
              "[args ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Runs `nsys profile` (default options -t cuda,nvtx -s none --cpuctxsw=none "
            "--pytorch=autograd-shapes-nvtx;\nyours replace them) on `attnprof trace --active 0 <script>`, exports "
            "SQLite and splits every attention call\nfrom the Nsight data.\n\n"
            "attnprof's options (everything else before `--` goes to nsys profile):\n"
            "  --nsys PATH     the nsys binary (default: PATH, then the usual Nsight Systems / CUDA folders)\n"
            "  --out DIR       run folder to create (default: <root>/<script>-nsys-<timestamp>/)\n"
            "  --root DIR      where run folders go (default: traces/)\n"
            "  --beside RUN    a torch.profiler run of the same script: both splits per call site side by side\n"
            "  --warmup N      steps left out of the analysis (default: 2)\n"
            "  --step-on KIND  auto | optimizer | iteration | call (as for attnprof trace)"),
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from attnprof.capture.nsight import find_nsys
    from attnprof.capture.nsys import run_under_nsys
    from attnprof.pipeline import analyze_run

    ns, nsys_opts, script = parse(ns, _own_parser(), "nsys")
    nsys = find_nsys(ns.nsys)
    folder = run_folder(ns.out, ns.root, script, "nsys")
    code = run_under_nsys(nsys, nsys_opts, trace_argv(ns, script), folder)
    run_ = report_run(folder)
    if ns.beside is not None:
        from attnprof.render.console import table_console
        from attnprof.render.correlate import Correlation, CorrelationRenderer

        CorrelationRenderer().print_to(table_console(), Correlation(analyze_run(ns.beside).report, run_.report))
    print(f"attnprof: Nsight run saved to {folder}/", file=sys.stderr)
    return code


def _own_parser() -> argparse.ArgumentParser:
    p = own_parser("nsys", warmup=2)
    p.add_argument("--beside", type=Path)
    return p
