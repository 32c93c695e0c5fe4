"""Two attention calls back to back: the seed's wrapper, then SDPA on other tensors of the same shape.

The wrapper copies q, k, v to (B, L, H, D) and its output back to (B, H, L, D); the SDPA call right after it
makes no copy at all. The wrapper's output copy and SDPA's inputs sit side by side in the op stream and look
alike (same shapes, same strides): a profiler that attributes copies by resemblance charges the wrapper's output
copy to SDPA. attnprof attributes them by data identity.

    python examples/back_to_back.py --steps 10 [--order sdpa-first]
"""
from __future__ import annotations

import argparse

import torch

from seed_case import sdpa, seed_wrapper


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default=None, help="B,H,L,D (default 12,64,256,64 on CUDA, 2,4,128,32 on CPU)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--order", choices=["wrapper-first", "sdpa-first"], default="wrapper-first")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    B, H, L, D = (int(x) for x in (args.shape or ("12,64,256,64" if device == "cuda" else "2,4,128,32")).split(","))
    torch.manual_seed(0)
    first = [torch.randn(B, H, L, D, device=device, dtype=dtype) for _ in range(3)]
    second = [torch.randn(B, H, L, D, device=device, dtype=dtype) for _ in range(3)]
    for _ in range(args.steps):
        if args.order == "wrapper-first":
            a = seed_wrapper(*first)
            b = sdpa(*second)
        else:
            b = sdpa(*second)
            a = seed_wrapper(*first)
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"ran {args.steps} steps ({args.order}) on {(B, H, L, D)} {dtype} ({device}); {float(a.sum() + b.sum()):.3f}")


if __name__ == "__main__":
    main()
