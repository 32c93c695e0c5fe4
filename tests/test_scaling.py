"""Analysis cost grows with the trace, not with its square: the device-work queries each call makes touch only the
rows near the call's window, whatever came before (counted rows, not wall time: timings are in benchmarks/)."""
import copy
import gzip
import json
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from attnprof.analysis.index import TraceIndex
from attnprof.trace import torch_json
from attnprof.trace.torch_json import load_torch_trace

N = 3000  # short kernels on stream 7 of cuda:0, one every 10 µs


def _kernel(name, ts, dur, device, stream):
    return {"ph": "X", "cat": "kernel", "name": name, "pid": device, "tid": stream, "ts": ts, "dur": dur,
            "args": {"device": device, "stream": stream, "correlation": -1}}


def _index(tmp_path) -> TraceIndex:
    events = [_kernel(f"k{i}", 1000 + 10 * i, 5, 0, 7) for i in range(N)]
    events.append(_kernel("nccl_long", 1000, 10 * N, 0, 9))  # runs beside all of them, on its own stream
    events += [_kernel(f"d1_{j}", 1000 + 20 * j, 15, 1, 7) for j in range(N // 2)]
    path = tmp_path / "t.pt.trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    return TraceIndex(load_torch_trace(path))


def test_device_rows_between_finds_the_overlapping_work_and_looks_only_near_the_window(tmp_path):
    ix = _index(tmp_path)
    names = ix.trace.strings.values
    d = ix.trace.device
    queries = range(1, N - 1, 7)
    for k in queries:
        rows = ix.device_rows_between(10 * k + 2, 10 * k + 12, device=0)
        # kernel k still runs at 10k+2 (ends 10k+5), k+1 starts at 10k+10; the long one spans the whole trace
        assert [names[d.name[r]] for r in rows] == ["nccl_long", f"k{k}", f"k{k + 1}"]
    # per query: two rows of stream 7 and the one of stream 9, however many kernels ran before the window
    assert ix.device_rows_examined == 3 * len(queries)


def test_last_device_end_before_is_the_latest_end_of_earlier_work_on_that_device(tmp_path):
    ix = _index(tmp_path)
    for j in range(1, N // 2, 11):
        # device 1: kernel j starts at 20j and ends at 20j+15; t=20j+3 sees kernels 0..j
        assert ix.last_device_end_before(20 * j + 3, device=1) == 20 * j + 15
    assert ix.last_device_end_before(5.0, device=0) == 10 * N  # the long kernel started at 0
    assert ix.last_device_end_before(0.0, device=0) == float("-inf")  # nothing started before t=0
    assert ix.last_device_end_before(5.0, device=3) == float("-inf")  # no such device
    assert ix.device_rows_examined == len(range(1, N // 2, 11)) + 2


# --- the loader decodes big traces a block at a time (in worker processes): the same trace as decoding it whole ---

SEED_TRACE = Path(__file__).resolve().parents[1] / "traces" / "h100" / "seed-fwd" / "vm_447.pt.trace.json.gz"


def _odd_seed() -> dict:
    """The seed trace with what a cut could trip on: a `}, {` inside a name and inside an event (a list of
    objects in args), a duplicate far from its original, an event whose dur is text, one with no ts."""
    doc = json.loads(gzip.decompress(SEED_TRACE.read_bytes()))
    events = doc["traceEvents"]
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    ops[3]["name"] = 'aten::weird"}, {"name": "x'
    ops[5]["args"]["Extra"] = [{"a": 1}, {"b": 2}]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    kernels[1]["dur"] = "37.9"
    del kernels[2]["ts"]
    events.append(copy.deepcopy(ops[0]))
    doc["traceEvents"] = events
    return doc


def _columns(trace) -> dict:
    h, d, names = trace.host, trace.device, trace.strings.values
    out = {f"host.{k}": getattr(h, k).tolist() for k in ("ts", "dur", "kind", "ext_id", "seq", "fwd_tid",
                                                          "correlation", "py_id", "py_parent")}
    out |= {f"device.{k}": getattr(d, k).tolist() for k in ("ts", "dur", "device", "stream", "kind", "correlation",
                                                             "nbytes")}
    out["host.name"] = [names[i] for i in h.name]
    out["device.name"] = [names[i] for i in d.name]
    out["host.thread"] = [trace.threads[i] for i in h.tid]
    for k in ("input_dims", "input_types", "input_strides", "concrete_inputs"):
        out[k] = [getattr(h, k)[i] for i in range(len(h))]
    out["notes"] = sorted(part for n in trace.notes for part in n.split("; "))
    out["base"] = trace.base_us
    return out


def _write(path, doc, gz: bool):
    """As Kineto writes it: one key per line; gzipped (then streamed through this process) or plain (read by the
    workers where the cuts fall)."""
    text = json.dumps(doc, indent=1).encode()
    if gz:
        path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("odd", [False, True], ids=["seed", "odd-seed"])
def test_blockwise_load_is_the_whole_load(tmp_path, monkeypatch, workers, odd, gz):
    doc = _odd_seed() if odd else json.loads(gzip.decompress(SEED_TRACE.read_bytes()))
    path = _write(tmp_path / "t.pt.trace.json", doc, gz)
    with monkeypatch.context() as m:
        m.setattr(torch_json, "_events_start", lambda path, buf: None)  # no cut: the document decoded whole
        whole = load_torch_trace(path)
    assert len(whole.host) > 2000 and len(whole.device) >= 15  # the seed trace: ~2,900 host events, 19 device
    if odd:
        assert any("1 duplicate of an earlier event" in n for n in whole.notes)
    cuts = []
    real_cut = torch_json._cut
    monkeypatch.setattr(torch_json, "_cut", lambda buf, limit, lo=0: cuts.append(real_cut(buf, limit, lo)) or cuts[-1])
    monkeypatch.setattr(torch_json, "BLOCK_BYTES", 16 << 10)
    monkeypatch.setattr(torch_json, "_worker_pool", lambda: ProcessPoolExecutor(workers, mp_context=get_context(
        "fork")) if workers else None)
    blocks = load_torch_trace(path)
    size = len(gzip.decompress(path.read_bytes())) if gz else path.stat().st_size
    assert len([c for c in cuts if c]) >= size // (16 << 10) - 1  # it was cut, many times
    assert _columns(blocks) == _columns(whole)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("inside", [rb'weird\\"\}, \{', rb'"a": 1\s*\},\s*\{'], ids=["in-a-name", "in-an-event"])
def test_a_cut_that_is_not_between_events_is_undone(tmp_path, monkeypatch, inside, workers, gz):
    """Streamed (gzip, or no workers: blocks handed over in shared slots or decoded here), or read by the workers at
    the cuts (a plain file): either way the load gives up the cut and decodes that part with the rest."""
    path = _write(tmp_path / "t.pt.trace.json", _odd_seed(), gz)
    with monkeypatch.context() as m:
        m.setattr(torch_json, "_events_start", lambda path, buf: None)
        whole = load_torch_trace(path)
    real_cut, bad = torch_json._cut, []

    def cut(buf, limit, lo=0):  # the first cut lands on the `}, {` that is not between two events
        found = re.compile(inside).search(buf, lo)
        if not bad and found:
            bad.append(found)
            brace = buf.index(b"}", found.start())
            return brace + 1, buf.index(b"{", brace)
        return real_cut(buf, limit, lo)

    monkeypatch.setattr(torch_json, "_cut", cut)
    monkeypatch.setattr(torch_json, "BLOCK_BYTES", 16 << 10)
    monkeypatch.setattr(torch_json, "_worker_pool", lambda: ProcessPoolExecutor(workers, mp_context=get_context(
        "fork")) if workers else None)
    assert _columns(load_torch_trace(path)) == _columns(whole) and bad
