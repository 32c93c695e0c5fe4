"""Hostile inputs to the readers: odd but loadable traces, broken files, bombs, pipes (issue 8).

Each case runs the command line in-process (`attnprof.cli.main`, so an attnprof traceback fails the test) or in a
subprocess, and checks the exit code, the one-line message, that the input is unchanged, and what the report kept.
The traces are mutations of a real one: traces/h100/seed-fwd (torch 2.x on an H100, 6 attention calls).
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from attnprof.cli import main

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "traces" / "h100" / "seed-fwd"
SEED_TRACE = SEED / "vm_447.pt.trace.json.gz"
# the categories the loader reads (torch_json._HOST / _DEVICE); every other event is ignored whatever it holds
READ_CATS = {"cpu_op", "operator", "user_annotation", "cuda_runtime", "cuda_driver", "runtime", "python_function",
             "kernel", "gpu_memcpy", "memcpy", "gpu_memset", "memset"}
DEVICE_CATS = {"kernel", "gpu_memcpy", "memcpy", "gpu_memset", "memset"}


@pytest.fixture(scope="module")
def seed_doc() -> dict:
    return json.loads(gzip.decompress(SEED_TRACE.read_bytes()))


@pytest.fixture(scope="module")
def seed_report() -> dict:
    code, out, _ = _cli_plain("analyze", "--json", SEED_TRACE)
    assert code == 0
    return json.loads(out)


@pytest.fixture(scope="module")
def seed_folder_report() -> dict:
    code, out, _ = _cli_plain("analyze", "--json", SEED)
    assert code == 0
    return json.loads(out)


def _cli_plain(*argv) -> tuple[int, str, str]:
    """main() with stdout/stderr captured without pytest's capsys (usable from a module fixture)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def cli(*argv) -> tuple[int, str, str]:
    return _cli_plain(*argv)


