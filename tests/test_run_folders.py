"""One run-folder policy for every command: `<root>/<stem>-<YYYYmmdd-HHMMSS>[-n]/`, never another run's folder;
`attnprof nsys` / `ncu` name theirs `<script>-<tool>-...` and leave it for the traced run to create."""
from __future__ import annotations

import argparse
from datetime import datetime

import pytest

from attnprof import files
from attnprof.cli import nsight_args
from attnprof.errors import AttnprofError

WHEN = datetime(2025, 1, 2, 3, 4, 5)


def test_folders_are_named_by_stem_and_time_and_never_reused(tmp_path):
    first = files.create_run_folder(None, tmp_path / "traces", "train", WHEN)
    second = files.create_run_folder(None, tmp_path / "traces", "train", WHEN)
    assert (first.name, second.name) == ("train-20250102-030405", "train-20250102-030405-2")
    assert first.is_dir() and second.is_dir()


def test_out_must_be_new_unless_an_empty_folder_is_allowed(tmp_path):
    out = tmp_path / "mine"
    assert files.create_run_folder(out, tmp_path, "x") == out and out.is_dir()
    with pytest.raises(AttnprofError, match="mine already exists"):
        files.create_run_folder(out, tmp_path, "x")
    assert files.create_run_folder(out, tmp_path, "x", empty_ok=True) == out  # compare's --out: empty is fine
    (out / "compare.json").write_text("{}")
    with pytest.raises(AttnprofError, match="mine already exists"):
        files.create_run_folder(out, tmp_path, "x", empty_ok=True)


@pytest.mark.parametrize("tool", ["nsys", "ncu"])
def test_nsight_commands_share_the_naming(tmp_path, monkeypatch, tool):
    monkeypatch.setattr(files, "now", lambda: WHEN)
    root = tmp_path / "traces"
    folder = nsight_args.run_folder(None, root, ["-m", "pkg.train", "--epochs", "1"], tool)
    assert folder == root / f"train-{tool}-20250102-030405"
    assert not folder.exists()  # `attnprof trace --out` under the tool creates it
    folder.mkdir()  # the traced run did
    assert nsight_args.run_folder(None, root, ["bench.py"], tool).name == f"bench-{tool}-20250102-030405"
    assert nsight_args.run_folder(None, root, ["pkg/train.py"], tool).name == f"train-{tool}-20250102-030405-2"


def test_own_options_are_the_parsers_and_the_rest_goes_to_the_tool(tmp_path):
    parser = nsight_args.own_parser("ncu", warmup=1)
    parser.add_argument("--calls", type=int, default=6)
    ns = argparse.Namespace(rest=["--", "--calls=3", "--out", str(tmp_path / "run"), "--target-processes", "all",
                                  "--warmup", "0", "--", "train.py", "--out", "x"])
    ns, tool_options, script = nsight_args.parse(ns, parser, "ncu")
    assert (ns.calls, ns.out, ns.warmup, ns.ncu) == (3, tmp_path / "run", 0, None)
    assert tool_options == ["--target-processes", "all"]
    assert script == ["train.py", "--out", "x"]  # the script's own --out is its own
    with pytest.raises(AttnprofError, match="needs `--` before the script"):
        nsight_args.parse(argparse.Namespace(rest=["--", "train.py"]), parser, "ncu")
