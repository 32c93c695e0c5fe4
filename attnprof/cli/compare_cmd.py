"""`attnprof compare --shape B,H,L,D ...`: every attention backend on this machine, same shapes, side by side."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="time every attention backend here (SDPA, FlashAttention, xformers...) on the same shapes",
        description=(
            "Times SDPA (auto and each forced backend), PyTorch's FlashAttention-2, flash-attn 2, FA3, FA4 and "
            "xformers when importable, each (B, L, H, D) backend both on native inputs and through the seed's "
            "transpose/contiguous wrapper; profiles one call of each and splits it into compute / copy / launch / "
            "other; reports TFLOP/s, GB/s and % of this device's measured peak. Writes a run folder "
            "(compare.json and one trace per variant)."
        ),
    )
    p.add_argument("--shape", action="append", type=_shape, metavar="B,H,L,D",
                   help="batch, heads, sequence length, head dim; B,Hq,Hkv,L,D for GQA; repeat for several "
                        "(default: 12,64,256,64 on CUDA, 2,4,128,32 on CPU)")
    p.add_argument("--dtype", action="append", choices=sorted(_DTYPES),
                   help="repeat for several (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--causal", action="store_true", help="causal mask")
    p.add_argument("--backward", action="store_true", help="also time and split the backward pass")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when there is one")
    p.add_argument("--backends", type=lambda s: [b.strip() for b in s.split(",") if b.strip()], metavar="A,B",
                   help="only these backends (default: all): sdpa-auto, sdpa-flash, sdpa-efficient, sdpa-cudnn, "
                        "sdpa-math, sdpa-blhd, aten-flash, flash-attn2, fa3, fa4, xformers")
    p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed repetitions first (default: 10)")
    p.add_argument("--reps", type=int, default=100, metavar="N", help="timed repetitions (default: 100)")
    p.add_argument("--out", type=Path, help="run folder to create (default: <root>/compare-<timestamp>/)")
    p.add_argument("--root", type=Path, default=Path("traces"), help="where run folders go (default: traces/)")
    p.add_argument("--remeasure", action="store_true",
                   help="measure this device's copy and matmul ceilings again instead of using the cached ones")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of the table")
    p.set_defaults(run=run)


def _shape(text: str) -> tuple[int, int, int, int, int]:
    """(B, Hq, Hkv, L, D) from B,H,L,D or B,Hq,Hkv,L,D."""
    try:
        dims = [int(x) for x in text.split(",")]
    except ValueError:
        dims = []
    if len(dims) not in (4, 5) or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected B,H,L,D or B,Hq,Hkv,L,D (positive integers)")
    if len(dims) == 4:
        b, h, seqlen, d = dims
        return b, h, h, seqlen, d
    b, hq, hkv, seqlen, d = dims
    if hq % hkv:
        raise argparse.ArgumentTypeError(f"{text!r}: query heads ({hq}) must be a multiple of kv heads ({hkv})")
    return b, hq, hkv, seqlen, d


def _progress(message: str) -> None:
    print(f"attnprof compare: {message}", file=sys.stderr, flush=True)


@contextmanager
def _progress_bar():
    """A rich progress bar on stderr, gone when done; on a stderr that is no terminal, nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("attnprof compare"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("starting", total=None)

        def step(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield step


def run(ns: argparse.Namespace) -> int:
    from attnprof.files import check_run_folder_target

    check_run_folder_target(ns.out, ns.root, empty_ok=True)  # before importing torch and measuring anything

    import msgspec
    import torch

    from attnprof.analysis import analyze
    from attnprof.analysis.compare import compare_rows
    from attnprof.capture.ceilings import device_ceilings, device_name
    from attnprof.capture.compare import CompareOptions, run_compare
    from attnprof.errors import AttnprofError
    from attnprof.files import atomic_write, write_failure
    from attnprof.render.compare_table import compare_document, print_compare, rows_json
    from attnprof.render.console import table_console
    from attnprof.trace.ceilings import Ceilings, load_ceilings
    from attnprof.trace.compare import COMPARE_FILE, CompareCase
    from attnprof.trace.load import load_trace

    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shapes = ns.shape or [_shape("12,64,256,64" if device == "cuda" else "2,4,128,32")]
    dtypes = [_DTYPES[d] for d in (ns.dtype or ["fp16" if device == "cuda" else "fp32"])]
    cases = [CompareCase(batch=b, heads_q=hq, heads_kv=hkv, seqlen=seqlen, head_dim=d, dtype=dtype,
                         causal=ns.causal, backward=ns.backward)
             for (b, hq, hkv, seqlen, d) in shapes for dtype in dtypes]
    options = CompareOptions(cases=cases, device=device, warmup=ns.warmup, reps=ns.reps, backends=ns.backends,
                             out=ns.out, root=ns.root, command=["attnprof", *sys.argv[1:]])

    with _progress_bar() as step:
        result = run_compare(options, progress=step)
    ceilings: Ceilings | None
    if ns.remeasure or any(m.unsupported is None for m in result.measurements):
        ceilings = device_ceilings(torch.device(device), remeasure=ns.remeasure, progress=_progress)
    else:  # nothing ran: no percentage to divide, so no minute spent measuring the device
        ceilings = load_ceilings(device_name(torch.device(device)))

    folder = Path(result.folder)
    calls_by_trace = {}
    for file in sorted({m.trace for m in result.measurements if m.trace}):
        calls_by_trace[file] = analyze([load_trace(folder / file)], None, file).calls
    rows, notes = compare_rows(result, calls_by_trace, ceilings)

    document = compare_document(result, rows, ceilings, notes)
    try:
        atomic_write(folder / COMPARE_FILE, msgspec.json.format(msgspec.json.encode(document), indent=1) + b"\n")
    except OSError as e:
        raise AttnprofError(f"{write_failure(folder / COMPARE_FILE, e)} (traces kept in {folder})") from None
    if ns.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(rows_json(rows)), indent=1).decode() + "\n")
    else:
        console = table_console()
        print_compare(console, result, rows, ceilings, notes)
    return 0
