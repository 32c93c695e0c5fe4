"""libkineto (torch.profiler's engine) prints `USDT:... profiler_start` / `profiler_stop` (and STAGE lines) on
stderr at every profiler session, whatever its log level up to 5; KINETO_LOG_LEVEL=6 silences them. libkineto reads
the variable once, when the process's first profiler session initialises it, so it is set only around attnprof's
own profiler starts and the user's environment is left as it was; a level the user set is kept."""
from __future__ import annotations

import os
from contextlib import contextmanager

LOG_LEVEL_VAR = "KINETO_LOG_LEVEL"
QUIET_LEVEL = "6"  # above USDT (5), STAGE (4) and ERROR (3)


@contextmanager
def quiet_kineto():
    """Around a profiler's start: libkineto's per-session lines silenced, unless the user chose a level."""
    if LOG_LEVEL_VAR in os.environ:
        yield
        return
    os.environ[LOG_LEVEL_VAR] = QUIET_LEVEL
    try:
        yield
    finally:
        os.environ.pop(LOG_LEVEL_VAR, None)
