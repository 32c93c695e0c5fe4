"""attnprof.json: the Report as it is (schema in README, versioned by `schema_version`)."""
from __future__ import annotations

import msgspec

from attnprof.analysis.records import Report
from attnprof.render.base import Renderer


def round_floats(obj):
    """Floats to 3 decimals (µs to the nanosecond), small ones to 6 significant digits (a TFLOP/s rate of a tiny
    CPU case is 0.00544), through dicts and lists."""
    if isinstance(obj, float):
        return round(obj, 3) if abs(obj) >= 1 else float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: round_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [round_floats(v) for v in obj]
    return obj


class JsonRenderer(Renderer[Report]):
    output_name: str = "attnprof.json"

    def render(self, report: Report) -> str:
        doc = round_floats(msgspec.to_builtins(report))
        return msgspec.json.format(msgspec.json.encode(doc), indent=1).decode() + "\n"
