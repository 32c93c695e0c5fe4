"""Reading the files users hand attnprof, for every stage: gzipped or not, with one-line errors."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

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
