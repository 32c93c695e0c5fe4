"""Loader for torch.profiler / Kineto Chrome-trace JSON (`.json` or gzipped), into the columnar model.

msgspec decodes straight into small typed structs and skips every field attnprof does not read, which is what keeps
a 100 MB trace within seconds and a few hundred MB (a plain `json.load` builds a dict per event and per args).
"""
from __future__ import annotations

import gc
import math
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Union

import msgspec
import numpy as np

from attnprof.errors import AttnprofError
from attnprof.files import DEFAULT_MAX_INPUT_MB, read_bytes
from attnprof.trace.model import NO_ID, DeviceEvents, DeviceKind, HostEvents, HostKind, StringTable, Trace

_EMPTY = msgspec.Raw(b"")


class _Args(msgspec.Struct, gc=False):
    external_id: int = msgspec.field(name="External id", default=NO_ID)
    correlation: int = NO_ID
    seq: int = msgspec.field(name="Sequence number", default=NO_ID)
    fwd_tid: int = msgspec.field(name="Fwd thread id", default=NO_ID)
    py_id: Optional[int] = msgspec.field(name="Python id", default=NO_ID)
    py_parent: Optional[int] = msgspec.field(name="Python parent id", default=NO_ID)
    device: int = NO_ID
    stream: int = NO_ID
    nbytes: Union[int, float] = msgspec.field(name="bytes", default=0)
    input_dims: msgspec.Raw = msgspec.field(name="Input Dims", default=_EMPTY)
    input_types: msgspec.Raw = msgspec.field(name="Input type", default=_EMPTY)
    input_strides: msgspec.Raw = msgspec.field(name="Input Strides", default=_EMPTY)
    concrete_inputs: msgspec.Raw = msgspec.field(name="Concrete Inputs", default=_EMPTY)


class _Event(msgspec.Struct, gc=False):
    ph: str = ""
    cat: str = ""
    name: str = ""
    ts: float = math.nan  # NaN: missing (an event without a time is skipped, not put at 0)
    dur: float = math.nan
    pid: Union[int, str] = 0
    tid: Union[int, str] = 0
    args: Optional[_Args] = None


class _TraceFile(msgspec.Struct):
    traceEvents: list[_Event]
    deviceProperties: list[dict] = []
    with_stack: Optional[int] = None
    record_shapes: Optional[int] = None
    schemaVersion: Optional[int] = None
    distributedInfo: Optional[dict] = None
    baseTimeNanoseconds: Optional[int] = None


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


def load_torch_trace(path: Path, data: bytes | bytearray | None = None,
                     max_mb: float = DEFAULT_MAX_INPUT_MB) -> Trace:
    """Load a torch.profiler (Kineto) Chrome trace, from `data` when the caller already read it (a pipe can be read
    only once). Raises AttnprofError for anything that is not one; events it cannot use are skipped or repaired,
    and `Trace.notes` says how many and why."""
    # Hundreds of thousands of short-lived objects: the cyclic GC would rescan them again and again.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(path, read_bytes(path, max_mb) if data is None else data)
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


