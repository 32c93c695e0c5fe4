"""The core analysis on real CPU traces recorded in the test with torch.profiler.

The traces name their ranges the way attnprof's capture does, so these tests pin the analysis alone; the end-to-end
`attnprof trace` runs are in the capture and CLI tests.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from trace_truth import call_truths, events  # noqa: E402

from attnprof.analysis import analyze  # noqa: E402
from attnprof.pipeline import analyze_path  # noqa: E402
from attnprof.trace.runinfo import SOURCE_PREFIX, CallInfo, RunInfo, StepInfo, TensorInfo, range_name  # noqa: E402
from attnprof.trace.torch_json import load_torch_trace  # noqa: E402

B, H, L, D = 2, 4, 64, 16


def _record(tmp_path, body, steps=2, with_stack=True):
    path = tmp_path / "t.pt.trace.json.gz"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=with_stack) as prof:
        for step in range(steps):
            body(step)
    prof.export_chrome_trace(str(path))
    return load_torch_trace(path)


def _seed_step(q, k, v, backward, marks=True):
    def src(line):
        return record_function(f"{SOURCE_PREFIX}model.py:{line}") if marks else _null()

    def body(step):
        with src(10):
            qb = q.transpose(1, 2).contiguous()
        with src(11):
            kb = k.transpose(1, 2).contiguous()
        with src(12):
            vb = v.transpose(1, 2).contiguous()
        with record_function(range_name("flash_attn_func", "model.py:13", 100 + step)):
            out = F.scaled_dot_product_attention(qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2))
            out = out.transpose(1, 2)
        with src(14):
            out = out.transpose(1, 2).contiguous()
        if backward:
            out.square().mean().backward()
    return body


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _runinfo(ids):
    """What capture records for the flash_attn_func calls of _seed_step: (B, L, H, D) inputs."""
    blhd = TensorInfo(shape=[B, L, H, D], stride=[L * H * D, H * D, D, 1], dtype="float32", device="cpu")
    calls = [CallInfo(id=i, op="flash_attn_func", library="flash_attn", site="model.py:13", function="seed",
                      step=i - 100, range_name=range_name("flash_attn_func", "model.py:13", i), layout="BLHD",
                      tensors={"q": blhd, "k": blhd, "v": blhd, "out": blhd}) for i in ids]
    return RunInfo(version=1, attnprof_version="test", torch_version=torch.__version__, cuda_version=None,
                   device="cpu", device_capability=None, hostname="h", pid=1, command=["model.py"],
                   started_at="2026-01-01T00:00:00", trace_files=["t.pt.trace.json.gz"],
                   steps=StepInfo(unit="iteration", warmup=0, timed=0, active=2, seen=2), calls=calls)


def _inputs(requires_grad=False):
    torch.manual_seed(0)
    return [torch.randn(B, H, L, D, requires_grad=requires_grad) for _ in range(3)]


def test_seed_copies_are_attributed_with_their_lines_and_the_parts_are_the_traces_ops(tmp_path):
    trace = _record(tmp_path, _seed_step(*_inputs(), backward=False))
    report = analyze([trace], _runinfo([100, 101]), "test")
    fwd = [c for c in report.calls if c.phase == "fwd"]
    assert len(fwd) == 2 and {c.id for c in fwd} == {100, 101}
    # the copies the test wrote (lines 10-12 before the call, 14 after) and the SDPA op, read from the file with json
    truth = {t.id: t for t in call_truths(tmp_path / "t.pt.trace.json.gz", ["model.py:10", "model.py:11",
                                                                            "model.py:12"], ["model.py:14"])}
    for call in fwd:
        assert call.found_by == "attnprof" and call.site == "model.py:13" and call.op == "flash_attn_func"
        assert [(c.site, c.position) for c in call.copies] == [
            ("model.py:10", "before"), ("model.py:11", "before"), ("model.py:12", "before"), ("model.py:14", "after")]
        assert all(c.bytes == 2 * B * H * L * D * 4 for c in call.copies)  # read + written, fp32
        assert call.launch_us is None  # CPU: no device to wait for
        t = truth[call.id]
        assert {c.site: c.dur_us for c in call.copies} == pytest.approx(t.copies, abs=1e-3)
        assert call.copy_us == pytest.approx(t.copy_us, abs=1e-3)
        assert call.compute_us == pytest.approx(t.compute_us, abs=1e-3)
        assert call.window_us == pytest.approx(t.window_us, abs=1e-3) and call.interleaved_us == 0
        copy_segments = [s for s in call.segments if s.part == "copy"]  # the timeline shows each copy where it ran
        assert [round(s.dur_us, 3) for s in copy_segments] == [round(d, 3) for d in t.copies.values()]
        assert call.backend == "flash-attn2"  # the library that was called (runinfo), not the CPU stand-in
        assert call.layout == "BLHD" and call.step in (0, 1)
    site = report.sites[0]
    assert site.calls == 2 and {c.site for c in site.copies} == {"model.py:10", "model.py:11", "model.py:12",
                                                                 "model.py:14"}


def test_without_attnprof_ranges_the_aten_op_is_the_call(tmp_path):
    q, k, v = _inputs()

    def body(step):
        qb, kb, vb = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        F.scaled_dot_product_attention(qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2))

    trace = _record(tmp_path, body)
    report = analyze([trace], None, "test")
    calls = [c for c in report.calls if c.phase == "fwd"]
    assert len(calls) == 2
    for call in calls:
        assert call.found_by == "aten" and call.op == "aten::scaled_dot_product_attention"
        assert call.site.startswith("test_analysis_cpu.py:")  # the enclosing function, from with_stack frames
        assert len([c for c in call.copies if c.position == "before"]) == 3
        assert call.shapes["q"] == [B, H, L, D] and call.dtype == "float32"


def test_an_unrelated_copy_is_not_attributed(tmp_path):
    q, k, v = _inputs()
    other = torch.randn(7, 9)

    def body(step):
        qb, kb, vb = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        other.t().contiguous()  # moves data, but not into the call: a different shape
        F.scaled_dot_product_attention(qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2))

    report = analyze([_record(tmp_path, body)], None, "test")
    for call in report.calls:
        before = [c for c in call.copies if c.position == "before"]
        assert len(before) == 3 and all(c.bytes == 2 * B * H * L * D * 4 for c in before)  # q, k, v; not the 7x9


def test_real_work_between_copy_and_call_stops_the_walk(tmp_path):
    q, k, v = _inputs()

    def body(step):
        qb = q.transpose(1, 2).contiguous()
        qb = qb * 2.0  # real work: the copy above is not layout prep of this call any more
        F.scaled_dot_product_attention(qb.transpose(1, 2), k, v)

    report = analyze([_record(tmp_path, body)], None, "test")
    assert report.calls and all(c.position != "before" for call in report.calls for c in call.copies)


def test_backward_is_attributed_to_its_forward_call(tmp_path):
    trace = _record(tmp_path, _seed_step(*_inputs(requires_grad=True), backward=True))
    report = analyze([trace], _runinfo([100, 101]), "test")
    by_phase = {}
    for c in report.calls:
        by_phase.setdefault(c.phase, []).append(c)
    assert {c.id for c in by_phase["fwd"]} == {c.id for c in by_phase["bwd"]} == {100, 101}
    # by construction, per call: SDPA's backward node (which copies the transposed gradient itself and zero-fills
    # its gradients, both not compute), the backward of `out.transpose(1, 2)` just before it and of the three
    # `xb.transpose(1, 2)` views of q, k, v just after it
    evs = events(tmp_path / "t.pt.trace.json.gz")
    nodes = [e for e in evs if e["name"].startswith("autograd::engine::evaluate_function: ScaledDotProduct")]
    transposes = [e for e in evs if e["name"] == "autograd::engine::evaluate_function: TransposeBackward0"]
    assert len(nodes) == len(by_phase["bwd"]) == 2
    for node, call in zip(nodes, sorted(by_phase["bwd"], key=lambda c: c.start_us)):
        assert call.site == "model.py:13"
        end = node["ts"] + node["dur"]
        (copy,) = [e for e in evs if e["name"] == "aten::contiguous" and node["ts"] <= e["ts"] <= end]
        fills = [e for e in evs if e["name"] == "aten::zeros" and node["ts"] <= e["ts"] <= end]  # other, by definition
        views = [max((t for t in transposes if t["ts"] + t["dur"] <= node["ts"]), key=lambda t: t["ts"])]
        views += sorted((t for t in transposes if t["ts"] >= end), key=lambda t: t["ts"])[:3]
        assert [(c.site, c.position) for c in call.copies] == [("model.py:13", "inside")]
        assert call.copy_us == pytest.approx(copy["dur"], abs=1e-3)
        assert call.compute_us == pytest.approx(node["dur"] - copy["dur"] - sum(f["dur"] for f in fills)
                                               + sum(t["dur"] for t in views), abs=1e-3)
        assert call.window_us == pytest.approx(views[-1]["ts"] + views[-1]["dur"] - views[0]["ts"], abs=1e-3)
    assert {(s.site, s.phase) for s in report.sites} == {("model.py:13", "fwd"), ("model.py:13", "bwd")}


def test_consecutive_calls_do_not_take_each_others_copies(tmp_path):
    """Back-to-back seed calls: the output copy of one and the input copies of the next sit side by side."""
    trace = _record(tmp_path, _seed_step(*_inputs(), backward=False, marks=False), steps=3)
    report = analyze([trace], _runinfo([100, 101, 102]), "test")
    assert [len(c.copies) for c in report.calls] == [4, 4, 4]
    assert all([c.position for c in call.copies] == ["before"] * 3 + ["after"] for call in report.calls)


def test_gqa_expansion_copy_counts_as_layout_prep(tmp_path):
    q = torch.randn(B, 8, L, D)
    k, v = torch.randn(B, 2, L, D), torch.randn(B, 2, L, D)

    def body(step):
        kx = k[:, :, None].expand(B, 2, 4, L, D).reshape(B, 8, L, D)  # HF's repeat_kv
        vx = v[:, :, None].expand(B, 2, 4, L, D).reshape(B, 8, L, D)
        F.scaled_dot_product_attention(q, kx, vx)

    report = analyze([_record(tmp_path, body)], None, "test")
    for call in report.calls:
        assert [c.op for c in call.copies] == ["aten::reshape", "aten::reshape"]


def test_the_next_passes_copies_are_not_the_previous_calls(trace):
    """attnprof stops the profiler at the next step's first call, after that step's input copies ran: they read a
    tensor shaped like the last call's output, but attnprof recorded what each copy read, so they are not its."""
    r = trace("""\
        import torch
        import torch.nn.functional as F
        q, k, v = (torch.randn(2, 4, 64, 16) for _ in range(3))
        def wrapper():
            qb, kb, vb = (t.transpose(1, 2).contiguous() for t in (q, k, v))
            return F.scaled_dot_product_attention(qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2))
        for step in range(6):
            wrapper()
            F.scaled_dot_product_attention(q, k, v)  # output (B, H, L, D), like q
        """, warmup=1, timed=1, active=2, step_on="iteration")
    report = analyze_path(r.folder)
    direct = [c for c in report.calls if c.site.endswith(":9")]
    wrapped = [c for c in report.calls if not c.site.endswith(":9")]
    assert len(direct) == 2 and len(wrapped) == 2
    assert all(c.copies == [] for c in direct)
    assert all([c.position for c in call.copies] == ["before"] * 3 for call in wrapped)
