"""Aggregate calls per call site and phase, and bring in the true (unprofiled) time measured at run time."""
from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from attnprof.analysis.records import CallSplit, CopySummary, Phase, Position, SiteSummary
from attnprof.errors import AttnprofError
from attnprof.trace.runinfo import CallInfo, RunInfo, SiteTiming

#: A site's timing is noisy when its interquartile range exceeds this fraction of its median.
NOISY_SPREAD = 0.25
#: Fewer samples than this state no spread (a quartile of two values says nothing).
MIN_SPREAD_SAMPLES = 3
#: The profiler never speeds code up: profiled / true below this says the machine's load changed during the run.
IMPLAUSIBLE_INFLATION = 0.9


class Spread(NamedTuple):
    """Median and quartiles of one list of timed samples."""

    median: float | None
    q1: float | None
    q3: float | None
    n: int

    @property
    def relative_iqr(self) -> float | None:
        """(q3 - q1) / median: how far apart the middle half of the samples lies, relative to their median."""
        if self.q1 is None or self.q3 is None or not self.median:
            return None
        return (self.q3 - self.q1) / self.median


def spread(values: list[float]) -> Spread:
    """Median and quartiles (inclusive method: the quartiles of [1, 2, 3] are 1.5 and 2.5); no quartiles below
    MIN_SPREAD_SAMPLES samples."""
    if not values:
        return Spread(None, None, None, 0)
    med = statistics.median(values)
    if len(values) < MIN_SPREAD_SAMPLES:
        return Spread(med, None, None, len(values))
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(med, q1, q3, len(values))


def timing_warnings(true: Spread, profiled: Spread) -> list[str]:
    """What a person must know before trusting a site's true µs and inflation."""
    out = []
    if true.n and true.n < MIN_SPREAD_SAMPLES:
        out.append(f"only {true.n} timed call{'s' if true.n > 1 else ''}: no spread can be stated "
                   "(run more --timed steps)")
    noise = true.relative_iqr
    if noise is not None and noise > NOISY_SPREAD:
        out.append(f"noisy machine: the timed calls spread {true.q1:,.0f}-{true.q3:,.0f} µs (IQR {noise:.0%} of "
                   f"the median); differences smaller than that are noise")
    if true.median and profiled.median and profiled.median / true.median < IMPLAUSIBLE_INFLATION:
        out.append(f"profiled calls ran faster than unprofiled ones (×{profiled.median / true.median:.2f}): the "
                   "profiler never speeds code up, so the machine's load changed during the run and the true µs "
                   "are unreliable")
    return out


_INDEX = re.compile(r"^\d+$")


def collapse_paths(paths: list[str]) -> str:
    """Module paths of one site's calls as one: the layers of a model differ only in their indices
    (`model.layers.0.self_attn`, `model.layers.3.self_attn` -> `model.layers.{0..3}.self_attn`); indices that are
    not a run are listed (`{0,2,5}`); paths that differ otherwise are not collapsed: the most common one and how
    many others."""
    distinct = list(dict.fromkeys(paths))
    if len(distinct) == 1:
        return distinct[0]
    parts = [p.split(".") for p in distinct]
    if len({len(p) for p in parts}) == 1:
        out = []
        for column in zip(*parts):
            values = set(column)
            if len(values) == 1:
                out.append(column[0])
            elif all(_INDEX.match(v) for v in values):
                ints = sorted(int(v) for v in values)
                contiguous = ints == list(range(ints[0], ints[-1] + 1))
                out.append(f"{{{ints[0]}..{ints[-1]}}}" if contiguous else "{" + ",".join(map(str, ints)) + "}")
            else:
                break
        else:
            return ".".join(out)
    first = Counter(paths).most_common(1)[0][0]
    return f"{first} (+{len(distinct) - 1} more)"


def _location(site: str) -> str:
    """`examples/seed_case.py:37 via :47` -> `seed_case.py:37 via :47` (directories dropped)."""
    return re.sub(r"[^\s:]*/", "", site)


class Place(NamedTuple):
    """Where a site's calls run, as a person reads it (SiteSummary's fields of the same names)."""

    label: str
    function: str | None = None
    caller: str | None = None
    module: str | None = None
    module_class: str | None = None


@dataclass
class _CopyTotal:
    """One copy (site, op, position) summed over a site's calls."""

    bytes: int = 0
    dur_us: float = 0.0
    count: int = 0