def _decode(path: Path, data) -> tuple[_TraceFile, Counter]:
    """The document, and (reason -> count) of the events left out because a field had the wrong type."""
    skipped: Counter = Counter()
    head = bytes(data[:4096]).lstrip()
    if not head.startswith((b"{", b"[")):
        raise AttnprofError(f"{path} is not a torch.profiler trace (expected JSON)")
    try:
        try:
            if head.startswith(b"["):
                return _TraceFile(traceEvents=msgspec.json.decode(data, type=list[_Event])), skipped
            return msgspec.json.decode(data, type=_TraceFile), skipped
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
        raise AttnprofError(f"{path} nests JSON deeper than the decoder's limit (about 1000 levels): not a "
                            "torch.profiler trace") from None
    decoder = msgspec.json.Decoder(_Event)
    events = []
    for raw in loose.traceEvents:
        try:
            events.append(decoder.decode(raw))
        except msgspec.ValidationError as e:
            skipped[str(e).replace("Object", "event")] += 1
        except RecursionError:
            skipped["nested deeper than the decoder's limit"] += 1
    if loose.traceEvents and not events:
        raise AttnprofError(f"{path} is not a torch.profiler trace (no event reads as one: {_skip_text(skipped)})")

    def field(raw, type_, default):
        try:
            return msgspec.json.decode(raw, type=type_) if raw else default
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return default

    return _TraceFile(
        traceEvents=events,
        deviceProperties=field(loose.deviceProperties, list[dict], []),
        with_stack=field(loose.with_stack, Optional[int], None),
        record_shapes=field(loose.record_shapes, Optional[int], None),
        schemaVersion=field(loose.schemaVersion, Optional[int], None),
        distributedInfo=field(loose.distributedInfo, Optional[dict], None),
    ), skipped


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
    """An int64 id column; ids that do not fit become NO_ID (with a note) instead of an OverflowError."""
    try:
        return np.array(values, dtype=np.int64)
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
    order = np.lexsort(columns[::-1])
    same = np.ones(n - 1, dtype=bool)
    for c in columns:
        sc = c[order]
        same &= sc[1:] == sc[:-1]
    dup[order[1:][same]] = True
    return dup


