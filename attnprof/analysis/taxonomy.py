"""What names mean: attention ops, layout-prep ops, views, kernel categories, backends, dtype sizes.

Everything attnprof knows about PyTorch, flash-attn, cuDNN and xformers naming lives here, so the rest of the
analysis reasons about categories, not strings.
"""
from __future__ import annotations

import re
from functools import lru_cache

# --- host ops -------------------------------------------------------------------------------------------------

#: Forward attention ops, outermost first. The first one found on a thread, not nested in another, is a call.
ATTENTION_FWD_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_native_multi_head_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_attention_math_for_mps",
    "aten::_scaled_dot_product_fused_attention_overrideable",
    "aten::_flash_attention_forward",
    "aten::_efficient_attention_forward",
    "aten::_cudnn_attention_forward",
    "flash_attn::_flash_attn_forward",
    "flash_attn::_flash_attn_varlen_forward",
    "flash_attn::_flash_attn_forward_kvcache",
    "flash_attn_3::fwd",
    "flash_attn_3::_flash_attn_forward",
    "xformers::efficient_attention_forward_cutlass",
    "xformers_flash::flash_fwd",
    "xformers_flash3::flash_fwd",
)
ATTENTION_BWD_OPS = (
    "aten::_scaled_dot_product_flash_attention_backward",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_efficient_attention_backward",
    "aten::_scaled_dot_product_cudnn_attention_backward",
    "aten::_scaled_dot_product_fused_attention_overrideable_backward",
    "aten::_flash_attention_backward",
    "aten::_efficient_attention_backward",
    "aten::_cudnn_attention_backward",
    "flash_attn::_flash_attn_backward",
    "flash_attn::_flash_attn_varlen_backward",
    "flash_attn_3::bwd",
    "flash_attn_3::_flash_attn_backward",
    "xformers::efficient_attention_backward_cutlass",
    "xformers_flash::flash_bwd",
)
_FWD_SET = frozenset(ATTENTION_FWD_OPS)
_BWD_SET = frozenset(ATTENTION_BWD_OPS)
# Autograd nodes of attention ops run in backward: evaluate_function: <Node>Backward0
_ATTENTION_NODE_RE = re.compile(
    r"(ScaledDotProduct\w*Backward|FlashAttention\w*Backward|EfficientAttention\w*Backward|CudnnAttention\w*Backward"
    r"|FlashAttn\w*Backward|FlashAttnFunc\w*Backward|MemoryEfficientAttention\w*Backward|\bFmha\w*Backward)"
)
AUTOGRAD_NODE_PREFIX = "autograd::engine::evaluate_function: "


#: inductor's generated kernels: in a GPU trace each is also a host op of its own name (CPU traces do not show them)
_GENERATED_RE = re.compile(r"^(triton_(poi|per|red|tem)_|cpp_fused_)")
#: FlexAttention compiled: inductor's Triton template kernel, named after its origin op (flex_attention,
#: flex_attention_backward; flex decoding's template too)
_FLEX_TEMPLATE_RE = re.compile(r"^triton_tem_fused\w*flex_(attention|decoding)")


def is_generated_kernel(name: str) -> bool:
    return bool(_GENERATED_RE.match(name))


def _is_flex_template(name: str) -> bool:
    return bool(_FLEX_TEMPLATE_RE.match(name))


def is_attention_fwd_op(name: str) -> bool:
    return name in _FWD_SET or (_is_flex_template(name) and "flex_attention_backward" not in name)


def is_attention_bwd_op(name: str) -> bool:
    if name in _BWD_SET or (_is_flex_template(name) and "flex_attention_backward" in name):
        return True
    return name.startswith(AUTOGRAD_NODE_PREFIX) and bool(_ATTENTION_NODE_RE.search(name))


