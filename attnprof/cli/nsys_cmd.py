"""`attnprof nsys [--nsys PATH] [nsys options] -- script.py args`: the script under Nsight Systems, analysed."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnprof.errors import AttnprofError
from attnprof.files import check_run_folder_target, say

_OWN = {"--nsys", "--out", "--root", "--beside", "--warmup", "--timed", "--step-on"}


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


def split_script_argv(argv: list[str]) -> list[str]:
    """Everything after `attnprof nsys` is this command's to read (nsys options are not argparse's)."""
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        return argv
    return [argv[0], "--", *argv[1:]]


def split_argv(argv: list[str], own_options: set[str] = _OWN, tool: str = "nsys"
               ) -> tuple[list[str], list[str], list[str]]:
    """(attnprof's own options, the tool's options, the script and its arguments) of `attnprof nsys ...` (or of
    `attnprof ncu ...`: its own options and tool name given)."""
    if "--" not in argv:
        raise AttnprofError(f"attnprof {tool} needs `--` before the script: attnprof {tool} [options] -- script.py "
                            f"args")
    i = argv.index("--")
    before, script = argv[:i], argv[i + 1:]
    if not script:
        raise AttnprofError("nothing to run after `--`")
    own, nsys_opts = [], []
    j = 0
    while j < len(before):
        a = before[j]
        key = a.split("=", 1)[0]
        if key in own_options:
            own.append(a)
            if "=" not in a and j + 1 < len(before):
                own.append(before[j + 1])
                j += 1
        else:
            nsys_opts.append(a)
        j += 1
    return own, nsys_opts, script


def run(ns: argparse.Namespace) -> int:
    from attnprof.capture.nsys import run_under_nsys
    from attnprof.capture.session import new_run_folder
    from attnprof.pipeline import analyze_run, render_console, write_reports
    from attnprof.trace.nsys_sqlite import find_nsys

    rest = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
    own, nsys_opts, script = split_argv(rest)
    ns = argparse.Namespace(**{**vars(ns), **vars(_own_parser().parse_args(own))})
    check_run_folder_target(ns.out, ns.root)
    nsys = find_nsys(ns.nsys)
    if ns.out is not None:
        folder = ns.out
    else:
        stem = Path(script[1] if script[0] == "-m" and len(script) > 1 else script[0]).stem.split(".")[-1]
        folder = new_run_folder(ns.root, f"{stem}-nsys", _now())
        folder.rmdir()  # the traced run creates it
    trace_argv = ["--warmup", str(ns.warmup), "--timed", "0", "--step-on", ns.step_on, *script]
    code = run_under_nsys(nsys, nsys_opts, trace_argv, folder)
    run_ = analyze_run(folder)
    for line in write_reports(run_, folder, console=False):
        say(f"attnprof: {line} (run folder kept: {folder})")
    sys.stdout.flush()  # the script's own output first, then attnprof's tables
    render_console(run_.report)
    if ns.beside is not None:
        from attnprof.render.console import table_console
        from attnprof.render.correlate import Correlation, CorrelationRenderer

        CorrelationRenderer().print_to(table_console(), Correlation(analyze_run(ns.beside).report, run_.report))
    print(f"attnprof: Nsight run saved to {folder}/", file=sys.stderr)
    return code


def _own_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnprof nsys", add_help=False)
    p.add_argument("--nsys")
    p.add_argument("--out", type=Path)
    p.add_argument("--root", type=Path, default=Path("traces"))
    p.add_argument("--beside", type=Path)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timed", type=int, default=0)
    p.add_argument("--step-on", dest="step_on", default="auto")
    return p


def _now():
    from datetime import datetime

    return datetime.now()
