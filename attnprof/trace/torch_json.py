"""Loader for torch.profiler / Kineto Chrome-trace JSON (`.json` or gzipped), into the columnar model.

msgspec decodes straight into small typed structs and skips every field attnprof does not read, which is what keeps
a 100 MB trace within seconds and a few hundred MB (a plain `json.load` builds a dict per event and per args).
"""
from __future__ import annotations

import ctypes
import gc
import itertools
import math
import mmap
import multiprocessing as mp
import os
import re
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import repeat
from operator import attrgetter
from pathlib import Path

import msgspec
import numpy as np

from attnprof.errors import AttnprofError
from attnprof.files import DEFAULT_MAX_INPUT_MB, plain_size, read_pieces
from attnprof.trace.model import NO_ID, DeviceEvents, DeviceKind, HostEvents, HostKind, RawColumn, StringTable, Trace

_EMPTY = msgspec.Raw(b"")


class _Args(msgspec.Struct, gc=False, frozen=True):
    external_id: int = msgspec.field(name="External id", default=NO_ID)
    correlation: int = NO_ID
    seq: int = msgspec.field(name="Sequence number", default=NO_ID)
    fwd_tid: int = msgspec.field(name="Fwd thread id", default=NO_ID)
    py_id: int | None = msgspec.field(name="Python id", default=NO_ID)
    py_parent: int | None = msgspec.field(name="Python parent id", default=NO_ID)
    device: int = NO_ID
    stream: int = NO_ID
    nbytes: int | float = msgspec.field(name="bytes", default=0)
    input_dims: msgspec.Raw = msgspec.field(name="Input Dims", default=_EMPTY)
    input_types: msgspec.Raw = msgspec.field(name="Input type", default=_EMPTY)
    input_strides: msgspec.Raw = msgspec.field(name="Input Strides", default=_EMPTY)
    concrete_inputs: msgspec.Raw = msgspec.field(name="Concrete Inputs", default=_EMPTY)


_NO_ARGS = _Args()


class _Event(msgspec.Struct, gc=False):
    ph: str = ""
    cat: str = ""
    name: str = ""
    ts: float = math.nan  # NaN: missing (an event without a time is skipped, not put at 0)
    dur: float = math.nan
    pid: int | str = 0
    tid: int | str = 0
    args: _Args | None = _NO_ARGS


class _TraceFile(msgspec.Struct):
    traceEvents: list[_Event]
    deviceProperties: list[dict] = []
    with_stack: int | None = None
    record_shapes: int | None = None
    schemaVersion: int | None = None
    distributedInfo: dict | None = None
    baseTimeNanoseconds: int | None = None


_HOST = {
    "cpu_op": HostKind.OP,
    "operator": HostKind.OP,
    "user_annotation": HostKind.ANNOTATION,
    "cuda_runtime": HostKind.RUNTIME,
    "cuda_driver": HostKind.RUNTIME,
    "runtime": HostKind.RUNTIME,
    "python_function": HostKind.PYTHON,
}
_DEVICE = {
    "kernel": DeviceKind.KERNEL,
    "gpu_memcpy": DeviceKind.MEMCPY,
    "memcpy": DeviceKind.MEMCPY,
    "gpu_memset": DeviceKind.MEMSET,
    "memset": DeviceKind.MEMSET,
}
_HOST_CODE = {k: int(v) for k, v in _HOST.items()}
_DEVICE_CODE = {k: int(v) + 16 for k, v in _DEVICE.items()}
_CODE = {**_HOST_CODE, **_DEVICE_CODE}
_CODE.update({k.capitalize(): v for k, v in _CODE.items()})  # pre-2.0 Kineto wrote "Kernel", "Memcpy", "Runtime"


#: Events are decoded and turned into columns this many bytes at a time, so that memory holds the columns and one
#: block, never the whole file nor a Python object per event. 8 MB: the workers finish closer together than with 16
#: (a 1 GB trace: 8.7 s instead of 9.2), and a block's columns (~250 KB each) are still big enough to get their own
#: mappings (`_free_big_blocks_at_once`); with 4 MB blocks they stayed in the heap and the peak went from 0.78 to 1 GB.
BLOCK_BYTES = 8 << 20
#: Blocks read before they are cut off the front: a few, so that what is left after them is moved once.
_BLOCKS_PER_FILL = 4


