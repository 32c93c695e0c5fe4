"""Diagnosis: ranked causes that add up, on real CPU traces of the seed case and on hand-built records of the other
cases (fallback, launch-bound, GQA copies, casts, pads, cuDNN vs FA2 on Hopper); and `attnprof explain`."""
from __future__ import annotations

import argparse
import json
import re
import statistics

import pytest
from hand_records import call, report, seed_vs_sdpa
from seed_runs import H100_TRACES, REPO, bare_trace, h100_run_folders, seed_runs
from trace_truth import backward_copies_us, call_truths, mean_copy_us, median_true_us

from attnprof.analysis import diagnosis as dg
from attnprof.cli import explain_cmd
from attnprof.errors import AttnprofError
from attnprof.pipeline import analyze_path
from attnprof.trace.runinfo import CallInfo, TensorInfo

#: the CPU stand-in's SDPA (examples/seed_case.py:37) called from the seed wrapper's line 47
SEED_SITE = "examples/seed_case.py:37 via :47"


def kinds(causes):
    return [c.kind for c in causes]


def assert_causes(e: dg.Explanation, gap: float, causes: dict[str, float], unexplained: float = 0.0):
    """The gap, every cause (and no other) and the remainder, each worked out by hand from the case's construction."""
    assert e.gap_us == pytest.approx(gap)
    assert {c.kind: c.us for c in e.causes} == pytest.approx(causes)
    assert e.unexplained_us == pytest.approx(unexplained, abs=1e-6)


def test_true_basis_counts_the_entry_point_plus_prep_copies_not_the_profilers_idle():
    r, a, b = seed_vs_sdpa()
    e = dg.explain(a, b)
    assert e.basis == "true"
    # B: true 81 around the call + 4 copies of 38 µs; its 900 µs of profiled idle is the profiler's
    assert e.b.us == pytest.approx(81.0 + 4 * 38.0) and e.a.us == pytest.approx(60.0)
    assert e.b.launch_us == pytest.approx(81.0 + 152.0 - 69.0 - 152.0)
    assert e.b.profiler_us == pytest.approx(69.0 + 152.0 + 900.0 - 233.0)
    assert kinds(e.causes)[:2] == [dg.LAYOUT_COPY, dg.KERNEL]
    layout, kernel = e.causes[0], e.causes[1]
    assert layout.us == pytest.approx(152.0)
    assert layout.sources == ["seed.py:44", "seed.py:45", "seed.py:46", "seed.py:48"]
    assert "seed.py:44, 45, 46, 48" in layout.fix and "(B, L, H, D)" in layout.fix
    assert kernel.us == pytest.approx(69.0 - 41.0)
    assert "FlashAttention-3" in kernel.fix and "cuDNN" in kernel.fix  # FA2 on Hopper
    launch = next(c for c in e.causes if c.kind == dg.LAUNCH)
    assert launch.us == pytest.approx(12.0 - (60.0 - 42.0))
    # B 233 - A 60; other: B has none, A 1 µs; launch: B 81 - 69 = 12 against A 60 - 41 - 1 = 18
    assert_causes(e, 173.0, {dg.LAYOUT_COPY: 152.0, dg.KERNEL: 28.0, dg.OTHER: -1.0, dg.LAUNCH: -6.0})
    assert e.explained
    assert any("profiler's own cost" in n for n in e.notes)


def test_without_true_times_the_profiled_windows_are_compared():
    r, a, b = seed_vs_sdpa()
    bare = report(r.calls)  # no runinfo: no true times
    e = dg.explain(dg.select(bare, site="model.py:9"), dg.select(bare, site="seed.py:47"))
    assert e.basis == "profiled" and "no true times" in e.basis_detail
    assert e.causes[0].kind == dg.LAUNCH  # the profiler's idle, on the profiled basis, is what it is
    # windows: A 41 + 60 + 1 = 102, B 69 + 152 + 900 = 1121; other's -1 µs is below the noise floor of a 1019 µs
    # gap, so it is left out and stays in the remainder
    assert_causes(e, 1019.0, {dg.LAUNCH: 840.0, dg.LAYOUT_COPY: 152.0, dg.KERNEL: 28.0}, unexplained=-1.0)


