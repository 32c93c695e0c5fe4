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
