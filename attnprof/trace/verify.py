"""What `attnprof explain --verify` replays and what it measured: one ReplaySpec per call site (built by analysis
from a run's records), one SiteReplay per spec (filled by capture/verify.py), joined back to the causes by
analysis/verification.py."""
from __future__ import annotations

from dataclasses import dataclass, field

#: Seconds of timing per site unless --budget says otherwise.
DEFAULT_BUDGET_S = 5.0
#: Clocks of a variant's timing: compare's (device time of each repetition, the host given a head start, see
#: capture/bench.py), or back-to-back repetitions at the host's pace (what a CUDA graph saves is host time).
DEVICE_CLOCK, PACED_CLOCK = "per-repetition", "host-paced"


@dataclass
class ReplaySpec:
    """One call site's attention call (forward), as recorded: enough to rebuild its inputs with random values."""

    site: str
    op: str  # entry point as recorded (sdpa, aten._flash_attention_forward, hf.eager_attention_forward, manual)
    backend: str  # the backend the trace saw (flash, cudnn, efficient, math, cpu-flash, eager, manual, ...)
    layout: str  # BHLD | BLHD: how q, k, v reach the kernel
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    dtype: str  # torch dtype name without "torch."
    recorded_device: str  # "cuda:0" | "cpu"
    causal: bool = False
    dropout_p: float = 0.0
    scale: float | None = None
    mask_shape: list[int] | None = None
    mask_dtype: str | None = None
    strides: dict[str, list[int]] = field(default_factory=dict)  # q, k, v as recorded (absent: contiguous)
    kinds: list[str] = field(default_factory=list)  # the diagnosis's cause kinds to measure


@dataclass
class VariantTiming:
    """One way of running the site's call, timed."""

    name: str  # as-recorded, with-layout-copies, sdpa-auto, sdpa-flash, ..., hand-written, cuda-graph, eager-paced
    what: str  # in words
    median_us: float | None = None  # per call; None when it could not run
    spread_us: float | None = None  # interquartile range of the repetitions
    reps: int = 0
    clock: str = DEVICE_CLOCK
    unsupported: str | None = None  # why it could not run, in torch's or the library's words


@dataclass
class FixMeasurement:
    """What one cause's fix saves on the replayed call: baseline variant minus the best fix variant."""

    kind: str  # a diagnosis cause kind
    baseline: str | None = None
    fix: str | None = None  # the variant that achieved the saving
    saving_us: float | None = None  # None: not measured (reason)
    noise_us: float = 0.0  # half the sum of the two variants' interquartile ranges
    reason: str | None = None  # why it was not measured


@dataclass
class SiteReplay:
    spec: ReplaySpec  # as recorded
    replayed: ReplaySpec  # at the replayed size (--scale)
    scale: float
    device: str  # where it was replayed
    method: str
    variants: list[VariantTiming] = field(default_factory=list)
    fixes: list[FixMeasurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
