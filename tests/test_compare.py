"""`attnprof compare` on CPU: every backend and variant is a row, the CPU ones timed and split, the rest with reasons."""
import argparse
import contextlib
import io
import json
import os

import pytest
import torch
from trace_truth import events

from attnprof.analysis.roofline import AttentionShape, shape_of_call
from attnprof.capture.ceilings import device_name, measure_ceilings
from attnprof.capture.compare import _native_warnings, input_sets_needed
from attnprof.cli import compare_cmd
from attnprof.errors import AttnprofError
from attnprof.files import create_run_folder
from attnprof.pipeline import analyze_path
from attnprof.trace.ceilings import Ceilings, save_ceilings

#: The --json row fields, as the README documents them.
ROW_FIELDS = {"backend", "variant", "shape", "dtype", "causal", "phase", "median_us", "window_us", "compute_us",
              "copy_us", "launch_us", "other_us", "tflops", "gbps", "pct_of_peak", "bound", "kernels", "trace",
              "unsupported"}
#: What torch 2.13's CPU build runs; everything else needs CUDA or a package CI does not have.
CPU_RUNS = {("sdpa-auto", "native"), ("sdpa-flash", "native"), ("sdpa-math", "native"), ("sdpa-blhd", "native"),
            ("sdpa-blhd", "seed-wrapper")}
ALL_VARIANTS = CPU_RUNS | {("sdpa-efficient", "native"), ("sdpa-cudnn", "native")} | {
    (b, v) for b in ("aten-flash", "flash-attn2", "fa3", "fa4", "xformers") for v in ("native", "seed-wrapper")}
#: Ceilings put in the cache beforehand, so the test does not spend seconds measuring real ones.
TEST_CEILINGS = dict(copy_gbps=10.0, matmul_tflops=0.05, dtype="float32", measured_at="2026-01-01T00:00:00+00:00",
                     method="test values")


