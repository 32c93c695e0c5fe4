"""The one normalized event model every loader produces and every analysis reads.

Columnar on purpose: a training trace holds millions of events, so events live in numpy arrays (one row per event,
names interned in a string table), never as one Python object each. Times are float64 microseconds relative to
`Trace.base_us`, which keeps nanosecond precision for traces that start hours after the epoch of their clock.
"""
from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property

import msgspec
import numpy as np

NO_ID = -1


class HostKind(IntEnum):
    OP = 0  # an operator: aten::*, custom ops, autograd nodes (torch cpu_op; nsys autograd NVTX range)
    ANNOTATION = 1  # a user range: record_function / NVTX push-pop (attnprof's own ranges among them)
    RUNTIME = 2  # a CUDA runtime or driver call (cudaLaunchKernel, cuLaunchKernel, cudaMemcpyAsync, ...)
    PYTHON = 3  # a Python function frame (torch.profiler with_stack=True)


class DeviceKind(IntEnum):
    KERNEL = 0
    MEMCPY = 1
    MEMSET = 2


class StringTable:
    """Interned strings: events store an int32 id, the table stores each distinct name once."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def intern_many(self, names: list[str]) -> np.ndarray:
        """Their ids, new names added in order of first appearance. Python runs once per distinct name, the rest is
        two C-level passes (a loop per name cost more than decoding the trace)."""
        index, values = self._index, self.values
        for s in dict.fromkeys(names):
            if s not in index:
                index[s] = len(values)
                values.append(s)
        return np.fromiter(map(index.__getitem__, names), dtype=np.int32, count=len(names))

    def ids_where(self, predicate) -> np.ndarray:
        """Ids of all strings for which predicate(str) is true (to select events by name, vectorised)."""
        return np.array([i for i, s in enumerate(self.values) if predicate(s)], dtype=np.int32)

    def __getitem__(self, i: int) -> str:
        return self.values[i]

    def __len__(self) -> int:
        return len(self.values)


class RawColumn:
    """Per-row raw JSON bytes (or None), kept as one buffer and the spans of the rows that have one: no Python
    object per row, and nothing for the many rows without (Python frames, runtime calls)."""

    def __init__(self, n: int, blob: bytes, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        self.n = n
        self.blob = blob
        self.rows = rows  # int64, ascending: the rows that have bytes
        self.starts = starts  # int64 per entry of `rows`: their span in blob
        self.ends = ends
        self._views: tuple[memoryview, ...] | None = None  # rows, starts, ends, for __getitem__

    @classmethod
    def from_rows(cls, values: list, n: int | None = None, at: np.ndarray | None = None) -> RawColumn:
        """From bytes-like values (bytes, msgspec.Raw; empty or None for none): one per row, or, given `at`, those
        of rows `at` (ascending) of `n`, the other rows none."""
        try:
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        except TypeError:  # a None among them
            values = [v or b"" for v in values]
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        have = np.flatnonzero(lengths)
        ends = np.cumsum(lengths[have])
        rows = have if at is None else np.asarray(at, dtype=np.int64)[have]
        return cls(len(values) if n is None else n, b"".join(values), rows, ends - lengths[have], ends)

    @classmethod
    def concatenate(cls, parts: list[RawColumn]) -> RawColumn:
        blob_shift = np.cumsum([0] + [len(p.blob) for p in parts[:-1]], dtype=np.int64)
        row_shift = np.cumsum([0] + [p.n for p in parts[:-1]], dtype=np.int64)
        empty = [np.empty(0, np.int64)]
        return cls(sum(p.n for p in parts), b"".join(p.blob for p in parts),
                   np.concatenate(empty + [p.rows + s for p, s in zip(parts, row_shift)]),
                   np.concatenate(empty + [p.starts + s for p, s in zip(parts, blob_shift)]),
                   np.concatenate(empty + [p.ends + s for p, s in zip(parts, blob_shift)]))

    def take(self, keep: np.ndarray) -> RawColumn:
        """The column of rows `keep` (ascending row numbers)."""
        kept = np.isin(self.rows, keep)
        return RawColumn(len(keep), self.blob, np.searchsorted(keep, self.rows[kept]), self.starts[kept],
                         self.ends[kept])

    def first_bytes(self) -> np.ndarray:
        """The first byte of each stored value (in `rows` order): to check them all at once."""
        return np.frombuffer(self.blob, dtype=np.uint8)[self.starts] if len(self.blob) else self.starts.astype(
            np.uint8)

    def drop(self, entries: np.ndarray) -> None:
        """Make the rows of these entries (positions in `rows`) None."""
        keep = np.ones(len(self.rows), dtype=bool)
        keep[entries] = False
        self.rows, self.starts, self.ends = self.rows[keep], self.starts[keep], self.ends[keep]
        self._views = None

    def __getitem__(self, i: int) -> bytes | None:
        if self._views is None:  # read one at a time as Python ints: a numpy scalar per read costs several times more
            self._views = tuple(np.ascontiguousarray(a).data for a in (self.rows, self.starts, self.ends))
        rows, starts, ends = self._views
        j = bisect.bisect_left(rows, i)
        if j < len(rows) and rows[j] == i:
            return self.blob[starts[j]:ends[j]]
        return None

    def __len__(self) -> int:
        return self.n


@dataclass
class HostEvents:
    """CPU-side intervals: ops, annotations, runtime calls, Python frames."""

    ts: np.ndarray  # float64 µs, relative to Trace.base_us
    dur: np.ndarray  # float64 µs
    tid: np.ndarray  # int32 index into Trace.threads
    kind: np.ndarray  # int8 HostKind
    name: np.ndarray  # int32 string id
    ext_id: np.ndarray  # int64 profiler "External id", NO_ID if none
    seq: np.ndarray  # int64 autograd sequence number linking forward ops to their backward nodes, NO_ID if none
    fwd_tid: np.ndarray  # int64 thread id of the forward op, for backward nodes (0 or NO_ID otherwise)
    correlation: np.ndarray  # int64 runtime calls: correlation id of the device work they launch
    py_id: np.ndarray  # int64 Python frames: own id
    py_parent: np.ndarray  # int64 Python frames: parent frame id
    # per row (a list or a RawColumn): raw JSON bytes, or None; decoded on demand
    input_dims: list | RawColumn  # the op's input shapes
    input_types: list | RawColumn  # the op's input dtypes
    input_strides: list | RawColumn  # the op's input strides
    concrete_inputs: list | RawColumn  # the op's scalar arguments as text
    op_id: np.ndarray | None = None  # int64 per row: the op's id where the tool numbers ops (nsys + PyTorch NVTX)
    input_ops: list | None = None  # per row: [(producer op id, output index), ...] for each input, or None

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def end(self) -> np.ndarray:
        return self.ts + self.dur

    def dims(self, i: int) -> list:
        """Input shapes; an entry holding a negative size (not a shape) reads as [] ."""
        return [[] if type(d) is list and d and _negative_size(d) else d for d in _decoded(self.input_dims[i])]

    def types(self, i: int) -> list:
        return _decoded(self.input_types[i])

    def strides(self, i: int) -> list:
        return _decoded(self.input_strides[i])

    def concrete(self, i: int) -> list:
        return _decoded(self.concrete_inputs[i])


def _negative_size(sizes: list) -> bool:
    try:  # sizes are integers: one C-level pass
        return min(sizes) < 0
    except TypeError:  # anything else in there (a hand-edited trace): only its integers count
        return any(isinstance(x, int) and x < 0 for x in sizes)


def _decoded(raw: bytes | None) -> list:
    """One op's raw JSON argument column, decoded on demand (most ops are never asked); [] unless it is a list
    (a hand-edited or foreign trace can hold anything there)."""
    if not raw:
        return []
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return []
    return value if isinstance(value, list) else []


@dataclass
class DeviceEvents:
    """GPU activity: kernels, memcpys, memsets."""

    ts: np.ndarray  # float64 µs, relative to Trace.base_us
    dur: np.ndarray
    device: np.ndarray  # int16
    stream: np.ndarray  # int64
    kind: np.ndarray  # int8 DeviceKind
    name: np.ndarray  # int32 string id
    correlation: np.ndarray  # int64 id shared with the runtime call that launched it
    nbytes: np.ndarray  # int64 memcpy/memset bytes, 0 for kernels

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def end(self) -> np.ndarray:
        return self.ts + self.dur


@dataclass
class Trace:
    source: str  # path it was loaded from
    format: str  # "torch.profiler" | "nsys"
    strings: StringTable
    host: HostEvents
    device: DeviceEvents
    threads: list[str]  # thread identities, indexed by HostEvents.tid
    base_us: float  # absolute time of t=0, µs
    device_properties: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # loader-specific facts (with_stack, record_shapes, ...)
    notes: list[str] = field(default_factory=list)  # what the loader skipped or repaired, and why (for the report)

    @property
    def has_device_activity(self) -> bool:
        return len(self.device) > 0

    def names(self, ids: np.ndarray) -> list[str]:
        values = self.strings.values
        return [values[i] for i in ids]

    @cached_property
    def host_order(self) -> np.ndarray:
        """Host event rows sorted by thread, then start time, outer before inner (longer first on ties)."""
        h = self.host
        # lexsort on the three keys would sort three times; sorting by start, then by thread (a counting sort when
        # the thread numbers fit 16 bits), then only the runs that share thread and start by duration, gives the
        # same order (each sort stable) in about a third of the time.
        order = np.argsort(h.ts, kind="stable")
        tid = h.tid[order]
        if len(tid) and tid.min() >= 0 and tid.max() < 1 << 15:
            tid = tid.astype(np.int16)
        order = order[np.argsort(tid, kind="stable")]
        tid, ts = h.tid[order], h.ts[order]
        tie = (tid[1:] == tid[:-1]) & (ts[1:] == ts[:-1])
        if tie.any():
            in_run = np.zeros(len(order), dtype=bool)
            in_run[1:] = tie
            in_run[:-1] |= tie
            run = np.concatenate(([0], np.cumsum(~tie)))[in_run]
            rows = order[in_run]
            order[in_run] = rows[np.lexsort((-h.dur[rows], run))]
        return order

    @cached_property
    def op_parent(self) -> np.ndarray:
        """For OP and ANNOTATION rows: the row of the innermost OP/ANNOTATION enclosing it on its thread, else -1.

        Python frames and runtime calls are left out of this tree (they are -1 and are never parents): an op's
        parent is the op or range that called it.
        """
        h = self.host
        parent = np.full(len(h), -1, dtype=np.int64)
        nested = (h.kind == HostKind.OP) | (h.kind == HostKind.ANNOTATION)
        order = self.host_order[nested[self.host_order]]
        n = len(order)
        if n == 0:
            return parent
        # In this order a row's parent is the latest earlier row of its thread still running at its start (what a
        # stack of open rows gives): its predecessor, or one of the predecessor's ancestors.
        starts = h.ts[order]
        ends = starts + h.dur[order]
        same_thread = h.tid[order][1:] == h.tid[order][:-1]
        inside_previous = np.zeros(n, dtype=bool)
        inside_previous[1:] = same_thread & (ends[:-1] > starts[1:])
        found = np.full(n, -1, dtype=np.int64)  # positions in `order`
        found[inside_previous] = np.flatnonzero(inside_previous) - 1
        # the rest (a later sibling, a row after a deeper one) walk up from their predecessor's parent, in order
        walk = np.zeros(n, dtype=bool)
        walk[1:] = same_thread & ~inside_previous[1:]
        found_list = array("q", found.tobytes())
        end_list = array("d", ends.tobytes())
        for k, s in zip(np.flatnonzero(walk).tolist(), starts[walk].tolist()):
            p = found_list[k - 1]
            while p >= 0 and end_list[p] <= s:
                p = found_list[p]
            found_list[k] = p
        found = np.frombuffer(found_list, dtype=np.int64)
        has = found >= 0
        parent[order[has]] = order[found[has]]
        return parent

    @cached_property
    def device_by_correlation(self) -> dict[int, list[int]]:
        """correlation id -> device rows it launched (one launch can start several kernels, e.g. cuDNN)."""
        out: dict[int, list[int]] = {}
        for row, c in enumerate(self.device.correlation.tolist()):
            if c != NO_ID:
                out.setdefault(c, []).append(row)
        return out
