"""Nsight Compute's counters per attention kernel, on the H200 recording in traces/h200/ncu-seed/ (how it was made:
traces/h200/record_ncu.sh): the raw CSV's parsing, the joins kernel -> call -> site, the wgmma / mma.sync
finding, the bound, ncu's durations against the torch.profiler trace of the same case; `attnprof ncu` end to end
with a stand-in ncu, and the call selection it relies on."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from attnprof.analysis.kernel_counters import (
    COMPUTE_BOUND,
    LATENCY_BOUND,
    MEMORY_BOUND,
    OCCUPANCY_BOUND,
    classify_bound,
    counters_section,
    kernel_choice_evidence,
    short_kernel_name,
)
from attnprof.errors import AttnprofError
from attnprof.trace.ncu_csv import load_ncu_csv
from attnprof.trace.runinfo import read_runinfo

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "traces" / "h200" / "ncu-seed"
CSV = SEED / "seed.raw.csv"
# examples/seed_case.py --variant all: each step calls seed (line 47), native (84), sdpa (86), in that order
FA2_SEED, FA2_NATIVE, CUDNN = ("examples/seed_case.py:34 via :47", "examples/seed_case.py:34 via :84",
                               "examples/seed_case.py:52 via :86")


def attnprof(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "attnprof", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ) if env is None else env)


@pytest.fixture(scope="module")
def section():
    return counters_section(load_ncu_csv(CSV), read_runinfo(SEED))


def test_the_raw_csv_parses_with_its_units_and_separators():
    kernels = load_ncu_csv(CSV).kernels
    assert [k.index for k in kernels] == [0, 1, 2, 3, 4, 5]
    first = kernels[0]
    # the CSV's cells, by hand: "62.944000" us, "50.176000" Kbyte/block, "75.565824" Mbyte, "1,536", "255"
    assert first.duration_us == pytest.approx(62.944)
    assert first.shared_mem_per_block == pytest.approx(50_176)
    assert first.dram_read_bytes == pytest.approx(75_565_824)
    assert first.dram_write_bytes == pytest.approx(17_383_168)
    assert first.grid_size == 1536 and first.registers_per_thread == 255
    assert first.occupancy_limits["registers"] == 2 and first.occupancy_limits["warps"] == 16
    assert first.name.startswith("void pytorch_flash::flash_fwd_kernel<")
    assert short_kernel_name(first.name) == "flash_fwd_kernel"
    assert short_kernel_name(kernels[2].name).startswith("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma")


def test_kernels_join_calls_and_sites(section):
    """2 steps x 3 sites: call ids 1..6, one kernel each, the sites in the script's order; phases from runinfo."""
    runinfo_sites = [s.site for s in read_runinfo(SEED).sites]
    assert runinfo_sites == [FA2_SEED, FA2_NATIVE, CUDNN]
    assert [(k.call_id, k.site) for k in section.kernels] == [
        (1, FA2_SEED), (2, FA2_NATIVE), (3, CUDNN), (4, FA2_SEED), (5, FA2_NATIVE), (6, CUDNN)]
    assert [k.op for k in section.kernels[:3]] == ["aten._flash_attention_forward"] * 2 + ["sdpa"]
    assert {k.phase for k in section.kernels} == {"fwd"}
    by_site = {s.site: s for s in section.sites}
    assert by_site[FA2_SEED].call_ids == [1, 4] and by_site[FA2_NATIVE].call_ids == [2, 5]
    assert by_site[CUDNN].call_ids == [3, 6] and by_site[CUDNN].backend == "cudnn"
    assert section.outside_calls == 0 and section.notes == []
    # medians per site, by hand from the CSV: (62.944 + 63.296) / 2, (41.216 + 41.728) / 2
    assert by_site[FA2_SEED].duration_us == pytest.approx(63.12)
    assert by_site[CUDNN].duration_us == pytest.approx(41.472)