def _place(site: str, infos: list[CallInfo]) -> Place:
    """The label a person reads, and its parts: in a model, the module path (layers collapsed) and class; outside
    one, the calling function and the site's function; without capture's records (a plain trace), the site."""
    if not infos:
        return Place(label=site)
    first = infos[0]
    function = first.function if first.function not in ("?", "<module>") else None
    caller = first.caller if first.caller != "<module>" else None
    modules = [i.module for i in infos if i.module is not None]
    module = collapse_paths(modules) if modules else None
    module_class = first.module_class if modules else None
    if module:
        label = f"{module} ({module_class})"
    elif module == "" and module_class:  # the call runs in the model's own forward
        label = module_class
    elif function:
        label = f"{caller} → {function}" if caller else function
    else:
        label = _location(site)
    return Place(label=label, function=function, caller=caller, module=module, module_class=module_class)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _launch_without_profiler(launch: float | None, true_us: float | None, busy_us: float) -> float | None:
    """The call's GPU idle with the profiler's own cost taken out.

    CUDA events time the entry point's span outside the profiler (true_us); less its own kernels' busy time, what is
    left is the idle the call really has (its host-side launch cost, cuDNN's planning). The idle the trace shows
    around the layout copies is the profiler's (with_stack, record_shapes): it counts as none. Without a true time
    (a trace attnprof did not make) nothing can be corrected: the traced launch stands.
    """
    if launch is None or true_us is None:
        return launch
    return max(true_us - busy_us, 0.0)


def summarize_sites(calls: list[CallSplit], runinfo: RunInfo | None) -> list[SiteSummary]:
    timings: dict[tuple[str, str, str], SiteTiming] = {}
    infos: dict[int, CallInfo] = {}
    if runinfo:
        timings = {(t.site, t.op, t.phase): t for t in runinfo.sites}
        infos = {i.id: i for i in runinfo.calls}
    groups: dict[tuple[str, str, str], list[CallSplit]] = defaultdict(list)
    for c in calls:
        groups[(c.site, c.op, c.phase)].append(c)
    out = []
    for key, group in groups.items():
        site, op, phase = key
        n = len(group)
        launches = [c.launch_us for c in group if c.launch_us is not None]
        launch = _mean(launches) if len(launches) == n else None  # null when any call has none (CPU)
        timing = timings.get(key)
        # before the window when timed there; after it (slowed by the profiler's aftermath) only as a fallback
        true = spread((timing.true_us or timing.after_us) if timing else [])
        profiled = spread(timing.profiled_us if timing else [])
        true_us = true.median
        after_us = _median(timing.after_us) if timing else None
        profiled_us = profiled.median if timing else _mean([c.window_us for c in group])
        inflation = profiled_us / true_us if (true_us and profiled_us) else None
        launch_true = _launch_without_profiler(launch, true_us, _mean([c.entry_busy_us for c in group]))
        first = group[0]
        copies: dict[tuple[str | None, str, Position], _CopyTotal] = {}
        for c in group:
            for cp in c.copies:
                total = copies.setdefault((cp.site, cp.op, cp.position), _CopyTotal())
                total.bytes += cp.bytes
                total.dur_us += cp.dur_us
                total.count += 1
        place = _place(site, [infos[c.id] for c in group if c.id in infos])
        out.append(SiteSummary(
            site=site, op=op, phase=Phase(phase),
            backend=Counter(c.backend for c in group).most_common(1)[0][0],
            calls=n, shapes=first.shapes, dtype=first.dtype, layout=first.layout,
            true_us=true_us, profiled_us=profiled_us, inflation=inflation, after_us=after_us,
            timed_calls=len(timing.true_us or timing.after_us) if timing else 0,
            window_us=_mean([c.window_us for c in group]),
            compute_us=_mean([c.compute_us for c in group]),
            copy_us=_mean([c.copy_us for c in group]),
            launch_us=launch, launch_true_us=launch_true,
            # true around the entry point, plus the busy time of the work outside it (the layout copies)
            window_true_us=(None if launch is None or true_us is None else
                            true_us + _mean([c.compute_us + c.copy_us + c.other_us - c.entry_busy_us for c in group])),
            other_us=_mean([c.other_us for c in group]),
            interleaved_us=_mean([c.interleaved_us for c in group]),
            copies=[CopySummary(site=s, op=o, bytes=int(t.bytes / n), dur_us=t.dur_us / n, count=t.count)
                    for (s, o, _pos), t in copies.items()],
            label=place.label, function=place.function, caller=place.caller, module=place.module,
            module_class=place.module_class,
            true_q1_us=true.q1, true_q3_us=true.q3, profiled_q1_us=profiled.q1, profiled_q3_us=profiled.q3,
            noise=true.relative_iqr, warnings=timing_warnings(true, profiled) if timing else [],
        ))
    _unique_labels(out)
    out.sort(key=lambda s: -(s.window_us * s.calls))
    return out


def _unique_labels(sites: list[SiteSummary]) -> None:
    """Two sites with one label (one function calling the same helper from two lines) get their locations added."""
    by_label: dict[str, set[str]] = defaultdict(set)
    for s in sites:
        by_label[s.label].add(s.site)
    for s in sites:
        if len(by_label[s.label]) > 1:
            s.label = f"{s.label} {_location(s.site)}"


# --- selecting sites by what a person types ---------------------------------------------------------------------

