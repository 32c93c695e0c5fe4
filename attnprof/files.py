"""The files attnprof reads and writes, for every stage, with one-line errors.

Reading: once, streaming (pipes and `<(zcat trace.gz)` work; nothing seeks), gunzipped when the content is gzip,
and capped while reading, so a gzip bomb or `/dev/zero` stops at the cap instead of filling memory.
Writing: atomically (a temporary name in the same folder, flushed to disk, then renamed), so a crash or a full disk
leaves the last good file or none, never a truncated one. Output paths are checked before any work.
"""
from __future__ import annotations

import errno
import glob
import os
import shutil
import stat
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import cast

from attnprof.errors import AttnprofError

#: Default cap on the (decompressed) size of one input file; `--max-trace-mb` raises it.
DEFAULT_MAX_INPUT_MB = 1024
_inflater: ModuleType = zlib
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error,)
try:  # ISA-L inflates gzip about 3 times as fast as zlib (a 1 GB trace: 0.8 s instead of 2.1 s), same interface
    from isal import isal_zlib

    _inflater, _INFLATE_ERRORS = isal_zlib, (zlib.error, cast(type[Exception], isal_zlib.error))
except ImportError:  # a platform without its wheels: zlib
    pass

MB = 1 << 20
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path, max_mb: float = DEFAULT_MAX_INPUT_MB) -> bytearray:
    """The file's content, gunzipped when it is gzip (told by content, not by name), read once from the start.

    Stops with an AttnprofError as soon as the (decompressed) content passes `max_mb`."""
    data = bytearray()
    try:
        for piece in read_pieces(path, max_mb):
            data += piece
    except MemoryError:
        raise _too_big(path, max_mb, " (out of memory while reading)") from None
    return data


