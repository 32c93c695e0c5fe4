"""Replay each call site's attention call on tensors of its recorded shapes, strides, dtype and mask (random
values: nothing of the user's script or data is touched), and time what each proposed fix would save.

Variants of one site (forward only), each timed like `attnprof compare` (capture/bench.py, inputs rotated among
sets larger than the last-level cache, median over repetitions):

- `as-recorded`: the recorded backend on inputs with the recorded strides (a hand-written attention for `manual`
  and Hugging Face `eager` sites);
- `with-layout-copies`: for a (B, L, H, D) kernel charged with layout copies, the seed wrapper's pattern that the
  copies come from: (B, H, L, D) inputs copied to the kernel's layout, and the output back;
- every SDPA backend (auto, and each forced with `sdpa_kernel`) on contiguous (B, H, L, D) inputs with the call's
  own causal flag, mask, dropout, scale and native GQA; the (B, L, H, D) kernels of `attnprof compare` when the
  call has no mask and no dropout (they take neither); what cannot run keeps torch's or the library's reason;
- on a GPU, `cuda-graph`: the as-recorded sequence captured in a CUDA graph and replayed, against the same
  sequence launched eagerly, both timed back to back at the host's pace (a graph saves host time, which compare's
  per-repetition clock hides on purpose).

Fix per cause kind: layout copies = with-layout-copies less as-recorded (the same kernel without the copies: SDPA
on the original layout is among the backends, whose gain is the kernel cause's, so the savings add up); kernel choice, fallback, attention kernels, unfused = as-recorded less the fastest backend; launch =
eager less graph; GQA expansion, when the call got k/v with fewer heads than q, = SDPA after repeat_interleave
less SDPA with native GQA. Casts, padding (and an expansion before the call) happen in code whose inputs the run
does not record: they are reported as not measured, with that reason.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from attnprof.capture.bench import time_reps
from attnprof.capture.compare import BHLD, BLHD, _attempt, _last_level_cache_bytes, input_sets_needed
from attnprof.capture.compare import backends as compare_backends
from attnprof.errors import AttnprofError
from attnprof.trace.verify import DEFAULT_BUDGET_S, PACED_CLOCK, FixMeasurement, ReplaySpec, SiteReplay, VariantTiming

MIN_REPS, MAX_REPS = 5, 200
#: Input sets rotated at most (the cache multiple of compare, capped: a replay must stay small in memory).
MAX_INPUT_SETS = 16
#: Batches of back-to-back calls for the host-paced clock (their spread is the noise).
PACED_BATCHES = 5

SDPA_NAMES = ("sdpa-auto", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math")
LIBRARY_NAMES = ("aten-flash", "flash-attn2", "fa3", "fa4", "xformers")
HAND_WRITTEN = "hand-written"
AS_RECORDED, WITH_COPIES, CUDA_GRAPH, EAGER_PACED = "as-recorded", "with-layout-copies", "cuda-graph", "eager-paced"
NO_COPIES = "no-copies (the kernel on inputs in its layout)"
GQA_EXPANDED = "gqa-expanded"
#: The compare backend that is a recorded SDPA backend.
_SDPA_OF_BACKEND = {"flash": "sdpa-flash", "cpu-flash": "sdpa-flash", "cudnn": "sdpa-cudnn",
                    "efficient": "sdpa-efficient", "math": "sdpa-math"}
#: The compare backend of a recorded (B, L, H, D) entry point.
_LIBRARY_OF_OP = {"aten._flash_attention_forward": "aten-flash", "flash_attn_func": "flash-attn2",
                  "fa3.flash_attn_func": "fa3", "fa4.flash_attn_func": "fa4",
                  "xformers.memory_efficient_attention": "xformers"}
UNFUSED_BACKENDS = frozenset(("manual", "manual-fused", "eager"))

# cause kinds (analysis/diagnosis/records.py names them; capture only needs to tell them apart)
LAYOUT_COPY, LAUNCH = "layout_copy", "launch"
BACKEND_KINDS = frozenset(("kernel", "fallback", "compute", "unfused"))
NOT_REPLAYABLE = {
    "cast": "the dtype the casts started from is not recorded (only the call's inputs are): not replayed",
    "pad": "the shape before padding is not recorded (only the call's inputs are): not replayed",
    "gqa_expand": "the k/v head count before the expansion is not recorded (the call got expanded k/v): not "
                  "replayed",
    "other": "memsets and host time between ops have no fix to replay",
}


def scaled(spec: ReplaySpec, scale: float) -> ReplaySpec:
    """The spec with batch and sequence lengths scaled (heads, head dim, dtype and stride order kept: they decide
    which kernels can run); strides rebuilt in the recorded order, with the recorded gaps between dimensions."""
    if scale == 1.0:
        return spec
    b, lq, lk = (max(1, round(n * scale)) for n in (spec.batch, spec.seqlen_q, spec.seqlen_k))
    mask = None
    if spec.mask_shape:
        m = list(spec.mask_shape)
        if len(m) >= 3 and m[0] == spec.batch:
            m[0] = b
        m[-2] = lq if m[-2] == spec.seqlen_q else m[-2]
        m[-1] = lk if m[-1] == spec.seqlen_k else m[-1]
        mask = m
    out = replace(spec, batch=b, seqlen_q=lq, seqlen_k=lk, mask_shape=mask, strides={})
    for role, stride in spec.strides.items():
        old_shape = _shape(spec, role)
        out.strides[role] = _rescaled_strides(old_shape, stride, _shape(out, role))
    return out


def _rescaled_strides(old_shape: list[int], old: list[int], new_shape: list[int]) -> list[int]:
    order = sorted(range(len(old)), key=lambda d: (old[d], old_shape[d]))  # innermost first
    new = [0] * len(old)
    prev = None
    for d in order:
        if old[d] == 0:
            continue  # broadcast dimension
        if prev is None:
            new[d] = old[d]
        else:
            gap = old[d] / (old[prev] * old_shape[prev])  # e.g. 3 for q inside a fused qkv projection
            new[d] = new[prev] * new_shape[prev] * max(1, math.ceil(gap))
        prev = d
    return new


def _shape(spec: ReplaySpec, role: str, layout: str | None = None) -> list[int]:
    heads = spec.heads_q if role == "q" else spec.heads_kv
    seqlen = spec.seqlen_q if role == "q" else spec.seqlen_k
    if (layout or spec.layout) == BHLD:
        return [spec.batch, heads, seqlen, spec.head_dim]
    return [spec.batch, seqlen, heads, spec.head_dim]


# --- inputs -------------------------------------------------------------------------------------------------------

def _tensor(shape: list[int], stride: list[int] | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not stride:
        return torch.randn(shape, dtype=dtype, device=device)
    span = 1 + sum((n - 1) * s for n, s in zip(shape, stride))  # the storage the recorded view spans
    return torch.randn(span, dtype=dtype, device=device).as_strided(shape, stride)


def _mask(spec: ReplaySpec, device: torch.device) -> torch.Tensor | None:
    if not spec.mask_shape:
        return None
    if spec.mask_dtype == "bool":
        return torch.ones(spec.mask_shape, dtype=torch.bool, device=device)  # everything visible: no NaN rows
    return torch.zeros(spec.mask_shape, dtype=getattr(torch, spec.mask_dtype or spec.dtype), device=device)


def _input_sets(spec: ReplaySpec, layout: str, recorded_strides: bool, device: torch.device,
                cache_bytes: int) -> list[tuple]:
    dtype = getattr(torch, spec.dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    set_bytes = itemsize * sum(math.prod(_shape(spec, r, layout)) for r in "qkv")
    n = min(MAX_INPUT_SETS, input_sets_needed(set_bytes, cache_bytes))
    mask = _mask(spec, device)  # one mask for all sets, as a model shares it across layers
    return [tuple(_tensor(_shape(spec, r, layout), spec.strides.get(r) if recorded_strides else None, dtype, device)
                  for r in "qkv") + (mask,) for _ in range(n)]


# --- the calls ----------------------------------------------------------------------------------------------------

def _sdpa_call(spec: ReplaySpec) -> Callable:
    """SDPA on (B, H, L, D) with the call's own mask, causal flag, dropout, scale; GQA natively."""
    kwargs: dict[str, Any] = {"dropout_p": spec.dropout_p, "scale": spec.scale}
    if spec.heads_q != spec.heads_kv:
        kwargs["enable_gqa"] = True

    def call(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=spec.causal and mask is None,
                                              **kwargs)
    return call


