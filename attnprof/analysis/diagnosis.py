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
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

from attnprof.analysis import taxonomy as tx
from attnprof.analysis.records import COMPUTE as COMPUTE_PART
from attnprof.analysis.kernel_counters import kernel_choice_evidence
from attnprof.analysis.records import CallSplit, Report, SiteSummary
from attnprof.analysis.sites import describe_site, resolve_sites, summarize_sites
from attnprof.errors import AttnprofError
from attnprof.trace.runinfo import CallInfo

# --- cause kinds ----------------------------------------------------------------------------------------------

LAYOUT_COPY = "layout_copy"
CAST = "cast"
PAD = "pad"
GQA_EXPAND = "gqa_expand"
KERNEL = "kernel"  # a different fused kernel (FA2 vs cuDNN), or FA2 on Hopper
FALLBACK = "fallback"  # math / mem-efficient instead of flash / cuDNN
COMPUTE = "compute"  # the same kernel, running longer (or the attention kernels themselves, for one side)
UNFUSED = "unfused"  # hand-written attention (manual.py): q·kᵀ, mask, softmax, dropout, ·v as separate kernels
LAUNCH = "launch"
OTHER = "other"

#: Cause kinds as people read them.
KIND_TITLES = {
    LAYOUT_COPY: "layout copies", CAST: "dtype casts", PAD: "padding copies", GQA_EXPAND: "GQA k/v expansion",
    KERNEL: "kernel choice", FALLBACK: "fallback backend", COMPUTE: "attention kernels", UNFUSED: "unfused attention",
    LAUNCH: "launch (GPU idle)", OTHER: "other",
}
COPY_KINDS = (LAYOUT_COPY, CAST, PAD, GQA_EXPAND)

#: Backends that are a fallback from flash / cuDNN on a GPU (math also on CPU, against cpu-flash).
FALLBACK_BACKENDS = frozenset(("math", "efficient"))
#: Backends of hand-written attention (analysis/manual.py)
UNFUSED_BACKENDS = frozenset(("manual", "manual-fused"))
SDPA_CALL = "F.scaled_dot_product_attention(q, k, v, attn_mask=..., dropout_p=..., is_causal=...)"
#: Backends that take (B, L, H, D) tensors: copying to that layout is what the seed's wrapper did.
BLHD_BACKENDS = frozenset(("flash", "flash-attn2", "fa3", "fa4"))
FA2_BACKENDS = frozenset(("flash", "flash-attn2"))

_CAST_OPS = frozenset(("aten::_to_copy", "aten::to", "aten::type_as"))
_PAD_OPS = frozenset(("aten::constant_pad_nd", "aten::pad"))
_GQA_OPS = frozenset(("aten::repeat_interleave", "aten::repeat", "aten::expand_copy", "aten::_unsafe_index",
                      "aten::index_select"))
_HOPPER_RE = re.compile(r"\b(H100|H200|H800|H20|GH200)\b")

UNIT = "µs per attention call (fwd + bwd)"
#: Share of the gap the causes may miss before the remainder is called out as unexplained.
EXPLAINED_TOLERANCE = 0.05


_NODE_PREFIX = "autograd::engine::evaluate_function: "
#: Backward nodes of copy ops (their own copies in backward), by what the forward op was for.
_NODE_KINDS = (("ToCopyBackward", CAST), ("ConstantPadNdBackward", PAD), ("PadBackward", PAD),
               ("RepeatInterleaveBackward", GQA_EXPAND), ("RepeatBackward", GQA_EXPAND),
               ("IndexSelectBackward", GQA_EXPAND), ("UnsafeIndexBackward", GQA_EXPAND), ("ExpandBackward", GQA_EXPAND))


def short_op(op: str) -> str:
    """'autograd::engine::evaluate_function: ToCopyBackward0' -> 'ToCopyBackward0'."""
    return op[len(_NODE_PREFIX):] if op.startswith(_NODE_PREFIX) else op


def copy_kind(op: str) -> str:
    """What a copy op is for. expand + reshape (Hugging Face's repeat_kv) reaches here as a reshape: a layout copy."""
    if op in _CAST_OPS:
        return CAST
    if op in _PAD_OPS:
        return PAD
    if op in _GQA_OPS:
        return GQA_EXPAND
    node = short_op(op)
    return next((kind for prefix, kind in _NODE_KINDS if node.startswith(prefix)), LAYOUT_COPY)


# --- records --------------------------------------------------------------------------------------------------


@dataclass
class Cause:
    kind: str  # one of the kinds above
    us: float  # µs per attention call; in an explanation, signed: > 0 makes B slower
    detail: str
    fix: str
    sources: list[str] = field(default_factory=list)  # source lines ("model.py:42") or call sites, biggest first
    by_phase: dict[str, float] = field(default_factory=dict)
    within_noise: bool = False  # no bigger than the timing noise: listed after the ranked causes, not ranked
    # filled by `explain --verify` (analysis/verification.py): what the fix saved on the replayed forward call
    measured_saving_us: float | None = None  # 0: nothing measurable; None: not measured
    measured_by: str | None = None  # the backend or variant that achieved it
    measured_note: str | None = None  # not measured and why, or how it differs from the µs above