_SITE = re.compile(r"^(?P<path>.+?):(?P<line>\d+)(?: via (?P<via_path>.*?):(?P<via_line>\d+))?$")
_LOCATION = re.compile(r"^(?P<path>[^\s:]+):(?P<line>\d+)$")
_RANGE = re.compile(r"^\{(?P<lo>\d+)\.\.(?P<hi>\d+)\}$")
_MODULE_PART = re.compile(r"\{[^}]*\}|[^.]+")  # `{0..3}` is one part of `model.layers.{0..3}.self_attn`
_LIST = re.compile(r"^\{(?P<items>\d+(?:,\d+)*)\}$")


def _same_file(path: str, selector: str) -> bool:
    """`seed_case.py` and `examples/seed_case.py` name `examples/seed_case.py`; `case.py` does not."""
    return path == selector or path.endswith("/" + selector)


def _lines(site: str) -> list[tuple[str, str]]:
    """(path, line) of a site's call line and of the line that called its function."""
    m = _SITE.match(site)
    if m is None:
        return []
    out = [(m["path"], m["line"])]
    if m["via_line"]:
        out.append((m["via_path"] or m["path"], m["via_line"]))
    return out


def _part_matches(pattern: str, part: str) -> bool:
    """One dotted part of a collapsed module path against a typed one: `{0..3}` matches `2`, `{0,2}` matches `2`."""
    if pattern == part:
        return True
    if not part.isdigit():
        return False
    m = _RANGE.match(pattern)
    if m:
        return int(m["lo"]) <= int(part) <= int(m["hi"])
    m = _LIST.match(pattern)
    return m is not None and part in m["items"].split(",")


def _module_matches(module: str, selector: str) -> bool:
    """A typed module path names a collapsed one when it matches its last parts: `self_attn`, `layers.0.self_attn`
    and `model.layers.{0..3}.self_attn` all name `model.layers.{0..3}.self_attn`."""
    parts, typed = _MODULE_PART.findall(module), selector.split(".")
    if not module or len(typed) > len(parts):
        return False
    return all(_part_matches(p, t) for p, t in zip(parts[-len(typed):], typed))


def _names(s: SiteSummary) -> set[str]:
    """The function names a site answers to: its function and caller, qualified (`Attention.forward`) or not."""
    out = set()
    for name in (s.function, s.caller):
        if name:
            out.update({name, name.rpartition(".")[2]})
    return out


def describe_site(s: SiteSummary) -> str:
    """`label [location]` (or the site alone when it is its own label): how a candidate is listed."""
    location = _location(s.site)
    if s.label in ("", s.site, location):
        return s.site
    if s.label.endswith(location):  # the label names the location already (`flash_attention seed_case.py:34 ...`)
        return s.label
    return f"{s.label} [{location}]"


def resolve_sites(sites: list[SiteSummary], selector: str, source: str = "the run") -> list[SiteSummary]:
    """The sites (all their phases) a selector names; AttnprofError when it names none, or several where it
    should name one.

    Tried in order, the first form that names any site wins:
      1. the full site or label, or the site without its folders (`seed_case.py:37 via :47`);
      2. `file.py:LINE`: the site whose call is on that line or whose function is called from it; failing that, the
         site whose layout copies are made on it (`seed_case.py:44`, the seed wrapper's q copy);
      3. `file.py`: every site of that file (several on purpose);
      4. a function (the site's function or its caller: `seed_wrapper`), a module path or its last parts
         (`layers.0.self_attn`, `self_attn`: the layers of a model are one site) or a module class;
      5. a prefix of a label, site or function name.
    """
    def named(keep) -> list[SiteSummary]:
        return [s for s in sites if keep(s)]

    def one(found: list[SiteSummary]) -> list[SiteSummary]:
        distinct = list(dict.fromkeys(s.site for s in found))
        if len(distinct) > 1:
            by_site = {s.site: s for s in found}
            raise AttnprofError(f"{selector!r} names {len(distinct)} sites of {source}, say which: "
                                + "; ".join(describe_site(by_site[d]) for d in distinct))
        return [s for s in sites if s.site in distinct]  # every phase of it (a copy line names the fwd only)

    found = named(lambda s: selector in (s.site, s.label) or _same_file(s.site, selector))
    if found:
        return one(found)
    location = _LOCATION.match(selector)
    if location:
        path, line = location["path"], location["line"]
        found = named(lambda s: any(_same_file(p, path) and n == line for p, n in _lines(s.site)))
        if not found:
            found = named(lambda s: any(_LOCATION.match(c.site or "") and c.site.rpartition(":")[2] == line
                                        and _same_file(c.site.rpartition(":")[0], path) for c in s.copies))
        if found:
            return one(found)
    else:
        found = named(lambda s: any(_same_file(p, selector) for p, _ in _lines(s.site)))
        if found:
            return found
    found = named(lambda s: selector in _names(s) or selector == s.module_class
                  or (s.module is not None and _module_matches(s.module, selector)))
    if found:
        return one(found)
    found = named(lambda s: any(text.startswith(selector) for text in
                                (s.label, s.site, re.sub(r"[^\s:]*/", "", s.site), *_names(s))))
    if found:
        return one(found)
    known = sorted({describe_site(s) for s in sites})
    raise AttnprofError(f"{source} has no site {selector}; its sites: " + (", ".join(known) if known else "none"))
