"""What a run folder gets for trace viewers: the Perfetto / Chrome overlay of each trace and the TensorBoard scalars."""
from __future__ import annotations

from pathlib import Path

from attnprof.analysis.records import Report
from attnprof.render.chrome_trace import overlay_path, write_overlay
from attnprof.render.tensorboard import write_scalars

_CHROME_TRACE_SUFFIXES = (".json", ".json.gz")


def write_trace_views(report: Report, folder: Path) -> list[Path]:
    """Write `<worker>.attnprof.pt.trace.json.gz` for every torch.profiler trace of the report and the TensorBoard
    event file into `folder`; returns the files written. Nsight Systems exports get no overlay (not Chrome JSON)."""
    folder = Path(folder)
    written = write_overlays(report, folder)
    scalars = write_scalars(report, folder)
    if scalars:
        written.append(scalars)
    return written


def write_overlays(report: Report, folder: Path) -> list[Path]:
    """The Perfetto / Chrome overlay of each torch.profiler trace of the report (each rank's, for a job)."""
    written = []
    for name in report.trace_files if report.calls else ():  # no call: nothing to add to a copy of the trace
        trace = Path(name)
        if trace.name.endswith(_CHROME_TRACE_SUFFIXES) and trace.is_file():
            written.append(write_overlay(trace, report, overlay_path(trace, folder)))
    return written