def test_wgmma_against_mma_sync_from_the_counters(section):
    by_site = {s.site: s for s in section.sites}
    fa2, cudnn = by_site[FA2_SEED], by_site[CUDNN]
    # FA2 issues mma.sync only: gmma 0, the HMMA pipe 3,145,728 instructions
    assert (fa2.gmma_inst, fa2.mma_sync_inst) == (0, 3_145_728)
    # cuDNN issues wgmma: gmma 294,912; ncu counts those on the HMMA pipe too (its hmma.sum is 294,912 as well)
    assert (cudnn.gmma_inst, cudnn.mma_sync_inst) == (294_912, 0)
    assert fa2.registers_per_thread == 255 and cudnn.registers_per_thread == 168
    assert fa2.shared_mem_per_block == 50_176 and cudnn.shared_mem_per_block == 135_168
    assert fa2.tensor_pipe_pct == pytest.approx((34.127243 + 34.705819) / 2)
    text = kernel_choice_evidence(section, [FA2_SEED], section, [CUDNN])
    assert "issues wgmma (gmma 294,912)" in text and "flash_fwd_kernel issues no wgmma and 3.1 M mma.sync" in text
    assert "tensor pipe 34% active" in text and "DRAM 31% of peak" in text and "DRAM 46% of peak" in text
    assert kernel_choice_evidence(section, [FA2_SEED], section, ["elsewhere.py:1"]) is None
    assert kernel_choice_evidence(None, [FA2_SEED], section, [CUDNN]) is None


def test_the_bound_from_the_counters(section):
    fa2 = next(k for k in section.kernels if k.call_id == 1)
    # SM 40.6%, memory 33.3% of peak: far from both; 12.0% of the warps active, 2 blocks of 4 warps allowed by
    # registers and by shared memory
    assert fa2.bound == OCCUPANCY_BOUND
    assert fa2.occupancy_limiters == ["registers (255/thread)", "shared memory (50.2 KB/block)"]
    assert "12.0%" in fa2.bound_evidence and "8 of 64 warps" in fa2.bound_evidence
    assert classify_bound(85.0, 30.0, 20.0, 50.0)[0] == COMPUTE_BOUND
    assert classify_bound(30.0, 70.0, 88.0, 50.0)[0] == MEMORY_BOUND  # DRAM alone at the ceiling
    assert classify_bound(40.0, 30.0, 30.0, 50.0)[0] == LATENCY_BOUND
    assert classify_bound(40.0, 30.0, 30.0, 20.0)[0] == OCCUPANCY_BOUND
    assert classify_bound(None, None, None, None)[0] is None


def test_a_copy_kernel_gets_its_bytes_and_bandwidth():
    """A copy kernel inside a call's range: DRAM bytes read + written, GB/s over its duration, memory-bound at 80%
    of DRAM peak (by hand: 3 MB + 1 MB in 20 µs = 200 GB/s)."""
    from attnprof.analysis.kernel_counters import kernel_counters
    from attnprof.trace.ncu_csv import NcuKernel

    k = NcuKernel(index=0, name="void at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)", call_id=3,
                  op="sdpa", site="m.py:5", device=0, stream=7, duration_us=20.0, sm_pct=12.0, memory_pct=81.0,
                  dram_pct=80.0, achieved_occupancy_pct=70.0, dram_read_bytes=3e6, dram_write_bytes=1e6)
    c = kernel_counters(k)
    assert (c.category, c.dram_bytes, c.bound) == ("copy", 4_000_000, MEMORY_BOUND)
    assert c.dram_gbs == pytest.approx(200.0)


def test_ncu_durations_hold_to_the_trace():
    """Clock control off: ncu's kernel durations within 10% of torch.profiler's for the same kernels (the trace of
    the same case in the same device session, trace-run/)."""
    from attnprof.pipeline import analyze_run

    report = analyze_run(SEED / "trace-run").report
    traced: dict[str, list[float]] = {}
    for call in report.calls:
        traced.setdefault(call.site, []).extend(k.dur_us for k in call.kernels if k.category == "compute")
    section = counters_section(load_ncu_csv(CSV), None)
    for s in section.sites:
        t = statistics.median(traced[s.site])
        assert abs(s.duration_us - t) <= 0.10 * t, (s.site, s.duration_us, t)