def test_sides_given_the_other_way_round_are_swapped():
    r, a, b = seed_vs_sdpa()
    e = dg.explain(b, a)
    assert e.swapped and e.gap_us == pytest.approx(233.0 - 60.0) and e.b.label.endswith("seed.py:47")
    assert e.causes[0].kind == dg.LAYOUT_COPY


def test_single_site_diagnosis_adds_up_to_its_time():
    r, a, b = seed_vs_sdpa()
    d = dg.diagnose(b)
    assert d.basis == "true"
    assert kinds(d.causes)[:2] == [dg.LAYOUT_COPY, dg.KERNEL]  # FA2 on a Hopper GPU is a cause by itself
    # true 81 around the call + 4 copies of 38: its 69 µs kernel, the copies, and 81 - 69 = 12 µs of launch
    assert d.subject.us == pytest.approx(233.0)
    assert {c.kind: c.us for c in d.causes} == pytest.approx({dg.LAYOUT_COPY: 152.0, dg.KERNEL: 69.0, dg.LAUNCH: 12.0})
    assert d.unexplained_us == pytest.approx(0.0, abs=1e-6)


# --- the other cases ---------------------------------------------------------------------------------------------


def test_fallback_to_math_with_its_reason():
    mask = {"q": [2, 16, 256, 64], "k": [2, 16, 256, 64], "v": [2, 16, 256, 64], "mask": [2, 1, 256, 256]}
    calls = [call("fast.py:3", "flash", id=1, compute=40.0, launch=2.0),
             call("slow.py:7", "math", id=2, compute=310.0, launch=25.0, other=5.0, shapes=mask)]
    r = report(calls)
    e = dg.explain(dg.select(r, site="fast.py:3"), dg.select(r, site="slow.py:7"))
    assert e.causes[0].kind == dg.FALLBACK and e.causes[0].us == pytest.approx(270.0)
    assert "attn_mask" in e.causes[0].detail and "math" in e.causes[0].detail
    assert "is_causal" in e.causes[0].fix
    assert e.causes[0].sources == ["slow.py:7"]
    assert_causes(e, 340.0 - 42.0, {dg.FALLBACK: 270.0, dg.LAUNCH: 23.0, dg.OTHER: 5.0})
    d = dg.diagnose(dg.select(r, site="slow.py:7"))
    assert d.causes[0].kind == dg.FALLBACK


def test_hugging_face_eager_attention_is_unfused_not_a_dispatch_fallback():
    calls = [call("modeling_llama.py:250", "cudnn", id=1, compute=40.0),
             call("modeling_llama.py:260", "math", id=2, compute=190.0, op="eager_attention_forward")]
    r = report(calls)
    e = dg.explain(dg.select(r, site="modeling_llama.py:250"), dg.select(r, site="modeling_llama.py:260"))
    assert e.causes[0].kind == dg.FALLBACK and "unfused" in e.causes[0].detail
    assert 'attn_implementation="sdpa"' in e.causes[0].fix


def test_fallback_reasons_from_dtype_head_dim_dropout_and_strides():
    c = call("m.py:1", "math", dtype="float32", shapes={"q": [1, 4, 128, 60], "k": [1, 4, 128, 60],
                                                        "v": [1, 4, 128, 60]})
    reasons = " | ".join(dg.fallback_reasons(c))
    assert "float32" in reasons and "head dim 60 is not a multiple of 8" in reasons
    t = TensorInfo(shape=[1, 4, 128, 64], stride=[32768, 64, 1, 2], dtype="float16", device="cuda:0")
    info = CallInfo(id=1, op="sdpa", library="torch", site="m.py:1", function="f", step=0, range_name="r",
                    layout="BHLD", tensors={"q": t}, head_dim=320, dropout_p=0.1)
    reasons = " | ".join(dg.fallback_reasons(call("m.py:1", "efficient"), info))
    assert "head dim 320 > 256" in reasons and "dropout_p=0.1" in reasons
    assert "q's last dim is not contiguous" in reasons
    assert dg.fallback_reasons(call("m.py:1", "math")) == []


