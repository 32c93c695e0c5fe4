"""The attention roofline: FLOPs and minimum bytes of one call, what a time achieves, and how far from this device's
measured ceilings it is. Pure arithmetic (no torch), shared by `attnprof compare` and the dashboards.

FLOPs (2 per multiply-accumulate), for one (query, key) pair of one query head:
  forward   2·(D + Dv)      S = Q·Kᵀ (D) and O = P·V (Dv): 4·B·H·Lq·Lk·D when Dv = D;
  backward  2·(3·D + 2·Dv)  the backward pass alone: S recomputed (D), dV = Pᵀ·dO (Dv), dP = dO·Vᵀ (Dv),
                            dQ = dS·K (D), dK = dSᵀ·Q (D): 2.5× the forward when Dv = D.
  The issue's "×2.5 with backward" is read as this: `backward=True` gives the FLOPs of the backward pass, which is
  2.5× the forward's (flash-attn's benchmarks count it the same way); a training step's attention is forward +
  backward = 3.5× the forward. Softmax, scaling and masking are not counted (they are not matmul work).
Pairs: Lq·Lk per sequence (and per batch element); with varlen, the sum over sequences of Lq_i·Lk_i. A causal mask
  keeps the area of the kept triangle, counted as a continuous area so that a square mask is exactly half (the
  usual convention; the diagonal's extra L/2 is ignored). For Lq ≠ Lk the alignment decides the area:
  "top-left" (torch SDPA's is_causal, torch.tril: query i sees keys ≤ i) or "bottom-right" (flash-attn ≥ 2.1,
  FA3, FA4: the last query sees every key).
GQA/MQA: FLOPs use the query heads; k and v (and dk, dv) bytes use the kv heads.
Minimum bytes, each tensor moved once at the call's dtype:
  forward   read q, k, v; write out. The log-sum-exp (B·Hq·Lq fp32) a training forward also writes is not counted:
            an inference call needs none, and it is < 1/D of the output's elements.
  backward  read q, k, v, out, dout and lse (fp32); write dq, dk, dv.
Ceilings are measured on the device (capture/ceilings.py): a large device-to-device copy (bytes read + written)
and a large dense matmul. A call is compute-bound when its arithmetic intensity (FLOPs / minimum bytes) is at or
above the ridge point matmul_tflops / copy_gbps, memory-bound below it; % of peak is the achieved rate over the
ceiling of its bound.
"""
from __future__ import annotations

from dataclasses import dataclass

from attnprof.analysis.records import CallSplit
from attnprof.trace.ceilings import Ceilings

TOP_LEFT, BOTTOM_RIGHT = "top-left", "bottom-right"
COMPUTE_BOUND, MEMORY_BOUND = "compute", "memory"
LSE_ITEMSIZE = 4  # the log-sum-exp is fp32 in every backend

#: Backends whose causal mask is aligned to the bottom right when Lq != Lk.
_BOTTOM_RIGHT_BACKENDS = frozenset(("flash-attn2", "fa3", "fa4"))
#: Calls whose q, k, v are (B, L, H, D), for records without a layout (no runinfo): attnprof entry points as
#: capture names them, and aten / library ops (traces without attnprof ranges). Other attention ops are BHLD.
_BLHD_OPS = frozenset((
    "aten._flash_attention_forward", "flash_attn_func", "fa3.flash_attn_func", "fa4.flash_attn_func",
    "xformers.memory_efficient_attention", "xformers.memory_efficient_attention_forward",
    "aten::_flash_attention_forward", "aten::_flash_attention_backward",
    "aten::_efficient_attention_forward", "aten::_efficient_attention_backward",
    "flash_attn::_flash_attn_forward", "flash_attn::_flash_attn_backward",
    "flash_attn_3::fwd", "flash_attn_3::bwd", "flash_attn_3::_flash_attn_forward", "flash_attn_3::_flash_attn_backward",
    "xformers::efficient_attention_forward_cutlass", "xformers::efficient_attention_backward_cutlass",
    "xformers_flash::flash_fwd", "xformers_flash::flash_bwd", "xformers_flash3::flash_fwd",
))


@dataclass
class AttentionShape:
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    head_dim_v: int
    causal: bool = False
    seqlens: list[tuple[int, int]] | None = None  # varlen: (Lq_i, Lk_i) per sequence; batch/seqlen_* then unused
    causal_alignment: str = TOP_LEFT  # matters only when causal and Lq != Lk

    def pairs(self) -> list[tuple[int, int]]:
        """(Lq, Lk) of every sequence."""
        return list(self.seqlens) if self.seqlens is not None else [(self.seqlen_q, self.seqlen_k)] * self.batch


@dataclass
class Roofline:
    flops: float
    min_bytes: float
    us: float
    tflops: float  # achieved: flops / time
    gbps: float  # achieved: min_bytes / time
    pct_of_peak: float | None  # percent of the ceiling of `bound`; None without ceilings
    bound: str | None  # "compute" | "memory": which ceiling the arithmetic intensity puts it under; None without ceilings


