"""Attention backends by family, the limits of the fused kernels, and the GPU generation that changes the advice."""
from __future__ import annotations

import re

from attnprof.analysis.records import Report

#: Backends that are a fallback from flash / cuDNN on a GPU (math also on CPU, against cpu-flash).
FALLBACK_BACKENDS = frozenset(("math", "efficient"))
#: Backends of hand-written attention (analysis/manual.py)
UNFUSED_BACKENDS = frozenset(("manual", "manual-fused"))
#: Hugging Face's eager attention: unfused like hand-written attention, named by its op, not by manual.py
EAGER_BACKEND = "eager"
#: Backends that take (B, L, H, D) tensors: copying to that layout is what the seed's wrapper did.
BLHD_BACKENDS = frozenset(("flash", "flash-attn2", "fa3", "fa4"))
FA2_BACKENDS = frozenset(("flash", "flash-attn2"))

#: The largest head dim the flash kernels (PyTorch's and flash-attn 2/3) are compiled for.
MAX_FLASH_HEAD_DIM = 256
#: The flash and cuDNN kernels load q, k, v in 16-byte vectors: 8 fp16 / bf16 elements of the head dim at a time.
HEAD_DIM_MULTIPLE = 8
#: Input dtypes the GPU flash and cuDNN kernels do not take (they run fp16 / bf16 only); PyTorch's CPU flash
#: kernel takes fp32 too.
GPU_FLASH_UNSUPPORTED_DTYPES = frozenset(("float32", "float64"))

#: Compute capability major version of Hopper (H100, H200, GH200): where FlashAttention-2 lacks wgmma and TMA
HOPPER_CAPABILITY_PREFIX = "9."
#: Hopper device names, for reports without a recorded compute capability
_HOPPER_RE = re.compile(r"\b(H100|H200|H800|H20|GH200)\b")


def is_hopper(report: Report) -> bool:
    capability = (report.run or {}).get("device_capability")
    if capability:
        return str(capability).startswith(HOPPER_CAPABILITY_PREFIX)
    return bool(_HOPPER_RE.search(report.device or ""))