def _hand_written_call(spec: ReplaySpec, device: torch.device) -> Callable:
    """q·kᵀ, scale, mask (or the causal mask, as a buffer the model keeps), softmax, dropout, ·v: the unfused
    attention of nanoGPT and Hugging Face's eager path."""
    causal_mask = (torch.ones(spec.seqlen_q, spec.seqlen_k, dtype=torch.bool, device=device).tril()
                   if spec.causal else None)
    scale = spec.scale if spec.scale is not None else spec.head_dim ** -0.5
    groups = spec.heads_q // max(1, spec.heads_kv)

    def call(q, k, v, mask):
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        w = torch.matmul(q, k.transpose(-1, -2)) * scale
        if mask is not None:
            w = w.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else w + mask
        elif causal_mask is not None:
            w = w.masked_fill(~causal_mask, float("-inf"))
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        if spec.dropout_p:
            w = F.dropout(w, p=spec.dropout_p, training=True)
        return torch.matmul(w, v)
    return call


class _Variant:
    def __init__(self, name: str, what: str, layout: str, call: Callable | None, context=nullcontext,
                 recorded_strides: bool = False, unsupported: str | None = None, precheck=None,
                 backend: str | None = None):
        self.name, self.what, self.layout, self.call = name, what, layout, call
        self.context, self.recorded_strides, self.unsupported, self.precheck = \
            context, recorded_strides, unsupported, precheck
        self.backend = backend  # the compare backend it runs (the recorded one: not an alternative to itself)


