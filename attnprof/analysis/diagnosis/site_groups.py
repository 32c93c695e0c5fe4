"""Comparable call sites in one report (the dashboard's waterfalls): the slowest explained against the fastest."""
from __future__ import annotations

import math
from collections import defaultdict

from attnprof.analysis.diagnosis.pairing import explain
from attnprof.analysis.diagnosis.parts import phase_parts, true_phases
from attnprof.analysis.diagnosis.records import Explanation
from attnprof.analysis.diagnosis.selection import site_selection, work_key
from attnprof.analysis.records import Report
from attnprof.trace.runinfo import CallInfo

#: Waterfalls a report gets at most: the biggest gaps; more would bury them on the dashboard
MAX_SITE_EXPLANATIONS = 4


def comparable_site_groups(report: Report) -> list[list[str]]:
    """Groups of two or more call sites whose calls do the same attention work (variants of one computation)."""
    by_key: dict[tuple, dict[str, None]] = defaultdict(dict)  # dict keys: sites in report order, once each
    for s in report.sites:
        if s.phase == "fwd" and (s.shapes.get("q") or s.shapes.get("qkv")):
            by_key[work_key(s)][s.site] = None
    return [list(g) for g in by_key.values() if len(g) >= 2]


def site_explanations(report: Report, call_info: dict[int, CallInfo] | None = None,
                      limit: int = MAX_SITE_EXPLANATIONS) -> list[Explanation]:
    """For each group of comparable sites: the slowest explained against the fastest, biggest gap first."""
    out = []
    for group in comparable_site_groups(report):
        sels = [site_selection(report, site, call_info) for site in group]
        on_true = true_phases(sels)
        totals = [sum(p.total for p in phase_parts(s, on_true).values()) for s in sels]
        fastest, slowest = sels[totals.index(min(totals))], sels[totals.index(max(totals))]
        if fastest is not slowest and not math.isclose(min(totals), max(totals)):
            out.append(explain(fastest, slowest))
    out.sort(key=lambda e: -e.gap_us)
    return out[:limit]
