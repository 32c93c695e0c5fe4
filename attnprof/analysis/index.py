"""Lookups over a Trace that the analyses share: an op's subtree, its siblings, the device work it launched,
the Python source line it ran from. Built once per trace with numpy; each query touches only a call's neighbourhood.
"""
from __future__ import annotations

import re
from functools import cached_property, lru_cache

import numpy as np

from attnprof.trace.model import HostKind, Trace
from attnprof.trace.runinfo import SOURCE_PREFIX, SourceRange, parse_source_range

_PY_FRAME_RE = re.compile(r"^(?P<file>.+)\((?P<line>\d+)\): (?P<func>.*)$")
#: Frames that are never "the user's code": the libraries attnprof looks through to find a call site, and the code
#: inductor generates for a torch.compile'd graph (/tmp/torchinductor_<user>/).
_LIBRARY_PATH_RE = re.compile(
    r"(^|/)(torch|flash_attn|flash_attn_interface|xformers|einops|attnprof|triton|importlib|runpy|contextlib|"
    r"functools|threading)(/|\.py)|(^|/)torchinductor_[^/]*/|^<"
)


def parse_python_frame(name: str) -> tuple[str, int, str] | None:
    m = _PY_FRAME_RE.match(name)
    if not m:
        return None
    return m["file"], int(m["line"]), m["func"]


_NO_ROWS = (np.empty(0, np.int64), np.empty(0))


@lru_cache(maxsize=1 << 16)  # a trace repeats a few thousand frame names millions of times
def _is_user_code(frame_name: str) -> bool:
    parsed = parse_python_frame(frame_name)
    return parsed is not None and not _LIBRARY_PATH_RE.search(parsed[0])


def short_path(path: str) -> str:
    """site-packages/x/y.py -> x/y.py; keeps what a user recognises."""
    for marker in ("site-packages/", "dist-packages/"):
        i = path.rfind(marker)
        if i >= 0:
            return path[i + len(marker):]
    return path


