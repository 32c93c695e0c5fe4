"""Copy causes: layout copies, dtype casts, padding, GQA k/v expansion; what they cost, where, and their fixes."""
from __future__ import annotations

from collections import defaultdict

from attnprof.analysis.diagnosis.accumulate import CauseSums, cause_sum
from attnprof.analysis.diagnosis.backends import (
    BLHD_BACKENDS,
    EAGER_BACKEND,
    HEAD_DIM_MULTIPLE,
    MAX_FLASH_HEAD_DIM,
    UNFUSED_BACKENDS,
)
from attnprof.analysis.diagnosis.copy_kinds import short_op
from attnprof.analysis.diagnosis.parts import PhaseParts
from attnprof.analysis.diagnosis.records import CAST, COPY_KINDS, GQA_EXPAND, PAD
from attnprof.units import us_text


def pair_copies(sums: CauseSums, phase: str, A: PhaseParts, B: PhaseParts) -> None:
    """Per copy kind either side has: B's copies less A's, with the fix for the side that copies more."""
    for kind in COPY_KINDS:
        if not (A.copy_kinds.get(kind) or B.copy_kinds.get(kind)):
            continue
        d = B.copy_kinds.get(kind, 0.0) - A.copy_kinds.get(kind, 0.0)
        more = B if d >= 0 else A
        acc = cause_sum(sums, kind)
        acc.add(phase, d, f"{phase}: B {copies_text(B.copy_ops.get(kind, {}))}; "
                          f"A {copies_text(A.copy_ops.get(kind, {}))}", _sources(more, kind))
        acc.fix = copy_fix(kind, more, acc.sources_ranked())


def single_copies(sums: CauseSums, phase: str, p: PhaseParts) -> None:
    """Per copy kind of one side: its copies, by op and source line."""
    for kind, us in p.copy_kinds.items():
        acc = cause_sum(sums, kind)
        acc.add(phase, us, f"{phase}: {copies_text(p.copy_ops[kind])}", _sources(p, kind))
        acc.fix = copy_fix(kind, p, acc.sources_ranked())


def _sources(p: PhaseParts, kind: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (site, _op), (us, _n) in p.copy_ops.get(kind, {}).items():
        out[site] += us
    return out


def copy_fix(kind: str, parts: PhaseParts, sources: list[str]) -> str:
    where = _lines(sources)
    if kind == CAST:
        return (f"run attention in the dtype the tensors already have (autocast, or cast the weights once) instead "
                f"of casting q, k, v every call: {where}")
    if kind == PAD:
        return ("stop padding every call: pad once outside the loop, use a varlen kernel (flash_attn_varlen_func) "
                f"for ragged batches, or a head dim the kernel takes natively (a multiple of {HEAD_DIM_MULTIPLE}, at "
                f"most {MAX_FLASH_HEAD_DIM}): {where}")
    if kind == GQA_EXPAND:
        return ("pass k and v with their own (fewer) heads: F.scaled_dot_product_attention(..., enable_gqa=True) "
                f"or flash-attn's native GQA, instead of repeat_interleave / expand + reshape: {where}")
    if parts.backend in BLHD_BACKENDS or "BLHD" in parts.layouts:
        return (f"pass (B, L, H, D) tensors straight to the flash kernel (view the projection as (B, L, H, D), no "
                f"transpose(1, 2).contiguous()), or keep SDPA's (B, H, L, D) and call SDPA: {where}")
    ops = sorted({op for _source, op in parts.copy_ops.get(kind, {})})
    if parts.backend in UNFUSED_BACKENDS | {EAGER_BACKEND}:
        # the copies are the hand-written attention's own (Hugging Face's eager_attention_forward: repeat_kv, matmul
        # on transposed views, the output's transpose): no .contiguous() of the user's to drop
        return (f"the {', '.join(ops) or 'copies'} are made inside the unfused attention itself (matmul and softmax "
                f"on transposed or expanded views): a fused kernel takes those views without copying: "
                f"F.scaled_dot_product_attention (Hugging Face: attn_implementation=\"sdpa\"): {where}")
    drop = "the .contiguous()" if not ops or "aten::contiguous" in ops else f"the {', '.join(ops)}"
    return (f"use the layout the kernel wants without copying: SDPA takes (B, H, L, D) strided views (drop "
            f"{drop}), flash kernels take (B, L, H, D): {where}")


def _lines(sources: list[str]) -> str:
    return compact_lines(sorted(sources, key=_line_order)) if sources else "the lines before and after the call"


def _line_order(site: str) -> tuple:
    file, _, line = site.rpartition(":")
    return (file, int(line)) if line.isdigit() else (site, 0)


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


def copies_text(ops: dict[tuple[str, str], list[float]]) -> str:
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
        parts.append(f"{short_op(op)}{count} = {us_text(us)} at {compact_lines(sorted(set(sites), key=_line_order))}")
    return "; ".join(parts)
