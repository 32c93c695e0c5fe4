"""What a CPU trace file itself says about a call, read with json and nothing of attnprof's analysis: the tests'
independent expectation of a call's copies, compute and window.

A call is its `attnprof:<op> <site> #<id>` range. Its layout copies are picked by construction, the way the
traced code was written: the last `attnprof.src:` range of each given "before" line that ends before the call
starts, and the first range of each "after" line that starts after it ends; the copy is the copy op inside that
range. Compute is the attention op inside the call's range. On a CPU timeline ops do not overlap, so a part is
the sum of its ops' durations, and the window runs from the first copy's start to the last copy's end.
"""
from __future__ import annotations

import gzip
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

RANGE_PREFIX = "attnprof:"  # spelled out here, not imported: these are the names the trace file holds
SOURCE_PREFIX = "attnprof.src:"


@dataclass
class CallTruth:
    id: int
    copies: dict[str, float]  # source line -> the copy op's duration (µs)
    compute_us: float
    start_us: float  # first op of the window
    end_us: float  # end of its last op

    @property
    def copy_us(self) -> float:
        return sum(self.copies.values())

    @property
    def window_us(self) -> float:
        return self.end_us - self.start_us


def events(path: Path) -> list[dict]:
    """The trace's complete ("X") events, in time order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        doc = json.load(f)
    return sorted((e for e in doc["traceEvents"] if e.get("ph") == "X"), key=lambda e: (e["ts"], -e["dur"]))


def _end(e: dict) -> float:
    return e["ts"] + e["dur"]


def _inside(evs: list[dict], outer: dict, name: str) -> dict:
    """The outermost event named `name` within `outer`'s span."""
    return next(e for e in evs if e["name"] == name and outer["ts"] <= e["ts"] and _end(e) <= _end(outer))


def _line(name: str) -> str:
    """`attnprof.src:<site> in=<hex> #<n>` -> <site>."""
    return name[len(SOURCE_PREFIX):].split(" in=")[0].split(" #")[0]


def call_truths(path: Path, before: list[str], after: list[str], site: str | None = None,
                compute_op: str = "aten::scaled_dot_product_attention",
                copy_op: str = "aten::contiguous") -> list[CallTruth]:
    """Every call range in the trace (of `site` when given) with its copies at the `before` and `after` lines."""
    evs = events(path)
    sources = [e for e in evs if e["name"].startswith(SOURCE_PREFIX)]
    calls = [e for e in evs if e["name"].startswith(RANGE_PREFIX) and (site is None or f" {site} #" in e["name"])]
    truths = []
    for c in calls:
        picked = [max((s for s in sources if _line(s["name"]) == line and _end(s) <= c["ts"]), key=lambda s: s["ts"])
                  for line in before]
        picked += [min((s for s in sources if _line(s["name"]) == line and s["ts"] >= _end(c)), key=lambda s: s["ts"])
                   for line in after]
        ops = {_line(s["name"]): _inside(evs, s, copy_op) for s in picked}
        attention = _inside(evs, c, compute_op)
        spans = [attention, *ops.values()]
        truths.append(CallTruth(id=int(c["name"].rsplit("#", 1)[1]), copies={k: e["dur"] for k, e in ops.items()},
                                compute_us=attention["dur"], start_us=min(e["ts"] for e in spans),
                                end_us=max(_end(e) for e in spans)))
    return truths


def mean_copy_us(truths: list[CallTruth]) -> float:
    return statistics.fmean(t.copy_us for t in truths)


def median_true_us(folder: Path, site: str | None = None, phase: str = "fwd") -> float:
    """A site's CUDA-event / host-clock time as capture recorded it (runinfo.json, read with json): the median of its
    timed calls. Without `site`, the run's one site."""
    doc = json.loads((Path(folder) / "runinfo.json").read_text())
    (timing,) = [s for s in doc["sites"] if s["phase"] == phase and site in (None, s["site"])]
    return statistics.median(timing["true_us"])


def backward_copies_us(path: Path) -> list[float]:
    """Per SDPA backward node of a profiled call (one that runs after the first call range: a backward already
    running when the profiler started belongs to a forward it never saw), in time order: the copies it makes
    inside itself (the gradient arriving transposed)."""
    evs = events(path)
    first_call = min(e["ts"] for e in evs if e["name"].startswith(RANGE_PREFIX))
    nodes = [e for e in evs if e["name"].startswith("autograd::engine::evaluate_function: ScaledDotProduct")
             and e["ts"] > first_call]
    return [sum(e["dur"] for e in evs if e["name"] == "aten::contiguous" and n["ts"] <= e["ts"] and _end(e) <= _end(n))
            for n in nodes]
