"""`attnprof trace [options] (script.py | -m module) [args]`: run a script unchanged and profile its attention."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnprof.capture.distributed import TORCHRUN_OPTIONS
from attnprof.errors import AttnprofError
from attnprof.files import check_run_folder_target, say, stream_open

_TAKES_VALUE = {"--out", "--root", "--warmup", "--timed", "--active", "--step-on", "--max-calls", "--after"} | {
    k for k, v in TORCHRUN_OPTIONS.items() if v}


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
    p.add_argument("--after", choices=["none", "nvtx", "time"], default="none",
                   help="after the profiled window: none (the original functions put back: nothing added; default), "
                        "nvtx (an NVTX range per call and the step count), time (NVTX and a timing per call, as in "
                        "the timed steps: the profiler's aftermath)")
    p.add_argument("--no-source-lines", dest="source_lines", action="store_false",
                   help="do not mark layout-prep torch calls with their source line while profiling")
    p.add_argument("--quiet", action="store_true", help="print only the run folder")
    ranks = p.add_argument_group(
        "many ranks", "with --nproc-per-node, attnprof starts torchrun, which runs attnprof in every rank; "
        + ", ".join(o for o in TORCHRUN_OPTIONS if o != "--nproc-per-node") + " are torchrun's own, passed "
        "through (or run `torchrun ... -m attnprof trace script.py` yourself)")
    for option, takes_value in TORCHRUN_OPTIONS.items():
        if takes_value:
            ranks.add_argument(option, dest="torchrun_" + option[2:].replace("-", "_"), metavar="X",
                               help=argparse.SUPPRESS if option != "--nproc-per-node" else
                               "processes per node: start the script under torchrun with attnprof in every rank")
        else:
            ranks.add_argument(option, dest="torchrun_" + option[2:].replace("-", "_"), action="store_true",
                               help=argparse.SUPPRESS)
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
    from attnprof.capture.distributed import current_job

    job = current_job()
    if job is None or job.rank == 0:  # other ranks join the folder rank 0 makes
        check_run_folder_target(ns.out, ns.root)
    torchrun_args = _torchrun_args(ns)
    if torchrun_args:
        return _launch_torchrun(ns, torchrun_args)
    if job is not None and job.rank != 0:
        ns.quiet = True  # rank 0 speaks for the job
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
        after=ns.after,
    )
    result = trace_script(options)
    if job is not None:
        return _finish_rank(job, result, ns)
    if result.trace_files and result.late_signals:
        print(f"attnprof: not analysed (interrupted while saving): attnprof analyze {result.folder}", file=sys.stderr)
    elif result.trace_files and result.folder is not None:  # a folder is None only when nothing ran
        try:
            with signals_stop_attnprof():
                _analyze_run_folder(result.folder, quiet=ns.quiet)
        except AttnprofInterrupted:  # the run is saved; the exit code stays the script's
            print(f"attnprof: analysis interrupted: attnprof analyze {result.folder}", file=sys.stderr)
    elif result.folder is not None:
        if ns.quiet:
            say(result.folder, sys.stdout)
        elif result.runinfo is not None and result.runinfo.note:
            say(f"attnprof: {result.runinfo.note}")
    return result.exit_code


def _torchrun_args(ns: argparse.Namespace) -> list[str]:
    out = []
    for option, takes_value in TORCHRUN_OPTIONS.items():
        value = getattr(ns, "torchrun_" + option[2:].replace("-", "_"))
        if takes_value and value is not None:
            out += [option, value]
        elif not takes_value and value:
            out.append(option)
    if out and ns.torchrun_nproc_per_node is None:
        raise AttnprofError(f"{out[0]} is a torchrun option: give --nproc-per-node too (or run torchrun yourself)")
    return out


def _launch_torchrun(ns: argparse.Namespace, torchrun_args: list[str]) -> int:
    """`attnprof trace --nproc-per-node N script.py`: torchrun with `-m attnprof trace` in every rank; its exit code."""
    import subprocess

    from attnprof.capture.distributed import current_job, torchrun_command

    if current_job() is not None:
        raise AttnprofError("--nproc-per-node inside a torchrun job: run `attnprof trace script.py` in each rank")
    own = ["--root", str(ns.root), "--warmup", str(ns.warmup), "--timed", str(ns.timed), "--active", str(ns.active),
           "--step-on", ns.step_on, "--max-calls", str(ns.max_calls), "--after", ns.after]
    if ns.out is not None:
        own += ["--out", str(ns.out)]
    if not ns.source_lines:
        own.append("--no-source-lines")
    if ns.quiet:
        own.append("--quiet")
    target = ["-m", ns.module] if ns.module else [ns.target]
    command = torchrun_command(torchrun_args, own + target + _script_args(ns))
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


def _finish_rank(job, result, ns: argparse.Namespace) -> int:
    """A rank of a torchrun job: say it is done; rank 0 waits for the others and analyses the job's folder."""
    try:
        job.finished()
    except Exception as e:  # noqa: BLE001 - the run's own exit code matters more
        print(f"attnprof: rank {job.rank}: could not tell rank 0 it is done ({type(e).__name__})", file=sys.stderr)
    if job.rank != 0 or result.folder is None:
        return result.exit_code
    missing = job.wait_for_ranks()
    if missing:
        print(f"attnprof: rank(s) {', '.join(map(str, missing))} did not finish: analysing the others",
              file=sys.stderr)
    if any(result.folder.glob("*.pt.trace.json*")):
        _analyze_run_folder(result.folder, quiet=ns.quiet)
    elif result.runinfo is not None and result.runinfo.note:
        print(f"attnprof: {result.runinfo.note}", file=sys.stderr)
    return result.exit_code


def _analyze_run_folder(folder: Path, quiet: bool) -> None:
    """Analyse a finished run and leave attnprof.json in it; the run's own exit code stays the user's, whatever
    happens here: what fails is said in one line, and the run folder (trace, runinfo.json) is kept."""
    from attnprof.pipeline import analyze_run, write_reports

    if quiet:
        say(folder, sys.stdout)
    try:
        run = analyze_run(folder)
        missing = write_reports(run, folder, console=not quiet and stream_open(sys.stderr))
    except AttnprofError as e:
        say(f"attnprof: {e} (run folder kept: {folder})")
        return
    except Exception as e:  # noqa: BLE001 - the user's run is done and saved: an analysis bug must not change its exit
        say(f"attnprof: the analysis failed ({type(e).__name__}: {e}); run folder kept: {folder}, "
             f"retry with `attnprof analyze {folder}`")
        return
    for line in missing:
        say(f"attnprof: {line} (run folder kept: {folder})")