def one_line_error(err: str) -> str:
    """The stderr of a refused command: exactly one line, attnprof's, no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnprof: error: "), err
    return lines[0]


def split(report: dict) -> list[tuple]:
    return [(c["id"], c["phase"], c["site"], c["window_us"], c["compute_us"], c["copy_us"], c["launch_us"])
            for c in report["calls"]]


def write(tmp_path: Path, doc, name="t.pt.trace.json", gz=False) -> Path:
    data = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    path = tmp_path / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def events(doc: dict, cats: set[str]) -> list[dict]:
    return [e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") in cats]


# --- mutations the loader repairs or skips, the analysis going on with the rest -----------------------------------
# (name, mutate(doc) -> number of events touched, note that must name that number, the split is unchanged)

def _pid_text(doc):
    kernels = events(doc, DEVICE_CATS)
    for e in kernels:  # Kineto writes the device in pid and in args; without args.device, pid is all there is
        e["args"].pop("device", None)
        e["pid"] = f"GPU {e['pid']}"
    return len(kernels), "device read from 'GPU 0'", True


def _host_tid_text(doc):
    ops = events(doc, READ_CATS - DEVICE_CATS)
    for e in ops:
        e["tid"] = f"thread {e['tid']}"
    return None, None, True


def _duplicated(doc):
    read = events(doc, READ_CATS)
    doc["traceEvents"] += copy.deepcopy(read)
    return len(read), "duplicate of an earlier event", True


def _bytes_1e30(doc):
    memsets = events(doc, {"gpu_memset"})
    for e in memsets:
        e["args"]["bytes"] = 1e30
    return len(memsets), "bytes not a possible byte count", True


def _input_dims_not_list(doc):
    ops = [e for e in events(doc, {"cpu_op"}) if "Input Dims" in e.get("args", {})]
    for e in ops:
        e["args"]["Input Dims"] = "12x256x64x64"
    return len(ops), "Input Dims not a list", False  # shapes unknown: the split may change, it must not fail


def _input_dims_garbage_inside(doc):
    ops = [e for e in events(doc, {"cpu_op"}) if "Input Dims" in e.get("args", {})]
    for e in ops:
        e["args"]["Input Dims"] = [[12, "x", None], {"a": 1}, None]
        e["args"]["Input type"] = [None, 3]
    return None, None, False


def _huge_external_id(doc):
    runtime = events(doc, {"cuda_runtime"})
    for e in runtime[:3]:
        e["args"]["External id"] = 10 ** 30
    return 3, "External id outside the 64-bit range", False


def _pid_above_int16(doc):
    kernels = events(doc, DEVICE_CATS)
    for e in kernels:
        e["args"].pop("device", None)
        e["pid"] = 70000
    return len(kernels), "device work whose device is not a device index (70000)", False


def _ts_missing(doc):
    kernels = events(doc, {"kernel"})
    for e in kernels[:4]:
        del e["ts"]
    return 4, "no numeric ts or dur", False


def _dur_text(doc):
    kernels = events(doc, {"kernel"})
    for e in kernels[:2]:
        e["dur"] = "37.9"
    return 2, "Expected `float`, got `str` - at `$.dur`", False


def _dur_negative(doc):
    kernels = events(doc, {"kernel"})
    for e in kernels[:5]:
        e["dur"] = -e["dur"]
    return 5, "negative duration", False


def _name_not_text(doc):
    ops = events(doc, {"cpu_op"})
    for e in ops[:3]:
        e["name"] = 12345
    return 3, "Expected `str`, got `int` - at `$.name`", False


def _device_properties_odd(doc):
    doc["deviceProperties"] = ["H100", 7, None]
    return None, None, False


MUTATIONS = [_pid_text, _host_tid_text, _duplicated, _bytes_1e30, _input_dims_not_list, _input_dims_garbage_inside,
             _huge_external_id, _pid_above_int16, _ts_missing, _dur_text, _dur_negative, _name_not_text,
             _device_properties_odd]


@pytest.mark.parametrize("mutate", MUTATIONS, ids=[m.__name__.strip("_") for m in MUTATIONS])
def test_odd_trace_is_analysed_with_a_note(tmp_path, seed_doc, seed_report, mutate):
    doc = copy.deepcopy(seed_doc)
    count, note, same_split = mutate(doc)
    path = write(tmp_path, doc, gz=True)
    before = path.read_bytes()
    code, out, err = cli("analyze", "--json", path)
    assert code == 0 and "Traceback" not in err, err
    report = json.loads(out)
    assert path.read_bytes() == before
    if note is not None:
        lines = [n for n in report["notes"] if note in n]
        assert len(lines) == 1, report["notes"]
        assert f"{count} {note}" in lines[0]
    if same_split:  # repaired, not lost: the calls split exactly as in the original trace
        assert split(report) == split(seed_report)
    else:
        assert {c["id"] for c in report["calls"]} <= {c["id"] for c in seed_report["calls"]}


@pytest.mark.parametrize("command", ["explain", "dashboard"])
def test_odd_trace_through_explain_and_dashboard(tmp_path, seed_doc, command):
    doc = copy.deepcopy(seed_doc)
    _pid_text(doc)
    _bytes_1e30(doc)
    _duplicated(doc)
    path = write(tmp_path, doc, gz=True)
    code, out, err = cli(command, path)
    assert code == 0 and "Traceback" not in err, err
    if command == "dashboard":
        page = tmp_path / "t.attnprof.dashboard.html"
        assert out.strip() == str(page) and page.read_text().rstrip().endswith("</html>")
        assert "duplicate of an earlier event" in page.read_text()  # the note reaches the page
    else:
        assert "examples/seed_case.py:34 via :47" in out


@pytest.mark.parametrize("size", [0, -5], ids=["zero", "negative"])
def test_degenerate_shapes_through_the_dashboard(tmp_path, seed_doc, size):
    doc = copy.deepcopy(seed_doc)
    for e in events(doc, {"cpu_op"}):
        if "Input Dims" in e["args"]:
            e["args"]["Input Dims"] = [[size, 64, 256, 64]] * 3
    path = write(tmp_path, doc)
    code, out, err = cli("dashboard", path, "-o", tmp_path / "page.html")
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "page.html").read_text().rstrip().endswith("</html>")


# --- files that are not traces: one line, exit 2 --------------------------------------------------------------------

def _deep(doc):
    """One event's args nested 3000 levels: valid JSON, deeper than msgspec (or json) will decode."""
    text = json.dumps(doc)
    return text.replace('"args": {', '"args": {"x": ' + "[" * 3000 + "]" * 3000 + ", ", 1).encode()


BROKEN = [
    ("nested-too-deep", _deep, "nests JSON deeper than the decoder's limit"),
    ("truncated-json", lambda doc: json.dumps(doc).encode()[:50_000], "is not valid JSON"),
    ("events-not-a-list", lambda doc: json.dumps({"traceEvents": {"a": 1}}).encode(), "not a torch.profiler trace"),
    ("no-readable-event", lambda doc: json.dumps({"traceEvents": [{"ph": "X", "ts": "soon"}]}).encode(),
     "not a torch.profiler trace"),
    ("only-foreign-events", lambda doc: json.dumps({"traceEvents": [{"ph": "X", "cat": "foo", "ts": 1, "dur": 2}]})
     .encode(), "holds no profiler events"),
    ("all-kernels-negative", lambda doc: json.dumps({"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": -2, "pid": 0, "tid": 7}]}).encode(),
     "1 negative duration"),
    ("empty-file", lambda doc: b"", "expected JSON"),
    ("binary", lambda doc: bytes(range(256)) * 8, "expected JSON"),
]