def load_torch_trace(path: Path, data: bytes | bytearray | None = None,
                     max_mb: float = DEFAULT_MAX_INPUT_MB) -> Trace:
    """Load a torch.profiler (Kineto) Chrome trace, from `data` when the caller already read it (a pipe can be read
    only once). Raises AttnprofError for anything that is not one; events it cannot use are skipped or repaired,
    and `Trace.notes` says how many and why."""
    # Hundreds of thousands of short-lived objects: the cyclic GC would rescan them again and again.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if data is None and (size := plain_size(path, max_mb)) is not None and size > 3 * BLOCK_BYTES:
            trace = _load_plain_file(path, size)
            if trace is not None:
                return trace
        pieces = read_pieces(path, max_mb) if data is None else [data]
        return _load(path, pieces)
    finally:
        if gc_was_enabled:
            gc.enable()


class _LooseFile(msgspec.Struct):
    """The same document, each event kept raw: decoded one by one when the strict pass finds a bad one."""

    traceEvents: list[msgspec.Raw]
    deviceProperties: msgspec.Raw = _EMPTY
    with_stack: msgspec.Raw = _EMPTY
    record_shapes: msgspec.Raw = _EMPTY
    schemaVersion: msgspec.Raw = _EMPTY
    distributedInfo: msgspec.Raw = _EMPTY


def _decode(path: Path, data, skipped: Counter) -> _TraceFile:
    """The document; the events left out because a field had the wrong type are counted in `skipped`."""
    head = bytes(data[:4096]).lstrip()
    if not head.startswith((b"{", b"[")):
        raise AttnprofError(f"{path} is not a torch.profiler trace (expected JSON)")
    try:
        try:
            if head.startswith(b"["):
                return _TraceFile(traceEvents=msgspec.json.decode(data, type=list[_Event]))
            return msgspec.json.decode(data, type=_TraceFile)
        except msgspec.ValidationError:
            pass  # some field holds something else than Kineto writes: keep the events that are right
        if head.startswith(b"["):
            loose = _LooseFile(traceEvents=msgspec.json.decode(data, type=list[msgspec.Raw]))
        else:
            loose = msgspec.json.decode(data, type=_LooseFile)
    except msgspec.ValidationError as e:
        raise AttnprofError(f"{path} is not a torch.profiler trace ({e})") from None
    except msgspec.DecodeError as e:
        raise AttnprofError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise _too_deep(path) from None

    def field(raw, type_, default):
        try:
            return msgspec.json.decode(raw, type=type_) if raw else default
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return default

    return _TraceFile(
        traceEvents=_each(loose.traceEvents, skipped),
        deviceProperties=field(loose.deviceProperties, list[dict], []),
        with_stack=field(loose.with_stack, int | None, None),
        record_shapes=field(loose.record_shapes, int | None, None),
        schemaVersion=field(loose.schemaVersion, int | None, None),
        distributedInfo=field(loose.distributedInfo, dict | None, None),
    )


_EVENT_DECODER = msgspec.json.Decoder(_Event)


def _each(raws: list[msgspec.Raw], skipped: Counter) -> list[_Event]:
    """The events that decode one by one; the others counted in `skipped` (key "unreadable: ...")."""
    events = []
    for raw in raws:
        try:
            events.append(_EVENT_DECODER.decode(raw))
        except msgspec.ValidationError as e:
            skipped[_UNREADABLE + str(e).replace("Object", "event")] += 1
        except RecursionError:
            skipped[_UNREADABLE + "nested deeper than the decoder's limit"] += 1
    return events


_UNREADABLE = "\0"  # marks the skip reasons of events that did not decode (stripped before they are shown)


def _too_deep(path: Path) -> AttnprofError:
    return AttnprofError(f"{path} nests JSON deeper than the decoder's limit (about 1000 levels): not a "
                         "torch.profiler trace")


_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_BETWEEN_EVENTS = re.compile(rb"\}\s*,\s*\{")


