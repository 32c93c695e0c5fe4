"""The one error type users see as a single line (`attnprof: error: ...`) with a non-zero exit."""


class AttnprofError(Exception):
    """Bad input or an impossible request; the CLI prints `attnprof: error: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
