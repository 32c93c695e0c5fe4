"""TensorBoard scalars of a run: per call site and phase, each part of the window, averaged per step.

The event file goes into the run folder itself, so `tensorboard --logdir traces` shows the scalars under the same
run name as the PyTorch Profiler tab (torch-tb-profiler) and the attnprof tab. Tags read
`attnprof/<site> <phase>/<part>_us` (`<site> <op> <phase>` when one line calls two attention ops), the step is the
step the calls ran in (traces not made by `attnprof trace` have no steps: all their calls are step 0).

Written with TensorBoard's own event writer and protos: no torch, no TensorFlow.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from attnprof.analysis.records import CallSplit, Report
from attnprof.render.base import Renderer

#: Ends the names of the event files attnprof writes, so writing again replaces them instead of doubling every point.
EVENT_FILE_SUFFIX = ".attnprof"
TAG_PREFIX = "attnprof"
PARTS = ("window_us", "compute_us", "copy_us", "launch_us", "other_us")
_DESCRIPTIONS = {
    "window_us": "window: first layout-prep op of the call to the end of its last work, less interleaved work",
    "compute_us": "compute: the attention kernels",
    "copy_us": "copy: layout copies feeding the call and taking its output (see the attnprof tab for their lines)",
    "launch_us": "launch: the device idle inside the window, waiting for the CPU",
    "other_us": "other: the call's other kernels (memsets, fills); on CPU runs also the time between ops",
}


def scalar_series(report: Report) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, mean µs per call over the step's calls)], steps ascending. Parts a run has no value for
    (launch on CPU runs) have no tag."""
    ops_at = defaultdict(set)
    for c in report.calls:
        ops_at[(c.site, c.phase)].add(c.op)
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in report.calls:
        group = f"{c.site} {c.op} {c.phase}" if len(ops_at[(c.site, c.phase)]) > 1 else f"{c.site} {c.phase}"
        for part in PARTS:
            v = getattr(c, part)
            if v is not None:
                values[f"{TAG_PREFIX}/{group}/{part}"][_step(c)].append(v)
    return {tag: [(step, float(np.mean(vs))) for step, vs in sorted(by_step.items())]
            for tag, by_step in sorted(values.items())}


class ScalarsRenderer(Renderer[Report]):
    """The report's scalars: `render` gives them as JSON ({tag: [[step, µs], ...]}), `write` TensorBoard's event file
    into a folder, replacing the one attnprof wrote there before (a report without calls: a file without scalars)."""

    def render(self, report: Report) -> str:
        return json.dumps(scalar_series(report), indent=1) + "\n"

    def write(self, report: Report, folder: Path) -> Path:
        folder = Path(folder)
        old_files = list(folder.glob(f"events.out.tfevents.*{EVENT_FILE_SUFFIX}"))
        # Written in a private folder and renamed in whole: a full disk or a crash never leaves TensorBoard half a
        # file, and the previous file stays until the new one is complete.
        with tempfile.TemporaryDirectory(dir=folder, prefix=".attnprof-tb-") as tmp:
            _write_events(Path(tmp), scalar_series(report), _run_start(report))
            (written,) = Path(tmp).glob(f"events.out.tfevents.*{EVENT_FILE_SUFFIX}")
            path = folder / written.name
            os.replace(written, path)
        for old in old_files:
            if old != path:
                old.unlink()
        return path


def _write_events(folder: Path, series: dict[str, list[tuple[int, float]]], wall_time: float) -> None:
    writer = EventFileWriter(str(folder), filename_suffix=EVENT_FILE_SUFFIX)
    try:
        for tag, points in series.items():
            part = tag.rsplit("/", 1)[1]
            meta = scalar_metadata.create_summary_metadata(display_name=tag, description=_DESCRIPTIONS[part])
            meta.data_class = summary_pb2.DATA_CLASS_SCALAR
            for step, value in points:
                event = event_pb2.Event(wall_time=wall_time, step=step)
                event.summary.value.add(tag=tag, metadata=meta,
                                        tensor=tensor_util.make_tensor_proto(np.float32(value)))
                writer.add_event(event)
    finally:
        writer.close()


def _step(call: CallSplit) -> int:
    return call.step if call.step is not None else 0


def _run_start(report: Report) -> float:
    """The run's start as the points' wall time (TensorBoard's "relative" axis), else now."""
    started = (report.run or {}).get("started_at")
    if started:
        try:
            return datetime.fromisoformat(started).timestamp()
        except ValueError:
            pass
    return time.time()
