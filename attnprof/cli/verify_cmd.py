"""`attnprof verify RUN[::SITE]`: `attnprof explain RUN --verify`, the measured saving of each cause's fix.

Each call site's attention call is replayed (capture/verify.py) on tensors of its recorded shapes, strides, dtype
and mask, with random values: the user's script and data are never touched, and a saved run folder is enough.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from attnprof.cli import add_max_trace_mb


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_verify_options(p: argparse.ArgumentParser) -> None:
    from attnprof.trace.verify import DEFAULT_BUDGET_S

    p.add_argument("--budget", type=_positive, default=DEFAULT_BUDGET_S, metavar="S",
                   help=f"with --verify: seconds of timing per call site (default {DEFAULT_BUDGET_S:g})")
    p.add_argument("--scale", type=_positive, default=1.0, metavar="F",
                   help="with --verify: replay at batch and sequence lengths times F (0 < F <= 1; default 1): a "
                        "quick check of the plumbing, whose savings are not the run's")
    p.add_argument("--device", choices=["cuda", "cpu"], help="with --verify: where to replay (default: the GPU "
                                                             "when there is one)")
    p.add_argument("--dashboard", metavar="FILE.html", help="with --verify: also write the measured fixes as a "
                                                            "dashboard")


def register(sub: argparse._SubParsersAction) -> None:
    from attnprof.cli import explain_cmd

    p = sub.add_parser("verify", help="replay each call site on its recorded shapes and measure what each "
                                      "proposed fix saves (attnprof explain RUN --verify)",
                       usage="attnprof verify RUN[::SITE] [--phase fwd|bwd] [--budget S] [--scale F] [--json]")
    p.add_argument("a", metavar="RUN", help="a run folder or trace: PATH[::SITE | ::#CALL]")
    p.add_argument("--phase", choices=["fwd", "bwd"], help="only this phase (default: fwd and bwd together)")
    p.add_argument("--json", action="store_true", help="print the diagnoses with their measured savings as JSON")
    add_verify_options(p)
    add_max_trace_mb(p)
    p.set_defaults(run=explain_cmd.run, b=None, site_a=None, site_b=None, verify=True)


def verify_diagnoses(ns: argparse.Namespace, diagnoses: list, report, call_info) -> list:
    """The diagnoses with each cause's measured saving; the dashboard written when asked."""
    from attnprof.analysis.verification import replay_specs, verified
    from attnprof.capture.verify import replay_sites
    from attnprof.errors import AttnprofError
    from attnprof.files import check_output_file, say

    if ns.scale > 1:
        raise AttnprofError(f"--scale must be in (0, 1], not {ns.scale:g}")
    if ns.dashboard:
        check_output_file(ns.dashboard)
    specs, skipped = replay_specs(diagnoses, report, call_info)
    replays = {r.spec.site: r for r in replay_sites(specs, ns.device, ns.budget, ns.scale, progress=say)}
    out = []
    for d in diagnoses:
        replay = next((replays[s] for s in d.subject.sites if s in replays), None)
        out.append(verified(d, replay) if replay else d)
    for line in skipped:
        say(f"verify: not replayed: {line}")
    if ns.dashboard:
        from attnprof.render.dashboard import VerifyDashboardRenderer
        page = Path(ns.dashboard)
        say(f"wrote {VerifyDashboardRenderer(page.name).write(out, page.parent)}")
    return out
