"""Loader for torch.profiler / Kineto Chrome-trace JSON (`.json` or gzipped), into the columnar model.

msgspec decodes straight into small typed structs and skips every field attnprof does not read, which is what keeps
a 100 MB trace within seconds and a few hundred MB (a plain `json.load` builds a dict per event and per args).
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Optional, Union

import msgspec
import numpy as np

from attnprof.errors import AttnprofError
from attnprof.files import read_bytes
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
    ts: float = 0.0
    dur: float = 0.0
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


def load_torch_trace(path: Path) -> Trace:
    """Load a torch.profiler (Kineto) Chrome trace. Raises AttnprofError for anything that is not one."""
    # Hundreds of thousands of short-lived objects: the cyclic GC would rescan them again and again.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(path)
    finally:
        if gc_was_enabled:
            gc.enable()


def _load(path: Path) -> Trace:
    data = read_bytes(path)
    head = data[:4096].lstrip()
    if not head.startswith((b"{", b"[")):
        raise AttnprofError(f"{path} is not a torch.profiler trace (expected JSON)")
    try:
        if head.startswith(b"["):
            doc = _TraceFile(traceEvents=msgspec.json.decode(data, type=list[_Event]))
        else:
            doc = msgspec.json.decode(data, type=_TraceFile)
    except msgspec.ValidationError as e:
        raise AttnprofError(f"{path} is not a torch.profiler trace ({e})") from None
    except msgspec.DecodeError as e:
        raise AttnprofError(f"{path} is not valid JSON ({e})") from None
    del data
    events = doc.traceEvents
    codes = [_CODE.get(e.cat, -1) if e.ph == "X" else -1 for e in events]
    host_ev = [e for e, c in zip(events, codes) if 0 <= c < 16]
    host_kind = [c for c in codes if 0 <= c < 16]
    dev_ev = [e for e, c in zip(events, codes) if c >= 16]
    dev_kind = [c - 16 for c in codes if c >= 16]
    del codes
    if not host_ev and not dev_ev:
        raise AttnprofError(f"{path} holds no profiler events (no cpu_op, kernel or runtime events)")

    strings = StringTable()
    thread_keys = [(e.pid, e.tid) for e in host_ev]
    thread_index = {k: i for i, k in enumerate(dict.fromkeys(thread_keys))}
    threads = [f"{pid}/{tid}" for pid, tid in thread_index]

    h_ts = np.array([e.ts for e in host_ev], dtype=np.float64)
    h_dur = np.array([e.dur for e in host_ev], dtype=np.float64)
    d_ts = np.array([e.ts for e in dev_ev], dtype=np.float64)
    d_dur = np.array([e.dur for e in dev_ev], dtype=np.float64)
    base = min(h_ts.min() if len(h_ts) else np.inf, d_ts.min() if len(d_ts) else np.inf)
    h_ts -= base
    d_ts -= base

    none = _Args()
    h_args = [e.args or none for e in host_ev]
    host = HostEvents(
        ts=h_ts,
        dur=h_dur,
        tid=np.array([thread_index[k] for k in thread_keys], dtype=np.int32),
        kind=np.array(host_kind, dtype=np.int8),
        name=strings.intern_many([e.name for e in host_ev]),
        ext_id=np.array([a.external_id for a in h_args], dtype=np.int64),
        seq=np.array([a.seq for a in h_args], dtype=np.int64),
        fwd_tid=np.array([a.fwd_tid for a in h_args], dtype=np.int64),
        correlation=np.array([a.correlation for a in h_args], dtype=np.int64),
        py_id=np.array([NO_ID if a.py_id is None else a.py_id for a in h_args], dtype=np.int64),
        py_parent=np.array([NO_ID if a.py_parent is None else a.py_parent for a in h_args], dtype=np.int64),
        input_dims=[bytes(a.input_dims) or None for a in h_args],
        input_types=[bytes(a.input_types) or None for a in h_args],
        input_strides=[bytes(a.input_strides) or None for a in h_args],
        concrete_inputs=[bytes(a.concrete_inputs) or None for a in h_args],
    )
    del h_args, host_ev, thread_keys
    d_args = [e.args or none for e in dev_ev]
    device = DeviceEvents(
        ts=d_ts,
        dur=d_dur,
        # Kineto puts the device index in pid and the stream in tid as well as in args
        device=np.array([a.device if a.device != NO_ID else e.pid for e, a in zip(dev_ev, d_args)], dtype=np.int16),
        stream=np.array([a.stream if a.stream != NO_ID else e.tid for e, a in zip(dev_ev, d_args)], dtype=np.int64),
        kind=np.array(dev_kind, dtype=np.int8),
        name=strings.intern_many([e.name for e in dev_ev]),
        correlation=np.array([a.correlation for a in d_args], dtype=np.int64),
        nbytes=np.array([a.nbytes for a in d_args], dtype=np.int64),
    )
    metadata = {
        "with_stack": bool(doc.with_stack),
        "record_shapes": bool(doc.record_shapes),
        "schema_version": doc.schemaVersion,
        "distributed": doc.distributedInfo or {},
    }
    return Trace(
        source=str(path),
        format="torch.profiler",
        strings=strings,
        host=host,
        device=device,
        threads=threads,
        base_us=float(base),
        device_properties=list(doc.deviceProperties or []),
        metadata=metadata,
    )
