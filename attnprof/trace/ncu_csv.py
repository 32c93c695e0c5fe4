"""Nsight Compute's raw CSV (`ncu --import X.ncu-rep --csv --page raw`): one typed record per profiled kernel.

Row 0 names the metrics, row 1 gives their units (us, Mbyte, Kbyte/block, %, ...), then one row per kernel with
numbers as ncu prints them ("1,024", "62.944000"). Values are normalised here: times to µs, sizes to bytes,
percentages as they are. The column `thread Domain:Push/Pop_Range:...` holds the NVTX push/pop ranges around the
kernel, e.g. `659  "attnprof:sdpa model.py:5 #3:none:none:RGB:0xff:REGISTERED:sdpa model.py:5 #3"`: attnprof's
range (domain `attnprof`) names the call's op, site and id (`#3`). Reading the CSV needs neither ncu nor its
Python module, so `attnprof analyze` works on any machine.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from attnprof.errors import AttnprofError
from attnprof.files import read_bytes

#: What `attnprof ncu` writes beside the report: the raw page, every metric of every kernel.
NCU_CSV_SUFFIX = ".raw.csv"
NCU_REPORT_SUFFIX = ".ncu-rep"
NVTX_COLUMN_PREFIX = "thread Domain:Push/Pop_Range"

#: attnprof's range inside the NVTX column: `attnprof:<op> <site> #<id>:` then ncu's payload/color/message fields.
_CALL_RANGE = re.compile(r'"attnprof:(?P<op>\S+) (?P<site>.+?) #(?P<id>\d+):')
#: A layout copy `attnprof ncu` marked (domain `attnprof.copy`): `<source line> in=<storage>`, ncu's fields, the
#: message again.
_COPY_RANGE = re.compile(r'"attnprof\.copy:(?P<name>[^"]*?)(?::[^:"]*){5}:(?P=name)"')

_SCALE = {  # unit -> factor to the base unit (µs for times, bytes for sizes)
    "ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6,
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
}

#: The metrics attnprof reads (ncu's names); a CSV made with fewer sections leaves the missing ones None.
METRICS = {
    "duration_us": "gpu__time_duration.sum",
    "sm_pct": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "memory_pct": "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
    "dram_pct": "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
    "achieved_occupancy_pct": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "theoretical_occupancy_pct": "sm__maximum_warps_per_active_cycle_pct",
    "warps_per_sm": "sm__maximum_warps_avg_per_active_cycle",
    "max_warps_per_sm": "device__attribute_max_warps_per_multiprocessor",
    "registers_per_thread": "launch__registers_per_thread",
    "shared_mem_per_block": "launch__shared_mem_per_block",
    "grid_size": "launch__grid_size",
    "block_size": "launch__block_size",
    "waves_per_sm": "launch__waves_per_multiprocessor",
    "gmma_inst": "sm__inst_executed_pipe_tensor_op_gmma.sum",
    "hmma_inst": "sm__inst_executed_pipe_tensor_op_hmma.sum",
    "tensor_pipe_pct": "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
    "dram_read_bytes": "dram__bytes_read.sum",
    "dram_write_bytes": "dram__bytes_write.sum",
}
#: Occupancy limits (blocks per SM each resource allows): the smallest is what holds occupancy down.
OCCUPANCY_LIMITS = {
    "registers": "launch__occupancy_limit_registers",
    "shared memory": "launch__occupancy_limit_shared_mem",
    "warps": "launch__occupancy_limit_warps",
    "blocks": "launch__occupancy_limit_blocks",
    "barriers": "launch__occupancy_limit_barriers",
}


@dataclass
class NcuKernel:
    """One kernel ncu profiled, with the attnprof call whose NVTX range enclosed it (None outside any)."""

    index: int  # ncu's ID: launch order among the profiled kernels
    name: str  # as ncu prints it (demangled, with template arguments)
    call_id: int | None
    op: str | None  # the call's entry point, from its range name
    site: str | None
    device: int | None
    stream: int | None
    copy_site: str | None = None  # a layout copy's source line (`attnprof ncu` marks them), outside any call
    duration_us: float | None = None
    sm_pct: float | None = None  # SM throughput, % of peak (speed of light)
    memory_pct: float | None = None  # the busiest memory unit (L1, L2, DRAM), % of peak
    dram_pct: float | None = None  # DRAM throughput, % of peak
    achieved_occupancy_pct: float | None = None
    theoretical_occupancy_pct: float | None = None
    warps_per_sm: float | None = None  # theoretical active warps per SM
    max_warps_per_sm: float | None = None
    registers_per_thread: float | None = None
    shared_mem_per_block: float | None = None  # bytes
    grid_size: float | None = None
    block_size: float | None = None
    waves_per_sm: float | None = None
    gmma_inst: float | None = None  # wgmma (Hopper's warpgroup MMA) instructions
    hmma_inst: float | None = None  # every instruction of the HMMA tensor pipe: mma.sync, and wgmma on Hopper
    tensor_pipe_pct: float | None = None  # tensor pipe active, % of peak over active cycles
    dram_read_bytes: float | None = None
    dram_write_bytes: float | None = None
    occupancy_limits: dict[str, float] = field(default_factory=dict)  # resource -> blocks per SM it allows


@dataclass
class NcuReport:
    source: str
    kernels: list[NcuKernel]
    metrics: list[str]  # every metric column of the CSV (what the chosen sections collected)


def ncu_csv_in(folder: Path) -> Path | None:
    """The raw CSV export of a run folder (`attnprof ncu` writes report.raw.csv), if it holds one."""
    found = sorted(p for p in Path(folder).glob("*" + NCU_CSV_SUFFIX) if p.is_file())
    found += sorted(p for p in Path(folder).glob("*" + NCU_CSV_SUFFIX + ".gz") if p.is_file())
    return found[0] if found else None


def ncu_report_in(folder: Path) -> Path | None:
    """The run folder's Nsight Compute report (.ncu-rep), if it holds one (capture/nsight.py exports its CSV)."""
    reports = sorted(p for p in Path(folder).glob("*" + NCU_REPORT_SUFFIX) if p.is_file())
    return reports[0] if reports else None


