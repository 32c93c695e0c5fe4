"""attnprof in every rank of a torchrun job: one run folder for the job, one trace and runinfo per rank.

Every rank runs `attnprof trace` before the script has made its process group, so the ranks cannot agree through
it. torchrun's agent already holds a TCPStore at MASTER_ADDR:MASTER_PORT for the whole job (the one `env://`
process groups join): rank 0 names the folder and puts it there, the others read it (and create it on their own
node when it has no shared filesystem). Keys live under the run id and restart count, so an elastic restart gets a
folder of its own. At the end every rank says it is done and rank 0, once all are, analyses the job.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from attnprof.errors import AttnprofError
from attnprof.files import create_run_folder

#: How long a rank waits for rank 0's folder, and rank 0 for the other ranks to finish their traces.
FOLDER_TIMEOUT_S = 300.0
DONE_TIMEOUT_S = 600.0

#: torchrun options `attnprof trace` passes through when it starts torchrun itself: option -> takes a value.
TORCHRUN_OPTIONS = {
    "--nproc-per-node": True, "--nnodes": True, "--node-rank": True, "--master-addr": True, "--master-port": True,
    "--rdzv-backend": True, "--rdzv-endpoint": True, "--rdzv-id": True, "--rdzv-conf": True, "--max-restarts": True,
    "--monitor-interval": True, "--local-addr": True, "--standalone": False,
}


@dataclass
class Job:
    """This process's place in a torchrun job, read from the environment torchrun gives its workers."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: int | None
    run_id: str | None  # TORCHELASTIC_RUN_ID: None when the process was not started by torchrun
    restart: int
    _store: Any = None

    @property
    def prefix(self) -> str:
        return f"attnprof/{self.run_id}/{self.restart}"

    def store(self):
        """A client of torchrun's TCPStore; None when not under torchrun (another launcher's MASTER_PORT is the
        script's own process group, which does not exist yet) or when it cannot be reached."""
        if self._store is None and self.run_id and self.master_addr and self.master_port:
            import torch.distributed as dist

            try:
                self._store = dist.TCPStore(self.master_addr, self.master_port, is_master=False,
                                            timeout=timedelta(seconds=FOLDER_TIMEOUT_S))
            except Exception as e:  # noqa: BLE001 - attnprof carries on without it
                print(f"attnprof: rank {self.rank}: no torchrun store at {self.master_addr}:{self.master_port} "
                      f"({type(e).__name__}): a run folder of its own", file=sys.stderr)
                self.run_id = None
        return self._store

    def agree_folder(self, make: Callable[[], Path], root: Path, stem: str, out: Path | None) -> Path:
        """Rank 0 makes the folder (`make`: the one-process naming) and publishes it; the others read it."""
        store = self.store()
        if store is None:
            return self._own_folder(root, stem, out)
        key = f"{self.prefix}/folder"
        if self.rank == 0:
            folder = make()
            store.set(key, str(folder))
            return folder
        try:
            store.wait([key], timedelta(seconds=FOLDER_TIMEOUT_S))
            folder = Path(store.get(key).decode())
        except Exception as e:  # noqa: BLE001 - torch's store errors: a one-line error, not a traceback
            raise AttnprofError(f"rank {self.rank}: rank 0 named no run folder within {FOLDER_TIMEOUT_S:.0f} s "
                                f"({type(e).__name__})") from None
        folder.mkdir(parents=True, exist_ok=True)  # on another node without a shared filesystem
        return folder

    def _own_folder(self, root: Path, stem: str, out: Path | None) -> Path:
        """No store to agree through: a given --out is shared (every rank writes its own files there), else each
        rank gets a folder of its own (analyse them together with `attnprof analyze` on a folder of the traces)."""
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            return Path(out)
        return create_run_folder(None, Path(root), f"{stem}-rank{self.rank}")

    def finished(self) -> None:
        store = self.store()
        if store is not None:
            store.set(f"{self.prefix}/done/{self.rank}", "1")

    def wait_for_ranks(self, timeout_s: float = DONE_TIMEOUT_S) -> list[int]:
        """Rank 0: wait until every rank has written its trace and runinfo; returns the ranks that never said so."""
        store = self.store()
        if store is None or self.world_size <= 1:
            return []
        keys = [f"{self.prefix}/done/{r}" for r in range(self.world_size)]
        try:
            store.wait(keys, timedelta(seconds=timeout_s))
            return []
        except Exception:  # noqa: BLE001 - a timeout: analyse what is there
            return [r for r, k in enumerate(keys) if not store.check([k])]


_job: Job | None = None
_read = False


def current_job() -> Job | None:
    """The torchrun job this process is a rank of (RANK and WORLD_SIZE set), else None; one per process."""
    global _job, _read
    if not _read:
        _read = True
        env = os.environ
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        except (KeyError, ValueError):
            return None
        port = env.get("MASTER_PORT", "")
        _job = Job(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", "0") or 0),
                   master_addr=env.get("MASTER_ADDR") or None, master_port=int(port) if port.isdigit() else None,
                   run_id=env.get("TORCHELASTIC_RUN_ID") or None,
                   restart=int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0))
    return _job


def worker_name(job: Job) -> str:
    """`rank<N>_<host>_<pid>`: torch-tb-profiler takes each file's worker from its name, so every rank is a worker,
    sorted by rank; the trace's own `distributedInfo` records the rank as well."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return f"rank{job.rank}_{host}_{os.getpid()}"


def torchrun_command(torchrun_args: list[str], attnprof_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run <torchrun options> -m attnprof trace <attnprof options> target args`."""
    return [sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "attnprof", "trace", *attnprof_args]
