"""How fast is `attnprof analyze` on a large trace, next to HolisticTraceAnalysis loading the same file?

Builds a valid torch.profiler trace of the requested size by replicating a recorded one (every copy gets fresh
External/correlation/Python/sequence/flow ids and attnprof call ids, and is shifted in time after the previous
one), then times `attnprof analyze --json` on it in a fresh process (wall time, peak RSS) and, given a Python that
has holistictraceanalysis installed, times `TraceAnalysis(trace_dir=...)` on the same file the same way.

    python benchmarks/scale_analyze.py --size-mb 100 300 1000 --gzip --dense-calls 10000 30000 100000 \\
        [--hta-python /path/to/venv/bin/python] [--workdir /tmp/scale]

The sized traces replicate the recorded H100 training-step trace (traces/h100/train-seed); the dense ones the
seed-case forward trace (traces/h100/seed-fwd: 6 attention calls each) without its Python frames, so that
attention calls are as dense as they get. HTA reads the trace's folder (`TraceAnalysis(trace_dir=...)`).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT / "traces" / "h100" / "train-seed"
DENSE_SOURCE = ROOT / "traces" / "h100" / "seed-fwd"
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


def build(source: Path, out: Path, size_mb: float = 0.0, calls: int = 0, drop: frozenset = frozenset()
          ) -> tuple[int, int]:
    """Write `out` (gzipped if it ends in .gz): copies of `source` until it holds `size_mb` MB or `calls` attention
    calls; events of the categories in `drop` left out. Returns (copies, events)."""
    doc = _load(source)
    events = [e for e in doc["traceEvents"] if e.get("cat") not in drop]
    meta = [e for e in events if e.get("ph") == "M"]
    timed = [e for e in events if e.get("ph") != "M"]
    ts = [e["ts"] for e in timed if isinstance(e.get("ts"), (int, float))]
    dt = (max(ts) - min(ts)) * 1.05 + 1000.0
    ids = _max_ids(timed)
    calls_per_copy = len({_RANGE_ID.search(e["name"]).group(1) for e in timed if e.get("cat") == "user_annotation"
                          and e.get("name", "").startswith("attnprof:") and _RANGE_ID.search(e["name"])})
    header = {k: v for k, v in doc.items() if k != "traceEvents"}
    header.setdefault("distributedInfo", {"backend": "nccl", "rank": 0, "world_size": 1})
    target = int(size_mb * 1e6)
    copies = 0
    n_events = 0
    raw = open(out, "wb")
    f = gzip.open(raw, "wt", compresslevel=1) if out.name.endswith(".gz") else open(raw.fileno(), "w", closefd=False)
    with raw, f:
        f.write(json.dumps(header)[:-1] + ',\n  "traceEvents": [\n')
        first = True
        for e in meta:
            f.write(("" if first else ",\n") + "  " + json.dumps(e))
            first = False
            n_events += 1
        written = 0
        while (written < target) if not calls else (copies * calls_per_copy < calls):
            part = ",\n  ".join(json.dumps(_shifted(e, copies, dt, ids)) for e in timed)
            f.write((",\n  " if n_events else "  ") + part)
            written += len(part) + 4
            n_events += len(timed)
            copies += 1
        f.write("\n  ]\n}\n")
    return copies, n_events


def _timed_run(cmd: list[str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MB of it or any process it waited for, exit code, CPU seconds of it and those) of a
    command in a fresh process. CPU time says what wall time would be on an idle machine when others share it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    if err.strip():
        sys.stderr.write(err[-2000:])
    return wall, usage.ru_maxrss / 1024, rc, usage.ru_utime + usage.ru_stime


_HTA_SNIPPET = """
import sys, logging
logging.disable(logging.WARNING)
from hta.trace_analysis import TraceAnalysis
TraceAnalysis(trace_dir=sys.argv[1])
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="recorded trace (file or run folder)")
    p.add_argument("--size-mb", type=float, nargs="*", default=[100.0], help="trace sizes to build (MB)")
    p.add_argument("--gzip", action="store_true", help="also each size gzipped")
    p.add_argument("--dense-calls", type=int, nargs="*", default=[],
                   help="also traces of this many attention calls: --dense-source replicated, Python frames left "
                        "out (the dense case: time must grow linearly with the calls)")
    p.add_argument("--dense-source", type=Path, default=DENSE_SOURCE)
    p.add_argument("--repeat", type=int, default=1, help="runs of each tool; the best is reported")
    p.add_argument("--hta-python", help="a Python with holistictraceanalysis installed, to time it side by side")
    p.add_argument("--hta-max-mb", type=float, default=float("inf"),
                   help="skip HTA on traces larger than this (uncompressed)")
    p.add_argument("--workdir", type=Path, help="keep (and reuse) the built traces in this folder")
    args = p.parse_args(argv)

    cases = [(f"{mb:g}MB", dict(source=args.source, size_mb=mb), gz) for mb in args.size_mb
             for gz in ([False, True] if args.gzip else [False])]
    cases += [(f"{n}calls", dict(source=args.dense_source, calls=n, drop=frozenset({"python_function"})), False)
              for n in args.dense_calls]
    table: list = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print(f"{'trace':<28} {'events':>10} {'tool':<10} {'wall s':>8} {'CPU s':>7} {'peak RSS MB':>12} {'exit':>5} "
              f"{'HTA/attnprof time':>18} {'RSS':>6}", flush=True)
        for name, spec, gz in cases:
            folder = work / (name + (".gz" if gz else ""))
            folder.mkdir(parents=True, exist_ok=True)
            trace = folder / ("rank0.pt.trace.json" + (".gz" if gz else ""))
            marker = folder / "built.json"
            plain = work / name / "rank0.pt.trace.json"
            if not marker.exists() and gz and (work / name / "built.json").exists():  # the same trace, gzipped
                with open(plain, "rb") as src, gzip.open(trace, "wb", compresslevel=1) as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
                marker.write_text((work / name / "built.json").read_text())
            if not marker.exists():
                copies, n = build(out=trace, **spec)
                marker.write_text(json.dumps({"copies": copies, "events": n}))
            n = json.loads(marker.read_text())["events"]
            size = trace.stat().st_size / 1e6
            label = f"{name} ({size:,.0f} MB{' gz' if gz else ''})"
            cmd = [sys.executable, "-m", "attnprof", "analyze", str(trace), "--json", "--max-trace-mb", "100000"]
            ours = _best([_timed_run(cmd) for _ in range(args.repeat)])
            print(f"{label:<28} {n:>10,} {'attnprof':<10} {ours[0]:>8.2f} {ours[3]:>7.1f} {ours[1]:>12.0f} "
                  f"{ours[2]:>5}", flush=True)
            hta = None
            unpacked = plain.stat().st_size / 1e6 if gz and plain.exists() else size  # what HTA holds in memory
            if args.hta_python and unpacked <= args.hta_max_mb:
                cmd = [args.hta_python, "-c", _HTA_SNIPPET, str(folder)]
                hta = _best([_timed_run(cmd) for _ in range(args.repeat)])
                print(f"{'':<28} {'':>10} {'HTA load':<10} {hta[0]:>8.2f} {hta[3]:>7.1f} {hta[1]:>12.0f} {hta[2]:>5} "
                      f"{hta[0] / ours[0]:>17.1f}x {hta[1] / ours[1]:>5.1f}x", flush=True)
            table.append((label, n, ours, hta))
    print()
    print(_markdown(table, os.getloadavg()))
    return 0


