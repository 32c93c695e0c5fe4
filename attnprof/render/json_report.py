"""attnprof.json: the Report as it is (schema in README, versioned by `schema_version`)."""
from __future__ import annotations

import msgspec

from attnprof.analysis.records import Report
from attnprof.render.base import Renderer


def _round(obj):
    if isinstance(obj, float):
        return round(obj, 3)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


class JsonRenderer(Renderer):
    output_name = "attnprof.json"

    def render(self, report: Report) -> str:
        doc = _round(msgspec.to_builtins(report))
        return msgspec.json.format(msgspec.json.encode(doc), indent=1).decode()