#: Ops that never move data: skipped when walking from an attention call to the copies that feed it.
VIEW_OPS = frozenset(
    "aten::" + n
    for n in (
        "view transpose permute t as_strided unsqueeze squeeze expand slice select narrow split split_with_sizes chunk "
        "unbind alias detach _unsafe_view unflatten view_as expand_as lift_fresh numpy_T movedim swapaxes swapdims "
        "empty empty_like empty_strided resolve_conj resolve_neg _reshape_alias diagonal real imag unfold"
    ).split()
)
#: Ops that can copy to change layout, dtype or shape: the "layout prep" of the seed case and its relatives.
PREP_OPS = frozenset(
    "aten::" + n
    for n in (
        "contiguous clone copy_ _to_copy to type_as reshape flatten repeat repeat_interleave constant_pad_nd pad "
        "cat stack index_select expand_copy _unsafe_index"
    ).split()
)
#: Ops that, when launching a kernel, launch a copy.
COPY_OPS = frozenset(
    "aten::" + n
    for n in "copy_ clone contiguous _to_copy to reshape flatten cat stack repeat repeat_interleave index_select".split()
)
#: Ops that reshape data without changing its element count (repeat-like ops and pads change it).
NUMEL_PRESERVING_PREP = frozenset(
    "aten::" + n for n in "contiguous clone copy_ _to_copy to type_as reshape flatten".split()
)


#: The pieces of hand-written attention, softmax(q @ kᵀ * scale + mask) @ v (see manual.py).
GEMM_OPS = frozenset(("aten::matmul", "aten::bmm", "aten::einsum", "aten::baddbmm"))
SOFTMAX_OPS = frozenset(("aten::softmax", "aten::_softmax", "aten::_safe_softmax", "aten::special_softmax"))
#: What a torch.compile'd graph looks like in a trace: the forward runs inside CompiledFunction, its backward inside
#: the autograd node CompiledFunctionBackward, both numbered with the same sequence number.
COMPILED_FWD = "CompiledFunction"
COMPILED_BWD = "CompiledFunctionBackward"


def is_gemm_op(name: str) -> bool:
    return name in GEMM_OPS


#: The matmul work of hand-written attention: the GEMM ops (CPU), their autograd nodes, and GEMM kernels (GPU:
#: cuBLAS / CUTLASS names; cuBLAS's Hopper kernels are called nvjet_*).
_GEMM_WORK_RE = re.compile(r"^aten::(matmul|bmm|einsum|baddbmm|mm)$|(Bmm|Mm|Baddbmm)Backward|gemm|nvjet_|cutlass",
                           re.I)


def is_gemm_work(name: str) -> bool:
    return bool(_GEMM_WORK_RE.search(name))


def is_softmax_op(name: str) -> bool:
    return name in SOFTMAX_OPS


def is_view_op(name: str) -> bool:
    return name in VIEW_OPS


def is_prep_op(name: str) -> bool:
    return name in PREP_OPS


def is_copy_op(name: str) -> bool:
    return name in COPY_OPS


# --- device activity ------------------------------------------------------------------------------------------

_COPY_KERNEL_RE = re.compile(
    r"direct_copy_kernel|copy_kernel|CatArrayBatchedCopy|[Mm]emcpy|transpose|indexSelect|index_select|"
    r"_to_copy|copy_device_to_device"
)


#: inductor names a generated kernel after the ops fused into it: triton_poi_fused_clone_transpose_view_4
_GENERATED_OPS_RE = re.compile(r"^(?:triton_(?:poi|per|red|tem)_fused_|cpp_fused_)(?P<ops>.*?)(?:_\d+)?$")
#: the words of ops that only move or view data (_to_copy, _unsafe_view, as_strided, constant_pad_nd, ...)
_LAYOUT_WORDS = frozenset(
    "clone transpose view permute to copy contiguous reshape unsafe expand unsqueeze squeeze slice select split "
    "cat stack t alias as strided constant pad nd index".split())


@lru_cache(maxsize=1 << 16)  # a trace repeats a few hundred kernel names over and over: each matched once
def is_copy_kernel_name(name: str) -> bool:
    generated = _GENERATED_OPS_RE.match(name)
    if generated:  # a copy when everything fused into it only moves data; a softmax or matmul fused in is compute
        words = [w for w in generated["ops"].split("_") if w]
        return bool(words) and all(w in _LAYOUT_WORDS for w in words)
    return bool(_COPY_KERNEL_RE.search(name))


