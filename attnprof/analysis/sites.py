"""Aggregate calls per call site and phase, and bring in the true (unprofiled) time measured at run time."""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from attnprof.analysis.records import CallSplit, CopySummary, SiteSummary
from attnprof.trace.runinfo import RunInfo, SiteTiming


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _launch_without_profiler(launch: float | None, true_us: float | None, busy_us: float) -> float | None:
    """The call's GPU idle with the profiler's own cost taken out.

    CUDA events time the entry point's span outside the profiler (true_us); less its own kernels' busy time, what is
    left is the idle the call really has (its host-side launch cost, cuDNN's planning). The idle the trace shows
    around the layout copies is the profiler's (with_stack, record_shapes): it counts as none. Without a true time
    (a trace attnprof did not make) nothing can be corrected: the traced launch stands.
    """
    if launch is None or true_us is None:
        return launch
    return max(true_us - busy_us, 0.0)


def summarize_sites(calls: list[CallSplit], runinfo: RunInfo | None) -> list[SiteSummary]:
    timings: dict[tuple[str, str, str], SiteTiming] = {}
    if runinfo:
        timings = {(t.site, t.op, t.phase): t for t in runinfo.sites}
    groups: dict[tuple[str, str, str], list[CallSplit]] = defaultdict(list)
    for c in calls:
        groups[(c.site, c.op, c.phase)].append(c)
    out = []
    for key, group in groups.items():
        site, op, phase = key
        n = len(group)
        launch = None if any(c.launch_us is None for c in group) else _mean([c.launch_us for c in group])
        timing = timings.get(key)
        # before the window when timed there; after it (slowed by the profiler's aftermath) only as a fallback
        true_us = (_median(timing.true_us) or _median(timing.after_us)) if timing else None
        after_us = _median(timing.after_us) if timing else None
        profiled_us = _median(timing.profiled_us) if timing else _mean([c.window_us for c in group])
        inflation = profiled_us / true_us if (true_us and profiled_us) else None
        launch_true = _launch_without_profiler(launch, true_us, _mean([c.entry_busy_us for c in group]))
        first = group[0]
        copies: dict[tuple, list] = {}
        for c in group:
            for cp in c.copies:
                acc = copies.setdefault((cp.site, cp.op, cp.position), [0, 0.0, 0])
                acc[0] += cp.bytes
                acc[1] += cp.dur_us
                acc[2] += 1
        out.append(SiteSummary(
            site=site, op=op, phase=phase,
            backend=Counter(c.backend for c in group).most_common(1)[0][0],
            calls=n, shapes=first.shapes, dtype=first.dtype, layout=first.layout,
            true_us=true_us, profiled_us=profiled_us, inflation=inflation, after_us=after_us,
            timed_calls=len(timing.true_us or timing.after_us) if timing else 0,
            window_us=_mean([c.window_us for c in group]),
            compute_us=_mean([c.compute_us for c in group]),
            copy_us=_mean([c.copy_us for c in group]),
            launch_us=launch, launch_true_us=launch_true,
            # true around the entry point, plus the busy time of the work outside it (the layout copies)
            window_true_us=(None if launch is None or true_us is None else
                            true_us + _mean([c.compute_us + c.copy_us + c.other_us - c.entry_busy_us for c in group])),
            other_us=_mean([c.other_us for c in group]),
            interleaved_us=_mean([c.interleaved_us for c in group]),
            copies=[CopySummary(site=s, op=o, bytes=int(b / n), dur_us=d / n, count=k)
                    for (s, o, _pos), (b, d, k) in copies.items()],
        ))
    out.sort(key=lambda s: -(s.window_us * s.calls))
    return out
