"""Under `attnprof ncu`: which attention calls Nsight Compute profiles, marked with an NVTX range ncu filters on.

ncu replays each kernel it profiles (a dozen passes or more), so a whole run is far too slow. `attnprof ncu` sets
ATTNPROF_NCU_CALLS=<n> for the traced script; the session then opens a range `call` in the NVTX domain
`attnprof.ncu` around the first n attention calls after the warm-up steps, and ncu profiles only the kernels inside
one (`--nvtx-include attnprof.ncu@call/`). The call's own range (domain `attnprof`, `<op> <site> #<id>`) encloses
them too and names the call in ncu's report. Without the variable every function here is a no-op.
"""
from __future__ import annotations

import os
import threading

ENV_CALLS = "ATTNPROF_NCU_CALLS"
DOMAIN = "attnprof.ncu"
RANGE = "call"
#: ncu's filter for the selected calls (push/pop range `call` of domain `attnprof.ncu`).
NVTX_INCLUDE = f"{DOMAIN}@{RANGE}/"

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - `attnprof ncu` checks for it before it runs the script
    _nvtx = None


class _Selection:
    def __init__(self, calls: int):
        self.left = calls
        self.lock = threading.Lock()


def _from_env() -> _Selection | None:
    value = os.environ.get(ENV_CALLS, "")
    return _Selection(int(value)) if value.isdigit() and _nvtx is not None else None


_selection = _from_env()


def enter(after_warmup: bool) -> bool:
    """At an attention call's entry: open the `call` range if this is one of the calls to profile."""
    sel = _selection
    if sel is None or not after_warmup:
        return False
    with sel.lock:
        if sel.left <= 0:
            return False
        sel.left -= 1
    _nvtx.push_range(message=RANGE, domain=DOMAIN)
    return True


def exit(opened: bool) -> None:
    """At the call's exit (or abort): close the range `enter` opened."""
    if opened:
        _nvtx.pop_range(domain=DOMAIN)
