"""The rows of `attnprof compare`: each measured time joined with its profiled call's split and its roofline."""
from __future__ import annotations

from dataclasses import dataclass, field

from attnprof.analysis import taxonomy as tx
from attnprof.analysis.records import CallSplit
from attnprof.analysis.roofline import AttentionShape, roofline
from attnprof.trace.ceilings import Ceilings
from attnprof.trace.compare import BWD, CompareCase, CompareRun, Measurement


@dataclass
class CompareRow:
    backend: str  # what was asked for: sdpa-auto, sdpa-flash, ..., aten-flash, flash-attn2, fa3, fa4, xformers
    variant: str  # native | seed-wrapper
    shape: list[int]  # [B, H, L, D] or [B, Hq, Hkv, L, D]
    dtype: str
    causal: bool
    phase: str  # fwd | bwd
    # None where it did not run, was not profiled, or (read back from an older compare.json) was not recorded
    median_us: float | None = None  # median over repetitions outside the profiler (GPU time on CUDA, host on CPU)
    window_us: float | None = None  # the profiled call's window, which compute + copy + launch + other add up to
    compute_us: float | None = None
    copy_us: float | None = None
    launch_us: float | None = None  # None on CPU (nothing to wait for) and when unsupported
    other_us: float | None = None
    tflops: float | None = None  # achieved, from median_us and the FLOP model
    gbps: float | None = None  # achieved, from median_us and the minimum bytes
    pct_of_peak: float | None = None  # of the measured ceiling of `bound`
    bound: str | None = None  # compute | memory (None without ceilings)
    kernels: str | None = None  # the backend the analysis saw run (sdpa-auto -> cudnn on an H100)
    trace: str | None = None  # trace file of the profiled repetition, in the run folder
    unsupported: str | None = None  # None, or why it could not run


@dataclass
class CompareDocument:
    """compare.json as read back (pipeline.read_compare) for the dashboard and the gallery: its rows, the ceilings
    the percentages were divided by, its notes, and the environment as it was recorded (device, command, ...)."""

    rows: list[CompareRow]
    run: dict = field(default_factory=dict)
    ceilings: Ceilings | None = None  # None when absent, or unreadable (then the device's cached ones are used)
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """`attnprof compare`'s answer: what ran, each measurement joined with its split and roofline (one row each),
    the ceilings the percentages divide by, and notes."""

    run: CompareRun
    rows: list[CompareRow]
    ceilings: Ceilings | None
    notes: list[str]


def case_label(shape: list[int], dtype: str, causal: bool) -> str:
    """What tells one compare case from another, as a site suffix: "12×64×256×64 float16", "... causal"."""
    bits = ["×".join(map(str, shape)), dtype]
    if causal:
        bits.append("causal")
    return " ".join(bits)


def case_labels_by_trace(rows: list[CompareRow]) -> dict[str, str]:
    """Trace file name -> its case's label, from compare.json's rows: a compare folder holds one trace per case,
    backend and variant, and every case's call of a backend has the same range name, so the analysis adds the
    case to the site; otherwise different shapes would be averaged into one row."""
    return {r.trace: case_label(r.shape, r.dtype or "", bool(r.causal)) for r in rows if r.trace and r.shape}


def attention_shape(case: CompareCase) -> AttentionShape:
    return AttentionShape(batch=case.batch, heads_q=case.heads_q, heads_kv=case.heads_kv, seqlen_q=case.seqlen,
                          seqlen_k=case.seqlen, head_dim=case.head_dim, head_dim_v=case.head_dim, causal=case.causal)


def _find_call(calls: list[CallSplit], m: Measurement) -> CallSplit | None:
    return next((c for c in calls if c.found_by == "attnprof" and c.id == m.call_id and c.phase == m.phase), None)


def comparison(run: CompareRun, calls_by_trace: dict[str, list[CallSplit]], ceilings: Ceilings | None) -> Comparison:
    """The run's measurements joined with the analysed calls of each trace file named in `calls_by_trace`."""
    rows, notes = compare_rows(run, calls_by_trace, ceilings)
    return Comparison(run, rows, ceilings, notes)


def compare_rows(run: CompareRun, calls_by_trace: dict[str, list[CallSplit]],
                 ceilings: Ceilings | None) -> tuple[list[CompareRow], list[str]]:
    """One row per measurement, and notes; `calls_by_trace` holds the analysed calls of each trace file named."""
    rows, notes = [], []
    for m in run.measurements:
        case = run.cases[m.case]
        call = _find_call(calls_by_trace.get(m.trace or "", []), m)
        if m.trace and call is None:
            notes.append(f"{m.backend} {m.variant} {m.phase}: the analysis found no {m.phase} call #{m.call_id} "
                         f"in {m.trace}, so its split is missing")
        roof = None
        if m.median_us:
            roof = roofline(attention_shape(case), tx.itemsize(case.dtype), m.phase == BWD, m.median_us, ceilings)
        rows.append(CompareRow(
            backend=m.backend, variant=m.variant, shape=case.shape, dtype=case.dtype, causal=case.causal,
            phase=m.phase, median_us=m.median_us,
            window_us=call.window_us if call else None,
            compute_us=call.compute_us if call else None,
            copy_us=call.copy_us if call else None,
            launch_us=call.launch_us if call else None,
            other_us=call.other_us if call else None,
            tflops=roof.tflops if roof else None,
            gbps=roof.gbps if roof else None,
            pct_of_peak=roof.pct_of_peak if roof else None,
            bound=roof.bound if roof else None,
            kernels=call.backend if call else None,
            trace=m.trace, unsupported=m.unsupported,
        ))
    return rows, notes
