"""`attnprof dashboard RUN`: one offline HTML page of charts for a run folder (or trace, or compare folder);
`attnprof dashboard --gallery`: every reference run under traces/h100/ into dashboards/."""
from __future__ import annotations

import argparse
from pathlib import Path

from attnprof.cli import add_max_trace_mb
from attnprof.errors import AttnprofError
from attnprof.files import DEFAULT_MAX_INPUT_MB, check_output_file, write_failure


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="write dashboard.html (Plotly, offline) for a run folder; --gallery: all of traces/h100/",
        usage="attnprof dashboard RUN [-o FILE] | attnprof dashboard --gallery [--traces DIR] [--out DIR]",
        description=(
            "Writes RUN/dashboard.html: per-site compute/copy/launch/other bars with true and profiled times, "
            "waterfalls between comparable call sites through the ranked causes, a kernel timeline per site, the "
            "roofline, and attnprof compare's sweep when the folder holds compare.json. For a trace file, the page "
            "goes next to it as <trace>.attnprof.dashboard.html."
        ),
    )
    p.add_argument("path", nargs="?", type=Path, help="run folder, trace file, or attnprof compare folder")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="where to write the page instead")
    p.add_argument("--gallery", action="store_true",
                   help="render every run folder under --traces (and waterfalls between variants) into --out, "
                        "with a README.md")
    p.add_argument("--traces", type=Path, default=None, metavar="DIR", help="gallery input (default: traces/h100)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="gallery output (default: dashboards)")
    add_max_trace_mb(p)
    p.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    if ns.gallery:
        from attnprof.gallery import DEFAULT_OUT, DEFAULT_TRACES, build_gallery

        if ns.path or ns.output:
            raise AttnprofError("--gallery takes --traces and --out, not a run folder or -o")
        try:
            entries = build_gallery(ns.traces or DEFAULT_TRACES, ns.out or DEFAULT_OUT)
        except OSError as e:
            raise AttnprofError(write_failure(Path(e.filename or (ns.out or DEFAULT_OUT)), e)) from None
        for entry in entries:
            print(entry.path)
        print((ns.out or DEFAULT_OUT) / "README.md")
        return 0
    if ns.path is None:
        raise AttnprofError("give a run folder (attnprof dashboard traces/model-...), or --gallery")
    if ns.traces or ns.out:
        raise AttnprofError("--traces and --out go with --gallery; use -o FILE for one dashboard")
    print(write_for_path(ns.path, ns.output, ns.max_trace_mb))
    return 0


def write_for_path(path: Path, output: Path | None = None, max_mb: float = DEFAULT_MAX_INPUT_MB) -> Path:
    from attnprof.pipeline import analyze_run, read_compare, write_dashboard_for
    from attnprof.render.dashboard import DASHBOARD_FILE
    from attnprof.trace.load import TRACE_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise AttnprofError(f"{path}: no such file or folder")
    if output is not None:
        target = output
    elif path.is_dir():
        target = path / DASHBOARD_FILE
    else:
        target = path.parent / (_trace_stem(path.name) + ".attnprof.dashboard.html")
    # before any work: never a page written over what it is made from, nor an analysis thrown away at the end
    check_output_file(target, _inputs_of(path))
    compare = read_compare(path) if path.is_dir() else None
    has_trace = not path.is_dir() or any(p.name.endswith(TRACE_SUFFIXES) for p in path.iterdir())
    report, call_info = None, {}
    if has_trace or not compare:  # a folder with neither: load_path says what is missing
        run = analyze_run(path, max_mb)
        report, call_info = run.report, run.call_info
    try:
        return write_dashboard_for(report, target.parent, compare=compare, name=target.name, call_info=call_info)
    except OSError as e:
        raise AttnprofError(write_failure(target, e)) from None


def _inputs_of(path: Path) -> list[Path]:
    """What `dashboard PATH` reads: the trace, or a folder's traces, runinfo.json, attnprof.json, compare.json."""
    if not path.is_dir():
        return [path]
    return [p for p in path.iterdir() if p.is_file() and p.name.endswith((".json", ".json.gz", ".sqlite",
                                                                           ".sqlite.gz", ".nsys-rep"))]


def _trace_stem(name: str) -> str:
    for suffix in (".pt.trace.json.gz", ".pt.trace.json", ".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
