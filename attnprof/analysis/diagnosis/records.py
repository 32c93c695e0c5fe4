"""What a diagnosis or an explanation is: the cause kinds, Cause, Side, Explanation, Diagnosis, Selection."""
from __future__ import annotations

from dataclasses import dataclass, field

from attnprof.analysis.records import CallSplit, Report, SiteSummary
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

UNIT = "µs per attention call (fwd + bwd)"
#: Share of the gap (of a diagnosis: of its time) the causes may miss before the remainder is called out as
#: unexplained: true times on a busy machine move by a few percent from run to run, so a smaller remainder is
#: no evidence of a missing cause.
EXPLAINED_TOLERANCE = 0.05
#: Guards the tolerance's scale against a zero gap (µs): any non-zero remainder of a zero gap is unexplained.
_SMALLEST_SCALE_US = 1e-9


def is_explained(unexplained_us: float, scale_us: float) -> bool:
    """The causes cover `scale_us` (a gap, or a diagnosed time) but for at most EXPLAINED_TOLERANCE of it."""
    return abs(unexplained_us) <= EXPLAINED_TOLERANCE * max(abs(scale_us), _SMALLEST_SCALE_US)


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
    #: the causes cover the gap but for at most EXPLAINED_TOLERANCE of it (is_explained)
    explained: bool = True
    #: the unexplained remainder is no bigger than the noise, like a cause within noise
    unexplained_within_noise: bool = False


@dataclass
class Diagnosis:
    subject: Side
    causes: list[Cause]  # add up to subject.us, less unexplained_us
    unexplained_us: float
    basis: str
    basis_detail: str
    unit: str = UNIT
    notes: list[str] = field(default_factory=list)
    #: the causes cover subject.us but for at most EXPLAINED_TOLERANCE of it (is_explained)
    explained: bool = True


@dataclass
class Selection:
    """What one side is: some sites (or one call) of a report, with the calls behind them."""

    label: str
    report: Report
    sites: list[SiteSummary]
    calls: list[CallSplit]
    call_info: dict[int, CallInfo] = field(default_factory=dict)  # from runinfo.json: dropout, strides, mask
