"""Every attention entry point attnprof wraps, and how each call's arguments become `CallInfo` fields.

One `EntryPoint` per function: where it lives (modules that hold it as an attribute; the first one defines it),
its short op name, its library, and `describe(args, result) -> CallDescription` over the call's bound arguments.
Arguments are bound by name with the function's own signature where it has one, else with the parameter list given
here (builtins). `describe` may raise on an unexpected call: the session then records the call without details.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from attnprof.trace.runinfo import CallInfo, TensorInfo

Args = Mapping[str, Any]


@dataclass(slots=True)  # slots: a misspelt field is an error, not a new attribute
class CallDescription:
    """What one call's arguments (and result) say about it: the CallInfo fields capture fills from them."""

    layout: str = "unknown"  # BHLD | BLHD | qkvpacked | kvpacked | varlen | ... (CallInfo.layout)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    batch: int | None = None
    heads_q: int | None = None
    heads_kv: int | None = None
    seqlen_q: int | None = None
    seqlen_k: int | None = None
    head_dim: int | None = None
    head_dim_v: int | None = None
    gqa_ratio: float | None = None
    causal: bool | None = None
    dropout_p: float = 0.0
    scale: float | None = None
    mask: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def apply(self, info: CallInfo) -> None:
        """Fill `info` (made before the arguments are read, so that a call whose arguments cannot be read is still
        recorded) with this description."""
        info.layout = self.layout
        info.tensors = self.tensors
        info.batch = self.batch
        info.heads_q = self.heads_q
        info.heads_kv = self.heads_kv
        info.seqlen_q = self.seqlen_q
        info.seqlen_k = self.seqlen_k
        info.head_dim = self.head_dim
        info.head_dim_v = self.head_dim_v
        info.gqa_ratio = self.gqa_ratio
        info.causal = self.causal
        info.dropout_p = self.dropout_p
        info.scale = self.scale
        info.mask = self.mask
        info.extra = self.extra


Describe = Callable[[Args, Any], CallDescription]
_NO_DEFAULT = inspect.Parameter.empty


@dataclass(frozen=True)
class EntryPoint:
    op: str  # short name, e.g. "sdpa", "flash_attn_func", "fa3.flash_attn_func"
    library: str  # "torch", "flash_attn", "flash_attn_interface" (FA3), "flash_attn.cute" (FA4), "xformers"
    modules: tuple[str, ...]  # modules holding the function as `attr`; "torch.ops.aten" is the op namespace
    attr: str
    describe: Describe
    params: tuple[tuple[str, Any], ...] | None = None  # (name, default) for functions without a signature
    kwonly: tuple[tuple[str, Any], ...] = ()  # keyword-only (name, default) for those
    record_if: Callable[[tuple, dict], bool] | None = None  # False: pass through, let nested entry points record
    returns_lse: bool = True  # a tuple result's second tensor is the log-sum-exp (flash-attn style)


# --- binding ------------------------------------------------------------------------------------------------------


class Binder:
    """Maps (args, kwargs) of one function to {parameter name: value}, defaults included; never raises on a call
    the function itself would reject (surplus positionals land in "*args")."""

    def __init__(self, entry: EntryPoint, original: Any):
        positional: list[str] = []
        defaults: dict[str, Any] = {}
        sig = None
        if entry.params is None:
            try:
                sig = inspect.signature(original)
            except (TypeError, ValueError):
                sig = None
        if sig is not None:
            for p in sig.parameters.values():
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    positional.append(p.name)
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.default is not _NO_DEFAULT:
                    defaults[p.name] = p.default
        else:
            for name, default in entry.params or ():
                positional.append(name)
                if default is not _NO_DEFAULT:
                    defaults[name] = default
            for name, default in entry.kwonly:
                defaults[name] = default
        self.positional = tuple(positional)
        self.defaults = defaults

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        out = dict(self.defaults)
        n = len(self.positional)
        out.update(zip(self.positional, args))
        if len(args) > n:
            out["*args"] = args[n:]
        out.update(kwargs)
        return out