@pytest.mark.parametrize("name,make,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_trace_is_one_line(tmp_path, seed_doc, name, make, message):
    path = write(tmp_path, make(copy.deepcopy(seed_doc)))
    before = path.read_bytes()
    code, out, err = cli("analyze", path)
    assert code == 2 and out == ""
    assert message in one_line_error(err)
    assert path.read_bytes() == before


def test_truncated_gzip_is_one_line(tmp_path):
    path = tmp_path / "t.pt.trace.json.gz"
    path.write_bytes(SEED_TRACE.read_bytes()[:4096])  # what a disk full mid-export leaves
    code, _, err = cli("analyze", path)
    assert code == 2 and "is not a readable gzip file" in one_line_error(err)


def test_file_over_the_cap_is_refused_and_the_flag_raises_it(tmp_path, seed_doc):
    path = write(tmp_path, seed_doc)  # ~0.7 MB of JSON
    size_mb = path.stat().st_size / 2**20
    assert 0.5 < size_mb < 1
    code, _, err = cli("analyze", path, "--max-trace-mb", "0.5")
    assert code == 2 and "larger than 0.5 MB" in one_line_error(err) and "--max-trace-mb" in err
    code, _, err = cli("analyze", path, "--max-trace-mb", "1")
    assert code == 0, err


def test_dev_zero_stops_at_the_cap():
    code, _, err = cli("analyze", "/dev/zero", "--max-trace-mb", "2")
    assert code == 2 and "/dev/zero is larger than 2 MB" in one_line_error(err)


def _bomb(path: Path, member_mb: int, members: int) -> None:
    """A gzip file of `members` members each inflating to `member_mb` MB of spaces: made in well under a second,
    ~1 KB per MB, so the test never holds the inflated data."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = c.compress(b" " * (member_mb << 20)) + c.flush()
    with open(path, "wb") as f:
        f.write(gzip.compress(b'{"traceEvents": ['))
        for _ in range(members):
            f.write(member)


def test_gzip_bomb_is_stopped_while_streaming(tmp_path):
    bomb = tmp_path / "bomb.pt.trace.json.gz"
    _bomb(bomb, 64, 32)  # 2 GB inflated
    assert bomb.stat().st_size < 4 << 20
    # VmHWM: this process's peak RSS (ru_maxrss would carry the forking pytest's over the exec)
    code = ("import re, sys\nfrom attnprof.cli import main\n"
            "rc = main(['analyze', sys.argv[1], '--max-trace-mb', '64'])\n"
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024)\n"
            "sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == 2
    assert "larger than 64 MB decompressed" in one_line_error(p.stderr)
    assert int(p.stdout.strip()) < 250  # MB of peak RSS: the 64 MB cap, not the 2 GB behind it


# --- pipes: read once, sniffed from what was read -------------------------------------------------------------------

@pytest.mark.parametrize("producer", ["zcat", "cat"])
def test_process_substitution(producer, seed_report):
    p = subprocess.run(["bash", "-c", f'"$0" -m attnprof analyze --json <({producer} "$1")', sys.executable,
                        str(SEED_TRACE)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert split(json.loads(p.stdout)) == split(seed_report)


# --- run folders with damaged pieces: analysed with what is there ---------------------------------------------------

def test_folder_with_a_corrupt_trace_beside_a_good_one(tmp_path, seed_folder_report):
    run = tmp_path / "run"
    shutil.copytree(SEED, run)
    (run / "vm_999.pt.trace.json.gz").write_bytes(SEED_TRACE.read_bytes()[:4096])  # a crashed export
    code, out, err = cli("analyze", "--json", run)
    assert code == 0 and "Traceback" not in err
    report = json.loads(out)
    assert split(report) == split(seed_folder_report)
    assert [n for n in report["notes"] if n.startswith("left out: ") and "vm_999.pt.trace.json.gz" in n]


def test_folder_with_damaged_runinfo(tmp_path, seed_report):
    run = tmp_path / "run"
    shutil.copytree(SEED, run)
    good = (run / "runinfo.json").read_bytes()
    (run / "runinfo.json").write_bytes(good[: len(good) // 2])  # truncated
    code, out, err = cli("analyze", "--json", run)
    assert code == 0 and "Traceback" not in err
    report = json.loads(out)
    assert report["run"] is None and any("runinfo.json is damaged" in n for n in report["notes"])
    assert split(report) == split(seed_report)  # exactly the bare trace's analysis


def test_folder_whose_only_trace_is_corrupt(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "w.pt.trace.json.gz").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    code, _, err = cli("analyze", run)
    assert code == 2 and "not a readable gzip file" in one_line_error(err)


def test_explain_on_two_damaged_sides(tmp_path, seed_doc):
    a, b = copy.deepcopy(seed_doc), copy.deepcopy(seed_doc)
    _duplicated(a)
    _pid_text(b)
    pa, pb = write(tmp_path, a, "a.pt.trace.json"), write(tmp_path, b, "b.pt.trace.json")
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (pa, pb)]
    code, out, err = cli("explain", pa, pb, "--json")
    assert code == 0 and "Traceback" not in err, err
    assert abs(json.loads(out)["gap_us"]) < 1e-6  # the same calls once repaired: nothing to explain
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in (pa, pb)] == digests
