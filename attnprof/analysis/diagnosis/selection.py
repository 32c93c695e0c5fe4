"""What a side is: sites (or one call) of a report, chosen by selector, phase or call id."""
from __future__ import annotations

from attnprof.analysis.diagnosis.records import Selection
from attnprof.analysis.records import Report, SiteSummary
from attnprof.analysis.sites import describe_site, resolve_sites, summarize_sites
from attnprof.errors import AttnprofError
from attnprof.trace.runinfo import CallInfo

#: Call ids an error lists when the asked-for call is not there: enough to spot the right one on one line
SHOWN_CALL_IDS = 12


def select(report: Report, site: str | None = None, phase: str | None = None, call_id: int | None = None,
           call_info: dict[int, CallInfo] | None = None, label: str | None = None) -> Selection:
    """Sites of a report: all of them, those matching `site`, one phase; or one call (`call_id`)."""
    info = call_info or {}
    if call_id is not None:
        calls = [c for c in report.calls if c.id == call_id and (phase is None or c.phase == phase)]
        if not calls:
            ids = sorted({c.id for c in report.calls})
            shown = ", ".join(f"#{i}" for i in ids[:SHOWN_CALL_IDS]) + (", ..." if len(ids) > SHOWN_CALL_IDS else "")
            raise AttnprofError(f"{report.source} has no attention call #{call_id}"
                                + (f" ({phase})" if phase else "") + f"; its calls: {shown or 'none'}")
        return Selection(label or f"{report.source}::#{call_id}", report, summarize_sites(calls, None), calls, info)
    named = report.sites if site is None else resolve_sites(report.sites, site, report.source)
    sites = [s for s in named if phase is None or s.phase == phase]
    if not sites:
        known = sorted({describe_site(s) for s in report.sites})
        what = f"site {site}" if site else "attention call"
        raise AttnprofError(f"{report.source} has no {what}{f' ({phase})' if phase else ''}; its sites: "
                            + (", ".join(known) if known else "none"))
    keys = {(s.site, s.op, s.phase) for s in sites}
    calls = [c for c in report.calls if (c.site, c.op, c.phase) in keys]
    return Selection(label or (f"{report.source}::{site}" if site else report.source), report, sites, calls, info)


def site_selection(report: Report, site: str, call_info: dict[int, CallInfo] | None = None) -> Selection:
    """Exactly one call site (all its ops and phases), named by its label and location."""
    sites = [s for s in report.sites if s.site == site]
    return Selection(describe_site(sites[0]) if sites else site, report, sites,
                     [c for c in report.calls if c.site == site], call_info or {})


def work_key(s: SiteSummary) -> tuple:
    """Sites doing the same attention work, whatever their layout: same multiset of q and k dims, same dtype."""
    q = s.shapes.get("q") or s.shapes.get("qkv") or []
    k = s.shapes.get("k") or s.shapes.get("kv") or []
    return tuple(sorted(q)), tuple(sorted(k)), s.dtype