def test_launch_bound_cudnn_small_step():
    calls = [call("fa2.py:1", "flash", id=1, compute=40.0, launch=200.0),
             call("cudnn.py:1", "cudnn", id=2, compute=30.0, launch=400.0, other=1.0)]
    r = report(calls, {("fa2.py:1", "fwd"): (46.0, 240.0), ("cudnn.py:1", "fwd"): (111.0, 431.0)})
    e = dg.explain(dg.select(r, site="fa2.py:1"), dg.select(r, site="cudnn.py:1"))
    assert e.basis == "true"
    assert e.causes[0].kind == dg.LAUNCH
    assert e.causes[0].us == pytest.approx((111.0 - 31.0) - (46.0 - 40.0))
    assert "cuDNN's CPU-side cost" in e.causes[0].fix and "CUDA graphs" in e.causes[0].fix
    kernel = next(c for c in e.causes if c.kind == dg.KERNEL)
    assert kernel.us == pytest.approx(-10.0)  # cuDNN's kernel is the faster one
    assert e.causes[-1] is kernel  # ranked by µs: what makes B slower first, the faster kernel last
    # true: A 46, B 111; launch 111 - 30 - 1 = 80 against 46 - 40 = 6; B's 1 µs memset is other
    assert_causes(e, 65.0, {dg.LAUNCH: 74.0, dg.OTHER: 1.0, dg.KERNEL: -10.0})


def test_gqa_expansion_casts_and_pads_are_told_apart():
    expand = [("aten::repeat_interleave", 20.0, "before", "llama.py:30"),
              ("aten::repeat_interleave", 20.0, "before", "llama.py:31"),
              ("aten::_to_copy", 12.0, "before", "llama.py:33"),
              ("aten::constant_pad_nd", 6.0, "before", "llama.py:34")]
    calls = [call("gqa.py:5", "flash", id=1, compute=50.0, gqa=4.0),
             call("llama.py:36", "flash", id=2, compute=50.0, copies=expand)]
    r = report(calls)
    e = dg.explain(dg.select(r, site="gqa.py:5"), dg.select(r, site="llama.py:36"))
    by_kind = {c.kind: c for c in e.causes}
    assert kinds(e.causes)[:3] == [dg.GQA_EXPAND, dg.CAST, dg.PAD]
    assert by_kind[dg.GQA_EXPAND].us == pytest.approx(40.0)
    assert by_kind[dg.GQA_EXPAND].sources == ["llama.py:30", "llama.py:31"]
    assert "enable_gqa" in by_kind[dg.GQA_EXPAND].fix
    assert "x2" in by_kind[dg.GQA_EXPAND].detail  # two repeat_interleave copies per call
    assert by_kind[dg.CAST].us == pytest.approx(12.0) and by_kind[dg.PAD].us == pytest.approx(6.0)
    assert_causes(e, 58.0, {dg.GQA_EXPAND: 40.0, dg.CAST: 12.0, dg.PAD: 6.0})


def test_backward_node_copies_are_classified_like_their_forward_ops():
    assert dg.copy_kind("autograd::engine::evaluate_function: ToCopyBackward0") == dg.CAST
    assert dg.copy_kind("autograd::engine::evaluate_function: RepeatInterleaveBackward0") == dg.GQA_EXPAND
    assert dg.copy_kind("autograd::engine::evaluate_function: CloneBackward0") == dg.LAYOUT_COPY
    assert dg.copy_kind("aten::contiguous") == dg.LAYOUT_COPY


def test_per_call_unit_weights_sites_by_their_calls():
    one_layer = [call("a.py:1", "cudnn", id=i, compute=100.0) for i in range(8)]
    two_layers = ([call("b.py:1", "cudnn", id=10 + i, compute=150.0) for i in range(4)]
                  + [call("b.py:2", "cudnn", id=20 + i, compute=150.0) for i in range(4)])
    r = report(one_layer + two_layers)
    e = dg.explain(dg.select(r, site="a.py"), dg.select(r, site="b.py"))  # a file selects all its sites
    assert e.a.calls == 8 and e.b.calls == 8
    assert e.gap_us == pytest.approx(50.0) and e.causes[0].kind == dg.COMPUTE
    assert "same backend (cudnn) and shapes" in e.causes[0].detail


