"""Real CPU traces for tests: the seed case (examples/seed_case.py) run under torch.profiler in a subprocess.

A subprocess keeps torch out of the test process (analysis and render must work without it) and names the trace
as attnprof does, `<worker>.pt.trace.json.gz` in a run folder.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H100_TRACES = REPO / "traces" / "h100"

_PROFILE_SEED_CASE = """
import sys
sys.path.insert(0, {examples!r})
from torch.profiler import ProfilerActivity, profile
import seed_case
with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
    seed_case.main({argv!r})
prof.export_chrome_trace({out!r})
"""


def profile_seed_case(folder: Path, argv: list[str], worker: str = "testhost_1") -> Path:
    """Run the seed case with `argv` under torch.profiler; returns `folder/<worker>.pt.trace.json.gz`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{worker}.pt.trace.json.gz"  # torch gzips when the name ends in .gz
    script = _PROFILE_SEED_CASE.format(examples=str(REPO / "examples"), argv=argv, out=str(out))
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    return out


def h100_trace_files() -> list[Path]:
    """The recorded H100 traces (traces/h100/), if any: originals only, never attnprof's derived files."""
    if not H100_TRACES.is_dir():
        return []
    return sorted(p for p in H100_TRACES.rglob("*.pt.trace.json*")
                  if p.name.endswith((".pt.trace.json", ".pt.trace.json.gz")) and ".attnprof." not in p.name)
