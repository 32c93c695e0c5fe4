"""Across the ranks of a distributed job: per call site the split on every rank and the straggler, the collectives
that overlap attention calls, and how much of the slowest rank's step is attention.

Pure: one `RankFacts` per rank trace (made by `rank_facts` from that rank's trace and its own Report, in whatever
process loaded the trace), then `summarize_ranks` combines them. Nothing here imports torch.
"""
from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from attnprof.analysis.records import CallSplit, Phase, Report
from attnprof.trace.model import HostKind, Trace

#: Host ranges PyTorch puts around a collective's work (`gloo:all_reduce`, `nccl:all_reduce`, ...) and the NCCL
#: kernels (`ncclKernel_AllReduce_...`, `ncclDevKernel_...`) on the device.
_HOST_COLLECTIVE = re.compile(r"^(nccl|gloo|ucc|mpi|xccl):")
_DEVICE_COLLECTIVE = re.compile(r"nccl", re.IGNORECASE)
_PROFILER_STEP = re.compile(r"^ProfilerStep#\d+$")


@dataclass
class RankSite:
    """One rank's figures for one call site, op and phase: µs per call (means over its traced calls)."""

    rank: int
    calls: int
    window_us: float
    compute_us: float
    copy_us: float
    other_us: float
    launch_us: float | None  # None on CPU traces
    true_us: float | None  # attnprof runs: the median CUDA-event time outside the profiler
    overlap_us: float  # mean per call of the time collectives ran inside the call's window
    overlapped_calls: int  # calls with any collective inside their window


@dataclass
class SiteAcrossRanks:
    site: str
    op: str
    phase: str
    backend: str
    per_rank: list[RankSite]
    min_us: float  # of the ranks' window µs per call
    median_us: float
    max_us: float
    straggler_rank: int | None  # the rank with the longest window; None with one rank
    straggler_extra_us: float  # its window per call less the median of the other ranks' windows


@dataclass
class RankStep:
    """One rank's profiled steps."""

    rank: int
    trace_files: list[str]
    steps: int  # profiled steps the figures divide by
    step_us: float  # wall time of one step: ProfilerStep ranges when the trace has them, else the trace's span / steps
    attention_us: float  # per step: the attention call windows
    attention_pct: float  # attention_us / step_us, in %
    collective_us: float  # per step: time some collective ran (union over streams and threads)
    busy_us: float  # per step: step_us less collective_us, the time outside collectives (the others wait on it)
    overlap_us: float  # per step: collective time inside attention windows
    step_basis: str  # "ProfilerStep" | "trace span"


@dataclass
class OverlapCause:
    """Collectives running inside a site's attention calls, and what it cost them: a cause with its fix."""

    site: str
    op: str
    phase: str
    kind: str  # "collective overlap"
    collectives: list[str]  # collective names seen inside the windows
    overlapped_calls: int
    clear_calls: int
    overlap_us: float  # mean collective time inside an overlapped call's window
    slowdown_us: float | None  # mean window of overlapped calls less that of the same site's clear calls
    detail: str
    fix: str


@dataclass
class CriticalPath:
    """The rank the others wait for. Ranks of a synchronous job end their steps together (the early ones wait in the
    collectives: on a straggler's peers an all-reduce lasts until the straggler joins), so the slowest rank is the
    one with the most time outside collectives, not the longest step."""

    slowest_rank: int
    step_us: float
    busy_us: float  # its time outside collectives per step
    others_busy_us: float  # the other ranks' median of the same
    attention_us: float  # its attention per step
    attention_pct: float  # of its step
    attention_extra_us: float  # its attention per step less the other ranks' median


@dataclass
class RanksSummary:
    world_size: int  # ranks analysed
    ranks: list[RankStep]
    sites: list[SiteAcrossRanks]
    critical_path: CriticalPath | None
    overlaps: list[OverlapCause] = field(default_factory=list)
    basis: str = "window_us"  # what min / median / max and the straggler compare: the traced window per call


