"""The Perfetto / chrome://tracing overlay: a copy of a run's trace with attnprof's own tracks added.

`<worker>.attnprof.pt.trace.json.gz` holds every event of `<worker>.pt.trace.json.gz` byte for byte (the original is
never touched), plus one process, "attnprof", with

- a "calls" track: one slice per attention call window, named `<op> → <backend> <phase>`, its args the call's site,
  shapes, dtype, layout and split (µs) and its layout copies with their source lines;
- a "split" track under it: the same window cut into compute / copy / launch / other segments (and interleaved:
  other code's device work inside the window, which the window leaves out), so the GPU idle is visible;
- flow arrows from every copy the call was charged for (the kernel, or the host op on CPU runs) to the call.

Calls whose windows overlap go on extra "calls N" / "split N" tracks: slices on one track must nest.

The report's times are relative to the trace's t=0; analysis records where that is on the trace's clock
(Report.trace_base_us). The trace file itself is read here only as the raw events it copies.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import msgspec

from attnprof.analysis.records import COMPUTE, COPY, OTHER, CallSplit, Report
from attnprof.errors import AttnprofError
from attnprof.files import atomic_write, read_bytes
from attnprof.render.base import Renderer
from attnprof.trace.load import DERIVED_MARK

LAUNCH = "launch"
INTERLEAVED = "interleaved"  # other code's work inside the window: shown, but not part of the window
PROCESS_NAME = "attnprof"
CATEGORY = "attnprof"  # the cat of every event attnprof adds (flows are matched by cat and id)
FLOW_NAME = "copy → call"
#: Trace suffixes the overlay name replaces; the overlay always ends in .pt.trace.json.gz.
_TRACE_SUFFIXES = (".pt.trace.json.gz", ".pt.trace.json", ".json.gz", ".json")
#: How close a report time must be to a trace event's to be that event: attnprof.json rounds µs to 3 decimals.
_MATCH_TOL_US = 0.01
#: Colours for viewers that honour `cname` (chrome://tracing, TensorBoard's trace view); Perfetto colours by name.
_CNAME = {COMPUTE: "good", COPY: "terrible", LAUNCH: "grey", OTHER: "yellow", INTERLEAVED: "white"}


class _Event(msgspec.Struct, gc=False):
    """What the overlay needs of an original event: where it is, to bind arrows to it and keep ids unique."""

    ph: str = ""
    name: str = ""
    ts: float = 0.0
    dur: float = 0.0
    pid: int | str | None = None
    tid: int | str | None = None
    id: int | str | None = None


@dataclass
class _Placed:
    """A call placed on this trace's timeline (absolute µs), with the original events of its kernels."""

    call: CallSplit
    start: float
    end: float
    copy_events: list[_Event]  # the original slices of the copies charged to the call
    segments: list[tuple[float, float, str]]  # (start, end, category), tiling [start, end]
    lane: int = 0


def overlay_path(trace_path: Path, folder: Path | None = None) -> Path:
    """`<worker>.attnprof.pt.trace.json.gz` for `<worker>.pt.trace.json[.gz]`, in `folder` (default: beside it)."""
    trace_path = Path(trace_path)
    name = trace_path.name
    stem = next((name[: -len(s)] for s in _TRACE_SUFFIXES if name.endswith(s)), name)
    return Path(folder or trace_path.parent) / f"{stem}{DERIVED_MARK}pt.trace.json.gz"


