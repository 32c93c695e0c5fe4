"""Nsight Compute's counters per attention kernel: joined to its call and site, with the bound they show.

Each kernel ncu profiled inside an attnprof range belongs to that call (`#<id>` in the range name) and so to its
call site. Per kernel: its duration under ncu, SM and memory throughput as % of peak (speed of light), occupancy,
registers and shared memory, the tensor-core path (wgmma vs mma.sync instructions, tensor-pipe utilisation) and,
for copy kernels, the DRAM bytes they moved. The bound comes from the counters: a kernel at 60% of peak or more
on the SM or on memory is compute- or memory-bound; under 60% on both (ncu's own line for "latency issues") it is
occupancy-bound when fewer than a quarter of its SM's warp slots are active, else latency-bound.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from attnprof.analysis.taxonomy import backend_from_kernel, is_copy_kernel_name
from attnprof.trace.ncu_csv import NcuKernel, NcuReport
from attnprof.trace.runinfo import RunInfo

#: ncu's SpeedOfLight rule: compute and memory throughput both under 60% of peak "typically indicate latency issues".
CEILING_PCT = 60.0
#: Achieved occupancy under this (16 of 64 warps per SM on Hopper): too few warps to hide latency.
LOW_OCCUPANCY_PCT = 25.0

COMPUTE_BOUND, MEMORY_BOUND, OCCUPANCY_BOUND, LATENCY_BOUND = "compute", "memory", "occupancy", "latency"


@dataclass
class KernelCounters:
    """One profiled kernel of one call."""

    call_id: int | None
    site: str | None
    op: str | None
    phase: str | None  # from runinfo.json's site timings, when the run folder has it
    kernel: str  # short name (function, without namespace and template arguments)
    kernel_full: str
    category: str  # compute | copy
    backend: str | None  # from the kernel name: cudnn, flash, flash-attn2, fa3, ...
    duration_us: float | None
    sm_pct: float | None
    memory_pct: float | None
    dram_pct: float | None
    achieved_occupancy_pct: float | None
    theoretical_occupancy_pct: float | None
    registers_per_thread: int | None
    shared_mem_per_block: int | None  # bytes
    gmma_inst: int | None  # wgmma instructions
    mma_sync_inst: int | None  # mma.sync: the HMMA pipe's instructions less wgmma (ncu counts wgmma in both)
    tensor_pipe_pct: float | None
    dram_bytes: int | None  # read + written
    dram_gbs: float | None  # dram_bytes / duration
    bound: str | None
    bound_evidence: str
    occupancy_limiters: list[str] = field(default_factory=list)
    copy_site: str | None = None  # a layout copy's source line
    position: str | None = None  # a layout copy's place: before | after the call (inside: in the call's range)


@dataclass
class SiteKernelCounters:
    """One kernel of one call site: medians over its profiled calls."""

    site: str
    op: str | None
    phase: str | None
    kernel: str
    category: str
    backend: str | None
    calls: int
    call_ids: list[int]
    duration_us: float | None
    sm_pct: float | None
    memory_pct: float | None
    dram_pct: float | None
    achieved_occupancy_pct: float | None
    theoretical_occupancy_pct: float | None
    registers_per_thread: int | None
    shared_mem_per_block: int | None
    gmma_inst: int | None
    mma_sync_inst: int | None
    tensor_pipe_pct: float | None
    dram_bytes: int | None
    dram_gbs: float | None
    bound: str | None
    bound_evidence: str
    copy_site: str | None = None
    position: str | None = None


@dataclass
class KernelCountersSection:
    """attnprof.json's `kernel_counters`: what ncu measured, per kernel and per site."""

    source: str  # the CSV read
    kernels: list[KernelCounters]
    sites: list[SiteKernelCounters]
    outside_calls: int  # profiled kernels in no attnprof range (none under `attnprof ncu`'s filter)
    notes: list[str] = field(default_factory=list)


def short_kernel_name(name: str) -> str:
    """`void ns::flash_fwd_kernel<Traits<...>, 0>(ns::Params)` -> `flash_fwd_kernel`."""
    s = name.strip()
    if s.startswith("void "):
        s = s[5:]
    depth, cut = 0, len(s)
    for i, ch in enumerate(s):  # the name ends where the template or parameter list at depth 0 opens
        if ch in "<(" and depth == 0:
            cut = i
            break
    s = s[:cut]
    return s.rsplit("::", 1)[-1] or name


def _int(v: float | None) -> int | None:
    return None if v is None else int(round(v))


