"""How far the true times could move on another run, and the causes no bigger than that."""
from __future__ import annotations

import math

from attnprof.analysis.diagnosis.records import Cause
from attnprof.analysis.records import SiteSummary

#: McGill, Tukey & Larsen (1978): median ± 1.57 IQR / sqrt(n) is a ~95% interval of the median; two medians whose
#: intervals do not overlap differ
NOTCH = 1.57


def noise_us(sites: list[SiteSummary], forward_calls: int) -> float | None:
    """Each site's notch half-width (NOTCH IQR / sqrt(timed samples)), weighted per call like Side.true_us."""
    if not sites or any(s.true_q1_us is None or s.true_q3_us is None or not s.timed_calls for s in sites):
        return None
    return sum(NOTCH * (s.true_q3_us - s.true_q1_us) / math.sqrt(s.timed_calls) * s.calls / forward_calls
               for s in sites)


def mark_noise(causes: list[Cause], noise: float | None) -> list[Cause]:
    """Causes no bigger than the noise are marked and go after the others: they are not ranked."""
    if noise is None:
        return causes
    for c in causes:
        c.within_noise = abs(c.us) <= noise
    return [c for c in causes if not c.within_noise] + [c for c in causes if c.within_noise]
