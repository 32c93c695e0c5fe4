"""Why attention is slow: ranked causes, each with its µs, what it is, where it comes from and how to fix it.

Pure functions over analysis records (Report, SiteSummary, CallSplit; a run's CallInfo when runinfo.json is at
hand). Two questions:

- `diagnose(selection)`: where the time of a call, a site or a whole run goes, as causes that add up to it;
- `explain(a, b)`: why B is slower than A, as causes that add up to the gap between them.

Both work on one unit, **µs per attention call**: every part of every selected site (one per site, op and phase)
is weighted by `site.calls / forward calls of the selection`, so a side's time is its fwd + bwd time per call
and sides with different call counts (a 2-layer and a 4-layer model, 3 profiled steps and 2) stay comparable.
Per phase, gap = Δcompute + Δcopy + Δlaunch + Δother; Δcopy splits by copy op into layout / cast / pad / GQA
expansion, Δcompute into another fused kernel, a fallback, or the same kernel running longer.

Numbers: with true times (CUDA events around the attention entry point, outside the profiler) for every site of
every side, a site's time per call is its true time plus the busy time of the layout-prep copies around the entry
point (kernel time, which the profiler does not stretch). The GPU idle *around* the entry point is not timed
outside the profiler and counts as zero: in a profiled run it is mostly the profiler's own CPU cost between the
prep ops (the seed case on an H100 idles several times its copies' time there under with_stack). Launch is then
what the true time leaves after the kernels' busy time; on CPU runs the same goes for other (host time between
ops). When the kernels' busy time exceeds the true time, the excess is left as the unexplained remainder, never
spread over the causes. Without true times on every side, all sides use their profiled windows as they are
(launch then includes the profiler's own cost, on both sides alike).

One module a concern, like HTA's one analysis a file: records.py (what the answers are), selection.py (what a side
is), parts.py and basis.py (a side's µs per call, per phase, on which numbers), noise.py; one module per cause
family: causes_copy.py (layout copies, casts, padding, GQA expansion), causes_kernel.py (kernel choice, fallback,
unfused attention, the kernels themselves), causes_host.py (launch, other); accumulate.py sums and ranks them;
pairing.py answers `explain`, single.py `diagnose`, site_groups.py the comparable sites of one report.
"""
from __future__ import annotations

from attnprof.analysis.diagnosis.backends import (
                                                  BLHD_BACKENDS,
                                                  FA2_BACKENDS,
                                                  FALLBACK_BACKENDS,
                                                  UNFUSED_BACKENDS,
                                                  is_hopper,
)
from attnprof.analysis.diagnosis.causes_copy import compact_lines
from attnprof.analysis.diagnosis.causes_kernel import SDPA_CALL, fallback_reasons
from attnprof.analysis.diagnosis.copy_kinds import copy_kind, short_op
from attnprof.analysis.diagnosis.pairing import explain
from attnprof.analysis.diagnosis.parts import SiteSplit, prep_copy_us, site_split
from attnprof.analysis.diagnosis.records import (
                                                  CAST,
                                                  COMPUTE,
                                                  COPY_KINDS,
                                                  EXPLAINED_TOLERANCE,
                                                  FALLBACK,
                                                  GQA_EXPAND,
                                                  KERNEL,
                                                  KIND_TITLES,
                                                  LAUNCH,
                                                  LAYOUT_COPY,
                                                  OTHER,
                                                  PAD,
                                                  UNFUSED,
                                                  UNIT,
                                                  Cause,
                                                  Diagnosis,
                                                  Explanation,
                                                  Selection,
                                                  Side,
                                                  is_explained,
)
from attnprof.analysis.diagnosis.selection import select, site_selection
from attnprof.analysis.diagnosis.single import diagnose, diagnose_sites
from attnprof.analysis.diagnosis.site_groups import comparable_site_groups, site_explanations

__all__ = [
                                                  "BLHD_BACKENDS",
                                                  "CAST",
                                                  "COMPUTE",
                                                  "COPY_KINDS",
                                                  "EXPLAINED_TOLERANCE",
                                                  "FA2_BACKENDS",
                                                  "FALLBACK",
                                                  "FALLBACK_BACKENDS",
                                                  "GQA_EXPAND",
                                                  "KERNEL",
                                                  "KIND_TITLES",
                                                  "LAUNCH",
                                                  "LAYOUT_COPY",
                                                  "OTHER",
                                                  "PAD",
                                                  "SDPA_CALL",
                                                  "UNFUSED",
                                                  "UNFUSED_BACKENDS",
                                                  "UNIT",
                                                  "Cause",
                                                  "Diagnosis",
                                                  "Explanation",
                                                  "Selection",
                                                  "Side",
                                                  "SiteSplit",
                                                  "compact_lines",
                                                  "comparable_site_groups",
                                                  "copy_kind",
                                                  "diagnose",
                                                  "diagnose_sites",
                                                  "explain",
                                                  "fallback_reasons",
                                                  "is_explained",
                                                  "is_hopper",
                                                  "prep_copy_us",
                                                  "select",
                                                  "short_op",
                                                  "site_explanations",
                                                  "site_selection",
                                                  "site_split",
]
