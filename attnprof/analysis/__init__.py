"""Analysis: pure functions from the trace model (and runinfo) to a Report."""
from __future__ import annotations

from pathlib import Path

from attnprof.analysis.calls import find_calls
from attnprof.analysis.kernel_counters import counters_section
from attnprof.analysis.records import SCHEMA_VERSION, CallSplit, FoundBy, Report
from attnprof.analysis.sites import summarize_sites
from attnprof.trace.model import Trace
from attnprof.trace.ncu_csv import NcuReport
from attnprof.trace.runinfo import RunInfo


def analyze(traces: list[Trace], runinfo: RunInfo | None, source: str, ncu: NcuReport | None = None,
            case_by_trace: dict[str, str] | None = None) -> Report:
    """`case_by_trace`: for a compare folder, trace file name -> its case (analysis.compare.case_labels_by_trace),
    added to the site of the calls found in that trace so that each shape is a site of its own."""
    calls, unattributed = [], []
    notes = [n for trace in traces for n in trace.notes]  # what the loader skipped or repaired
    for trace in traces:
        found, unowned = find_calls(trace, runinfo)
        case = (case_by_trace or {}).get(Path(trace.source).name)
        if case:
            _add_case(found, case)
        calls.extend(found)
        unattributed.extend(unowned)
    first = runinfo.steps.first_timed_call if runinfo else None
    if first is not None:
        # A trace of the whole run (Nsight under `attnprof nsys`) holds the warm-up calls too: autotuning, cuDNN's
        # first-call planning. They are not what the site costs.
        warm = [c for c in calls if c.found_by == FoundBy.ATTNPROF and c.id < first]
        if warm:
            calls = [c for c in calls if not (c.found_by == FoundBy.ATTNPROF and c.id < first)]
            notes.append(f"{len({c.id for c in warm})} calls of the warm-up steps left out")
    if not calls and traces:
        notes.append("no attention call found (no attnprof range and no attention op in the trace)")
    if unattributed:
        sites = sorted({c.site or c.op for c in unattributed})
        notes.append(f"{len(unattributed)} layout copies charged to no call ({', '.join(sites)}): they sit between "
                     "attention calls, or in code the trace cuts off, and the trace cannot tell whose they are "
                     "(unattributed_copies in attnprof.json)")
    if runinfo and runinfo.note:
        notes.append(runinfo.note)
    device = runinfo.device if runinfo else _device_name(traces)
    return Report(
        schema_version=SCHEMA_VERSION,
        source=source,
        trace_files=[t.source for t in traces],
        device=device,
        torch_version=runinfo.torch_version if runinfo else None,
        calls=calls,
        sites=summarize_sites(calls, runinfo),
        run=_run_summary(runinfo),
        notes=notes,
        trace_base_us=[t.base_us for t in traces],
        unattributed_copies=unattributed,
        kernel_counters=counters_section(ncu, runinfo) if ncu is not None else None,
    )


def _add_case(calls: list[CallSplit], case: str) -> None:
    for c in calls:
        site = c.site
        c.site = f"{site} {case}"
        for cp in c.copies:
            if cp.site == site:  # copies the attention op makes inside the call carry the call's site
                cp.site = c.site


def _device_name(traces: list[Trace]) -> str:
    for t in traces:
        for p in t.device_properties:
            if p.get("name"):
                return str(p["name"])
    return "cpu" if not any(t.has_device_activity for t in traces) else "unknown GPU"


def _run_summary(runinfo: RunInfo | None) -> dict | None:
    if runinfo is None:
        return None
    s = runinfo.steps
    return {
        "command": runinfo.command,
        "outcome": runinfo.outcome,
        "exit_code": runinfo.exit_code,
        "started_at": runinfo.started_at,
        "steps": {"unit": s.unit, "warmup": s.warmup, "timed": s.timed, "active": s.active, "seen": s.seen,
                  "profiled": s.profiled, "profiled_calls": s.profiled_calls, "stopped_early": s.stopped_early},
        "cuda_version": runinfo.cuda_version,
        "device_capability": runinfo.device_capability,
    }