def _events_start(path: Path, buf: bytearray) -> int | None:
    """Where the events of the top-level traceEvents array begin in the document's first bytes, or None if that
    cannot be told from them (then the document is decoded whole)."""
    lead = bytes(buf[:4096]).lstrip()
    if lead.startswith(b"["):
        return buf.index(b"[") + 1
    m = _EVENTS_KEY.search(buf)
    if m is None:
        return None
    try:  # the key must belong to the outermost object, not to one nested in it
        msgspec.json.decode(bytes(buf[:m.start()]) + b'"traceEvents": []}')
    except (msgspec.DecodeError, RecursionError):
        return None
    return m.end()


def _block_events(path: Path, block, skipped: Counter) -> list[_Event] | None:
    """The events of `[` + a cut of the traceEvents array + `]`, or None when the cut was not between two events
    (a `}, {` inside a string or inside an event): then that part is decoded with the rest of the document."""
    try:
        try:
            return msgspec.json.decode(block, type=list[_Event])
        except msgspec.ValidationError:
            raws = msgspec.json.decode(block, type=list[msgspec.Raw])
    except msgspec.DecodeError:
        return None
    except RecursionError:
        raise _too_deep(path) from None
    return _each(raws, skipped)


def _decode_streaming(path: Path, pieces, columns: _Columns) -> _TraceFile:
    """Decode the document as its pieces arrive: the traceEvents array is cut between two events every
    BLOCK_BYTES, each block is turned into columns (by worker processes when there is more than one: both cores of
    a laptop) and its events dropped; the rest of the document (what precedes the array, its last block and what
    follows) is decoded at the end. Returns that rest, whose events are in `columns` too."""
    buf = bytearray()
    fill = _BLOCKS_PER_FILL * BLOCK_BYTES
    at = 0  # buf[at:] is not cut yet: what precedes is moved out once per fill, not once per block
    head = b""  # the document up to the array's "[", once cut off
    streaming = True
    pending: deque = deque()  # (block's columns or the future of them, the block "[...]" or its slot, the separator
    # after it)
    pool = None
    slots = None
    try:
        for piece in itertools.chain(pieces, [None]):
            last = piece is None  # the whole document is in: cut the rest too, down to its last event
            if not last:
                buf += piece
                if len(buf) < fill:
                    continue
            if not streaming:
                continue
            if not head:
                start = _events_start(path, buf)
                if start is None:
                    streaming = False
                    continue
                head = bytes(buf[:start])
                at = start
                pool = _worker_pool() if last is False else None
            while streaming and len(buf) - at > (0 if last else BLOCK_BYTES):
                cut = _cut(buf, min(at + BLOCK_BYTES, len(buf)), at)
                if cut is None:
                    break  # the last event: decoded with what follows the array
                end, next_start = cut
                part: Future | _Columns | None
                with memoryview(buf) as view, view[at:end] as events:
                    if pool:
                        if slots is None:
                            slots = _Slots(pool._max_workers + 2, BLOCK_BYTES + 2)  # type: ignore[attr-defined]  # the pool's size, as it was made
                        block: bytearray | tuple[int, int] = slots.put(events)
                        part = pool.submit(_slot_columns, path, *block)
                    else:
                        block = bytearray(b"[") + events + b"]"
                        part = _block_columns(path, block)
                separator = bytes(buf[end:next_start])
                at = next_start
                pending.append((part, block, separator))
                while streaming and pending and (not pool or len(pending) > pool._max_workers):  # type: ignore[attr-defined]  # the pool's size, as it was made
                    streaming = _merge(columns, pending, buf)
            del buf[:at]
            at = 0
        while pending and streaming:
            streaming = _merge(columns, pending, buf)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for _, block, separator in reversed(pending):  # a cut not between two events: decode that part with the rest
        cut_off = slots.get(*block) if isinstance(block, tuple) and slots else block[1:-1]
        buf[:0] = cut_off + separator
    if slots is not None:
        slots.close()
    if head:
        buf[:0] = head
    doc = _decode(path, buf, columns.skipped)
    del buf
    columns.take(doc.traceEvents)
    doc.traceEvents = []
    return doc


