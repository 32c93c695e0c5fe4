"""`explain(a, b)`: why B is slower than A, as causes that add up to the gap between them."""
from __future__ import annotations

from attnprof.analysis.diagnosis.accumulate import CauseSums, ranked
from attnprof.analysis.diagnosis.backends import is_hopper
from attnprof.analysis.diagnosis.basis import basis, profiler_note, timing_notes
from attnprof.analysis.diagnosis.causes_copy import pair_copies
from attnprof.analysis.diagnosis.causes_host import pair_launch_and_other
from attnprof.analysis.diagnosis.causes_kernel import pair_compute
from attnprof.analysis.diagnosis.noise import mark_noise
from attnprof.analysis.diagnosis.parts import PhaseParts, phase_order, phase_parts, side
from attnprof.analysis.diagnosis.records import Cause, Explanation, Selection, Side, is_explained


def pair_causes(pa: dict[str, PhaseParts], pb: dict[str, PhaseParts], a: Selection, b: Selection) -> list[Cause]:
    """Per phase, B's parts less A's: the copies by kind, the kernels, launch and other."""
    sums: CauseSums = {}
    hopper = is_hopper(b.report) or is_hopper(a.report)
    for phase in sorted(set(pa) | set(pb), key=phase_order):
        A, B = pa.get(phase, PhaseParts()), pb.get(phase, PhaseParts())
        pair_copies(sums, phase, A, B)
        pair_compute(sums, phase, A, B, a, b, hopper)
        pair_launch_and_other(sums, phase, A, B)
    return ranked(sums, scale=sum(p.total for p in pb.values()) - sum(p.total for p in pa.values()))


def _work_note(side_a: Side, side_b: Side) -> list[str]:
    """The sides' q shapes or dtypes differ: part of the gap is other work, not a cause."""
    qa = side_a.shapes.get("q") or side_a.shapes.get("qkv")
    qb = side_b.shapes.get("q") or side_b.shapes.get("qkv")
    if qa and qb and (sorted(qa) != sorted(qb) or side_a.dtype != side_b.dtype):
        return [f"the sides do different work (A {qa} {side_a.dtype}, B {qb} {side_b.dtype}): the gap includes it"]
    return []


def explain(a: Selection, b: Selection) -> Explanation:
    """Why B is slower than A (the sides are swapped when A is the slower): causes adding up to the gap."""
    basis_name, basis_detail, on_true = basis([a, b])
    pa, pb = phase_parts(a, on_true), phase_parts(b, on_true)
    side_a, side_b = side(a, pa), side(b, pb)
    notes = []
    swapped = side_b.us < side_a.us
    if swapped:
        a, b, pa, pb, side_a, side_b = b, a, pb, pa, side_b, side_a
        notes.append(f"{side_b.label} is the slower side: explaining it against {side_a.label}")
    notes += _work_note(side_a, side_b)
    notes += profiler_note(side_a) + profiler_note(side_b)
    gap = side_b.us - side_a.us
    noise = None if side_a.noise_us is None or side_b.noise_us is None else side_a.noise_us + side_b.noise_us
    causes = mark_noise(pair_causes(pa, pb, a, b), noise)
    unexplained = gap - sum(c.us for c in causes)
    notes += timing_notes([a, b])
    return Explanation(a=side_a, b=side_b, gap_us=gap, causes=causes, unexplained_us=unexplained,
                       basis=basis_name, basis_detail=basis_detail,
                       swapped=swapped, notes=notes, noise_us=noise,
                       distinguishable=noise is None or abs(gap) > noise,
                       explained=is_explained(unexplained, gap),
                       unexplained_within_noise=noise is not None and abs(unexplained) <= noise)