@dataclass
class Side:
    """One side of an explanation, or the subject of a diagnosis, in µs per attention call."""

    label: str
    sites: list[str]
    backends: list[str]  # by compute time, biggest first
    calls: int  # forward attention calls behind the numbers
    us: float  # on the basis of the explanation / diagnosis
    compute_us: float
    copy_us: float
    launch_us: float | None  # None: CPU run (no device to wait for)
    other_us: float
    true_us: float | None  # sum of the sites' true_us (CUDA events around the entry point), when all have it
    profiler_us: float = 0.0  # taken out of the profiled windows as the profiler's own cost (true basis)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    dtype: str | None = None
    #: how far true_us could move on another run: half-width of the ~95% interval of each site's median,
    #: 1.57 IQR / sqrt(n) (McGill's notched box plot), weighted like true_us; None without 3 or more true samples
    noise_us: float | None = None


@dataclass
class Explanation:
    a: Side  # the faster side
    b: Side  # the slower side
    gap_us: float  # b.us - a.us
    causes: list[Cause]
    unexplained_us: float  # gap - sum of the causes
    basis: str  # "true" | "profiled" | "mixed" (true for some phases: basis_detail says which)
    basis_detail: str
    unit: str = UNIT
    swapped: bool = False  # the sides were given the other way round
    notes: list[str] = field(default_factory=list)
    noise_us: float | None = None  # the gap's noise: a.noise_us + b.noise_us (the two notches overlap within it)
    #: the gap is bigger than its noise (or no noise is known): False means A and B cannot be told apart, and no
    #: share of the gap means anything
    distinguishable: bool = True

    @property
    def explained(self) -> bool:
        return abs(self.unexplained_us) <= EXPLAINED_TOLERANCE * max(abs(self.gap_us), 1e-9)


@dataclass
class Diagnosis:
    subject: Side
    causes: list[Cause]  # add up to subject.us, less unexplained_us
    unexplained_us: float
    basis: str
    basis_detail: str
    unit: str = UNIT
    notes: list[str] = field(default_factory=list)


@dataclass
class Selection:
    """What one side is: some sites (or one call) of a report, with the calls behind them."""

    label: str
    report: Report
    sites: list[SiteSummary]
    calls: list[CallSplit]
    call_info: dict[int, CallInfo] = field(default_factory=dict)  # from runinfo.json: dropout, strides, mask


# --- selecting ------------------------------------------------------------------------------------------------


def site_matches(site: str, selector: str) -> bool:
    """`seed_case.py:44` matches `examples/seed_case.py:44`; a selector without a line matches the whole file."""
    if site == selector or site.endswith("/" + selector):
        return True
    if not re.search(r":\d+$", selector):
        path = site.rsplit(":", 1)[0]
        return path == selector or path.endswith("/" + selector)
    return False


def select(report: Report, site: str | None = None, phase: str | None = None, call_id: int | None = None,
           call_info: dict[int, CallInfo] | None = None, label: str | None = None) -> Selection:
    """Sites of a report: all of them, those matching `site`, one phase; or one call (`call_id`)."""
    info = call_info or {}
    if call_id is not None:
        calls = [c for c in report.calls if c.id == call_id and (phase is None or c.phase == phase)]
        if not calls:
            ids = sorted({c.id for c in report.calls})
            shown = ", ".join(f"#{i}" for i in ids[:12]) + (", ..." if len(ids) > 12 else "")
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


def is_hopper(report: Report) -> bool:
    capability = (report.run or {}).get("device_capability")
    if capability:
        return str(capability).startswith("9.")
    return bool(_HOPPER_RE.search(report.device or ""))


# --- the parts of a side, per phase -----------------------------------------------------------------------------


@dataclass
class _Parts:
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


def _forward_calls(sites: list[SiteSummary]) -> int:
    fwd = sum(s.calls for s in sites if s.phase == "fwd")
    return fwd or max(sum(s.calls for s in sites if s.phase == p) for p in {s.phase for s in sites})


def _true_phases(sels: list[Selection]) -> set[str]:
    """Phases where every site of every side has a true time: those are compared on true times."""
    phases = {s.phase for sel in sels for s in sel.sites}
    return {p for p in phases if all(s.true_us is not None for sel in sels for s in sel.sites if s.phase == p)}


@dataclass
class SiteSplit:
    """One site's µs per call on a basis: the trace's split, or true (see the module's docstring)."""

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


def _phase_parts(sel: Selection, true_phases: set[str]) -> dict[str, _Parts]:
    n = _forward_calls(sel.sites)
    parts: dict[str, _Parts] = {}
    for s in sel.sites:
        w = s.calls / n
        p = parts.setdefault(s.phase, _Parts())
        split = site_split(s, _site_calls(sel, s), s.phase in true_phases)
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
    return parts


