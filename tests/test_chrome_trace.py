"""The Perfetto / Chrome overlay: a valid Trace Event Format copy of the trace, the original untouched, each call's
slice carrying the report's numbers, its split tiling its window, and an arrow from every charged copy."""
from __future__ import annotations

import gzip
import hashlib
import json
import numbers
from collections import defaultdict
from pathlib import Path

import pytest
from seed_traces import H100_TRACES, h100_trace_files, profile_seed_case

from attnprof.analysis.records import Report
from attnprof.pipeline import analyze_path
from attnprof.render.chrome_trace import CATEGORY, INTERLEAVED, LAUNCH, PROCESS_NAME, TraceOverlayRenderer, overlay_path
from attnprof.trace.load import load_path

PARTS = ("compute", "copy", LAUNCH, "other")


# --- a structural checker of the Trace Event Format ---------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_trace_events(events: list[dict], paired_flow_cats=(CATEGORY,)) -> list[str]:
    """Problems with `events` as Trace Event Format, [] if none.

    Every event has a phase; complete (X) events have numeric ts, dur >= 0, pid, tid and name; name metadata has
    args.name. Flow events of `paired_flow_cats` come in s/f pairs (same id and cat), each inside a complete slice
    of its pid/tid at its ts. Flows of other categories are the profiler's own (a window can cut a pair in two):
    they need only an id and a numeric ts.
    """
    problems = []
    slices = defaultdict(list)
    for i, e in enumerate(events):
        ph = e.get("ph")
        if not isinstance(ph, str) or not ph:
            problems.append(f"event {i} has no ph: {e}")
            continue
        if ph == "X":
            if not (_is_number(e.get("ts")) and _is_number(e.get("dur")) and e["dur"] >= 0):
                problems.append(f"X event {i} needs numeric ts and dur >= 0: {e}")
            elif "pid" not in e or "tid" not in e or not isinstance(e.get("name"), str):
                problems.append(f"X event {i} needs pid, tid and name: {e}")
            else:
                slices[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
        elif ph == "M":
            if e.get("name") in ("process_name", "thread_name") and not isinstance(e.get("args", {}).get("name"), str):
                problems.append(f"metadata event {i} has no args.name: {e}")
            if e.get("name", "").endswith("_sort_index") and not _is_number(e.get("args", {}).get("sort_index")):
                problems.append(f"sort-index metadata {i} has no numeric args.sort_index: {e}")
    flows = defaultdict(dict)
    for i, e in enumerate(events):
        if e.get("ph") not in ("s", "t", "f"):
            continue
        if "id" not in e or not _is_number(e.get("ts")):
            problems.append(f"flow event {i} needs an id and a numeric ts: {e}")
            continue
        if e.get("cat") not in paired_flow_cats:
            continue
        key = (e["cat"], e["id"])
        if e["ph"] in flows[key]:
            problems.append(f"flow {key} has two {e['ph']!r} events")
        flows[key][e["ph"]] = e
        if e["ph"] == "f" and e.get("bp") != "e":
            problems.append(f"flow end {key} must bind to its enclosing slice (bp 'e'): {e}")
        if not any(s <= e["ts"] <= end for s, end in slices.get((e.get("pid"), e.get("tid")), ())):
            problems.append(f"flow {e['ph']!r} {key} at {e['ts']} is inside no slice of {e.get('pid')}/{e.get('tid')}")
    for key, ends in flows.items():
        if set(ends) != {"s", "f"}:
            problems.append(f"flow {key} is not an s/f pair: {sorted(ends)}")
    return problems


def test_checker_catches_broken_events():
    good = [{"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0.0, "dur": 5.0},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "t"}},
            {"ph": "s", "id": 1, "cat": CATEGORY, "name": "x", "pid": 1, "tid": 1, "ts": 1.0},
            {"ph": "f", "bp": "e", "id": 1, "cat": CATEGORY, "name": "x", "pid": 1, "tid": 1, "ts": 4.0}]
    assert check_trace_events(good) == []
    assert check_trace_events(good[:3])  # unpaired flow
    assert check_trace_events([{**good[0], "dur": -1}])
    assert check_trace_events([{"name": "no phase"}])
    assert check_trace_events([good[0], {**good[1], "args": {}}])
    assert check_trace_events([good[0], good[2], {**good[3], "ts": 9.0}])  # end outside every slice


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """The seed case with backward: copies before and after the call, interleaved transposes, backward nodes."""
    folder = tmp_path_factory.mktemp("seed-cpu")
    profile_seed_case(folder, ["--steps", "2", "--backward"])
    return folder


def _read(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def _overlay(run: Path) -> tuple[Report, Path, dict]:
    report = analyze_path(run)
    trace = Path(report.trace_files[0])
    out = TraceOverlayRenderer(trace).write(report, trace.parent)
    return report, trace, _read(out)


def _ours(doc: dict) -> tuple[int, dict[str, int], list[dict]]:
    """The attnprof pid, its tracks by name, and its events."""
    events = doc["traceEvents"]
    pid = next(e["pid"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name" and e["args"]["name"] == PROCESS_NAME)
    tracks = {e["args"]["name"]: e["tid"] for e in events
              if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") == pid}
    return pid, tracks, [e for e in events if e.get("pid") == pid]


def _call_slices(doc: dict) -> list[dict]:
    pid, tracks, ours = _ours(doc)
    call_tids = {tid for name, tid in tracks.items() if name.startswith("calls")}
    return [e for e in ours if e["ph"] == "X" and e["tid"] in call_tids]


def _segments_by_call(doc: dict) -> dict[tuple, list[dict]]:
    pid, tracks, ours = _ours(doc)
    split_tids = {tid for name, tid in tracks.items() if name.startswith("split")}
    out = defaultdict(list)
    for e in ours:
        if e["ph"] == "X" and e["tid"] in split_tids:
            out[(e["args"]["call"], e["args"]["phase"], e["args"]["site"])].append(e)
    return out


# --- the overlay of a real CPU run ----------------------------------------------------------------------------------


def test_overlay_is_valid_trace_event_format(cpu_run):
    report, trace, doc = _overlay(cpu_run)
    assert check_trace_events(doc["traceEvents"]) == []
    pid, tracks, ours = _ours(doc)
    assert {"calls", "split"} <= set(tracks)
    assert not any(isinstance(e.get("pid"), int) and e["pid"] == pid for e in _read(trace)["traceEvents"])


def test_original_is_untouched_and_copied_whole(cpu_run, tmp_path):
    report = analyze_path(cpu_run)
    trace = Path(report.trace_files[0])
    before = hashlib.sha256(trace.read_bytes()).hexdigest()
    out = TraceOverlayRenderer(trace).write(report, trace.parent)
    assert out == overlay_path(trace) and out.name.endswith(".attnprof.pt.trace.json.gz") and out.parent == cpu_run
    assert hashlib.sha256(trace.read_bytes()).hexdigest() == before
    original, copy = _read(trace), _read(out)
    assert {k: v for k, v in copy.items() if k != "traceEvents"} == {k: v for k, v in original.items()
                                                                      if k != "traceEvents"}
    n = len(original["traceEvents"])
    assert copy["traceEvents"][:n] == original["traceEvents"] and len(copy["traceEvents"]) > n
    # the loader skips the overlay: analysing the folder again gives the same calls
    assert [str(t.source) for t in load_path(cpu_run).traces] == [str(trace)]
    assert len(analyze_path(cpu_run).calls) == len(report.calls)


def test_call_slices_carry_the_report(cpu_run):
    report, _, doc = _overlay(cpu_run)
    slices = {(e["args"]["call"], e["args"]["phase"], e["args"]["site"]): e for e in _call_slices(doc)}
    assert len(slices) == len(report.calls) > 0
    for call in report.calls:
        e = slices[(call.id, call.phase, call.site)]
        a = e["args"]
        assert e["name"] == f"{call.op} → {call.backend} {call.phase}"
        assert (a["backend"], a["op"]) == (call.backend, call.op)
        for part in ("window_us", "compute_us", "copy_us", "other_us", "interleaved_us"):
            assert a[part] == pytest.approx(getattr(call, part), abs=1e-3)
        assert "launch_us" not in a  # a CPU run: launch does not apply
        assert [c["site"] for c in a["copies"]] == [c.site for c in call.copies]
        assert e["dur"] == pytest.approx(call.window_us + call.interleaved_us, abs=1e-3)
    assert any(a["args"]["copies"] for a in slices.values())  # the seed wrapper's copies are there, with sites


def _check_split(report: Report, doc: dict, exact_parts) -> None:
    """Each call's segments tile its slice, their parts sum to its window, and (where `exact_parts(call)`) each
    part matches the report's."""
    calls = {(e["args"]["call"], e["args"]["phase"], e["args"]["site"]): e for e in _call_slices(doc)}
    segments = _segments_by_call(doc)
    for call in report.calls:
        key = (call.id, call.phase, call.site)
        slice_, segs = calls[key], sorted(segments[key], key=lambda e: e["ts"])
        tol = 0.01 * call.window_us
        assert segs[0]["ts"] == pytest.approx(slice_["ts"], abs=1e-3)
        assert segs[-1]["ts"] + segs[-1]["dur"] == pytest.approx(slice_["ts"] + slice_["dur"], abs=1e-3)
        for a, b in zip(segs, segs[1:]):
            assert b["ts"] == pytest.approx(a["ts"] + a["dur"], abs=1e-3) and a["name"] != b["name"]
        totals = defaultdict(float)
        for s in segs:
            totals[s["name"]] += s["dur"]
        assert set(totals) <= set(PARTS) | {INTERLEAVED}
        assert sum(totals[p] for p in PARTS) == pytest.approx(call.window_us, abs=tol)
        assert totals[INTERLEAVED] == pytest.approx(call.interleaved_us, abs=tol)
        if exact_parts(call):
            expected = {"compute": call.compute_us, "copy": call.copy_us, "other": call.other_us,
                        LAUNCH: call.launch_us or 0.0}
            assert dict((p, totals[p]) for p in PARTS) == pytest.approx(expected, abs=tol)


def test_split_tiles_each_window(cpu_run):
    report, _, doc = _overlay(cpu_run)
    _check_split(report, doc, exact_parts=lambda call: True)
    assert not any(e["name"] == LAUNCH for segs in _segments_by_call(doc).values() for e in segs)


def test_an_arrow_from_every_charged_copy(cpu_run):
    report, _, doc = _overlay(cpu_run)
    events = doc["traceEvents"]
    pid, tracks, _ = _ours(doc)
    starts = [e for e in events if e.get("ph") == "s" and e.get("cat") == CATEGORY]
    ends = [e for e in events if e.get("ph") == "f" and e.get("cat") == CATEGORY]
    copies = sum(1 for c in report.calls for k in c.kernels if k.category == "copy")
    assert len(starts) == len(ends) == copies > 0
    assert all(e["pid"] != pid for e in starts) and all(e["pid"] == pid for e in ends)
    # each arrow starts on an original slice of the copy op
    originals = {(e["pid"], e["tid"], e["ts"]): e["name"] for e in events if e.get("ph") == "X" and e.get("pid") != pid}
    copy_names = {k.name for c in report.calls for k in c.kernels if k.category == "copy"}
    assert all(originals.get((e["pid"], e["tid"], e["ts"])) in copy_names for e in starts)


# --- a device timeline: launch gaps and another stream's kernel inside the window ------------------------------------


def _device_trace(path: Path) -> Path:
    """The seed wrapper on a GPU timeline, written as Kineto writes it: q, k, v copies, the flash kernel and the
    output copy on stream 7, each launched with a gap, and an NCCL kernel on stream 13 running inside the window."""
    pid = tid = 4242
    t0 = 1_700_000_000_000.0
    dims = [2, 8, 4, 16]
    events = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": "python"}}]
    correlation = iter(range(100, 200))

    def op(name, ts, dur, inputs, kernel=None, kernel_dur=5.0, lag=20.0):
        c = next(correlation)
        events.append({"ph": "X", "cat": "cpu_op", "name": name, "pid": pid, "tid": tid, "ts": t0 + ts, "dur": dur,
                       "args": {"External id": c, "Input Dims": inputs, "Input type": ["float"] * len(inputs)}})
        if kernel:
            events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": pid, "tid": tid,
                           "ts": t0 + ts + 1, "dur": 2, "args": {"correlation": c, "External id": c}})
            events.append({"ph": "X", "cat": "kernel", "name": kernel, "pid": 0, "tid": 7, "ts": t0 + ts + lag,
                           "dur": kernel_dur, "args": {"device": 0, "stream": 7, "correlation": c}})
            events.append({"ph": "s", "id": c, "pid": pid, "tid": tid, "ts": t0 + ts + 1, "cat": "ac2g",
                           "name": "ac2g"})
            events.append({"ph": "f", "id": c, "pid": 0, "tid": 7, "ts": t0 + ts + lag, "cat": "ac2g",
                           "name": "ac2g", "bp": "e"})

    copy_kernel = "void at::native::elementwise_kernel<128, 2, at::native::direct_copy_kernel_cuda>"
    for ts in (0, 10, 20):
        op("aten::contiguous", ts, 8, [dims], copy_kernel)
    op("aten::scaled_dot_product_attention", 30, 12, [dims] * 3)
    op("aten::_scaled_dot_product_flash_attention", 31, 10, [dims] * 3, "flash_fwd_kernel", kernel_dur=40.0)
    op("aten::contiguous", 45, 8, [dims], copy_kernel, lag=60.0)
    events.append({"ph": "X", "cat": "kernel", "name": "ncclKernel_AllReduce_RING_LL_Sum_float", "pid": 0, "tid": 13,
                   "ts": t0 + 35, "dur": 10, "args": {"device": 0, "stream": 13, "correlation": 999}})
    doc = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3"}],
           "traceEvents": events}
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return path


def test_device_timeline_shows_launch_and_interleaved_work(tmp_path):
    _device_trace(tmp_path / "gpu_1.pt.trace.json.gz")
    report, _, doc = _overlay(tmp_path)
    assert check_trace_events(doc["traceEvents"], paired_flow_cats=(CATEGORY, "ac2g")) == []
    call = report.calls[0]
    # by hand: the window opens with q's contiguous() at 0 and ends with the output copy's kernel at 110; on
    # stream 7 copies 20-25, 30-35, 40-45, flash 51-91, 105-110; NCCL on stream 13 runs 35-45, of which 35-40 is not
    # under a kernel of the call: interleaved 5, window 105; busy 20 (copies) + 40 (flash); launch is the rest:
    # the GPU idle 0-20, 25-30, 45-51 and 91-105
    assert (call.window_us, call.interleaved_us) == pytest.approx((105.0, 5.0))
    assert (call.copy_us, call.compute_us, call.other_us, call.launch_us) == pytest.approx((20.0, 40.0, 0.0, 45.0))
    _check_split(report, doc, exact_parts=lambda call: True)
    names = {e["name"] for segs in _segments_by_call(doc).values() for e in segs}
    assert {LAUNCH, INTERLEAVED, "compute", "copy"} <= names
    # arrows start on the copy kernels, on the GPU stream
    starts = [e for e in doc["traceEvents"] if e.get("ph") == "s" and e.get("cat") == CATEGORY]
    assert len(starts) == len(call.copies) and all((e["pid"], e["tid"]) == (0, 7) for e in starts)


# --- the recorded H100 traces -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not h100_trace_files(), reason=f"no recorded traces under {H100_TRACES} yet")
@pytest.mark.parametrize("trace", h100_trace_files(), ids=lambda p: str(p.relative_to(H100_TRACES)))
def test_h100_overlay(trace, tmp_path):
    report = analyze_path(trace.parent)
    before = hashlib.sha256(trace.read_bytes()).hexdigest()
    out = TraceOverlayRenderer(trace).write(report, tmp_path)  # never into the tracked folder
    assert hashlib.sha256(trace.read_bytes()).hexdigest() == before
    doc = _read(out)
    assert check_trace_events(doc["traceEvents"]) == []
    placed = {(e["args"]["call"], e["args"]["phase"], e["args"]["site"]) for e in _call_slices(doc)}
    mine = [c for c in report.calls if (c.id, c.phase, c.site) in placed]
    assert mine, "no call of the report was placed on its own trace"
    # on a GPU every piece of the call's work is a listed kernel: each part matches the report
    _check_split(Report(**{**report.__dict__, "calls": mine}), doc, exact_parts=lambda call: call.device != "cpu")
