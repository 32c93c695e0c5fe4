"""What a run folder gets for trace viewers: the Perfetto / Chrome overlay of each trace and the TensorBoard scalars."""
from __future__ import annotations

from pathlib import Path

from attnprof.analysis.records import Report
from attnprof.render.base import Renderer
from attnprof.render.chrome_trace import TraceOverlayRenderer
from attnprof.render.tensorboard import ScalarsRenderer

_CHROME_TRACE_SUFFIXES = (".json", ".json.gz")


def trace_view_renderers(report: Report) -> list[Renderer[Report]]:
    """The overlay of every torch.profiler trace of the report and the TensorBoard scalars; none for a report
    without calls (nothing to add to a copy of the trace, no scalar to show)."""
    if not report.calls:
        return []
    return [*overlay_renderers(report), ScalarsRenderer()]


def overlay_renderers(report: Report) -> list[TraceOverlayRenderer]:
    """The Perfetto / Chrome overlay of each torch.profiler trace of the report (each rank's, for a job). Nsight
    Systems exports get none (not Chrome JSON)."""
    traces = [Path(name) for name in report.trace_files] if report.calls else []
    return [TraceOverlayRenderer(t) for t in traces if t.name.endswith(_CHROME_TRACE_SUFFIXES) and t.is_file()]