def _median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _kb(n: float) -> str:
    return f"{n / 1000:.1f} KB" if n >= 1000 else f"{n:.0f} B"  # ncu's Kbyte: 1000 bytes


def occupancy_limiters(k: NcuKernel) -> list[str]:
    """The resources that allow the fewest blocks per SM, with what they are (`registers (255/thread)`)."""
    if not k.occupancy_limits:
        return []
    least = min(k.occupancy_limits.values())
    out = []
    for what, blocks in k.occupancy_limits.items():
        if blocks != least:
            continue
        if what == "registers" and k.registers_per_thread is not None:
            what += f" ({k.registers_per_thread:.0f}/thread)"
        elif what == "shared memory" and k.shared_mem_per_block is not None:
            what += f" ({_kb(k.shared_mem_per_block)}/block)"
        elif what == "warps" and k.block_size is not None:
            what += f" ({k.block_size:.0f} threads/block)"
        out.append(what)
    return out


def classify_bound(sm_pct: float | None, memory_pct: float | None, dram_pct: float | None,
                   achieved_occupancy_pct: float | None, theoretical: str = "") -> tuple[str | None, str]:
    """(bound, the counters that show it). `theoretical`: what limits occupancy, to name beside it."""
    if sm_pct is None and memory_pct is None:
        return None, "no speed-of-light counters (SpeedOfLight section not collected)"
    sm, mem = sm_pct or 0.0, max(memory_pct or 0.0, dram_pct or 0.0)
    sol = f"SM {sm:.1f}%, memory {mem:.1f}% of peak"
    if dram_pct is not None and dram_pct != mem:
        sol += f" (DRAM {dram_pct:.1f}%)"
    if max(sm, mem) >= CEILING_PCT:
        if sm >= mem:
            return COMPUTE_BOUND, f"{sol}: the SM is the ceiling it meets"
        return MEMORY_BOUND, f"{sol}: memory is the ceiling it meets"
    far = f"{sol}, both under {CEILING_PCT:.0f}%"
    if achieved_occupancy_pct is not None and achieved_occupancy_pct < LOW_OCCUPANCY_PCT:
        return OCCUPANCY_BOUND, (f"{far}; achieved occupancy {achieved_occupancy_pct:.1f}% of the SM's warps"
                                 + (f" ({theoretical})" if theoretical else ""))
    occ = f"; achieved occupancy {achieved_occupancy_pct:.1f}%" if achieved_occupancy_pct is not None else ""
    return LATENCY_BOUND, f"{far}{occ}: stalls, not a full pipe"


def _theoretical_text(k: NcuKernel, limiters: list[str]) -> str:
    parts = []
    if k.warps_per_sm is not None and k.max_warps_per_sm:
        parts.append(f"at most {k.warps_per_sm:.0f} of {k.max_warps_per_sm:.0f} warps per SM")
    if limiters:
        parts.append("limited by " + " and ".join(limiters))
    return ", ".join(parts)


def kernel_counters(kernel: NcuKernel, phases: dict[tuple[str, str], str] | None = None) -> KernelCounters:
    limiters = occupancy_limiters(kernel)
    bound, evidence = classify_bound(kernel.sm_pct, kernel.memory_pct, kernel.dram_pct,
                                     kernel.achieved_occupancy_pct, _theoretical_text(kernel, limiters))
    gmma, hmma = kernel.gmma_inst, kernel.hmma_inst
    mma_sync = None if hmma is None else max(hmma - (gmma or 0.0), 0.0)
    dram = None
    if kernel.dram_read_bytes is not None or kernel.dram_write_bytes is not None:
        dram = (kernel.dram_read_bytes or 0.0) + (kernel.dram_write_bytes or 0.0)
    gbs = dram / (kernel.duration_us * 1e3) if dram is not None and kernel.duration_us else None
    return KernelCounters(
        call_id=kernel.call_id, site=kernel.site, op=kernel.op,
        phase=(phases or {}).get((kernel.site, kernel.op)) if kernel.site and kernel.op is not None else None,
        kernel=short_kernel_name(kernel.name), kernel_full=kernel.name,
        category="copy" if is_copy_kernel_name(kernel.name) else "compute", backend=backend_from_kernel(kernel.name),
        duration_us=kernel.duration_us, sm_pct=kernel.sm_pct, memory_pct=kernel.memory_pct, dram_pct=kernel.dram_pct,
        achieved_occupancy_pct=kernel.achieved_occupancy_pct,
        theoretical_occupancy_pct=kernel.theoretical_occupancy_pct,
        registers_per_thread=_int(kernel.registers_per_thread), shared_mem_per_block=_int(kernel.shared_mem_per_block),
        gmma_inst=_int(gmma), mma_sync_inst=_int(mma_sync), tensor_pipe_pct=kernel.tensor_pipe_pct,
        dram_bytes=_int(dram), dram_gbs=gbs, bound=bound, bound_evidence=evidence, occupancy_limiters=limiters,
        copy_site=kernel.copy_site, position="inside" if kernel.copy_site is None and kernel.call_id is not None
        and is_copy_kernel_name(kernel.name) else None)


