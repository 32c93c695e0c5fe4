"""Run folders for the diagnosis and dashboard tests: the CPU seed runs made once per test session (in a
subprocess, so torch stays out of the test process), and the H100 reference runs under traces/h100/ when there."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H100_TRACES = REPO / "traces" / "h100"
VARIANTS = ("seed", "native", "sdpa", "all")


def seed_runs(base: Path, backward: bool = False) -> dict[str, Path]:
    """{variant: run folder} of examples/seed_case.py on CPU: seed, native, sdpa, and all three in one run."""
    root = Path(base) / ("seed-runs-train" if backward else "seed-runs")
    done = root / ".done"
    if not done.exists():  # another test module of this session may have made them already
        cmd = [sys.executable, str(REPO / "tests" / "make_seed_runs.py"), str(root)]
        subprocess.run(cmd + (["--backward"] if backward else []), check=True, capture_output=True, timeout=300)
        done.touch()
    suffix = "-train" if backward else ""
    return {v: root / f"seed_case-{v}{suffix}" for v in VARIANTS}


def h100_run_folders() -> list[Path]:
    """Run folders recorded on the H100 (traces/h100/), if any."""
    if not H100_TRACES.is_dir():
        return []
    from attnprof.gallery import run_folders

    return run_folders(H100_TRACES)