class TraceIndex:
    def __init__(self, trace: Trace):
        self.trace = trace
        h = trace.host
        self.names = trace.strings.values
        self.ts = h.ts
        self.end = h.ts + h.dur
        self.parent = trace.op_parent
        order = trace.host_order
        kinds = h.kind[order]
        self._nested = self._per_thread(order[(kinds == HostKind.OP) | (kinds == HostKind.ANNOTATION)])
        self._runtime = self._per_thread(order[kinds == HostKind.RUNTIME])
        self._python = self._per_thread(order[kinds == HostKind.PYTHON])
        # Scalar reads of one row: a memoryview item is a Python number; a numpy scalar costs several times more, and
        # the walks read a few hundred thousand of them on a large trace.
        self.start_of = np.ascontiguousarray(h.ts).data
        self.end_of = self.end.data
        self.kind_of = np.ascontiguousarray(h.kind).data
        self.tid_of = np.ascontiguousarray(h.tid).data
        self.parent_of = np.ascontiguousarray(self.parent).data
        self.name_id_of = np.ascontiguousarray(h.name).data
        self._siblings: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._python_spans: dict[int, tuple[float, float]] = {}
        self._source_ranges: dict[int, SourceRange | None] = {}  # name id -> its parse (None: not a source range)
        #: device rows the device-work queries have looked at: a cost measure (tests check it stays per-call local)
        self.device_rows_examined = 0

    def _per_thread(self, rows: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """thread -> (rows sorted by start, their starts)."""
        h = self.trace.host
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if len(rows) == 0:
            return out
        tids = h.tid[rows]
        bounds = np.flatnonzero(np.diff(tids)) + 1
        for chunk in np.split(rows, bounds):
            out[int(h.tid[chunk[0]])] = (chunk, h.ts[chunk])
        return out

    # --- host tree ---------------------------------------------------------------------------------------------

    def name(self, row: int) -> str:
        return self.names[self.name_id_of[row]]

    def subtree(self, row: int) -> np.ndarray:
        """Ops and ranges nested in `row` (itself included), in start order."""
        rows, starts = self._nested.get(self.tid_of[row], _NO_ROWS)
        end = self.end_of[row]
        lo = starts.searchsorted(self.start_of[row], side="left")
        hi = starts.searchsorted(end, side="right")
        sub = rows[lo:hi]
        return sub[self.end[sub] <= end + 1e-3]

    def children(self, row: int) -> list[int]:
        """Ops and ranges whose parent is `row`, in start order."""
        sub = self.subtree(row)
        return sub[self.parent[sub] == row].tolist()

    def siblings(self, row: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Ops and ranges with the same parent on the same thread, in start order; their starts; `row`'s position."""
        key = (int(self.trace.host.tid[row]), int(self.parent[row]))
        cached = self._siblings.get(key)
        if cached is None:
            tid, p = key
            rows, starts = self._nested.get(tid, (np.empty(0, np.int64), np.empty(0)))
            if p >= 0:
                lo = starts.searchsorted(self.ts[p], side="left")
                hi = starts.searchsorted(self.end[p], side="right")
                rows = rows[lo:hi]
            sib = rows[self.parent[rows] == p]
            cached = self._siblings[key] = (sib, self.ts[sib])
        sib, starts = cached
        pos = int(starts.searchsorted(self.ts[row], side="left"))
        while sib[pos] != row:  # equal start times: step to the row itself
            pos += 1
        return sib, starts, pos

    def ancestors(self, row: int):
        parent = self.parent_of
        p = parent[row]
        while p >= 0:
            yield p
            p = parent[p]

    # --- device work ---------------------------------------------------------------------------------------------

    def launches(self, row: int) -> list[tuple[int, int]]:
        """(runtime row, device row) for every piece of device work launched inside `row`'s time on its thread."""
        entry = self._runtime.get(self.tid_of[row])
        if entry is None:
            return []
        rows, starts = entry
        lo = starts.searchsorted(self.start_of[row], side="left")
        hi = starts.searchsorted(self.end_of[row], side="right")
        if lo == hi:
            return []
        by_corr = self.trace.device_by_correlation
        inside = rows[lo:hi]
        out: list[tuple[int, int]] = []
        for r, c in zip(inside.tolist(), self.trace.host.correlation[inside].tolist()):
            launched = by_corr.get(c)
            if launched is not None:
                out.extend((r, d) for d in launched)
        return out

    def innermost_op(self, candidates: np.ndarray, t: float) -> int:
        """The latest-starting row among `candidates` (start-ordered) whose interval contains t, or -1."""
        start, end = self.start_of, self.end_of
        for r in candidates[::-1].tolist():
            if start[r] <= t <= end[r]:
                return r
        return -1

    @cached_property
    def _device_timelines(self) -> dict[tuple[int, int | None], tuple[np.ndarray, ...]]:
        """(device, stream) and (device, None: all its streams) -> (rows sorted by start, their starts, their ends,
        running max of those ends).

        Built once. The running max is non-decreasing, so a binary search on it finds the first row still running
        at a time; per stream, work runs one after another, so a query touches only the rows near its window (a
        long kernel on another stream does not widen it), never all earlier work.
        """
        d = self.trace.device
        order = np.argsort(d.ts, kind="stable")
        out: dict[tuple[int, int | None], tuple[np.ndarray, ...]] = {}
        devices = d.device[order]
        for device in np.unique(devices).tolist():
            on_device = order[devices == device]
            streams = d.stream[on_device]
            for stream in [None, *np.unique(streams).tolist()]:
                rows = on_device if stream is None else on_device[streams == stream]
                starts = d.ts[rows]
                ends = starts + d.dur[rows]
                out[device, stream] = (rows, starts, ends, np.maximum.accumulate(ends))
        return out

    def device_rows_between(self, start: float, end: float, device: int | None = None) -> np.ndarray:
        """Device rows overlapping [start, end] (on one device if given), in start order."""
        found = []
        for (dev, stream), (rows, starts, ends, ends_so_far) in self._device_timelines.items():
            if stream is None or (device is not None and dev != device):
                continue
            lo = int(ends_so_far.searchsorted(start, side="right"))  # every row before lo ended by `start`
            hi = int(starts.searchsorted(end, side="right"))
            self.device_rows_examined += max(hi - lo, 0)
            found.append(rows[lo:hi][ends[lo:hi] > start])
        if not found:
            return np.empty(0, dtype=np.int64)
        rows = np.concatenate(found)
        return rows[np.lexsort((rows, self.trace.device.ts[rows]))]

    def last_device_end_before(self, t: float, device: int) -> float:
        """End of the latest-ending device work that started before t on `device` (-inf if none).

        A call's own device work starts at or after the t it asks about, so none of it is counted here.
        """
        timeline = self._device_timelines.get((device, None))
        if timeline is None:
            return -np.inf
        _, starts, _, ends_so_far = timeline
        hi = int(starts.searchsorted(t, side="left"))
        self.device_rows_examined += 1
        return float(ends_so_far[hi - 1]) if hi else -np.inf

    # --- source lines ----------------------------------------------------------------------------------------------

    def source_annotation(self, row: int) -> SourceRange | None:
        """(site, storage read, copy number) of the `attnprof.src:` range put around the torch call that ran `row`."""
        for a in [row, *self.ancestors(row)]:
            name_id = self.name_id_of[a]
            if name_id not in self._source_ranges:
                n = self.names[name_id]
                self._source_ranges[name_id] = parse_source_range(n) if n.startswith(SOURCE_PREFIX) else None
            found = self._source_ranges[name_id]
            if found is not None:
                return found
        return None

    @cached_property
    def _py_parent_row(self) -> np.ndarray:
        """Per host row: the row of its Python parent frame (the last one if the id repeats), or -1; found for all
        frames at once, so that walking a chain is indexing, not a search per frame."""
        h = self.trace.host
        out = np.full(len(h), -1, dtype=np.int64)
        rows = np.flatnonzero(h.kind == HostKind.PYTHON)
        if not len(rows):
            return out
        ids, wanted = h.py_id[rows], h.py_parent[rows]
        lo, span = int(ids.min()), int(ids.max()) - int(ids.min()) + 1
        if span <= 2 * len(ids) and (ids[1:] > ids[:-1]).all():
            # Kineto numbers frames 1, 2, 3, ... as it records them: an id's row is a table lookup
            row_of_id = np.full(span, -1, dtype=np.int64)
            row_of_id[ids - lo] = rows
            inside = (wanted >= lo) & (wanted < lo + span)
            out[rows[inside]] = row_of_id[wanted[inside] - lo]
            return out
        order = np.argsort(ids, kind="stable")
        ids, id_rows = ids[order], rows[order]
        at = ids.searchsorted(wanted, side="right") - 1
        found = (at >= 0) & (ids[np.maximum(at, 0)] == wanted)
        out[rows[found]] = id_rows[at[found]]
        return out

    def python_chain(self, row: int) -> list[int]:
        """Python frame rows active when `row` started on its thread, innermost first (empty without with_stack)."""
        entry = self._python.get(self.tid_of[row])
        if entry is None:
            return []
        rows, starts = entry
        t = self.start_of[row]
        i = int(starts.searchsorted(t, side="right")) - 1
        if i < 0:
            return []
        parent, end = self._py_parent_of, self.end_of
        frame = int(rows[i])
        chain = []
        while frame >= 0:
            if end[frame] >= t:
                chain.append(frame)
            frame = parent[frame]
        return chain

    @cached_property
    def _py_parent_of(self) -> memoryview:
        return self._py_parent_row.data

    def python_span(self, tid: int) -> tuple[float, float]:
        """(first start, last end) of the Python frames recorded on a thread: frames still running when the profiler
        started or stopped are cut there."""
        span = self._python_spans.get(tid)
        if span is None:
            entry = self._python.get(tid)
            if entry is None:
                span = (float("-inf"), float("inf"))
            else:
                rows, starts = entry
                span = (float(starts[0]), float(self.end[rows].max()))
            self._python_spans[tid] = span
        return span

    def is_user_frame(self, frame: int) -> bool:
        return _is_user_code(self.name(frame))

    def python_site(self, row: int) -> tuple[str, str] | None:
        """(file:line, function) of the innermost user-code Python frame around `row`, from with_stack frames.

        torch.profiler records the line a frame was at when it was entered, so for a function this is its first
        line: the right function, not always the exact statement (attnprof's own ranges give the statement).
        """
        entry = self._python.get(int(self.trace.host.tid[row]))
        if entry is None:
            return None
        rows, starts = entry
        t = self.ts[row]
        i = int(starts.searchsorted(t, side="right")) - 1
        if i < 0:
            return None
        parent = self._py_parent_row
        frame = int(rows[i])
        while frame >= 0 and self.end[frame] < t:
            frame = int(parent[frame])
        while frame >= 0:
            parsed = parse_python_frame(self.name(frame))
            if parsed and not _LIBRARY_PATH_RE.search(parsed[0]):
                file, line, func = parsed
                return f"{short_path(file)}:{line}", func
            frame = int(parent[frame])
        return None
