"""How fast is the cross-rank analysis of a job's traces, and how much memory does it take?

Builds one large torch.profiler trace by replicating a recorded one (benchmarks/scale_analyze.py's `build`), writes
it again for every rank with that rank in its `distributedInfo`, then times `attnprof analyze <folder> --json` in a
fresh process: wall time, and peak RSS of the whole process tree (attnprof and its worker processes together,
sampled from /proc every 20 ms), the figure that has to fit in the machine's memory.

    python benchmarks/scale_ranks.py --ranks 8 --size-mb 100
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_analyze import DEFAULT_SOURCE, build  # noqa: E402

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _tree_rss_mb(root: int) -> float:
    """Resident MB of `root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * _PAGE_MB
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def timed_tree(cmd: list[str]) -> tuple[float, float, int]:
    """(wall s, peak RSS MB of the process tree, exit code)."""
    peak = [0.0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if err.strip():
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return wall, peak[0], proc.returncode


def write_ranks(trace: Path, folder: Path, ranks: int) -> list[Path]:
    """The trace once per rank, its header's distributedInfo naming that rank (the events are the same)."""
    with open(trace, "rb") as f:  # build() writes the header on line 1 and `"traceEvents": [` on line 2
        header_line = f.readline()
        f.readline()
        body_at = f.tell()
    header = json.loads(header_line.decode().rstrip().rstrip(",") + "}")
    out = []
    for rank in range(ranks):
        header["distributedInfo"] = {"backend": "nccl", "rank": rank, "world_size": ranks}
        path = folder / f"rank{rank}_bench_{1000 + rank}.pt.trace.json"
        with open(path, "wb") as dst, open(trace, "rb") as src:
            dst.write((json.dumps(header)[:-1] + ',\n  "traceEvents": [\n').encode())
            src.seek(body_at)
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        out.append(path)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="recorded trace (file or run folder)")
    p.add_argument("--size-mb", type=float, default=100.0, help="size of each rank's trace")
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2, help="runs; the best is reported")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.pt.trace.json"
        copies, n = build(args.source, one, args.size_mb)
        folder = Path(tmp) / "job"
        folder.mkdir()
        files = write_ranks(one, folder, args.ranks)
        one.unlink()
        size = sum(f.stat().st_size for f in files) / 1e6
        print(f"built {len(files)} rank traces of {files[0].stat().st_size / 1e6:.1f} MB ({size:.0f} MB, "
              f"{n:,} events each, {copies} copies of {args.source.name}); {os.cpu_count()} cores")
        cmd = [sys.executable, "-m", "attnprof", "analyze", str(folder), "--json"]
        runs = [timed_tree(cmd) for _ in range(args.repeat)]
        print(f"{'attnprof analyze <job> --json':<32} {'wall s':>8} {'peak RSS MB (tree)':>20} {'exit':>5}")
        for wall, rss, rc in runs:
            print(f"{'':<32} {wall:>8.2f} {rss:>20.0f} {rc:>5}")
        print(f"best: {min(r[0] for r in runs):.2f} s, {min(r[1] for r in runs):.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
