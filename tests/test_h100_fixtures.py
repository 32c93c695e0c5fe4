"""attnprof's split of real H100 runs (traces/h100/, README there) against the CUDA-event ground truth measured
in the same session (truth.json) and against what Nsight Systems reports for the same script."""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pytest

from attnprof.pipeline import analyze_path
from attnprof.trace.load import load_path

H100 = Path(__file__).resolve().parents[1] / "traces" / "h100"
pytestmark = pytest.mark.skipif(not (H100 / "seed-fwd").is_dir(), reason="no recorded H100 runs")

SEED = "examples/seed_case.py:34 via :47"  # FlashAttention-2 through the seed's wrapper
NATIVE = "examples/seed_case.py:34 via :84"  # FlashAttention-2 on (B, L, H, D) tensors
SDPA = "examples/seed_case.py:52 via :86"  # SDPA on (B, H, L, D): cuDNN on an H100
COPY_LINES = ["examples/seed_case.py:44", "examples/seed_case.py:45", "examples/seed_case.py:46",
              "examples/seed_case.py:48"]


@pytest.fixture(scope="module")
def truth():
    doc = json.loads((H100 / "truth.json").read_text())
    return next(r for r in doc["results"] if r["shape_bhld"] == [12, 64, 256, 64])


@pytest.fixture(scope="module")
def fwd():
    return analyze_path(H100 / "seed-fwd")


def site(report, name, phase="fwd"):
    return next(s for s in report.sites if (s.site, s.phase) == (name, phase))


def test_the_four_seed_copies_are_the_calls_with_their_lines(fwd, truth):
    s = site(fwd, SEED)
    assert sorted(c.site for c in s.copies) == COPY_LINES
    assert all(c.op == "aten::contiguous" and c.bytes == 2 * 12 * 64 * 256 * 64 * 2 for c in s.copies)
    assert s.copy_us == pytest.approx(truth["copies4_us"], rel=0.10)  # the four copies timed alone
    for call in fwd.calls:
        if call.site == SEED:
            assert [c.position for c in call.copies] == ["before"] * 3 + ["after"]


def test_compute_is_the_flash_kernel(fwd, truth):
    for name in (SEED, NATIVE):
        s = site(fwd, name)
        assert s.backend == "flash"  # PyTorch's own FlashAttention-2
        assert s.compute_us == pytest.approx(truth["fa2_native_us"], rel=0.05)
    assert site(fwd, NATIVE).copies == []


def test_sdpa_resolves_to_cudnn_and_its_compute_is_the_cudnn_kernel(fwd):
    s = site(fwd, SDPA)
    assert s.backend == "cudnn" and s.copies == []
    for call in fwd.calls:
        if call.site == SDPA:
            cudnn = [k for k in call.kernels if "cudnn" in k.name]
            assert cudnn and all(k.category == "compute" for k in cudnn)
            assert call.compute_us == pytest.approx(sum(k.dur_us for k in cudnn), rel=1e-6)
            assert {k.category for k in call.kernels if k not in cudnn} <= {"other"}  # cuDNN's 4-byte memset


def test_true_time_matches_an_independent_cuda_event_timing_of_the_same_code(fwd, truth):
    independent = truth["loop_call_us"]  # the example's loop, timed by hand without attnprof
    for name, key in ((SEED, "seed"), (NATIVE, "native"), (SDPA, "sdpa")):
        assert site(fwd, name).true_us == pytest.approx(independent[key], rel=0.10)


@pytest.mark.parametrize("name, truth_key", [(SEED, "seed_total_us"), (NATIVE, "fa2_native_us"),
                                             (SDPA, "sdpa_auto_us")])
def test_the_parts_add_up_to_the_cuda_event_time_of_the_call(fwd, truth, name, truth_key):
    """compute + copy + other + the call's own launch gap (window_true_us) against the whole call (copies included)
    timed alone with CUDA events in the same session (truth.json): the parts, not only their sum, must be right."""
    s = site(fwd, name)
    assert s.window_true_us == pytest.approx(truth[truth_key], rel=0.06)