def _load(path: Path, data) -> Trace:
    doc, skipped = _decode(path, data)
    del data
    repaired: Counter = Counter()
    events = doc.traceEvents
    codes, untimed, negative = [], 0, 0
    code_of, isfinite = _CODE.get, math.isfinite
    for e in events:  # one pass: this loop runs over every event of a 100 MB trace
        c = code_of(e.cat, -1) if e.ph == "X" else -1
        if c >= 0:
            # a complete event needs a start and a duration: without them it would count as zero (or NaN) time
            if not (isfinite(e.ts) and isfinite(e.dur)):
                untimed, c = untimed + 1, -1
            elif e.dur < 0:
                negative, c = negative + 1, -1
        codes.append(c)
    skipped["no numeric ts or dur"] += untimed
    skipped["negative duration"] += negative
    dev_index = {}
    for i, (e, c) in enumerate(zip(events, codes)):
        if c >= 16:
            args = e.args
            # Kineto puts the device index in pid and the stream in tid as well as in args
            device = args.device if args is not None and args.device != NO_ID else e.pid
            d = _index(device, _INT16_MAX)
            if d is None:
                skipped[f"device work whose device is not a device index ({device!r})"] += 1
                codes[i] = -1
            else:
                if d != device:
                    repaired[f"device read from {device!r}"] += 1
                dev_index[i] = d
    host_ev = [e for e, c in zip(events, codes) if 0 <= c < 16]
    host_kind = [c for c in codes if 0 <= c < 16]
    dev_rows = [i for i, c in enumerate(codes) if c >= 16]
    dev_ev = [events[i] for i in dev_rows]
    dev_kind = [codes[i] - 16 for i in dev_rows]
    device_column = [dev_index[i] for i in dev_rows]
    del codes, events
    if not host_ev and not dev_ev:
        why = f" ({_skip_text(skipped)})" if +skipped else ""
        raise AttnprofError(f"{path} holds no profiler events (no cpu_op, kernel or runtime events){why}")

    strings = StringTable()
    none = _Args()
    h_args = [e.args or none for e in host_ev]
    thread_keys = [(e.pid, e.tid) for e in host_ev]
    thread_index = {k: i for i, k in enumerate(dict.fromkeys(thread_keys))}
    h_tid = np.array([thread_index[k] for k in thread_keys], dtype=np.int32)
    h_name = strings.intern_many([e.name for e in host_ev])
    h_ts = np.array([e.ts for e in host_ev], dtype=np.float64)
    h_dur = np.array([e.dur for e in host_ev], dtype=np.float64)
    h_kind = np.array(host_kind, dtype=np.int8)
    h_ext = _ids([a.external_id for a in h_args], "External id", repaired)
    h_corr = _ids([a.correlation for a in h_args], "correlation", repaired)
    h_py = _ids([NO_ID if a.py_id is None else a.py_id for a in h_args], "Python id", repaired)
    h_dup = _duplicates(h_ts, h_dur, h_tid, h_kind, h_name, h_ext, h_corr, h_py)
    d_args = [e.args or none for e in dev_ev]
    d_ts = np.array([e.ts for e in dev_ev], dtype=np.float64)
    d_dur = np.array([e.dur for e in dev_ev], dtype=np.float64)
    d_device = np.array(device_column, dtype=np.int16)
    d_stream = _ids([a.stream if a.stream != NO_ID else (_index(e.tid, _INT64_MAX) or NO_ID)
                     for e, a in zip(dev_ev, d_args)], "stream", repaired)
    d_kind = np.array(dev_kind, dtype=np.int8)
    d_name = strings.intern_many([e.name for e in dev_ev])
    d_corr = _ids([a.correlation for a in d_args], "correlation", repaired)
    d_dup = _duplicates(d_ts, d_dur, d_device, d_stream, d_kind, d_name, d_corr)
    if h_dup.any() or d_dup.any():
        skipped["duplicate of an earlier event (dropped once)"] += int(h_dup.sum() + d_dup.sum())
        h_keep, d_keep = ~h_dup, ~d_dup
        h_ts, h_dur, h_tid, h_kind, h_name, h_ext, h_corr, h_py = (
            a[h_keep] for a in (h_ts, h_dur, h_tid, h_kind, h_name, h_ext, h_corr, h_py))
        h_args = [a for a, k in zip(h_args, h_keep.tolist()) if k]
        d_ts, d_dur, d_device, d_stream, d_kind, d_name, d_corr = (
            a[d_keep] for a in (d_ts, d_dur, d_device, d_stream, d_kind, d_name, d_corr))
        d_args = [a for a, k in zip(d_args, d_keep.tolist()) if k]
    del host_ev, dev_ev, thread_keys
    threads = [f"{pid}/{tid}" for pid, tid in thread_index]
    base = min(h_ts.min() if len(h_ts) else np.inf, d_ts.min() if len(d_ts) else np.inf)
    h_ts -= base
    d_ts -= base

    raw_columns = {}
    for attr, label in _ARG_COLUMNS:
        column = [bytes(getattr(a, attr)) or None for a in h_args]
        bad = [i for i, raw in enumerate(column) if raw is not None and not raw.startswith(b"[")]
        if bad:  # analysis reads these as lists, one entry per input
            repaired[f"{label} not a list (ignored)"] += len(bad)
            for i in bad:
                column[i] = None
        raw_columns[attr] = column
    host = HostEvents(
        ts=h_ts,
        dur=h_dur,
        tid=h_tid,
        kind=h_kind,
        name=h_name,
        ext_id=h_ext,
        seq=_ids([a.seq for a in h_args], "Sequence number", repaired),
        fwd_tid=_ids([a.fwd_tid for a in h_args], "Fwd thread id", repaired),
        correlation=h_corr,
        py_id=h_py,
        py_parent=_ids([NO_ID if a.py_parent is None else a.py_parent for a in h_args], "Python parent id",
                       repaired),
        **raw_columns,
    )
    del h_args
    device = DeviceEvents(
        ts=d_ts,
        dur=d_dur,
        device=d_device,
        stream=d_stream,
        kind=d_kind,
        name=d_name,
        correlation=d_corr,
        nbytes=_nbytes([a.nbytes for a in d_args], repaired),
    )
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
        strings=strings,
        host=host,
        device=device,
        threads=threads,
        base_us=float(base),
        device_properties=[p for p in doc.deviceProperties or [] if isinstance(p, dict)],
        metadata=metadata,
        notes=notes,
    )


def _skip_text(counts: Counter) -> str:
    return "; ".join(f"{n} {why}" for why, n in counts.most_common() if n)
