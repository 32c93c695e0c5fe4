"""What attnprof adds to every attention call, per mode: a loop of tiny SDPA calls on CPU, a decode loop on GPU.

Each mode is one traced run (in this process, `trace_script`) whose measured calls all fall in one phase:

    bare          the script under plain python (no attnprof)
    inert         attnprof's wrappers installed, no session dispatching (what a wrapper costs by itself)
    warmup        --warmup covering every call: the quiet path (site, step counter, warm-up count), not timed
    timed         --warmup 0 --timed covering every call: host clock (CPU) or a CUDA-event pair (GPU) per call
    profiled      --active covering every call (--max-calls raised): torch.profiler records everything
    after=none    --active 1, then the rest of the run with --after none (the default: the wrappers are gone)
    after=nvtx    ... --after nvtx (the quiet path: step counter, an NVTX range when a tool listens)
    after=time    ... --after time (a timing per call, as in the timed steps)

CPU: every iteration of the script times a bare call (torch._C._nn.scaled_dot_product_attention, the function
itself) and then F.scaled_dot_product_attention (attnprof's wrapper, or the original again with --after none); a
mode's figure is the difference of the two medians in its run (the same load on both: the machine is shared),
the `bare` row is that difference without attnprof (0 up to noise). Rounds alternate the order of the modes; the
table gives the median over rounds with the lowest and highest round.
GPU: the script times whole `generate()` calls (synchronised) in pairs: one whose calls pass straight through
attnprof's wrappers, one as the mode runs them, in alternating order; added per call = median over the pairs of
(the mode's generate - the other) / attention calls per generate. Across runs a generate's time drifts by a third;
within a pair it does not, but which of the two runs first matters: each order's median is taken, and the two
averaged.

    python benchmarks/overhead.py                       # this machine (a few minutes on 2 loaded cores)
    python benchmarks/overhead.py --gpu                 # on a CUDA machine: GPT-2-style decode loop, ~2-3 min
    python benchmarks/overhead.py --gpu --dry           # the GPU run's code path on the CPU, tiny (a check, no figures)
    python benchmarks/overhead.py --loop-device cuda    # the paired loop of tiny SDPA calls, on the GPU
    python benchmarks/overhead.py --hf-layer            # the paired loop on a transformers attention layer
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("bare", "inert", "warmup", "timed", "profiled", "after=none", "after=nvtx", "after=time")
BIG = 10**9

CPU_SCRIPT = '''\
import json, sys, time
import torch
import torch.nn.functional as F

out, n = sys.argv[1], int(sys.argv[2])
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
torch.set_num_threads(1)  # a tiny op gains nothing from threads, and a loaded machine makes them stall
torch.manual_seed(0)
q, k, v = (torch.randn(1, 2, 8, 16, device=device) for _ in range(3))
bare = torch._C._nn.scaled_dot_product_attention  # what F.scaled_dot_product_attention is without attnprof
clock = time.perf_counter_ns
pairs = []
with torch.no_grad():
    for _ in range(n):
        t0 = clock()
        bare(q, k, v)
        t1 = clock()
        F.scaled_dot_product_attention(q, k, v)  # looked up each time: --after none puts the original back
        pairs.append((t1 - t0, clock() - t1))
with open(out, "w") as f:
    json.dump(pairs, f)
'''

HF_LAYER_SCRIPT = '''\
import json, sys, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from attnprof.capture import patching

out, n = sys.argv[1], int(sys.argv[2])
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
torch.set_num_threads(1)
torch.manual_seed(0)
config = GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=1000, n_positions=256)
config._attn_implementation = "sdpa"
attention = GPT2LMHeadModel(config).to(device).eval().transformer.h[0].attn
x = torch.randn(2, 1, 64, device=device)  # one decoding step
clock = time.perf_counter_ns
pairs = []
with torch.no_grad():
    for _ in range(n):
        saved = patching._dispatch
        patching._dispatch = None  # attnprof's wrappers pass straight through: the call without attnprof
        t0 = clock()
        attention(x)
        t1 = clock()
        patching._dispatch = saved
        attention(x)
        pairs.append((t1 - t0, clock() - t1))
with open(out, "w") as f:
    json.dump(pairs, f)
'''

GPU_SCRIPT = '''\
import json, sys, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from attnprof.capture import patching

out, n, device, layers, width, new_tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:7])
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
torch.manual_seed(0)
config = GPT2Config(n_layer=layers, n_embd=width, n_head=8, vocab_size=32000, n_positions=1024, bos_token_id=0,
                    eos_token_id=0)
config._attn_implementation = "sdpa"
with torch.device(device):  # initialised on the GPU: seconds less per run than on the CPU
    model = GPT2LMHeadModel(config).to(torch.bfloat16 if device == "cuda" else torch.float32).eval()
prompt = torch.randint(0, 32000, (4, 32), device=device)
mask = torch.ones_like(prompt)


def generate():
    sync()
    t0 = time.perf_counter()
    model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=0)
    sync()
    return time.perf_counter() - t0


pairs = []
with torch.no_grad():
    for i in range(n):
        # each pair: a generate whose wrapped calls pass straight through (attnprof's wrappers with no session behind
        # them, as after `patching._dispatch = None`), and one as the mode runs it, in alternating order; the
        # machine's drift between runs (a third of a generate's time) cancels within a pair
        pair = [0.0, 0.0]
        for half in ((0, 1) if i % 2 == 0 else (1, 0)):
            saved = patching._dispatch
            if half == 0:
                patching._dispatch = None
            try:
                pair[half] = generate()
            finally:
                patching._dispatch = saved
        pairs.append(pair)
with open(out, "w") as f:
    json.dump(pairs, f)
'''


def _options(mode: str, script: Path, args: list[str], root: Path):
    from attnprof.capture.session import TraceOptions

    o = TraceOptions(target=str(script), is_module=False, args=args, out=None, root=root, quiet=True,
                     step_on="call", source_lines=True)
    if mode == "warmup":
        o.warmup, o.timed, o.active = BIG, 0, 1
    elif mode == "timed":
        o.warmup, o.timed, o.active = 0, BIG, 1
    elif mode == "profiled":
        o.warmup, o.timed, o.active, o.max_calls = 0, 0, BIG, BIG
    else:  # after=...: the first call profiled, every later one after the window
        o.warmup, o.timed, o.active = 0, 0, 1
        o.after = mode.partition("=")[2]
    return o


def run_mode(mode: str, script: Path, n: int, root: Path, extra: tuple[str, ...] = ()) -> list[float]:
    """The script's own measurements (per call, or per generate) for one run in `mode`."""
    import runpy

    from attnprof.capture import patching
    from attnprof.capture.session import trace_script

    out = root / f"{mode}.json"
    args = [str(out), str(n), *extra]
    if mode in ("bare", "inert"):
        patcher = patching.Patcher() if mode == "inert" else None
        saved = sys.argv
        sys.argv = [str(script), *args]
        try:
            if patcher is not None:
                patcher.install()
            runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = saved
            if patcher is not None:
                patcher.uninstall()
    else:
        result = trace_script(_options(mode, script, args, root))
        if result.exit_code != 0:
            raise SystemExit(f"{mode}: the script failed ({result.outcome})")
    values = json.loads(out.read_text())
    out.unlink()
    return values


