"""How fast is `attnprof analyze` on a large trace, next to HolisticTraceAnalysis loading the same file?

Builds a valid torch.profiler trace of the requested size by replicating a recorded one (every copy gets fresh
External/correlation/Python/sequence/flow ids and attnprof call ids, and is shifted in time after the previous
one), then times `attnprof analyze --json` on it in a fresh process (wall time, peak RSS) and, given a Python that
has holistictraceanalysis installed, times `TraceAnalysis(trace_dir=...)` on the same file the same way.

    python benchmarks/scale_analyze.py --size-mb 100 [--hta-python /path/to/venv/bin/python]

The source defaults to the recorded H100 training-step trace under traces/h100/.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT / "traces" / "h100" / "train-seed"
_RANGE_ID = re.compile(r" #(\d+)$")


def _load(path: Path) -> dict:
    if path.is_dir():
        path = next(p for p in sorted(path.iterdir()) if p.name.endswith((".pt.trace.json.gz", ".pt.trace.json")))
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def _max_ids(events: list[dict]) -> dict[str, int]:
    m = {"ext": 0, "corr": 0, "py": 0, "seq": 0, "flow": 0, "call": 0}
    for e in events:
        a = e.get("args") or {}
        m["ext"] = max(m["ext"], int(a.get("External id") or 0))
        m["corr"] = max(m["corr"], int(a.get("correlation") or 0))
        m["py"] = max(m["py"], int(a.get("Python id") or 0))
        m["seq"] = max(m["seq"], int(a.get("Sequence number") or 0))
        if isinstance(e.get("id"), int):
            m["flow"] = max(m["flow"], e["id"])
        hit = _RANGE_ID.search(e.get("name", "")) if e.get("cat") == "user_annotation" else None
        if hit:
            m["call"] = max(m["call"], int(hit.group(1)))
    return {k: v + 1 for k, v in m.items()}


def _shifted(e: dict, k: int, dt: float, ids: dict[str, int]) -> dict:
    e = dict(e)
    if isinstance(e.get("ts"), (int, float)):
        e["ts"] = e["ts"] + k * dt
    if isinstance(e.get("id"), int):
        e["id"] = e["id"] + k * ids["flow"]
    a = e.get("args")
    if a:
        a = dict(a)
        for key, name in (("External id", "ext"), ("correlation", "corr"), ("Python id", "py"),
                          ("Python parent id", "py"), ("Sequence number", "seq")):
            if isinstance(a.get(key), int) and a[key] > 0:
                a[key] = a[key] + k * ids[name]
        e["args"] = a
    if e.get("cat") == "user_annotation":
        hit = _RANGE_ID.search(e.get("name", ""))
        if hit:
            e["name"] = e["name"][: hit.start()] + f" #{int(hit.group(1)) + k * ids['call']}"
    return e


def build(source: Path, out: Path, size_mb: float) -> tuple[int, int]:
    doc = _load(source)
    events = doc["traceEvents"]
    meta = [e for e in events if e.get("ph") == "M"]
    timed = [e for e in events if e.get("ph") != "M"]
    ts = [e["ts"] for e in timed if isinstance(e.get("ts"), (int, float))]
    dt = (max(ts) - min(ts)) * 1.05 + 1000.0
    ids = _max_ids(timed)
    header = {k: v for k, v in doc.items() if k != "traceEvents"}
    header.setdefault("distributedInfo", {"backend": "nccl", "rank": 0, "world_size": 1})
    target = int(size_mb * 1e6)
    copies = 0
    n_events = 0
    with open(out, "w") as f:
        f.write(json.dumps(header)[:-1] + ',\n  "traceEvents": [\n')
        first = True
        for e in meta:
            f.write(("" if first else ",\n") + "  " + json.dumps(e))
            first = False
            n_events += 1
        while f.tell() < target:
            for e in timed:
                f.write(",\n  " + json.dumps(_shifted(e, copies, dt, ids)))
                n_events += 1
            copies += 1
        f.write("\n  ]\n}\n")
    return copies, n_events


def _timed_run(cmd: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit code) of a command in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    rc = proc.returncode if proc.returncode is not None else 0
    if err.strip():
        sys.stderr.write(err[-2000:])
    return wall, usage.ru_maxrss / 1024, rc


_HTA_SNIPPET = """
import sys, logging
logging.disable(logging.WARNING)
from hta.trace_analysis import TraceAnalysis
TraceAnalysis(trace_dir=sys.argv[1])
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="recorded trace (file or run folder)")
    p.add_argument("--size-mb", type=float, default=100.0)
    p.add_argument("--repeat", type=int, default=3, help="runs of each tool; the best is reported")
    p.add_argument("--hta-python", help="a Python with holistictraceanalysis installed, to time it side by side")
    p.add_argument("--keep", type=Path, help="keep the built trace at this path")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "big"
        folder.mkdir()
        trace = args.keep or folder / "rank0.pt.trace.json"
        copies, n = build(args.source, trace, args.size_mb)
        if args.keep:
            os.link(trace, folder / "rank0.pt.trace.json")
        size = trace.stat().st_size / 1e6
        print(f"built {trace.name}: {size:.1f} MB, {n:,} events ({copies} copies of {args.source.name})")
        rows = []
        cmd = [sys.executable, "-m", "attnprof", "analyze", str(trace), "--json"]
        runs = [_timed_run(cmd) for _ in range(args.repeat)]
        rows.append(("attnprof analyze --json", min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]))
        if args.hta_python:
            cmd = [args.hta_python, "-c", _HTA_SNIPPET, str(folder)]
            runs = [_timed_run(cmd) for _ in range(args.repeat)]
            rows.append(("HTA TraceAnalysis(trace_dir) load", min(r[0] for r in runs), min(r[1] for r in runs),
                         runs[0][2]))
        print(f"{'tool':<36} {'wall s':>8} {'peak RSS MB':>12} {'exit':>5}")
        for name, wall, rss, rc in rows:
            print(f"{name:<36} {wall:>8.2f} {rss:>12.0f} {rc:>5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
