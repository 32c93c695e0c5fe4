"""Under `attnprof ncu`: which attention calls Nsight Compute profiles, marked with an NVTX range ncu filters on.

ncu replays each kernel it profiles (a dozen passes or more), so a whole run is far too slow. `attnprof ncu` sets
ATTNPROF_NCU_CALLS=<n> for the traced script; the session then opens a range `call` in the NVTX domain
`attnprof.ncu` around the first n attention calls after the warm-up steps, and ncu profiles only the kernels inside
one (`--nvtx-include attnprof.ncu@call/`). The call's own range (domain `attnprof`, `<op> <site> #<id>`) encloses
them too and names the call in ncu's report.

The layout copies around those calls (q.transpose(1, 2).contiguous() before, the output's after) run outside the
call's range. From the first selected call until the first call after the last one, each memory-copying torch call
made from user code gets the same `call` range, and a range `<source line> in=<storage>` in domain
`attnprof.copy`, so its kernels are profiled and analysis ties them to the neighbouring call. (The before-copies of
the first selected call run before anything is selected: they are not profiled.)

Without the variable every function here is a no-op.
"""
from __future__ import annotations

import os
import threading

from attnprof.capture.sources import SiteResolver, SourceLineMode, SourceLines, _is_compiling
from attnprof.trace.runinfo import SOURCE_PREFIX

ENV_CALLS = "ATTNPROF_NCU_CALLS"
DOMAIN = "attnprof.ncu"
RANGE = "call"
COPY_DOMAIN = "attnprof.copy"
#: ncu's filter for the selected calls (push/pop range `call` of domain `attnprof.ncu`).
NVTX_INCLUDE = f"{DOMAIN}@{RANGE}/"

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - `attnprof ncu` checks for it before it runs the script
    _nvtx = None


class _CopyMarks(SourceLineMode):
    """The source-line mode's choice of calls (memory-copying torch calls from user code), marked for ncu."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        if self.active and not _is_compiling():
            named = self._range_name(func, args)
            if named is not None:
                name = named[0]  # (range name, copy number): the number only matters to the profiler's ranges
                _nvtx.push_range(message=RANGE, domain=DOMAIN)
                _nvtx.push_range(message=name[len(SOURCE_PREFIX):], domain=COPY_DOMAIN)
                try:
                    return func(*args, **kwargs)
                finally:
                    _nvtx.pop_range(domain=COPY_DOMAIN)
                    _nvtx.pop_range(domain=DOMAIN)
        return func(*args, **kwargs)


class _Selection:
    def __init__(self, calls: int):
        self.left = calls
        self.lock = threading.Lock()
        self.copies: SourceLines | None = None  # the copy marks, from the first selected call on
        self.copies_done = False


def _from_env() -> _Selection | None:
    value = os.environ.get(ENV_CALLS, "")
    return _Selection(int(value)) if value.isdigit() and _nvtx is not None else None


_selection = _from_env()


def selecting() -> bool:
    """Whether this process runs under `attnprof ncu` (calls after the warm-up steps may be selected)."""
    return _selection is not None


def enter(after_warmup: bool, resolver: SiteResolver | None = None) -> bool:
    """At an attention call's entry: open the `call` range if this is one of the calls to profile; start marking
    copies at the first of them, stop at the first call after the last."""
    sel = _selection
    if sel is None:
        return False
    with sel.lock:
        chosen = after_warmup and sel.left > 0
        if chosen:
            sel.left -= 1
    _mark_copies(sel, chosen, resolver)
    if chosen:
        _nvtx.push_range(message=RANGE, domain=DOMAIN)
    return chosen


def _mark_copies(sel: _Selection, chosen: bool, resolver: SiteResolver | None) -> None:
    lines = sel.copies
    if lines is not None and lines.pending:
        lines.retry()
    if chosen and lines is None and resolver is not None and not sel.copies_done:
        lines = sel.copies = SourceLines(resolver)
        lines.mode = _CopyMarks(resolver)
        lines.push()
    elif not chosen and lines is not None and not sel.copies_done:
        sel.copies_done = True
        lines.pop()  # off the stack now, or at a later call that finds it on top


def exit(opened: bool) -> None:
    """At the call's exit (or abort): close the range `enter` opened."""
    if opened:
        _nvtx.pop_range(domain=DOMAIN)


def cleanup() -> None:
    """The run is over: the copy marks off the stack if they can be, and has_torch_function torch's own again."""
    sel = _selection
    if sel is not None and sel.copies is not None:
        if not sel.copies_done:
            sel.copies_done = True
            sel.copies.pop()
        sel.copies.cleanup()
