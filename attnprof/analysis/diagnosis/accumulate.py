"""Causes summed over phases, ranked, with the negligible ones left out."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from attnprof.analysis.diagnosis.records import Cause

#: Causes below this many µs per call are left out (their µs stay in the unexplained remainder): the tables show
#: one decimal, so a smaller cause would read as 0.0
NEGLIGIBLE_US = 0.05
#: ... and below this share of the gap (or of the diagnosed time): a 0.1% cause changes no decision
NEGLIGIBLE_SHARE = 1e-3


@dataclass
class CauseSum:
    """A cause being summed over phases."""

    kind: str
    us: float = 0.0
    by_phase: dict[str, float] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    fix: str = ""
    sources: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, phase: str, us: float, detail: str | None = None, sources: dict[str, float] | None = None):
        self.us += us
        self.by_phase[phase] = self.by_phase.get(phase, 0.0) + us
        if detail:
            self.details.append(detail)
        for s, v in (sources or {}).items():
            self.sources[s] += v

    def sources_ranked(self) -> list[str]:
        return sorted(self.sources, key=lambda s: -abs(self.sources[s]))

    def cause(self) -> Cause:
        return Cause(kind=self.kind, us=self.us, detail="; ".join(self.details), fix=self.fix,
                     sources=self.sources_ranked(), by_phase=dict(self.by_phase))


#: The causes of one question being summed, by kind
CauseSums = dict[str, CauseSum]


def cause_sum(sums: CauseSums, kind: str) -> CauseSum:
    return sums.setdefault(kind, CauseSum(kind))


def negligible(scale: float) -> float:
    """Causes below this are noise: left out (their µs stay in the unexplained remainder)."""
    return max(NEGLIGIBLE_US, NEGLIGIBLE_SHARE * abs(scale))


def ranked(sums: CauseSums, scale: float) -> list[Cause]:
    """The causes, biggest first, less those negligible against `scale` (the gap, or the diagnosed time)."""
    min_us = negligible(scale)
    causes = [a.cause() for a in sums.values() if abs(a.us) > min_us]
    causes.sort(key=lambda c: -c.us)
    return causes
