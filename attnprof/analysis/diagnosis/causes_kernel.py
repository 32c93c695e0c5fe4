"""Kernel causes: the attention kernels themselves, another fused kernel, a fallback backend, unfused attention;
the reasons a call could not use flash / cuDNN, and the fixes."""
from __future__ import annotations

from collections import defaultdict

from attnprof.analysis import taxonomy as tx
from attnprof.analysis.diagnosis.accumulate import CauseSums, cause_sum
from attnprof.analysis.diagnosis.backends import (
    EAGER_BACKEND,
    FA2_BACKENDS,
    FALLBACK_BACKENDS,
    GPU_FLASH_UNSUPPORTED_DTYPES,
    HEAD_DIM_MULTIPLE,
    MAX_FLASH_HEAD_DIM,
    UNFUSED_BACKENDS,
)
from attnprof.analysis.diagnosis.parts import PhaseParts, forward_calls, shape_text, work
from attnprof.analysis.diagnosis.records import COMPUTE, FALLBACK, KERNEL, UNFUSED, Selection
from attnprof.analysis.diagnosis.selection import work_key
from attnprof.analysis.kernel_counters import kernel_choice_evidence
from attnprof.analysis.records import COMPUTE as COMPUTE_PART
from attnprof.analysis.records import CallSplit, Report, SiteSummary
from attnprof.trace.runinfo import CallInfo
from attnprof.units import us_text

SDPA_CALL = "F.scaled_dot_product_attention(q, k, v, attn_mask=..., dropout_p=..., is_causal=...)"
_NO_REASON = "no reason visible in the recorded arguments"

# --- two sides: what changed in the kernels --------------------------------------------------------------------


def pair_compute(sums: CauseSums, phase: str, A: PhaseParts, B: PhaseParts, a: Selection, b: Selection,
                 hopper: bool) -> None:
    """B's attention kernels less A's, as the cause that tells them apart: a phase only one side has, the same
    kernel running longer, hand-written against fused attention, a fallback backend, or another fused kernel."""
    ba, bb = A.backend, B.backend
    if ba is None or bb is None:
        _pair_one_sided(sums, phase, A, B)
    elif ba == bb:
        _pair_same_backend(sums, phase, A, B)
    elif (bb in UNFUSED_BACKENDS) != (ba in UNFUSED_BACKENDS):
        _pair_unfused(sums, phase, A, B, a, b)
    elif (bb in FALLBACK_BACKENDS) != (ba in FALLBACK_BACKENDS):
        _pair_fallback(sums, phase, A, B, a, b)
    else:
        _pair_kernel_choice(sums, phase, A, B, a, b, hopper)


def _pair_one_sided(sums: CauseSums, phase: str, A: PhaseParts, B: PhaseParts) -> None:
    only = "B" if A.backend is None else "A"
    acc = cause_sum(sums, COMPUTE)
    acc.add(phase, B.compute - A.compute, f"{phase}: only {only} has this phase ({B.backend or A.backend})")
    acc.fix = acc.fix or "compare like with like: both sides with or without backward"


def _pair_same_backend(sums: CauseSums, phase: str, A: PhaseParts, B: PhaseParts) -> None:
    d = B.compute - A.compute
    acc = cause_sum(sums, COMPUTE)
    if work(A) != work(B):
        acc.add(phase, d, f"{phase}: same backend ({B.backend}), other shapes: A {shape_text(A)}, B {shape_text(B)}")
        acc.fix = acc.fix or "the sides do different work: compare calls of the same shape"
    else:
        longer = "longer" if d >= 0 else "shorter"
        acc.add(phase, d, f"{phase}: same backend ({B.backend}) and shapes; its kernels ran {us_text(abs(d))} {longer} "
                          "in B")
        acc.fix = acc.fix or ("the same kernel on the same shapes: run-to-run variation or input strides; "
                              "time more steps (--timed) and keep the inputs contiguous")


def _pair_unfused(sums: CauseSums, phase: str, A: PhaseParts, B: PhaseParts, a: Selection, b: Selection) -> None:
    d = B.compute - A.compute
    unfused, fused_side = (b, a) if B.backend in UNFUSED_BACKENDS else (a, b)
    who, fused_backend = ("B", A.backend) if unfused is b else ("A", B.backend)
    acc = cause_sum(sums, UNFUSED)
    acc.add(phase, d, f"{phase}: {who} computes attention by hand (q·kᵀ, softmax and ·v as separate kernels) "
                      f"where the other ran {fused_backend}: kernels {us_text(A.compute)} in A, "
                      f"{us_text(B.compute)} in B", {s.site: d for s in unfused.sites if s.phase == phase})
    phases = {s.phase for s in unfused.sites}
    measured = sum(s.window_us * s.calls for s in fused_side.sites if s.phase in phases) / \
        max(forward_calls(fused_side.sites), 1)
    unfused_us = sum(s.window_us * s.calls for s in unfused.sites) / max(forward_calls(unfused.sites), 1)
    acc.fix = unfused_fix(unfused_us, (measured, f"{fused_backend}, {fused_side.label}"), 0.0)


