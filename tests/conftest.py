"""Shared fixtures: stand-in attention packages on sys.path (tests/stubs) and in-process `trace_script` runs."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

STUBS = Path(__file__).parent / "stubs"
STUB_PACKAGES = ("flash_attn", "flash_attn_interface", "xformers")


def _forget_stubs() -> None:
    for name in list(sys.modules):
        if name.partition(".")[0] in STUB_PACKAGES:
            del sys.modules[name]


@pytest.fixture
def stubs(monkeypatch):
    """tests/stubs importable by a traced script, none of it imported yet (sys.path[0] is the script's folder)."""
    _forget_stubs()
    monkeypatch.setattr(sys, "path", [sys.path[0], str(STUBS), *sys.path[1:]])
    yield STUBS
    _forget_stubs()


@pytest.fixture
def trace(tmp_path, monkeypatch):
    """trace(source, *args, name="script.py", **options) -> RunResult: writes the script into tmp_path (the cwd)
    and traces it in-process; runs go to tmp_path/traces. Defaults: --warmup 0 --timed 0 --active 2."""
    from attnprof.capture.session import TraceOptions, trace_script

    monkeypatch.chdir(tmp_path)

    def run(source: str, *args: str, name: str = "script.py", **options):
        (tmp_path / name).write_text(textwrap.dedent(source))
        opts = {"warmup": 0, "timed": 0, "active": 2, "out": None, "root": tmp_path / "traces", **options}
        return trace_script(TraceOptions(target=name, is_module=False, args=list(args), **opts))

    return run