def test_phases_add_per_call_and_the_basis_is_mixed_when_only_fwd_was_timed():
    calls = [call("a.py:1", "cudnn", id=1, compute=40.0, launch=5.0), call("a.py:1", "cudnn", id=1, phase="bwd",
                                                                           compute=100.0, launch=10.0),
             call("b.py:1", "flash", id=2, compute=70.0, launch=5.0), call("b.py:1", "flash", id=2, phase="bwd",
                                                                           compute=160.0, launch=10.0)]
    r = report(calls, {("a.py:1", "fwd"): (45.0, 60.0), ("b.py:1", "fwd"): (75.0, 90.0)})
    e = dg.explain(dg.select(r, site="a.py:1"), dg.select(r, site="b.py:1"))
    assert e.basis == "mixed" and "bwd: profiled windows" in e.basis_detail
    kernel = e.causes[0]
    assert kernel.kind == dg.KERNEL and kernel.by_phase == pytest.approx({"fwd": 30.0, "bwd": 60.0})
    # fwd true 45 vs 75, bwd windows 110 vs 170; launch the same on both sides in both phases
    assert_causes(e, 90.0, {dg.KERNEL: 90.0})


def test_kernels_longer_than_the_true_time_leave_an_unexplained_remainder():
    calls = [call("a.py:1", "flash", id=1, compute=40.0, launch=10.0),
             call("b.py:1", "flash", id=2, compute=200.0, launch=10.0)]
    r = report(calls, {("a.py:1", "fwd"): (50.0, 50.0), ("b.py:1", "fwd"): (120.0, 210.0)})
    e = dg.explain(dg.select(r, site="a.py:1"), dg.select(r, site="b.py:1"))
    assert e.gap_us == pytest.approx(70.0)
    assert not e.explained
    # B's kernels (200) exceed its true time (120): no launch left on B, A's 50 - 40 = 10 remains
    assert_causes(e, 70.0, {dg.COMPUTE: 160.0, dg.LAUNCH: -10.0}, unexplained=70.0 - 160.0 + 10.0)


def test_cpu_runs_have_no_launch_and_take_the_profilers_time_out_of_other():
    calls = [call("a.py:1", "cpu-flash", id=1, compute=400.0, launch=None, other=300.0, device="cpu"),
             call("b.py:1", "cpu-flash", id=2, compute=400.0, launch=None, other=50.0, device="cpu",
                  copies=[("aten::contiguous", 500.0, "before", "b.py:0")])]
    r = report(calls, {("a.py:1", "fwd"): (450.0, 700.0), ("b.py:1", "fwd"): (420.0, 450.0)}, device="cpu")
    e = dg.explain(dg.select(r, site="a.py:1"), dg.select(r, site="b.py:1"))
    assert e.a.launch_us is None and dg.LAUNCH not in kinds(e.causes)
    assert e.a.other_us == pytest.approx(50.0) and e.b.other_us == pytest.approx(20.0)
    assert kinds(e.causes)[0] == dg.LAYOUT_COPY
    assert "host time between the call's ops" in next(c for c in e.causes if c.kind == dg.OTHER).fix
    # true: A 450, B 420 + its 500 µs copy; other: 450 - 400 = 50 against 420 - 400 = 20
    assert_causes(e, 920.0 - 450.0, {dg.LAYOUT_COPY: 500.0, dg.OTHER: -30.0})


def test_selecting_sites_and_calls():
    r, _, _ = seed_vs_sdpa()
    one = dg.select(r, call_id=3)
    assert [c.id for c in one.calls] == [3] and one.sites[0].calls == 1
    with pytest.raises(AttnprofError, match="its sites: model.py:9, seed.py:47"):
        dg.select(r, site="nowhere.py:1")
    with pytest.raises(AttnprofError, match="no attention call #99"):
        dg.select(r, call_id=99)


def test_comparable_sites_are_explained_slowest_against_fastest():
    r, _, _ = seed_vs_sdpa()
    [e] = dg.site_explanations(r)
    assert e.a.label == "model.py:9" and e.b.label == "seed.py:47" and e.causes[0].kind == dg.LAYOUT_COPY


# --- real CPU traces of examples/seed_case.py ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory):
    return seed_runs(tmp_path_factory.getbasetemp())


def _contiguous_lines() -> set[str]:
    """examples/seed_case.py lines that copy in seed_wrapper: `.contiguous()` ones."""
    lines = (REPO / "examples" / "seed_case.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def seed_wrapper"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("def "))
    return {f"examples/seed_case.py:{i + 1}" for i in range(start, end) if ".contiguous()" in lines[i]}