def _pair_fallback(sums: CauseSums, phase: str, A: PhaseParts, B: PhaseParts, a: Selection, b: Selection) -> None:
    d = B.compute - A.compute
    fell = b if B.backend in FALLBACK_BACKENDS else a
    fell_backend, fast_backend = (B.backend, A.backend) if fell is b else (A.backend, B.backend)
    who = "B" if fell is b else "A"
    acc = cause_sum(sums, FALLBACK)
    sources = {s.site: d for s in fell.sites if s.phase == phase}
    eager = sorted({s.op for s in fell.sites if s.phase == phase and EAGER_BACKEND in s.op})
    if eager:  # Hugging Face's eager attention: unfused by design, not a dispatch fallback
        acc.add(phase, d, f"{phase}: {who} computes attention unfused ({', '.join(eager)}: matmul, softmax and "
                          f"matmul kernels) where the other ran {fast_backend}", sources)
        acc.fix = ('use a fused implementation: attn_implementation="sdpa" (or "flash_attention_2") in '
                   "from_pretrained / the model config")
        return
    reasons = sorted({r for c in fell.calls if c.phase == phase and c.backend in FALLBACK_BACKENDS
                      for r in fallback_reasons(c, fell.call_info.get(c.id))})
    why = "; ".join(reasons) if reasons else _NO_REASON
    acc.add(phase, d, f"{phase}: {who} fell back to {fell_backend} where the other ran {fast_backend} ({why})", sources)
    acc.fix = fallback_fix(reasons)


def _pair_kernel_choice(sums: CauseSums, phase: str, A: PhaseParts, B: PhaseParts, a: Selection, b: Selection,
                        hopper: bool) -> None:
    d = B.compute - A.compute
    ba, bb = A.backend, B.backend
    acc = cause_sum(sums, KERNEL)
    slow, fast = (b, a) if d >= 0 else (a, b)
    counters = kernel_choice_evidence(slow.report.kernel_counters, [s.site for s in slow.sites],
                                      fast.report.kernel_counters, [s.site for s in fast.sites], phase)
    acc.add(phase, d, f"{phase}: A ran {ba}, B ran {bb}: kernels {us_text(A.compute)} vs {us_text(B.compute)}"
                      + (f"; {counters}" if counters else ""))
    slower, faster = (bb, ba) if d >= 0 else (ba, bb)
    acc.fix = kernel_fix(slower, faster, hopper)


# --- one side: its kernels, by backend ---------------------------------------------------------------------------


def single_compute(sums: CauseSums, phase: str, p: PhaseParts, sel: Selection, hopper: bool) -> None:
    """Per backend of one side: its kernels' time, as unfused attention, a fallback, FA2 on Hopper, or itself."""
    for backend, us in p.backend_us.items():
        if backend in UNFUSED_BACKENDS:
            unfused = [s for s in sel.sites if s.backend == backend]
            acc = cause_sum(sums, UNFUSED)
            acc.add(phase, us, f"{phase}: hand-written attention: q·kᵀ, mask, softmax, dropout and ·v as separate "
                               f"kernels, {shape_text(p)}", {s.site: us for s in unfused if s.phase == phase})
            all_unfused = [s for s in sel.sites if s.backend in UNFUSED_BACKENDS]
            unfused_calls = [c for c in sel.calls if c.backend in UNFUSED_BACKENDS]
            acc.fix = unfused_fix(sum(s.window_us * s.calls for s in all_unfused) / forward_calls(all_unfused),
                                  sdpa_measured(sel.report, all_unfused), matmul_us(unfused_calls))
        elif backend in FALLBACK_BACKENDS:
            calls = [c for c in sel.calls if c.phase == phase and c.backend == backend]
            reasons = sorted({r for c in calls for r in fallback_reasons(c, sel.call_info.get(c.id))})
            acc = cause_sum(sums, FALLBACK)
            why = "; ".join(reasons) if reasons else _NO_REASON
            acc.add(phase, us, f"{phase}: the {backend} backend ran instead of flash / cuDNN ({why})",
                    {s.site: us for s in sel.sites if s.phase == phase and s.backend == backend})
            acc.fix = fallback_fix(reasons)
        elif hopper and backend in FA2_BACKENDS:
            acc = cause_sum(sums, KERNEL)
            acc.add(phase, us, f"{phase}: FlashAttention-2 ({backend}) kernels on a Hopper GPU")
            acc.fix = kernel_fix(backend, "cudnn", True)
        else:
            acc = cause_sum(sums, COMPUTE)
            acc.add(phase, us, f"{phase}: the {backend} attention kernels, {shape_text(p)}")
            acc.fix = ("the attention itself: the dashboard's roofline shows how close it runs to the GPU's "
                       "measured peak")