# --- helpers ------------------------------------------------------------------------------------------------------


def _dim(d: Any) -> int:
    try:
        return int(d)
    except Exception:  # a symbolic size (nested/jagged tensors)
        return -1


def shape(t: torch.Tensor) -> list[int]:
    return [_dim(d) for d in t.shape]


def tensor_info(t: torch.Tensor) -> TensorInfo:
    try:
        stride = [_dim(s) for s in t.stride()]
    except Exception:  # sparse, nested
        stride = []
    try:
        storage = t.untyped_storage().data_ptr()
    except Exception:  # tensors without storage (meta, some subclasses)
        storage = None
    return TensorInfo(shape=shape(t), stride=stride, dtype=str(t.dtype).removeprefix("torch."), device=str(t.device),
                      storage=storage)


def tensor_text(t: torch.Tensor) -> str:
    """"bool[1, 1, 256, 256]"."""
    return f"{str(t.dtype).removeprefix('torch.')}[{', '.join(str(d) for d in shape(t))}]"


def _tensors(**named: Any) -> dict[str, TensorInfo]:
    return {k: tensor_info(v) for k, v in named.items() if isinstance(v, torch.Tensor)}


def _int(x: Any) -> int | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, torch.Tensor):
        return None  # would need a device sync to read
    try:
        return int(x)
    except Exception:
        return None


def _float(x: Any) -> float | None:
    if x is None or isinstance(x, (bool, torch.Tensor)):
        return None
    try:
        return float(x)
    except Exception:
        return None


def _text(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return tensor_text(v)
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_text(x) for x in v) + ")"
    return str(v)


def _boring(v: Any) -> bool:
    if v is None or v is False:
        return True
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0:
        return True
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) and x == -1 for x in v)


#: Arguments worth keeping as text in CallInfo.extra when they are not at their neutral value.
_FLASH_EXTRAS = (
    "window_size", "window_size_left", "window_size_right", "softcap", "alibi_slopes", "deterministic",
    "return_attn_probs", "return_softmax_lse", "qv", "q_descale", "k_descale", "v_descale", "attention_chunk",
    "learnable_sink", "pack_gqa", "seqused_q", "seqused_k", "rotary_cos", "cache_batch_idx", "cache_leftpad",
    "block_table", "page_table", "sm_margin", "score_mod", "mask_mod", "aux_tensors",
)


def _extras(a: Args, names: tuple[str, ...] = _FLASH_EXTRAS) -> dict[str, str]:
    out = {}
    for name in names:
        v = a.get(name)
        if not _boring(v):
            out[name] = _text(v)
    num_splits = a.get("num_splits")
    if isinstance(num_splits, int) and num_splits > 1:
        out["num_splits"] = str(num_splits)
    return out


def _blhd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None) -> CallDescription:
    """The sizes of (B, L, H, D) inputs."""
    B, Lq, Hq, D = shape(q)[-4:]
    _, Lk, Hk, _ = shape(k)[-4:]
    return CallDescription(batch=B, heads_q=Hq, heads_kv=Hk, seqlen_q=Lq, seqlen_k=Lk, head_dim=D,
                           head_dim_v=shape(v)[-1] if v is not None else D)


def _varlen(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, cu_q: Any, max_q: Any,
            max_k: Any) -> CallDescription:
    """The sizes of (total, H, D) inputs with cumulative sequence lengths (B + 1,)."""
    qs = shape(q)
    out = CallDescription(heads_q=qs[-2], head_dim=qs[-1], seqlen_q=_int(max_q), seqlen_k=_int(max_k))
    if isinstance(cu_q, torch.Tensor) and cu_q.dim() == 1:
        out.batch = shape(cu_q)[0] - 1
    if k is not None:
        out.heads_kv = shape(k)[-2]
    if v is not None:
        out.head_dim_v = shape(v)[-1]
    return out


# --- torch --------------------------------------------------------------------------------------------------------