def _side(sel: Selection, parts: dict[str, _Parts]) -> Side:
    backends: dict[str, float] = defaultdict(float)
    for p in parts.values():
        for b, us in p.backend_us.items():
            backends[b] += us
    launches = [p.launch for p in parts.values()]
    n = _forward_calls(sel.sites)
    trues = [(s.true_us, s.calls) for s in sel.sites if s.true_us is not None]
    true_us = sum(us * calls / n for us, calls in trues) if len(trues) == len(sel.sites) else None
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
        noise_us=_noise_us(sel.sites),
    )


#: McGill, Tukey & Larsen (1978): median ± 1.57 IQR / sqrt(n) is a ~95% interval of the median; two medians whose
#: intervals do not overlap differ
NOTCH = 1.57


def _noise_us(sites: list[SiteSummary]) -> float | None:
    """Each site's notch half-width (NOTCH IQR / sqrt(timed samples)), weighted per call like Side.true_us."""
    spreads = [(s.true_q1_us, s.true_q3_us, s.timed_calls, s.calls) for s in sites
               if s.true_q1_us is not None and s.true_q3_us is not None and s.timed_calls]
    if not sites or len(spreads) < len(sites):
        return None
    n = _forward_calls(sites)
    return sum(NOTCH * (q3 - q1) / math.sqrt(timed) * calls / n for q1, q3, timed, calls in spreads)


def _mark_noise(causes: list[Cause], noise_us: float | None) -> list[Cause]:
    """Causes no bigger than the noise are marked and go after the others: they are not ranked."""
    if noise_us is None:
        return causes
    for c in causes:
        c.within_noise = abs(c.us) <= noise_us
    return [c for c in causes if not c.within_noise] + [c for c in causes if c.within_noise]


def _timing_notes(sels: list[Selection]) -> list[str]:
    """The sites' timing warnings (noisy machine, implausible inflation, too few samples), once each."""
    return list(dict.fromkeys(f"{describe_site(s)} ({s.phase}): {w}" for sel in sels for s in sel.sites
                              for w in s.warnings))


def _profiler_note(side: Side) -> list[str]:
    if side.profiler_us > EXPLAINED_TOLERANCE * max(side.us, 1e-9):
        return [f"{side.label}: {_us(side.profiler_us)} per call of its profiled window is the profiler's own cost "
                "(GPU idle around the entry point, and the stretch the true time removes), left out"]
    return []


_TRUE_TEXT = ("true times: each site's true µs (around the attention entry point, outside the profiler) plus the "
              "busy time of its layout-prep copies; the GPU idle around the entry point is the profiler's and "
              "counts as 0; launch (on CPU: other) is what the true time leaves after the kernels")
_PROFILED_TEXT = "profiled windows as traced: launch includes the profiler's own CPU cost"


def _basis(sels: list[Selection]) -> tuple[str, str, set[str]]:
    """(basis, what it means, phases on true times): per phase, true times when every site of every side has one."""
    phases = sorted({s.phase for sel in sels for s in sel.sites}, key=lambda p: (p != "fwd", p))
    true = _true_phases(sels)
    if true == set(phases):
        return "true", _TRUE_TEXT, true
    missing = sorted({f"{s.site} ({s.phase})" for sel in sels for s in sel.sites if s.true_us is None})
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    if not true:
        return "profiled", f"{_PROFILED_TEXT} (no true times for {shown})", true
    return "mixed", (f"{'/'.join(p for p in phases if p in true)}: {_TRUE_TEXT}; "
                     f"{'/'.join(p for p in phases if p not in true)}: {_PROFILED_TEXT} (no true times for {shown})"
                     ), true


# --- fixes -----------------------------------------------------------------------------------------------------


def _lines(sources: list[str]) -> str:
    return compact_lines(sorted(sources, key=_line_order)) if sources else "the lines before and after the call"


def _copy_fix(kind: str, parts: _Parts, sources: list[str]) -> str:
    where = _lines(sources)
    if kind == CAST:
        return (f"run attention in the dtype the tensors already have (autocast, or cast the weights once) instead "
                f"of casting q, k, v every call: {where}")
    if kind == PAD:
        return ("stop padding every call: pad once outside the loop, use a varlen kernel (flash_attn_varlen_func) "
                f"for ragged batches, or a head dim the kernel takes natively (a multiple of 8, at most 256): {where}")
    if kind == GQA_EXPAND:
        return ("pass k and v with their own (fewer) heads: F.scaled_dot_product_attention(..., enable_gqa=True) "
                f"or flash-attn's native GQA, instead of repeat_interleave / expand + reshape: {where}")
    if parts.backend in BLHD_BACKENDS or "BLHD" in parts.layouts:
        return (f"pass (B, L, H, D) tensors straight to the flash kernel (view the projection as (B, L, H, D), no "
                f"transpose(1, 2).contiguous()), or keep SDPA's (B, H, L, D) and call SDPA: {where}")
    ops = sorted({op for _source, op in parts.copy_ops.get(kind, {})})
    if parts.backend in UNFUSED_BACKENDS | {"eager"}:
        # the copies are the hand-written attention's own (Hugging Face's eager_attention_forward: repeat_kv, matmul
        # on transposed views, the output's transpose): no .contiguous() of the user's to drop
        return (f"the {', '.join(ops) or 'copies'} are made inside the unfused attention itself (matmul and softmax "
                f"on transposed or expanded views): a fused kernel takes those views without copying: "
                f"F.scaled_dot_product_attention (Hugging Face: attn_implementation=\"sdpa\"): {where}")
    drop = "the .contiguous()" if not ops or "aten::contiguous" in ops else f"the {', '.join(ops)}"
    return (f"use the layout the kernel wants without copying: SDPA takes (B, H, L, D) strided views (drop "
            f"{drop}), flash kernels take (B, L, H, D): {where}")


