"""`attnprof` command line: wires capture -> trace model -> analysis -> render, and owns exit codes.

One module per command (`attnprof/cli/<command>_cmd.py`), each with `register(subparsers)` that adds its parser
and sets `run=<function(namespace) -> exit code>`, and, for commands that run a script, `split_script_argv(argv)`.
Every user-facing failure is an `AttnprofError` printed as one
line; a traced script's own traceback and exit code pass through unchanged.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from attnprof import __version__
from attnprof.errors import AttnprofError
from attnprof.files import DEFAULT_MAX_INPUT_MB, say

PROG = "attnprof"
#: Command modules under attnprof/cli/, in the order `attnprof --help` lists them.
COMMANDS = ("trace", "analyze", "compare", "explain", "verify", "dashboard", "nsys", "ncu", "correlate")


def add_max_trace_mb(parser: argparse.ArgumentParser) -> None:
    """The cap on each input trace (decompressed), for the commands that read traces."""
    parser.add_argument("--max-trace-mb", type=_positive_mb, default=DEFAULT_MAX_INPUT_MB, metavar="MB",
                        help=f"refuse input files larger than this, decompressed (default: {DEFAULT_MAX_INPUT_MB})")


def _positive_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size in MB greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Where the time of every attention call goes.")
    parser.add_argument("--version", action="version", version=f"attnprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"attnprof.cli.{name}_cmd").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv and argv[0] in COMMANDS:
            # commands that run a script keep its arguments (and nsys's options) away from argparse
            split = getattr(importlib.import_module(f"attnprof.cli.{argv[0]}_cmd"), "split_script_argv", None)
            if split is not None:
                argv = split(argv)
        ns = parser.parse_args(argv)
        return ns.run(ns)
    except AttnprofError as e:
        say(f"{PROG}: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
