"""Analysis cost grows with the trace, not with its square: the device-work queries each call makes touch only the
rows near the call's window, whatever came before (counted rows, not wall time: timings are in benchmarks/)."""
import json

from attnprof.analysis.index import TraceIndex
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
