"""What `attnprof nsys` and `attnprof ncu` share: one command line (attnprof's own options, the tool's options,
`--`, the script and its arguments) and one way to name their run folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from attnprof.errors import AttnprofError
from attnprof.files import check_run_folder_target, create_run_folder, run_folder_stem, say

if TYPE_CHECKING:
    from attnprof.pipeline import AnalyzedRun


def split_script_argv(argv: list[str]) -> list[str]:
    """Everything after `attnprof nsys` / `attnprof ncu` is the command's to read (the tool's options are not
    argparse's)."""
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        return argv
    return [argv[0], "--", *argv[1:]]


def own_parser(tool: str, warmup: int) -> argparse.ArgumentParser:
    """attnprof's options common to both commands; each command adds its own to it."""
    p = argparse.ArgumentParser(prog=f"attnprof {tool}", add_help=False)
    p.add_argument(f"--{tool}")
    p.add_argument("--out", type=Path)
    p.add_argument("--root", type=Path, default=Path("traces"))
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--step-on", dest="step_on", default="auto")
    return p


def parse(ns: argparse.Namespace, parser: argparse.ArgumentParser, tool: str
          ) -> tuple[argparse.Namespace, list[str], list[str]]:
    """(the namespace with attnprof's own options, the tool's options, the script and its arguments) of
    `attnprof <tool> [options] -- script.py args`: an option `parser` knows is attnprof's, any other goes to the
    tool. The run folder's place is checked here, before any work."""
    argv = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
    own, tool_options, script = split_argv(argv, _option_strings(parser), tool)
    ns = argparse.Namespace(**{**vars(ns), **vars(parser.parse_args(own))})
    check_run_folder_target(ns.out, ns.root)
    return ns, tool_options, script


def split_argv(argv: list[str], own_options: set[str], tool: str) -> tuple[list[str], list[str], list[str]]:
    """(attnprof's own options, the tool's options, the script and its arguments)."""
    if "--" not in argv:
        raise AttnprofError(f"attnprof {tool} needs `--` before the script: attnprof {tool} [options] -- script.py "
                            f"args")
    i = argv.index("--")
    before, script = argv[:i], argv[i + 1:]
    if not script:
        raise AttnprofError("nothing to run after `--`")
    own, tool_options = [], []
    j = 0
    while j < len(before):
        a = before[j]
        if a.split("=", 1)[0] in own_options:
            own.append(a)
            if "=" not in a and j + 1 < len(before):
                own.append(before[j + 1])
                j += 1
        else:
            tool_options.append(a)
        j += 1
    return own, tool_options, script


def run_folder(out: Path | None, root: Path, script: list[str], tool: str) -> Path:
    """The run folder's path: `out`, else `<root>/<script>-<tool>-<YYYYmmdd-HHMMSS>/` (never another run's). It is
    left for the traced run under the tool to create (`attnprof trace --out`, which refuses an existing folder)."""
    is_module = script[0] == "-m" and len(script) > 1
    stem = run_folder_stem(script[1] if is_module else script[0], is_module)
    folder = create_run_folder(out, root, f"{stem}-{tool}")
    folder.rmdir()
    return folder


def trace_argv(ns: argparse.Namespace, script: list[str]) -> list[str]:
    """`attnprof trace`'s arguments for the script run under the tool: warm-up steps, no timed steps (the tool's own
    clock measures), the step unit, then the script and its arguments."""
    return ["--warmup", str(ns.warmup), "--timed", "0", "--step-on", ns.step_on, *script]


def report_run(folder: Path) -> AnalyzedRun:
    """Analyse the run folder the tool left, write attnprof's files into it (one that cannot be written is said on
    stderr) and print the table after the script's own output."""
    from attnprof.pipeline import analyze_run, render_console, write_reports

    run = analyze_run(folder)
    for line in write_reports(run, folder, console=False):
        say(f"attnprof: {line} (run folder kept: {folder})")
    sys.stdout.flush()  # the script's own output first, then attnprof's tables
    render_console(run.report)
    return run


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}