SDPA_PARAMS = (("query", _NO_DEFAULT), ("key", _NO_DEFAULT), ("value", _NO_DEFAULT), ("attn_mask", None),
               ("dropout_p", 0.0), ("is_causal", False), ("scale", None), ("enable_gqa", False))


def describe_sdpa(a: Args, result: Any) -> CallDescription:
    q, k, v, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
    qs, ks, vs = shape(q), shape(k), shape(v)
    out = CallDescription(
        layout="BHLD", tensors=_tensors(q=q, k=k, v=v, mask=mask),
        seqlen_q=qs[-2], seqlen_k=ks[-2], head_dim=qs[-1], head_dim_v=vs[-1], batch=qs[0] if len(qs) >= 3 else 1,
        causal=bool(a.get("is_causal")), dropout_p=_float(a.get("dropout_p")) or 0.0, scale=_float(a.get("scale")),
    )
    if len(qs) >= 4:
        out.heads_q, out.heads_kv = qs[-3], ks[-3]
        if len(qs) > 4:
            out.batch = math.prod(qs[:-3])
    if isinstance(mask, torch.Tensor):
        out.mask = tensor_text(mask)
    if a.get("enable_gqa"):
        out.extra["enable_gqa"] = "True"
    return out


NATIVE_MHA_PARAMS = (
    ("query", _NO_DEFAULT), ("key", _NO_DEFAULT), ("value", _NO_DEFAULT), ("embed_dim", _NO_DEFAULT),
    ("num_head", _NO_DEFAULT), ("qkv_weight", _NO_DEFAULT), ("qkv_bias", _NO_DEFAULT), ("proj_weight", _NO_DEFAULT),
    ("proj_bias", _NO_DEFAULT), ("mask", None), ("need_weights", True), ("average_attn_weights", True),
    ("mask_type", None),
)


def describe_native_mha(a: Args, result: Any) -> CallDescription:
    """nn.MultiheadAttention's inference fast path: (B, L, E) inputs, projections included."""
    q, k, v, mask = a["query"], a["key"], a["value"], a.get("mask")
    heads = _int(a.get("num_head"))
    qs, ks = shape(q), shape(k)
    E = qs[-1]
    out = CallDescription(
        layout="BLE", tensors=_tensors(q=q, k=k, v=v, mask=mask), batch=qs[0] if len(qs) == 3 else 1,
        seqlen_q=qs[-2], seqlen_k=ks[-2], heads_q=heads, heads_kv=heads,
        head_dim=E // heads if heads else None, head_dim_v=E // heads if heads else None, causal=None,
        extra={"includes": "qkv and output projections"},
    )
    if isinstance(mask, torch.Tensor):
        out.mask = tensor_text(mask)
    if a.get("mask_type") is not None:
        out.extra["mask_type"] = str(a.get("mask_type"))
    if a.get("need_weights"):
        out.extra["need_weights"] = "True"
    return out


def mha_records(args: tuple, kwargs: dict) -> bool:
    """F.multi_head_attention_forward computes attention itself only with need_weights=True; otherwise it calls
    scaled_dot_product_attention, which is then the call to record."""
    need_weights = kwargs["need_weights"] if "need_weights" in kwargs else (args[15] if len(args) > 15 else True)
    return bool(need_weights)


def describe_mha_python(a: Args, result: Any) -> CallDescription:
    """F.multi_head_attention_forward with need_weights=True: (L, B, E) or unbatched (L, E), projections included."""
    q, k, v = a["query"], a["key"], a["value"]
    heads = _int(a.get("num_heads"))
    qs, ks = shape(q), shape(k)
    E = qs[-1]
    mask, kpm = a.get("attn_mask"), a.get("key_padding_mask")
    out = CallDescription(
        layout="LBE", tensors=_tensors(q=q, k=k, v=v, mask=mask, key_padding_mask=kpm),
        batch=qs[1] if len(qs) == 3 else 1, seqlen_q=qs[0], seqlen_k=ks[0], heads_q=heads, heads_kv=heads,
        head_dim=E // heads if heads else None, head_dim_v=E // heads if heads else None,
        causal=bool(a.get("is_causal")), dropout_p=(_float(a.get("dropout_p")) or 0.0) if a.get("training") else 0.0,
        extra={"includes": "input and output projections", "need_weights": "True"},
    )
    if isinstance(mask, torch.Tensor):
        out.mask = tensor_text(mask)
    if isinstance(kpm, torch.Tensor):
        out.extra["key_padding_mask"] = tensor_text(kpm)
    return out