def is_ncu_csv(path: Path) -> bool:
    return Path(path).name.endswith((NCU_CSV_SUFFIX, NCU_CSV_SUFFIX + ".gz"))


def load_ncu_csv(path: Path) -> NcuReport:
    try:
        text = read_bytes(Path(path)).decode("utf-8", errors="replace")
    except OSError as e:
        raise AttnprofError(f"cannot read {path}: {e.strerror or e}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2 or "ID" not in rows[0] or "Kernel Name" not in rows[0]:
        raise AttnprofError(f"{path} is not Nsight Compute's raw CSV (ncu --import X.ncu-rep --csv --page raw)")
    header, units = rows[0], rows[1]
    col = {name: i for i, name in enumerate(header)}
    nvtx = next((i for i, name in enumerate(header) if name.startswith(NVTX_COLUMN_PREFIX)), None)
    kernels = []
    for n, row in enumerate(rows[2:], start=3):
        if len(row) != len(header):
            raise AttnprofError(f"{path}: row {n} has {len(row)} cells, the header {len(header)}")

        def value(metric: str, row: list[str] = row) -> float | None:
            i = col.get(metric)
            return None if i is None else _number(row[i], units[i])

        call = _CALL_RANGE.findall(row[nvtx]) if nvtx is not None else []
        op, site, call_id = call[-1] if call else (None, None, None)  # the innermost attnprof range
        copy = _COPY_RANGE.search(row[nvtx]) if nvtx is not None else None
        k = NcuKernel(index=int(_number(row[col["ID"]], "") or 0), name=row[col["Kernel Name"]],
                      call_id=int(call_id) if call_id else None, op=op, site=site,
                      device=_int(value("Device")) if "Device" in col else None,
                      stream=_int(value("Stream")) if "Stream" in col else None,
                      copy_site=copy.group("name").rsplit(" in=", 1)[0] if copy else None,
                      occupancy_limits={what: v for what, metric in OCCUPANCY_LIMITS.items()
                                        if (v := value(metric)) is not None},
                      **{attr: value(metric) for attr, metric in METRICS.items()})
        kernels.append(k)
    metrics = [h for h in header if "__" in h]
    return NcuReport(source=str(path), kernels=kernels, metrics=metrics)


def _number(cell: str, unit: str) -> float | None:
    """ncu's printed number in the base unit: thousands separators dropped, scaled by the row-1 unit."""
    cell = cell.strip().replace(",", "")
    if not cell or cell in ("n/a", "N/A"):
        return None
    try:
        v = float(cell)
    except ValueError:
        return None
    base = unit.split("/", 1)[0]  # "Kbyte/block" -> Kbyte
    return v * _SCALE.get(base, 1.0)


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)
