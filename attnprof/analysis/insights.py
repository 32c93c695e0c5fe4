"""What the dashboard shows beyond the report itself, computed here so render only formats: each site's split on
the basis it is shown on, the diagnoses per site, the explanations (waterfalls) and the roofline points.

Pure functions over analysis records; the ceilings (a trace-stage read) come in from the caller.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from attnprof.analysis import diagnosis as dg
from attnprof.analysis import taxonomy as tx
from attnprof.analysis.records import CallSplit, Phase, Report, SiteSummary
from attnprof.analysis.roofline import roofline, shape_of_call
from attnprof.textenum import TextEnum
from attnprof.trace.ceilings import Ceilings
from attnprof.trace.runinfo import CallInfo

#: A site's key in Insights.splits: (site, op, phase), one SiteSummary each.
SiteKey = tuple[str, str, str]


class Basis(TextEnum):
    """The time a roofline point divides the work by."""

    KERNELS = "kernels"  # the attention kernels alone (compute_us)
    WHOLE_CALL = "whole call"  # the call end to end: true µs where timed, else the window


@dataclass(frozen=True)
class RooflinePoint:
    """One site and phase on the roofline, on one basis."""

    site: str
    phase: Phase
    basis: Basis
    backend: str
    shapes: dict[str, list[int]]
    dtype: str | None
    layout: str | None
    us: float  # µs per call on that basis
    intensity: float  # FLOP / byte (minimum bytes)
    tflops: float  # achieved
    gbps: float  # achieved, on the minimum bytes
    pct_of_peak: float | None  # of the ceiling of `bound`; None without ceilings
    bound: str | None  # "compute" | "memory"; None without ceilings


@dataclass
class Insights:
    """The dashboard's numbers for one report (all empty for no report)."""

    splits: dict[SiteKey, dg.SiteSplit] = field(default_factory=dict)  # µs per call: true basis where timed
    diagnoses: list[dg.Diagnosis] = field(default_factory=list)  # per call site, slowest in total first
    explanations: list[dg.Explanation] = field(default_factory=list)  # the waterfalls, in order
    roofline: list[RooflinePoint] = field(default_factory=list)  # per site and phase, on both bases
    ceilings: Ceilings | None = None  # those the roofline used


def site_key(s: SiteSummary | CallSplit) -> SiteKey:
    return s.site, s.op, s.phase


def site_splits(report: Report) -> dict[SiteKey, dg.SiteSplit]:
    """Each site's parts per call: on the true basis where the site has a true time, else as traced."""
    calls: dict[SiteKey, list[CallSplit]] = {}
    for c in report.calls:
        calls.setdefault(site_key(c), []).append(c)
    return {site_key(s): dg.site_split(s, calls.get(site_key(s), []), use_true=s.true_us is not None)
            for s in report.sites}


def roofline_points(report: Report, ceilings: Ceilings | None = None) -> list[RooflinePoint]:
    """Per site and phase: arithmetic intensity and achieved TFLOP/s, of the kernels alone and of the whole call."""
    points = []
    for s in report.sites:
        call = next((c for c in report.calls if site_key(c) == site_key(s)), None)
        shape = shape_of_call(call) if call else None
        itemsize = tx.itemsize(s.dtype or "")
        if shape is None or not itemsize:
            continue
        whole = s.true_us if s.true_us is not None else s.window_us
        for basis, us in ((Basis.KERNELS, s.compute_us), (Basis.WHOLE_CALL, whole)):
            if not us or us <= 0:
                continue
            r = roofline(shape, itemsize, s.phase == Phase.BWD, us, ceilings)
            if not r.min_bytes:  # a degenerate recorded shape (a 0 or negative size): no point to place
                continue
            points.append(RooflinePoint(site=s.site, phase=s.phase, basis=basis, backend=s.backend, shapes=s.shapes,
                                        dtype=s.dtype, layout=s.layout, us=us, intensity=r.flops / r.min_bytes,
                                        tflops=r.tflops, gbps=r.gbps, pct_of_peak=r.pct_of_peak, bound=r.bound))
    return points


def insights(report: Report | None, call_info: dict[int, CallInfo] | None = None, ceilings: Ceilings | None = None,
             explanations: list[dg.Explanation] | None = None) -> Insights:
    """The dashboard's numbers. `explanations` None: comparable call sites of the report explained against each other
    (dg.site_explanations). `call_info`: runinfo.json's calls by id, for fallback reasons (dropout, strides, mask).
    `ceilings`: for the roofline's % of peak (None: points only)."""
    if report is None:
        return Insights(explanations=list(explanations or []), ceilings=ceilings)
    diagnoses: list[dg.Diagnosis] = []
    if report.sites:
        diagnoses = dg.diagnose_sites(report, call_info)
        if explanations is None:
            explanations = dg.site_explanations(report, call_info)
    return Insights(splits=site_splits(report), diagnoses=diagnoses, explanations=list(explanations or []),
                    roofline=roofline_points(report, ceilings), ceilings=ceilings)
