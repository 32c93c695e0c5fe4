"""The seed case: FlashAttention looked 3-4x slower than SDPA because its wrapper copied q, k, v and the output.

Three ways to run the same attention on (B, H, L, D) tensors, as a model that was written for SDPA holds them:

  seed    the wrapper people write to call FlashAttention-2, which wants (B, L, H, D): transpose(1, 2).contiguous()
          on q, k, v, and on the output back to (B, H, L, D) - four full copies around the kernel;
  native  FlashAttention-2 on tensors that are already (B, L, H, D): no copies;
  sdpa    torch.nn.functional.scaled_dot_product_attention on the (B, H, L, D) tensors (cuDNN on an H100).

FlashAttention-2 is the flash-attn package when installed, else PyTorch's own copy of the same kernels. On a
machine without CUDA the example still runs (the "flash" path becomes SDPA on (B, L, H, D) views), so
`attnprof trace examples/seed_case.py` works anywhere.

    python examples/seed_case.py --variant all --steps 10 [--backward]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

try:  # the real package, when someone built it
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None


def flash_attention(q, k, v, causal=False):
    """FlashAttention-2 on (B, L, H, D) tensors."""
    if flash_attn_func is not None and q.is_cuda:
        return flash_attn_func(q, k, v, causal=causal)
    if q.is_cuda:
        out = torch.ops.aten._flash_attention_forward(q, k, v, None, None, q.shape[1], k.shape[1], 0.0, causal, False)
        return out[0]
    # CPU stand-in: the same maths on (B, H, L, D) views, no copies
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
    ).transpose(1, 2)


def seed_wrapper(q, k, v, causal=False):
    """The seed's mistake: q, k, v arrive as (B, H, L, D) and are copied to (B, L, H, D), and the output back."""
    q = q.transpose(1, 2).contiguous()
    k = k.transpose(1, 2).contiguous()
    v = v.transpose(1, 2).contiguous()
    out = flash_attention(q, k, v, causal)
    return out.transpose(1, 2).contiguous()


def sdpa(q, k, v, causal=False):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=["seed", "native", "sdpa", "all"], default="all")
    p.add_argument("--shape", default=None, help="B,H,L,D (default 12,64,256,64 on CUDA, 2,4,128,32 on CPU)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="default fp16 on CUDA, fp32 on CPU")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--backward", action="store_true", help="a training step: backward through each variant")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = args.shape or ("12,64,256,64" if device == "cuda" else "2,4,128,32")
    B, H, L, D = (int(x) for x in shape.split(","))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device == "cuda" else "fp32")]
    torch.manual_seed(0)

    def make(layout):
        size = (B, H, L, D) if layout == "BHLD" else (B, L, H, D)
        return [torch.randn(size, device=device, dtype=dtype, requires_grad=args.backward) for _ in range(3)]

    bhld = make("BHLD")
    blhd = make("BLHD")
    variants = ["seed", "native", "sdpa"] if args.variant == "all" else [args.variant]
    for _ in range(args.steps):
        for name in variants:
            if name == "seed":
                out = seed_wrapper(*bhld, causal=args.causal)
            elif name == "native":
                out = flash_attention(*blhd, causal=args.causal)
            else:
                out = sdpa(*bhld, causal=args.causal)
            if args.backward:
                out.square().mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"ran {args.steps} steps of {', '.join(variants)} on {tuple((B, H, L, D))} {dtype} ({device})")


if __name__ == "__main__":
    main()
