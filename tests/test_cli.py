"""The commands end to end on CPU, as a user runs them: `attnprof trace` on the built-in examples, `analyze` on good
and bad input, `nsys` (with a stand-in nsys binary) and `correlate`."""
from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from trace_truth import call_truths

REPO = Path(__file__).resolve().parents[1]
H100 = REPO / "traces" / "h100"
SEED_LINES = ["examples/seed_case.py:44", "examples/seed_case.py:45", "examples/seed_case.py:46",
              "examples/seed_case.py:48"]


def attnprof(*args, cwd=REPO, env=None, timeout=240):
    # os.environ, not the inherited C environment: readline (imported by pytest's debugger support) puts
    # COLUMNS=80 there when a terminal is attached, and the tables follow COLUMNS
    return subprocess.run([sys.executable, "-m", "attnprof", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ) if env is None else env)


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "seed"
    r = attnprof("trace", "--out", out, "examples/seed_case.py", "--variant", "seed", "--steps", "8")
    assert r.returncode == 0, r.stderr
    return out, r


def _json(folder: Path) -> dict:
    return json.loads((folder / "attnprof.json").read_text())


def test_trace_the_built_in_example(seed_run):
    out, r = seed_run
    assert "ran 8 steps of seed" in r.stdout  # the script's own stdout, untouched
    assert "layout copies" in r.stdout and "examples/seed_case.py:44" in r.stdout  # the table: stdout, after
    assert r.stdout.index("ran 8 steps of seed") < r.stdout.index("layout copies")  # the script's output
    traces = [p.name for p in out.glob("*.pt.trace.json.gz") if ".attnprof." not in p.name]
    assert len(traces) == 1 and traces[0].count(".") == 4  # <host>_<pid>.pt.trace.json.gz
    assert {"runinfo.json", "attnprof.json", "dashboard.html"} <= {p.name for p in out.iterdir()}
    doc = _json(out)
    (site,) = [s for s in doc["sites"] if s["phase"] == "fwd"]
    assert sorted(c["site"] for c in site["copies"]) == SEED_LINES
    # the timed calls capture recorded (runinfo.json, read with json): their number and median
    (timing,) = json.loads((out / "runinfo.json").read_text())["sites"]
    assert site["timed_calls"] == len(timing["true_us"]) >= 1
    assert site["true_us"] == pytest.approx(statistics.median(timing["true_us"]), abs=0.002)
    # each call's parts against the trace file read with json: the wrapper's four copies by line, the SDPA op
    truth = {t.id: t for t in call_truths(out / traces[0], SEED_LINES[:3], SEED_LINES[3:])}
    assert sorted(c["id"] for c in doc["calls"]) == sorted(truth)
    for call in doc["calls"]:
        assert call["launch_us"] is None  # CPU
        assert [c["position"] for c in call["copies"]] == ["before"] * 3 + ["after"]
        t = truth[call["id"]]
        assert call["copy_us"] == pytest.approx(t.copy_us, abs=0.002)  # attnprof.json rounds to 3 decimals
        assert call["compute_us"] == pytest.approx(t.compute_us, abs=0.002)
        assert call["window_us"] == pytest.approx(t.window_us, abs=0.002)