#: Backends, checked in this order (cuDNN's Hopper SDPA kernels contain "flash": never match on that alone).
_BACKEND_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    # inductor names a template kernel triton_tem_fused_<origin ops>: flex_attention, flex_attention_backward
    # (flex decoding too). Its triton_poi_/triton_red_ kernels are pointwise work around an op, not attention.
    ("flex", re.compile(r"triton_tem_\w*flex_(attention|decoding)")),
    ("cudnn", re.compile(r"cudnn|fort_native_sdpa|sdpa_sm\d+|_sdpa_", re.I)),
    ("fa4", re.compile(r"FlashAttentionForwardSm\d+|FlashAttentionBackwardSm\d+|flash_attn\.cute|flash_attn_cute")),
    ("fa3", re.compile(r"FlashAttnFwdSm90|FlashAttnBwdSm90|flash::enable_sm90|flash_attn_3|FlashAttnFwdCombine")),
    ("flash", re.compile(r"pytorch_flash::")),
    ("flash-attn2", re.compile(r"flash::flash_(fwd|bwd)|flash_fwd_kernel|flash_bwd_|flash_fwd_splitkv")),
    ("efficient", re.compile(r"fmha_cutlass|efficient_attention|AttentionKernel|AttentionBackwardKernel|fmha_")),
)

_OP_BACKEND = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_backward": "flash",
    "aten::_flash_attention_forward": "flash",
    "aten::_flash_attention_backward": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_efficient_attention_backward": "efficient",
    "aten::_efficient_attention_forward": "efficient",
    "aten::_efficient_attention_backward": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_cudnn_attention_backward": "cudnn",
    "aten::_cudnn_attention_forward": "cudnn",
    "aten::_cudnn_attention_backward": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "cpu-flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "cpu-flash",
    "flash_attn::_flash_attn_forward": "flash-attn2",
    "flash_attn::_flash_attn_backward": "flash-attn2",
    "flash_attn::_flash_attn_varlen_forward": "flash-attn2",
    "flash_attn::_flash_attn_varlen_backward": "flash-attn2",
    "flash_attn::_flash_attn_forward_kvcache": "flash-attn2",
    "flash_attn_3::fwd": "fa3",
    "flash_attn_3::bwd": "fa3",
    "flash_attn_3::_flash_attn_forward": "fa3",
    "flash_attn_3::_flash_attn_backward": "fa3",
    "xformers::efficient_attention_forward_cutlass": "efficient",
    "xformers::efficient_attention_backward_cutlass": "efficient",
}

_LIBRARY_BACKEND = {"flash_attn": "flash-attn2", "flash_attn_interface": "fa3", "flash_attn.cute": "fa4",
                    "transformers": "eager"}  # HF eager: plain matmul + softmax, no fused kernel


@lru_cache(maxsize=1 << 16)
def backend_from_kernel(name: str) -> str | None:
    for backend, pattern in _BACKEND_PATTERNS:
        if pattern.search(name):
            return backend
    return None


def is_attention_kernel(name: str) -> bool:
    """A fused attention kernel (flash, cuDNN, efficient, FlexAttention's generated Triton template)."""
    return backend_from_kernel(name) is not None


def backend_from_ops(op_names: list[str]) -> str | None:
    """The innermost known attention op decides (sdpa -> _scaled_dot_product_cudnn_attention -> "cudnn")."""
    found = None
    for n in op_names:
        if n in _OP_BACKEND:
            found = _OP_BACKEND[n]
    if found is None and any(n == "aten::scaled_dot_product_attention" for n in op_names):
        found = "math"  # sdpa that dispatched to no fused op ran the math fallback
    return found


def backend_from_library(library: str | None) -> str | None:
    return _LIBRARY_BACKEND.get(library or "")


# --- dtypes ---------------------------------------------------------------------------------------------------

_ITEMSIZE = {
    "c10::Half": 2, "c10::BFloat16": 2, "float": 4, "double": 8, "long int": 8, "int": 4, "short int": 2,
    "signed char": 1, "unsigned char": 1, "bool": 1, "c10::Float8_e4m3fn": 1, "c10::Float8_e5m2": 1,
    "c10::complex<float>": 8, "c10::complex<double>": 16,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int64": 8, "int32": 4, "int8": 1, "uint8": 1,
}
_DTYPE_NAME = {"c10::Half": "float16", "c10::BFloat16": "bfloat16", "float": "float32", "double": "float64",
               "long int": "int64", "int": "int32", "bool": "bool"}


def itemsize(type_name: str) -> int:
    return _ITEMSIZE.get(type_name, 0)


def dtype_name(type_name: str) -> str:
    return _DTYPE_NAME.get(type_name, type_name)