def read_pieces(path: Path, max_mb: float = DEFAULT_MAX_INPUT_MB) -> Iterator[bytes]:
    """The file's content as read_bytes gives it, a piece (about a MB) at a time, so that a reader that decodes as it
    goes never holds the whole file; the same checks and one-line errors, raised when the piece that breaks them
    is reached."""
    limit = int(max_mb * MB)
    try:
        with open(path, "rb", buffering=0) as f:
            first = _read_some(f, 2)
            if first[:2] == _GZIP_MAGIC:
                yield from _gunzip(path, f, first, limit, max_mb)
                return
            info = os.fstat(f.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > limit:  # a plain file says its size: no need to read
                raise _too_big(path, max_mb, "")
            size = len(first)
            if first:
                yield first
            while size <= limit:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return
                size += len(chunk)
                yield chunk
            raise _too_big(path, max_mb, "")
    except OSError as e:
        raise AttnprofError(f"cannot read {path}: {e.strerror or e}") from None


def plain_size(path: Path, max_mb: float = DEFAULT_MAX_INPUT_MB) -> int | None:
    """The size of a regular file that is not gzipped (it can be read at any offset), None for anything else (a
    pipe, a gzip file, a file that cannot be read: `read_pieces` says why). Too big for the cap: AttnprofError."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # told before opening: opening a FIFO waits for (and steals) its writer
            return None
        with open(path, "rb", buffering=0) as f:
            if os.pread(f.fileno(), 2, 0) == _GZIP_MAGIC:
                return None
    except OSError:
        return None
    if info.st_size > int(max_mb * MB):
        raise _too_big(path, max_mb, "")
    return info.st_size


def _read_some(f, n: int) -> bytes:
    """At least n bytes unless the input ends first (a pipe hands out what it has)."""
    data = b""
    while len(data) < n:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        data += chunk
    return data


def _gunzip(path: Path, f, first: bytes, limit: int, max_mb: float) -> Iterator[bytes]:
    """Inflate while reading, a bounded piece at a time: a bomb is caught at the cap, never inflated whole."""
    size = 0
    d = _inflater.decompressobj(wbits=31)
    pending = first
    while True:
        if not pending:
            pending = f.read(_CHUNK)
            if not pending:
                if not d.eof:
                    raise AttnprofError(f"{path} is not a readable gzip file (it ends early)")
                return
        try:
            piece = d.decompress(pending, _CHUNK)
        except _INFLATE_ERRORS as e:
            raise AttnprofError(f"{path} is not a readable gzip file ({e})") from None
        size += len(piece)
        if size > limit:
            raise _too_big(path, max_mb, " decompressed")
        if piece:
            yield piece
        pending = d.unconsumed_tail
        if d.eof:  # a file may hold several gzip members one after the other
            pending = d.unused_data
            d = _inflater.decompressobj(wbits=31)
            if not pending:
                pending = f.read(_CHUNK)
                if not pending:
                    return


def _too_big(path: Path, max_mb: float, how: str) -> AttnprofError:
    return AttnprofError(f"{path} is larger than {max_mb:g} MB{how}: raise the cap with --max-trace-mb if it is "
                         "a real trace")


def is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def say(line: object, stream=None) -> None:
    """Print one of attnprof's own lines (stderr by default), unless the user's script closed that stream: python
    then ends quietly, and so does attnprof, instead of raising on a closed file."""
    stream = sys.stderr if stream is None else stream
    if stream is None or getattr(stream, "closed", False):
        return
    try:
        print(line, file=stream)
    except (OSError, ValueError):
        pass


def stream_open(stream) -> bool:
    return stream is not None and not getattr(stream, "closed", False)


# --- writing ------------------------------------------------------------------------------------------------------

Payload = bytes | bytearray | str | Callable[[object], None]


def atomic_write(path: Path, data: Payload) -> Path:
    """Write `data` (bytes, str as UTF-8, or a function that writes into a binary file object) to `path`: a temporary
    name in the same folder, flushed to disk, then renamed over `path`. On any failure the temporary file is removed
    and `path` is left as it was (the last good file, or none), and the OSError propagates."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_failure(path: Path, e: OSError) -> str:
    """One line for a write that failed: what is missing and why."""
    why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return f"could not write {path}: {why}"


def check_output_file(path: Path, inputs: Iterable[Path] = ()) -> Path:
    """Raise AttnprofError unless `path` can be written as a new or replaced file, and is none of `inputs`
    (no command writes over what it reads)."""
    path = Path(path)
    if path.is_dir():
        raise AttnprofError(f"{path} is a folder: give a file name (e.g. {path / 'dashboard.html'})")
    if path.exists() and not path.is_file():
        raise AttnprofError(f"{path} is not a regular file: give a file name to write")
    for item in inputs:
        if _same_file(path, Path(item)):
            raise AttnprofError(f"{path} is an input of this command: attnprof never writes over its input")
    check_writable_folder(path.parent, f"cannot write {path}")
    return path


def check_writable_folder(folder: Path, what: str) -> None:
    """Raise AttnprofError unless `folder` is an existing folder new files can be created in."""
    folder = Path(folder)
    if not folder.is_dir():
        existing = next((p for p in folder.parents if p.exists()), None)
        if folder.exists() or (existing is not None and not existing.is_dir()):
            raise AttnprofError(f"{what}: {folder if folder.exists() else existing} is a file, not a folder")
        raise AttnprofError(f"{what}: no folder {folder}")
    if not _writable(folder):
        raise AttnprofError(f"{what}: {folder} is not writable")


def check_new_folder_place(folder: Path, what: str) -> None:
    """Raise AttnprofError unless `folder` could be created: its first existing ancestor is a writable folder."""
    for parent in (Path(folder), *Path(folder).parents):
        if parent.exists():
            if not parent.is_dir():
                raise AttnprofError(f"{what}: {parent} is a file, not a folder")
            if not _writable(parent):
                raise AttnprofError(f"{what}: {parent} is not writable")
            return


def check_run_folder_target(out: Path | None, root: Path, empty_ok: bool = False) -> None:
    """Before any work: the run folder can be created where asked: `out` new (or, with `empty_ok`, an empty
    folder), else under `root`, a folder or a place one can be made."""
    if out is not None:
        out = Path(out)
        if out.exists() and not (empty_ok and out.is_dir() and not any(out.iterdir())):
            raise AttnprofError(f"{out} already exists: choose another --out or remove it")
        check_new_folder_place(out, f"cannot create --out {out}")
    else:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise AttnprofError(f"--root {root} is a file, not a folder")
        check_new_folder_place(root, f"cannot create run folders under --root {root}")


def now() -> datetime:
    """The local time a run starts: its folder's name and runinfo's `started_at` (one clock for every command)."""
    return datetime.now()


def run_folder_stem(target: str, is_module: bool) -> str:
    """The name a run folder starts with: `train` for `train.py` (or `tools/train`), `train` for `-m pkg.train`."""
    if is_module:
        return target.rpartition(".")[2] or target
    return Path(target.rstrip("/\\")).stem or "script"


def create_run_folder(out: Path | None, root: Path, stem: str, when: datetime | None = None,
                      empty_ok: bool = False) -> Path:
    """The run folder, created here: `out` when given (a new folder; with `empty_ok`, an existing empty one will
    do), else `<root>/<stem>-<YYYYmmdd-HHMMSS>/` at `when` (default: now), or `-2`, `-3`, ... after it when that
    exists: a run never writes into another's folder. AttnprofError when `out` is taken; OSError when the folder
    cannot be made."""
    if out is not None:
        out = Path(out)
        if out.exists() and not (empty_ok and out.is_dir() and not any(out.iterdir())):
            raise AttnprofError(f"{out} already exists: choose another --out or remove it")
        try:
            out.mkdir(parents=True, exist_ok=empty_ok)
        except FileExistsError:  # made by someone else since the check
            raise AttnprofError(f"{out} already exists: choose another --out or remove it") from None
        return out
    base = f"{stem}-{(when or now()):%Y%m%d-%H%M%S}"
    Path(root).mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        folder = Path(root) / (base if n == 1 else f"{base}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


def _writable(folder: Path) -> bool:
    """os.access answers for the user (root may write into mode 555 folders) and sees read-only mounts."""
    return os.access(folder, os.W_OK | os.X_OK)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


# --- external tools -----------------------------------------------------------------------------------------------


def find_executable(tool: str, search: Iterable[str], where: str, explicit: str | None = None) -> str:
    """`explicit` (checked), else `tool` on PATH, else the newest match of the `search` globs (version folders sort
    last); AttnprofError naming `where` it looked and the `--<tool>` option otherwise."""
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise AttnprofError(f"--{tool} {explicit}: not an executable file")
        return explicit
    found = shutil.which(tool)
    if found:
        return found
    for pattern in search:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    raise AttnprofError(f"{tool} not found on PATH or in the usual {where} folders: pass --{tool} PATH")
