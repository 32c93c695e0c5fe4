"""The dashboards/ gallery: every reference run under traces/h100/ as a dashboard, plus one dashboard per pair of
variants of the same script (seed vs sdpa, eager vs sdpa, seed vs native) with the waterfall between them, and a
README.md describing each from its data. `attnprof dashboard --gallery` runs it.

A run's script and variant come from its runinfo.json command (`--variant seed`, `--attn sdpa`, ...), else from
its folder name (`seed_case-seed-20261125-1302`). Ceilings for the rooflines: `<traces>/ceilings.json` (the
format of attnprof's ceilings cache, copied from the machine that recorded the traces) when there, else the cache.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from attnprof.analysis import diagnosis as dg
from attnprof.analysis.compare import CompareDocument
from attnprof.analysis.records import Report
from attnprof.errors import AttnprofError
from attnprof.files import atomic_write, check_new_folder_place
from attnprof.pipeline import analyze_run, read_compare, write_dashboard_for
from attnprof.trace.load import DERIVED_MARK, TRACE_SUFFIXES
from attnprof.units import us_text

DEFAULT_TRACES = Path("traces/h100")
DEFAULT_OUT = Path("dashboards")
COMMAND = "attnprof dashboard --gallery"
#: (baseline, variant) pairs explained when two runs of one script carry them; the faster becomes A either way.
PAIR_RULES = (("sdpa", "seed"), ("sdpa", "eager"), ("native", "seed"))
_VARIANT_FLAGS = ("--variant", "--attn", "--attn-implementation", "--attn_implementation", "--impl", "--backend")
_KNOWN_VARIANTS = ("seed", "native", "sdpa", "eager", "flash", "cudnn", "efficient", "math", "all")
_TIMESTAMP_RE = re.compile(r"-\d{8}-\d{6}$")


@dataclass
class GalleryRun:
    name: str  # folder path under the traces root, "/" as "_": the dashboard's file name
    folder: Path
    script: str  # script stem or module
    variant: str | None
    setting: str  # the rest of the command (shape, --backward, ...): runs pair up when script and setting agree
    report: Report | None
    compare: CompareDocument | None
    call_info: dict = field(default_factory=dict)


@dataclass
class GalleryEntry:
    path: Path
    title: str
    lines: list[str]  # what it shows, from the data (README bullet points)


def run_folders(root: Path) -> list[Path]:
    """Folders under root holding a torch.profiler trace or a compare.json (originals only), sorted."""
    found = set()
    for p in Path(root).rglob("*"):
        if p.is_file() and DERIVED_MARK not in p.name and (p.name.endswith(TRACE_SUFFIXES) or p.name == "compare.json"):
            found.add(p.parent)
    return sorted(found)


def run_identity(folder: Path, command: list[str] | None) -> tuple[str, str | None, str]:
    """(script, variant, setting) of a run, from its command when known, else from its folder name."""
    variant, script, setting = None, None, []
    if command:
        args = command[2:] if command[0] == "-m" else command[1:]
        script = command[1] if command[0] == "-m" and len(command) > 1 else Path(command[0]).stem
        skip = False
        for i, arg in enumerate(args):
            if skip:
                skip = False
                continue
            flag, eq, value = arg.partition("=")
            if flag in _VARIANT_FLAGS:
                variant = value if eq else (args[i + 1] if i + 1 < len(args) else None)
                skip = not eq
            else:
                setting.append(arg)
    base = _TIMESTAMP_RE.sub("", folder.name)
    tokens = re.split(r"[-_.]", base)
    if variant is None:
        variant = next((t for t in reversed(tokens) if t in _KNOWN_VARIANTS), None)
    if script is None:
        rest = [t for t in base.split("-") if t != variant]
        script, setting = (rest[0] if rest else base), rest[1:]
    return script, variant, " ".join(setting)


def load_gallery_runs(root: Path) -> list[GalleryRun]:
    runs = []
    root = Path(root)
    for folder in run_folders(root):
        compare = read_compare(folder)
        report, info, command = None, {}, None
        if any(p.name.endswith(TRACE_SUFFIXES) for p in folder.iterdir()):
            loaded = analyze_run(folder)
            report, info = loaded.report, loaded.call_info
            if loaded.runinfo:
                command = loaded.runinfo.command
        elif compare:
            command = compare.run.get("command")
        script, variant, setting = run_identity(folder, command)
        name = "_".join(folder.relative_to(root).parts) or folder.name
        runs.append(GalleryRun(name, folder, script, variant, setting, report, compare, info))
    return runs


def gallery_pairs(runs: list[GalleryRun]) -> list[tuple[GalleryRun, GalleryRun]]:
    """(baseline, variant) runs of one script and setting, by PAIR_RULES; the last folder of each when several."""
    pairs = []
    by_script: dict[tuple[str, str], dict[str, GalleryRun]] = {}
    for r in runs:
        if r.variant and r.report is not None and r.report.sites:
            by_script.setdefault((r.script, r.setting), {})[r.variant] = r  # sorted runs: the later folder wins
    for variants in by_script.values():
        for base, other in PAIR_RULES:
            if base in variants and other in variants:
                pairs.append((variants[base], variants[other]))
    return pairs


def merged_report(named: list[tuple[str, Report]]) -> Report:
    """Several runs' reports as one, each site and call labelled `<run>::<site>`, for side-by-side charts."""
    first = named[0][1]
    sites, calls, notes = [], [], []
    for name, report in named:
        sites += [dataclasses.replace(s, site=f"{name}::{s.site}") for s in report.sites]
        calls += [dataclasses.replace(c, site=f"{name}::{c.site}") for c in report.calls]
        notes += [f"{name}: {n}" for n in report.notes]
    devices = sorted({r.device for _, r in named})
    return Report(schema_version=first.schema_version, source=" vs ".join(r.source for _, r in named),
                  trace_files=[f for _, r in named for f in r.trace_files], device=" / ".join(devices),
                  torch_version=first.torch_version, calls=calls, sites=sites, run=None, notes=notes,
                  trace_base_us=[b for _, r in named for b in r.trace_base_us])


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _run_lines(run: GalleryRun) -> list[str]:
    from attnprof.render.dashboard import compare_headlines  # lazy: importing plotly costs time

    lines = []
    r = run.report
    if run.compare:  # its headline per shape says more than a line per backend, variant and shape
        command = " ".join(run.compare.run.get("command") or []) or "attnprof compare"
        lines.append(f"`{command}` on {run.compare.run.get('device', '?')}")
        lines += compare_headlines(run.compare.rows)
    if r is not None:
        if not run.compare:
            command = " ".join((r.run or {}).get("command") or []) or "a torch.profiler trace"
            lines.append(f"`{command}` on {r.device}" + (f", torch {r.torch_version}" if r.torch_version else "")
                         + f": {_count(len(r.calls), 'call')} at {_count(len({s.site for s in r.sites}), 'site')}")
        for d in ([] if run.compare else dg.diagnose_sites(r, run.call_info)):
            top = d.causes[0] if d.causes else None
            lines.append(f"`{d.subject.label}` ({' / '.join(d.subject.backends)}): {us_text(d.subject.us)} per call"
                         + (f"; biggest cause: {dg.KIND_TITLES[top.kind]}, {us_text(top.us)}" if top else ""))
        for e in dg.site_explanations(r, run.call_info):
            lines.append(_explanation_line(e))
        if not r.sites:
            lines.append("; ".join(r.notes) or "no attention call found")
    if run.compare:
        rows = run.compare.rows
        backends = sorted({row.backend for row in rows})
        lines.append(f"compare: {len(rows)} rows over {', '.join(backends)}")
    return lines


