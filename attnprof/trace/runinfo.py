"""What `attnprof trace` knew at run time and a trace file cannot say: the run's `runinfo.json`.

Capture writes it beside the profiler trace; analysis reads it to join each attnprof range (`#<id>` in its name)
with the call's arguments, and to take each site's true (unprofiled) time. A trace analysed without it (someone
else's torch.profiler file) still gets the full split, only without true times and argument details.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec

from attnprof.files import atomic_write

RUNINFO_FILE = "runinfo.json"
RUNINFO_VERSION = 1

#: Name of every attnprof range, identical in torch.profiler and (domain `attnprof`) in Nsight Systems.
RANGE_PREFIX = "attnprof:"
RANGE_RE = re.compile(r"^attnprof:(?P<op>\S+) (?P<site>.+) #(?P<id>\d+)$")
#: Range put around a layout-prep torch call made from user code during profiled steps, to name its source line:
#: `attnprof.src:<site> in=<hex> #<n>`: the storage the call reads, and the copy's number, the key of the storage
#: it wrote in `RunInfo.copy_writes` (known only once it ran). Older runs have neither or only `in=`.
SOURCE_PREFIX = "attnprof.src:"
SOURCE_STORAGE = "in="
SOURCE_NUMBER = "#"
# DOTALL: it matches any name, a newline in it included (a site's file name may hold one).
_SOURCE_RE = re.compile(
    rf"^(?P<site>.*?)(?: {SOURCE_STORAGE}(?P<read>[0-9a-f]+))?(?: {SOURCE_NUMBER}(?P<number>\d+))?$", re.DOTALL)


class SourceRange(NamedTuple):
    site: str
    read: int | None  # address of the storage the copy read
    number: int | None  # the copy's key in RunInfo.copy_writes


def parse_source_range(name: str) -> SourceRange:
    """(site, storage read, copy number) of an `attnprof.src:` range name; the site as the user's file names it."""
    m = _SOURCE_RE.match(name[len(SOURCE_PREFIX):])
    assert m is not None, "the pattern matches any text"
    read, number = m["read"], m["number"]
    return SourceRange(unescape_name(m["site"]), int(read, 16) if read else None, int(number) if number else None)


def ascii_name(text: str) -> str:
    """torch.profiler drops ranges whose names are not ASCII from its trace: escape anything else, as XML character
    references (`sïte.py` -> `s&#239;te.py`; `&` itself -> `&amp;`), which Kineto's JSON keeps as they are (it
    turns backslashes into slashes) and `unescape_name` reverses exactly."""
    return text.replace("&", "&amp;").encode("ascii", "xmlcharrefreplace").decode("ascii")


def unescape_name(text: str) -> str:
    """The text `ascii_name` escaped (a site read back from a range name)."""
    return html.unescape(text) if "&" in text else text


def range_name(op: str, site: str, call_id: int) -> str:
    return ascii_name(f"{RANGE_PREFIX}{op} {site} #{call_id}")


@dataclass
class TensorInfo:
    shape: list[int]
    stride: list[int]
    dtype: str  # torch dtype name without "torch.", e.g. "float16"
    device: str  # "cuda:0", "cpu"
    storage: int | None = None  # address of the memory it lives in, shared by its views


@dataclass
class CallInfo:
    """One wrapped attention call that ran inside the profiled window."""

    id: int
    op: str  # short entry-point name, e.g. "sdpa", "flash_attn_func", "fa3.flash_attn_func"
    library: str  # "torch", "flash_attn", "flash_attn_interface" (FA3), "flash_attn.cute" (FA4), "xformers"
    site: str  # "path/file.py:42" of the first frame outside torch/attnprof/attention libraries
    function: str  # function enclosing the site
    step: int
    range_name: str
    layout: str  # BHLD | BLHD | qkvpacked | kvpacked | varlen | varlen-qkvpacked | varlen-kvpacked | kvcache | BLE
    tensors: dict[str, TensorInfo] = field(default_factory=dict)  # q, k, v, qkv, kv, mask, out, ...
    batch: int | None = None
    heads_q: int | None = None
    heads_kv: int | None = None
    seqlen_q: int | None = None
    seqlen_k: int | None = None
    head_dim: int | None = None
    head_dim_v: int | None = None
    gqa_ratio: float | None = None
    causal: bool | None = None
    dropout_p: float = 0.0
    scale: float | None = None
    mask: str | None = None  # "bool[1, 1, 256, 256]" or None
    extra: dict[str, str] = field(default_factory=dict)  # window_size, softcap, ... as text
    caller: str | None = None  # the function that called `function` (None at module level)
    module: str | None = None  # dotted path of the nn.Module running the call in its model ("" = the model itself)
    module_class: str | None = None  # that module's class name