def _markdown(table: list, load: tuple) -> str:
    """The results as the README's table: wall and CPU seconds (CPU says what wall time would be on an idle machine
    when others share it), peak RSS, and HTA's load beside them."""
    lines = [f"(load average {load[0]:.1f} on {os.cpu_count()} CPUs at the end)", "",
             "| trace | events | attnprof analyze --json | HTA load | HTA / attnprof |", "|---|---|---|---|---|"]
    for label, n, ours, hta in table:
        cell = f"{ours[0]:.1f} s ({ours[3]:.1f} s CPU), {ours[1]:,.0f} MB" + (" (failed)" if ours[2] else "")
        other = f"{hta[0]:.1f} s ({hta[3]:.1f} s CPU), {hta[1]:,.0f} MB" + (" (failed)" if hta[2] else "") \
            if hta else "—"
        ratio = f"{hta[0] / ours[0]:.1f}× wall, {hta[3] / ours[3]:.1f}× CPU, {hta[1] / ours[1]:.1f}× RSS" if hta else "—"
        lines.append(f"| {label} | {n:,} | {cell} | {other} | {ratio} |")
    return "\n".join(lines)


def _best(runs: list[tuple[float, float, int, float]]) -> tuple[float, float, int, float]:
    return min(r[0] for r in runs), min(r[1] for r in runs), max(r[2] for r in runs), min(r[3] for r in runs)


if __name__ == "__main__":
    raise SystemExit(main())