def _merge(columns: _Columns, pending: deque, buf: bytearray) -> bool:
    """Add the oldest pending block's columns; False (and the block left pending) if it was not a list of events."""
    _free_big_blocks_at_once()  # the workers, if any, are forked by now
    part = pending[0][0]
    if isinstance(part, Future):
        part = _worker_result(part)
    if part is None:
        return False
    pending.popleft()
    columns.add(part)
    return True


def _worker_result(future: Future) -> _Columns | None:
    """A block's columns from the worker that decoded it (None: the cut was not between two events)."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise AttnprofError("a trace-decoding worker process died (out of memory?)") from None


def _worker_pool() -> ProcessPoolExecutor | None:
    """Processes that decode blocks while this one reads: forked (they run only this module's code, never the
    user's script again), at most 4 of them (each holds a block and its events)."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4)
    if workers < 2 or "fork" not in mp.get_all_start_methods():
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))


def _block_columns(path: Path, block: bytes | bytearray | memoryview) -> _Columns | None:
    """One block's columns (names and threads numbered within the block), or None if the cut was not between
    two events."""
    part = _Columns()
    events = _block_events(path, block, part.skipped)
    if events is None:
        return None
    part.take(events)
    return part


class _Slots:
    """Blocks handed to the worker processes through memory this process shares with them: an anonymous shared
    mapping, made before they fork (they see it as `_SHARED`). A block is copied once, into its slot, and decoded
    there; pickled, it was copied four times (pickle, pipe in, pipe out, unpickle): on a 1 GB gzipped trace that
    cost the workers 1.7 s of CPU. Slots are taken in turn: one is free again by the time it comes round, since no
    more blocks than slots less one are ever pending."""

    def __init__(self, count: int, size: int) -> None:
        global _SHARED
        self.size, self.count, self.next = size, count, 0
        self.memory = _SHARED = mmap.mmap(-1, count * size)

    def put(self, events: memoryview) -> tuple[int, int]:
        """(offset, length) of the block `[` + events + `]`, copied into the next slot."""
        at = self.next * self.size
        self.next = (self.next + 1) % self.count
        end = at + 1 + len(events)
        self.memory[at:at + 1] = b"["
        self.memory[at + 1:end] = events
        self.memory[end:end + 1] = b"]"
        return at, end + 1 - at

    def get(self, at: int, length: int) -> bytes:
        """The events of the block in a slot (without its brackets)."""
        return self.memory[at + 1:at + length - 1]

    def close(self) -> None:
        global _SHARED
        _SHARED = None
        self.memory.close()


_SHARED: mmap.mmap | None = None


def _slot_columns(path: Path, at: int, length: int) -> _Columns | None:
    """`_block_columns` of a block in a shared slot (in a worker process), read where it lies."""
    assert _SHARED is not None, "the workers are forked after the slots are made"
    with memoryview(_SHARED) as shared, shared[at:at + length] as block:
        return _block_columns(path, block)


def _cut(buf: bytearray, limit: int, lo: int = 0) -> tuple[int, int] | None:
    """(end of the last event in buf[lo:limit], start of the next) where `}, {` is found there, else None."""
    pos = limit
    for _ in range(1000):
        pos = buf.rfind(b"}", lo, pos)
        if pos < 0:
            return None
        m = _BETWEEN_EVENTS.match(buf, pos)
        if m:
            return pos + 1, m.end() - 1
    return None


_INT64_MAX = np.iinfo(np.int64).max
_INT16_MAX = np.iinfo(np.int16).max
_TRAILING_INT = re.compile(r"(\d+)\s*$")
_ARG_COLUMNS = (("input_dims", "Input Dims"), ("input_types", "Input type"), ("input_strides", "Input Strides"),
                ("concrete_inputs", "Concrete Inputs"))


def _index(value, limit: int) -> int | None:
    """A device or stream number from what Kineto puts in pid/tid: an int, or text ending in one ("GPU 0")."""
    if isinstance(value, str):
        m = _TRAILING_INT.search(value)
        value = int(m.group(1)) if m else None
    return value if isinstance(value, int) and 0 <= value <= limit else None