class TraceOverlayRenderer(Renderer[Report]):
    """The overlay of one trace: `render` gives its Chrome trace JSON (the original's events and attnprof's), `write`
    the gzipped `<worker>.attnprof.pt.trace.json.gz` into a folder. The original is only read."""

    output_name: str

    def __init__(self, trace_path: Path):
        self.trace_path = Path(trace_path)
        self.output_name = overlay_path(self.trace_path).name

    def render(self, report: Report) -> str:
        return self._document(report).decode()

    def write(self, report: Report, folder: Path) -> Path:
        out_path = Path(folder) / self.output_name
        if out_path.resolve() == self.trace_path.resolve():
            raise AttnprofError(f"refusing to overwrite the original trace {self.trace_path}")
        # atomically: a viewer or TensorBoard polling the folder never sees half a file
        return atomic_write(out_path, gzip.compress(self._document(report), compresslevel=6))

    def _document(self, report: Report) -> bytes:
        data = read_bytes(self.trace_path)
        try:
            # Each original event stays its raw bytes (copied verbatim); a second pass reads the few fields we need.
            header: dict[str, msgspec.Raw] | None = None
            events_json: bytes | bytearray | msgspec.Raw = data
            if data.lstrip()[:1] != b"[":
                header = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
                events_json = header.get("traceEvents", msgspec.Raw(b"[]"))
            raw_events = msgspec.json.decode(events_json, type=list[msgspec.Raw])
            events = msgspec.json.decode(events_json, type=list[_Event])
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise AttnprofError(f"{self.trace_path} is not a Chrome trace ({e})") from None
        base = _time_base(report, self.trace_path)
        added = _overlay_events(report, base, events, single_trace=len(report.trace_files) <= 1)
        all_events = [*raw_events, *added]
        if header is None:
            return msgspec.json.encode(all_events)
        return msgspec.json.encode({**header, "traceEvents": all_events})


def _time_base(report: Report, trace_path: Path) -> float:
    """Where the report's t=0 is on this trace's clock: what analysis recorded for it (the loader's own t=0, never a
    copy of its rule)."""
    target = Path(trace_path).resolve()
    for name, base in zip(report.trace_files, report.trace_base_us):
        if Path(name).resolve() == target:
            return base
    raise AttnprofError(f"the report holds no time base for {trace_path}: analyse that trace again (attnprof analyze) "
                        "to draw its overlay")


def _overlay_events(report: Report, base: float, events: list[_Event], single_trace: bool = True) -> list[dict]:
    """The events attnprof adds to one trace (its t=0 at `base` µs): metadata, call slices, split segments and
    copy → call flows."""
    by_name = _index_slices(events, {k.name for c in report.calls for k in c.kernels})
    placed: list[_Placed] = []
    for call in report.calls:
        matched = [_find(by_name, k.name, base + k.start_us, k.dur_us) for k in call.kernels]
        if not single_trace and not any(matched):
            continue  # a call of another worker's trace
        start = base + call.start_us
        end = start + call.window_us + call.interleaved_us
        segments: list[tuple[float, float, str]] = [(base + g.start_us, base + g.start_us + g.dur_us, g.part)
                                                    for g in call.segments]
        copies = [ev for k, ev in zip(call.kernels, matched) if ev is not None and k.category == COPY]
        placed.append(_Placed(call, start, end, copies, segments))
    if not placed:
        return []
    lanes = _assign_lanes(placed)
    pid, tids = _free_ids(events, 2 * lanes)
    meta_ts = base
    out: list[dict] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": meta_ts, "args": {"name": PROCESS_NAME}},
        # first in viewers that sort processes (chrome://tracing, TensorBoard's trace view)
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "ts": meta_ts, "args": {"sort_index": -1}},
    ]
    for lane in range(lanes):
        suffix = f" {lane + 1}" if lane else ""
        for offset, track in enumerate(("calls", "split")):
            tid = tids[2 * lane + offset]
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": meta_ts,
                        "args": {"name": track + suffix}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "ts": meta_ts,
                        "args": {"sort_index": 2 * lane + offset}})
    flow_id = _first_free_flow_id(events)
    for p in placed:
        calls_tid, split_tid = tids[2 * p.lane], tids[2 * p.lane + 1]
        c = p.call
        out.append({"ph": "X", "cat": CATEGORY, "name": f"{c.op} → {c.backend} {c.phase}", "pid": pid,
                    "tid": calls_tid, "ts": p.start, "dur": p.end - p.start, "args": _call_args(c)})
        for s, e, category in p.segments:
            out.append({"ph": "X", "cat": CATEGORY, "name": category, "pid": pid, "tid": split_tid, "ts": s,
                        "dur": e - s, "cname": _CNAME[category],
                        "args": {"call": c.id, "phase": c.phase, "site": c.site, "part": category}})
        for ev in p.copy_events:
            if ev.pid is None or ev.tid is None:
                continue
            # Bound like Kineto's own arrows: the start at the copy slice's first instant on its own track, the end
            # (bp "e": the enclosing slice) at the same instant on the call's track, inside the call slice.
            end_ts = min(max(ev.ts, p.start), p.end)
            out.append({"ph": "s", "id": flow_id, "cat": CATEGORY, "name": FLOW_NAME, "pid": ev.pid, "tid": ev.tid,
                        "ts": ev.ts})
            out.append({"ph": "f", "bp": "e", "id": flow_id, "cat": CATEGORY, "name": FLOW_NAME, "pid": pid,
                        "tid": calls_tid, "ts": end_ts})
            flow_id += 1
    return out