@pytest.mark.parametrize("run", ["seed-train", "train-seed", "train-sdpa", "hf-llama-sdpa", "hf-llama-eager"])
def test_every_recorded_run_passes_the_models_split_check(run):
    """analysis checks every call's parts against its window (decomposition.check_call) and stops on a broken one."""
    report = analyze_path(H100 / run)
    assert report.calls and all(c.launch_us is not None for c in report.calls)  # GPU timelines


def test_training_step_backward_belongs_to_its_forward_call():
    report = analyze_path(H100 / "seed-train")
    fwd = {c.id for c in report.calls if c.phase == "fwd"}
    bwd = [c for c in report.calls if c.phase == "bwd"]
    assert bwd and {c.id for c in bwd} == fwd
    for c in bwd:
        names = " ".join(k.name for k in c.kernels if k.category == "compute")
        assert ("flash_bwd" in names) if c.backend == "flash" else ("bprop" in names)
    # the seed wrapper's output copy makes the gradient arrive transposed: FA2's backward copies it itself
    # (the same size as the output: a copy like the output copy timed alone with CUDA events, truth.json)
    truth = json.loads((H100 / "truth.json").read_text())["results"][0]
    assert truth["shape_bhld"] == [12, 64, 256, 64]
    seed_bwd = [c for c in report.calls if (c.site, c.phase) == (SEED, "bwd")]
    assert seed_bwd and all([c.position for c in call.copies] == ["inside"] for call in seed_bwd)
    for call in seed_bwd:
        assert [x.bytes for x in call.copies] == [2 * 12 * 64 * 256 * 64 * 2]  # read + written, fp16
        assert call.copy_us == pytest.approx(truth["copy_each_us"]["out"], rel=0.10)


def test_model_training_step_attributes_the_wrappers_copies():
    report = analyze_path(H100 / "train-seed")
    s = site(report, SEED)
    assert sorted(c.site for c in s.copies) == COPY_LINES and s.calls == 4  # two layers, two profiled steps
    assert {x.phase for x in report.sites} == {"fwd", "bwd"}


def test_hf_llama_eager_is_unfused_and_slower_than_sdpa():
    sdpa, eager = analyze_path(H100 / "hf-llama-sdpa"), analyze_path(H100 / "hf-llama-eager")
    s, e = site(sdpa, sdpa.sites[0].site), site(eager, eager.sites[0].site)
    assert s.backend == "cudnn" and s.op == "sdpa"
    assert e.backend == "eager" and e.op == "hf.eager_attention_forward"
    assert e.compute_us > 5 * s.compute_us  # matmul + softmax + matmul against one fused kernel


# --- Nsight Systems ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nsys():
    return analyze_path(H100 / "nsys-seed")


def test_nsight_and_profiler_agree_on_compute_per_site(fwd, nsys):
    for name in (SEED, NATIVE, SDPA):
        assert site(nsys, name).compute_us == pytest.approx(site(fwd, name).compute_us, rel=0.05)
    # the layout copies, found through the data flow PyTorch's NVTX ranges record
    assert site(nsys, SEED).copy_us == pytest.approx(site(fwd, SEED).copy_us, rel=0.05)
    assert any("warm-up" in n for n in nsys.notes)


def test_projected_gpu_time_equals_nsys_stats(nsys):
    """Each attnprof NVTX range's projection (first to last GPU op it launched) is nvtx_gpu_proj_sum's."""
    rows = {r["Range"]: r for r in csv.DictReader(io.StringIO(
        gzip.decompress((H100 / "nsys-seed" / "nvtx_gpu_proj_sum.csv.gz").read_bytes()).decode()))}
    run = load_path(H100 / "nsys-seed")
    checked = 0
    for call in nsys.calls:
        name = f"attnprof:{call.op} {call.site} #{call.id}"
        row = rows[name]
        assert int(row["Range Instances"]) == 1
        assert call.projected_us == pytest.approx(float(row["Proj Avg (ns)"]) / 1000.0, rel=0.01)
        checked += 1
    assert checked == len(nsys.calls) > 90 and run.runinfo.steps.active == 0


def test_pytorch_autograd_ranges_alone_give_the_split():
    """No attnprof ranges at all: `nsys --pytorch=autograd-shapes-nvtx` on the bare script."""
    report = analyze_path(H100 / "nsys-autograd" / "report.sqlite.gz")
    ops = {(c.op, c.phase) for c in report.calls}
    assert ("aten::scaled_dot_product_attention", "bwd") in ops and ("aten::_flash_attention_forward", "bwd") in ops
    seed_calls = [c for c in report.calls if c.phase == "fwd" and c.copies]
    assert seed_calls and all(len(c.copies) == 4 for c in seed_calls)