def test_analyze_prints_the_same_document(seed_run):
    out, _ = seed_run
    r = attnprof("analyze", out, "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    saved = _json(out)
    assert doc["schema_version"] == saved["schema_version"] == 1
    assert [(c["id"], c["phase"], c["copy_us"]) for c in doc["calls"]] == [
        (c["id"], c["phase"], c["copy_us"]) for c in saved["calls"]]
    for key in ("id", "op", "backend", "phase", "site", "shapes", "dtype", "layout", "window_us", "compute_us",
                "copy_us", "launch_us", "other_us", "kernels", "copies"):
        assert key in doc["calls"][0]
    for key in ("calls", "true_us", "profiled_us", "inflation", "compute_us", "copy_us", "launch_us", "other_us"):
        assert key in doc["sites"][0]


def test_tiny_transformer_with_the_seed_wrapper(tmp_path):
    """A small transformer (two layers, AdamW) whose attention goes through the seed's wrapper."""
    out = tmp_path / "tiny"
    r = attnprof("trace", "--out", out, "examples/tiny_transformer.py", "--attn", "seed", "--steps", "8")
    assert r.returncode == 0, r.stderr
    doc = _json(out)
    fwd = next(s for s in doc["sites"] if s["phase"] == "fwd")
    # on CPU flash_attention() stands in with SDPA on views (its line 37), called from the seed wrapper's line 47
    assert fwd["site"] == "examples/seed_case.py:37 via :47" and fwd["calls"] == 4  # 2 layers x 2 profiled steps
    before_after = sorted(c["site"] for c in fwd["copies"] if c["site"] in SEED_LINES)
    assert before_after == SEED_LINES
    assert {s["phase"] for s in doc["sites"]} == {"fwd", "bwd"}
    assert json.loads((out / "runinfo.json").read_text())["steps"]["unit"] == "optimizer"


@pytest.mark.parametrize("content, message", [
    (None, "no such file or folder"),
    (b"hello", "is not a torch.profiler trace"),
    (b'{"traceEvents": []}', "holds no profiler events"),
    (b"SQLite format 3\x00 but not really", "not a readable SQLite file"),
])
def test_analyze_bad_input_is_one_line(tmp_path, content, message):
    path = tmp_path / "input.json"
    if content is not None:
        path.write_bytes(content)
    r = attnprof("analyze", path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("attnprof: error:") and message in r.stderr


def test_trace_bad_input_is_one_line(tmp_path):
    r = attnprof("trace", tmp_path / "missing.py")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "can't open file" in r.stderr
    r = attnprof("nsys", "examples/seed_case.py")
    assert r.returncode == 2 and "needs `--`" in r.stderr


@pytest.mark.skipif(not (H100 / "nsys-seed").is_dir(), reason="no recorded Nsight export")
def test_nsys_command_with_a_stand_in_nsys(tmp_path):
    """`attnprof nsys` runs `nsys profile ... python -m attnprof trace --active 0 ...`, then `nsys export`: a stand-in
    nsys runs the command as given and exports the recorded H100 SQLite, so the whole flow runs on CPU."""
    fake = tmp_path / "nsys"
    fake.write_text("""#!/usr/bin/env bash
verb=$1; shift
if [ "$verb" = profile ]; then
  echo "$@" > "$FAKE_LOG"
  out=""
  while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift 2;; -t|-s) shift 2;; -*) shift;; *) break;; esac; done
  "$@"; rc=$?
  echo report > "$out.nsys-rep"; exit $rc
fi
out=""; while [ $# -gt 1 ]; do [ "$1" = -o ] && out=$2; shift; done
cp "$FAKE_SQLITE" "$out"
""")
    fake.chmod(0o755)
    sqlite = tmp_path / "report.sqlite"
    sqlite.write_bytes(gzip.decompress((H100 / "nsys-seed" / "report.sqlite.gz").read_bytes()))
    env = {**os.environ, "FAKE_SQLITE": str(sqlite), "FAKE_LOG": str(tmp_path / "argv.txt")}
    out = tmp_path / "run"
    r = attnprof("nsys", "--nsys", fake, "--out", out, "--beside", H100 / "seed-fwd", "-t", "cuda,nvtx,osrt",
                 "--", "examples/seed_case.py", "--steps", "4", env=env)
    assert r.returncode == 0, r.stderr
    argv = (tmp_path / "argv.txt").read_text()
    assert "-t cuda,nvtx,osrt" in argv and "-t cuda,nvtx " not in argv  # the user's -t replaces the default
    assert "-s none" in argv and "--pytorch=autograd-shapes-nvtx" in argv
    assert "-m attnprof trace --active 0" in argv
    assert {"report.sqlite", "report.nsys-rep", "runinfo.json", "attnprof.json"} <= {p.name for p in out.iterdir()}
    assert "torch.profiler" in r.stdout and "nsys" in r.stdout and "Δ compute" in r.stdout  # the --beside table
    assert _json(out)["sites"]


def test_nsys_not_found_is_one_error(tmp_path, monkeypatch):
    from attnprof.capture import nsight
    from attnprof.errors import AttnprofError

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nsight, "NSYS_SEARCH", (str(tmp_path / "nowhere" / "*" / "nsys"),))
    with pytest.raises(AttnprofError, match="nsys not found"):
        nsight.find_nsys()
    with pytest.raises(AttnprofError, match="not an executable"):
        nsight.find_nsys(str(tmp_path / "nsys"))


@pytest.mark.skipif(not (H100 / "nsys-seed").is_dir(), reason="no recorded Nsight export")
def test_correlate_prints_both_splits_per_site():
    r = attnprof("correlate", H100 / "seed-fwd", H100 / "nsys-seed")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("torch.profiler") >= 3 and "examples/seed_case.py:34 via :47" in r.stdout