def _explanation_line(e: dg.Explanation) -> str:
    from attnprof.render.dashboard import signed

    causes = ", ".join(f"{dg.KIND_TITLES[c.kind]} {signed(c.us)} µs" for c in e.causes[:3])
    return (f"waterfall `{e.a.label}` → `{e.b.label}`: B slower by {us_text(e.gap_us)} per call ({causes}; "
            f"unexplained {signed(e.unexplained_us)} µs; {e.basis} times)")


def build_gallery(traces: Path = DEFAULT_TRACES, out: Path = DEFAULT_OUT) -> list[GalleryEntry]:
    """Render every run under `traces` and every pair of variants into `out`, with out/README.md."""
    traces, out = Path(traces), Path(out)
    if not traces.is_dir():
        raise AttnprofError(f"{traces}: no such folder (the gallery renders the run folders under it)")
    check_new_folder_place(out, f"cannot write the gallery into {out}")
    if out.exists() and not out.is_dir():
        raise AttnprofError(f"--out {out} is a file, not a folder")
    if out.resolve() == traces.resolve() or traces.resolve() in out.resolve().parents:
        raise AttnprofError(f"--out {out} is inside --traces {traces}: the gallery never writes among its inputs")
    runs = load_gallery_runs(traces)
    if not runs:
        raise AttnprofError(f"{traces} holds no run folder (a folder with a *.pt.trace.json[.gz] or compare.json)")
    from attnprof.render.dashboard import SHARED_PLOTLY_FILE, write_shared_plotly  # lazy: importing plotly costs time

    out.mkdir(parents=True, exist_ok=True)
    write_shared_plotly(out)  # one copy for all the pages, not 4.6 MB in each
    ceilings = _gallery_ceilings(traces, runs)
    entries = []
    pairs = gallery_pairs(runs)
    paired = {r.name for pair in pairs for r in pair}
    for run in runs:
        if run.name in paired:
            continue  # its sites are on the pair's page, beside the other variant's
        path = write_dashboard_for(run.report, out, compare=run.compare, ceilings=ceilings, name=f"{run.name}.html",
                                   title=f"attnprof — {run.name}", call_info=run.call_info,
                                   plotly_src=SHARED_PLOTLY_FILE)
        entries.append(GalleryEntry(path, run.name, _run_lines(run)))
    for base, other in pairs:
        assert base.report is not None and other.report is not None, "gallery_pairs pairs runs with a report"
        a = dg.select(base.report, call_info=base.call_info, label=base.name)
        b = dg.select(other.report, call_info=other.call_info, label=other.name)
        e = dg.explain(a, b)
        merged = merged_report([(base.name, base.report), (other.name, other.report)])
        name = f"{other.name}-vs-{base.variant}"
        path = write_dashboard_for(merged, out, explanations=[e], compare=CompareDocument(rows=[]), ceilings=ceilings,
                                   name=f"{name}.html", title=f"attnprof — {other.name} vs {base.name}",
                                   plotly_src=SHARED_PLOTLY_FILE)
        entries.append(GalleryEntry(path, name, [_explanation_line(e)] + [
            f"{dg.KIND_TITLES[c.kind]}: {c.detail}" for c in e.causes[:3]]))
    atomic_write(out / "README.md", gallery_readme(entries, traces, out))
    return entries


