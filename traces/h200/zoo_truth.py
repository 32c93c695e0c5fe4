"""Independent CUDA-event timings of the zoo examples' attention, measured in the same device session as the
fixtures in this folder: the ground truth the tests hold attnprof's split against.

Each figure is the median over repetitions of a CUDA event pair around one call of exactly what a traced call runs,
on the very arguments the example passes (captured from its first call), after warm-up, each behind a short spin
kernel (SPIN_CYCLES) so that the pair holds the GPU work and not the host's launch latency. No profiler runs in
this process.

    python traces/h200/zoo_truth.py OUT.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
sys.path[:0] = [str(EXAMPLES), str(ROOT)]

from attnprof.capture.bench import event_times_us  # noqa: E402


#: GPU cycles of the spin kernel queued before each timed call (~50 µs at H200 clocks): the GPU is still busy with it
#: while the host enqueues the start event, the call and the end event, so the pair times the GPU work alone and not
#: the host's launch latency (which an idle GPU would otherwise wait out inside the pair).
SPIN_CYCLES = 100_000


#: Calls per event pair in `batched_us`: the event pair's own cost (about a microsecond) is spread over them.
BATCH = 20


def batched_us(fn, reps: int = 30) -> float:
    """GPU time per call with the GPU never starved: BATCH calls back to back between one event pair, behind a spin
    long enough for the host to enqueue them all; median over `reps` pairs, divided by BATCH. For kernels of a few
    microseconds, where one event pair's own cost is a large share of `event_median_us`."""
    return statistics.median(event_times_us(fn, reps, warmup=5, spin_cycles=SPIN_CYCLES * 10, batch=BATCH))


def event_median_us(fn, reps: int = 200, warmup: int = 20) -> float:
    return statistics.median(event_times_us(fn, reps, warmup, spin_cycles=SPIN_CYCLES))


@contextlib.contextmanager
def first_call(owner, name: str):
    """Records (args, kwargs, result) of the first call of owner.<name> while the block runs."""
    original = getattr(owner, name)
    seen = {}

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.setdefault("call", (args, kwargs, result))
        return result

    setattr(owner, name, spy)
    try:
        yield seen
    finally:
        setattr(owner, name, original)


def back_to_back() -> dict:
    from seed_case import flash_attention, seed_wrapper

    B, H, L, D = 12, 64, 256, 64
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.float16) for _ in range(3))
    q2, k2, v2 = (torch.randn(B, H, L, D, device="cuda", dtype=torch.float16) for _ in range(3))
    qb, kb, vb = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    ob = flash_attention(qb, kb, vb)
    copies = {"q": lambda: q.transpose(1, 2).contiguous(), "k": lambda: k.transpose(1, 2).contiguous(),
              "v": lambda: v.transpose(1, 2).contiguous(), "out": lambda: ob.transpose(1, 2).contiguous()}
    return {
        "shape_bhld": [B, H, L, D], "dtype": "float16",
        "copy_each_us": {n: event_median_us(fn) for n, fn in copies.items()},
        "copies4_us": event_median_us(lambda: [fn() for fn in copies.values()]),
        "fa2_native_us": event_median_us(lambda: flash_attention(qb, kb, vb)),
        "sdpa_auto_us": event_median_us(lambda: F.scaled_dot_product_attention(q2, k2, v2)),
        "seed_total_us": event_median_us(lambda: seed_wrapper(q, k, v)),
        "batched_us": {"copies4": batched_us(lambda: [fn() for fn in copies.values()]),
                       "fa2_native": batched_us(lambda: flash_attention(qb, kb, vb)),
                       "sdpa_auto": batched_us(lambda: F.scaled_dot_product_attention(q2, k2, v2))},
    }