@dataclass
class SiteTiming:
    """End-to-end time of one call site and phase, measured around the call with CUDA events (host clock on CPU)."""

    site: str
    op: str
    phase: str  # "fwd" | "bwd"
    clock: str  # "cuda_event" | "host"
    true_us: list[float] = field(default_factory=list)  # unprofiled calls after warm-up, before the profiled window
    profiled_us: list[float] = field(default_factory=list)  # the same measurement inside the profiled window
    after_us: list[float] = field(default_factory=list)  # and after it (the profiler can leave the process slower)
    warmup_calls: int = 0  # calls not timed: warm-up steps, and the step right after the profiled window


@dataclass
class StepInfo:
    unit: str  # "optimizer" | "iteration" | "call": what one step is
    warmup: int
    timed: int
    active: int
    seen: int  # steps the script ran
    profiled: list[int] = field(default_factory=list)  # [first, last] step inside the profiler, empty if none
    profiled_calls: int = 0
    stopped_early: str | None = None  # why the profiled window was cut short (call cap reached, script ended)
    boundary: str | None = None  # what one step was: "one optimizer step", "one forward of GPT", "one attention call"
    first_timed_call: int | None = None  # id of the first call after warm-up: earlier ones are not representative


@dataclass
class RunInfo:
    version: int
    attnprof_version: str
    torch_version: str
    cuda_version: str | None
    device: str  # "NVIDIA H100 80GB HBM3" or "cpu"
    device_capability: str | None  # "9.0"
    hostname: str
    pid: int
    command: list[str]  # what the user ran after `attnprof trace`
    started_at: str  # ISO 8601
    trace_files: list[str]
    steps: StepInfo
    calls: list[CallInfo] = field(default_factory=list)
    sites: list[SiteTiming] = field(default_factory=list)
    exit_code: int = 0
    outcome: str = "completed"  # completed | exited | raised | interrupted (| running: the process never finished)
    note: str | None = None
    #: copy number (the `#<n>` of an `attnprof.src:` range) -> address of the storage that copy wrote
    copy_writes: dict[int, int] = field(default_factory=dict)
    rank: int | None = None  # under torchrun: this process's rank (RANK) and the job's WORLD_SIZE
    world_size: int | None = None


def runinfo_name(rank: int | None) -> str:
    """`runinfo.json`, or `runinfo.rank<N>.json` for one rank of a job: every rank writes its own, in one folder."""
    return RUNINFO_FILE if rank is None else f"runinfo.rank{rank}.json"


def write_runinfo(info: RunInfo, folder: Path) -> Path:
    """Atomically: a crash or a full disk leaves the previous runinfo file (or none), never half of one."""
    return atomic_write(Path(folder) / runinfo_name(info.rank), msgspec.json.format(msgspec.json.encode(info), indent=1))


def read_runinfo(folder: Path) -> RunInfo | None:
    path = Path(folder) / RUNINFO_FILE
    if not path.is_file():
        return None
    return msgspec.json.decode(path.read_bytes(), type=RunInfo)


_RANK_RUNINFO = re.compile(r"^runinfo\.rank(\d+)\.json$")


def read_rank_runinfos(folder: Path) -> dict[int, RunInfo]:
    """rank -> RunInfo of every `runinfo.rank<N>.json` in a job's run folder (empty for a one-process run)."""
    out = {}
    for path in sorted(Path(folder).iterdir()):
        m = _RANK_RUNINFO.match(path.name)
        if m and path.is_file():
            out[int(m.group(1))] = msgspec.json.decode(path.read_bytes(), type=RunInfo)
    return out