def site_kernel_counters(kernels: list[KernelCounters]) -> list[SiteKernelCounters]:
    """Per (site, op, kernel): medians over the calls; the bound of the median counters."""
    groups: dict[tuple, list[KernelCounters]] = defaultdict(list)
    for k in kernels:
        if k.site is not None:
            groups[(k.site, k.op, k.kernel, k.copy_site, k.position)].append(k)
    out = []
    for (site, op, name, copy_site, position), ks in groups.items():
        first = ks[0]
        med = {f: _median([getattr(k, f) for k in ks]) for f in (
            "duration_us", "sm_pct", "memory_pct", "dram_pct", "achieved_occupancy_pct", "theoretical_occupancy_pct",
            "registers_per_thread", "shared_mem_per_block", "gmma_inst", "mma_sync_inst", "tensor_pipe_pct",
            "dram_bytes", "dram_gbs")}
        theoretical = ""
        if first.occupancy_limiters:
            theoretical = "limited by " + " and ".join(first.occupancy_limiters)
        bound, evidence = classify_bound(med["sm_pct"], med["memory_pct"], med["dram_pct"],
                                         med["achieved_occupancy_pct"], theoretical)
        out.append(SiteKernelCounters(
            site=site, op=op, phase=first.phase, kernel=name, category=first.category, backend=first.backend,
            calls=len({k.call_id for k in ks}), call_ids=sorted({k.call_id for k in ks if k.call_id is not None}),
            duration_us=med["duration_us"], sm_pct=med["sm_pct"], memory_pct=med["memory_pct"],
            dram_pct=med["dram_pct"], achieved_occupancy_pct=med["achieved_occupancy_pct"],
            theoretical_occupancy_pct=med["theoretical_occupancy_pct"],
            registers_per_thread=_int(med["registers_per_thread"]), shared_mem_per_block=_int(med["shared_mem_per_block"]),
            gmma_inst=_int(med["gmma_inst"]), mma_sync_inst=_int(med["mma_sync_inst"]),
            tensor_pipe_pct=med["tensor_pipe_pct"], dram_bytes=_int(med["dram_bytes"]), dram_gbs=med["dram_gbs"],
            bound=bound, bound_evidence=evidence, copy_site=copy_site, position=position))
    sites = list(dict.fromkeys(s.site for s in out))
    place = {"before": 0, None: 1, "inside": 2, "after": 3}
    out.sort(key=lambda s: (sites.index(s.site), place.get(s.position, 4), s.copy_site or ""))
    return out


def counters_section(report: NcuReport, runinfo: RunInfo | None) -> KernelCountersSection:
    """Join every profiled kernel to its call and site; note sites the run does not know."""
    phases, notes = {}, []
    if runinfo is not None:
        for t in runinfo.sites:
            if t.phase == "fwd" or (t.site, t.op) not in phases:
                phases[(t.site, t.op)] = t.phase
    kernels = tie_copies([kernel_counters(k, phases) for k in sorted(report.kernels, key=lambda k: k.index)])
    if runinfo is not None:
        unknown = sorted({k.site for k in kernels if k.site is not None and (k.site, k.op) not in phases})
        if unknown:
            notes.append(f"ncu's ranges name sites runinfo.json does not know: {', '.join(unknown)} "
                         f"(the CSV is from another run?)")
    outside = sum(1 for k in kernels if k.call_id is None)
    if outside:
        notes.append(f"{outside} profiled kernels ran in no attnprof range and were tied to no call: left out of "
                     f"the sites")
    return KernelCountersSection(source=report.source, kernels=kernels,
                                 sites=site_kernel_counters(kernels), outside_calls=outside, notes=notes)


