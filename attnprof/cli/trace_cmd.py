"""`attnprof trace [options] (script.py | -m module) [args]`: run a script unchanged and profile its attention."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnprof.errors import AttnprofError

_TAKES_VALUE = {"--out", "--root", "--warmup", "--timed", "--active", "--step-on", "--max-calls"}


def register(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--active", type=int, default=2, metavar="N",
                   help="steps inside the profiler (default: 2; 0: no profiler, NVTX ranges and timing only)")
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
    p.set_defaults(run=run)


def split_script_argv(argv: list[str]) -> list[str]:
    """Keep the script's own arguments away from attnprof's parser: everything after the script (or -m module)."""
    out = [argv[0]]
    i = 1
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
            if a in _TAKES_VALUE and i + 1 < len(argv):
                out.append(argv[i + 1])
                i += 2
            else:
                i += 1
            continue
        return out + [a, "--", *argv[i + 1:]]
    return out


def _script_args(ns: argparse.Namespace) -> list[str]:
    args = list(ns.args)
    if args and args[0] == "--":
        args = args[1:]
    return args


def run(ns: argparse.Namespace) -> int:
    from attnprof.capture.runner import AttnprofInterrupted, signals_stop_attnprof
    from attnprof.capture.session import TraceOptions, trace_script

    if ns.module and ns.target:
        # `-m mod -- a b` puts the first script argument in the target slot
        ns.args = [ns.target, *_script_args(ns)]
        ns.target = None
    if not ns.module and not ns.target:
        raise AttnprofError("nothing to run: give a script (attnprof trace model.py args) or -m module")
    for name in ("warmup", "timed", "active", "max_calls"):
        if getattr(ns, name) < 0:
            raise AttnprofError(f"--{name.replace('_', '-')} must be >= 0")
    options = TraceOptions(
        quiet=ns.quiet,
        target=ns.module or ns.target,
        is_module=bool(ns.module),
        args=_script_args(ns),
        out=ns.out,
        root=ns.root,
        warmup=ns.warmup,
        timed=ns.timed,
        active=ns.active,
        step_on=ns.step_on,
        max_calls=ns.max_calls,
        source_lines=ns.source_lines,
    )
    result = trace_script(options)
    if result.trace_files and result.late_signals:
        print(f"attnprof: not analysed (interrupted while saving): attnprof analyze {result.folder}", file=sys.stderr)
    elif result.trace_files:
        try:
            with signals_stop_attnprof():
                _analyze_run_folder(result.folder, quiet=ns.quiet)
        except AttnprofInterrupted:  # the run is saved; the exit code stays the script's
            print(f"attnprof: analysis interrupted: attnprof analyze {result.folder}", file=sys.stderr)
    elif result.folder is not None:
        if ns.quiet:
            print(result.folder)
        elif result.runinfo is not None and result.runinfo.note:
            print(f"attnprof: {result.runinfo.note}", file=sys.stderr)
    return result.exit_code


def _analyze_run_folder(folder: Path, quiet: bool) -> None:
    """Analyse a finished run and leave attnprof.json in it; the run's own exit code stays the user's."""
    from attnprof.errors import AttnprofError
    from attnprof.pipeline import analyze_run, write_reports

    if quiet:
        print(folder)
    try:
        run = analyze_run(folder)
    except AttnprofError as e:
        print(f"attnprof: {e} (run folder kept: {folder})", file=sys.stderr)
        return
    write_reports(run, folder, console=not quiet)
