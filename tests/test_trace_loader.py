"""The torch.profiler JSON loader: columns, nesting, and clear errors on anything that is not a trace."""
import gzip
import json

import pytest

from attnprof.errors import AttnprofError
from attnprof.trace.model import DeviceKind, HostKind
from attnprof.trace.torch_json import load_torch_trace


def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur, "args": args}


EVENTS = [
    {"ph": "M", "name": "process_name", "pid": 7, "tid": 0, "args": {"name": "python"}},
    _x("user_annotation", "attnprof:sdpa m.py:3 #1", 1000.0, 50.0),
    _x("cpu_op", "aten::scaled_dot_product_attention", 1001.0, 40.0, **{"External id": 5, "Sequence number": 9,
       "Input Dims": [[2, 4, 8, 16], [2, 4, 8, 16], [2, 4, 8, 16]], "Input type": ["c10::Half"] * 3}),
    _x("cpu_op", "aten::_scaled_dot_product_cudnn_attention", 1002.0, 30.0, **{"External id": 6}),
    _x("cuda_runtime", "cudaLaunchKernel", 1010.0, 5.0, correlation=77),
    _x("python_function", "m.py(3): f", 990.0, 100.0, **{"Python id": 3, "Python parent id": 1}),
    {"ph": "X", "cat": "kernel", "name": "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "pid": 0, "tid": 7,
     "ts": 1020.0, "dur": 12.5, "args": {"device": 0, "stream": 7, "correlation": 77, "External id": 6}},
    {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "pid": 0, "tid": 7, "ts": 1018.0, "dur": 1.0,
     "args": {"device": 0, "stream": 7, "correlation": 76, "bytes": 4}},
    {"ph": "s", "id": 77, "pid": 7, "tid": 1, "ts": 1010.0, "cat": "ac2g", "name": "ac2g"},
]


def _write(tmp_path, doc, gz=False, name="t.pt.trace.json"):
    raw = json.dumps(doc).encode()
    path = tmp_path / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_columns(tmp_path, gz):
    t = load_torch_trace(_write(tmp_path, {"traceEvents": EVENTS, "with_stack": 1}, gz=gz))
    h, d = t.host, t.device
    assert len(h) == 5 and len(d) == 2
    assert sorted(h.kind.tolist()) == [HostKind.OP, HostKind.OP, HostKind.ANNOTATION, HostKind.RUNTIME,
                                       HostKind.PYTHON]
    assert h.ts.min() == 0.0 and t.base_us == 990.0  # relative to the earliest event
    sdpa = t.names(h.name).index("aten::scaled_dot_product_attention")
    assert h.dims(sdpa) == [[2, 4, 8, 16]] * 3 and h.types(sdpa) == ["c10::Half"] * 3
    assert h.seq[sdpa] == 9 and h.ext_id[sdpa] == 5
    rt = t.names(h.name).index("cudaLaunchKernel")
    assert h.correlation[rt] == 77
    kernel = t.names(d.name).index("cudnn_generated_fort_native_sdpa_sm90_flash_fprop")
    assert d.kind[kernel] == DeviceKind.KERNEL and d.stream[kernel] == 7 and d.correlation[kernel] == 77
    assert d.kind[1 - kernel] == DeviceKind.MEMSET and d.nbytes[1 - kernel] == 4
    assert t.device_by_correlation[77] == [kernel]
    assert t.metadata["with_stack"] is True


def test_nesting_ignores_python_frames_and_runtime_calls(tmp_path):
    t = load_torch_trace(_write(tmp_path, {"traceEvents": EVENTS}))
    names = t.names(t.host.name)
    parent = t.op_parent
    row = {n: i for i, n in enumerate(names)}
    assert parent[row["attnprof:sdpa m.py:3 #1"]] == -1
    assert parent[row["aten::scaled_dot_product_attention"]] == row["attnprof:sdpa m.py:3 #1"]
    assert parent[row["aten::_scaled_dot_product_cudnn_attention"]] == row["aten::scaled_dot_product_attention"]
    assert parent[row["cudaLaunchKernel"]] == -1 and parent[row["m.py(3): f"]] == -1


