"""Open what the user points at: a run folder, a torch.profiler trace, (later) an Nsight Systems export."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgspec

from attnprof.errors import AttnprofError
from attnprof.files import read_bytes
from attnprof.trace.model import Trace
from attnprof.trace.ncu_csv import (
    NCU_REPORT_SUFFIX, NcuReport, csv_for_report, is_ncu_csv, load_ncu_csv, ncu_data_in,
)
from attnprof.trace.runinfo import RunInfo, read_runinfo
from attnprof.trace.nsys_sqlite import export_sqlite, find_nsys, load_nsys_sqlite
from attnprof.trace.torch_json import load_torch_trace

TRACE_SUFFIXES = (".pt.trace.json", ".pt.trace.json.gz")
NSYS_SUFFIXES = (".sqlite", ".sqlite.gz")
#: Files attnprof writes next to the original trace; never inputs.
DERIVED_MARK = ".attnprof."


@dataclass
class LoadedRun:
    source: str
    traces: list[Trace]
    runinfo: RunInfo | None
    folder: Path | None  # the run folder, when one was given
    ncu: NcuReport | None = None  # Nsight Compute's counters (`attnprof ncu`'s report.raw.csv), when there


def trace_files_in(folder: Path) -> list[Path]:
    """The traces of a run folder: torch.profiler's, or the Nsight Systems export `attnprof nsys` leaves."""
    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.name.endswith(TRACE_SUFFIXES + NSYS_SUFFIXES) and DERIVED_MARK not in p.name]
    if not files:  # any JSON trace will do in a folder that is not a run folder
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name.endswith((".json", ".json.gz"))
                 and p.name not in ("runinfo.json", "attnprof.json") and DERIVED_MARK not in p.name]
    return files


def load_path(path: Path) -> LoadedRun:
    path = Path(path)
    if not path.exists():
        raise AttnprofError(f"{path}: no such file or folder")
    if path.is_dir():
        try:
            runinfo = read_runinfo(path)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise AttnprofError(f"{path}/runinfo.json is damaged ({e})") from None
        files = trace_files_in(path)
        ncu_csv = ncu_data_in(path)
        ncu = load_ncu_csv(ncu_csv) if ncu_csv else None
        if not files and ncu is not None:  # an `attnprof ncu` run: counters, no timeline
            return LoadedRun(source=str(path), traces=[], runinfo=runinfo, folder=path, ncu=ncu)
        if not files:
            if runinfo and runinfo.note:
                raise AttnprofError(f"{path} holds no trace: {runinfo.note}")
            raise AttnprofError(f"{path} holds no torch.profiler trace (*.pt.trace.json[.gz])")
        return LoadedRun(source=str(path), traces=[load_trace(f) for f in files], runinfo=runinfo, folder=path,
                         ncu=ncu)
    if path.suffix == NCU_REPORT_SUFFIX:
        path = csv_for_report(path)
    if is_ncu_csv(path):  # the CSV alone: its folder's runinfo.json, if any, names the phases
        try:
            runinfo = read_runinfo(path.parent)
        except (msgspec.DecodeError, msgspec.ValidationError):
            runinfo = None
        return LoadedRun(source=str(path), traces=[], runinfo=runinfo, folder=None, ncu=load_ncu_csv(path))
    return LoadedRun(source=str(path), traces=[load_trace(path)], runinfo=None, folder=None)


def load_trace(path: Path) -> Trace:
    """A torch.profiler trace (.json / .json.gz) or an Nsight Systems SQLite export, told apart by content."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise AttnprofError(f"cannot read {path}: {e.strerror or e}") from None
    if head.startswith(b"SQLite format 3"):
        return load_nsys_sqlite(path)
    if head.startswith(b"\x1f\x8b") and Path(path).name.endswith(".sqlite.gz"):
        return _load_gzipped_sqlite(Path(path))
    if Path(path).suffix == ".nsys-rep":
        return load_nsys_sqlite(_exported(Path(path)))
    return load_torch_trace(path)


def _load_gzipped_sqlite(path: Path) -> Trace:
    """A gzipped Nsight export (how small fixtures are kept): SQLite needs a file, so unpack to a temporary one."""
    with tempfile.TemporaryDirectory(prefix="attnprof-") as tmp:
        plain = Path(tmp) / path.name.removesuffix(".gz")
        plain.write_bytes(read_bytes(path))
        trace = load_nsys_sqlite(plain)
    trace.source = str(path)
    return trace


def _exported(report: Path) -> Path:
    """The SQLite export next to an .nsys-rep, made with nsys if it is not there yet."""
    out = report.with_suffix(".sqlite")
    if not out.is_file() or out.stat().st_mtime < report.stat().st_mtime:
        export_sqlite(find_nsys(), report, out)
    return out
