"""`attnprof ncu [--set basic|full] [--calls N] [--warmup N] [--ncu PATH] [--out DIR] -- script.py args`:
Nsight Compute's counters for the kernels of a few attention calls, per call site."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnprof.errors import AttnprofError

_OWN = {"--set", "--calls", "--warmup", "--ncu", "--out", "--root", "--step-on"}


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


def split_script_argv(argv: list[str]) -> list[str]:
    """Everything after `attnprof ncu` is this command's to read (ncu options are not argparse's)."""
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        return argv
    return [argv[0], "--", *argv[1:]]


def run(ns: argparse.Namespace) -> int:
    from attnprof.capture.ncu import SETS, run_under_ncu
    from attnprof.capture.session import new_run_folder
    from attnprof.cli.nsys_cmd import split_argv
    from attnprof.pipeline import analyze_run, render_console, write_reports
    from attnprof.trace.ncu_csv import find_ncu

    rest = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
    own, ncu_opts, script = split_argv(rest, _OWN, "ncu")
    ns = argparse.Namespace(**{**vars(ns), **vars(_own_parser().parse_args(own))})
    if ns.set not in SETS:
        raise AttnprofError(f"--set {ns.set}: choose one of {', '.join(SETS)}")
    if ns.calls < 1 or ns.warmup < 0:
        raise AttnprofError("--calls must be 1 or more and --warmup 0 or more")
    ncu = find_ncu(ns.ncu)
    if ns.out is not None:
        if ns.out.exists():
            raise AttnprofError(f"{ns.out} already exists: choose another --out or remove it")
        folder = ns.out
    else:
        stem = Path(script[1] if script[0] == "-m" and len(script) > 1 else script[0]).stem.split(".")[-1]
        folder = new_run_folder(ns.root, f"{stem}-ncu", _now())
        folder.rmdir()  # the traced run creates it
    trace_argv = ["--warmup", str(ns.warmup), "--timed", "0", "--step-on", ns.step_on, *script]
    code, reported = run_under_ncu(ncu, ns.set, ns.calls, trace_argv, folder, ncu_opts)
    if not reported:
        why = (f"no attention call ran after {ns.warmup} warm-up steps (--warmup), or ncu could not profile the "
               f"process")
        if code != 0:  # the script failed: its own exit code and traceback stand
            print(f"attnprof: ncu profiled no kernel: {why}", file=sys.stderr)
            return code
        raise AttnprofError(f"ncu profiled no kernel: {why}")
    run_ = analyze_run(folder)
    write_reports(run_, folder, console=False)
    sys.stdout.flush()  # the script's own output first, then attnprof's tables
    render_console(run_.report)
    print(f"attnprof: Nsight Compute run saved to {folder}/", file=sys.stderr)
    return code


def _own_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnprof ncu", add_help=False)
    p.add_argument("--set", default="basic")
    p.add_argument("--calls", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ncu")
    p.add_argument("--out", type=Path)
    p.add_argument("--root", type=Path, default=Path("traces"))
    p.add_argument("--step-on", dest="step_on", default="auto")
    return p


def _now():
    from datetime import datetime

    return datetime.now()
