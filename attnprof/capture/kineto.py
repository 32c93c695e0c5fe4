"""libkineto (torch.profiler's engine): its per-session lines kept off stderr, and its trace exported.

libkineto prints `USDT:... profiler_start` / `profiler_stop` (and STAGE lines) on
stderr at every profiler session, whatever its log level up to 5; KINETO_LOG_LEVEL=6 silences them. libkineto reads
the variable once, when the process's first profiler session initialises it, so it is set only around attnprof's
own profiler starts and the user's environment is left as it was; a level the user set is kept."""
from __future__ import annotations

import codecs
import gzip
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from attnprof.files import atomic_write

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


def export_trace(prof: Any, path: Path) -> None:
    """`prof.export_chrome_trace` to `path` (gzipped when it ends in .gz), repaired and written atomically: every
    profiler trace attnprof writes goes through here. torch writes names from its Python tracer as it has them, and a
    code object freed inside the profiled span (a module imported there, say) leaves bytes that are not UTF-8
    (pytorch#113564): they become U+FFFD instead of making the whole file unreadable. A full disk or a kill leaves no
    half trace that would make the folder unreadable."""
    path = Path(path)
    plain_name = path.name.removesuffix(".gz")
    raw = path.with_name(f".{plain_name}.{os.getpid()}.part")

    def repair_into(dst_file) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        zipped = path.name.endswith(".gz")
        with open(raw, "rb") as src, (gzip.GzipFile(filename=plain_name, mode="wb", fileobj=dst_file, compresslevel=6)
                                      if zipped else nullcontext(dst_file)) as dst:
            for chunk in iter(lambda: src.read(1 << 22), b""):
                dst.write(decoder.decode(chunk).encode("utf-8"))
            dst.write(decoder.decode(b"", final=True).encode("utf-8"))

    try:
        prof.export_chrome_trace(str(raw))
        atomic_write(path, repair_into)
    finally:
        raw.unlink(missing_ok=True)
