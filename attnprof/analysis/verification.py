"""Join what `explain --verify` measured to the causes it was measured for (pure: no torch).

`replay_specs` says what to replay for each diagnosis (one call site): the recorded call's shapes, strides, dtype,
mask and flags, from runinfo.json's CallInfo when the run has it, else from the trace's split (hand-written
attention found by its op pattern). `verified` puts each measured saving on its cause: `measured_saving_us`, the
variant that achieved it, and a note where it is nothing measurable or differs from the predicted µs by more
than the noise.
"""
from __future__ import annotations

import dataclasses

from attnprof.analysis.diagnosis import BLHD_BACKENDS, LAUNCH, LAYOUT_COPY, Diagnosis
from attnprof.analysis.records import CallSplit, Phase, Report
from attnprof.trace.runinfo import CallInfo
from attnprof.trace.verify import ReplaySpec, SiteReplay, VariantTiming

#: Layouts a replay can rebuild (packed, varlen and kv-cache calls are not replayed).
REPLAYABLE_LAYOUTS = ("BHLD", "BLHD")

#: Longest reason kept whole in the variants' note.
MAX_REASON = 140

#: Why a measured saving may differ from the µs the split charged, per cause kind.
_WHY_DIFFERENT = {
    LAYOUT_COPY: "the split charged the copies' busy time inside the profiled step; the replay times the whole "
                 "call with and without them on an otherwise idle device (cache state, overlap with other work)",
    "kernel": "the predicted µs is all of the kernels' time; a fix replaces them by the fastest backend's, it does "
              "not remove them",
    "fallback": "the predicted µs is all of the fallback's time; a fix replaces it by the fastest backend's",
    "compute": "the predicted µs is all of the attention kernels' time; the fastest other backend still takes some",
    "unfused": "the predicted µs is all of the hand-written kernels' time; SDPA still takes some",
    LAUNCH: "the trace's idle includes the profiler's own cost; a CUDA graph removes only the host's real issue time",
}


def _spec_from_info(info: CallInfo, split: CallSplit, kinds: list[str]) -> ReplaySpec | None:
    if (info.layout not in REPLAYABLE_LAYOUTS or "q" not in info.tensors or info.batch is None
            or info.heads_q is None or info.heads_kv is None or info.seqlen_q is None or info.seqlen_k is None
            or info.head_dim is None):
        return None
    mask = info.tensors.get("mask")
    backend = split.backend
    return ReplaySpec(
        site=split.site, op=info.op, backend=backend, layout=info.layout, batch=info.batch, heads_q=info.heads_q,
        heads_kv=info.heads_kv, seqlen_q=info.seqlen_q, seqlen_k=info.seqlen_k, head_dim=info.head_dim,
        dtype=info.tensors["q"].dtype, recorded_device=info.tensors["q"].device, causal=bool(info.causal),
        dropout_p=info.dropout_p, scale=info.scale,
        mask_shape=list(mask.shape) if mask else None, mask_dtype=mask.dtype if mask else None,
        strides={r: list(info.tensors[r].stride) for r in "qkv" if r in info.tensors}, kinds=kinds)


def _spec_from_split(split: CallSplit, kinds: list[str]) -> ReplaySpec | None:
    """A call without CallInfo (hand-written attention): its q and k shapes as the split saw them."""
    q, k = split.shapes.get("q"), split.shapes.get("k")
    layout = split.layout or ("BLHD" if split.backend in BLHD_BACKENDS else "BHLD")
    if not q or not k or len(q) != 4 or len(k) != 4 or layout not in REPLAYABLE_LAYOUTS or split.dtype is None:
        return None
    if layout == "BHLD":
        (b, hq, lq, d), (_, hkv, lk, _) = q, k
    else:
        (b, lq, hq, d), (_, lk, hkv, _) = q, k
    return ReplaySpec(site=split.site, op=split.op, backend=split.backend, layout=layout, batch=b, heads_q=hq,
                      heads_kv=hkv, seqlen_q=lq, seqlen_k=lk, head_dim=d, dtype=split.dtype,
                      recorded_device=split.device, causal=bool(split.causal), kinds=kinds)


def replay_specs(diagnoses: list[Diagnosis], report: Report,
                 call_info: dict[int, CallInfo] | None = None) -> tuple[list[ReplaySpec], list[str]]:
    """One spec per diagnosed site that can be replayed (its first forward call), and why the others cannot."""
    info = call_info or {}
    specs, skipped = [], []
    for d in diagnoses:
        sites = set(d.subject.sites)
        calls = [c for c in report.calls if c.site in sites and c.phase == Phase.FWD]
        if not calls:
            skipped.append(f"{d.subject.label}: no forward call to replay")
            continue
        call = next((c for c in calls if c.id in info), calls[0])
        kinds = [c.kind for c in d.causes]
        spec = _spec_from_info(info[call.id], call, kinds) if call.id in info else _spec_from_split(call, kinds)
        if spec is None:
            skipped.append(f"{d.subject.label}: its {call.layout or 'unknown'} inputs cannot be rebuilt from the "
                           "recorded arguments")
            continue
        specs.append(spec)
    return specs, skipped


def _note(kind: str, measured: float, noise: float, predicted: float | None, comparable: bool) -> str | None:
    if measured <= noise:
        return (f"saves nothing measurable: {measured:+,.1f} µs, within the noise (±{noise:,.1f} µs)")
    if not comparable or predicted is None or abs(measured - predicted) <= noise:
        return None
    return (f"measured {measured:,.1f} µs against {predicted:,.1f} µs predicted (noise ±{noise:,.1f} µs): "
            + _WHY_DIFFERENT.get(kind, "the replay runs the call alone, outside the step"))


def _variant_text(v: VariantTiming) -> str:
    if v.median_us is None:
        reason = v.unsupported or "did not run"
        return f"{v.name} cannot run ({reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 1] + '…'})"
    return f"{v.name} {v.median_us:,.1f} ±{(v.spread_us or 0.0) / 2:,.1f}"


def verified(d: Diagnosis, replay: SiteReplay) -> Diagnosis:
    """The diagnosis with each cause's measured saving (per forward call: the replay is forward only)."""
    comparable = replay.scale == 1.0 and replay.spec.recorded_device.split(":")[0] == replay.device.split(":")[0]
    measured = {f.kind: f for f in replay.fixes}
    causes = []
    for c in d.causes:
        f = measured.get(c.kind)
        if f is None:
            causes.append(c)
            continue
        if f.saving_us is None:
            causes.append(dataclasses.replace(c, measured_note=f"not measured: {f.reason}"))
            continue
        saving = f.saving_us if f.saving_us > f.noise_us else 0.0
        causes.append(dataclasses.replace(
            c, measured_saving_us=saving, measured_by=f.fix if saving else None,
            measured_note=_note(c.kind, f.saving_us, f.noise_us, c.by_phase.get(Phase.FWD), comparable)))
    notes = list(d.notes) + [f"verify: replayed on {replay.device}: {replay.method}",
                             "verify: forward µs per call: " + "; ".join(_variant_text(v) for v in replay.variants)]
    notes += [f"verify: {n}" for n in replay.notes]
    if any(p != Phase.FWD for c in d.causes for p in c.by_phase):
        notes.append("verify: the replay measures the forward call; the causes' µs include the backward")
    return dataclasses.replace(d, causes=causes, notes=notes)


def measured_after_fixes_us(d: Diagnosis) -> float | None:
    """The subject's µs less every measured saving; None when nothing was measured."""
    savings = [c.measured_saving_us for c in d.causes if c.measured_saving_us is not None]
    return d.subject.us - sum(savings) if savings else None