def scores_computed(seqlen_q: int, seqlen_k: int, causal: bool, alignment: str = TOP_LEFT) -> float:
    """Area of the (query, key) score matrix that is kept (see the module's docstring for the causal convention)."""
    lq, lk = float(seqlen_q), float(seqlen_k)
    if not causal:
        return lq * lk
    if alignment == TOP_LEFT:  # query i sees keys 0..i
        return lq * lq / 2 if lq <= lk else lk * lk / 2 + (lq - lk) * lk
    if alignment == BOTTOM_RIGHT:  # query i sees keys 0..i + (Lk - Lq)
        return lq * lk - lq * lq / 2 if lq <= lk else lk * lk / 2
    raise ValueError(f"unknown causal alignment {alignment!r}")


def _total_scores(shape: AttentionShape) -> float:
    return sum(scores_computed(lq, lk, shape.causal, shape.causal_alignment) for lq, lk in shape.pairs())


def attention_flops(shape: AttentionShape, backward: bool = False) -> float:
    """FLOPs of the forward pass, or with `backward` of the backward pass alone (2.5× the forward when Dv = D)."""
    d, dv = shape.head_dim, shape.head_dim_v
    per_score = 2 * (3 * d + 2 * dv) if backward else 2 * (d + dv)
    return float(per_score * shape.heads_q * _total_scores(shape))


def attention_min_bytes(shape: AttentionShape, itemsize: int, backward: bool = False) -> float:
    """Bytes the pass must move at least: every input read once, every output written once."""
    tokens_q = sum(lq for lq, _ in shape.pairs())
    tokens_k = sum(lk for _, lk in shape.pairs())
    q = tokens_q * shape.heads_q * shape.head_dim
    k = tokens_k * shape.heads_kv * shape.head_dim
    v = tokens_k * shape.heads_kv * shape.head_dim_v
    out = tokens_q * shape.heads_q * shape.head_dim_v
    if not backward:
        return float((q + k + v + out) * itemsize)
    lse = tokens_q * shape.heads_q
    # read q, k, v, out, dout; write dq, dk, dv (each the size of its input); read lse
    return float((2 * q + 2 * k + 2 * v + 2 * out) * itemsize + lse * LSE_ITEMSIZE)


def roofline(shape: AttentionShape, itemsize: int, backward: bool, us: float,
             ceilings: Ceilings | None) -> Roofline:
    """Achieved TFLOP/s and GB/s of one pass that took `us` µs, and its % of the ceiling it is bound by."""
    if not us > 0:
        raise ValueError(f"time must be positive, got {us} µs")
    flops = attention_flops(shape, backward)
    nbytes = attention_min_bytes(shape, itemsize, backward)
    tflops = flops / us / 1e6  # flops per µs = 1e6 flops/s; TFLOP/s = 1e12
    gbps = nbytes / us / 1e3
    bound = pct = None
    if ceilings is not None and ceilings.matmul_tflops > 0 and ceilings.copy_gbps > 0:
        ridge = ceilings.matmul_tflops * 1e12 / (ceilings.copy_gbps * 1e9)  # flops per byte
        intensity = flops / nbytes if nbytes else float("inf")
        if intensity >= ridge:
            bound, pct = COMPUTE_BOUND, 100.0 * tflops / ceilings.matmul_tflops
        else:
            bound, pct = MEMORY_BOUND, 100.0 * gbps / ceilings.copy_gbps
    return Roofline(flops=flops, min_bytes=nbytes, us=us, tflops=tflops, gbps=gbps, pct_of_peak=pct, bound=bound)


def shape_of_call(call: CallSplit) -> AttentionShape | None:
    """The attention shape of an analysed call, from its recorded shapes and layout; None when they cannot say.

    Handles (B, H, L, D), (B, L, H, D), qkv-packed (B, L, 3, H, D) and kv-packed (B, L, 2, Hkv, D). Varlen calls
    (their per-sequence lengths are not in the record), kv-cache calls (the cache's used length is not either)
    and (B, L, E) MultiheadAttention inputs (heads and batch-first unknown) give None.
    """
    s = call.shapes
    layout = call.layout or ("BLHD" if call.op in _BLHD_OPS else "BHLD")
    alignment = BOTTOM_RIGHT if call.backend in _BOTTOM_RIGHT_BACKENDS else TOP_LEFT
    causal = bool(call.causal)
    if layout == "qkvpacked" and len(s.get("qkv", ())) == 5:
        b, lq, _, h, d = s["qkv"]
        return AttentionShape(b, h, h, lq, lq, d, d, causal, None, alignment)
    if layout == "kvpacked" and len(s.get("q", ())) == 4 and len(s.get("kv", ())) == 5:
        b, lq, hq, d = s["q"]
        _, lk, _, hkv, dv = s["kv"]
        return AttentionShape(b, hq, hkv, lq, lk, d, dv, causal, None, alignment)
    if layout not in ("BHLD", "BLHD") or not all(len(s.get(n, ())) == 4 for n in ("q", "k", "v")):
        return None
    q, k, v = s["q"], s["k"], s["v"]
    if layout == "BHLD":
        (b, hq, lq, d), (_, hkv, lk, _), dv = q, k, v[3]
    else:
        (b, lq, hq, d), (_, lk, hkv, _), dv = q, k, v[3]
    return AttentionShape(b, hq, hkv, lq, lk, d, dv, causal, None, alignment)