def run_compare(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    compare_cmd.register(parser.add_subparsers())
    ns = parser.parse_args(["compare", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = ns.run(ns)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(home))
        save_ceilings(Ceilings(device=device_name(torch.device("cpu")), torch_version=str(torch.__version__),
                               **TEST_CEILINGS))
        yield home


@pytest.fixture(scope="module")
def json_run(tmp_path_factory, cache_home):
    root = tmp_path_factory.mktemp("traces")
    code, out = run_compare("--device", "cpu", "--shape", "1,2,32,16", "--backward", "--reps", "2", "--warmup", "1",
                            "--root", str(root), "--json")
    assert code == 0
    (folder,) = root.iterdir()
    return json.loads(out), folder


def by_key(rows):
    return {(r["backend"], r["variant"], r["phase"]): r for r in rows}


def test_every_backend_and_variant_is_a_row_in_both_phases(json_run):
    rows, _ = json_run
    assert set(by_key(rows)) == {(b, v, p) for b, v in ALL_VARIANTS for p in ("fwd", "bwd")}
    assert all(set(r) == ROW_FIELDS for r in rows)
    assert all(r["shape"] == [1, 2, 32, 16] and r["dtype"] == "float32" and r["causal"] is False for r in rows)


def test_cpu_backends_are_timed_and_split(json_run):
    rows, _ = json_run
    ran = [r for r in rows if r["unsupported"] is None]
    assert {(r["backend"], r["variant"]) for r in ran} == CPU_RUNS
    # (B, H, L, D) = (1, 2, 32, 16) float32, by hand: fwd 4·B·H·L·L·D = 131,072 flops over q, k, v, out of 1,024
    # elements × 4 bytes = 16,384 bytes (8 flops/byte); bwd 2.5× the flops = 327,680 over 2×(q, k, v, out) + the
    # fp32 log-sum-exp (64 × 4) = 33,024 bytes (9.9 flops/byte). The test ceilings' ridge is 0.05 TFLOP/s /
    # 10 GB/s = 5 flops/byte: both passes are compute-bound.
    work = {"fwd": (131_072, 16_384), "bwd": (327_680, 33_024)}
    for r in ran:
        assert r["launch_us"] is None  # CPU: nothing to wait for
        flops, nbytes = work[r["phase"]]
        assert r["tflops"] == pytest.approx(flops / r["median_us"] / 1e6, rel=1e-3)  # JSON rounding
        assert r["gbps"] == pytest.approx(nbytes / r["median_us"] / 1e3, rel=1e-3)
        assert r["bound"] == "compute"


def test_percent_of_peak_divides_by_the_cached_ceilings(json_run):
    rows, _ = json_run
    for r in rows:
        if r["unsupported"] is None:
            achieved, ceiling = ((r["tflops"], TEST_CEILINGS["matmul_tflops"]) if r["bound"] == "compute"
                                 else (r["gbps"], TEST_CEILINGS["copy_gbps"]))
            # JSON rounds each float to 3 decimals when >= 1, else to 6 significant digits (render/json_report.py):
            # allow exactly those roundings, of the percentage and of the rate it is recomputed from, at any speed
            def rounding(v):
                return 5e-4 if abs(v) >= 1 else 5e-6 * abs(v)

            expected = 100 * achieved / ceiling
            bound = rounding(r["pct_of_peak"]) + 100 / ceiling * rounding(achieved) + 1e-12
            assert abs(r["pct_of_peak"] - expected) <= bound


def test_unsupported_rows_carry_the_reason(json_run):
    rows = by_key(json_run[0])
    for r in rows.values():
        if (r["backend"], r["variant"]) not in CPU_RUNS:
            assert r["unsupported"] and r["median_us"] is None and r["copy_us"] is None
    assert "_flash_attention_forward" in rows["aten-flash", "native", "fwd"]["unsupported"]
    assert "flash_attn" in rows["flash-attn2", "native", "fwd"]["unsupported"]


def _ops_of_the_trace(path):
    """From the row's trace file read with json: the forward's SDPA op and copies (those outside any backward node:
    the seed wrapper's q, k, v before the call and its output after it), and the copies SDPA's backward node makes."""
    evs = events(path)

    def within(e, outer):
        return outer["ts"] <= e["ts"] and e["ts"] + e["dur"] <= outer["ts"] + outer["dur"]

    nodes = [e for e in evs if e["name"].startswith("autograd::engine::evaluate_function:")]
    sdpa_bwd = [n for n in nodes if "ScaledDotProduct" in n["name"]]  # none for sdpa-math: its backward is unfused
    (call,) = [e for e in evs if e["name"].startswith("attnprof:")]
    (sdpa,) = [e for e in evs if e["name"] == "aten::scaled_dot_product_attention" and within(e, call)]
    copies = [e for e in evs if e["name"] == "aten::contiguous"]
    # fills are "other" by definition (sdpa-math's masked softmax fills): the outermost ones inside SDPA
    fills = [e for e in evs if e["name"] in ("aten::zeros", "aten::zero_", "aten::fill_") and within(e, sdpa)]
    fills = [e for e in fills if not any(f is not e and within(e, f) for f in fills)]
    return {"compute_fwd": sdpa["dur"] - sum(e["dur"] for e in fills),
            "copy_fwd": sum(e["dur"] for e in copies if not any(within(e, n) for n in nodes)),
            "copy_bwd": sum(e["dur"] for e in copies if any(within(e, n) for n in sdpa_bwd)),
            "copies_fwd": sum(not any(within(e, n) for n in nodes) for e in copies)}


def test_seed_wrapper_copies_are_attributed_to_the_call(json_run):
    rows, folder = json_run
    rows = by_key(rows)
    for variant, copies in (("seed-wrapper", 4), ("native", 0)):
        # the wrapper's transpose(1, 2).contiguous() of q, k, v and of the output; native (B, L, H, D) inputs need none
        ops = _ops_of_the_trace(folder / rows["sdpa-blhd", variant, "fwd"]["trace"])
        assert ops["copies_fwd"] == copies
        # rows are rounded to 3 decimals
        assert rows["sdpa-blhd", variant, "fwd"]["copy_us"] == pytest.approx(ops["copy_fwd"], abs=0.002)
        assert rows["sdpa-blhd", variant, "bwd"]["copy_us"] == pytest.approx(ops["copy_bwd"], abs=0.002)
    for backend, variant in CPU_RUNS:
        ops = _ops_of_the_trace(folder / rows[backend, variant, "fwd"]["trace"])
        assert rows[backend, variant, "fwd"]["compute_us"] == pytest.approx(ops["compute_fwd"], abs=0.002)


def test_run_folder_holds_compare_json_and_analysable_traces(json_run):
    rows, folder = json_run
    doc = json.loads((folder / "compare.json").read_text())
    assert doc["rows"] == rows
    assert doc["ceilings"]["method"] == "test values"
    assert doc["run"]["versions"]["torch"] == str(torch.__version__)
    traces = sorted(p.name for p in folder.glob("*.pt.trace.json.gz"))
    assert traces == sorted({r["trace"] for r in rows if r["trace"]})
    assert len(traces) == len(CPU_RUNS)
    report = analyze_path(folder)  # what `attnprof analyze <folder>` reads
    assert {c.site for c in report.calls} == {f"{b}/{v} 1×2×32×16 float32" for b, v in CPU_RUNS}
    # the roofline reads the same shape back from every analysed call (as the dashboard does)
    assert all(shape_of_call(c) == AttentionShape(1, 2, 2, 32, 32, 16, 16) for c in report.calls)


def test_console_table_lists_runs_and_reasons(tmp_path, cache_home):
    code, out = run_compare("--device", "cpu", "--shape", "1,4,2,32,16", "--causal", "--reps", "2", "--warmup", "1",
                            "--backends", "sdpa-blhd,aten-flash", "--out", str(tmp_path / "run"))
    assert code == 0
    assert "1×4×2×32×16 fp32 causal" in out
    assert "seed-wrapper" in out and "not run here" in out
    assert "Could not run 'aten::_flash_attention_forward'" in out
    assert (tmp_path / "run" / "compare.json").is_file()


def test_run_folders_are_never_overwritten(tmp_path):
    first = create_run_folder(None, tmp_path, "compare")
    second = create_run_folder(None, tmp_path, "compare")
    assert first != second and first.is_dir() and second.is_dir()
    (first / "compare.json").write_text("{}")
    with pytest.raises(AttnprofError):
        create_run_folder(first, tmp_path, "compare", empty_ok=True)


def test_unknown_backend_is_a_one_line_error(tmp_path, cache_home):
    with pytest.raises(AttnprofError, match="unknown backend nope"):
        run_compare("--device", "cpu", "--backends", "nope", "--root", str(tmp_path))


def test_shape_argument():
    assert compare_cmd._shape("2,8,128,64") == (2, 8, 8, 128, 64)
    assert compare_cmd._shape("2,8,2,128,64") == (2, 8, 2, 128, 64)
    for bad in ("2,8,128", "2,8,3,128,64", "2,0,128,64", "a,b,c,d"):
        with pytest.raises(argparse.ArgumentTypeError):
            compare_cmd._shape(bad)


def test_input_sets_exceed_twice_the_cache():
    # 2 × 50 MB of cache over 1 MB sets: 100 sets; a set larger than twice the cache: 1
    assert input_sets_needed(1_000_000, 50_000_000) == 100
    assert input_sets_needed(3_000_000, 50_000_000) == 34
    assert input_sets_needed(200_000_000, 50_000_000) == 1
    assert input_sets_needed(1_000_000, 0) == 1


def test_measured_cpu_ceilings_divide_the_work_by_the_median_time(monkeypatch):
    """The clock replaced by known repetition times: the copy's 1 MiB read + written over its median of 100 µs, the
    64³ matmul's 2n³ flops over its median of 50 µs; each step still runs once, so what it does is seen."""
    from attnprof.capture import bench

    reps = iter([[90.0, 100.0, 300.0], [40.0, 50.0, 60.0]])  # the copy's, then the matmul's
    ran = []

    def fake_time_reps(step, device, warmup, n, setup=None):
        assert (device.type, warmup, n) == ("cpu", 1, 2)
        ran.append(step(0))
        return next(reps)

    monkeypatch.setattr(bench, "time_reps", fake_time_reps)
    c = measure_ceilings(torch.device("cpu"), copy_bytes=1 << 20, matmul_n=64, warmup=1, reps=2)
    assert c.copy_gbps == pytest.approx(2 * 2**20 / 100.0 / 1e3)  # 20.97 GB/s
    assert c.matmul_tflops == pytest.approx(2 * 64**3 / 50.0 / 1e6)  # 0.0105 TFLOP/s
    copied, product = ran
    assert (copied.dtype, copied.numel()) == (torch.uint8, 2**20) and product.shape == (64, 64)
    assert c.dtype == "float32" and c.device.startswith("cpu") and c.torch_version == str(torch.__version__)
    assert "median of 2 reps after 1 warm-up" in c.method


def test_torch_printed_warnings_become_the_reason(capfd):
    # on CUDA, can_use_*_attention(params, debug=True) prints its reasons as c10 warnings on stderr
    line = (b"[W1125 13:33:43.758003136 sdp_utils_cpp.h:418] Warning: For dense input, both fused kernels require "
            b"query, key and value to have the same num_heads. (function check_batch_size_and_num_heads_dense)\n")
    with _native_warnings() as printed:
        os.write(2, line + b"something else\n")
    assert printed == ["For dense input, both fused kernels require query, key and value to have the same num_heads."]
    assert capfd.readouterr().err == "something else\n"  # what is not a torch warning is passed on


H100_COMPARE = os.path.join(os.path.dirname(__file__), "..", "traces", "h100", "compare")


def test_analyze_of_a_compare_folder_gives_one_row_per_shape():
    """traces/h100/compare ran 9 backend/variant pairs at two shapes, one profiled call each: 18 rows of one call,
    each row's traced q shape the shape its site names (shape from the trace, name from compare.json)."""
    report = analyze_path(H100_COMPARE)
    assert len(report.sites) == 18
    assert all(s.calls == 1 for s in report.sites)
    for s in report.sites:
        if s.site.startswith(("sdpa-auto/", "sdpa-cudnn/", "sdpa-math/", "sdpa-efficient/", "sdpa-flash/")):
            assert "×".join(map(str, s.shapes["q"])) in s.site
    cudnn = {s.site.split(" ")[1]: s.window_us for s in report.sites if s.site.startswith("sdpa-cudnn/native")}
    # each the window of its own trace analysed alone, not their mean (919 µs)
    for shape, file in (("12×64×256×64", "12x64x256x64"), ("16×128×784×128", "16x128x784x128")):
        (alone,) = analyze_path(os.path.join(H100_COMPARE, f"{file}.float16.sdpa-cudnn.native.pt.trace.json.gz")).sites
        assert cudnn[shape] == pytest.approx(alone.window_us)
    assert cudnn["12×64×256×64"] < 300 < 1000 < cudnn["16×128×784×128"]


def test_a_piped_compare_prints_the_table_and_nothing_else(tmp_path, cache_home):
    """In a fresh process (libkineto reads its log level once per process): no `USDT: ... profiler_start` lines
    from the profiler sessions and no progress lines on a stderr that is no terminal; the table on stdout."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    env["PYTHONPATH"] = os.path.join(os.path.dirname(__file__), "..")
    p = subprocess.run([sys.executable, "-m", "attnprof", "compare", "--device", "cpu", "--shape", "1,2,32,16",
                        "--backends", "sdpa-math,sdpa-blhd", "--reps", "2", "--warmup", "1", "--out",
                        str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "sdpa-math" in p.stdout and "seed-wrapper" in p.stdout


def test_quiet_kineto_leaves_the_environment_as_it_was(monkeypatch):
    from attnprof.capture.kineto import LOG_LEVEL_VAR, quiet_kineto

    monkeypatch.delenv(LOG_LEVEL_VAR, raising=False)
    with quiet_kineto():
        assert os.environ[LOG_LEVEL_VAR] == "6"
    assert LOG_LEVEL_VAR not in os.environ
    monkeypatch.setenv(LOG_LEVEL_VAR, "1")  # the user's choice wins
    with quiet_kineto():
        assert os.environ[LOG_LEVEL_VAR] == "1"
    assert os.environ[LOG_LEVEL_VAR] == "1"