def _ids(values: list, what: str, repaired: Counter) -> np.ndarray:
    """An int64 id column (None: NO_ID); ids that do not fit become NO_ID (with a note) instead of an
    OverflowError."""
    try:
        return np.array(values, dtype=np.int64)
    except TypeError:  # a null id
        values = [NO_ID if v is None else v for v in values]
        return _ids(values, what, repaired)
    except OverflowError:
        bad = sum(1 for v in values if not -_INT64_MAX <= v <= _INT64_MAX)
        repaired[f"{what} outside the 64-bit range (ignored)"] += bad
        return np.array([v if -_INT64_MAX <= v <= _INT64_MAX else NO_ID for v in values], dtype=np.int64)


def _nbytes(values: list, repaired: Counter) -> np.ndarray:
    out = np.array(values, dtype=np.float64)
    bad = ~np.isfinite(out) | (out < 0) | (out >= 2.0 ** 63)
    if bad.any():
        repaired["bytes not a possible byte count (treated as unknown)"] += int(bad.sum())
        out[bad] = 0
    return out.astype(np.int64)


def _duplicates(*columns: np.ndarray) -> np.ndarray:
    """Rows equal in every column to an earlier row: the same event written twice."""
    n = len(columns[0])
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    # only rows whose first column (the start time) another row shares can be duplicates: one sort finds them,
    # and the sort on every column runs on those few (in row order within a start time, as the stable sorts keep)
    by_first = np.argsort(columns[0], kind="stable")
    first = columns[0][by_first]
    shared = np.zeros(n, dtype=bool)
    shared[1:] = first[1:] == first[:-1]
    shared[:-1] |= shared[1:]
    candidates = by_first[shared]
    if len(candidates) < 2:
        return dup
    picked = [c[candidates] for c in columns]
    order = np.lexsort(picked[::-1])
    same = np.ones(len(candidates) - 1, dtype=bool)
    for c in picked:
        sc = c[order]
        same &= sc[1:] == sc[:-1]
    dup[candidates[order[1:][same]]] = True
    return dup


def _load(path: Path, pieces) -> Trace:
    columns = _Columns()
    doc = _decode_streaming(path, pieces, columns)
    return columns.trace(path, doc)


def _load_plain_file(path: Path, size: int) -> Trace | None:
    """A plain (not gzipped) file on disk, big enough to split: worker processes read and decode its blocks
    themselves (`os.pread`), so that this process never reads nor passes on the bytes between the cuts; it reads
    the head, a few KB around each cut and the tail. None when the document cannot be cut so (no worker processes,
    no top-level traceEvents array found, a cut not between two events): then it is streamed."""
    pool = _worker_pool()
    if pool is None:
        return None
    try:
        with open(path, "rb", buffering=0) as f:
            fd = f.fileno()
            head = bytearray(os.pread(fd, _HEAD_BYTES, 0))
            start = _events_start(path, head)
            if start is None:
                return None
            blocks, at = [], start
            window = min(_CUT_WINDOW, BLOCK_BYTES)
            while size - at > 2 * BLOCK_BYTES:  # the last block or two hold the array's end: decoded here
                lo = at + BLOCK_BYTES - window
                cut = _cut(bytearray(os.pread(fd, window, lo)), window)
                if cut is None:
                    return None
                blocks.append(pool.submit(_range_columns, path, at, lo + cut[0]))
                at = lo + cut[1]
            _free_big_blocks_at_once()  # the first submit forked the workers: they keep malloc's default
            rest = bytearray(head[:start])
            rest += os.pread(fd, size - at, at)
        if len(rest) < start + size - at:
            return None  # the file shrank while read: stream it
        columns, tail = _Columns(), _Columns()
        doc = _decode(path, rest, tail.skipped)
        del rest
        tail.take(doc.traceEvents)
        doc.traceEvents = []
        blocks.reverse()
        while blocks:  # each merged block let go of, its future with it: memory holds the columns once
            part = _worker_result(blocks.pop())
            if part is None:
                return None
            columns.add(part)
        columns.add(tail)
        return columns.trace(path, doc)
    except OSError as e:
        raise AttnprofError(f"cannot read {path}: {e.strerror or e}") from None
    finally:
        pool.shutdown(cancel_futures=True)


