"""Hostile runs (issue 8): scripts with threads, scripts that run their own torch.profiler, signals while attnprof
starts, stops or exports its profiler, a full disk while it exports. Each case checks the exit code, what was
printed (never an attnprof traceback) and what was kept."""
from __future__ import annotations

import collections
import errno
import gzip
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from processes import sigint_as_in_a_terminal

from attnprof.cli import main as cli_main
from attnprof.files import atomic_write
from attnprof.pipeline import analyze_path
from attnprof.trace.runinfo import read_runinfo

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


class Run:
    """One attnprof process of this file: its exit code, what it printed, its folder."""

    def __init__(self, folder: Path, argv: list[str], files: dict[str, str], signal_at: tuple[str, int] | None):
        self.folder, self.argv, self.files, self.signal_at = folder, argv, files, signal_at
        self.returncode: int | None = None
        self.out = self.err = ""

    def run(self) -> None:
        """Start it; if it has a signal to take, wait for the driver to say it stands at that point (where it waits
        until `sent` exists), send it, then say so."""
        for name, text in self.files.items():
            (self.folder / name).write_text(text)
        proc = subprocess.Popen([sys.executable, *self.argv], cwd=self.folder, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=sigint_as_in_a_terminal)
        seen = []
        try:
            if self.signal_at is not None:
                where, sig = self.signal_at
                while True:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    if line.strip() == where:
                        proc.send_signal(sig)
                        (self.folder / "sent").touch()
                        break
                    seen.append(line)
            out, self.err = proc.communicate(timeout=240)
            self.out = "".join(seen) + out
        finally:
            proc.kill()
        self.returncode = proc.returncode