def _library_variant(name: str, spec: ReplaySpec) -> _Variant:
    b = compare_backends([name])[0]
    what = f"{name} on (B, L, H, D) inputs"
    kernel = b.call
    if b.unavailable or kernel is None:
        return _Variant(name, what, BLHD, None, unsupported=b.unavailable)
    if spec.mask_shape or spec.dropout_p or spec.scale is not None:
        return _Variant(name, what, BLHD, None, unsupported="the call has a mask, dropout or its own scale, which "
                                                           "attnprof compare's call of this kernel does not pass")
    return _Variant(name, what, BLHD, lambda q, k, v, mask: kernel(q, k, v, spec.causal), b.context,
                    precheck=b.precheck, backend=name)


def _sdpa_variant(name: str, spec: ReplaySpec) -> _Variant:
    b = compare_backends([name])[0]
    sdpa = _sdpa_call(spec)
    return _Variant(name, f"{name} on contiguous (B, H, L, D) inputs, the call's mask/causal/dropout", BHLD, sdpa,
                    b.context, precheck=b.precheck, backend=name)


def _recorded_variant(spec: ReplaySpec, device: torch.device) -> _Variant:
    what = f"the recorded {spec.backend} call on the recorded strides"
    if spec.backend in UNFUSED_BACKENDS:
        return _Variant(AS_RECORDED, f"hand-written attention ({spec.backend}) on the recorded strides", spec.layout,
                        _hand_written_call(spec, device), recorded_strides=True)
    library = _LIBRARY_OF_OP.get(spec.op)
    if library is not None:
        v = _library_variant(library, spec)
        v.name, v.what, v.recorded_strides = AS_RECORDED, f"{what} ({library})", True
        return v
    if spec.op.endswith("sdpa") and spec.layout == BHLD:
        forced = _SDPA_OF_BACKEND.get(spec.backend, "sdpa-auto")
        v = _sdpa_variant(forced, spec)
        v.name, v.what, v.recorded_strides = AS_RECORDED, f"{what} ({forced})", True
        return v
    return _Variant(AS_RECORDED, what, spec.layout, None,
                    unsupported=f"replaying {spec.op} on {spec.layout} inputs is not implemented")


