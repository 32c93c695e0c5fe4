"""Running a script under Nsight Compute, profiling the kernels of a few attention calls after warm-up.

ncu replays each kernel it profiles, so only N calls are: the script runs as `attnprof trace --active 0` (NVTX
ranges and CUDA events, no torch.profiler: ncu and the profiler both use CUPTI) with ATTNPROF_NCU_CALLS=N, which
opens an `attnprof.ncu` range around the first N calls after the warm-up steps (capture/ncu_select.py), and ncu
profiles only kernels inside one. The report lands in the run folder with its raw CSV beside it, so analysis
never needs ncu or its Python module.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from attnprof.capture.ncu_select import ENV_CALLS, NVTX_INCLUDE
from attnprof.capture.nsight import export_csv
from attnprof.errors import AttnprofError
from attnprof.trace.ncu_csv import NCU_CSV_SUFFIX, NCU_REPORT_SUFFIX

REPORT_NAME = "report"
#: What attnprof reads beyond the sections: the tensor-core path (wgmma vs the HMMA pipe, whose count includes
#: wgmma on Hopper), the tensor pipe's utilisation, the DRAM bytes a kernel moved.
METRICS = ("sm__inst_executed_pipe_tensor_op_gmma.sum", "sm__inst_executed_pipe_tensor_op_hmma.sum",
           "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
           "dram__bytes_read.sum", "dram__bytes_write.sum")
#: --set basic: speed of light, occupancy and launch statistics (a dozen replay passes per kernel); full: ncu's
#: full set (source counters, memory tables, warp stalls: several times slower).
SETS = {
    "basic": ["--section", "SpeedOfLight", "--section", "Occupancy", "--section", "LaunchStats"],
    "full": ["--set", "full"],
}


def ncu_command(ncu: str, set_name: str, report: Path, trace_argv: list[str], ncu_options: list[str]) -> list[str]:
    return [ncu, "--nvtx", "--nvtx-include", NVTX_INCLUDE, "--clock-control", "none", *SETS[set_name],
            "--metrics", ",".join(METRICS), *ncu_options, "-f", "-o", str(report),
            sys.executable, "-m", "attnprof", "trace", "--active", "0", "--quiet", *trace_argv]


def run_under_ncu(ncu: str, set_name: str, calls: int, trace_argv: list[str], folder: Path,
                  ncu_options: list[str] | None = None) -> tuple[int, bool]:
    """Run `attnprof trace --active 0 --out <folder> <trace_argv>` under ncu, keep <folder>/report.ncu-rep and
    export <folder>/report.raw.csv. Returns the script's exit code (ncu passes it through) and whether ncu wrote a
    report (it writes none when it profiled no kernel)."""
    if importlib.util.find_spec("nvtx") is None:
        raise AttnprofError("attnprof ncu needs the nvtx package (pip install nvtx): ncu selects calls by its ranges")
    with tempfile.TemporaryDirectory(prefix="attnprof-ncu-") as tmp:
        report = Path(tmp) / REPORT_NAME
        cmd = ncu_command(ncu, set_name, report, ["--out", str(folder), *trace_argv], list(ncu_options or []))
        print(f"attnprof: {' '.join(cmd)}", file=sys.stderr)
        env = {**os.environ, ENV_CALLS: str(calls)}
        try:
            proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True, env=env)
        except OSError as e:
            raise AttnprofError(f"could not run {ncu}: {e.strerror or e}") from None
        sys.stderr.write(proc.stderr)
        rep = report.with_suffix(NCU_REPORT_SUFFIX)
        if not rep.is_file():
            return proc.returncode, False
        folder.mkdir(parents=True, exist_ok=True)
        kept = folder / (REPORT_NAME + NCU_REPORT_SUFFIX)
        shutil.move(str(rep), kept)
        export_csv(ncu, kept, folder / (REPORT_NAME + NCU_CSV_SUFFIX))
        return proc.returncode, True