def _launch_fix(backend: str | None) -> str:
    fix = ("capture the step in CUDA graphs (torch.compile(mode=\"reduce-overhead\") or torch.cuda.graphs), fuse "
           "the small ops around the call, or give each call more work (larger batches)")
    if backend == "cudnn":
        return ("cuDNN's CPU-side cost per call (graph and plan lookup) is exposed in small steps: for small shapes "
                "select FLASH_ATTENTION with torch.nn.attention.sdpa_kernel, or " + fix)
    return fix


def _other_fix(on_cpu: bool) -> str:
    if on_cpu:
        return ("host time between the call's ops (Python, dispatcher): fewer small ops around the call, or "
                "torch.compile")
    return "memsets and fills the call launches: preallocate outputs, or a backend that needs no workspace memset"


def _kernel_fix(slower: str, faster: str, hopper: bool) -> str:
    if hopper and slower in FA2_BACKENDS:
        return ("on Hopper, FlashAttention-2 uses neither wgmma nor TMA: call SDPA (its cuDNN backend) or "
                "FlashAttention-3 (flash_attn_interface.flash_attn_func)")
    if slower in UNFUSED_BACKENDS | {"eager"}:  # no kernel to select: the attention is written out in ops
        return (f"the fused {faster} kernel is faster than the unfused attention: call F.scaled_dot_product_attention "
                f"(Hugging Face: attn_implementation=\"sdpa\") instead of the {slower} code")
    return (f"the {faster} kernel is faster for this shape: select it (torch.nn.attention.sdpa_kernel, or that "
            f"library's entry point) for the {slower} calls")


def _sdpa_measured(report: Report, unfused: list[SiteSummary]) -> tuple[float, str] | None:
    """(µs per call, fwd + bwd phases the unfused sites have, and the backend) of fused attention doing the same
    work (same q and k dims, dtype) in the same report: SDPA measured on the same shape, no estimate needed."""
    phases = {s.phase for s in unfused}
    keys = {_work_key(s) for s in unfused if s.phase == "fwd"} or {_work_key(s) for s in unfused}
    fused = [s for s in report.sites if s.phase in phases and s.backend not in UNFUSED_BACKENDS
             and s.backend != "unknown" and _work_key(s) in keys]
    by_site: dict[str, dict[str, SiteSummary]] = defaultdict(dict)
    for s in fused:
        by_site[s.site][s.phase] = s
    for site, per_phase in by_site.items():
        if set(per_phase) == phases:  # like for like: both phases, or the forward alone
            return sum(s.window_us for s in per_phase.values()), f"{per_phase[min(phases)].backend} at {site}"
    return None


def _matmul_us(calls: list[CallSplit]) -> float:
    """Per call: the busy time of the q·kᵀ and ·v matmuls of hand-written attention calls."""
    if not calls:
        return 0.0
    return sum(k.dur_us for c in calls for k in c.kernels if k.category == COMPUTE_PART and
               tx.is_gemm_work(k.name)) / len({c.id for c in calls})


def _unfused_fix(unfused_us: float, measured: tuple[float, str] | None, estimate_us: float) -> str:
    """Call SDPA instead, and what SDPA takes on this shape: measured when the run has it, else flagged estimate."""
    fix = (f"replace the hand-written softmax(q @ k.transpose(-2, -1) * scale + mask) @ v with {SDPA_CALL}: one "
           "fused kernel, no scores tensor written and read back, no mask / softmax / dropout passes")
    if measured is not None:
        us, where = measured
        return fix + (f"; on this shape SDPA took {_us(us)} per call in this run (measured: {where}) against "
                      f"{_us(unfused_us)} here")
    return fix + (f"; SDPA would take about {_us(estimate_us)} per call (an estimate: the time of this call's two "
                  f"matmuls, which a fused kernel also does; no SDPA call of this shape was measured: run "
                  f"`attnprof compare` on it) against {_us(unfused_us)} here")