def _stand_in(spec: ReplaySpec) -> _Variant | None:
    """What runs the recorded call's work where its backend cannot (a CUDA-only kernel replayed on CPU): SDPA,
    on the recorded strides (through transpose views for (B, L, H, D) inputs, as the seed example's CPU path)."""
    if spec.backend in UNFUSED_BACKENDS:
        return None
    sdpa = _sdpa_call(spec)
    if spec.layout == BLHD:
        def call(q, k, v, mask):
            return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask).transpose(1, 2)
        return _Variant(AS_RECORDED, "SDPA (auto) on the recorded (B, L, H, D) strides, through transpose views",
                        BLHD, call, recorded_strides=True, backend="sdpa-blhd")
    return _Variant(AS_RECORDED, "SDPA (auto) on the recorded strides", BHLD, sdpa, recorded_strides=True,
                    backend="sdpa-auto")


def _gqa_expanded(spec: ReplaySpec) -> _Variant:
    """SDPA after k and v are expanded to q's head count (repeat_interleave): the copies native GQA avoids."""
    sdpa, groups = _sdpa_call(replace(spec, heads_kv=spec.heads_q)), spec.heads_q // spec.heads_kv

    def call(q, k, v, mask):
        return sdpa(q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), mask)
    return _Variant(GQA_EXPANDED, f"k and v expanded {groups}x to q's heads, then SDPA (auto)", BHLD, call,
                    backend="sdpa-auto")


def _with_copies(recorded: _Variant) -> _Variant:
    """The seed wrapper around a (B, L, H, D) kernel: inputs arrive (B, H, L, D), copied in, the output back."""
    def call(q, k, v, mask):
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        return recorded.call(q, k, v, mask).transpose(1, 2).contiguous()  # type: ignore[misc]  # run only if set: below
    return _Variant(WITH_COPIES, "(B, H, L, D) inputs copied to (B, L, H, D) for the kernel, the output copied back "
                                 "(the copies the split charged)", BHLD, recorded.call and call, recorded.context,
                    unsupported=recorded.unsupported, precheck=None)


# --- timing -------------------------------------------------------------------------------------------------------

def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return max(values) - min(values) if values else 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


