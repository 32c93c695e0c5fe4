"""The parts of a side per phase, in µs per attention call, on the basis of the question (true or profiled)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from attnprof.analysis.diagnosis.copy_kinds import copy_kind
from attnprof.analysis.diagnosis.noise import noise_us
from attnprof.analysis.diagnosis.records import LAYOUT_COPY, Selection, Side
from attnprof.analysis.records import CallSplit, SiteSummary


@dataclass
class PhaseParts:
    """One phase of one side, µs per attention call."""

    total: float = 0.0  # on the basis: the profiled window, or the true estimate (see SiteSplit)
    compute: float = 0.0
    copy: float = 0.0
    launch: float | None = None
    other: float = 0.0
    copy_kinds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    copy_ops: dict[str, dict[tuple[str, str], list[float]]] = field(default_factory=lambda: defaultdict(
        lambda: defaultdict(lambda: [0.0, 0.0])))  # kind -> (source line, op) -> [µs, copies] per call
    backend_us: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    shapes: list[tuple] = field(default_factory=list)
    layouts: set[str] = field(default_factory=set)
    profiler: float = 0.0  # taken out of the profiled window as the profiler's own cost

    @property
    def backend(self) -> str | None:
        return max(self.backend_us, key=self.backend_us.__getitem__) if self.backend_us else None


def forward_calls(sites: list[SiteSummary]) -> int:
    fwd = sum(s.calls for s in sites if s.phase == "fwd")
    return fwd or max(sum(s.calls for s in sites if s.phase == p) for p in {s.phase for s in sites})


def true_phases(sels: list[Selection]) -> set[str]:
    """Phases where every site of every side has a true time: those are compared on true times."""
    phases = {s.phase for sel in sels for s in sel.sites}
    return {p for p in phases if all(s.true_us is not None for sel in sels for s in sel.sites if s.phase == p)}


def phase_order(phase: str) -> tuple:
    """fwd first, then the others by name."""
    return phase != "fwd", phase


@dataclass
class SiteSplit:
    """One site's µs per call on a basis: the trace's split, or true (see the package's docstring)."""

    total: float
    compute: float
    copy: float
    launch: float | None  # None on CPU runs
    other: float
    profiler_us: float  # the window less the parts: the profiler's own cost, taken out (0 on the profiled basis)
    unexplained_us: float  # total less the parts: < 0 when the kernels' busy time exceeds the true time


def prep_copy_us(calls: list[CallSplit]) -> float:
    """Mean busy time per call of the layout-prep copies before and after the entry point (not inside it)."""
    if not calls:
        return 0.0
    return sum(cp.dur_us for c in calls for cp in c.copies if cp.position != "inside") / len(calls)


def site_split(s: SiteSummary, calls: list[CallSplit], use_true: bool) -> SiteSplit:
    """The parts of one site per call; with `use_true` (and a true time) the true estimate, else the trace's."""
    if not use_true or s.true_us is None:
        return SiteSplit(s.window_us, s.compute_us, s.copy_us, s.launch_us, s.other_us, 0.0, 0.0)
    if s.window_true_us is not None and s.launch_true_us is not None:  # GPU: the core analysis's estimate
        parts = s.compute_us + s.copy_us + s.launch_true_us + s.other_us
        return SiteSplit(s.window_true_us, s.compute_us, s.copy_us, s.launch_true_us, s.other_us,
                         max(0.0, s.window_us - parts), s.window_true_us - parts)
    total = s.true_us + prep_copy_us(calls)
    launch, other = s.launch_us, s.other_us
    if launch is not None:  # GPU: idle is what the true time leaves after the kernels
        launch = max(0.0, total - (s.compute_us + s.copy_us + s.other_us))
    else:  # CPU: the host time between ops is
        other = max(0.0, total - (s.compute_us + s.copy_us))
    parts = s.compute_us + s.copy_us + (launch or 0.0) + other
    return SiteSplit(total, s.compute_us, s.copy_us, launch, other, max(0.0, s.window_us - parts), total - parts)


def _site_calls(sel: Selection, s: SiteSummary) -> list[CallSplit]:
    return [c for c in sel.calls if (c.site, c.op, c.phase) == (s.site, s.op, s.phase)]


def _add_copies(p: PhaseParts, s: SiteSummary, w: float) -> None:
    """A site's copies by kind and (source line, op), scaled so that they add up to its copy_us."""
    listed = sum(c.dur_us for c in s.copies)
    if listed > 0:
        scale = s.copy_us / listed  # copy_us counts overlapping copies once: keep the parts adding up
        for c in s.copies:
            kind = copy_kind(c.op)
            us = w * c.dur_us * scale
            p.copy_kinds[kind] += us
            acc = p.copy_ops[kind][(c.site or s.site, c.op)]
            acc[0] += us
            acc[1] += w * c.count / s.calls
    elif s.copy_us > 0:
        p.copy_kinds[LAYOUT_COPY] += w * s.copy_us
        p.copy_ops[LAYOUT_COPY][(s.site, "copy kernels")][0] += w * s.copy_us


def phase_parts(sel: Selection, on_true: set[str]) -> dict[str, PhaseParts]:
    """Per phase, the selection's parts per forward call; phases in `on_true` on true times."""
    n = forward_calls(sel.sites)
    parts: dict[str, PhaseParts] = {}
    for s in sel.sites:
        w = s.calls / n
        p = parts.setdefault(s.phase, PhaseParts())
        split = site_split(s, _site_calls(sel, s), s.phase in on_true)
        if split.launch is not None:
            p.launch = (p.launch or 0.0) + w * split.launch
        p.total += w * split.total
        p.compute += w * split.compute
        p.copy += w * split.copy
        p.other += w * split.other
        p.profiler += w * split.profiler_us
        p.backend_us[s.backend] += w * s.compute_us
        p.shapes.append((s.shapes.get("q") or s.shapes.get("qkv"), s.dtype))
        if s.layout:
            p.layouts.add(s.layout)
        _add_copies(p, s, w)
    return parts


def side(sel: Selection, parts: dict[str, PhaseParts]) -> Side:
    backends: dict[str, float] = defaultdict(float)
    for p in parts.values():
        for b, us in p.backend_us.items():
            backends[b] += us
    launches = [p.launch for p in parts.values()]
    n = forward_calls(sel.sites)
    true_us = None
    if all(s.true_us is not None for s in sel.sites):
        true_us = sum((s.true_us or 0.0) * s.calls / n for s in sel.sites)  # all set: checked above
    first = sel.sites[0]
    return Side(
        label=sel.label,
        sites=sorted({s.site for s in sel.sites}),
        backends=sorted(backends, key=lambda b: -backends[b]),
        calls=n,
        us=sum(p.total for p in parts.values()),
        compute_us=sum(p.compute for p in parts.values()),
        copy_us=sum(p.copy for p in parts.values()),
        launch_us=None if all(v is None for v in launches) else sum(v or 0.0 for v in launches),
        other_us=sum(p.other for p in parts.values()),
        true_us=true_us,
        profiler_us=sum(p.profiler for p in parts.values()),
        shapes=dict(first.shapes),
        dtype=first.dtype,
        noise_us=noise_us(sel.sites, n),
    )


def shape_text(p: PhaseParts) -> str:
    shapes = sorted({(tuple(s) if s else (), d or "?") for s, d in p.shapes})
    return ", ".join(f"{'x'.join(map(str, s)) or '?'} {d}" for s, d in shapes)


def work(p: PhaseParts) -> set:
    """The attention work of a phase, whatever the layout: q's dims as a multiset, and the dtype."""
    return {(tuple(sorted(s or ())), d) for s, d in p.shapes}