# --- placing calls ------------------------------------------------------------------------------------------------


def _index_slices(events: list[_Event], names: set[str]) -> dict[str, list[_Event]]:
    """Complete events with one of `names`, by name, in time order."""
    out: dict[str, list[_Event]] = {}
    for ev in events:
        if ev.ph == "X" and ev.name in names:
            out.setdefault(ev.name, []).append(ev)
    for evs in out.values():
        evs.sort(key=lambda e: e.ts)
    return out


def _find(by_name: dict[str, list[_Event]], name: str, ts: float, dur: float) -> _Event | None:
    """The original slice with this name, start and duration (the same op can start at once on two threads)."""
    evs = by_name.get(name)
    if not evs:
        return None
    lo = _bisect_ts(evs, ts - _MATCH_TOL_US)
    for ev in evs[lo:]:
        if ev.ts > ts + _MATCH_TOL_US:
            break
        if abs(ev.dur - dur) <= _MATCH_TOL_US:
            return ev
    return None


def _bisect_ts(evs: list[_Event], ts: float) -> int:
    lo, hi = 0, len(evs)
    while lo < hi:
        mid = (lo + hi) // 2
        if evs[mid].ts < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _assign_lanes(placed: list[_Placed]) -> int:
    """Give each call the first lane free at its start; returns the number of lanes."""
    lane_ends: list[float] = []
    for p in sorted(placed, key=lambda p: (p.start, -p.end)):
        for i, lane_end in enumerate(lane_ends):
            if lane_end <= p.start:
                p.lane, lane_ends[i] = i, p.end
                break
        else:
            p.lane = len(lane_ends)
            lane_ends.append(p.end)
    return len(lane_ends)


def _free_ids(events: list[_Event], n_tids: int) -> tuple[int, list[int]]:
    """A pid and `n_tids` tids used by no event as pid or tid: viewers key threads by tid, so ours must not collide
    (small numbers, since Perfetto reads pids and tids as 32-bit)."""
    used = {v for ev in events for v in (ev.pid, ev.tid) if isinstance(v, int)}
    free = (i for i in range(1, 2**31) if i not in used)
    pid = next(free)
    return pid, [next(free) for _ in range(n_tids)]


def _first_free_flow_id(events: list[_Event]) -> int:
    ids = [ev.id for ev in events if isinstance(ev.id, int) and ev.ph in ("s", "t", "f")]
    return max(ids, default=0) + 1


def _call_args(c: CallSplit) -> dict:
    args = {
        "call": c.id, "op": c.op, "phase": c.phase, "site": c.site, "backend": c.backend, "found_by": c.found_by,
        "device": c.device, "step": c.step,
        "shapes": {k: "×".join(map(str, v)) for k, v in c.shapes.items()},
        "dtype": c.dtype, "layout": c.layout, "causal": c.causal, "gqa_ratio": c.gqa_ratio,
        "window_us": c.window_us, "compute_us": c.compute_us, "copy_us": c.copy_us, "launch_us": c.launch_us,
        "other_us": c.other_us, "interleaved_us": c.interleaved_us,
        "copies": [{"site": cp.site, "op": cp.op, "bytes": cp.bytes, "dur_us": round(cp.dur_us, 3),
                    "position": cp.position} for cp in c.copies],
    }
    # Viewers show null as "null": leave unknowns out; µs to the nanosecond.
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in args.items() if v is not None}
