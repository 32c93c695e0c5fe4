"""The one error type users see as a single line (`attnprof: error: ...`) with a non-zero exit."""


class AttnprofError(Exception):
    """Bad input or an impossible request; the CLI prints `attnprof: error: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


#: Longest reason kept whole; longer ones (dispatcher errors list every dispatch key) keep their first sentence.
MAX_REASON_LINE = 240


def short_line(text: object) -> str:
    """The first non-blank line of `text`; a long one cut after its first sentence."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    if len(line) > MAX_REASON_LINE and ". " in line:
        line = line[:line.index(". ") + 1]
    return line


def failure_reason(e: BaseException) -> str:
    """Why something failed, in one line: `<ExceptionType>: <short_line of its message>`."""
    text = short_line(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