def _free_big_blocks_at_once() -> None:
    """Make glibc's malloc give every block of 128 KB or more its own mapping, returned to the system when freed.

    By default glibc raises that threshold each time such a block is freed, so the blocks' columns, freed as they
    are joined into the trace's, stay in the heap between live ones: the load's peak was twice the trace's columns
    (a 1 GB trace: 845 MB instead of 570). Set once the user's script is over (analysis runs after it), for the rest
    of the process (not in the workers, which allocate and free big blocks all along: it would cost them time);
    a no-op elsewhere than glibc."""
    global _MMAP_THRESHOLD_SET
    if _MMAP_THRESHOLD_SET:
        return
    _MMAP_THRESHOLD_SET = True
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 << 10)
    except (OSError, AttributeError):
        pass


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_MMAP_THRESHOLD_SET = False

#: What is read of the document's start to find where its events begin, and around each cut to find a gap between
#: two events.
_HEAD_BYTES = 1 << 20
_CUT_WINDOW = 256 << 10


def _range_columns(path: Path, start: int, end: int) -> _Columns | None:
    """The columns of the events in bytes [start, end) of the file (read here, in the worker), or None if that is
    not a run of whole events."""
    block = bytearray(end - start + 2)
    block[0], block[-1] = ord("["), ord("]")
    with open(path, "rb", buffering=0) as f, memoryview(block) as view:
        got = 0
        while got < end - start:
            n = os.preadv(f.fileno(), [view[1 + got:-1]], start + got)
            if n <= 0:
                return None  # the file shrank while read
            got += n
    return _block_columns(path, block)


