"""Open what the user points at: a run folder, a torch.profiler trace, (later) an Nsight Systems export."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from attnprof.errors import AttnprofError
from attnprof.files import DEFAULT_MAX_INPUT_MB, is_regular_file, read_bytes
from attnprof.trace.model import Trace
from attnprof.trace.ncu_csv import (
    NCU_CSV_SUFFIX,
    NCU_REPORT_SUFFIX,
    NcuReport,
    is_ncu_csv,
    load_ncu_csv,
    ncu_csv_in,
    ncu_report_in,
)
from attnprof.trace.nsys_sqlite import load_nsys_sqlite
from attnprof.trace.runinfo import RunInfo, read_runinfo
from attnprof.trace.torch_json import load_torch_trace

TRACE_SUFFIXES = (".pt.trace.json", ".pt.trace.json.gz")
NSYS_SUFFIXES = (".sqlite", ".sqlite.gz")
#: Files attnprof writes next to the original trace; never inputs.
DERIVED_MARK = ".attnprof."

#: (Nsight report, the file to export it to) -> that file. Running nsys / ncu is capture's work
#: (capture/nsight.py: `export_report`): the caller passes it in; without one, a report is read only through the
#: export beside it.
ReportExporter = Callable[[Path, Path], Path]


@dataclass
class LoadedRun:
    source: str
    traces: list[Trace]
    runinfo: RunInfo | None
    folder: Path | None  # the run folder, when one was given
    notes: list[str] = field(default_factory=list)  # pieces of the folder left out (damaged, unreadable), and why
    ncu: NcuReport | None = None  # Nsight Compute's counters (`attnprof ncu`'s report.raw.csv), when there


def trace_files_in(folder: Path) -> list[Path]:
    """The traces of a run folder: torch.profiler's, or the Nsight Systems export `attnprof nsys` leaves."""
    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.name.endswith(TRACE_SUFFIXES + NSYS_SUFFIXES) and DERIVED_MARK not in p.name]
    if not files:  # any JSON trace will do in a folder that is not a run folder
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name.endswith((".json", ".json.gz"))
                 and p.name not in ("runinfo.json", "attnprof.json") and DERIVED_MARK not in p.name]
    return files


def load_path(path: Path, max_mb: float = DEFAULT_MAX_INPUT_MB, export: ReportExporter | None = None) -> LoadedRun:
    """A run folder (its traces and runinfo.json) or one trace file. A folder with damaged pieces loads with what is
    readable, and `notes` says what was left out; nothing readable is an AttnprofError."""
    path = Path(path)
    if not path.exists():
        raise AttnprofError(f"{path}: no such file or folder")
    if not path.is_dir():
        return _load_file(path, max_mb, export)
    notes = []
    try:
        runinfo = read_runinfo(path)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, OSError) as e:
        runinfo = None
        notes.append(f"runinfo.json is damaged or unreadable, analysed without it "
                     f"(no true times, no call arguments): {_one_line(e)}")
    try:
        files = trace_files_in(path)
    except OSError as e:
        raise AttnprofError(f"cannot list {path}: {e.strerror or e}") from None
    ncu_csv = ncu_csv_in(path)
    if ncu_csv is None and (ncu_report := ncu_report_in(path)) is not None:
        ncu_csv = _ncu_csv_of(ncu_report, export)
    ncu = load_ncu_csv(ncu_csv) if ncu_csv else None
    if not files and ncu is not None:  # an `attnprof ncu` run: counters, no timeline
        return LoadedRun(source=str(path), traces=[], runinfo=runinfo, folder=path, notes=notes, ncu=ncu)
    if not files:
        if runinfo and runinfo.note:
            raise AttnprofError(f"{path} holds no trace: {runinfo.note}")
        raise AttnprofError(f"{path} holds no torch.profiler trace (*.pt.trace.json[.gz])")
    traces, failures = [], []
    for f in files:
        try:
            traces.append(load_trace(f, max_mb, export))
        except AttnprofError as e:
            failures.append(str(e))
    if not traces:
        raise AttnprofError(failures[0] if len(failures) == 1 else f"no trace of {path} is readable: {failures[0]}")
    notes += [f"left out: {why}" for why in failures]
    return LoadedRun(source=str(path), traces=traces, runinfo=runinfo, folder=path, notes=notes, ncu=ncu)


def _load_file(path: Path, max_mb: float, export: ReportExporter | None) -> LoadedRun:
    """One file: a trace, or Nsight Compute's report / raw CSV (its folder's runinfo.json, if any, names the
    phases)."""
    if path.suffix == NCU_REPORT_SUFFIX:
        path = _ncu_csv_of(path, export)
    if is_regular_file(path) and is_ncu_csv(path):
        try:
            runinfo = read_runinfo(path.parent)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, OSError):
            runinfo = None
        return LoadedRun(source=str(path), traces=[], runinfo=runinfo, folder=None, ncu=load_ncu_csv(path))
    return LoadedRun(source=str(path), traces=[load_trace(path, max_mb, export)], runinfo=None, folder=None)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def load_trace(path: Path, max_mb: float = DEFAULT_MAX_INPUT_MB, export: ReportExporter | None = None) -> Trace:
    """A torch.profiler trace (.json / .json.gz) or an Nsight Systems SQLite export, told apart by content.

    A pipe or process substitution (`<(zcat trace.json.gz)`) is read once and told apart from what was read."""
    if not is_regular_file(path):
        data = read_bytes(path, max_mb)
        if bytes(data[:16]).startswith(b"SQLite format 3"):
            return _load_sqlite_bytes(data, Path(path))
        return load_torch_trace(path, data=data)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise AttnprofError(f"cannot read {path}: {e.strerror or e}") from None
    if head.startswith(b"SQLite format 3"):
        return load_nsys_sqlite(path)
    if head.startswith(b"\x1f\x8b") and Path(path).name.endswith(".sqlite.gz"):
        return _load_sqlite_bytes(read_bytes(path, max_mb), Path(path))
    if Path(path).suffix == ".nsys-rep":
        return load_nsys_sqlite(_exported(Path(path), Path(path).with_suffix(".sqlite"), export))
    return load_torch_trace(path, max_mb=max_mb)


def _ncu_csv_of(report: Path, export: ReportExporter | None) -> Path:
    """The raw CSV beside an .ncu-rep (`x.ncu-rep` -> `x.raw.csv`)."""
    return _exported(report, report.with_name(report.name.removesuffix(NCU_REPORT_SUFFIX) + NCU_CSV_SUFFIX), export)


def _exported(report: Path, out: Path, export: ReportExporter | None) -> Path:
    """`out`, the export of an Nsight report: the one beside it when it is at least as new, else made by `export`."""
    if out.is_file() and out.stat().st_mtime >= report.stat().st_mtime:
        return out
    if export is None:
        raise AttnprofError(f"{report} is an Nsight report without its export ({out.name}): open it with the attnprof "
                            "command, which exports it with Nsight")
    return export(report, out)


def _load_sqlite_bytes(data: bytes | bytearray, path: Path) -> Trace:
    """A gzipped (how small fixtures are kept) or piped Nsight export: SQLite needs a file, so unpack to a
    temporary one."""
    with tempfile.TemporaryDirectory(prefix="attnprof-") as tmp:
        plain = Path(tmp) / (path.name.removesuffix(".gz") or "export.sqlite")
        plain.write_bytes(data)
        trace = load_nsys_sqlite(plain)
    trace.source = str(path)
    return trace