@dataclass
class RankFacts:
    """What one rank trace contributes; small enough to send between processes."""

    rank: int
    trace_files: list[str]
    report: Report
    steps: int
    step_us: float
    step_basis: str
    collective_us: float  # whole trace
    call_overlap: dict[int, float]  # call index in report.calls -> collective µs inside its window
    call_collectives: dict[int, list[str]]


# --- per rank trace ------------------------------------------------------------------------------------------------

def collective_intervals(trace: Trace) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Merged [start, end) intervals (µs from the trace's t=0) when some collective ran, and the collectives' names.

    Device: NCCL kernels on any stream. Host: `gloo:` / `nccl:` ranges on threads that run no other ops (gloo's and
    NCCL's worker threads); on the thread that issues them they only mark the launch, which is not concurrent work.
    """
    h, d = trace.host, trace.device
    starts, ends, names = [], [], set()
    if len(d):
        ids = trace.strings.ids_where(lambda s: bool(_DEVICE_COLLECTIVE.search(s)))
        rows = np.flatnonzero(np.isin(d.name, ids))
        starts.append(d.ts[rows])
        ends.append(d.ts[rows] + d.dur[rows])
        names.update(trace.names(np.unique(d.name[rows])))
    if len(h):
        ids = trace.strings.ids_where(lambda s: bool(_HOST_COLLECTIVE.match(s)))
        is_coll = np.isin(h.name, ids) & ((h.kind == HostKind.OP) | (h.kind == HostKind.ANNOTATION))
        is_op = (h.kind == HostKind.OP) & ~is_coll
        busy_threads = np.unique(h.tid[is_op])
        rows = np.flatnonzero(is_coll & ~np.isin(h.tid, busy_threads))
        starts.append(h.ts[rows])
        ends.append(h.ts[rows] + h.dur[rows])
        names.update(trace.names(np.unique(h.name[rows])))
    if not starts:
        return np.empty(0), np.empty(0), []
    s = np.concatenate(starts)
    e = np.concatenate(ends)
    return (*_merge(s, e), sorted(names))


def _merge(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(starts):
        return starts, ends
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    run_end = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > run_end[:-1]
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, len(s) - 1]
    return s[first], run_end[last]


def covered_us(starts: np.ndarray, ends: np.ndarray, lo: float, hi: float) -> float:
    """Length of [lo, hi) covered by the merged intervals."""
    if not len(starts) or hi <= lo:
        return 0.0
    i = max(int(np.searchsorted(ends, lo, side="right")), 0)
    j = int(np.searchsorted(starts, hi, side="left"))
    if j <= i:
        return 0.0
    return float(np.sum(np.minimum(ends[i:j], hi) - np.maximum(starts[i:j], lo)))


def _steps_and_span(trace: Trace, runinfo_steps: int | None) -> tuple[int, float, str]:
    """(steps, µs per step, basis): ProfilerStep ranges (tensorboard_trace_handler's schedule marks each step) when
    the trace has them, else the trace's span over the steps attnprof profiled (one if unknown)."""
    h = trace.host
    ids = trace.strings.ids_where(lambda s: bool(_PROFILER_STEP.match(s)))
    rows = np.flatnonzero(np.isin(h.name, ids) & (h.kind == HostKind.ANNOTATION)) if len(ids) else np.empty(0, int)
    if len(rows):
        return len(rows), float(np.mean(h.dur[rows])), "ProfilerStep"
    ends = [h.ts + h.dur] if len(h) else []
    starts = [h.ts] if len(h) else []
    if len(trace.device):
        ends.append(trace.device.ts + trace.device.dur)
        starts.append(trace.device.ts)
    span = float(max(x.max() for x in ends) - min(x.min() for x in starts)) if ends else 0.0
    steps = max(runinfo_steps or 1, 1)
    return steps, span / steps, "trace span"


def rank_facts(rank: int, traces: list[Trace], report: Report, profiled_steps: int | None) -> RankFacts:
    """One rank's facts from its traces and its own Report (calls carry the index of their trace in
    report.trace_files through their order: calls of trace k follow those of trace k-1)."""
    call_overlap: dict[int, float] = {}
    call_collectives: dict[int, list[str]] = {}
    steps, step_us, collective_us = 0, 0.0, 0.0
    basis = "trace span"
    by_source = {t.source: t for t in traces}
    intervals = {t.source: collective_intervals(t) for t in traces}
    for t in traces:
        n, us, basis = _steps_and_span(t, profiled_steps)
        step_us = (step_us * steps + us * n) / (steps + n) if steps + n else 0.0
        steps += n
        s, e, _ = intervals[t.source]
        collective_us += float(np.sum(e - s))
    sources = list(by_source)
    for i, c in enumerate(report.calls):
        # every call's start_us is relative to its own trace's t=0; with one trace per rank (the usual case) that is
        # the rank's trace; with several, the one whose span holds the call
        src = sources[0] if len(sources) == 1 else _trace_of(c, traces)
        s, e, names = intervals[src]
        ov = covered_us(s, e, c.start_us, c.start_us + c.window_us)
        if ov > 0:
            call_overlap[i] = ov
            call_collectives[i] = names
    return RankFacts(rank=rank, trace_files=[t.source for t in traces], report=report, steps=steps, step_us=step_us,
                     step_basis=basis, collective_us=collective_us, call_overlap=call_overlap,
                     call_collectives=call_collectives)


def _trace_of(call: CallSplit, traces: list[Trace]) -> str:
    for t in traces:
        h = t.host
        if len(h) and call.start_us <= float((h.ts + h.dur).max()):
            return t.source
    return traces[-1].source


# --- across ranks --------------------------------------------------------------------------------------------------

def summarize_ranks(facts: list[RankFacts]) -> RanksSummary:
    facts = sorted(facts, key=lambda f: f.rank)
    return RanksSummary(
        world_size=len(facts),
        ranks=[_rank_step(f) for f in facts],
        sites=_sites(facts),
        critical_path=_critical_path(facts),
        overlaps=_overlaps(facts),
    )


def _rank_step(f: RankFacts) -> RankStep:
    steps = max(f.steps, 1)
    attention = sum(c.window_us for c in f.report.calls) / steps
    overlap = sum(f.call_overlap.values()) / steps
    collective = f.collective_us / steps
    return RankStep(rank=f.rank, trace_files=f.trace_files, steps=f.steps, step_us=f.step_us, attention_us=attention,
                    attention_pct=100 * attention / f.step_us if f.step_us > 0 else 0.0, collective_us=collective,
                    busy_us=max(f.step_us - collective, 0.0), overlap_us=overlap, step_basis=f.step_basis)


def _sites(facts: list[RankFacts]) -> list[SiteAcrossRanks]:
    per_site: dict[tuple[str, str, str], list[RankSite]] = defaultdict(list)
    backend: dict[tuple[str, str, str], str] = {}
    for f in facts:
        true_us: dict[tuple[str, str, str], float | None] = {(s.site, s.op, s.phase): s.true_us for s in f.report.sites}
        groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for i, c in enumerate(f.report.calls):
            groups[(c.site, c.op, c.phase)].append(i)
        for key, rows in groups.items():
            calls = [f.report.calls[i] for i in rows]
            backend.setdefault(key, calls[0].backend)
            launches = [c.launch_us for c in calls if c.launch_us is not None]
            per_site[key].append(RankSite(
                rank=f.rank, calls=len(calls), window_us=_mean([c.window_us for c in calls]),
                compute_us=_mean([c.compute_us for c in calls]), copy_us=_mean([c.copy_us for c in calls]),
                other_us=_mean([c.other_us for c in calls]), launch_us=_mean(launches) if launches else None,
                true_us=true_us.get(key), overlap_us=_mean([f.call_overlap.get(i, 0.0) for i in rows]),
                overlapped_calls=sum(1 for i in rows if i in f.call_overlap)))
    out = []
    for key, ranks in per_site.items():
        windows = [r.window_us for r in ranks]
        straggler, extra = None, 0.0
        if len(ranks) > 1:
            slow = max(ranks, key=lambda r: r.window_us)
            others = [r.window_us for r in ranks if r is not slow]
            straggler, extra = slow.rank, slow.window_us - statistics.median(others)
        out.append(SiteAcrossRanks(site=key[0], op=key[1], phase=key[2], backend=backend[key], per_rank=ranks,
                                   min_us=min(windows), median_us=statistics.median(windows), max_us=max(windows),
                                   straggler_rank=straggler, straggler_extra_us=extra))
    out.sort(key=lambda s: -s.max_us * max(r.calls for r in s.per_rank))
    return out


def _critical_path(facts: list[RankFacts]) -> CriticalPath | None:
    steps = [_rank_step(f) for f in facts if f.step_us > 0]
    if not steps:
        return None
    slow = max(steps, key=lambda r: r.busy_us)
    others = [r for r in steps if r is not slow] or [slow]
    return CriticalPath(slowest_rank=slow.rank, step_us=slow.step_us, busy_us=slow.busy_us,
                        others_busy_us=statistics.median(r.busy_us for r in others),
                        attention_us=slow.attention_us, attention_pct=slow.attention_pct,
                        attention_extra_us=slow.attention_us - statistics.median(r.attention_us for r in others))


def _overlaps(facts: list[RankFacts]) -> list[OverlapCause]:
    """Per site and phase over all ranks: calls with a collective inside their window against those without."""
    hit: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    clear: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    names: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for f in facts:
        for i, c in enumerate(f.report.calls):
            key: tuple[str, str, str] = (c.site, c.op, c.phase)
            if i in f.call_overlap:
                hit[key].append((c.window_us, f.call_overlap[i]))
                names[key].update(f.call_collectives.get(i, []))
            else:
                clear[key].append(c.window_us)
    out = []
    for key, rows in hit.items():
        overlap = _mean([o for _, o in rows])
        slowdown = _mean([w for w, _ in rows]) - _mean(clear[key]) if clear[key] else None
        coll = sorted(names[key])
        what = ", ".join(coll) or "collectives"
        slower = (f"; these calls take {slowdown:+.1f} µs against the site's {len(clear[key])} calls without overlap"
                  if slowdown is not None else "; every traced call of the site overlaps one")
        out.append(OverlapCause(
            site=key[0], op=key[1], phase=key[2], kind="collective overlap", collectives=coll,
            overlapped_calls=len(rows), clear_calls=len(clear[key]), overlap_us=overlap, slowdown_us=slowdown,
            detail=f"{what} ran inside {len(rows)} {key[2]} call(s) of {key[0]}, {overlap:.1f} µs per call{slower}",
            fix=_fix(key[2], coll)))
    out.sort(key=lambda o: -(o.slowdown_us if o.slowdown_us is not None else o.overlap_us) * o.overlapped_calls)
    return out


def _fix(phase: str, collectives: list[str]) -> str:
    if any(n.startswith("gloo:") for n in collectives):
        return ("gloo runs collectives on CPU threads that compete with the attention ops for cores: leave cores "
                "free for them (fewer intra-op threads, OMP_NUM_THREADS) or use NCCL on GPUs")
    if phase == Phase.BWD:
        return ("gradient all-reduce runs beside the backward attention kernels: larger DDP buckets "
                "(bucket_cap_mb) or FSDP's backward_prefetch=BACKWARD_PRE move it off the attention kernels; if the "
                "overlap is wanted, give the compute stream the higher priority")
    return ("collectives (FSDP all-gathers) run beside the forward attention kernels: tune FSDP's forward_prefetch / "
            "limit_all_gathers, or give the compute stream the higher priority (torch.cuda.Stream(priority=-1))")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