ATEN_FLASH_PARAMS = (
    ("query", _NO_DEFAULT), ("key", _NO_DEFAULT), ("value", _NO_DEFAULT), ("cum_seq_q", _NO_DEFAULT),
    ("cum_seq_k", _NO_DEFAULT), ("max_q", _NO_DEFAULT), ("max_k", _NO_DEFAULT), ("dropout_p", _NO_DEFAULT),
    ("is_causal", _NO_DEFAULT), ("return_debug_mask", _NO_DEFAULT),
)
ATEN_FLASH_KWONLY = (("scale", None), ("window_size_left", None), ("window_size_right", None),
                     ("seqused_k", None), ("alibi_slopes", None), ("block_table", None), ("num_splits", None))


def describe_aten_flash(a: Args, result: Any) -> CallDescription:
    """torch.ops.aten._flash_attention_forward: (B, L, H, D), or (total, H, D) with cum_seq_q."""
    q, k, v = a["query"], a["key"], a["value"]
    cu_q = a.get("cum_seq_q")
    if isinstance(cu_q, torch.Tensor):
        out = _varlen(q, k, v, cu_q, a.get("max_q"), a.get("max_k"))
        out.layout = "varlen"
    else:
        out = _blhd(q, k, v)
        out.layout = "BLHD"
    out.tensors = _tensors(q=q, k=k, v=v, cum_seq_q=cu_q, cum_seq_k=a.get("cum_seq_k"))
    out.causal, out.dropout_p = bool(a.get("is_causal")), _float(a.get("dropout_p")) or 0.0
    out.scale, out.extra = _float(a.get("scale")), _extras(a)
    return out


# --- flash-attn 2, FA3 (flash_attn_interface), FA4 (flash_attn.cute) -----------------------------------------------


def _flash_common(out: CallDescription, a: Args) -> CallDescription:
    """`out` with the arguments every flash-attn function takes (causal, dropout_p, softmax_scale, the extras)."""
    out.causal, out.dropout_p = bool(a.get("causal")), _float(a.get("dropout_p")) or 0.0
    out.scale, out.extra = _float(a.get("softmax_scale")), _extras(a)
    return out


def describe_flash_func(a: Args, result: Any) -> CallDescription:
    """flash_attn_func(q, k, v, ...): (B, L, H, D). FA4's varlen form passes (total, H, D) with cu_seqlens_q."""
    q, k, v = a["q"], a["k"], a["v"]
    if q.dim() == 3:
        return describe_flash_varlen(a, result)
    out = _flash_common(_blhd(q, k, v), a)
    out.layout, out.tensors = "BLHD", _tensors(q=q, k=k, v=v)
    return out


def describe_flash_qkvpacked(a: Args, result: Any) -> CallDescription:
    """qkv (B, L, 3, H, D); FA3 also takes (B, L, Hq + 2 Hk, D) with num_heads_q."""
    qkv = a["qkv"]
    s = shape(qkv)
    out = _flash_common(CallDescription(layout="qkvpacked", tensors=_tensors(qkv=qkv), batch=s[0], seqlen_q=s[1],
                                        seqlen_k=s[1], head_dim=s[-1], head_dim_v=s[-1]), a)
    if len(s) == 5:
        out.heads_q, out.heads_kv = s[3], s[3]
    elif len(s) == 4:
        hq = _int(a.get("num_heads_q")) or s[2] // 3
        out.heads_q, out.heads_kv = hq, (s[2] - hq) // 2
    return out