def _qkv_lines() -> set[str]:
    lines = (REPO / "examples" / "seed_case.py").read_text().splitlines()
    return {f"examples/seed_case.py:{i + 1}" for i, line in enumerate(lines)
            if re.match(r"\s+[qkv] = [qkv]\.transpose\(1, 2\)\.contiguous\(\)", line)}


def _seed_copies_us(folder, site: str = SEED_SITE) -> float:
    """The seed wrapper's copies per call (q, k, v before it, the output after), read from the run's trace file with
    json: what its layout-copy cause must be, on either basis."""
    before = sorted(_qkv_lines())
    after = sorted(_contiguous_lines() - _qkv_lines())
    return mean_copy_us(call_truths(bare_trace(folder), before, after, site=site))


def test_cpu_seed_vs_native_run_folders(cpu_runs):
    a, b = analyze_path(cpu_runs["native"]), analyze_path(cpu_runs["seed"])
    e = dg.explain(dg.select(a), dg.select(b))
    assert e.basis == "true"
    # the true basis: each side's timed calls (runinfo.json) plus, for the seed, its copies outside the entry point,
    # read from its trace file. The seed is slower by construction; on a loaded machine the timed calls' noise can
    # exceed its copies, and then the sides are swapped: which one is slower comes from those numbers too.
    copies = _seed_copies_us(cpu_runs["seed"])
    seed_us, native_us = median_true_us(cpu_runs["seed"]) + copies, median_true_us(cpu_runs["native"])
    assert e.swapped == (seed_us < native_us)
    assert e.gap_us == pytest.approx(abs(seed_us - native_us), rel=1e-6)
    layout = next(c for c in e.causes if c.kind == dg.LAYOUT_COPY)
    assert layout.us == pytest.approx(-copies if e.swapped else copies, rel=1e-6)
    assert _qkv_lines() <= set(layout.sources) <= _contiguous_lines()  # the exact lines of the copies


def test_cpu_seed_vs_native_bare_traces_add_up_within_5_percent(cpu_runs):
    # the trace files alone (no runinfo.json): someone else's torch.profiler traces
    trace_a, trace_b = bare_trace(cpu_runs["native"]), bare_trace(cpu_runs["seed"])
    e = dg.explain(dg.select(analyze_path(trace_a)), dg.select(analyze_path(trace_b)))
    assert e.basis == "profiled"
    # the copies' rank among the causes depends on the CPU's load (a loaded machine can make compute's noise the
    # biggest); their cause, its lines and its time do not
    layout = next(c for c in e.causes if c.kind == dg.LAYOUT_COPY)
    assert _qkv_lines() <= set(layout.sources)
    assert layout.us == pytest.approx(_seed_copies_us(cpu_runs["seed"]), rel=1e-6)
    assert abs(e.gap_us - sum(c.us for c in e.causes)) <= 0.05 * e.gap_us and e.explained


def test_cpu_sites_of_one_run(cpu_runs):
    r = analyze_path(cpu_runs["all"])
    [e] = dg.site_explanations(r)
    # Which side is slower, and whether the copies outrank the noise, depend on the CPU's load; that the seed
    # wrapper's copies of q, k, v (its construction) are the layout-copy cause, on whichever side, does not.
    assert sum("seed_wrapper → flash_attention" in label for label in (e.a.label, e.b.label)) == 1
    seed_is_b = "seed_wrapper → flash_attention" in e.b.label
    layout = next(c for c in e.causes if c.kind == dg.LAYOUT_COPY)
    assert _qkv_lines() <= set(layout.sources)
    copies = _seed_copies_us(cpu_runs["all"])
    assert layout.us == pytest.approx(copies if seed_is_b else -copies, rel=1e-6)
    diagnoses = dg.diagnose_sites(r)
    assert len(diagnoses) == len(r.sites) == 3  # the seed's wrapper, native flash_attention, sdpa: one each
    for s in r.sites:
        (d,) = [d for d in diagnoses if d.subject.label.startswith(s.label)]
        seed = s.site == SEED_SITE
        # each site's timed calls (runinfo.json), plus the seed's copies outside the entry point
        assert d.subject.us == pytest.approx(median_true_us(cpu_runs["all"], s.site) + (copies if seed else 0.0),
                                             rel=1e-6)
        layout = [c.us for c in d.causes if c.kind == dg.LAYOUT_COPY]
        assert layout == ([pytest.approx(copies, rel=1e-6)] if seed else [])


