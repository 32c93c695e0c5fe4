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
    if not sites:
        return None
    total = 0.0
    for s in sites:
        q1, q3 = s.true_q1_us, s.true_q3_us
        if q1 is None or q3 is None or not s.timed_calls:
            return None
        total += NOTCH * (q3 - q1) / math.sqrt(s.timed_calls) * s.calls / forward_calls
    return total


def mark_noise(causes: list[Cause], noise: float | None) -> list[Cause]:
    """Causes no bigger than the noise are marked and go after the others: they are not ranked."""
    if noise is None:
        return causes
    for c in causes:
        c.within_noise = abs(c.us) <= noise
    return [c for c in causes if not c.within_noise] + [c for c in causes if c.within_noise]
