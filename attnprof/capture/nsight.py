"""The Nsight binaries: finding `nsys` and `ncu`, and exporting what they recorded into files the trace stage reads
(`nsys export` -> SQLite, `ncu --import` -> the raw CSV).

Imports nothing heavy (no torch): the pipeline hands `export_report` to the loader, which calls it when it is given
an Nsight report that was never exported, on a machine that has only attnprof's analysis.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from attnprof.errors import AttnprofError
from attnprof.files import atomic_write, find_executable
from attnprof.trace.ncu_csv import NCU_REPORT_SUFFIX

#: Where Nsight Systems installs its binary when it is not on PATH.
NSYS_SEARCH = (
    "/opt/nvidia/nsight-systems/*/bin/nsys",
    "/opt/nvidia/nsight-systems-cli/*/bin/nsys",
    "/usr/local/cuda*/bin/nsys",
    "/usr/local/cuda*/nsight-systems-*/bin/nsys",
    "/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys",
)
#: Where ncu lives when it is not on PATH (CUDA toolkit, standalone Nsight Compute installs).
NCU_SEARCH = ("/usr/local/cuda/bin/ncu", "/usr/local/cuda-*/bin/ncu", "/opt/nvidia/nsight-compute/*/ncu")


def find_nsys(explicit: str | None = None) -> str:
    return find_executable("nsys", NSYS_SEARCH, "Nsight Systems / CUDA", explicit)


def find_ncu(explicit: str | None = None) -> str:
    return find_executable("ncu", NCU_SEARCH, "Nsight Compute / CUDA", explicit)


def export_sqlite(nsys: str, report: Path, out: Path) -> Path:
    """`nsys export --type sqlite`: the report as the SQLite file trace/nsys_sqlite.py reads."""
    cmd = [nsys, "export", "--type", "sqlite", "--force-overwrite=true", "-o", str(out), str(report)]
    proc = _run(cmd, nsys)
    if proc.returncode != 0 or not out.is_file():
        raise AttnprofError(f"nsys export failed for {report}: {_tail(proc) or 'no output'}")
    return out


def export_csv(ncu: str, report: Path, out: Path) -> Path:
    """`ncu --import report --csv --page raw > out`: every metric of every kernel, readable without ncu."""
    proc = _run([ncu, "--import", str(report), "--csv", "--page", "raw"], ncu)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AttnprofError(f"ncu --import failed for {report}: {_tail(proc) or 'no output'}")
    return atomic_write(out, proc.stdout)


def export_report(report: Path, out: Path) -> Path:
    """Export an Nsight report into `out` with the tool that recorded it: an .nsys-rep as SQLite (nsys), an
    .ncu-rep as the raw CSV (ncu). What trace/load.py calls (through the pipeline) when a report's export is missing
    or older than it."""
    if report.suffix == NCU_REPORT_SUFFIX:
        return export_csv(find_ncu(), report, out)
    return export_sqlite(find_nsys(), report, out)


def _run(cmd: list[str], binary: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise AttnprofError(f"could not run {binary}: {e.strerror or e}") from None


def _tail(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
