"""Independent CUDA-event timings of the seed case, measured in the same run as the reference traces.

Each figure is the median over many back-to-back repetitions of a CUDA event pair recorded around one call of
exactly the code a traced site runs, after warm-up: the ground truth the tests hold attnprof's split against.

    python traces/h100/ground_truth.py OUT.json [--shape 12,64,256,64] [--dtype fp16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "examples"), str(ROOT)]
from seed_case import flash_attention, seed_wrapper  # noqa: E402

from attnprof.capture.bench import elapsed_us, event_pair, event_times_us  # noqa: E402


def event_median_us(fn, reps: int = 300, warmup: int = 30) -> float:
    return statistics.median(event_times_us(fn, reps, warmup))


def loop_spans_us(bhld, blhd, steps: int = 40, warmup: int = 5) -> dict:
    """The seed_case.py loop (seed, native, sdpa in turn), with a CUDA event pair around exactly the call attnprof
    wraps at each site, and nothing else added: the independent timing of the same code in the same setting."""
    L = bhld[0].shape[2]

    def fa2(q, k, v):
        return torch.ops.aten._flash_attention_forward(q, k, v, None, None, L, L, 0.0, False, False)[0]

    spans = {"seed": [], "native": [], "sdpa": []}
    for step in range(warmup + steps):
        pairs = {}
        q, k, v = (t.transpose(1, 2).contiguous() for t in bhld)
        pairs["seed"] = event_pair()
        pairs["seed"][0].record()
        out = fa2(q, k, v)
        pairs["seed"][1].record()
        out.transpose(1, 2).contiguous()
        pairs["native"] = event_pair()
        pairs["native"][0].record()
        fa2(*blhd)
        pairs["native"][1].record()
        pairs["sdpa"] = event_pair()
        pairs["sdpa"][0].record()
        F.scaled_dot_product_attention(*bhld)
        pairs["sdpa"][1].record()
        if step >= warmup:
            for name, pair in pairs.items():
                spans[name].append(pair)
    torch.cuda.synchronize()
    return {name: statistics.median(elapsed_us(pairs)) for name, pairs in spans.items()}


def measure(shape: tuple[int, int, int, int], dtype) -> dict:
    B, H, L, D = shape
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=dtype) for _ in range(3))
    qb, kb, vb = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # (B, L, H, D) contiguous
    ob = flash_attention(qb, kb, vb)
    copies = {
        "q": lambda: q.transpose(1, 2).contiguous(),
        "k": lambda: k.transpose(1, 2).contiguous(),
        "v": lambda: v.transpose(1, 2).contiguous(),
        "out": lambda: ob.transpose(1, 2).contiguous(),
    }
    out = {
        "shape_bhld": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "copy_each_us": {name: event_median_us(fn) for name, fn in copies.items()},
        "copies4_us": event_median_us(lambda: [fn() for fn in copies.values()]),
        "fa2_native_us": event_median_us(lambda: flash_attention(qb, kb, vb)),
        "sdpa_auto_us": event_median_us(lambda: F.scaled_dot_product_attention(q, k, v)),
        "seed_total_us": event_median_us(lambda: seed_wrapper(q, k, v)),
        "loop_call_us": loop_spans_us([q, k, v], [qb, kb, vb]),
    }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--shape", action="append", default=None)
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    args = p.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    shapes = [tuple(int(x) for x in s.split(",")) for s in (args.shape or ["12,64,256,64"])]
    doc = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "method": "*_us: median of 300 CUDA-event pairs, each around one call, back to back after 30 warm-up calls; "
                  "loop_call_us: median CUDA-event span of the call attnprof wraps at each site of "
                  "examples/seed_case.py's loop (40 steps after 5), timed by hand without attnprof",
        "results": [measure(s, dtype) for s in shapes],
    }
    args.out.write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
