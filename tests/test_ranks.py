"""attnprof on a torchrun job (2 ranks, gloo on CPU): both launch forms, the planted straggler, FSDP, and traces
that torch.profiler's tensorboard_trace_handler wrote (not attnprof) analysed into the same cross-rank report.

The case is examples/ddp_ranks.py: two transformer blocks (or Hugging Face GPT-2 from a config) under DDP or FSDP2;
--straggler R --sleep-ms T makes rank R sleep T ms inside every attention call's window; --overlap runs an
asynchronous all-reduce across the first block's attention call in every step.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from attnprof.multirank import distributed_rank
from attnprof.pipeline import analyze_path
from attnprof.render.dashboard import read_dashboard_data
from attnprof.trace.runinfo import read_rank_runinfos

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "examples" / "ddp_ranks.py"
SLEEP_MS = 60.0
# CPU time on a shared 2-core machine: the two ranks share the cores with each other and with whatever else runs,
# so one call can lose a few ms to the scheduler on either rank
TOLERANCE_MS = 15.0
# a sleep never ends early but oversleeps on a loaded machine (83 ms for 60 seen at load 14): more room above
OVERSLEEP_MS = 40.0

TB_WORKERS = """
import json, sys
from torch_tb_profiler import io
from torch_tb_profiler.profiler.loader import RunLoader
if __name__ == "__main__":
    print(json.dumps(sorted(worker for worker, _ in RunLoader("job", sys.argv[1], io.Cache()).load().profiles)))
