"""Running a script under Nsight Systems with attnprof's NVTX ranges, and exporting what nsys recorded.

nsys and torch.profiler both use CUPTI and cannot trace one process together, so under nsys the script runs as
`attnprof trace --active 0`: every attention call wrapped in its NVTX range (domain `attnprof`) and timed with CUDA
events, no torch.profiler. PyTorch's own NVTX ranges (`--pytorch=autograd-shapes-nvtx`) name the aten ops, so
the layout copies around each call are found in the Nsight data as in a profiler trace.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from attnprof.capture.nsight import export_sqlite
from attnprof.errors import AttnprofError

#: Defaults that work (GPU.md): CPU sampling and context-switch tracing off (with them a 5-call script ran past
#: 120 s into a 2.2 GB report); PyTorch's op ranges with their shapes on.
DEFAULT_OPTIONS = {
    "-t": "cuda,nvtx",
    "-s": "none",
    "--cpuctxsw": "none",
    "--pytorch": "autograd-shapes-nvtx",
}


def profile_options(user_options: list[str]) -> list[str]:
    """The defaults, each unless the user gave that option, then the user's options as given."""
    given = {o.split("=", 1)[0] for o in user_options if o.startswith("-")}
    aliases = {"-t": "--trace", "-s": "--sample"}
    out = []
    for flag, value in DEFAULT_OPTIONS.items():
        if flag in given or aliases.get(flag) in given:
            continue
        out += [f"{flag}={value}"] if flag.startswith("--") else [flag, value]
    return out + list(user_options)


def run_under_nsys(nsys: str, nsys_options: list[str], trace_argv: list[str], folder: Path) -> int:
    """Run `attnprof trace --active 0 --out <folder> <trace_argv>` under `nsys profile`, then export the report to
    <folder>/report.sqlite. Returns the script's exit code (nsys passes it through)."""
    with tempfile.TemporaryDirectory(prefix="attnprof-nsys-") as tmp:
        report = Path(tmp) / "report"
        cmd = [nsys, "profile", *profile_options(nsys_options), "--force-overwrite=true", "-o", str(report),
               sys.executable, "-m", "attnprof", "trace", "--active", "0", "--quiet", "--out", str(folder),
               *trace_argv]
        print(f"attnprof: {' '.join(cmd)}", file=sys.stderr)
        try:
            proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
        except OSError as e:
            raise AttnprofError(f"could not run {nsys}: {e.strerror or e}") from None
        sys.stderr.write(proc.stderr)
        rep = report.with_suffix(".nsys-rep")
        if not rep.is_file():
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])
            raise AttnprofError(f"nsys wrote no report ({tail or 'no output'}); a lone .qdstrm usually means "
                                f"nsys lacks libdw.so.1 (see Nsight Systems' requirements)")
        folder.mkdir(parents=True, exist_ok=True)
        kept = folder / "report.nsys-rep"
        shutil.move(str(rep), kept)
        export_sqlite(nsys, kept, folder / "report.sqlite")
        return proc.returncode