def _gallery_ceilings(traces: Path, runs: list[GalleryRun]):
    from attnprof.trace.ceilings import load_ceilings

    devices = [r.report.device for r in runs if r.report is not None]
    if not devices:
        return None
    stored = traces / "ceilings.json"
    return load_ceilings(devices[0], path=stored if stored.is_file() else None)


def gallery_readme(entries: list[GalleryEntry], traces: Path, out: Path) -> str:
    lines = [
        "# Dashboards",
        "",
        f"Rendered from the reference traces in `{traces}` (recorded on the GPU named in each entry). Each file is "
        "one HTML page that works offline with the `plotly.min.js` beside it (one copy shared by all the pages; "
        "`attnprof dashboard RUN` writes a page with plotly.js inside instead): the answer in a line on top, per-site "
        "stacked bars of compute / copy / launch / other with true and profiled times, waterfalls from the faster "
        "to the slower variant through the ranked causes, a kernel timeline of a typical call per site, the "
        "roofline, and where a run holds compare.json, `attnprof compare`'s charts (one row per shape) and rows.",
        "",
        "Regenerate them all (from the project root):",
        "",
        "```bash",
        f"{COMMAND}" + ("" if (traces, out) == (DEFAULT_TRACES, DEFAULT_OUT) else f" --traces {traces} --out {out}"),
        "```",
        "",
    ]
    for entry in entries:
        lines.append(f"## [{entry.title}]({entry.path.name})")
        lines.append("")
        lines += [f"- {line}" for line in entry.lines]
        lines.append("")
    return "\n".join(lines)
