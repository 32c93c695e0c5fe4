"""A folder of several ranks' traces, analysed as one job: each rank's traces in a process of its own, then the
cross-rank summary (analysis/ranks.py).

A folder is a job when it holds `runinfo.rank<N>.json` files (`attnprof trace` under torchrun), or two or more
torch.profiler traces whose `distributedInfo` names different ranks (any DDP / FSDP run recorded with
`tensorboard_trace_handler`). Memory stays bounded: at most one trace per core is in memory at once, each worker
process handles one rank and exits (returning its memory), and only the small per-rank results come back.
"""
from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from attnprof.analysis import analyze
from attnprof.analysis.ranks import RankFacts, rank_facts, summarize_ranks
from attnprof.analysis.records import Report
from attnprof.errors import AttnprofError
from attnprof.trace.load import load_trace, trace_files_in
from attnprof.trace.runinfo import RunInfo, read_rank_runinfos

#: How far into a trace file its `distributedInfo` is looked for (Kineto writes it before the events).
_HEAD_BYTES = 1 << 18
#: Peak resident bytes of a worker per byte of (uncompressed) trace JSON: 450 MB for a 100 MB trace, measured with
#: benchmarks/scale_analyze.py; with the memory the machine has free, it caps how many workers run at once.
_PEAK_PER_TRACE_BYTE = 4.5


@dataclass
class RankInput:
    rank: int
    files: list[Path]
    runinfo: RunInfo | None


def distributed_rank(path: Path) -> int | None:
    """The rank a torch.profiler trace's `distributedInfo` records, read from the file's head; None if absent."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
            head = stream.read(_HEAD_BYTES).decode("utf-8", "replace")
    except (OSError, EOFError):
        return None
    at = head.find('"distributedInfo"')
    if at < 0:
        return None
    brace = head.find("{", at)
    try:
        info, _ = json.JSONDecoder().raw_decode(head, brace)
    except ValueError:
        return None
    rank = info.get("rank") if isinstance(info, dict) else None
    return rank if isinstance(rank, int) else None


def rank_inputs(folder: Path) -> list[RankInput] | None:
    """The ranks of a job folder with their trace files and runinfo, lowest rank first; None if it is not a job."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    try:
        runinfos = read_rank_runinfos(folder)
    except ValueError as e:  # msgspec's decode and validation errors
        raise AttnprofError(f"a runinfo.rank<N>.json in {folder} is damaged ({e})") from None
    if runinfos:  # ranks that recorded no trace stay in the list (files empty), for the report's notes
        out = [RankInput(rank, [folder / n for n in info.trace_files if (folder / n).is_file()], info)
               for rank, info in sorted(runinfos.items())]
        return out if any(item.files for item in out) else None
    files = trace_files_in(folder)
    if len(files) < 2:
        return None
    by_rank: dict[int, list[Path]] = {}
    for f in files:
        rank = distributed_rank(f)
        if rank is None:
            return None  # not every trace knows its rank: one process's traces, analysed as today
        by_rank.setdefault(rank, []).append(f)
    if len(by_rank) < 2:
        return None
    return [RankInput(rank, fs, None) for rank, fs in sorted(by_rank.items())]


def analyze_rank(item: RankInput, source: str) -> RankFacts:
    """One rank: load its traces, analyse them with its runinfo, and keep what the cross-rank summary needs."""
    traces = [load_trace(f) for f in item.files]
    report = analyze(traces, item.runinfo, source)
    profiled = item.runinfo.steps.profiled if item.runinfo else []
    steps = profiled[1] - profiled[0] + 1 if len(profiled) == 2 else None
    return rank_facts(item.rank, traces, report, steps)


def analyze_ranks(inputs: list[RankInput], source: str, workers: int | None = None) -> list[RankFacts]:
    """Every rank that has traces, `workers` (default: the machine's cores) at a time, each in a fresh process."""
    inputs = [item for item in inputs if item.files]
    workers = max(1, min(len(inputs), workers or os.cpu_count() or 1, _workers_that_fit(inputs)))
    if workers == 1:
        return [analyze_rank(item, source) for item in inputs]
    # forkserver: workers start from a small server process, not from the caller (which may hold torch and its
    # threads under `attnprof trace`); one task per worker so each trace's memory goes back when it is done.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["attnprof.multirank"])
    if sys.version_info >= (3, 11):
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1)
    else:  # Python 3.10 has no max_tasks_per_child: there a worker keeps its heap from one trace to the next
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    with pool:
        return list(pool.map(analyze_rank, inputs, [source] * len(inputs)))


def _json_bytes(path: Path) -> int:
    """A trace's JSON size: gzip records it (mod 4 GiB) in its last four bytes."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return path.stat().st_size
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return 0


def _workers_that_fit(inputs: list[RankInput]) -> int:
    """How many ranks can be in memory at once, from MemAvailable (Linux); no limit where it is unknown."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return len(inputs)
    largest = max(sum(_json_bytes(p) for p in item.files) for item in inputs) * _PEAK_PER_TRACE_BYTE
    return max(1, int(available // largest)) if largest > 0 else len(inputs)


def job_report(facts: list[RankFacts], source: str, inputs: Sequence[RankInput] = ()) -> Report:
    """The job's Report: the lowest rank's calls and sites, with every rank in `ranks`; `inputs` (rank_inputs) adds
    a note for each rank that left no trace."""
    facts = sorted(facts, key=lambda f: f.rank)
    report = facts[0].report
    report.source = source
    report.ranks = summarize_ranks(facts)
    report.notes.append(f"{len(facts)} ranks ({', '.join(str(f.rank) for f in facts)}): calls and sites are rank "
                        f"{facts[0].rank}'s, `ranks` compares every rank")
    for item in inputs:
        if not item.files:
            why = item.runinfo.note if item.runinfo and item.runinfo.note else "no trace"
            report.notes.append(f"rank {item.rank} left out: {why}")
    return report
