"""attnprof.json: the Report as it is (schema in README, versioned by `schema_version`)."""
from __future__ import annotations

import msgspec

from attnprof.analysis.records import Report
from attnprof.render.base import Renderer


def round_floats(obj):
    """Floats to 3 decimals (µs to the nanosecond), small ones to 6 significant digits (a TFLOP/s rate of a tiny
    CPU case is 0.00544), through dicts and lists: in place (they are `msgspec.to_builtins`'s, made for this), and
    without a call per text or integer, since a report of 100k calls holds millions of values."""
    if isinstance(obj, float):
        return round(obj, 3) if abs(obj) >= 1 else float(f"{obj:.6g}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(v) not in _LEAVES:
                obj[k] = round_floats(v)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if type(v) not in _LEAVES:
                obj[i] = round_floats(v)
    return obj


_LEAVES = frozenset((str, int, bool, type(None)))


class JsonRenderer(Renderer[Report]):
    output_name: str = "attnprof.json"

    def render(self, report: Report) -> str:
        doc = round_floats(msgspec.to_builtins(report))
        return msgspec.json.format(msgspec.json.encode(doc), indent=1).decode() + "\n"
