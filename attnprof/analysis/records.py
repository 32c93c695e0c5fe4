"""What analysis hands to render: one record per attention call and phase, one per call site, and the report.

These records are attnprof.json (README, "attnprof.json schema"): render/json_report.py serialises them as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attnprof.analysis.ranks import RanksSummary

from attnprof.analysis.kernel_counters import KernelCountersSection
from attnprof.textenum import TextEnum

SCHEMA_VERSION = 1


class Category(TextEnum):
    """What a kernel (on CPU runs: a host op) attributed to a call does."""

    COMPUTE = "compute"  # the attention kernels
    COPY = "copy"  # copy / transpose / cast / pad / memcpy
    OTHER = "other"  # memsets, fills


COMPUTE, COPY, OTHER = Category.COMPUTE, Category.COPY, Category.OTHER


class Part(TextEnum):
    """Who owns a stretch of a call's window: a category, the GPU's idle, or other code's work."""

    COMPUTE = "compute"
    COPY = "copy"
    OTHER = "other"
    LAUNCH = "launch"  # the GPU idle, waiting for the CPU (on CPU runs the gaps are other)
    INTERLEAVED = "interleaved"  # other code's device work inside the span, left out of the window


class Phase(TextEnum):
    FWD = "fwd"
    BWD = "bwd"


class Position(TextEnum):
    """Where a layout copy runs, relative to the attention op it is charged to."""

    BEFORE = "before"
    INSIDE = "inside"
    AFTER = "after"


class FoundBy(TextEnum):
    """How a call was found in the trace."""

    ATTNPROF = "attnprof"  # its attnprof range
    ATEN = "aten"  # an attention op's name alone
    COMPILED = "compiled"  # an op of a torch.compile'd graph
    PATTERN = "pattern"  # hand-written attention, by its op pattern (manual.py)


@dataclass
class KernelSlice:
    """One piece of device work attributed to a call (on CPU runs: one host op)."""

    name: str
    category: Category
    start_us: float  # relative to the trace's t=0
    dur_us: float
    stream: int | None = None


@dataclass
class Segment:
    """A stretch of a call's window owned by one part: how the window splits, in time order."""

    start_us: float
    dur_us: float
    part: Part


@dataclass
class CopyRecord:
    """A layout-prep op attributed to a call: where in the source it is, what it moved, how long its kernels ran."""

    site: str | None  # "model.py:42", or the enclosing function's first line without attnprof's ranges
    op: str  # aten::contiguous, aten::_to_copy, ...
    bytes: int  # bytes read + written
    dur_us: float  # its kernels' busy time (host op time on CPU)
    position: Position


@dataclass
class UnattributedCopy:
    """A layout copy that sits between attention calls where the trace cannot tell whose it is: charged to none."""

    site: str | None
    op: str
    bytes: int
    dur_us: float
    start_us: float  # relative to the trace's t=0
    calls: list[int]  # ids of the calls it could belong to


@dataclass
class CallSplit:
    id: int
    op: str  # entry point (sdpa, flash_attn_func, ...) or the aten op name for traces without attnprof ranges
    backend: str  # cudnn | flash | flash-attn2 | fa3 | fa4 | efficient | math | cpu-flash | flex | manual | unknown
    phase: Phase
    site: str
    found_by: FoundBy
    device: str  # "cuda:0" | "cpu"
    step: int | None = None  # the step it ran in (attnprof runs)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    dtype: str | None = None
    layout: str | None = None
    causal: bool | None = None
    gqa_ratio: float | None = None
    start_us: float = 0.0
    window_us: float = 0.0
    compute_us: float = 0.0
    copy_us: float = 0.0
    launch_us: float | None = 0.0  # None on CPU-only traces
    other_us: float = 0.0
    interleaved_us: float = 0.0  # other code's device work inside the span, left out of the window
    entry_busy_us: float = 0.0  # device busy time of the entry point's own work: what its CUDA events span, less idle
    projected_us: float | None = None  # first to last device op launched inside the call's range (nsys's projection)
    kernels: list[KernelSlice] = field(default_factory=list)
    copies: list[CopyRecord] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)  # the window, tiled by part


@dataclass
class CopySummary:
    site: str | None
    op: str
    bytes: int  # per call
    dur_us: float  # per call
    count: int  # copies of this site and op, over all calls


@dataclass
class SiteSummary:
    site: str
    op: str
    phase: Phase
    backend: str
    calls: int
    shapes: dict[str, list[int]]
    dtype: str | None
    layout: str | None
    true_us: float | None  # median end-to-end per call, CUDA events outside the profiler
    profiled_us: float | None  # the same measurement inside the profiled window (window mean without runinfo)
    inflation: float | None  # profiled / true
    timed_calls: int  # calls behind true_us
    after_us: float | None  # median of the same timing after the profiled window (the profiler's aftermath)
    window_us: float  # means per call from here on
    compute_us: float
    copy_us: float
    launch_us: float | None
    launch_true_us: float | None  # the call's own GPU idle: true_us less its kernels' busy time (see sites.py)
    other_us: float
    interleaved_us: float
    window_true_us: float | None  # compute + copy + other + launch_true: the window without the profiler's cost
    copies: list[CopySummary] = field(default_factory=list)
    #: what a person reads: in a model the module path, layers collapsed, and class (`model.layers.{0..3}.self_attn
    #: (LlamaAttention)`); outside one `caller → function`; the site (`path:line via :line`) without capture records
    label: str = ""
    function: str | None = None  # the function the call is made in
    caller: str | None = None  # the function that called it
    module: str | None = None  # module path of the calls, layers collapsed ("" = the model's own forward)
    module_class: str | None = None
    true_q1_us: float | None = None  # quartiles of the timed (true) samples: their spread
    true_q3_us: float | None = None
    profiled_q1_us: float | None = None
    profiled_q3_us: float | None = None
    noise: float | None = None  # (true_q3 - true_q1) / true_us; None below 3 samples
    warnings: list[str] = field(default_factory=list)  # noisy machine, too few samples, implausible inflation


@dataclass
class Report:
    schema_version: int
    source: str  # what was analysed
    trace_files: list[str]
    device: str  # device name, or "cpu"
    torch_version: str | None
    calls: list[CallSplit]
    sites: list[SiteSummary]
    run: dict | None = None  # from runinfo.json: command, steps, outcome, exit_code
    notes: list[str] = field(default_factory=list)
    #: per entry of trace_files: the absolute time (µs, the trace's own clock) of its t=0, which every start_us
    #: is relative to (Trace.base_us); empty for reports made before it was recorded
    trace_base_us: list[float] = field(default_factory=list)
    #: layout copies charged to no call: the trace could not tell which call's they are (see notes)
    unattributed_copies: list[UnattributedCopy] = field(default_factory=list)
    #: Nsight Compute's counters per attention kernel, when the run folder holds an ncu report (`attnprof ncu`)
    kernel_counters: KernelCountersSection | None = None
    #: a job of several ranks (torchrun): every rank across call sites (analysis/ranks.py); calls and sites above
    #: are then those of the lowest rank
    ranks: RanksSummary | None = None
