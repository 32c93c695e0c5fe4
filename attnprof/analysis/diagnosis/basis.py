"""Which numbers a question is answered on (true times or profiled windows), and the notes about them."""
from __future__ import annotations

from attnprof.analysis.diagnosis.parts import phase_order, true_phases
from attnprof.analysis.diagnosis.records import EXPLAINED_TOLERANCE, Selection, Side
from attnprof.analysis.sites import describe_site
from attnprof.units import us_text

#: Sites without a true time the basis names before "and N more": one line's worth
SHOWN_MISSING_SITES = 4
#: Share of a side's time the profiler's own cost must reach to be noted: as much as the causes may miss
#: (EXPLAINED_TOLERANCE), since below that it could not change what the explanation says
PROFILER_NOTE_SHARE = EXPLAINED_TOLERANCE
#: Guards that share's scale against a side of zero µs
_SMALLEST_SCALE_US = 1e-9

_TRUE_TEXT = ("true times: each site's true µs (around the attention entry point, outside the profiler) plus the "
              "busy time of its layout-prep copies; the GPU idle around the entry point is the profiler's and "
              "counts as 0; launch (on CPU: other) is what the true time leaves after the kernels")
_PROFILED_TEXT = "profiled windows as traced: launch includes the profiler's own CPU cost"


def basis(sels: list[Selection]) -> tuple[str, str, set[str]]:
    """(basis, what it means, phases on true times): per phase, true times when every site of every side has one."""
    phases = sorted({s.phase for sel in sels for s in sel.sites}, key=phase_order)
    true = true_phases(sels)
    if true == set(phases):
        return "true", _TRUE_TEXT, true
    missing = sorted({f"{s.site} ({s.phase})" for sel in sels for s in sel.sites if s.true_us is None})
    shown = ", ".join(missing[:SHOWN_MISSING_SITES]) + (
        f" and {len(missing) - SHOWN_MISSING_SITES} more" if len(missing) > SHOWN_MISSING_SITES else "")
    if not true:
        return "profiled", f"{_PROFILED_TEXT} (no true times for {shown})", true
    return "mixed", (f"{'/'.join(p for p in phases if p in true)}: {_TRUE_TEXT}; "
                     f"{'/'.join(p for p in phases if p not in true)}: {_PROFILED_TEXT} (no true times for {shown})"
                     ), true


def timing_notes(sels: list[Selection]) -> list[str]:
    """The sites' timing warnings (noisy machine, implausible inflation, too few samples), once each."""
    return list(dict.fromkeys(f"{describe_site(s)} ({s.phase}): {w}" for sel in sels for s in sel.sites
                              for w in s.warnings))


def profiler_note(side: Side) -> list[str]:
    if side.profiler_us > PROFILER_NOTE_SHARE * max(side.us, _SMALLEST_SCALE_US):
        return [f"{side.label}: {us_text(side.profiler_us)} per call of its profiled window is the profiler's own cost "
                "(GPU idle around the entry point, and the stretch the true time removes), left out"]
    return []
