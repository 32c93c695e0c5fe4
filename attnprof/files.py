"""Reading the files users hand attnprof, for every stage: gzipped or not, with one-line errors; writing files
atomically."""
from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

from attnprof.errors import AttnprofError


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (told by content, not by name)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AttnprofError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise AttnprofError(f"{path} is not a readable gzip file ({e})") from None
    return data


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """`write(f)` into a temporary file beside `path`, then renamed over it: a crash or a full disk leaves the last
    good file or none, never half of one. The temporary file is removed on any failure, which is raised."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would have made it (mkstemp's are private to the user)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