def test_cpu_training_step_has_both_phases(tmp_path_factory):
    runs = seed_runs(tmp_path_factory.getbasetemp(), backward=True)
    e = dg.explain(dg.select(analyze_path(runs["native"])), dg.select(analyze_path(runs["seed"])))
    assert e.basis == "true"  # capture times both phases of the entry point
    layout = next(c for c in e.causes if c.kind == dg.LAYOUT_COPY)
    # the seed's copies count for it: positive while it is B, negative if CPU noise in backward made it the faster.
    # Forward: its four copies per call; backward: the copy SDPA's backward makes of the gradient the wrapper's
    # output copy hands it transposed; native makes none. Both read from the seed's trace file with json.
    seed_is_b = e.b.label == str(runs["seed"])
    assert e.swapped == (not seed_is_b)
    sign = 1.0 if seed_is_b else -1.0
    expected = {"fwd": sign * _seed_copies_us(runs["seed"]),
                "bwd": sign * statistics.fmean(backward_copies_us(bare_trace(runs["seed"])))}
    assert layout.by_phase == pytest.approx(expected, rel=1e-6)


# --- attnprof explain ---------------------------------------------------------------------------------------------


def _cli(argv):
    parser = argparse.ArgumentParser()
    explain_cmd.register(parser.add_subparsers())
    ns = parser.parse_args(["explain", *argv])
    return ns.run(ns)


def test_parse_side():
    assert explain_cmd.parse_side("run/::seed_case.py:40") == ("run/", "seed_case.py:40")
    assert explain_cmd.parse_side("::seed_case.py:40") == (None, "seed_case.py:40")
    assert explain_cmd.parse_side("run") == ("run", None)
    assert explain_cmd.parse_side("run::#12") == ("run", "#12")