class _Columns:
    """The trace's columns, built a block of decoded events at a time (each block's events dropped after)."""

    def __init__(self) -> None:
        self.skipped: Counter = Counter()
        self.repaired: Counter = Counter()
        self.strings = StringTable()
        self.thread_index: dict = {}
        self.decoded = 0
        self.host: dict[str, list[np.ndarray]] = {k: [] for k in _HOST_KEYS}
        self.device: dict[str, list[np.ndarray]] = {k: [] for k in _DEVICE_KEYS}
        self.raw: dict[str, list[RawColumn]] = {attr: [] for attr, _ in _ARG_COLUMNS}

    def take(self, events: list[_Event]) -> None:
        """Add these events' columns. Each column is one C-level pass (map + fromiter) over the events of the kinds
        that carry it (Python frames only their ids, the other host events the rest): a Python loop per event, or a
        pass per column over every event, cost more than decoding them."""
        n = len(events)
        self.decoded += n
        skipped = self.skipped
        code = np.fromiter(map(_CODE.get, map(_CAT, events), repeat(-1)), dtype=np.int8, count=n)
        code[_phases(list(map(_PH, events))) != ord(_COMPLETE)] = -1
        ts = np.fromiter(map(_TS, events), dtype=np.float64, count=n)
        dur = np.fromiter(map(_DUR, events), dtype=np.float64, count=n)
        # a complete event needs a start and a duration: without them it would count as zero (or NaN) time
        known = code >= 0
        timed = np.isfinite(ts) & np.isfinite(dur)
        negative = timed & (dur < 0)
        skipped["no numeric ts or dur"] += int((known & ~timed).sum())
        skipped["negative duration"] += int((known & negative).sum())
        keep = known & timed & ~negative
        on_host = np.flatnonzero(keep & (code < 16))
        on_device = np.flatnonzero(keep & (code >= 16))
        self._take_host(_pick(events, on_host), code[on_host], ts[on_host], dur[on_host])
        self._take_device(_pick(events, on_device), code[on_device] - 16, ts[on_device], dur[on_device])

    def _take_host(self, events: list[_Event], kind: np.ndarray, ts: np.ndarray, dur: np.ndarray) -> None:
        repaired, n = self.repaired, len(events)
        thread_keys = list(map(_THREAD_KEY, events))
        thread_index = self.thread_index
        for key in dict.fromkeys(thread_keys):
            if key not in thread_index:
                thread_index[key] = len(thread_index)
        python = kind == HostKind.PYTHON
        frames, others = np.flatnonzero(python), np.flatnonzero(~python)
        frame_args, other_args = _args_of(_pick(events, frames)), _args_of(_pick(events, others))

        def ids(field: str, label: str, rows: np.ndarray, args: list[_Args]) -> np.ndarray:
            out = np.full(n, NO_ID, dtype=np.int64)
            out[rows] = _ids(list(map(attrgetter(field), args)), label, repaired)
            return out

        host = {
            "ts": ts,
            "dur": dur,
            "tid": np.fromiter(map(thread_index.__getitem__, thread_keys), dtype=np.int32, count=n),
            "kind": kind,
            "name": self.strings.intern_many(list(map(_NAME, events))),
            "ext_id": ids("external_id", "External id", others, other_args),
            "correlation": ids("correlation", "correlation", others, other_args),
            "py_id": ids("py_id", "Python id", frames, frame_args),
            "seq": ids("seq", "Sequence number", others, other_args),
            "fwd_tid": ids("fwd_tid", "Fwd thread id", others, other_args),
            "py_parent": ids("py_parent", "Python parent id", frames, frame_args),
        }
        for attr, label in _ARG_COLUMNS:
            column = RawColumn.from_rows(list(map(attrgetter(attr), other_args)), n, others)
            bad = np.flatnonzero(column.first_bytes() != ord("["))
            if len(bad):  # analysis reads these as lists, one entry per input
                repaired[f"{label} not a list (ignored)"] += len(bad)
                column.drop(bad)
            self.raw[attr].append(column)
        for k, v in host.items():
            self.host[k].append(v)

    def _take_device(self, events: list[_Event], kind: np.ndarray, ts: np.ndarray, dur: np.ndarray) -> None:
        skipped, repaired = self.skipped, self.repaired
        args = _args_of(events)
        kept, device_column = [], []
        for j, (e, a) in enumerate(zip(events, args)):
            # Kineto puts the device index in pid and the stream in tid as well as in args
            device = a.device if a.device != NO_ID else e.pid
            d = _index(device, _INT16_MAX)
            if d is None:
                skipped[f"device work whose device is not a device index ({device!r})"] += 1
                continue
            if d != device:
                repaired[f"device read from {device!r}"] += 1
            kept.append(j)
            device_column.append(d)
        if len(kept) < len(events):
            events, args, kind, ts, dur = (_pick(events, kept), _pick(args, kept), kind[kept], ts[kept],
                                           dur[kept])
        columns = {
            "ts": ts,
            "dur": dur,
            "device": np.array(device_column, dtype=np.int16),
            "stream": _ids([a.stream if a.stream != NO_ID else (_index(e.tid, _INT64_MAX) or NO_ID)
                            for e, a in zip(events, args)], "stream", repaired),
            "kind": kind,
            "name": self.strings.intern_many(list(map(_NAME, events))),
            "correlation": _ids(list(map(attrgetter("correlation"), args)), "correlation", repaired),
            "nbytes": _nbytes(list(map(attrgetter("nbytes"), args)), repaired),
        }
        for k, v in columns.items():
            self.device[k].append(v)

    def add(self, part: _Columns) -> None:
        """Append another block's columns (its names and threads renumbered into this table's)."""
        self.decoded += part.decoded
        self.skipped.update(part.skipped)
        self.repaired.update(part.repaired)
        names = self.strings.intern_many(part.strings.values)
        threads = [self.thread_index.setdefault(k, len(self.thread_index)) for k in part.thread_index]
        for k, columns in part.host.items():
            for c in columns:
                self.host[k].append(names[c] if k == "name" else np.array(threads, np.int32)[c] if k == "tid" else c)
        for k, columns in part.device.items():
            self.device[k].extend(names[c] if k == "name" else c for c in columns)
        for k, raw_columns in part.raw.items():
            self.raw[k].extend(raw_columns)

    def trace(self, path: Path, doc: _TraceFile) -> Trace:
        skipped, repaired = self.skipped, self.repaired
        unreadable = Counter({k[len(_UNREADABLE):]: n for k, n in skipped.items() if k.startswith(_UNREADABLE)})
        for k in unreadable:
            skipped[k] += skipped.pop(_UNREADABLE + k)
        if +unreadable and not self.decoded:
            raise AttnprofError(f"{path} is not a torch.profiler trace (no event reads as one: "
                                f"{_skip_text(unreadable)})")
        # one column at a time, its blocks dropped as it is joined: memory holds the columns once, plus one
        h = {k: np.concatenate(self.host.pop(k)) for k in list(self.host)}
        d = {k: np.concatenate(self.device.pop(k)) for k in list(self.device)}
        raw = {k: RawColumn.concatenate(self.raw.pop(k)) for k in list(self.raw)}
        if not len(h["ts"]) and not len(d["ts"]):
            why = f" ({_skip_text(skipped)})" if +skipped else ""
            raise AttnprofError(f"{path} holds no profiler events (no cpu_op, kernel or runtime events){why}")
        h_dup = _duplicates(*(h[k] for k in ("ts", "dur", "tid", "kind", "name", "ext_id", "correlation", "py_id")))
        d_dup = _duplicates(*(d[k] for k in ("ts", "dur", "device", "stream", "kind", "name", "correlation")))
        if h_dup.any() or d_dup.any():
            skipped["duplicate of an earlier event (dropped once)"] += int(h_dup.sum() + d_dup.sum())
            h_keep = np.flatnonzero(~h_dup)
            h = {k: v[h_keep] for k, v in h.items()}
            raw = {k: v.take(h_keep) for k, v in raw.items()}
            d = {k: v[~d_dup] for k, v in d.items()}
        base = min(h["ts"].min() if len(h["ts"]) else np.inf, d["ts"].min() if len(d["ts"]) else np.inf)
        h["ts"] -= base
        d["ts"] -= base
        metadata = {
            "with_stack": bool(doc.with_stack),
            "record_shapes": bool(doc.record_shapes),
            "schema_version": doc.schemaVersion,
            "distributed": doc.distributedInfo or {},
        }
        notes = []
        if +skipped:
            notes.append(f"{Path(path).name}: {sum(skipped.values())} events skipped ({_skip_text(skipped)})")
        if +repaired:
            notes.append(f"{Path(path).name}: repaired {_skip_text(repaired)}")
        return Trace(
            source=str(path),
            format="torch.profiler",
            strings=self.strings,
            host=HostEvents(**h, **raw),  # type: ignore[arg-type]  # h: the array fields, raw: the RawColumn ones
            device=DeviceEvents(**d),
            threads=[f"{pid}/{tid}" for pid, tid in self.thread_index],
            base_us=float(base),
            device_properties=[p for p in doc.deviceProperties or [] if isinstance(p, dict)],
            metadata=metadata,
            notes=notes,
        )


