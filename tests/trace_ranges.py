"""The attnprof ranges of a traced run's torch.profiler trace, for the capture tests."""
from __future__ import annotations

import gzip
import json

from attnprof.trace.runinfo import SOURCE_PREFIX, parse_source_range


def trace_names(result) -> list[str]:
    """Names of the attnprof ranges in the run's trace, in time order; source-line ranges without the storage
    address their copy read (` in=<hex>`), so tests compare them by line."""
    (path,) = result.trace_files
    events = json.load(gzip.open(path))["traceEvents"]
    events = [e for e in events if e.get("ph") == "X" and e.get("name", "").startswith(("attnprof:", "attnprof."))]
    return [_by_line(e["name"]) for e in sorted(events, key=lambda e: e["ts"])]


def _by_line(name: str) -> str:
    return SOURCE_PREFIX + parse_source_range(name)[0] if name.startswith(SOURCE_PREFIX) else name