def test_explain_json(cpu_runs, capsys):
    assert _cli([str(cpu_runs["native"]), str(cpu_runs["seed"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"a", "b", "gap_us", "causes", "unexplained_us", "basis", "basis_detail"} <= set(doc)
    assert {"kind", "us", "detail", "fix", "sources"} <= set(doc["causes"][0])
    # from the trace file and runinfo.json, as the run-folder test above (which side is slower, too)
    copies = _seed_copies_us(cpu_runs["seed"])
    gap = median_true_us(cpu_runs["seed"]) + copies - median_true_us(cpu_runs["native"])
    assert doc["gap_us"] == pytest.approx(abs(gap), abs=0.002)  # rounded to 3 decimals
    layout = next(c for c in doc["causes"] if c["kind"] == "layout_copy")
    assert layout["us"] == pytest.approx(copies if gap > 0 else -copies, abs=0.002)
    assert gap < 0 or doc["causes"][0] is layout  # the seed slower: its copies first


def test_explain_sites_of_one_run_on_the_console(cpu_runs, capsys):
    run = str(cpu_runs["all"])
    sdpa_site = next(s.site for s in analyze_path(cpu_runs["sdpa"]).sites)
    assert _cli([f"{run}::seed_case.py:47", f"::{sdpa_site}"]) == 0
    out = capsys.readouterr().out
    assert "layout copies" in out and "examples/seed_case.py:44, 45, 46" in out and "unexplained" in out
    assert _cli([run, "--site-a", sdpa_site, "--site-b", "seed_case.py:47", "--json"]) == 0
    layout = [c for c in json.loads(capsys.readouterr().out)["causes"] if c["kind"] == "layout_copy"]
    assert len(layout) == 1 and _qkv_lines() <= set(layout[0]["sources"])  # ranked or within noise: load-dependent


def test_explain_one_side_diagnoses_every_site(cpu_runs, capsys):
    assert _cli([str(cpu_runs["all"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["diagnoses"]) == 3
    seed = next(d for d in doc["diagnoses"] if "seed_wrapper → flash_attention" in d["subject"]["label"])
    layout = next(c for c in seed["causes"] if c["kind"] == "layout_copy")
    assert _qkv_lines() <= set(layout["sources"])
    first = min(c.id for c in analyze_path(cpu_runs["all"]).calls)  # capture numbers every call, profiled or not
    assert _cli([f"{cpu_runs['all']}::#{first}"]) == 0
    assert f"#{first}" in capsys.readouterr().out


def test_explain_errors_are_one_line(cpu_runs):
    with pytest.raises(AttnprofError, match="has no site nope.py:3"):
        _cli([str(cpu_runs["all"]), "::nope.py:3"])
    with pytest.raises(AttnprofError, match="A and B are the same"):
        _cli([str(cpu_runs["all"]), str(cpu_runs["all"])])
    with pytest.raises(AttnprofError, match="names a site twice"):
        _cli([f"{cpu_runs['all']}::a.py:1", "::c.py:3", "--site-a", "b.py:2"])
    with pytest.raises(AttnprofError, match="call is #<number>"):
        _cli([f"{cpu_runs['all']}::#x"])


# --- the H100 reference runs (traces/h100/, recorded later): skipped while absent ------------------------------

H100_FOLDERS = h100_run_folders()


@pytest.mark.skipif(not (H100_TRACES / "seed-fwd").is_dir(), reason="no H100 reference runs under traces/h100/")
def test_h100_seed_run_diagnoses_match_the_cuda_event_truth():
    """Each site of the recorded seed run diagnosed on its own against the calls timed alone with CUDA events in the
    same session (traces/h100/truth.json): its time, its copies and its kernel. (The seed against SDPA:
    test_h100_fixtures.py.)"""
    doc = json.loads((H100_TRACES / "truth.json").read_text())
    truth = next(r for r in doc["results"] if r["shape_bhld"] == [12, 64, 256, 64])
    r = analyze_path(H100_TRACES / "seed-fwd")
    diagnoses = dg.diagnose_sites(r)
    seed, native, sdpa = (next(d for d in diagnoses if f"seed_case.py:{site}" in d.subject.label)
                          for site in ("34 via :47", "34 via :84", "52 via :86"))
    assert {d.basis for d in (seed, native, sdpa)} == {"true"}

    def cause(d, kind):
        return next(c.us for c in d.causes if c.kind == kind)

    assert seed.subject.us == pytest.approx(truth["seed_total_us"], rel=0.06)  # copies + FA2, timed alone
    assert cause(seed, dg.LAYOUT_COPY) == pytest.approx(truth["copies4_us"], rel=0.10)
    assert cause(seed, dg.KERNEL) == pytest.approx(truth["fa2_native_us"], rel=0.05)  # FA2 on Hopper
    assert native.subject.us == pytest.approx(truth["fa2_native_us"], rel=0.06)
    assert cause(native, dg.KERNEL) == pytest.approx(truth["fa2_native_us"], rel=0.05)
    assert sdpa.subject.us == pytest.approx(truth["sdpa_auto_us"], rel=0.06)
    assert cause(sdpa, dg.COMPUTE) == pytest.approx(truth["sdpa_auto_us"], rel=0.10)  # cuDNN's kernel


@pytest.mark.skipif(not H100_FOLDERS, reason="no H100 reference runs under traces/h100/")
def test_h100_variant_pairs():
    from attnprof.gallery import gallery_pairs, load_gallery_runs

    pairs = gallery_pairs(load_gallery_runs(H100_TRACES))
    if not pairs:
        pytest.skip("no pair of variants (sdpa/seed, sdpa/eager, native/seed) among the H100 runs")
    for base, other in pairs:
        e = dg.explain(dg.select(base.report, call_info=base.call_info), dg.select(other.report,
                                                                                   call_info=other.call_info))
        assert e.explained, f"{other.name} vs {base.name}: {e.unexplained_us:.1f} of {e.gap_us:.1f} µs unexplained"
        if {base.variant, other.variant} == {"native", "seed"}:
            assert e.causes[0].kind == dg.LAYOUT_COPY and e.causes[0].sources
        if {base.variant, other.variant} == {"sdpa", "seed"}:
            layout = next(c for c in e.causes if c.kind == dg.LAYOUT_COPY)
            # the seed side's copies per forward call, as its calls' copy records give them (sdpa has none)
            seed = base if base.variant == "seed" else other
            fwd = [c for c in seed.report.calls if c.phase == "fwd" and c.copies]
            per_call = sum(x.dur_us for c in fwd for x in c.copies) / len(fwd)
            sign = 1 if other is seed else -1
            assert layout.by_phase["fwd"] == pytest.approx(sign * per_call) and layout.sources