def table(rows: dict[str, list[float]], unit: str) -> str:
    lines = [f"| mode | added per call ({unit}), median of rounds | lowest round | highest round |",
             "|---|---|---|---|"]
    for mode, values in rows.items():
        lines.append(f"| {mode} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    return "\n".join(lines)


def cpu(rounds: int, calls: int, modes: tuple[str, ...], device: str = "cpu", hf: bool = False) -> str:
    """Each iteration of the script calls the bare op, then the (wrapped) F.scaled_dot_product_attention: the
    difference of their medians in one run is what attnprof added, under the same load (this machine is shared).
    `device` "cuda": the same loop on the GPU (each call launches its kernel; the host time per call is what the
    wrapper adds to a launch-bound loop such as decoding, measured pair by pair instead of across runs)."""
    added: dict[str, list[float]] = {m: [] for m in modes}
    bare_us: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / ("hf_attention_layer.py" if hf else "tiny_sdpa.py")
        script.write_text(HF_LAYER_SCRIPT if hf else CPU_SCRIPT)
        for r in range(rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                pairs = run_mode(mode, script, calls, root, (device,))[calls // 5:]  # first fifth: window, settling
                bare = statistics.median(p[0] for p in pairs) / 1000.0
                added[mode].append(statistics.median(p[1] for p in pairs) / 1000.0 - bare)
                bare_us.append(bare)
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{m} +{added[m][-1]:.1f}" for m in modes) + " µs/call",
                  file=sys.stderr)
    import torch

    where = (f"GPU loop ({torch.cuda.get_device_name()}, host clock per call)" if device == "cuda"
             else f"CPU ({os.cpu_count()} cores")
    what = ("a transformers GPT-2 attention layer (d=64, 4 heads, sdpa: its attention function and SDPA, two "
            "wrapped entry points per call) on one decoding step, each call beside one whose calls pass straight "
            "through attnprof's wrappers" if hf else "SDPA on (1, 2, 8, 16) float32, each call beside a bare call")
    head = (f"{where}, torch {torch.__version__}): {what}, {calls} calls per run, {rounds} rounds; the call "
            f"beside {statistics.median(bare_us):.1f} µs (median)")
    return head + "\n\n" + table(added, "µs")


def gpu(rounds: int, generates: int, modes: tuple[str, ...], dry: bool = False) -> str:
    """`dry`: the same runs on the CPU with a 2-layer model and 4 new tokens, to check the code path without a GPU
    (its figures mean nothing)."""
    import torch

    if not dry and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA (--gpu --dry runs its code path on the CPU)")
    layers, width, new_tokens = (2, 64, 4) if dry else (8, 512, 64)
    extra = ("cpu" if dry else "cuda", str(layers), str(width), str(new_tokens))
    calls_per_generate = layers * new_tokens  # the prompt's forward is the first token's
    added: dict[str, list[float]] = {m: [] for m in modes}
    spread: dict[str, list[float]] = {m: [] for m in modes}
    generate_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "decode.py"
        script.write_text(GPU_SCRIPT)
        for r in range(rounds):
            for mode in (modes if r % 2 == 0 else tuple(reversed(modes))):
                # the first pair: the window, warm-up; profiling every call of many takes long to save
                n = 3 if mode == "profiled" else generates  # the first pair skipped: the window opens in it
                pairs = run_mode(mode, script, n, root, extra)
                # pair i ran the pass-through generate first when i is even: a generate's time depends on whether it
                # comes first (tens of ms here), so each order's median is taken and the two averaged
                per_call = [[(wrapped - passed) * 1e6 / calls_per_generate for passed, wrapped in pairs[first::2]]
                            for first in (2, 1)]
                added[mode].append(sum(statistics.median(d) for d in per_call if d) / sum(1 for d in per_call if d))
                spread[mode] += per_call[0] + per_call[1]
                generate_s += [passed for passed, _ in pairs[1:]]
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{m} {added[m][-1]:+.1f}" for m in modes)
                  + " µs/call", file=sys.stderr)
    where = "CPU, --dry: not a measurement" if dry else torch.cuda.get_device_name()
    head = (f"GPU ({where}, torch {torch.__version__}): GPT-2 from a config ({layers} layers, d={width}, "
            f"{'fp32' if dry else 'bf16'}, sdpa), generate() of {new_tokens} new tokens at batch 4 = "
            f"{calls_per_generate} attention calls, {generates - 1} pairs per run (half in each order, the two "
            f"orders' medians averaged), {rounds} rounds; a generate "
            f"with the wrappers passing straight through {statistics.median(generate_s) * 1e3:.1f} ms (median). "
            f"Each pair is one generate as the mode runs it beside one whose calls pass straight through "
            f"attnprof's wrappers (the `inert` cost, which the CPU loop gives, is not in these figures); `bare` "
            f"and `inert` pair two alike generates: their spread is the noise. Per-pair spread (all rounds, "
            f"10th–90th percentile): " + ", ".join(f"{m} {_percentile(spread[m], 10):+.0f} to "
                                                    f"{_percentile(spread[m], 90):+.0f}" for m in modes) + " µs")
    return head + "\n\n" + table(added, "µs")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="the GPU decode loop (default: the CPU loop)")
    p.add_argument("--dry", action="store_true", help="with --gpu: its code path on the CPU, tiny (no figures)")
    p.add_argument("--loop-device", default="cpu", choices=("cpu", "cuda"),
                   help="the loop of tiny SDPA calls on this device (cuda: the per-call host cost beside a GPU launch)")
    p.add_argument("--hf-layer", action="store_true",
                   help="the paired loop on a transformers GPT-2 attention layer instead of a bare SDPA call (what a "
                        "real model's call costs: two nested entry points; `bare` and `inert` are its noise)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of all modes (default: CPU 5, GPU 2)")
    p.add_argument("--calls", type=int, default=3000, help="CPU: SDPA calls per run")
    p.add_argument("--generates", type=int, default=9,
                   help="GPU: pairs of generate() calls per run (the first not counted)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    a = p.parse_args(argv)
    modes = tuple(m for m in a.modes.split(",") if m)
    if "bare" not in modes:
        modes = ("bare", *modes)
    started = time.perf_counter()
    if a.gpu:
        text = gpu(a.rounds or 2, a.generates, modes, dry=a.dry)
    else:
        text = cpu(a.rounds or 5, a.calls, modes, a.loop_device, hf=a.hf_layer)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