_TS, _DUR, _NAME, _CAT, _PH = (attrgetter(k) for k in ("ts", "dur", "name", "cat", "ph"))
_THREAD_KEY = attrgetter("pid", "tid")
_ARGS = attrgetter("args")
_COMPLETE = "X"  # the phase of an event with a start and a duration; analysis reads no other


def _pick(items: list, at) -> list:
    """items[at] for a list (one C-level pass)."""
    return list(map(items.__getitem__, at.tolist() if isinstance(at, np.ndarray) else at))


def _phases(phases: list[str]) -> np.ndarray:
    """Each event's phase as a code point (0 where it is not one character): joined and read as an array, which
    costs less than comparing each."""
    joined = "".join(phases)
    if len(joined) == len(phases) and max(map(len, phases), default=1) == 1:
        return np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    return np.fromiter((ord(p) if len(p) == 1 else 0 for p in phases), dtype=np.uint32, count=len(phases))


def _args_of(events: list[_Event]) -> list[_Args]:
    args = list(map(_ARGS, events))
    if None in args:  # "args": null
        args = [a if a is not None else _NO_ARGS for a in args]
    return args
_HOST_KEYS = ("ts", "dur", "tid", "kind", "name", "ext_id", "correlation", "py_id", "seq", "fwd_tid", "py_parent")
_DEVICE_KEYS = ("ts", "dur", "device", "stream", "kind", "name", "correlation", "nbytes")


def _skip_text(counts: Counter) -> str:
    return "; ".join(f"{n} {why}" for why, n in counts.most_common() if n)
