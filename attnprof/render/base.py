"""One base for every view of a Report (console table, attnprof.json, later dashboards and trace overlays)."""
from __future__ import annotations

from attnprof.analysis.records import Report


class Renderer:
    #: file name a renderer writes into a run folder, if it writes one
    output_name: str | None = None

    def render(self, report: Report) -> str:
        raise NotImplementedError