def fallback_reasons(call: CallSplit, info: CallInfo | None = None) -> list[str]:
    """Why a call could not use flash / cuDNN, as far as its recorded arguments tell."""
    reasons: list[str] = []
    main = call.shapes.get("q") or call.shapes.get("qkv")
    on_gpu = not call.device.startswith("cpu")  # PyTorch's CPU flash kernel takes fp32 too
    if on_gpu and call.dtype in ("float32", "float64"):
        reasons.append(f"{call.dtype} inputs: the flash and cuDNN kernels take fp16 / bf16 only")
    head_dim = (info.head_dim if info and info.head_dim else None) or (main[-1] if main else None)
    if head_dim is not None and head_dim > 256:
        reasons.append(f"head dim {head_dim} > 256: above what the flash kernels support")
    elif head_dim is not None and head_dim % 8:
        reasons.append(f"head dim {head_dim} is not a multiple of 8")
    mask = info.mask if info else None
    mask_shape = call.shapes.get("mask") or call.shapes.get("attn_mask")
    if mask or mask_shape:
        shown = mask or "x".join(map(str, mask_shape or ()))
        reasons.append(f"an explicit attn_mask ({shown}): the flash kernel takes none (use is_causal=True for a "
                       "causal mask, or cuDNN on a GPU that has it)")
    if info and info.dropout_p > 0:
        reasons.append(f"dropout_p={info.dropout_p:g}: not every fused kernel supports dropout")
    if info:
        for name in ("q", "k", "v"):
            t = info.tensors.get(name)
            if t and t.stride and t.stride[-1] != 1:
                reasons.append(f"{name}'s last dim is not contiguous (stride {t.stride[-1]})")
    if call.gqa_ratio and call.gqa_ratio > 1:
        reasons.append(f"grouped k/v heads (ratio {call.gqa_ratio:g}): not every fused kernel takes enable_gqa")
    return reasons


def _fallback_fix(reasons: list[str]) -> str:
    base = ("make flash / cuDNN eligible: fp16 or bf16 inputs, a head dim that is a multiple of 8 and at most 256, "
            "is_causal instead of a mask, a contiguous last dim")
    probe = ("torch.backends.cuda.can_use_flash_attention(torch.backends.cuda.SDPAParams(...), debug=True) prints "
             "why a backend was skipped")
    return f"{base}; {probe}" if not reasons else f"{base} (here: {'; '.join(reasons)}); {probe}"


# --- building causes --------------------------------------------------------------------------------------------


@dataclass
class _Acc:
    """A cause being summed over phases."""

    kind: str
    us: float = 0.0
    by_phase: dict[str, float] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    fix: str = ""
    sources: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, phase: str, us: float, detail: str | None = None, sources: dict[str, float] | None = None):
        self.us += us
        self.by_phase[phase] = self.by_phase.get(phase, 0.0) + us
        if detail:
            self.details.append(detail)
        for s, v in (sources or {}).items():
            self.sources[s] += v

    def sources_ranked(self) -> list[str]:
        return sorted(self.sources, key=lambda s: -abs(self.sources[s]))

    def cause(self) -> Cause:
        return Cause(kind=self.kind, us=self.us, detail="; ".join(self.details), fix=self.fix,
                     sources=self.sources_ranked(), by_phase=dict(self.by_phase))


def _us(v: float) -> str:
    return f"{v:,.1f} µs" if abs(v) < 1000 else f"{v:,.0f} µs"


def compact_lines(sites: list[str]) -> str:
    """['a.py:44', 'a.py:45', 'b.py:3'] -> 'a.py:44, 45, b.py:3' (lines of one file after its first)."""
    out, last_file = [], None
    for site in sites:
        file, _, line = site.rpartition(":")
        if file and file == last_file and line.isdigit():
            out.append(line)
        else:
            out.append(site)
            last_file = file if line.isdigit() else None
    return ", ".join(out)


def _copies_text(ops: dict[tuple[str, str], list[float]]) -> str:
    """'aten::contiguous x4 = 3,282 µs at seed_case.py:44, 45, 46, 48' per copy op, biggest first."""
    if not ops:
        return "none"
    by_op: dict[str, list] = {}
    for (site, op), (us, n) in ops.items():
        acc = by_op.setdefault(op, [0.0, 0.0, []])
        acc[0] += us
        acc[1] += n
        acc[2].append(site)
    parts = []
    for op, (us, n, sites) in sorted(by_op.items(), key=lambda kv: -kv[1][0]):
        count = f" x{n:.3g}" if n and round(n, 2) != 1 else ""
        parts.append(f"{short_op(op)}{count} = {_us(us)} at {compact_lines(sorted(set(sites), key=_line_order))}")
    return "; ".join(parts)


def _line_order(site: str) -> tuple:
    file, _, line = site.rpartition(":")
    return (file, int(line)) if line.isdigit() else (site, 0)


