"""Split one call's window into compute / copy / other / launch, counting overlapping time once.

Pure arithmetic over intervals: no trace, no names. See DEVELOPERS.md for the definitions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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


def split_window(start: float, end: float, intervals: list[tuple[float, float, str]],
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