def _all_at_once(runs: list[Run]) -> None:
    """Most of each run is starting python and torch: run them side by side."""
    threads = [threading.Thread(target=r.run) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _attnprof_ranges_by_thread(trace_path: Path) -> collections.Counter:
    events = json.load(gzip.open(trace_path))["traceEvents"]
    return collections.Counter(e["tid"] for e in events
                               if e.get("ph") == "X" and e.get("name", "").startswith("attnprof:sdpa"))


# --- threads --------------------------------------------------------------------------------------------------------

FOUR_THREADS = """\
import threading, torch
import torch.nn.functional as F
q = torch.randn(1, 2, 16, 8)
for _ in range(2):  # calls 1-2 on the main thread: the window opens after call 2
    F.scaled_dot_product_attention(q, q, q)
def work():
    x = torch.randn(1, 2, 16, 8)
    for _ in range(6):
        F.scaled_dot_product_attention(x, x, x)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("done")
"""


def test_four_threads_calling_sdpa_are_traced_and_split(runs):
    r = runs["four-threads"]
    assert r.returncode == 0, r.err
    assert r.out.startswith("done\n") and "Traceback" not in r.err
    info = read_runinfo(r.folder / "run")
    # 2 + 4 threads x 6 calls = 26 calls; one step = one call; steps 2-13 (calls 3-14) are profiled, whichever
    # thread makes them
    assert sorted(c.id for c in info.calls) == list(range(3, 15))
    counted = sum(len(s.true_us) + len(s.profiled_us) + len(s.after_us) + s.warmup_calls for s in info.sites)
    assert counted == 26
    by_thread = _attnprof_ranges_by_thread(r.folder / "run" / info.trace_files[0])
    assert sum(by_thread.values()) == 12 and len(by_thread) >= 2, by_thread
    report = json.loads((r.folder / "run" / "attnprof.json").read_text())
    assert sorted(c["id"] for c in report["calls"]) == list(range(3, 15))
    # each call's compute is the SDPA op inside its range, on its own thread (threads overlap in time), read from
    # the trace with json; no copies: q, k, v are one contiguous tensor
    events = [e for e in json.load(gzip.open(r.folder / "run" / info.trace_files[0]))["traceEvents"]
              if e.get("ph") == "X"]
    op_us = {}
    for rng in (e for e in events if e["name"].startswith("attnprof:sdpa")):
        (op,) = [e for e in events if e["name"] == "aten::scaled_dot_product_attention" and e["tid"] == rng["tid"]
                 and rng["ts"] <= e["ts"] <= rng["ts"] + rng["dur"]]
        op_us[int(rng["name"].rsplit("#", 1)[1])] = op["dur"]
    for call in report["calls"]:
        assert call["compute_us"] == pytest.approx(op_us[call["id"]], abs=0.002) and call["copy_us"] == 0


HANDOVER = """\
import threading, torch
import torch.nn.functional as F
q = torch.randn(1, 2, 16, 8)
F.scaled_dot_product_attention(q, q, q)      # call 1 (main): the window opens after it
def one():
    F.scaled_dot_product_attention(q, q, q)
for _ in range(2):                           # call 2 (profiled), call 3 (closes the window): each on a new thread
    t = threading.Thread(target=one)
    t.start()
    t.join()
print("done", threading.get_native_id())
"""


HANDOVER_DRIVER = """\
import sys
from pathlib import Path
from attnprof.capture.session import TraceOptions, trace_script
r = trace_script(TraceOptions(target="handover.py", is_module=False, args=[], out=Path("run"), warmup=0, timed=1,
                              active=1, step_on="call"))
sys.exit(r.exit_code)
"""


def test_window_opened_on_one_thread_and_closed_on_another(runs):
    r = runs["handover"]
    assert r.returncode == 0, r.err
    main_tid = int(r.out.split()[-1])
    info = read_runinfo(r.folder / "run")
    assert [c.id for c in info.calls] == [2] and info.outcome == "completed"
    by_thread = _attnprof_ranges_by_thread(r.folder / "run" / info.trace_files[0])
    assert list(by_thread.values()) == [1] and main_tid not in by_thread


IN_FLIGHT = """\
import threading, time, torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
q = torch.randn(1, 2, 16, 8)
inside = threading.Event()
class SlowAttention(TorchFunctionMode):  # thread B's call is still running when thread A closes the window
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "scaled_dot_product_attention":
            inside.set()
            time.sleep(0.5)
        return func(*args, **(kwargs or {}))
def slow():
    with SlowAttention():
        F.scaled_dot_product_attention(q, q, q)        # call 2: profiled, on thread B
F.scaled_dot_product_attention(q, q, q)                # call 1 (main): the window opens after it
b = threading.Thread(target=slow)
b.start()
assert inside.wait(30)
F.scaled_dot_product_attention(q, q, q)                # call 3 (main): closes the window while call 2 runs
b.join()
"""


def test_a_call_running_on_another_thread_when_the_window_closes_is_kept(trace, capsys):
    r = trace(IN_FLIGHT, warmup=0, timed=1, active=1, step_on="call")
    assert r.exit_code == 0 and "Traceback" not in capsys.readouterr().err
    assert [c.id for c in read_runinfo(r.folder).calls] == [2]
    (path,) = r.trace_files
    events = [e for e in json.load(gzip.open(path))["traceEvents"] if e.get("ph") == "X"]
    (call_range,) = [e for e in events if e["name"].startswith("attnprof:sdpa")]
    ops = [e for e in events if e["name"] == "aten::scaled_dot_product_attention"]
    # call 2's range, whole (it sleeps 0.5 s inside), and its op, on thread B: the profiler waited for it
    assert call_range["dur"] >= 500_000 and [e["tid"] for e in ops] == [call_range["tid"]]
    (call,) = analyze_path(r.folder).calls
    assert call.id == 2 and call.compute_us == pytest.approx(ops[0]["dur"], abs=1e-3)  # its op, whole


# --- the script's own profiler --------------------------------------------------------------------------------------

USER_PROFILER = """\
import sys, torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function, schedule, tensorboard_trace_handler
mode = sys.argv[1]
q = torch.randn(1, 2, 16, 8)
def step():
    with record_function("user_step"):
        return F.scaled_dot_product_attention(q.transpose(1, 2).contiguous().transpose(1, 2), q, q)
if mode == "around-everything":
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        for _ in range(4):
            step()
    p.export_chrome_trace("user_trace.json")
elif mode == "start-stop":  # starts after 3 calls
    for _ in range(3):
        step()
    p = profile(activities=[ProfilerActivity.CPU])
    p.start()
    for _ in range(4):
        step()
    p.stop()
    p.export_chrome_trace("user_trace.json")
    for _ in range(3):
        step()
elif mode == "autograd-profile":  # the older API, same machinery
    for _ in range(3):
        step()
    with torch.autograd.profiler.profile() as p:
        for _ in range(4):
            step()
    p.export_chrome_trace("user_trace.json")
elif mode == "tensorboard":
    p = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=2, repeat=1),
                on_trace_ready=tensorboard_trace_handler("user_tb", worker_name="worker"))
    p.start()
    for _ in range(6):
        step()
        p.step()
    p.stop()
elif mode == "before-the-window":  # profiles calls 1-2, attnprof's window comes later
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(2):
            step()
    p.export_chrome_trace("user_trace.json")
    for _ in range(6):
        step()
print("ok", mode)
"""


def _op_counts(path: Path) -> collections.Counter:
    events = json.loads(path.read_text())["traceEvents"]
    return collections.Counter((e.get("cat"), e["name"]) for e in events
                               if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation"))


def _user_trace(tmp_path: Path, mode: str) -> Path:
    if mode == "tensorboard":
        (found,) = (tmp_path / "user_tb").iterdir()
        return found
    return tmp_path / "user_trace.json"


def _under_python(tmp_path: Path, mode: str, monkeypatch, capsys) -> collections.Counter:
    """The same script's own trace without attnprof (in this process: attnprof is not tracing it)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "user.py").write_text(USER_PROFILER)
    monkeypatch.chdir(plain)
    monkeypatch.setattr(sys, "argv", ["user.py", mode])
    runpy.run_path(str(plain / "user.py"), run_name="__main__")
    assert capsys.readouterr().out == f"ok {mode}\n"
    monkeypatch.chdir(tmp_path)
    return _op_counts(_user_trace(plain, mode))


@pytest.mark.parametrize("mode, timed, active, profiled, yielded", [
    # the script's profiler runs when attnprof's window is due: attnprof starts none
    ("around-everything", 1, 2, [], "did not start one under it"),
    # attnprof's window (calls 2-5) is open when the script starts its own after call 3: attnprof stops first
    ("start-stop", 1, 4, [2, 3], "stopped its own first, after 2 profiled attention calls"),
    ("autograd-profile", 1, 4, [2, 3], "stopped its own first, after 2 profiled attention calls"),
    # with schedule(wait=1, warmup=1): the script's profiler takes the profiler at its first warm-up step, in the
    # p.step() after call 1; attnprof's window (calls 1-4) had profiled call 1
    ("tensorboard", 0, 4, [1], "stopped its own first, after 1 profiled attention call;"),
    # attnprof's window (call 2) is over when the script starts its own after call 3: nothing to yield
    ("start-stop", 1, 1, [2], None),
    # the script's own profiler is done before attnprof's window (calls 4-5) opens
    ("before-the-window", 3, 2, [4, 5], None),
])
def test_the_scripts_own_profiler(trace, tmp_path, monkeypatch, capsys, mode, timed, active, profiled, yielded):
    expected = _under_python(tmp_path, mode, monkeypatch, capsys)
    r = trace(USER_PROFILER, mode, warmup=0, timed=timed, active=active, step_on="call")
    out, err = capsys.readouterr()
    assert (r.exit_code, r.outcome) == (0, "completed") and out == f"ok {mode}\n"
    assert "Traceback" not in err and "disableProfiler" not in err
    # the script's trace: written, loadable, the same ops and ranges as under python
    assert _op_counts(_user_trace(tmp_path, mode)) == expected
    info = read_runinfo(r.folder)
    assert [c.id for c in info.calls] == profiled
    assert bool(r.trace_files) == bool(profiled)
    if yielded is None:
        assert info.note is None
    else:
        # said as it happened, and kept in the run's note (beside any other note of the run)
        assert yielded in info.note and yielded in err
        assert "the script started its own profiler" in (info.steps.stopped_early or "") or not profiled


def test_a_profiler_already_running_when_attnprof_starts_keeps_attnprof_out(trace, capsys):
    """A library user profiles around attnprof: torch's own flag says a profiler runs; attnprof starts none."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as outer:
        r = trace("""\
            import torch
            import torch.nn.functional as F
            q = torch.randn(1, 2, 8, 4)
            for _ in range(4):
                F.scaled_dot_product_attention(q, q, q)
        """, warmup=0, timed=1, active=2, step_on="call")
    err = capsys.readouterr().err
    assert r.exit_code == 0 and r.trace_files == [] and "Traceback" not in err and "disableProfiler" not in err
    assert sum(e.name == "aten::scaled_dot_product_attention" for e in outer.events()) == 4
    info = read_runinfo(r.folder)
    assert info.calls == [] and "did not start one under it" in info.note
    (site,) = info.sites  # every call still timed: call 1 before the window was due, calls 2-4 after
    assert (len(site.true_us), len(site.after_us), site.profiled_us) == (1, 3, [])


# --- signals while the profiler starts or exports -------------------------------------------------------------------

LOOP = """\
import time, torch
import torch.nn.functional as F
q = torch.randn(1, 2, 8, 4)
for i in range(40):
    F.scaled_dot_product_attention(q, q, q)
    time.sleep(0.01)
print("finished", flush=True)
"""

#: Holds attnprof at `where` (its profiler starting or its trace exporting) until the test has sent its signal.
DRIVER = """\
import sys, time
from pathlib import Path
from attnprof.capture import session
from attnprof.capture.session import TraceOptions, trace_script
where, timed = sys.argv[1], int(sys.argv[2])
def held(fn):
    def at_this_point(*args, **kwargs):
        print(where, flush=True)
        deadline = time.monotonic() + 60
        while not Path("sent").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return fn(*args, **kwargs)
    return at_this_point
if where == "starting":
    session._new_profiler = held(session._new_profiler)
else:
    session.export_trace = held(session.export_trace)
r = trace_script(TraceOptions(target="loop.py", is_module=False, args=[], out=Path("run"), warmup=0, timed=timed,
                              active=2, step_on="call"))
sys.exit(r.exit_code)
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_the_profiler_starts_before_the_script(runs, sig, code):
    r = runs[f"starting-0-{sig.name}"]
    assert r.returncode == code, r.err
    assert "finished" not in r.out and "attnprof/" not in r.err and "ScriptTerminated" not in r.err
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in r.err
    else:
        assert "Traceback" not in r.err
    info = read_runinfo(r.folder / "run")
    assert (info.outcome, info.exit_code) == ("interrupted", code)
    # the profiler had started: its (empty) window is saved
    (name,) = info.trace_files
    assert json.load(gzip.open(r.folder / "run" / name))["traceEvents"]


def test_sigterm_while_the_profiler_starts_inside_a_call(runs):
    """The window opens after call 1: SIGTERM lands during that start, the script ends there (as at call 1)."""
    r = runs["starting-1-SIGTERM"]
    assert r.returncode == 143, r.err
    assert "finished" not in r.out and "Traceback" not in r.err
    info = read_runinfo(r.folder / "run")
    assert (info.outcome, info.exit_code) == ("interrupted", 143)
    assert info.calls == [] and len(info.trace_files) == 1
    (site,) = info.sites
    assert len(site.true_us) == 1  # call 1, timed before the window opened


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_the_trace_exports(runs, sig, code):
    """Window = calls 2-3, exported at the entry of call 4: the signal waits for the export, then ends the script."""
    r = runs[f"exporting-1-{sig.name}"]
    assert r.returncode == code, r.err
    assert "finished" not in r.out and "attnprof/" not in r.err
    info = read_runinfo(r.folder / "run")
    assert (info.outcome, info.exit_code) == ("interrupted", code)
    assert [c.id for c in info.calls] == [2, 3]
    (name,) = info.trace_files
    assert _attnprof_ranges_by_thread(r.folder / "run" / name).total() == 2
    assert not [p.name for p in (r.folder / "run").iterdir() if p.name.endswith((".tmp", ".part"))]


#: `attnprof trace` of a script that exits 3, held while attnprof saves runinfo.json at the end or analyses the run.
CLI_DRIVER = """\
import sys, time
from pathlib import Path
import attnprof.pipeline
from attnprof.capture import session
from attnprof.cli import main
where = sys.argv[1]
def hold():
    print(where, flush=True)
    deadline = time.monotonic() + 60
    while not Path("sent").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
if where == "saving":
    write = session.write_runinfo
    def final_write(info, folder):
        if info.outcome != "running":
            hold()
        return write(info, folder)
    session.write_runinfo = final_write
else:
    analyze = attnprof.pipeline.analyze_run
    def held_analysis(folder):
        hold()
        return analyze(folder)
    attnprof.pipeline.analyze_run = held_analysis
sys.exit(main(["trace", "--out", "run", "--warmup", "0", "--timed", "0", "--active", "2", "--step-on", "call",
               "ends3.py"]))
"""


@pytest.mark.parametrize("where, sig, said", [
    ("saving", signal.SIGINT, "not analysed (interrupted while saving)"),
    ("analysing", signal.SIGTERM, "analysis interrupted"),
])
def test_signal_after_the_script_keeps_its_exit_code(runs, where, sig, said):
    """The script has ended (exit 3): a signal while attnprof saves or analyses stops attnprof's own work only."""
    r = runs[f"{where}-{sig.name}"]
    assert r.returncode == 3, r.err
    assert f"attnprof: {said}: attnprof analyze run" in r.err and "Traceback" not in r.err and r.out == "bye\n"
    info = read_runinfo(r.folder / "run")
    assert (info.outcome, info.exit_code) == ("exited", 3) and [c.id for c in info.calls] == [1, 2]
    assert (r.folder / "run" / info.trace_files[0]).is_file() and not (r.folder / "run" / "attnprof.json").exists()


ENDS_WITH_3 = """\
import sys, torch
import torch.nn.functional as F
q = torch.randn(1, 2, 8, 4)
for _ in range(3):
    F.scaled_dot_product_attention(q, q, q)
print("bye")
sys.exit(3)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Every case of this file that needs a process of its own (a crash, a signal), run side by side."""
    trace_threads = ["-m", "attnprof", "trace", "--out", "run", "--warmup", "0", "--timed", "2", "--active", "12",
                     "--step-on", "call", "--after", "time", "threads.py"]
    cases = {
        "four-threads": (trace_threads, {"threads.py": FOUR_THREADS}, None),
        "handover": (["-c", HANDOVER_DRIVER], {"handover.py": HANDOVER}, None),
    }
    for where, timed, sig in [("starting", 0, signal.SIGTERM), ("starting", 0, signal.SIGINT),
                              ("starting", 1, signal.SIGTERM), ("exporting", 1, signal.SIGTERM),
                              ("exporting", 1, signal.SIGINT)]:
        cases[f"{where}-{timed}-{sig.name}"] = (["-c", DRIVER, where, str(timed)], {"loop.py": LOOP}, (where, sig))
    for where, sig in [("saving", signal.SIGINT), ("analysing", signal.SIGTERM)]:
        cases[f"{where}-{sig.name}"] = (["-c", CLI_DRIVER, where], {"ends3.py": ENDS_WITH_3}, (where, sig))
    runs = {name: Run(tmp_path_factory.mktemp(name), argv, files, sig) for name, (argv, files, sig) in cases.items()}
    _all_at_once(list(runs.values()))
    return runs


# --- a full disk while exporting ------------------------------------------------------------------------------------

def _disk_full_after_half(monkeypatch, cls, method: str) -> None:
    original = getattr(cls, method)

    def write(self, data, *args):
        original(self, data[: len(data) // 2], *args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cls, method, write)


def test_disk_full_while_gzipping_the_trace(trace, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        _disk_full_after_half(m, gzip.GzipFile, "write")
        r = trace(ENDS_WITH_3, warmup=0, timed=0, active=2, step_on="call")
    out, err = capsys.readouterr()
    assert (r.exit_code, r.outcome) == (3, "exited") and out == "bye\n" and "Traceback" not in err
    assert sorted(p.name for p in r.folder.iterdir()) == ["runinfo.json"]  # no half trace, no temporary file
    info = read_runinfo(r.folder)
    assert info.trace_files == [] and [c.id for c in info.calls] == [1, 2]
    assert "could not save the trace of steps 0-1" in info.note and "No space left on device" in info.note
    # the folder is still readable: analyze says what is missing in one line
    assert cli_main(["analyze", str(r.folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err


def test_disk_full_while_torch_writes_the_raw_trace(trace, tmp_path, monkeypatch, capsys):
    """torch's own export_chrome_trace fails half-way: its raw file is removed too."""
    import torch

    original = torch.profiler.profile.export_chrome_trace

    def export(self, path):
        original(self, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(torch.profiler.profile, "export_chrome_trace", export)
        r = trace(ENDS_WITH_3, warmup=0, timed=0, active=2, step_on="call")
    err = capsys.readouterr().err
    assert r.exit_code == 3 and "Traceback" not in err and "No space left on device" in err
    assert sorted(p.name for p in r.folder.iterdir()) == ["runinfo.json"]


def test_atomic_write_keeps_the_last_good_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"good")

    def half_then_full(f):
        f.write(b"new but")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        atomic_write(path, half_then_full)
    assert path.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    atomic_write(path, lambda f: f.write(b"better"))
    assert path.read_bytes() == b"better" and [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
