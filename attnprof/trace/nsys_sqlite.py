"""Loader for Nsight Systems SQLite exports (`nsys export --type sqlite`), into the same columnar model.

What maps to what:
- NVTX push/pop and start/end ranges -> host ranges. attnprof's own (domain `attnprof`) are named
  `attnprof:<message>`, exactly like its torch.profiler ranges; PyTorch's `--pytorch=autograd-nvtx` /
  `autograd-shapes-nvtx` ranges (`aten::op, seq = N, op_id = .., sizes = [[..]]`) become ops with their
  sequence number and input shapes; a backward node's range (`...Backward0, stashed seq = N`) becomes the
  autograd node `autograd::engine::evaluate_function: ...Backward0` with that sequence number, as torch.profiler
  names it, so the analysis links backward to forward the same way for both tools.
- CUPTI runtime/driver API calls -> runtime calls (correlationId); kernels, memcpys, memsets -> device work.
GPU work is joined to runtime calls by correlationId, and runtime calls to ranges by time on the same thread,
as for torch.profiler traces.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np

from attnprof.errors import AttnprofError
from attnprof.trace.model import NO_ID, DeviceEvents, DeviceKind, HostEvents, HostKind, StringTable, Trace
from attnprof.trace.runinfo import RANGE_PREFIX

ATTNPROF_DOMAIN = "attnprof"
_PUSH_POP, _START_END, _DOMAIN_CREATE = 59, 60, 75
_AUTOGRAD_RANGE = re.compile(
    r"^(?P<name>[^,]+?)(?:, (?P<stashed>stashed )?seq = (?P<seq>\d+))?(?:, op_id = (?P<op_id>\d+))?"
    r"(?:, sizes = (?P<sizes>\[.*?\]))?(?:, input_op_ids = (?P<inputs>.*))?$"
)
_INPUT_OP = re.compile(r"\((\d+),\s*(-?\d+)\)")


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def _name_range(text: str, domain: str | None) -> tuple:
    """(HostKind, name, seq, input dims as JSON, op id, [(producer op id, output index)]) of one NVTX range."""
    if domain == ATTNPROF_DOMAIN:
        return HostKind.ANNOTATION, RANGE_PREFIX + text, NO_ID, None, NO_ID, None
    m = _AUTOGRAD_RANGE.match(text)
    if m and (m["seq"] is not None or m["op_id"] is not None):
        name = m["name"]
        seq = int(m["seq"]) if m["seq"] is not None else NO_ID
        op_id = int(m["op_id"]) if m["op_id"] is not None else NO_ID
        inputs = [(int(a), int(b)) for a, b in _INPUT_OP.findall(m["inputs"])] if m["inputs"] else None
        sizes = m["sizes"].encode() if m["sizes"] else None
        if seq != NO_ID and (m["stashed"] or ("::" not in name and name.endswith(_NODE_SUFFIXES))):
            # an autograd node applying backward: named as torch.profiler names it, so analysis links it to the
            # forward op with the same sequence number
            return HostKind.OP, "autograd::engine::evaluate_function: " + name, seq, None, op_id, inputs
        return HostKind.OP, name, seq, sizes, op_id, inputs
    if text.startswith("aten::"):
        return HostKind.OP, text, NO_ID, None, NO_ID, None
    return HostKind.ANNOTATION, text if domain is None else f"{domain}:{text}", NO_ID, None, NO_ID, None


_NODE_SUFFIXES = tuple(f"Backward{i}" for i in range(4))


def load_nsys_sqlite(path: Path) -> Trace:
    try:
        con = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
        tables = _tables(con)
    except sqlite3.DatabaseError as e:
        raise AttnprofError(f"{path} is not a readable SQLite file ({e})") from None
    if "CUPTI_ACTIVITY_KIND_RUNTIME" not in tables and "NVTX_EVENTS" not in tables:
        raise AttnprofError(f"{path} is not an Nsight Systems export (no CUPTI or NVTX tables)")
    try:
        return _load(con, tables, path)
    except sqlite3.DatabaseError as e:
        raise AttnprofError(f"{path}: unexpected Nsight Systems schema ({e})") from None
    finally:
        con.close()


def _load(con: sqlite3.Connection, tables: set[str], path: Path) -> Trace:
    ids = dict(con.execute("SELECT id, value FROM StringIds")) if "StringIds" in tables else {}
    strings = StringTable()

    host_rows: list[tuple] = []  # (start_ns, end_ns, globalTid, kind, name, seq, correlation, dims, op id, inputs)
    if "NVTX_EVENTS" in tables:
        cols = _columns(con, "NVTX_EVENTS")
        text_id = "textId" if "textId" in cols else "NULL"
        domains = {d: (t if t is not None else ids.get(tid)) for d, t, tid in con.execute(
            f"SELECT domainId, text, {text_id} FROM NVTX_EVENTS WHERE eventType = {_DOMAIN_CREATE}")}
        query = (f"SELECT start, end, globalTid, text, {text_id}, domainId FROM NVTX_EVENTS "
                 f"WHERE eventType IN ({_PUSH_POP}, {_START_END}) AND end IS NOT NULL")
        for start, end, tid, text, tid_text, domain_id in con.execute(query):
            text = text if text is not None else ids.get(tid_text, "")
            kind, name, seq, dims, op_id, inputs = _name_range(text or "",
                                                               domains.get(domain_id) if domain_id else None)
            host_rows.append((start, end, tid, kind, name, seq, NO_ID, dims, op_id, inputs))
    if "CUPTI_ACTIVITY_KIND_RUNTIME" in tables:
        for start, end, tid, corr, name_id in con.execute(
                "SELECT start, end, globalTid, correlationId, nameId FROM CUPTI_ACTIVITY_KIND_RUNTIME"):
            host_rows.append((start, end, tid, HostKind.RUNTIME, ids.get(name_id, "cuda_api"), NO_ID, corr, None,
                              NO_ID, None))

    device_rows: list[tuple] = []  # (start, end, device, stream, kind, name, correlation, bytes)
    if "CUPTI_ACTIVITY_KIND_KERNEL" in tables:
        for start, end, dev, stream, corr, name_id in con.execute(
                "SELECT start, end, deviceId, streamId, correlationId, demangledName FROM CUPTI_ACTIVITY_KIND_KERNEL"):
            device_rows.append((start, end, dev, stream, DeviceKind.KERNEL, ids.get(name_id, "kernel"), corr, 0))
    for table, kind, label in (("CUPTI_ACTIVITY_KIND_MEMCPY", DeviceKind.MEMCPY, "Memcpy"),
                               ("CUPTI_ACTIVITY_KIND_MEMSET", DeviceKind.MEMSET, "Memset")):
        if table in tables:
            for start, end, dev, stream, corr, nbytes in con.execute(
                    f"SELECT start, end, deviceId, streamId, correlationId, bytes FROM {table}"):
                device_rows.append((start, end, dev, stream, kind, label, corr, nbytes or 0))
    if not host_rows and not device_rows:
        raise AttnprofError(f"{path} holds no NVTX ranges, CUDA API calls or GPU work")

    base_ns = min([r[0] for r in host_rows] + [r[0] for r in device_rows])
    thread_index: dict[int, int] = {}
    for r in host_rows:
        thread_index.setdefault(r[2], len(thread_index))
    n = len(host_rows)
    host = HostEvents(
        ts=np.array([(r[0] - base_ns) / 1e3 for r in host_rows], dtype=np.float64),
        dur=np.array([(r[1] - r[0]) / 1e3 for r in host_rows], dtype=np.float64),
        tid=np.array([thread_index[r[2]] for r in host_rows], dtype=np.int32),
        kind=np.array([int(r[3]) for r in host_rows], dtype=np.int8),
        name=strings.intern_many([r[4] for r in host_rows]),
        ext_id=np.full(n, NO_ID, dtype=np.int64),
        seq=np.array([r[5] for r in host_rows], dtype=np.int64),
        fwd_tid=np.full(n, NO_ID, dtype=np.int64),
        correlation=np.array([r[6] if r[6] is not None else NO_ID for r in host_rows], dtype=np.int64),
        py_id=np.full(n, NO_ID, dtype=np.int64),
        py_parent=np.full(n, NO_ID, dtype=np.int64),
        input_dims=[r[7] for r in host_rows],
        input_types=[None] * n,
        input_strides=[None] * n,
        concrete_inputs=[None] * n,
        op_id=np.array([r[8] for r in host_rows], dtype=np.int64),
        input_ops=[r[9] for r in host_rows],
    )
    device = DeviceEvents(
        ts=np.array([(r[0] - base_ns) / 1e3 for r in device_rows], dtype=np.float64),
        dur=np.array([(r[1] - r[0]) / 1e3 for r in device_rows], dtype=np.float64),
        device=np.array([r[2] for r in device_rows], dtype=np.int16),
        stream=np.array([r[3] for r in device_rows], dtype=np.int64),
        kind=np.array([int(r[4]) for r in device_rows], dtype=np.int8),
        name=strings.intern_many([r[5] for r in device_rows]),
        correlation=np.array([r[6] if r[6] is not None else NO_ID for r in device_rows], dtype=np.int64),
        nbytes=np.array([r[7] for r in device_rows], dtype=np.int64),
    )
    props = []
    if "TARGET_INFO_GPU" in tables:
        cols = _columns(con, "TARGET_INFO_GPU")
        if "name" in cols:
            props = [{"name": name} for (name,) in con.execute("SELECT name FROM TARGET_INFO_GPU")]
    return Trace(source=str(path), format="nsys", strings=strings, host=host, device=device,
                 threads=[str(t) for t in thread_index], base_us=base_ns / 1e3, device_properties=props,
                 metadata={"with_stack": False, "record_shapes": any(r[7] for r in host_rows)})
