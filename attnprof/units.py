"""How attnprof writes a duration, everywhere it writes one (console, explanations, dashboards, the gallery)."""
from __future__ import annotations


def us_text(v: float | None, *, unit: bool = True, signed: bool = False, missing: str = "n/a") -> str:
    """Microseconds with a thousands separator: one decimal under 1 ms (12.3 µs), none above (1,234 µs)."""
    if v is None:
        return missing
    sign = "+" if signed else ""
    text = f"{v:{sign},.1f}" if abs(v) < 1000 else f"{v:{sign},.0f}"
    return f"{text} µs" if unit else text