# --- why, and the fixes ---------------------------------------------------------------------------------------------


def fallback_reasons(call: CallSplit, info: CallInfo | None = None) -> list[str]:
    """Why a call could not use flash / cuDNN, as far as its recorded arguments tell."""
    reasons: list[str] = []
    main = call.shapes.get("q") or call.shapes.get("qkv")
    on_gpu = not call.device.startswith("cpu")  # PyTorch's CPU flash kernel takes fp32 too
    if on_gpu and call.dtype in GPU_FLASH_UNSUPPORTED_DTYPES:
        reasons.append(f"{call.dtype} inputs: the flash and cuDNN kernels take fp16 / bf16 only")
    head_dim = (info.head_dim if info and info.head_dim else None) or (main[-1] if main else None)
    if head_dim is not None and head_dim > MAX_FLASH_HEAD_DIM:
        reasons.append(f"head dim {head_dim} > {MAX_FLASH_HEAD_DIM}: above what the flash kernels support")
    elif head_dim is not None and head_dim % HEAD_DIM_MULTIPLE:
        reasons.append(f"head dim {head_dim} is not a multiple of {HEAD_DIM_MULTIPLE}")
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


def fallback_fix(reasons: list[str]) -> str:
    base = (f"make flash / cuDNN eligible: fp16 or bf16 inputs, a head dim that is a multiple of {HEAD_DIM_MULTIPLE} "
            f"and at most {MAX_FLASH_HEAD_DIM}, is_causal instead of a mask, a contiguous last dim")
    probe = ("torch.backends.cuda.can_use_flash_attention(torch.backends.cuda.SDPAParams(...), debug=True) prints "
             "why a backend was skipped")
    return f"{base}; {probe}" if not reasons else f"{base} (here: {'; '.join(reasons)}); {probe}"


def kernel_fix(slower: str | None, faster: str | None, hopper: bool) -> str:
    if hopper and slower in FA2_BACKENDS:
        return ("on Hopper, FlashAttention-2 uses neither wgmma nor TMA: call SDPA (its cuDNN backend) or "
                "FlashAttention-3 (flash_attn_interface.flash_attn_func)")
    if slower in UNFUSED_BACKENDS | {EAGER_BACKEND}:  # no kernel to select: the attention is written out in ops
        return (f"the fused {faster} kernel is faster than the unfused attention: call F.scaled_dot_product_attention "
                f"(Hugging Face: attn_implementation=\"sdpa\") instead of the {slower} code")
    return (f"the {faster} kernel is faster for this shape: select it (torch.nn.attention.sdpa_kernel, or that "
            f"library's entry point) for the {slower} calls")


def sdpa_measured(report: Report, unfused: list[SiteSummary]) -> tuple[float, str] | None:
    """(µs per call, fwd + bwd phases the unfused sites have, and the backend) of fused attention doing the same
    work (same q and k dims, dtype) in the same report: SDPA measured on the same shape, no estimate needed."""
    phases = {s.phase for s in unfused}
    keys = {work_key(s) for s in unfused if s.phase == "fwd"} or {work_key(s) for s in unfused}
    fused = [s for s in report.sites if s.phase in phases and s.backend not in UNFUSED_BACKENDS
             and s.backend != "unknown" and work_key(s) in keys]
    by_site: dict[str, dict[str, SiteSummary]] = defaultdict(dict)
    for s in fused:
        by_site[s.site][s.phase] = s
    for site, per_phase in by_site.items():
        if set(per_phase) == phases:  # like for like: both phases, or the forward alone
            return sum(s.window_us for s in per_phase.values()), f"{per_phase[min(phases)].backend} at {site}"
    return None


def matmul_us(calls: list[CallSplit]) -> float:
    """Per call: the busy time of the q·kᵀ and ·v matmuls of hand-written attention calls."""
    if not calls:
        return 0.0
    return sum(k.dur_us for c in calls for k in c.kernels if k.category == COMPUTE_PART and
               tx.is_gemm_work(k.name)) / len({c.id for c in calls})


def unfused_fix(unfused_us: float, measured: tuple[float, str] | None, estimate_us: float) -> str:
    """Call SDPA instead, and what SDPA takes on this shape: measured when the run has it, else flagged estimate."""
    fix = (f"replace the hand-written softmax(q @ k.transpose(-2, -1) * scale + mask) @ v with {SDPA_CALL}: one "
           "fused kernel, no scores tensor written and read back, no mask / softmax / dropout passes")
    if measured is not None:
        us, where = measured
        return fix + (f"; on this shape SDPA took {us_text(us)} per call in this run (measured: {where}) against "
                      f"{us_text(unfused_us)} here")
    return fix + (f"; SDPA would take about {us_text(estimate_us)} per call (an estimate: the time of this call's two "
                  f"matmuls, which a fused kernel also does; no SDPA call of this shape was measured: run "
                  f"`attnprof compare` on it) against {us_text(unfused_us)} here")