"""

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_INET"), reason="torchrun needs TCP")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "240"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(_free_port()), *args]


def _one_folder(root: Path) -> Path:
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders  # one run folder for the job, not one per rank
    return folders[0]


def _line(text: str) -> int:
    """The line of the case that holds `text`."""
    return next(i for i, line in enumerate(CASE.read_text().splitlines(), 1) if text in line)


def _sites(summary: dict) -> dict[str, dict]:
    return {s["phase"]: s for s in summary["sites"]}


def test_torchrun_runs_attnprof_in_every_rank_and_names_the_straggler(tmp_path):
    """`torchrun -m attnprof trace`: one folder, a trace and a runinfo per rank, the same step profiled on both,
    and rank 1, which sleeps SLEEP_MS inside every attention window, named with about that many extra µs."""
    proc = _run(_torchrun("-m", "attnprof", "trace", "--warmup", "1", "--timed", "0", "--active", "1",
                          "--root", "traces", str(CASE), "--steps", "2", "--straggler", "1",
                          "--sleep-ms", str(SLEEP_MS)), tmp_path)
    assert proc.stdout.count("trained 2 steps on 2 ranks") == 1  # the script's own output, rank 0's
    folder = _one_folder(tmp_path / "traces")
    traces = sorted(p.name for p in folder.glob("rank*.pt.trace.json.gz") if ".attnprof." not in p.name)
    assert [t.split("_")[0] for t in traces] == ["rank0", "rank1"]
    assert [distributed_rank(folder / t) for t in traces] == [0, 1]  # torch's own distributedInfo agrees
    infos = read_rank_runinfos(folder)
    assert sorted(infos) == [0, 1]
    assert [(i.rank, i.world_size) for i in infos.values()] == [(0, 2), (1, 2)]
    assert infos[0].steps.profiled == infos[1].steps.profiled == [1, 1]  # the same optimizer step on both
    assert infos[0].pid != infos[1].pid
    doc = json.loads((folder / "attnprof.json").read_text())
    ranks = doc["ranks"]
    assert ranks["world_size"] == 2 and [r["rank"] for r in ranks["ranks"]] == [0, 1]
    sites = _sites(ranks)
    assert set(sites) == {"fwd", "bwd"}
    for s in sites.values():  # two blocks, one profiled step: two calls of the site per rank and phase
        assert [(r["rank"], r["calls"]) for r in s["per_rank"]] == [(0, 2), (1, 2)]
    fwd = sites["fwd"]
    assert fwd["site"].endswith(f"ddp_ranks.py:{_line('F.scaled_dot_product_attention(')} via "
                                f":{_line('loss_of = lambda m: m(batch)')}")
    assert fwd["straggler_rank"] == 1
    assert (SLEEP_MS - TOLERANCE_MS) * 1e3 < fwd["straggler_extra_us"] < (SLEEP_MS + OVERSLEEP_MS) * 1e3, \
        fwd["straggler_extra_us"]
    # rank 0 waits in the all-reduce for rank 1: rank 1 is on the critical path, two sleeps more attention a step
    cp = ranks["critical_path"]
    assert cp["slowest_rank"] == 1
    assert 2 * (SLEEP_MS - TOLERANCE_MS) * 1e3 < cp["attention_extra_us"] < 2 * (SLEEP_MS + OVERSLEEP_MS) * 1e3, \
        cp["attention_extra_us"]
    assert "across 2 ranks" in proc.stdout and "rank 1 +" in proc.stdout
    for rank, name in enumerate(traces):  # each rank's Perfetto overlay holds its own calls: rank 1's slept
        overlay = json.loads(gzip.decompress((folder / name.replace(".pt.", ".attnprof.pt.")).read_bytes()))
        windows = [e["dur"] for e in overlay["traceEvents"] if e.get("name") == "sdpa → cpu-flash fwd"]
        assert len(windows) == 2
        assert all((w >= SLEEP_MS * 1e3) == (rank == 1) for w in windows), (rank, windows)
    # torch-tb-profiler's own loader: every rank a worker (and its overlay), and its distributed view ("All")
    loader = tmp_path / "tb_workers.py"
    loader.write_text(TB_WORKERS)
    workers = json.loads(_run([sys.executable, str(loader), str(folder)], tmp_path).stdout.splitlines()[-1])
    assert sorted(workers) == sorted(["All", *(t.split(".")[0] for t in traces),
                                      *(t.split(".")[0] + ".attnprof" for t in traces)])
    # a rank whose trace is missing (killed before its window closed): left out, and said so
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    (partial / traces[1]).unlink()
    report = analyze_path(partial)
    assert [r.rank for r in report.ranks.ranks] == [0] and "rank 1 left out: no trace" in report.notes
    panels = read_dashboard_data(folder / "dashboard.html")["figures"]
    heat = panels["ranks-heatmap"]["data"][0]
    assert heat["x"] == ["rank 0", "rank 1"] and len(heat["z"]) == 2  # sites x ranks
    assert "ranks-split" in panels


def test_attnprof_starts_torchrun_for_fsdp_gpt2(tmp_path):
    """`attnprof trace --nproc-per-node 2 --master-port P`: attnprof starts torchrun (options passed through);
    Hugging Face GPT-2 (2 layers, sdpa) under FSDP2 on CPU: 2 calls per rank and phase in the one profiled step."""
    proc = _run([sys.executable, "-m", "attnprof", "trace", "--nproc-per-node", "2", "--master-port",
                 str(_free_port()), "--warmup", "1", "--timed", "0", "--active", "1", "--root", "traces", str(CASE),
                 "--model", "gpt2", "--fsdp", "--steps", "2"], tmp_path)
    assert proc.stdout.count("trained 2 steps on 2 ranks") == 1
    folder = _one_folder(tmp_path / "traces")
    assert sorted(read_rank_runinfos(folder)) == [0, 1]
    ranks = json.loads((folder / "attnprof.json").read_text())["ranks"]
    sites = _sites(ranks)
    assert set(sites) == {"fwd", "bwd"}
    for s in sites.values():
        assert "modeling_gpt2.py" in s["site"]
        assert [(r["rank"], r["calls"]) for r in s["per_rank"]] == [(0, 2), (1, 2)]


def test_tensorboard_trace_handler_traces_give_the_cross_rank_report(tmp_path):
    """Traces from a DDP run profiled with torch.profiler's tensorboard_trace_handler (no attnprof): the ranks come
    from distributedInfo, the steps from ProfilerStep, and the planted all-reduce is found inside exactly the first
    block's forward calls."""
    _run(_torchrun(str(CASE), "--overlap", "--tb", "tb"), tmp_path)
    files = sorted((tmp_path / "tb").glob("*.pt.trace.json"))
    assert len(files) == 2 and sorted(distributed_rank(f) for f in files) == [0, 1]
    report = analyze_path(tmp_path / "tb")
    ranks = report.ranks
    assert ranks is not None and [r.rank for r in ranks.ranks] == [0, 1]
    assert [r.steps for r in ranks.ranks] == [2, 2]  # the schedule's two active steps
    assert [r.step_basis for r in ranks.ranks] == ["ProfilerStep", "ProfilerStep"]
    for s in ranks.sites:  # two blocks x two steps
        assert [(r.rank, r.calls) for r in s.per_rank] == [(0, 4), (1, 4)]
    fwd = [o for o in ranks.overlaps if o.phase == "fwd"]
    assert len(fwd) == 1
    o = fwd[0]
    # block 0's call in each of 2 steps on each of 2 ranks, and not block 1's
    assert (o.overlapped_calls, o.clear_calls) == (4, 4)
    assert "gloo:all_reduce" in o.collectives and o.slowdown_us is not None
    site = next(s for s in ranks.sites if s.phase == "fwd")
    for r in site.per_rank:  # per rank: block 0 in both steps; a call's overlap lies inside its window
        assert r.overlapped_calls == 2 and 0 < r.overlap_us <= r.window_us
    cli = _run([sys.executable, "-m", "attnprof", "analyze", "tb"], tmp_path)
    assert "across 2 ranks" in cli.stdout and "collective overlap" in cli.stdout


def test_torchrun_options_need_nproc_per_node(tmp_path):
    """A torchrun option alone is a one-line error (exit 2), before anything runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "attnprof", "trace", "--master-port", "29999", str(CASE)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "attnprof: error: --master-port is a torchrun option: give --nproc-per-node too (or run torchrun yourself)"]
    assert not (tmp_path / "traces").exists()


def test_other_launchers_get_a_folder_per_rank_without_waiting(tmp_path):
    """RANK / WORLD_SIZE / MASTER_PORT set by a launcher that is not torchrun: MASTER_PORT is the script's own
    process group, which does not exist before the script runs, so attnprof must not wait for a store there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env.pop("TORCHELASTIC_RUN_ID", None)
    proc = subprocess.run([sys.executable, "-m", "attnprof", "trace", "--warmup", "0", "--timed", "0", "--active",
                           "1", "--root", "traces", str(CASE), "--steps", "1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = _one_folder(tmp_path / "traces")
    assert folder.name.startswith("ddp_ranks-rank0-")
    assert [(i.rank, i.world_size) for i in read_rank_runinfos(folder).values()] == [(0, 1)]
    assert json.loads((folder / "attnprof.json").read_text())["ranks"]["world_size"] == 1
