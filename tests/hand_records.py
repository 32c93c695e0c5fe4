"""Hand-built records shared by the diagnosis, dashboard and noise tests: calls whose windows are exactly their
parts, reports around them, the seed case as an H100 measured it, and a compare document."""
from __future__ import annotations

import msgspec

from attnprof.analysis import diagnosis as dg
from attnprof.analysis.compare import CompareRow
from attnprof.analysis.records import SCHEMA_VERSION, CallSplit, CopyRecord, KernelSlice, Report
from attnprof.analysis.sites import summarize_sites
from attnprof.trace.ceilings import Ceilings
from attnprof.trace.runinfo import RunInfo, SiteTiming, StepInfo

H100 = "NVIDIA H100 80GB HBM3"
CEILINGS = Ceilings(device="NVIDIA H100 80GB HBM3", copy_gbps=3000.0, matmul_tflops=790.0, dtype="bfloat16",
                    measured_at="2026-11-25T13:00:00", method="test")


def call(site, backend, *, id=1, phase="fwd", compute=40.0, copies=(), launch=0.0, other=0.0, op="sdpa",
         shapes=None, dtype="float16", layout="BHLD", device="cuda:0", gqa=None) -> CallSplit:
    """A call whose window is exactly its parts; copies are (op, µs, position, line)."""
    records = [CopyRecord(site=line, op=cop, bytes=1 << 20, dur_us=us, position=pos) for cop, us, pos, line in copies]
    copy = sum(r.dur_us for r in records)
    shapes = shapes or {"q": [2, 16, 256, 64], "k": [2, 16, 256, 64], "v": [2, 16, 256, 64]}
    return CallSplit(id=id, op=op, backend=backend, phase=phase, site=site, found_by="attnprof", device=device,
                     shapes=shapes, dtype=dtype, layout=layout, gqa_ratio=gqa,
                     window_us=compute + copy + (launch or 0.0) + other, compute_us=compute, copy_us=copy,
                     launch_us=launch, other_us=other, copies=records,
                     entry_busy_us=compute + other + sum(r.dur_us for r in records if r.position == "inside"),
                     kernels=[KernelSlice("attention_kernel", "compute", 0.0, compute)])


def report(calls: list[CallSplit], timings: dict | None = None, device: str = H100) -> Report:
    """`timings`: {(site, phase): (true_us, profiled_us)} as capture measures them around the entry point."""
    info = None
    if timings:
        info = RunInfo(version=1, attnprof_version="test", torch_version="2.11", cuda_version="13.0", device=device,
                       device_capability="9.0" if "H100" in device else None, hostname="h", pid=1,
                       command=["m.py"], started_at="2026-11-25T13:00:00", trace_files=[],
                       steps=StepInfo(unit="iteration", warmup=2, timed=3, active=2, seen=7),
                       sites=[SiteTiming(site=s, op=next(c.op for c in calls if c.site == s), phase=p,
                                         clock="cuda_event", true_us=[t] * 3, profiled_us=[pr] * 2)
                              for (s, p), (t, pr) in timings.items()])
    run = {"device_capability": "9.0"} if "H100" in device else None
    return Report(schema_version=SCHEMA_VERSION, source="hand-built", trace_files=[], device=device,
                  torch_version="2.11", calls=calls, sites=summarize_sites(calls, info), run=run)


# --- the seed case, hand-built as an H100 measured it ----------------------------------------------------------

SEED_COPIES = [("aten::contiguous", 38.0, "before", f"seed.py:{n}") for n in (44, 45, 46)] + [
    ("aten::contiguous", 38.0, "after", "seed.py:48")]


def seed_vs_sdpa():
    sdpa = [call("model.py:9", "cudnn", id=i, compute=41.0, launch=60.0, other=1.0) for i in (1, 2)]
    seed = [call("seed.py:47", "flash", id=i, compute=69.0, copies=SEED_COPIES, launch=900.0, op="flash_attn_func",
                 layout="BLHD", shapes={"q": [2, 256, 16, 64], "k": [2, 256, 16, 64], "v": [2, 256, 16, 64]})
            for i in (3, 4)]
    timings = {("model.py:9", "fwd"): (60.0, 100.0), ("seed.py:47", "fwd"): (81.0, 240.0)}
    r = report(sdpa + seed, timings)
    return r, dg.select(r, site="model.py:9"), dg.select(r, site="seed.py:47")


def compare_doc() -> dict:
    rows = []
    for backend, base in (("sdpa-auto", 40.0), ("aten-flash", 70.0)):
        for L in (256, 1024, 4096):
            rows.append({"backend": backend, "variant": "native", "shape": [8, 16, L, 64], "dtype": "float16",
                         "causal": False, "phase": "fwd", "median_us": base * L / 256, "compute_us": None,
                         "copy_us": None, "launch_us": None, "other_us": None, "tflops": 100.0, "gbps": 900.0,
                         "pct_of_peak": 12.5, "unsupported": None})
    rows.append({"backend": "fa3", "variant": "native", "shape": [8, 16, 256, 64], "dtype": "float16",
                 "causal": False, "phase": "fwd", "median_us": None, "unsupported": "flash_attn_interface missing"})
    return {"schema_version": 1, "run": {"device": "NVIDIA H100 80GB HBM3", "command": ["compare"]},
            "ceilings": {"device": CEILINGS.device, "copy_gbps": CEILINGS.copy_gbps,
                         "matmul_tflops": CEILINGS.matmul_tflops, "dtype": "bfloat16",
                         "measured_at": CEILINGS.measured_at, "method": "test", "torch_version": "2.11"},
            "rows": rows, "notes": []}


def compare_rows() -> list[CompareRow]:
    """compare_doc()'s rows as the dashboard gets them (pipeline.read_compare types them)."""
    return msgspec.convert(compare_doc()["rows"], list[CompareRow])
