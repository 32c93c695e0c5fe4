"""`attnprof dashboard RUN`: one offline HTML page of charts for a run folder (or trace, or compare folder);
`attnprof dashboard --gallery`: every reference run under traces/h100/ into dashboards/."""
from __future__ import annotations

import argparse
from pathlib import Path

from attnprof.errors import AttnprofError


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
    p.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    if ns.gallery:
        from attnprof.gallery import DEFAULT_OUT, DEFAULT_TRACES, build_gallery

        if ns.path or ns.output:
            raise AttnprofError("--gallery takes --traces and --out, not a run folder or -o")
        entries = build_gallery(ns.traces or DEFAULT_TRACES, ns.out or DEFAULT_OUT)
        for entry in entries:
            print(entry.path)
        print((ns.out or DEFAULT_OUT) / "README.md")
        return 0
    if ns.path is None:
        raise AttnprofError("give a run folder (attnprof dashboard traces/model-...), or --gallery")
    if ns.traces or ns.out:
        raise AttnprofError("--traces and --out go with --gallery; use -o FILE for one dashboard")
    print(write_for_path(ns.path, ns.output))
    return 0


def write_for_path(path: Path, output: Path | None = None) -> Path:
    from attnprof.pipeline import analyze_run, read_compare, write_dashboard_for
    from attnprof.render.dashboard import DASHBOARD_FILE
    from attnprof.trace.load import TRACE_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise AttnprofError(f"{path}: no such file or folder")
    compare = read_compare(path) if path.is_dir() else None
    has_trace = path.is_file() or any(p.name.endswith(TRACE_SUFFIXES) for p in path.iterdir())
    report, call_info = None, {}
    if has_trace or not compare:  # a folder with neither: load_path says what is missing
        run = analyze_run(path)
        report, call_info = run.report, run.call_info
    if output is not None:
        folder, name = output.parent, output.name
    elif path.is_dir():
        folder, name = path, DASHBOARD_FILE
    else:
        folder, name = path.parent, _trace_stem(path.name) + ".attnprof.dashboard.html"
    return write_dashboard_for(report, folder, compare=compare, name=name, call_info=call_info)


def _trace_stem(name: str) -> str:
    for suffix in (".pt.trace.json.gz", ".pt.trace.json", ".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