# --- explain and compare (issue: explain the gap) ----------------------------------------------------------------


def test_seed_wrapper_vs_sdpa_ranks_the_copies_then_the_kernel(fwd, truth):
    from attnprof.analysis import diagnosis as dg

    e = dg.explain(dg.select(fwd, site=SDPA), dg.select(fwd, site=SEED))
    assert e.basis == "true"
    first, second = e.causes[0], e.causes[1]
    assert first.kind == dg.LAYOUT_COPY and first.us == pytest.approx(truth["copies4_us"], rel=0.10)
    assert sorted(first.sources) == COPY_LINES and "(B, L, H, D)" in first.fix
    assert second.kind == dg.KERNEL and "cuDNN" in second.fix
    # the gap and the kernel's share against the calls timed alone with CUDA events
    assert e.gap_us == pytest.approx(truth["seed_total_us"] - truth["sdpa_auto_us"], rel=0.06)
    assert second.us == pytest.approx(truth["fa2_native_us"] - truth["sdpa_auto_us"], rel=0.10)


def test_compare_traces_analysed_again_give_the_seed_table():
    """The stored compare run's traces analysed by attnprof now, against GPU.md's table (triton do_bench medians on
    such a machine) and the copies timed alone with CUDA events (truth.json); and attnprof's roofline of the stored
    medians against the FLOP and byte counts worked out by hand."""
    from attnprof.analysis.roofline import AttentionShape, roofline
    from attnprof.pipeline import read_compare

    doc = read_compare(H100 / "compare")
    assert doc is not None and doc.ceilings is not None
    ceilings = doc.ceilings
    truth = {tuple(r["shape_bhld"]): r for r in json.loads((H100 / "truth.json").read_text())["results"]}
    gpu_md = {(12, 64, 256, 64): (46.3, 71.6, 74.3, 227.2), (16, 128, 784, 128): (1596, 2335, 2378, 4569)}
    runs = [("sdpa-auto", "native"), ("sdpa-flash", "native"), ("aten-flash", "native"), ("aten-flash", "seed-wrapper")]
    for shape, medians in gpu_md.items():
        b, h, seqlen, d = shape
        flops, nbytes = 4 * b * h * seqlen * seqlen * d, 4 * b * h * seqlen * d * 2  # q, k, v, out in fp16
        for (backend, variant), median in zip(runs, medians):
            (s,) = analyze_path(H100 / "compare" / f"{'x'.join(map(str, shape))}.float16.{backend}.{variant}"
                                                   f".pt.trace.json.gz").sites
            busy = s.compute_us + s.copy_us + s.other_us
            # the kernels' busy time of the one profiled call: the do_bench median less its launch gaps (< 12 %)
            assert 0.88 * median <= busy <= median, (shape, backend, variant, busy)
            if variant == "seed-wrapper":
                assert s.copy_us == pytest.approx(truth[shape]["copies4_us"], rel=0.05)
            else:
                assert s.copy_us == 0
            (row,) = [r for r in doc.rows if list(r.shape) == list(shape) and (r.backend, r.variant,
                                                                            r.phase) == (backend, variant, "fwd")]
            roof = roofline(AttentionShape(b, h, h, seqlen, seqlen, d, d, False), 2, False, row.median_us, ceilings)
            assert roof.tflops == pytest.approx(flops / row.median_us / 1e6)
            # intensity L/2 flops/byte against the ridge 795.8 TFLOP/s / 3009 GB/s = 264.5: memory-bound at L=256
            if seqlen == 256:
                assert roof.bound == "memory"
                assert roof.pct_of_peak == pytest.approx(100 * nbytes / row.median_us / 1e3 / 3008.9612931736447)
            else:
                assert roof.bound == "compute"
                assert roof.pct_of_peak == pytest.approx(100 * flops / row.median_us / 1e6 / 795.8432854114967)
            assert row.pct_of_peak == pytest.approx(roof.pct_of_peak, abs=1e-3)  # as recorded: unchanged
