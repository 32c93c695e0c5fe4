"""`attnprof explain A [B]`: why B's attention is slower than A's, or (one side) where a run's attention time goes.

A side is PATH[::WHAT]: a run folder or any torch.profiler trace, optionally narrowed to one call site
(analysis/sites.py resolve_sites: `::seed_case.py:44`, `::seed_wrapper`, `::layers.0.self_attn`, or a whole file
`::seed_case.py`) or one call (`::#12`). `::WHAT` alone as B means "in A's
run". `--site-a` / `--site-b` say the same as options.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from attnprof.cli import add_max_trace_mb
from attnprof.cli.verify_cmd import add_verify_options, verify_diagnoses
from attnprof.errors import AttnprofError

SEPARATOR = "::"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="why B's attention is slower than A's (runs, traces or call sites), as ranked causes with fixes",
        usage="attnprof explain A [B] [--site-a SITE] [--site-b SITE] [--phase fwd|bwd] [--json] [--verify]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Two sides: splits the gap between them (µs per attention call, fwd + bwd) into ranked causes\n"
            "(layout copies, casts, padding, GQA expansion, kernel choice, fallback backend, launch, other),\n"
            "each with its µs, where it comes from and its fix. The causes add up to the gap; what they miss\n"
            "is shown as unexplained. One side: where each call site's time goes, the same way."
        ),
        epilog=(
            "sides:\n"
            "  PATH              a run folder, or any torch.profiler trace file\n"
            "  PATH::SITE        one call site: its label or location (run/::seed_case.py:37 via :47), a line of it\n"
            "                    (its call, the call of its function, or a layout copy: run/::seed_case.py:44), a\n"
            "                    function (run/::seed_wrapper), a module path (run/::layers.0.self_attn: the layers\n"
            "                    of a model are one site), or a unique prefix; every site of a file\n"
            "                    (run/::seed_case.py)\n"
            "  PATH::#ID         one call\n"
            "  ::SITE            (as B) a site of A's run\n"
            "examples:\n"
            "  attnprof explain traces/native-1 traces/seed-1\n"
            "  attnprof explain traces/all-1::seed_case.py:47 ::seed_case.py:84\n"
            "  attnprof explain traces/all-1 --site-a seed_case.py:84 --site-b seed_case.py:47\n"
            "  attnprof explain traces/seed-1 --json        # one side: every site's causes"
        ),
    )
    p.add_argument("a", help="side A: PATH[::SITE | ::#CALL]")
    p.add_argument("b", nargs="?", help="side B: PATH[::SITE | ::#CALL], or ::SITE in A's run (omit: diagnose A)")
    p.add_argument("--site-a", metavar="SITE",
                   help="narrow A to a call site (label, file.py:line, file.py, function, module, or #ID)")
    p.add_argument("--site-b", metavar="SITE", help="narrow B to a call site; without B, B is this site of A's run")
    p.add_argument("--phase", choices=["fwd", "bwd"], help="only this phase (default: fwd and bwd together)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.add_argument("--verify", action="store_true", help="one side: replay each call site on its recorded shapes "
                                                         "and measure what each cause's fix saves")
    add_verify_options(p)
    add_max_trace_mb(p)
    p.set_defaults(run=run)


def parse_side(text: str) -> tuple[str | None, str | None]:
    """'run/::x.py:44' -> ('run/', 'x.py:44'); '::x.py:3' -> (None, 'x.py:3'); 'run' -> ('run', None)."""
    if SEPARATOR in text:
        path, what = text.rsplit(SEPARATOR, 1)
        return (path or None), (what or None)
    return text, None


def _merge(spec: tuple[str | None, str | None], option: str | None, name: str) -> tuple[str | None, str | None]:
    path, what = spec
    if option and what:
        raise AttnprofError(f"side {name} names a site twice ({what} and --site-{name.lower()} {option})")
    return path, option or what


class _Runs:
    """Each path loaded and analysed once, however many sides name it."""

    def __init__(self, max_mb: float):
        self._cache: dict[Path, tuple] = {}
        self.max_mb = max_mb

    def get(self, path: str):
        from attnprof.pipeline import analyze_run

        key = Path(path).resolve()
        if key not in self._cache:
            run = analyze_run(Path(path), self.max_mb)
            self._cache[key] = (run.report, run.call_info)
        return self._cache[key]


def _selection(runs: _Runs, path: str, what: str | None, phase: str | None):
    from attnprof.analysis.diagnosis import select

    report, info = runs.get(path)
    label = path if what is None else f"{path}{SEPARATOR}{what}"
    if what and what.startswith("#"):
        try:
            call_id = int(what[1:])
        except ValueError:
            raise AttnprofError(f"{what}: a call is #<number>, e.g. #12") from None
        return select(report, phase=phase, call_id=call_id, call_info=info, label=label)
    return select(report, site=what, phase=phase, call_info=info, label=label)


def run(ns: argparse.Namespace) -> int:
    from attnprof.analysis.diagnosis import diagnose, diagnose_sites, explain
    from attnprof.render.console import table_console
    from attnprof.render.explain import DiagnosesRenderer, ExplanationRenderer

    a_path, a_what = _merge(parse_side(ns.a), ns.site_a, "A")
    if a_path is None:
        raise AttnprofError("side A needs a run folder or trace: PATH[::SITE]")
    runs = _Runs(ns.max_trace_mb)
    console = table_console(sys.stdout)
    if ns.b is None and ns.site_b is None:
        if a_what:
            diagnoses = [diagnose(_selection(runs, a_path, a_what, ns.phase))]
        else:
            report, info = runs.get(a_path)
            if ns.phase:
                report = dataclasses.replace(report, sites=[s for s in report.sites if s.phase == ns.phase],
                                             calls=[c for c in report.calls if c.phase == ns.phase])
            if not report.sites:
                raise AttnprofError(f"{a_path}: no attention call found" + (f" ({ns.phase})" if ns.phase else ""))
            diagnoses = diagnose_sites(report, info)
        if ns.verify:
            report, info = runs.get(a_path)
            diagnoses = verify_diagnoses(ns, diagnoses, report, info)
        _show(DiagnosesRenderer(as_json=ns.json), diagnoses, console)
        return 0
    if ns.verify:
        raise AttnprofError("--verify measures the fixes of one side: give one run (attnprof explain RUN --verify)")
    b_path, b_what = _merge(parse_side(ns.b) if ns.b else (None, None), ns.site_b, "B")
    b_path = b_path or a_path
    if Path(a_path).resolve() == Path(b_path).resolve() and a_what == b_what:
        raise AttnprofError("A and B are the same: give two runs, or two sites (--site-a / --site-b)")
    a_sel, b_sel = _selection(runs, a_path, a_what, ns.phase), _selection(runs, b_path, b_what, ns.phase)
    if Path(a_path).resolve() == Path(b_path).resolve() and {c.id for c in a_sel.calls} == {c.id for c in b_sel.calls}:
        raise AttnprofError(f"{a_what} and {b_what} name the same calls: give two runs, or two sites")
    _show(ExplanationRenderer(as_json=ns.json), explain(a_sel, b_sel), console)
    return 0


def _show(renderer, subject, console) -> None:
    """JSON on stdout as it is; the tables through the console, at the terminal's width."""
    if renderer.as_json:
        sys.stdout.write(renderer.render(subject) + "\n")
    else:
        renderer.print_to(console, subject)