def describe_flash_kvpacked(a: Args, result: Any) -> CallDescription:
    """q (B, Lq, H, D), kv (B, Lk, 2, Hk, D)."""
    q, kv = a["q"], a["kv"]
    qs, kvs = shape(q), shape(kv)
    return _flash_common(CallDescription(layout="kvpacked", tensors=_tensors(q=q, kv=kv), batch=qs[0],
                                         seqlen_q=qs[1], seqlen_k=kvs[1], heads_q=qs[2], heads_kv=kvs[3],
                                         head_dim=qs[3], head_dim_v=kvs[4]), a)


def describe_flash_varlen(a: Args, result: Any) -> CallDescription:
    """q (total_q, H, D), k/v (total_k, Hk, D), cu_seqlens_q/k (B + 1,), max_seqlen_q/k."""
    q, k, v = a["q"], a["k"], a["v"]
    cu_q, cu_k = a.get("cu_seqlens_q"), a.get("cu_seqlens_k")
    out = _flash_common(_varlen(q, k, v, cu_q, a.get("max_seqlen_q"), a.get("max_seqlen_k")), a)
    out.layout, out.tensors = "varlen", _tensors(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out.extra["total_q"] = str(shape(q)[0])
    return out


def describe_flash_varlen_qkvpacked(a: Args, result: Any) -> CallDescription:
    """qkv (total, 3, H, D), cu_seqlens (B + 1,), max_seqlen."""
    qkv, cu = a["qkv"], a.get("cu_seqlens")
    s = shape(qkv)
    out = _flash_common(CallDescription(
        layout="varlen-qkvpacked", tensors=_tensors(qkv=qkv, cu_seqlens=cu), heads_q=s[-2], heads_kv=s[-2],
        head_dim=s[-1], head_dim_v=s[-1], seqlen_q=_int(a.get("max_seqlen")), seqlen_k=_int(a.get("max_seqlen"))), a)
    if isinstance(cu, torch.Tensor):
        out.batch = shape(cu)[0] - 1
    out.extra["total_q"] = str(s[0])
    return out


def describe_flash_varlen_kvpacked(a: Args, result: Any) -> CallDescription:
    """q (total_q, H, D), kv (total_k, 2, Hk, D)."""
    q, kv = a["q"], a["kv"]
    cu_q, cu_k = a.get("cu_seqlens_q"), a.get("cu_seqlens_k")
    kvs = shape(kv)
    out = _flash_common(_varlen(q, None, None, cu_q, a.get("max_seqlen_q"), a.get("max_seqlen_k")), a)
    out.layout = "varlen-kvpacked"
    out.tensors = _tensors(q=q, kv=kv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out.heads_kv, out.head_dim_v = kvs[-2], kvs[-1]
    out.extra["total_q"] = str(shape(q)[0])
    return out


def describe_flash_kvcache(a: Args, result: Any) -> CallDescription:
    """q (B, Lq, H, D), k_cache/v_cache (B, L_cache, Hk, D) or paged (blocks, page, Hk, D) with a block table."""
    q, kc, vc = a["q"], a["k_cache"], a["v_cache"]
    k_new, v_new = a.get("k"), a.get("v")
    table = a.get("block_table")
    if table is None:
        table = a.get("page_table")
    qs, ks = shape(q), shape(kc)
    seqlen_k = ks[1]
    if isinstance(table, torch.Tensor) and table.dim() == 2:
        seqlen_k = shape(table)[1] * ks[1]
    lens = a.get("cache_seqlens")
    out = _flash_common(CallDescription(
        layout="kvcache", tensors=_tensors(q=q, k_cache=kc, v_cache=vc, k=k_new, v=v_new, cache_seqlens=lens,
                                           block_table=table),
        batch=qs[0], seqlen_q=qs[1], seqlen_k=seqlen_k, heads_q=qs[2], heads_kv=ks[2], head_dim=qs[3],
        head_dim_v=shape(vc)[-1]), a)
    if isinstance(k_new, torch.Tensor):
        out.extra["new_tokens"] = str(shape(k_new)[1])
    if lens is not None and not isinstance(lens, torch.Tensor):
        out.extra["cache_seqlens"] = str(lens)
    return out


# --- xformers -----------------------------------------------------------------------------------------------------


def describe_xformers(a: Args, result: Any) -> CallDescription:
    """query (B, M, H, K) [BMHK = BLHD], (B, M, K), or (B, M, G, H, K) for grouped (GQA) attention, where k and v
    are expanded over H (stride 0)."""
    q, k, v = a["query"], a["key"], a["value"]
    bias = a.get("attn_bias")
    qs, ks, vs = shape(q), shape(k), shape(v)
    out = CallDescription(layout="BLHD", tensors=_tensors(q=q, k=k, v=v, mask=bias), batch=qs[0], seqlen_q=qs[1],
                          seqlen_k=ks[1], head_dim=qs[-1], head_dim_v=vs[-1], dropout_p=_float(a.get("p")) or 0.0,
                          scale=_float(a.get("scale")), causal=False)
    kstride = list(k.stride()) if k.layout == torch.strided else []
    if len(qs) == 4:
        out.heads_q = qs[2]
        out.heads_kv = 1 if (kstride and kstride[2] == 0 and ks[2] > 1) else ks[2]
    elif len(qs) == 5:
        out.heads_q = qs[2] * qs[3]
        out.heads_kv = ks[2] * (1 if (kstride and kstride[3] == 0 and ks[3] > 1) else ks[3])
        out.extra["layout"] = "BMGHK"
    else:
        out.layout = "BLD"
    if isinstance(bias, torch.Tensor):
        out.mask = tensor_text(bias)
    elif bias is not None:
        name = type(bias).__name__
        out.extra["attn_bias"] = name
        out.causal = "Causal" in name or "LowerTriangular" in name
    if a.get("op") is not None:
        out.extra["op"] = _text(a.get("op"))
    return out


# --- the table ----------------------------------------------------------------------------------------------------

_FA2_MODULES = ("flash_attn.flash_attn_interface", "flash_attn")
_FA2 = (
    ("flash_attn_func", describe_flash_func),
    ("flash_attn_qkvpacked_func", describe_flash_qkvpacked),
    ("flash_attn_kvpacked_func", describe_flash_kvpacked),
    ("flash_attn_varlen_func", describe_flash_varlen),
    ("flash_attn_varlen_qkvpacked_func", describe_flash_varlen_qkvpacked),
    ("flash_attn_varlen_kvpacked_func", describe_flash_varlen_kvpacked),
    ("flash_attn_with_kvcache", describe_flash_kvcache),
)
_FA3 = (
    ("flash_attn_func", describe_flash_func),
    ("flash_attn_qkvpacked_func", describe_flash_qkvpacked),
    ("flash_attn_varlen_func", describe_flash_varlen),
    ("flash_attn_with_kvcache", describe_flash_kvcache),
)
_FA4_MODULES = ("flash_attn.cute.interface", "flash_attn.cute")
_FA4 = (
    ("flash_attn_func", describe_flash_func),
    ("flash_attn_varlen_func", describe_flash_varlen),
)
_XFORMERS_MODULES = ("xformers.ops.fmha", "xformers.ops")

# --- torch FlexAttention -------------------------------------------------------------------------------------------


def _function_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def describe_flex(a: Args, result: Any) -> CallDescription:
    """torch.nn.attention.flex_attention.flex_attention(query, key, value, score_mod, block_mask, scale, enable_gqa,
    ...): (B, H, L, D); the score_mod and the block mask's mask_mod are user functions, named in extra."""
    q, k, v = a["query"], a["key"], a["value"]
    qs, ks, vs = shape(q), shape(k), shape(v)
    out = CallDescription(layout="BHLD", tensors=_tensors(q=q, k=k, v=v), batch=qs[0], heads_q=qs[1],
                          heads_kv=ks[1], seqlen_q=qs[2], seqlen_k=ks[2], head_dim=qs[3], head_dim_v=vs[3],
                          scale=_float(a.get("scale")), causal=None)
    score_mod, block_mask = a.get("score_mod"), a.get("block_mask")
    if score_mod is not None:
        out.extra["score_mod"] = _function_name(score_mod)
    if block_mask is not None:
        lengths = getattr(block_mask, "seq_lengths", None)
        block = getattr(block_mask, "BLOCK_SIZE", None)
        out.extra["block_mask"] = f"seq_lengths={_text(tuple(lengths or ()))} block={_text(tuple(block or ()))}"
        mask_mod = getattr(block_mask, "mask_mod", None)
        if mask_mod is not None:
            out.extra["mask_mod"] = _function_name(mask_mod)
    if a.get("enable_gqa"):
        out.extra["enable_gqa"] = "True"
    return out


# --- Hugging Face transformers ------------------------------------------------------------------------------------
#
# Every attention of a transformers model goes through one signature, `fn(module, query, key, value,
# attention_mask, *, dropout, scaling, ...)` on (B, H, L, D): the model's own module-level eager function
# (`eager_attention_forward`, `vision_eager_attention_forward`, ...), or what `AttentionInterface` holds for
# `config._attn_implementation` ("sdpa", "flash_attention_2", "flex_attention", functions users register).

HF_MODELS_PACKAGE = "transformers.models."
HF_INTERFACE_MODULE = "transformers.modeling_utils"
_HF_ATTENTION_PARAMS = (("module",), ("query", "query_states"), ("key", "key_states"), ("value", "value_states"),
                        ("attention_mask",))


def is_hf_attention_function(module_name: str, name: str, fn: Any) -> bool:
    """A function a transformers model module defines (not imports) whose name ends in `attention_forward` and whose
    parameters start (module, query, key, value, attention_mask): the model's attention computed in one call."""
    if not name.endswith("attention_forward") or not inspect.isfunction(fn) or fn.__module__ != module_name:
        return False
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return len(params) >= len(_HF_ATTENTION_PARAMS) and all(
        p in allowed for p, allowed in zip(params, _HF_ATTENTION_PARAMS))


def _arg(a: Args, *names: str) -> Any:
    for n in names:
        if n in a:
            return a[n]
    return None


def describe_hf(a: Args, result: Any) -> CallDescription:
    """transformers' attention signature: q, k, v (B, H, L, D), k/v with fewer heads under GQA (the function expands
    them). Causal when the model says so and no mask is passed (what HF's sdpa and flash paths then run); None when
    a mask is passed (the mask decides)."""
    q, k, v = _arg(a, "query", "query_states"), _arg(a, "key", "key_states"), _arg(a, "value", "value_states")
    mask, module = a.get("attention_mask"), a.get("module")
    qs, ks, vs = shape(q), shape(k), shape(v)
    out = CallDescription(
        layout="BHLD", tensors=_tensors(q=q, k=k, v=v, mask=mask), batch=qs[0], heads_q=qs[1], heads_kv=ks[1],
        seqlen_q=qs[2], seqlen_k=ks[2], head_dim=qs[3], head_dim_v=vs[3], dropout_p=_float(a.get("dropout")) or 0.0,
        scale=_float(a.get("scaling")), causal=None,
    )
    if isinstance(mask, torch.Tensor):
        out.mask = tensor_text(mask)
    elif mask is not None:
        out.extra["attention_mask"] = type(mask).__name__  # flex_attention's BlockMask
    elif qs[2] > 1:
        causal = a.get("is_causal")
        causal = getattr(module, "is_causal", None) if causal is None else causal
        out.causal = causal if isinstance(causal, bool) else None
    for name in ("sliding_window", "softcap"):
        if not _boring(a.get(name)):
            out.extra[name] = _text(a.get(name))
    config = getattr(module, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if isinstance(implementation, str):
        out.extra["attn_implementation"] = implementation
    return out


def hf_function_entry(module_name: str, name: str) -> EntryPoint:
    """A model module's own attention function (attn_implementation="eager", and what a model calls directly)."""
    return EntryPoint(f"hf.{name}", "transformers", (module_name,), name, describe_hf, returns_lse=False)


#: The library whose kernels each attention implementation transformers registers runs (its CPU backend, when no
#: kernel name tells, is read from it in analysis).
_HF_IMPLEMENTATION_LIBRARY = {
    "sdpa": "torch", "flex_attention": "torch", "flash_attention_2": "flash_attn",
    "flash_attention_3": "flash_attn_interface", "flash_attention_4": "flash_attn.cute", "paged|eager": "transformers",
}


def hf_implementation_entry(key: str, fn: Any) -> EntryPoint:
    """What `AttentionInterface` holds under `key`, named after the key (the attn_implementation the user chose)."""
    module = getattr(fn, "__module__", None) or ""
    # "user": a function the user registered
    library = _HF_IMPLEMENTATION_LIBRARY.get(key, "transformers") if module.startswith("transformers.") else "user"
    return EntryPoint(f"hf.{key}", library, (), key, describe_hf, returns_lse=False)


ENTRY_POINTS: tuple[EntryPoint, ...] = (
    EntryPoint("sdpa", "torch", ("torch.nn.functional",), "scaled_dot_product_attention", describe_sdpa,
               params=SDPA_PARAMS, returns_lse=False),
    EntryPoint("mha", "torch", ("torch.nn.functional",), "multi_head_attention_forward", describe_mha_python,
               record_if=mha_records, returns_lse=False),
    EntryPoint("mha_fastpath", "torch", ("torch",), "_native_multi_head_attention", describe_native_mha,
               params=NATIVE_MHA_PARAMS, returns_lse=False),
    EntryPoint("aten._flash_attention_forward", "torch", ("torch.ops.aten",), "_flash_attention_forward",
               describe_aten_flash, params=ATEN_FLASH_PARAMS, kwonly=ATEN_FLASH_KWONLY),
    *(EntryPoint(name, "flash_attn", _FA2_MODULES, name, d) for name, d in _FA2),
    *(EntryPoint(f"fa3.{name}", "flash_attn_interface", ("flash_attn_interface",), name, d) for name, d in _FA3),
    *(EntryPoint(f"fa4.{name}", "flash_attn.cute", _FA4_MODULES, name, d) for name, d in _FA4),
    EntryPoint("xformers.memory_efficient_attention", "xformers", _XFORMERS_MODULES, "memory_efficient_attention",
               describe_xformers),
    EntryPoint("xformers.memory_efficient_attention_forward", "xformers", _XFORMERS_MODULES,
               "memory_efficient_attention_forward", describe_xformers),
    EntryPoint("flex_attention", "torch", ("torch.nn.attention.flex_attention",), "flex_attention", describe_flex),
)

#: Where TorchScript should see the aten op instead of the Python wrapper (it cannot compile `*args`).
TORCHSCRIPT_BUILTINS = {
    "scaled_dot_product_attention": "aten::scaled_dot_product_attention",
    "_native_multi_head_attention": "aten::_native_multi_head_attention",
}


def first_tensor(x: Any) -> torch.Tensor | None:
    """The attention output: the result itself, or the first tensor of a tuple result."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for item in x:
            if isinstance(item, torch.Tensor):
                return item
    return None


def describe_call(entry: EntryPoint, binder: Binder, args: tuple, kwargs: dict, result: Any) -> CallDescription:
    """One call described: the entry point's own reading plus the output (and lse) and the GQA ratio."""
    described = entry.describe(binder.bind(args, kwargs), result)
    out = first_tensor(result)
    if out is not None:
        described.tensors["out"] = tensor_info(out)
        if (entry.returns_lse and isinstance(result, (tuple, list)) and len(result) > 1
                and isinstance(result[1], torch.Tensor)):
            described.tensors["lse"] = tensor_info(result[1])
    hq, hk = described.heads_q, described.heads_kv
    if isinstance(hq, int) and isinstance(hk, int) and hq > 0 and hk > 0:
        described.gqa_ratio = hq / hk
    return described
