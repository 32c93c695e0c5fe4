"""Run folders for the diagnosis and dashboard tests: examples/seed_case.py traced on CPU by `attnprof trace`
itself (the real capture path, in a subprocess so torch stays out of the test process), made once per test
session; and the H100 reference runs under traces/h100/ when there."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H100_TRACES = REPO / "traces" / "h100"
VARIANTS = ("seed", "native", "sdpa", "all")
#: small enough for a busy 2-core machine, large enough that the seed's four copies stand out of the noise
SHAPE = "32,8,32,64"
WINDOW = ["--warmup", "2", "--timed", "7", "--active", "3"]
STEPS = "16"  # 2 warm-up + 7 timed + 3 profiled + the timing after the window


def seed_runs(base: Path, backward: bool = False) -> dict[str, Path]:
    """{variant: run folder} of `attnprof trace examples/seed_case.py --variant V` on CPU (all: the three in one)."""
    root = Path(base) / ("seed-runs-train" if backward else "seed-runs")
    suffix = "-train" if backward else ""
    folders = {v: root / f"seed_case-{v}{suffix}" for v in VARIANTS}
    done = root / ".done"
    if not done.exists():  # another test module of this session may have made them already
        # one intra-op thread: threads spin against each other on a busy test machine
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        for variant, folder in folders.items():
            cmd = [sys.executable, "-m", "attnprof", "trace", "--out", str(folder), *WINDOW, "--quiet",
                   "examples/seed_case.py", "--variant", variant, "--shape", SHAPE, "--steps", STEPS]
            subprocess.run(cmd + (["--backward"] if backward else []), check=True, capture_output=True, cwd=REPO,
                           env=env, timeout=300)
        done.touch()
    return folders


def bare_trace(folder: Path) -> Path:
    """The run's torch.profiler trace (`<host>_<pid>.pt.trace.json.gz`), not attnprof's overlay beside it."""
    (trace,) = [p for p in folder.glob("*.pt.trace.json.gz") if ".attnprof." not in p.name]
    return trace


def h100_run_folders() -> list[Path]:
    """Run folders recorded on the H100 (traces/h100/), if any."""
    if not H100_TRACES.is_dir():
        return []
    from attnprof.gallery import run_folders

    return run_folders(H100_TRACES)