class _Replayer:
    def __init__(self, spec: ReplaySpec, device: torch.device, budget_s: float):
        self.spec, self.device, self.budget_s = spec, device, budget_s
        self.cache_bytes = _last_level_cache_bytes(device)
        self.sets: dict[tuple[str, bool], list[tuple]] = {}

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def inputs(self, v: _Variant) -> list[tuple]:
        key = (v.layout, v.recorded_strides)
        if key not in self.sets:
            self.sets[key] = _input_sets(self.spec, v.layout, v.recorded_strides, self.device, self.cache_bytes)
        return self.sets[key]

    def time(self, v: _Variant, share_s: float) -> VariantTiming:
        out = VariantTiming(name=v.name, what=v.what)
        call = v.call
        if call is None:
            out.unsupported = v.unsupported or "cannot run here"
            return out
        try:
            sets = self.inputs(v)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            out.unsupported = f"inputs do not fit: {type(e).__name__}: {str(e).splitlines()[0]}"
            return out
        n = len(sets)
        with v.context():
            q, k, vv, mask = sets[0]
            reason = v.precheck(q, k, vv, self.spec.causal) if v.precheck and mask is None else None
            self._sync()
            t0 = time.perf_counter()
            reason = reason or _attempt(lambda: call(*sets[0]))
            self._sync()
            once_s = time.perf_counter() - t0
            if reason:
                out.unsupported = reason
                return out
            reps = max(MIN_REPS, min(MAX_REPS, int(share_s / max(once_s, 1e-6))))
            times = time_reps(lambda i: call(*sets[i % n]), self.device, warmup=min(3, reps), reps=reps)
        out.median_us, out.spread_us, out.reps = statistics.median(times), _iqr(times), reps
        return out

    def paced(self, name: str, what: str, run: Callable[[], object], reps: int) -> VariantTiming:
        """µs per call of `reps` calls issued back to back (the host's pace decides), in PACED_BATCHES batches."""
        per_call = []
        for _ in range(PACED_BATCHES):
            self._sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            self._sync()
            per_call.append((time.perf_counter() - t0) * 1e6 / reps)
        return VariantTiming(name=name, what=what, median_us=statistics.median(per_call), spread_us=_iqr(per_call),
                             reps=reps * PACED_BATCHES, clock=PACED_CLOCK)

    def graph_pair(self, v: _Variant, share_s: float) -> list[VariantTiming]:
        """The variant launched eagerly against the same work captured once in a CUDA graph and replayed."""
        what_graph = f"{v.name} captured in a CUDA graph (torch.cuda.graphs) and replayed"
        if self.device.type != "cuda":
            return [VariantTiming(CUDA_GRAPH, what_graph, unsupported="CUDA graphs need a GPU; on CPU there is no "
                                                                      "launch gap to remove")]
        call = v.call
        if call is None:
            return [VariantTiming(CUDA_GRAPH, what_graph, unsupported=v.unsupported)]
        q, k, vv, mask = self.inputs(v)[0]
        graph = torch.cuda.CUDAGraph()
        with v.context():
            def capture():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        call(q, k, vv, mask)
                torch.cuda.current_stream().wait_stream(side)
                with torch.cuda.graph(graph):
                    call(q, k, vv, mask)
            reason = _attempt(capture)
            if reason:
                return [VariantTiming(CUDA_GRAPH, what_graph, unsupported=reason)]
            self._sync()
            t0 = time.perf_counter()
            call(q, k, vv, mask)
            self._sync()
            reps = max(MIN_REPS, min(MAX_REPS, int(share_s / PACED_BATCHES / max(time.perf_counter() - t0, 1e-6))))
            eager = self.paced(EAGER_PACED, f"{v.name} launched eagerly, back to back", lambda: call(q, k, vv, mask),
                               reps)
            graphed = self.paced(CUDA_GRAPH, what_graph, graph.replay, reps)
        return [eager, graphed]


# --- fixes --------------------------------------------------------------------------------------------------------

def _saving(kind: str, base: VariantTiming | None, fixes: list[VariantTiming], reason: str) -> FixMeasurement:
    ran = [(f.median_us, f) for f in fixes if f.median_us is not None]
    if base is None or base.median_us is None:
        why = base.unsupported if base is not None else None
        return FixMeasurement(kind, reason=f"the baseline could not run: {why}" if why else reason)
    if not ran:
        return FixMeasurement(kind, baseline=base.name, reason=reason)
    best_us, best = min(ran, key=lambda pair: pair[0])
    return FixMeasurement(kind, baseline=base.name, fix=best.name, saving_us=base.median_us - best_us,
                          noise_us=((base.spread_us or 0.0) + (best.spread_us or 0.0)) / 2)