def _lines(site: str) -> list[tuple[str, int]]:
    """(file, line) of each frame a site names: `a.py:34 via :47` -> [(a.py, 34), (a.py, 47)]."""
    out, path = [], ""
    for part in site.split(" via "):
        file, _, line = part.rpartition(":")
        path = file or path
        if line.isdigit():
            out.append((path, int(line)))
    return out


def _distance(copy_site: str, call_site: str) -> float:
    """Lines between a copy and the nearest frame of a call site in the same file (inf: another file)."""
    (file, line), = _lines(copy_site)[:1] or [("", -1)]
    return min((abs(n - line) for f, n in _lines(call_site) if f == file), default=float("inf"))


def tie_copies(kernels: list[KernelCounters]) -> list[KernelCounters]:
    """A marked layout copy (in no call's range) belongs to the profiled call before it (its output's copy) or the
    one after it (an input's): the one with a frame nearest to the copy's line in the same file, the next on a tie.
    `kernels` in launch order."""
    calls = [i for i, k in enumerate(kernels) if k.call_id is not None and k.copy_site is None]
    for i, k in enumerate(kernels):
        if k.copy_site is None or k.call_id is not None:
            continue
        prev = max((j for j in calls if j < i), default=None)
        nxt = min((j for j in calls if j > i), default=None)
        options = [(_distance(k.copy_site, kernels[j].site or ""), 0 if j == nxt else 1, j, pos)
                   for j, pos in ((nxt, "before"), (prev, "after")) if j is not None]
        options = [o for o in options if o[0] != float("inf")]
        if options:
            _, _, j, k.position = min(options)
            owner = kernels[j]
            k.call_id, k.site, k.op, k.phase = owner.call_id, owner.site, owner.op, owner.phase
    return kernels


# --- the kernel-choice evidence (diagnosis) -------------------------------------------------------------------


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.1f} M" if n >= 1_000_000 else f"{n:,}"


def kernel_label(s: SiteKernelCounters | KernelCounters) -> str:
    """The kernel's short name; for a layout copy, with its source line and place: `elementwise_kernel (copy at
    seed_case.py:44, before)`."""
    if s.copy_site is None:
        return s.kernel
    return f"{s.kernel} (copy at {s.copy_site.rsplit('/', 1)[-1]}, {s.position or 'untied'})"


def tensor_path(s: SiteKernelCounters) -> str:
    """`issues wgmma (gmma 294,912)` or `issues no wgmma and 3.1 M mma.sync`, from the counters; for a copy, what it
    moved."""
    if s.category == "copy":
        if s.dram_bytes is None:
            return "a copy (no DRAM counters)"
        rate = f" at {s.dram_gbs:,.0f} GB/s" if s.dram_gbs is not None else ""
        return f"a copy: {s.dram_bytes / 1e6:,.1f} MB to and from DRAM{rate}, {_pct(s.dram_pct)} of DRAM peak"
    if s.gmma_inst is None:
        return "no tensor-core counters"
    if s.gmma_inst > 0:
        text = f"issues wgmma (gmma {_count(s.gmma_inst)})"
        if s.mma_sync_inst:
            text += f" and {_count(s.mma_sync_inst)} mma.sync"
        return text
    return f"issues no wgmma and {_count(s.mma_sync_inst)} mma.sync"


def _pct(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f}%"


def kernel_evidence(s: SiteKernelCounters) -> str:
    """One kernel's counters in a sentence: the tensor-core path, pipe and DRAM use, the bound."""
    return (f"{s.kernel} {tensor_path(s)}, tensor pipe {_pct(s.tensor_pipe_pct)} active, DRAM {_pct(s.dram_pct)} "
            f"of peak, {s.bound or '?'}-bound")


def kernel_choice_evidence(slower: KernelCountersSection | None, slower_sites: list[str],
                           faster: KernelCountersSection | None, faster_sites: list[str], phase: str = "fwd"
                           ) -> str | None:
    """Nsight Compute's word on a kernel-choice gap: each side's main attention kernel (its longest), from the
    counters of that side's run. None when the counters do not cover both sides."""

    def main_kernel(section: KernelCountersSection | None, sites: list[str]) -> SiteKernelCounters | None:
        if section is None:
            return None
        rows = [s for s in section.sites if s.site in sites and s.category == "compute" and s.phase in (None, phase)]
        return max(rows, key=lambda s: s.duration_us or 0.0, default=None)

    slow, fast = main_kernel(slower, slower_sites), main_kernel(faster, faster_sites)
    if slow is None or fast is None:
        return None
    return f"ncu: {kernel_evidence(fast)}; {kernel_evidence(slow)}"

