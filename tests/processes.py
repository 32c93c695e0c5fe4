"""Child processes the tests send signals to."""
from __future__ import annotations

import signal


def sigint_as_in_a_terminal() -> None:
    """Popen's preexec_fn: Ctrl-C (SIGINT) delivered as in a terminal. A shell starts background jobs with SIGINT
    ignored (`nohup`, `cmd &`), every child inherits that, and Python then never raises KeyboardInterrupt: the
    Ctrl-C tests would test nothing in a CI job started that way."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
