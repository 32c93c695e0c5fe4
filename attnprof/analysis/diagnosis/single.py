"""`diagnose(selection)`: where the time of a call, a site or a whole run goes, as causes that add up to it."""
from __future__ import annotations

from attnprof.analysis.diagnosis.accumulate import CauseSums, ranked
from attnprof.analysis.diagnosis.backends import is_hopper
from attnprof.analysis.diagnosis.basis import basis, profiler_note, timing_notes
from attnprof.analysis.diagnosis.causes_copy import single_copies
from attnprof.analysis.diagnosis.causes_host import single_launch_and_other
from attnprof.analysis.diagnosis.causes_kernel import single_compute
from attnprof.analysis.diagnosis.noise import mark_noise
from attnprof.analysis.diagnosis.parts import PhaseParts, phase_order, phase_parts, side
from attnprof.analysis.diagnosis.records import Cause, Diagnosis, Selection, is_explained
from attnprof.analysis.diagnosis.selection import site_selection
from attnprof.analysis.records import Report
from attnprof.trace.runinfo import CallInfo


def single_causes(parts: dict[str, PhaseParts], sel: Selection) -> list[Cause]:
    """Per phase, the side's parts: its copies by kind, its kernels by backend, launch and other."""
    sums: CauseSums = {}
    hopper = is_hopper(sel.report)
    for phase in sorted(parts, key=phase_order):
        p = parts[phase]
        single_copies(sums, phase, p)
        single_compute(sums, phase, p, sel, hopper)
        single_launch_and_other(sums, phase, p)
    return ranked(sums, scale=sum(p.total for p in parts.values()))


def diagnose(sel: Selection) -> Diagnosis:
    """Where the time of the selected call(s) goes: causes adding up to their time per call."""
    basis_name, basis_detail, on_true = basis([sel])
    parts = phase_parts(sel, on_true)
    subject = side(sel, parts)
    causes = mark_noise(single_causes(parts, sel), subject.noise_us)
    unexplained = subject.us - sum(c.us for c in causes)
    return Diagnosis(subject=subject, causes=causes, unexplained_us=unexplained,
                     basis=basis_name, basis_detail=basis_detail, notes=profiler_note(subject) + timing_notes([sel]),
                     explained=is_explained(unexplained, subject.us))


def diagnose_sites(report: Report, call_info: dict[int, CallInfo] | None = None) -> list[Diagnosis]:
    """One diagnosis per call site (fwd and bwd together), slowest in total first."""
    out = [diagnose(site_selection(report, site, call_info)) for site in dict.fromkeys(s.site for s in report.sites)]
    out.sort(key=lambda d: -d.subject.us * d.subject.calls)
    return out