def test_bare_event_array_is_accepted(tmp_path):
    t = load_torch_trace(_write(tmp_path, EVENTS))
    assert len(t.host) == 5


@pytest.mark.parametrize("content, message", [
    (b"not json at all", "is not a torch.profiler trace"),
    (b'{"traceEvents": 3}', "is not a torch.profiler trace"),
    (b'{"traceEvents": []}', "holds no profiler events"),
    (b'{"traceEvents": [{"ph": "X", "ts": "soon"}]}', "is not a torch.profiler trace"),
    (b"{\"traceEvents\": [", "is not valid JSON"),
    (b"\x1f\x8b\x08broken gzip", "is not a readable gzip file"),
])
def test_bad_input_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(AttnprofError, match=message):
        load_torch_trace(path)


def test_unreadable_file(tmp_path):
    with pytest.raises(AttnprofError, match="cannot read"):
        load_torch_trace(tmp_path / "missing.json")


def _ops(tmp_path, spans, cat="cpu_op"):
    """A trace of ops named by their (start, duration, thread) spans."""
    events = [_x(cat, name, ts, dur, tid=tid) for name, (ts, dur, tid) in spans.items()]
    return load_torch_trace(_write(tmp_path, {"traceEvents": events}))


def test_parent_is_the_latest_earlier_op_still_running(tmp_path):
    # A holds B (holding C, then D) and E; F starts when E ends (ended rows never hold one starting at their end,
    # nor does F, holding F1, hold L: walking up from F1 passes F too);
    # G overlaps B without nesting in it: B still runs at H's start, so H's parent is B's sibling G (the latest
    # still running), not B; I is on another thread.
    spans = {"A": (0, 100, 1), "B": (10, 30, 1), "C": (11, 5, 1), "D": (20, 5, 1), "G": (25, 30, 1),
             "H": (35, 2, 1), "E": (60, 10, 1), "F": (70, 5, 1), "F1": (71, 1, 1), "L": (75, 3, 1), "I": (12, 1, 2)}
    t = _ops(tmp_path, spans)
    row = {n: i for i, n in enumerate(t.names(t.host.name))}
    parent = {n: (t.names([t.op_parent[r]])[0] if t.op_parent[r] >= 0 else None) for n, r in row.items()}
    assert parent == {"A": None, "B": "A", "C": "B", "D": "B", "G": "B", "H": "G", "E": "A", "F": "A", "F1": "F",
                      "L": "A", "I": None}


def test_host_order_is_thread_then_start_then_longer_first(tmp_path):
    spans = {"a": (5, 1, 1), "b": (5, 9, 1), "c": (5, 3, 1), "d": (1, 1, 1), "e": (5, 9, 2), "f": (0, 1, 2)}
    t = _ops(tmp_path, spans)
    names = t.names(t.host.name)
    # threads are numbered in order of appearance: tid 1 first; "b" before "c" before "a" (longer first)
    assert [names[r] for r in t.host_order] == ["d", "b", "c", "a", "f", "e"]


def test_only_exact_repeats_are_dropped_as_duplicates(tmp_path):
    # three events start at 5: one written twice, the others differ in duration or in thread
    events = [_x("cpu_op", "op", 5, 2), _x("cpu_op", "op", 5, 3), _x("cpu_op", "op", 9, 1), _x("cpu_op", "op", 5, 2),
              _x("cpu_op", "op", 5, 2, tid=2)]
    t = load_torch_trace(_write(tmp_path, {"traceEvents": events}))
    assert sorted(zip(t.host.ts.tolist(), t.host.dur.tolist(), t.host.tid.tolist())) == [
        (0.0, 2.0, 0), (0.0, 2.0, 1), (0.0, 3.0, 0), (4.0, 1.0, 0)]
    assert any("1 duplicate of an earlier event" in n for n in t.notes)