def _sources(p: _Parts, kind: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (site, _op), (us, _n) in p.copy_ops.get(kind, {}).items():
        out[site] += us
    return out


def _shape_text(p: _Parts) -> str:
    shapes = sorted({(tuple(s) if s else (), d or "?") for s, d in p.shapes})
    return ", ".join(f"{'x'.join(map(str, s)) or '?'} {d}" for s, d in shapes)


def _work(p: _Parts) -> set:
    """The attention work of a phase, whatever the layout: q's dims as a multiset, and the dtype."""
    return {(tuple(sorted(s or ())), d) for s, d in p.shapes}


def _merge(accs: dict[str, _Acc], kind: str) -> _Acc:
    return accs.setdefault(kind, _Acc(kind))


def _rank(accs: dict[str, _Acc], min_us: float = 0.0) -> list[Cause]:
    causes = [a.cause() for a in accs.values() if abs(a.us) > min_us]
    causes.sort(key=lambda c: -c.us)
    return causes


def _pair_causes(pa: dict[str, _Parts], pb: dict[str, _Parts], a: Selection, b: Selection) -> list[Cause]:
    accs: dict[str, _Acc] = {}
    hopper = is_hopper(b.report) or is_hopper(a.report)
    for phase in sorted(set(pa) | set(pb), key=lambda p: (p != "fwd", p)):
        A, B = pa.get(phase, _Parts()), pb.get(phase, _Parts())
        tag = f"{phase}: "
        # copies, by what they are for
        for kind in COPY_KINDS:
            d = B.copy_kinds.get(kind, 0.0) - A.copy_kinds.get(kind, 0.0)
            if not (A.copy_kinds.get(kind) or B.copy_kinds.get(kind)):
                continue
            more = B if d >= 0 else A
            sources = _sources(more, kind)
            acc = _merge(accs, kind)
            acc.add(phase, d, f"{tag}B {_copies_text(B.copy_ops.get(kind, {}))}; "
                              f"A {_copies_text(A.copy_ops.get(kind, {}))}", sources)
            acc.fix = _copy_fix(kind, more, list(acc.sources_ranked()))
        # compute: what changed in the kernels
        d = B.compute - A.compute
        ba, bb = A.backend, B.backend
        if ba is None or bb is None:
            only = "B" if ba is None else "A"
            acc = _merge(accs, COMPUTE)
            acc.add(phase, d, f"{tag}only {only} has this phase ({bb or ba})")
            acc.fix = acc.fix or "compare like with like: both sides with or without backward"
        elif ba == bb:
            acc = _merge(accs, COMPUTE)
            shapes_a, shapes_b = _shape_text(A), _shape_text(B)
            if _work(A) != _work(B):
                acc.add(phase, d, f"{tag}same backend ({bb}), other shapes: A {shapes_a}, B {shapes_b}")
                acc.fix = acc.fix or "the sides do different work: compare calls of the same shape"
            else:
                longer = "longer" if d >= 0 else "shorter"
                acc.add(phase, d, f"{tag}same backend ({bb}) and shapes; its kernels ran {_us(abs(d))} {longer} in B")
                acc.fix = acc.fix or ("the same kernel on the same shapes: run-to-run variation or input strides; "
                                      "time more steps (--timed) and keep the inputs contiguous")
        elif (bb in UNFUSED_BACKENDS) != (ba in UNFUSED_BACKENDS):
            unfused, fused_side = (b, a) if bb in UNFUSED_BACKENDS else (a, b)
            who, fused_backend = ("B", ba) if unfused is b else ("A", bb)
            acc = _merge(accs, UNFUSED)
            acc.add(phase, d, f"{tag}{who} computes attention by hand (q·kᵀ, softmax and ·v as separate kernels) "
                              f"where the other ran {fused_backend}: kernels {_us(A.compute)} in A, "
                              f"{_us(B.compute)} in B", {s.site: d for s in unfused.sites if s.phase == phase})
            phases = {s.phase for s in unfused.sites}
            measured = sum(s.window_us * s.calls for s in fused_side.sites if s.phase in phases) / \
                max(_forward_calls(fused_side.sites), 1)
            unfused_us = sum(s.window_us * s.calls for s in unfused.sites) / max(_forward_calls(unfused.sites), 1)
            acc.fix = _unfused_fix(unfused_us, (measured, f"{fused_backend}, {fused_side.label}"), 0.0)
        elif (bb in FALLBACK_BACKENDS) != (ba in FALLBACK_BACKENDS):
            fell = b if bb in FALLBACK_BACKENDS else a
            fell_backend, fast_backend = (bb, ba) if fell is b else (ba, bb)
            reasons = sorted({r for c in fell.calls if c.phase == phase and c.backend in FALLBACK_BACKENDS
                              for r in fallback_reasons(c, fell.call_info.get(c.id))})
            who = "B" if fell is b else "A"
            acc = _merge(accs, FALLBACK)
            sources = {s.site: d for s in fell.sites if s.phase == phase}
            eager = sorted({s.op for s in fell.sites if s.phase == phase and "eager" in s.op})
            if eager:  # Hugging Face's eager attention: unfused by design, not a dispatch fallback
                acc.add(phase, d, f"{tag}{who} computes attention unfused ({', '.join(eager)}: matmul, softmax and "
                                  f"matmul kernels) where the other ran {fast_backend}", sources)
                acc.fix = ('use a fused implementation: attn_implementation="sdpa" (or "flash_attention_2") in '
                           "from_pretrained / the model config")
            else:
                why = "; ".join(reasons) if reasons else "no reason visible in the recorded arguments"
                acc.add(phase, d, f"{tag}{who} fell back to {fell_backend} where the other ran {fast_backend} ({why})",
                        sources)
                acc.fix = _fallback_fix(reasons)
        else:
            acc = _merge(accs, KERNEL)
            slow, fast = (b, a) if d >= 0 else (a, b)
            counters = kernel_choice_evidence(slow.report.kernel_counters, [s.site for s in slow.sites],
                                              fast.report.kernel_counters, [s.site for s in fast.sites], phase)
            acc.add(phase, d, f"{tag}A ran {ba}, B ran {bb}: kernels {_us(A.compute)} vs {_us(B.compute)}"
                              + (f"; {counters}" if counters else ""))
            slower, faster = (bb, ba) if d >= 0 else (ba, bb)
            acc.fix = _kernel_fix(slower, faster, hopper)
        # launch: GPU idle between the call's kernels
        if A.launch is not None or B.launch is not None:
            d = (B.launch or 0.0) - (A.launch or 0.0)
            acc = _merge(accs, LAUNCH)
            acc.add(phase, d, f"{tag}GPU idle {_us(B.launch or 0.0)} in B vs {_us(A.launch or 0.0)} in A")
            acc.fix = _launch_fix(bb if d >= 0 else ba)
        d = B.other - A.other
        acc = _merge(accs, OTHER)
        acc.add(phase, d, f"{tag}{_us(B.other)} in B vs {_us(A.other)} in A")
        acc.fix = _other_fix(B.launch is None and A.launch is None)
    gap = sum(pb[p].total for p in pb) - sum(pa[p].total for p in pa)
    return _rank(accs, min_us=_negligible(gap))


def _negligible(scale: float) -> float:
    """Causes below this are noise: left out (their µs stay in the unexplained remainder)."""
    return max(0.05, 1e-3 * abs(scale))


def _single_causes(parts: dict[str, _Parts], sel: Selection) -> list[Cause]:
    accs: dict[str, _Acc] = {}
    hopper = is_hopper(sel.report)
    for phase in sorted(parts, key=lambda p: (p != "fwd", p)):
        p = parts[phase]
        tag = f"{phase}: "
        for kind, us in p.copy_kinds.items():
            acc = _merge(accs, kind)
            acc.add(phase, us, f"{tag}{_copies_text(p.copy_ops[kind])}", _sources(p, kind))
            acc.fix = _copy_fix(kind, p, list(acc.sources_ranked()))
        for backend, us in p.backend_us.items():
            calls = [c for c in sel.calls if c.phase == phase and c.backend == backend]
            if backend in UNFUSED_BACKENDS:
                unfused = [s for s in sel.sites if s.backend == backend]
                acc = _merge(accs, UNFUSED)
                acc.add(phase, us, f"{tag}hand-written attention: q·kᵀ, mask, softmax, dropout and ·v as separate "
                                   f"kernels, {_shape_text(p)}", {s.site: us for s in unfused if s.phase == phase})
                all_unfused = [s for s in sel.sites if s.backend in UNFUSED_BACKENDS]
                unfused_calls = [c for c in sel.calls if c.backend in UNFUSED_BACKENDS]
                acc.fix = _unfused_fix(sum(s.window_us * s.calls for s in all_unfused) / _forward_calls(all_unfused),
                                       _sdpa_measured(sel.report, all_unfused), _matmul_us(unfused_calls))
            elif backend in FALLBACK_BACKENDS:
                reasons = sorted({r for c in calls for r in fallback_reasons(c, sel.call_info.get(c.id))})
                acc = _merge(accs, FALLBACK)
                why = "; ".join(reasons) if reasons else "no reason visible in the recorded arguments"
                acc.add(phase, us, f"{tag}the {backend} backend ran instead of flash / cuDNN ({why})",
                        {s.site: us for s in sel.sites if s.phase == phase and s.backend == backend})
                acc.fix = _fallback_fix(reasons)
            elif hopper and backend in FA2_BACKENDS:
                acc = _merge(accs, KERNEL)
                acc.add(phase, us, f"{tag}FlashAttention-2 ({backend}) kernels on a Hopper GPU")
                acc.fix = _kernel_fix(backend, "cudnn", True)
            else:
                acc = _merge(accs, COMPUTE)
                acc.add(phase, us, f"{tag}the {backend} attention kernels, {_shape_text(p)}")
                acc.fix = ("the attention itself: the dashboard's roofline shows how close it runs to the GPU's "
                           "measured peak")
        if p.launch is not None:
            acc = _merge(accs, LAUNCH)
            acc.add(phase, p.launch, f"{tag}GPU idle between the call's kernels, waiting for the CPU")
            acc.fix = _launch_fix(p.backend)
        acc = _merge(accs, OTHER)
        acc.add(phase, p.other, f"{tag}{'host time between ops' if p.launch is None else 'memsets and fills'}")
        acc.fix = _other_fix(p.launch is None)
    return _rank(accs, min_us=_negligible(sum(p.total for p in parts.values())))


# --- the two questions -----------------------------------------------------------------------------------------


def diagnose(sel: Selection) -> Diagnosis:
    """Where the time of the selected call(s) goes: causes adding up to their time per call."""
    basis, basis_detail, true_phases = _basis([sel])
    parts = _phase_parts(sel, true_phases)
    side = _side(sel, parts)
    causes = _mark_noise(_single_causes(parts, sel), side.noise_us)
    return Diagnosis(subject=side, causes=causes, unexplained_us=side.us - sum(c.us for c in causes),
                     basis=basis, basis_detail=basis_detail, notes=_profiler_note(side) + _timing_notes([sel]))


def diagnose_sites(report: Report, call_info: dict[int, CallInfo] | None = None) -> list[Diagnosis]:
    """One diagnosis per call site (fwd and bwd together), slowest in total first."""
    out = [diagnose(site_selection(report, site, call_info)) for site in dict.fromkeys(s.site for s in report.sites)]
    out.sort(key=lambda d: -d.subject.us * d.subject.calls)
    return out


def explain(a: Selection, b: Selection) -> Explanation:
    """Why B is slower than A (the sides are swapped when A is the slower): causes adding up to the gap."""
    basis, basis_detail, true_phases = _basis([a, b])
    pa, pb = _phase_parts(a, true_phases), _phase_parts(b, true_phases)
    side_a, side_b = _side(a, pa), _side(b, pb)
    notes = []
    swapped = side_b.us < side_a.us
    if swapped:
        a, b, pa, pb, side_a, side_b = b, a, pb, pa, side_b, side_a
        notes.append(f"{side_b.label} is the slower side: explaining it against {side_a.label}")
    qa, qb = side_a.shapes.get("q") or side_a.shapes.get("qkv"), side_b.shapes.get("q") or side_b.shapes.get("qkv")
    if qa and qb and (sorted(qa) != sorted(qb) or side_a.dtype != side_b.dtype):
        notes.append(f"the sides do different work (A {qa} {side_a.dtype}, B {qb} {side_b.dtype}): the gap includes it")
    notes += _profiler_note(side_a) + _profiler_note(side_b)
    gap = side_b.us - side_a.us
    noise = None if side_a.noise_us is None or side_b.noise_us is None else side_a.noise_us + side_b.noise_us
    causes = _mark_noise(_pair_causes(pa, pb, a, b), noise)
    unexplained = gap - sum(c.us for c in causes)
    notes += _timing_notes([a, b])
    return Explanation(a=side_a, b=side_b, gap_us=gap, causes=causes, unexplained_us=unexplained,
                       basis=basis, basis_detail=basis_detail,
                       swapped=swapped, notes=notes, noise_us=noise,
                       distinguishable=noise is None or abs(gap) > noise)


# --- comparable sites in one report (the dashboard's waterfalls) ------------------------------------------------


def _work_key(s: SiteSummary) -> tuple:
    """Sites doing the same attention work, whatever their layout: same multiset of q and k dims, same dtype."""
    q = s.shapes.get("q") or s.shapes.get("qkv") or []
    k = s.shapes.get("k") or s.shapes.get("kv") or []
    return tuple(sorted(q)), tuple(sorted(k)), s.dtype


def comparable_site_groups(report: Report) -> list[list[str]]:
    """Groups of two or more call sites whose calls do the same attention work (variants of one computation)."""
    by_key: dict[tuple, dict[str, None]] = defaultdict(dict)  # dict keys: sites in report order, once each
    for s in report.sites:
        if s.phase == "fwd" and (s.shapes.get("q") or s.shapes.get("qkv")):
            by_key[_work_key(s)][s.site] = None
    return [list(g) for g in by_key.values() if len(g) >= 2]


def site_explanations(report: Report, call_info: dict[int, CallInfo] | None = None,
                      limit: int = 4) -> list[Explanation]:
    """For each group of comparable sites: the slowest explained against the fastest, biggest gap first."""
    out = []
    for group in comparable_site_groups(report):
        sels = [site_selection(report, site, call_info) for site in group]
        true_phases = _true_phases(sels)
        totals = [sum(p.total for p in _phase_parts(s, true_phases).values()) for s in sels]
        fastest, slowest = sels[totals.index(min(totals))], sels[totals.index(max(totals))]
        if fastest is not slowest and not math.isclose(min(totals), max(totals)):
            out.append(explain(fastest, slowest))
    out.sort(key=lambda e: -e.gap_us)
    return out[:limit]