def replay_site(spec: ReplaySpec, device: torch.device, budget_s: float = DEFAULT_BUDGET_S,
                scale: float = 1.0) -> SiteReplay:
    """Time the site's variants (within about `budget_s` seconds) and each cause's fix."""
    if not 0 < scale <= 1:
        raise AttnprofError(f"--scale must be in (0, 1], not {scale}")
    run = scaled(spec, scale)
    kinds = set(spec.kinds)
    notes = []
    recorded = _recorded_variant(run, device)
    copies = LAYOUT_COPY in kinds and run.layout == BLHD
    backends = [_sdpa_variant(n, run) for n in SDPA_NAMES]
    if run.layout == BLHD or BACKEND_KINDS & kinds:
        backends += [_library_variant(n, run) for n in LIBRARY_NAMES]
    replayer = _Replayer(run, device, budget_s)
    graph = LAUNCH in kinds
    gqa = "gqa_expand" in kinds and run.heads_kv < run.heads_q  # the call got k/v unexpanded: time both ways
    share = budget_s / (1 + copies + gqa + len(backends) + (2 if graph else 0))
    timings = [replayer.time(recorded, share)]
    stand_in = _stand_in(run) if timings[0].unsupported else None
    if stand_in is not None:
        notes.append(f"the recorded call ({run.op}, backend {run.backend}) cannot be replayed on {device} "
                     f"({timings[0].unsupported}): its baseline is {stand_in.what}")
        recorded = stand_in
        timings = [replayer.time(recorded, share)]
    if copies:
        timings.append(replayer.time(_with_copies(recorded), share))
    timings += [replayer.time(v, share) for v in backends]
    if gqa:
        timings.append(replayer.time(_gqa_expanded(run), share))
    if graph:
        timings += replayer.graph_pair(_with_copies(recorded) if copies else recorded, 2 * share)
    by_name = {t.name: t for t in timings}
    alternatives = [by_name[b.name] for b in backends]
    fixes = []
    for kind in spec.kinds:
        if kind == LAYOUT_COPY:
            if copies:  # the copies alone: the same kernel without them (a change of kernel is the kernel cause's)
                fix = _saving(kind, by_name[WITH_COPIES], [by_name[AS_RECORDED]], "the kernel could not run")
                fix.fix = NO_COPIES if fix.fix else None
                fixes.append(fix)
            else:
                fixes.append(FixMeasurement(kind, reason="the copies are made by the model's own code, which the "
                                                         "recorded arguments do not describe (the inputs reach the "
                                                         "kernel in its layout): not replayed"))
        elif kind in BACKEND_KINDS:
            others = [a for a in alternatives if a.name != recorded.backend]
            fixes.append(_saving(kind, by_name[AS_RECORDED], others, "no other backend could run this call"))
        elif kind == "gqa_expand" and gqa:
            fixes.append(_saving(kind, by_name[GQA_EXPANDED], [by_name["sdpa-auto"]],
                                 "SDPA with native GQA (enable_gqa) could not run"))
        elif kind == LAUNCH:
            fixes.append(_saving(kind, by_name.get(EAGER_PACED), [by_name[CUDA_GRAPH]],
                                 by_name[CUDA_GRAPH].unsupported or "the graph could not run")
                         if EAGER_PACED in by_name else
                         FixMeasurement(kind, reason=by_name[CUDA_GRAPH].unsupported))
        else:
            fixes.append(FixMeasurement(kind, reason=NOT_REPLAYABLE.get(kind, "no replay for this cause")))
    clock = ("a CUDA event pair per repetition, the host given a head start (GPU time)" if device.type == "cuda"
             else "the host clock per repetition")
    method = (f"forward only; median over repetitions timed with {clock}, as attnprof compare; inputs rotated among "
              f"up to {MAX_INPUT_SETS} sets; about {budget_s:g} s for the site")
    if scale != 1.0:
        notes.append(f"replayed at scale {scale:g} (batch {run.batch}, seqlen {run.seqlen_q}/{run.seqlen_k}): the "
                     "measured savings are for that size, not comparable to the predicted µs")
    if not spec.recorded_device.startswith(device.type):
        notes.append(f"recorded on {spec.recorded_device}, replayed on {device}: the savings are this device's")
    return SiteReplay(spec=spec, replayed=run, scale=scale, device=str(device), method=method, variants=timings,
                      fixes=fixes, notes=notes)


def replay_sites(specs: list[ReplaySpec], device: str | None = None, budget_s: float = DEFAULT_BUDGET_S,
                 scale: float = 1.0, progress: Callable[[str], None] | None = None) -> list[SiteReplay]:
    """Every site's replay, on `device` (default: the GPU when there is one)."""
    if budget_s <= 0:
        raise AttnprofError(f"--budget must be > 0 seconds, not {budget_s:g}")
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AttnprofError("no CUDA device here: use --device cpu")
    where = torch.device(name)
    torch.manual_seed(0)
    out = []
    for spec in specs:
        if progress:
            progress(f"verify: replaying {spec.site}")
        out.append(replay_site(spec, where, budget_s, scale))
    return out
