"""`attnprof ncu [--set basic|full] [--calls N] [--warmup N] [--ncu PATH] [--out DIR] -- script.py args`:
Nsight Compute's counters for the kernels of a few attention calls, per call site."""
from __future__ import annotations

import argparse
import sys

from attnprof.cli.nsight_args import own_parser, parse, report_run, run_folder, split_script_argv, trace_argv
from attnprof.errors import AttnprofError

__all__ = ["register", "run", "split_script_argv"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ncu",
        help="run a script under Nsight Compute: counters for the kernels of a few attention calls, per site",
        usage="attnprof ncu [--set basic|full] [--calls N] [--warmup N] [--ncu PATH] [--out DIR] [ncu options] -- "
              "(script.py | -m module) [args ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Runs `ncu --nvtx --nvtx-include attnprof.ncu@call/ --clock-control none ...` on `attnprof trace "
            "--active 0 <script>`:\nonly the kernels of the first N attention calls after the warm-up steps are "
            "profiled (ncu replays each one).\nThe run folder gets report.ncu-rep and its raw CSV, report.raw.csv; "
            "`attnprof analyze` reads either.\n\n"
            "attnprof's options (everything else before `--` goes to ncu):\n"
            "  --set NAME      basic (speed of light, occupancy, launch stats; default) | full (ncu's full set)\n"
            "  --calls N       attention calls to profile (default: 6)\n"
            "  --warmup N      steps to run before the profiled calls (default: 1)\n"
            "  --ncu PATH      the ncu binary (default: PATH, then /usr/local/cuda/bin, /opt/nvidia/nsight-compute/*)\n"
            "  --out DIR       run folder to create (default: <root>/<script>-ncu-<timestamp>/)\n"
            "  --root DIR      where run folders go (default: traces/)\n"
            "  --step-on KIND  auto | optimizer | iteration | call (as for attnprof trace)"),
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from attnprof.capture.ncu import SETS, run_under_ncu
    from attnprof.capture.nsight import find_ncu

    ns, ncu_opts, script = parse(ns, _own_parser(), "ncu")
    if ns.set not in SETS:
        raise AttnprofError(f"--set {ns.set}: choose one of {', '.join(SETS)}")
    if ns.calls < 1 or ns.warmup < 0:
        raise AttnprofError("--calls must be 1 or more and --warmup 0 or more")
    ncu = find_ncu(ns.ncu)
    folder = run_folder(ns.out, ns.root, script, "ncu")
    code, reported = run_under_ncu(ncu, ns.set, ns.calls, trace_argv(ns, script), folder, ncu_opts)
    if not reported:
        why = (f"no attention call ran after {ns.warmup} warm-up steps (--warmup), or ncu could not profile the "
               f"process")
        if code != 0:  # the script failed: its own exit code and traceback stand
            print(f"attnprof: ncu profiled no kernel: {why}", file=sys.stderr)
            return code
        raise AttnprofError(f"ncu profiled no kernel: {why}")
    report_run(folder)
    print(f"attnprof: Nsight Compute run saved to {folder}/", file=sys.stderr)
    return code


def _own_parser() -> argparse.ArgumentParser:
    p = own_parser("ncu", warmup=1)
    p.add_argument("--set", default="basic")
    p.add_argument("--calls", type=int, default=6)
    return p