@pytest.mark.parametrize("odd_phase", ["B", "XX", ""], ids=["begin", "two-letters", "empty"])
def test_only_complete_events_are_read(tmp_path, odd_phase):
    # a begin/end pair or any other phase of a known category is not a complete event (no duration of its own);
    # a phase that is not one letter takes the slower reading of phases, with the same outcome
    events = [_x("cpu_op", "kept", 1, 2), {**_x("cpu_op", "other", 3, 4), "ph": odd_phase},
              {**_x("kernel", "k", 5, 1), "ph": "E"}, _x("cpu_op", "kept too", 7, 1)]
    t = load_torch_trace(_write(tmp_path, {"traceEvents": events}))
    assert sorted(t.names(t.host.name)) == ["kept", "kept too"] and len(t.device) == 0


# Frames of one thread: main (0-100) calls model (10-90), which calls attn (20-40) and then mlp (50-80); an op at 30
# runs inside attn, one at 60 inside mlp. Ids as Kineto writes them (1, 2, 3, ... in recording order), or out of
# order with a gap and an id written twice (the later row is the one its children name).
_FRAMES = {
    "in order": [("main.py(1): main", 0, 100, 1, 0), ("main.py(5): model", 10, 80, 2, 1),
                 ("main.py(9): attn", 20, 20, 3, 2), ("main.py(12): mlp", 50, 30, 4, 2)],
    "out of order": [("main.py(1): main", 0, 100, 40, 0), ("stale.py(1): old", 1, 1, 25, 40),
                     ("main.py(5): model", 10, 80, 25, 40), ("main.py(9): attn", 20, 20, 7, 25),
                     ("main.py(12): mlp", 50, 30, 900, 25)],
}


@pytest.mark.parametrize("ids", list(_FRAMES))
def test_an_ops_python_frames_are_found_by_their_parent_ids(tmp_path, ids):
    from attnprof.analysis.index import TraceIndex

    frames = [_x("python_function", name, ts, dur, **{"Python id": i, "Python parent id": p})
              for name, ts, dur, i, p in _FRAMES[ids]]
    ops = [_x("cpu_op", "aten::bmm", 30.0, 2.0), _x("cpu_op", "aten::mm", 60.0, 2.0)]
    trace = load_torch_trace(_write(tmp_path, {"traceEvents": frames + ops}))
    ix = TraceIndex(trace)
    by_name = {trace.strings[trace.host.name[r]]: r for r in range(len(trace.host))}

    def chain(op):
        return [trace.strings[trace.host.name[f]].split(": ")[1] for f in ix.python_chain(by_name[op])]

    assert chain("aten::bmm") == ["attn", "model", "main"]
    assert chain("aten::mm") == ["mlp", "model", "main"]


def test_an_input_with_a_negative_size_reads_as_no_shape(tmp_path):
    """Kineto writes -1 sizes for inputs that are not tensors of known shape: such an entry reads as [], the other
    entries as written; so does a hand-edited entry that mixes text and a negative integer."""
    dims = [[2, 4, 8, 16], [-1], [3, -2, 5], [], ["x", -1], ["x", 1], [0, 7]]
    op = _x("cpu_op", "aten::bmm", 10.0, 2.0, **{"Input Dims": dims})
    other = _x("cpu_op", "aten::mm", 20.0, 2.0, **{"Input Dims": [[4, 4]]})
    trace = load_torch_trace(_write(tmp_path, {"traceEvents": [op, other]}))
    by_name = {trace.strings[trace.host.name[r]]: r for r in range(len(trace.host))}
    assert trace.host.dims(by_name["aten::bmm"]) == [[2, 4, 8, 16], [], [], [], [], ["x", 1], [0, 7]]
    assert trace.host.dims(by_name["aten::mm"]) == [[4, 4]]
