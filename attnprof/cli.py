"""`attnprof` command line: wires capture -> trace model -> analysis -> render, and owns exit codes.

Every user-facing failure is an `AttnprofError` printed as one line; a traced script's own traceback and exit
code pass through unchanged.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnprof import __version__
from attnprof.errors import AttnprofError

PROG = "attnprof"


def _add_trace(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trace",
        help="run a Python script (or -m module) unchanged and profile its attention calls",
        usage="attnprof trace [options] (script.py | -m module) [args ...]",
        description=(
            "Runs the script as `python script.py args` would, wraps every attention call in NVTX and "
            "torch.profiler ranges, profiles a bounded window of steps, times every other call with CUDA events, "
            "and writes a run folder (trace, runinfo.json, attnprof.json)."
        ),
    )
    p.add_argument("-m", dest="module", metavar="MODULE", help="run a module, like python -m")
    p.add_argument("--out", type=Path, help="run folder to create (default: <root>/<script>-<timestamp>/)")
    p.add_argument("--root", type=Path, default=Path("traces"), help="where run folders go (default: traces/)")
    p.add_argument("--warmup", type=int, default=2, metavar="N",
                   help="steps run first and ignored: warm-up, autotuning, cudnn benchmark (default: 2)")
    p.add_argument("--timed", type=int, default=3, metavar="N",
                   help="steps timed with CUDA events, unprofiled, before the profiled window (default: 3)")
    p.add_argument("--active", type=int, default=2, metavar="N", help="steps inside the profiler (default: 2)")
    p.add_argument("--step-on", choices=["auto", "optimizer", "iteration", "call"], default="auto",
                   help="what ends a step: an optimizer step, the recurrence of the first attention call site "
                        "(one forward), or every attention call; auto picks optimizer if the script steps one")
    p.add_argument("--max-calls", type=int, default=512, metavar="N",
                   help="stop profiling after this many attention calls, to bound the trace (default: 512)")
    p.add_argument("--no-source-lines", dest="source_lines", action="store_false",
                   help="do not mark layout-prep torch calls with their source line while profiling")
    p.add_argument("--quiet", action="store_true", help="print only the run folder")
    p.add_argument("target", nargs="?", help="script to run (omit with -m)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="split the attention calls of a run folder or any torch.profiler trace (.json, .json.gz)",
        description="Finds attention calls in a trace, attributes kernels and layout copies, and splits "
                    "every call into compute / copy / launch / other.",
    )
    p.add_argument("path", type=Path, help="run folder, or a torch.profiler trace file (.json / .json.gz)")
    p.add_argument("--json", action="store_true", help="print attnprof.json to stdout instead of the table")
    p.add_argument("--calls", action="store_true", help="also list every call, not only sites")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Where the time of every attention call goes.")
    parser.add_argument("--version", action="version", version=f"attnprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    _add_trace(sub)
    _add_analyze(sub)
    return parser


def _split_trace_argv(argv: list[str]) -> list[str]:
    """Keep the script's own arguments away from attnprof's parser: everything after the script (or -m module)."""
    if not argv or argv[0] != "trace":
        return argv
    out = ["trace"]
    i = 1
    takes_value = {"--out", "--root", "--warmup", "--timed", "--active", "--step-on", "--max-calls"}
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            if i + 1 >= len(argv):
                raise AttnprofError("-m needs a module name")
            return out + ["-m", argv[i + 1], "--", *argv[i + 2:]]
        if a == "--":
            return out + argv[i:]
        if a.startswith("-") and a != "-":
            out.append(a)
            if a in takes_value:
                if i + 1 < len(argv):
                    out.append(argv[i + 1])
                i += 2
            else:
                i += 1
            continue
        return out + [a, "--", *argv[i + 1:]]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        ns = parser.parse_args(_split_trace_argv(argv))
        if ns.command == "trace":
            return _cmd_trace(ns)
        return _cmd_analyze(ns)
    except AttnprofError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _script_args(ns: argparse.Namespace) -> list[str]:
    args = list(ns.args)
    if args and args[0] == "--":
        args = args[1:]
    return args


def _cmd_trace(ns: argparse.Namespace) -> int:
    from attnprof.capture.session import TraceOptions, trace_script

    if ns.module and ns.target:
        # `-m mod` consumed the target slot: what argparse took as target is the first script argument
        ns.args = [ns.target, *_script_args(ns)]
        ns.target = None
    if not ns.module and not ns.target:
        raise AttnprofError("nothing to run: give a script (attnprof trace model.py args) or -m module")
    for name in ("warmup", "timed", "active", "max_calls"):
        if getattr(ns, name) < 0:
            raise AttnprofError(f"--{name.replace('_', '-')} must be >= 0")
    options = TraceOptions(
        target=ns.module or ns.target,
        is_module=bool(ns.module),
        args=_script_args(ns),
        out=ns.out,
        root=ns.root,
        warmup=ns.warmup,
        timed=ns.timed,
        active=max(ns.active, 1),
        step_on=ns.step_on,
        max_calls=ns.max_calls,
        source_lines=ns.source_lines,
    )
    result = trace_script(options)
    _analyze_run_folder(result.folder, quiet=ns.quiet)
    return result.exit_code


def _analyze_run_folder(folder: Path, quiet: bool) -> None:
    """Analyse a finished run and leave attnprof.json in it; the run's own exit code stays the user's."""
    from attnprof.pipeline import analyze_path, write_reports

    if quiet:
        print(folder)
    try:
        report = analyze_path(folder)
    except AttnprofError as e:
        print(f"{PROG}: {e} (run folder kept: {folder})", file=sys.stderr)
        return
    write_reports(report, folder, console=not quiet)


def _cmd_analyze(ns: argparse.Namespace) -> int:
    from attnprof.pipeline import analyze_path, render_console, render_json

    report = analyze_path(ns.path)
    if ns.json:
        sys.stdout.write(render_json(report))
        sys.stdout.write("\n")
    else:
        render_console(report, show_calls=ns.calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