def test_analyze_an_ncu_run_folder_and_its_csv():
    r = attnprof("analyze", SEED)
    assert r.returncode == 0, r.stderr
    assert "Nsight Compute counters" in r.stdout and "3,145,728" in r.stdout and "294,912" in r.stdout
    r = attnprof("analyze", CSV, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [s["call_ids"] for s in doc["kernel_counters"]["sites"]] == [[1, 4], [2, 5], [3, 6]]
    assert doc["kernel_counters"]["kernels"][2]["gmma_inst"] == 294_912


def test_kernel_choice_cause_carries_the_counters(tmp_path):
    """The trace of the seed case with ncu's CSV of the same case beside it: `explain` FA2 vs cuDNN states the
    wgmma / mma.sync finding in the kernel-choice cause."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(SEED / "trace-run", run)
    shutil.copy(CSV, run / "report.raw.csv")
    r = attnprof("explain", run, "--site-a", "seed_case.py:52 via :86", "--site-b", "seed_case.py:34 via :84", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (kernel,) = [c for c in doc["causes"] if c["kind"] == "kernel"]
    assert "gmma 294,912" in kernel["detail"] and "3.1 M mma.sync" in kernel["detail"]


def test_ncu_select_marks_calls_after_warmup(monkeypatch, trace):
    """Under `attnprof ncu` (ATTNPROF_NCU_CALLS=n) the first n calls after the warm-up steps get the `attnprof.ncu`
    range ncu filters on, inside their own range: 3 calls per step, 1 warm-up step, 4 calls -> ids 4..7. The
    user's layout copies from the first selected call until the first call after the last get it too, with their
    source line in domain `attnprof.copy`: the copy of step 2 (before #7); step 1's ran before #4 selected."""
    import torch

    from attnprof.capture import ncu_select, session

    events = []

    class FakeNvtx:
        @staticmethod
        def push_range(message, domain):
            events.append(f"push {domain}:{message}")

        @staticmethod
        def pop_range(domain):
            events.append(f"pop {domain}")

    monkeypatch.setattr(ncu_select, "_nvtx", FakeNvtx)
    monkeypatch.setattr(ncu_select, "_selection", ncu_select._Selection(4))
    monkeypatch.setattr(session, "_nvtx", FakeNvtx)
    r = trace("""
        import torch, torch.nn.functional as F
        q = torch.randn(1, 2, 8, 4)
        for step in range(4):  # a step: one pass through the first of three sites
            x = q.transpose(1, 2).contiguous()
            F.scaled_dot_product_attention(x.transpose(1, 2), q, q)
            F.scaled_dot_product_attention(q, q, q)
            F.scaled_dot_product_attention(q, q, q)
    """, warmup=1, active=0, step_on="iteration")
    assert r.exit_code == 0
    marked = [events[i - 1] for i, e in enumerate(events) if e == "push attnprof.ncu:call"
              and events[i - 1].startswith("push attnprof:")]
    assert [m.rsplit("#", 1)[1] for m in marked] == ["4", "5", "6", "7"]
    copies = [i for i, e in enumerate(events) if e.startswith("push attnprof.copy:")]
    assert len(copies) == 1 and events[copies[0]].startswith("push attnprof.copy:script.py:5 in=")
    assert events[copies[0] - 1] == "push attnprof.ncu:call"
    assert events[copies[0] + 1:copies[0] + 3] == ["pop attnprof.copy", "pop attnprof.ncu"]
    assert events[copies[0] + 3].endswith("#7")  # the next attention call's own range
    assert events.count("push attnprof.ncu:call") == events.count("pop attnprof.ncu") == 5
    assert torch._C._len_torch_function_stack() == 0  # the marks came off the stack


STAND_IN = """#!/usr/bin/env bash
echo "$ATTNPROF_NCU_CALLS $*" >> "$FAKE_LOG"
if [ "$1" = --import ]; then cat "$FAKE_CSV"; exit 0; fi
out=""
while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift 2; break;; *) shift;; esac; done
"$@"; rc=$?
[ -n "$FAKE_NO_REPORT" ] || echo report > "$out.ncu-rep"
exit $rc
"""


def test_ncu_command_with_a_stand_in_ncu(tmp_path):
    """`attnprof ncu` runs `ncu --nvtx --nvtx-include attnprof.ncu@call/ ... python -m attnprof trace --active 0`,
    then `ncu --import ... --csv --page raw`: a stand-in ncu runs the command as given and exports the recorded
    CSV, so the whole flow runs on CPU."""
    fake = tmp_path / "ncu"
    fake.write_text(STAND_IN)
    fake.chmod(0o755)
    log = tmp_path / "argv.txt"
    env = {**os.environ, "FAKE_CSV": str(CSV), "FAKE_LOG": str(log)}
    out = tmp_path / "run"
    r = attnprof("ncu", "--ncu", fake, "--out", out, "--calls", "3", "--warmup", "1", "--cache-control", "all",
                 "--", "examples/seed_case.py", "--steps", "2", env=env)
    assert r.returncode == 0, r.stderr
    profile, export = log.read_text().splitlines()
    assert profile.startswith("3 --nvtx --nvtx-include attnprof.ncu@call/ --clock-control none")
    assert "--section SpeedOfLight" in profile and "sm__inst_executed_pipe_tensor_op_gmma.sum" in profile
    assert "--cache-control all" in profile  # an ncu option of the user's, passed on
    assert "-m attnprof trace --active 0 --quiet --out" in profile and "--warmup 1 --timed 0" in profile
    assert export.split() == ["--import", str(out / "report.ncu-rep"), "--csv", "--page", "raw"]
    assert {"report.ncu-rep", "report.raw.csv", "runinfo.json", "attnprof.json"} <= {p.name for p in out.iterdir()}
    assert "ran 2 steps of seed" in r.stdout and "Nsight Compute counters" in r.stdout
    assert json.loads((out / "attnprof.json").read_text())["kernel_counters"]["sites"]


def test_the_scripts_exit_code_passes_through(tmp_path):
    fake = tmp_path / "ncu"
    fake.write_text(STAND_IN)
    fake.chmod(0o755)
    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('bye')\nsys.exit(3)\n")
    env = {**os.environ, "FAKE_CSV": str(CSV), "FAKE_LOG": str(tmp_path / "argv.txt"), "FAKE_NO_REPORT": "1"}
    r = attnprof("ncu", "--ncu", fake, "--out", tmp_path / "run", "--", script, env=env)
    assert r.returncode == 3 and r.stdout.startswith("bye\n")  # then the run folder, as under attnprof nsys
    assert "ncu profiled no kernel" in r.stderr


def test_missing_ncu_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    r = attnprof("ncu", "--ncu", tmp_path / "nowhere", "--", "examples/seed_case.py", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not an executable" in r.stderr
    from attnprof.capture import nsight

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(tmp_path))
        mp.setattr(nsight, "NCU_SEARCH", (str(tmp_path / "nowhere" / "*" / "ncu"),))
        with pytest.raises(AttnprofError, match="ncu not found on PATH"):
            nsight.find_ncu()
    r = attnprof("ncu", "examples/seed_case.py")
    assert r.returncode == 2 and "needs `--`" in r.stderr


def test_a_csv_that_is_not_ncus_is_one_error(tmp_path):
    bad = tmp_path / "x.raw.csv"
    bad.write_text("a,b\n1,2\n")
    r = attnprof("analyze", bad)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "not Nsight Compute's raw CSV" in r.stderr


def test_attnprof_ncu_on_the_h200_profiled_the_calls_after_warmup():
    """`attnprof ncu --calls 6 --warmup 2` on the H200 (attnprof-ncu/): 2 warm-up steps of 3 calls are skipped,
    calls #7..#12 profiled, one kernel each; an independent run gives the same instruction counts."""
    run = SEED / "attnprof-ncu"
    section = counters_section(load_ncu_csv(run / "report.raw.csv"), read_runinfo(run))
    attention = [k for k in section.kernels if k.copy_site is None]
    assert [(k.call_id, k.site) for k in attention] == [
        (7, FA2_SEED), (8, FA2_NATIVE), (9, CUDNN), (10, FA2_SEED), (11, FA2_NATIVE), (12, CUDNN)]
    by_site = {s.site: s for s in section.sites if s.category == "compute"}
    assert (by_site[CUDNN].gmma_inst, by_site[FA2_NATIVE].mma_sync_inst) == (294_912, 3_145_728)
    full = load_ncu_csv(SEED / "attnprof-ncu-full" / "report.raw.csv")
    assert [k.call_id for k in full.kernels] == [7, 8, 9]
    assert len(full.metrics) > 2 * len(load_ncu_csv(run / "report.raw.csv").metrics)  # --set full: more sections
    assert full.kernels[2].gmma_inst == 294_912 and full.kernels[0].hmma_inst == 3_145_728


def test_the_seed_wrappers_copies_are_profiled_and_tied_to_their_call():
    """The seed wrapper copies q, k, v at lines 44-46 before FA2 and the output at line 48 after it. Marking starts
    at the first selected call (#7), so #7's input copies ran unmarked; its output copy and all four of #10 are
    profiled and tied to those calls; the other sites make none."""
    run = SEED / "attnprof-ncu"
    section = counters_section(load_ncu_csv(run / "report.raw.csv"), read_runinfo(run))
    copies = [(k.call_id, k.copy_site, k.position, k.category) for k in section.kernels if k.copy_site is not None]
    line = "examples/seed_case.py:"
    assert copies == [(7, line + "48", "after", "copy"), (10, line + "44", "before", "copy"),
                      (10, line + "45", "before", "copy"), (10, line + "46", "before", "copy"),
                      (10, line + "48", "after", "copy")]
    assert section.outside_calls == 0
    # each copy moves a (12, 64, 256, 64) fp16 tensor: 25.2 MB read and 25.2 MB written at most; DRAM sees less
    # (the 60 MB L2 keeps part of it), never more
    for k in section.kernels:
        if k.copy_site is not None:
            assert 0 < k.dram_bytes <= 2 * 12 * 64 * 256 * 64 * 2
    # their durations against the profiler's copy kernels of the same wrapper (trace-run/): within 10%
    from attnprof.pipeline import analyze_run

    traced = [k.dur_us for c in analyze_run(SEED / "trace-run").report.calls if c.site == FA2_SEED
              for k in c.kernels if k.category == "copy"]
    assert len(traced) == 8  # 2 profiled calls x 4 copies
    t = statistics.median(traced)
    for k in section.kernels:
        if k.copy_site is not None:
            assert abs(k.duration_us - t) <= 0.10 * t, (k.copy_site, k.duration_us, t)


def test_a_copy_is_tied_to_the_neighbour_nearest_in_the_source():
    """Between FA2 on the wrapper (line 34 via :47) and FA2 native (34 via :84), a copy at line 48 is 1 line from
    the first and 14 from the second: after the first; a copy at line 80 is 4 lines from :84: before the second."""
    from attnprof.analysis.kernel_counters import kernel_counters as counters
    from attnprof.analysis.kernel_counters import tie_copies
    from attnprof.trace.ncu_csv import NcuKernel

    def kernel(i, call_id=None, site=None, copy_site=None):
        return counters(NcuKernel(index=i, name="k", call_id=call_id, op="op" if site else None, site=site, device=0,
                                  stream=7, copy_site=copy_site))

    ks = tie_copies([kernel(0, 1, FA2_SEED), kernel(1, copy_site="examples/seed_case.py:48"),
                     kernel(2, copy_site="examples/seed_case.py:80"), kernel(3, 2, FA2_NATIVE),
                     kernel(4, copy_site="other.py:3")])
    assert [(k.call_id, k.position) for k in ks[1:3]] == [(1, "after"), (2, "before")]
    assert ks[4].call_id is None  # another file: tied to nothing
    # as near to both (line 15 between sites at 10 and 20): an input copy of the next call
    ks = tie_copies([kernel(0, 1, "a.py:10"), kernel(1, copy_site="a.py:15"), kernel(2, 2, "a.py:20")])
    assert (ks[1].call_id, ks[1].position) == (2, "before")


def test_dashboard_speed_of_light_chart(tmp_path):
    """The ncu run folder's dashboard: SM % and DRAM % per kernel, grouped by site, the numbers of the CSV."""
    from attnprof.pipeline import analyze_run, write_dashboard_for
    from attnprof.render.dashboard import read_dashboard_data

    run = analyze_run(SEED)
    path = write_dashboard_for(run.report, tmp_path, call_info=run.call_info)
    figures = read_dashboard_data(path)["figures"]
    assert list(figures) == ["speed-of-light"]  # an ncu run has no timeline: the counters alone
    bars = {t["name"]: t for t in figures["speed-of-light"]["data"]}
    sm, dram = bars["SM throughput"], bars["DRAM throughput"]
    assert [y.split(" · ")[0] for y in sm["y"]] == [FA2_SEED, FA2_NATIVE, CUDNN]
    # medians of the CSV's two calls per site, by hand: SM (39.977180 + 39.642677) / 2, DRAM (46.058466 + 45.290218) / 2
    assert sm["x"][2] == pytest.approx(39.8099285) and dram["x"][2] == pytest.approx(45.674342)
    assert "gmma 294,912" in sm["customdata"][2][5]


def test_an_ncu_report_is_read_through_the_export_beside_it_and_exported_by_capture_when_stale(tmp_path):
    """The trace stage reads an .ncu-rep through the raw CSV beside it; running ncu to make that CSV is capture's,
    passed in by the pipeline: without it a stale export is a one-line error, with it the export is made."""
    from attnprof.trace.load import load_path

    report, csv = tmp_path / "seed.ncu-rep", tmp_path / "seed.raw.csv"
    report.write_bytes(b"not read: the CSV beside it is")
    csv.write_bytes(CSV.read_bytes())
    os.utime(report, (1_000_000, 1_000_000))  # the report older than its export: the export is current
    kernels = len(load_path(report).ncu.kernels)
    assert kernels == len(load_ncu_csv(CSV).kernels) > 0
    os.utime(report, None)
    os.utime(csv, (1_000_000, 1_000_000))  # now the export is older than the report
    with pytest.raises(AttnprofError, match="without its export"):
        load_path(report)
    exported = []

    def export(rep: Path, out: Path) -> Path:
        exported.append((rep, out))
        out.write_bytes(CSV.read_bytes())
        return out

    assert len(load_path(report, export=export).ncu.kernels) == kernels
    assert exported == [(report, csv)]


def test_an_nsight_run_folder_that_cannot_take_a_file_says_so(tmp_path, monkeypatch, capsys):
    """`attnprof ncu` and `attnprof nsys` end the same way (cli/nsight_args.report_run): analyse the folder, write
    attnprof's files, print the table. A file that cannot be written is said on stderr, the others still written."""
    import errno
    import shutil

    from attnprof import pipeline
    from attnprof.cli.nsight_args import report_run

    folder = tmp_path / "run"
    shutil.copytree(SEED / "attnprof-ncu", folder)
    (folder / "attnprof.json").unlink()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "write_dashboard_for", full_disk)
    report_run(folder)
    err = capsys.readouterr().err
    assert f"could not write {folder / 'dashboard.html'}: no space left on the device (run folder kept: {folder})" \
        in err
    assert (folder / "attnprof.json").is_file()
