"""Numbers a person can trust: attnprof's own work is not measured as the user's, and timings come with their
spread, so that noise is never shown as a cause."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _events(trace_file: Path) -> list[dict]:
    with gzip.open(trace_file, "rt") as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def _outermost(ops: list[dict], name: str) -> list[dict]:
    """The ops called `name` that no other op encloses (an op the user's line called, not one inside another)."""
    def inside(e, o):
        return o is not e and o["tid"] == e["tid"] and o["ts"] <= e["ts"] and e["ts"] + e["dur"] <= o["ts"] + o["dur"]
    return [e for e in ops if e["name"] == name and not any(inside(e, o) for o in ops)]


def test_cpu_copies_of_the_seed_example_are_their_own_ops_time(tmp_path):
    """A fresh process (so every lazy import happens in it, as it does for a user): the seed wrapper's four
    `.contiguous()` per call are its only layout copies, so the copy time attnprof reports over all calls must be
    the time of those aten::contiguous ops as torch.profiler recorded them, not the attnprof.src ranges around
    them (those swallowed the first record_function's lazy import, ~5 ms, against ~50 µs ops)."""
    out = tmp_path / "seed"
    r = subprocess.run([sys.executable, "-m", "attnprof", "trace", "--out", str(out), "--warmup", "1", "--timed", "1",
                        "--active", "2", "examples/seed_case.py", "--variant", "seed", "--steps", "5"],
                       cwd=REPO, capture_output=True, text=True, timeout=240, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "attnprof.json").read_text())
    calls = [c for c in report["calls"] if c["phase"] == "fwd"]
    assert len(calls) == 2  # --active 2, one call a step
    (trace_file,) = [p for p in out.iterdir() if p.name.endswith(".attnprof.pt.trace.json.gz")]
    events = _events(trace_file)
    contiguous = sorted(_outermost([e for e in events if e.get("cat") == "cpu_op"], "aten::contiguous"),
                        key=lambda e: e["ts"])
    ranges = sorted((e for e in events if e["name"].startswith("attnprof:sdpa")), key=lambda e: e["ts"])
    assert len(ranges) == len(calls)
    # by the wrapper's construction: q, k, v copied just before the call, the output just after it
    contiguous = [op for call in ranges for op in
                  [e for e in contiguous if e["ts"] + e["dur"] <= call["ts"]][-3:] +
                  [e for e in contiguous if e["ts"] >= call["ts"] + call["dur"]][:1]]
    assert len(contiguous) == 4 * len(calls)
    own = sum(e["dur"] for e in contiguous)
    reported = sum(c["copy_us"] for c in calls)
    assert abs(reported - own) <= 0.2 * own, (reported, own)
    # and each copy record is its op's own time
    records = sorted(cp["dur_us"] for c in calls for cp in c["copies"])
    assert records == sorted(e["dur"] for e in contiguous) or \
        all(abs(a - b) <= 0.01 for a, b in zip(records, sorted(e["dur"] for e in contiguous)))
