"""What `attnprof compare` measured: the cases, and per backend, variant and phase its time, trace and call id
(or why it could not run). Capture fills these records; analysis joins them with the traces' splits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

COMPARE_FILE = "compare.json"
COMPARE_SCHEMA_VERSION = 1

NATIVE, SEED_WRAPPER = "native", "seed-wrapper"
FWD, BWD = "fwd", "bwd"


@dataclass
class CompareCase:
    batch: int
    heads_q: int
    heads_kv: int
    seqlen: int
    head_dim: int
    dtype: str  # torch dtype name without "torch.": float16, bfloat16, float32
    causal: bool
    backward: bool

    @property
    def shape(self) -> list[int]:
        """As the user gave it: [B, H, L, D], or [B, Hq, Hkv, L, D] for GQA."""
        if self.heads_q == self.heads_kv:
            return [self.batch, self.heads_q, self.seqlen, self.head_dim]
        return [self.batch, self.heads_q, self.heads_kv, self.seqlen, self.head_dim]

    @property
    def phases(self) -> tuple[str, ...]:
        return (FWD, BWD) if self.backward else (FWD,)


@dataclass
class Measurement:
    """One backend, variant and phase on one case."""

    case: int  # index into CompareRun.cases
    backend: str  # sdpa-auto, sdpa-flash, ..., aten-flash, flash-attn2, fa3, fa4, xformers
    variant: str  # native | seed-wrapper
    phase: str  # fwd | bwd
    median_us: float | None = None  # None when unsupported
    reps: int = 0
    input_sets: int = 0  # input sets rotated through, so caches do not hold the inputs between repetitions
    trace: str | None = None  # trace file in the run folder holding the one profiled repetition
    call_id: int | None = None  # the attnprof range id of that repetition's call in the trace
    unsupported: str | None = None  # why it could not run: torch's or the library's own words


@dataclass
class CompareRun:
    folder: str
    device: str  # "NVIDIA H100 80GB HBM3" or "cpu (<model>)"
    started_at: str  # ISO 8601
    command: list[str]
    versions: dict[str, str]  # torch, cuda, cudnn, and each attention library found
    method: str  # how the times were taken, in words
    cases: list[CompareCase] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
