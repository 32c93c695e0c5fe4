"""Split one call's window into compute / copy / other / launch, counting overlapping time once.

Pure arithmetic over intervals: no trace, no names. See DEVELOPERS.md for the definitions.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from attnprof.analysis.records import CallSplit, Part
from attnprof.errors import AttnprofError

FOREIGN = "foreign"  # other code's work inside the span: not the call's, left out of its window


IDLE = "idle"


@dataclass
class Split:
    span_us: float  # window start to window end
    window_us: float  # span less foreign work
    compute_us: float
    copy_us: float
    other_us: float
    idle_us: float  # no work at all: on a GPU timeline, launch
    segments: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, category or IDLE)


def split_window(start: float, end: float, intervals: Sequence[tuple[float, float, str]],
                 priority: tuple[str, ...]) -> Split:
    """Assign every instant of [start, end] to the highest-priority category active then, or to idle.

    `intervals` are (start, end, category) with category in `priority` (which should also list FOREIGN);
    they are clipped to the window.
    """
    rank = {c: i for i, c in enumerate(priority)}
    edges: list[tuple[float, int, int]] = []  # (time, +1/-1, rank)
    for s, e, c in intervals:
        s, e = max(float(s), start), min(float(e), end)
        if e > s:
            edges.append((s, 1, rank[c]))
            edges.append((e, -1, rank[c]))
    edges.sort(key=lambda x: (x[0], x[1]))
    totals = [0.0] * len(priority)
    active = [0] * len(priority)
    segments: list[tuple[float, float, str]] = []
    t_prev = start
    for t, step, r in edges + [(end, 0, 0)]:
        if t > t_prev:
            owner = next((i for i, n in enumerate(active) if n), None)
            if owner is not None:
                totals[owner] += t - t_prev
            label = priority[owner] if owner is not None else IDLE
            if segments and segments[-1][2] == label and segments[-1][1] == t_prev:
                segments[-1] = (segments[-1][0], t, label)
            else:
                segments.append((t_prev, t, label))
        active[r] += step
        t_prev = max(t_prev, t)
    span = max(float(end - start), 0.0)
    by_name = dict(zip(priority, totals))
    busy = sum(totals)
    foreign = by_name.get(FOREIGN, 0.0)
    return Split(
        span_us=span,
        window_us=span - foreign,
        compute_us=by_name.get("compute", 0.0),
        copy_us=by_name.get("copy", 0.0),
        other_us=by_name.get("other", 0.0),
        idle_us=max(span - busy, 0.0),
        segments=segments,
    )


class SplitInvariantError(AttnprofError):
    """A call whose parts do not add up to its window: a bug in attnprof's analysis, not in the user's input.

    Raised rather than noted: every figure of that call (and of its site) would be wrong, and a report that looks
    right but is not is worse than none. It still reaches the user as one line, naming the call."""


def check_call(call: CallSplit) -> None:
    """compute + copy + other + launch = window, and the segments tile the span (window + interleaved) in order,
    each part's segments summing to that part. Tolerance: float rounding over the call's span."""
    launch = call.launch_us or 0.0
    span = call.window_us + call.interleaved_us
    tol = 1e-6 * max(abs(span), 1.0) + 1e-12 * abs(call.start_us)
    parts = call.compute_us + call.copy_us + call.other_us + launch
    where = f"call {call.id} ({call.op} {call.phase} at {call.site})"
    if abs(parts - call.window_us) > tol:
        raise SplitInvariantError(f"internal error: {where}: parts {parts:.3f} µs != window {call.window_us:.3f} µs")
    if not call.segments:
        return
    t = call.start_us
    by_part: dict[str, float] = {}
    for seg in call.segments:
        if abs(seg.start_us - t) > tol or seg.dur_us < 0:
            raise SplitInvariantError(f"internal error: {where}: segments do not tile the window at {t:.3f} µs")
        t = seg.start_us + seg.dur_us
        by_part[seg.part] = by_part.get(seg.part, 0.0) + seg.dur_us
    if abs(t - (call.start_us + span)) > tol:
        raise SplitInvariantError(f"internal error: {where}: segments end at {t:.3f} µs, the span at "
                                  f"{call.start_us + span:.3f} µs")
    expected: dict[str, float] = {Part.COMPUTE: call.compute_us, Part.COPY: call.copy_us, Part.INTERLEAVED: call.interleaved_us,
                Part.OTHER: call.other_us, Part.LAUNCH: launch}
    for part in [*expected, *(p for p in by_part if p not in expected)]:  # a fixed order: one message per fault
        total = by_part.get(part, 0.0)
        if part not in expected or abs(total - expected[part]) > tol:
            raise SplitInvariantError(f"internal error: {where}: {part} segments sum to {total:.3f} µs, the call "
                                      f"says {expected.get(part, 0.0):.3f} µs")