def nanogpt() -> dict:
    import nanogpt as ng

    s = ng.sizes("cuda")
    torch.manual_seed(0)
    model = ng.GPT(s["vocab"], s["n_layer"], s["n_embd"], s["n_head"], s["block_size"], 0.1, "manual").cuda()
    idx = torch.randint(0, s["vocab"], (s["batch"], s["block_size"]), device="cuda")
    with first_call(ng, "manual_attention") as seen, torch.autocast("cuda", dtype=torch.bfloat16):
        model(idx, idx)
    (q, k, v, mask, dropout), _, y = seen["call"]
    scale = 1.0 / (k.size(-1) ** 0.5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        scores = q @ k.transpose(-2, -1)
        scaled = scores * scale
        masked = scaled.masked_fill(mask == 0, float("-inf"))
        probs = F.softmax(masked, dim=-1)
        dropped = dropout(probs)
        pieces = {
            "qk_matmul": lambda: q @ k.transpose(-2, -1),
            "scale_mul": lambda: scores * scale,
            "masked_fill": lambda: scaled.masked_fill(mask == 0, float("-inf")),
            "softmax": lambda: F.softmax(masked, dim=-1),
            "dropout": lambda: dropout(probs),
            "av_matmul": lambda: dropped @ v,
        }
        out = {
            "shapes": {"q": list(q.shape), "k": list(k.shape), "v": list(v.shape)},
            "q_dtype": str(q.dtype), "probs_dtype": str(probs.dtype),
            "manual_attention_us": event_median_us(lambda: ng.manual_attention(q, k, v, mask, dropout)),
            "pieces_us": {n: event_median_us(fn) for n, fn in pieces.items()},
            "batched_us": {"manual_attention": batched_us(lambda: ng.manual_attention(q, k, v, mask, dropout))},
        }
    out["output_copy_us"] = event_median_us(lambda: y.transpose(1, 2).contiguous())
    out["batched_us"]["output_copy"] = batched_us(lambda: y.transpose(1, 2).contiguous())
    out["layers"] = s["n_layer"]
    return out


def hf(model_name: str, attn: str) -> dict:
    import hf_zoo
    import transformers

    torch.manual_seed(0)
    model, vocab = hf_zoo.build(model_name, attn, True)
    model = model.to(device="cuda", dtype=torch.bfloat16)
    batch = hf_zoo.batch_for(model_name, vocab, 8, 512, "cuda")
    if attn == "eager":
        owner = sys.modules[type(model).__module__]
        name = "eager_attention_forward"
    else:
        owner, name = F, "scaled_dot_product_attention"
    with first_call(owner, name) as seen:
        model(**batch)
    args, kwargs, result = seen["call"]
    fn = getattr(owner, name)
    out = {"function": f"{owner.__name__}.{name}", "transformers": transformers.__version__,
           "shapes": {k: list(a.shape) for k, a in zip("qkv", args[1:4] if attn == "eager" else args[:3])},
           "attention_us": event_median_us(lambda: fn(*args, **kwargs)),
           "batched_us": {"attention": batched_us(lambda: fn(*args, **kwargs))}}
    attn_out = result[0] if isinstance(result, tuple) else result
    if attn == "eager":  # eager returns (B, L, H, D) views; the model reshapes them (a copy) before o_proj
        reshape = lambda: attn_out.reshape(*attn_out.shape[:-2], -1).contiguous()  # noqa: E731
        out["output_copy_us"] = event_median_us(reshape)
        out["batched_us"]["output_copy"] = batched_us(reshape)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    cases = {
        "back_to_back": back_to_back, "nanogpt": nanogpt,
        "gpt2_eager": lambda: hf("gpt2", "eager"), "gpt2_sdpa": lambda: hf("gpt2", "sdpa"),
        "llama_eager": lambda: hf("llama", "eager"),
    }
    doc = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "method": "*_us: median of 200 CUDA-event pairs, each around one call queued behind a spin kernel of "
                     f"{SPIN_CYCLES} cycles, after 20 warm-up calls, on the arguments of the example's first call; "
                     f"batched_us: median of 30 pairs around {BATCH} calls back to back (behind a longer spin), "
                     "divided by the count; no profiler in the process", "results": {}}
    for name, fn in cases.items():
        try:
            doc["results"][name] = fn()
        except Exception as e:  # one failing case must not lose the others
            doc["results"][name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(doc["results"][name]), flush=True)
    args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
