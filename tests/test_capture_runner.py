"""Capture: running a script as python would (semantics, exit codes, tracebacks, signals), bad input, run folders."""
from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
from processes import sigint_as_in_a_terminal

from attnprof import files
from attnprof.capture.session import TraceOptions, trace_script
from attnprof.errors import AttnprofError
from attnprof.trace.runinfo import read_runinfo

REPO = Path(__file__).resolve().parents[1]

REPORT = """
import json, pickle, sys
def f():
    return 42
report = {
    "name": __name__, "argv": sys.argv, "path0": sys.path[0], "file": __file__,
    "main_is_me": sys.modules["__main__"].__dict__ is globals(),
    "pickled": pickle.loads(pickle.dumps(f))() if __name__ == "__main__" else None,
    "spec": __spec__.name if __spec__ else None,
}
with open(REPORT_PATH, "w") as fh:
    json.dump(report, fh)
"""


def test_script_runs_as_python_would(trace, tmp_path):
    out = tmp_path / "report.json"
    (tmp_path / "sub").mkdir()
    argv_before, path_before, main_before = sys.argv, list(sys.path), sys.modules["__main__"]
    r = trace(f"REPORT_PATH = {str(out)!r}\n" + REPORT, "a", "--b", name="sub/job.py")
    got = json.loads(out.read_text())
    assert got["name"] == "__main__"
    assert got["argv"] == ["sub/job.py", "a", "--b"]
    assert got["path0"] == str(tmp_path / "sub")
    assert got["file"] == str(tmp_path / "sub" / "job.py")
    assert got["main_is_me"] and got["pickled"] == 42
    assert (r.exit_code, r.outcome) == (0, "completed")
    assert sys.argv is argv_before and sys.path == path_before and sys.modules["__main__"] is main_before


def test_module_runs_as_python_m_would(tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(f"REPORT_PATH = {str(out)!r}\n" + REPORT)
    (pkg / "__main__.py").write_text(f"REPORT_PATH = {str(out)!r}\n" + REPORT)
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    try:
        r = trace_script(TraceOptions(target="pkg.mod", is_module=True, args=["x"], out=None, root=tmp_path / "t"))
        got = json.loads(out.read_text())
        assert got["name"] == "__main__" and got["spec"] == "pkg.mod"
        assert got["argv"] == [str(pkg / "mod.py"), "x"]
        assert got["path0"] == str(tmp_path)
        assert got["file"] == str(pkg / "mod.py")
        assert got["main_is_me"] and got["pickled"] == 42
        assert r.folder.name.startswith("mod-") and r.runinfo.command == ["-m", "pkg.mod", "x"]

        trace_script(TraceOptions(target="pkg", is_module=True, args=[], out=None, root=tmp_path / "t"))
        assert json.loads(out.read_text())["spec"] == "pkg.__main__"
    finally:
        for name in [n for n in sys.modules if n == "pkg" or n.startswith("pkg.")]:
            del sys.modules[name]
    assert sys.path == path_before


@pytest.mark.parametrize("body, code, outcome, stderr", [
    ("import sys\nsys.exit(3)\n", 3, "exited", ""),
    ("import sys\nsys.exit()\n", 0, "exited", ""),
    ("import sys\nsys.exit('bye now')\n", 1, "exited", "bye now\n"),
    ("print('hello')\n", 0, "completed", ""),
])
def test_exit_codes_pass_through(trace, capfd, body, code, outcome, stderr):
    r = trace(body, quiet=True)
    assert (r.exit_code, r.outcome) == (code, outcome)
    assert (r.runinfo.exit_code, r.runinfo.outcome) == (code, outcome)
    assert read_runinfo(r.folder).exit_code == code
    err = capfd.readouterr().err
    assert "\n".join(line for line in err.splitlines() if "USDT:" not in line) + ("\n" if stderr else "") == stderr


FAILING = """\
import torch
import torch.nn.functional as F

def attend(q):
    return F.scaled_dot_product_attention(q, q[..., :1], q)[0]

def main():
    q = torch.randn(1, 2, 4, 8)
    return attend(q.transpose(1, 3))

main()
"""


def test_traceback_is_pythons_without_attnprof_frames(trace, tmp_path, capfd):
    """The script raises inside a wrapped call: the same traceback as `python script.py` prints, byte for byte."""
    r = trace(FAILING, quiet=True)
    ours = "".join(line + "\n" for line in capfd.readouterr().err.splitlines() if "USDT:" not in line)
    assert (r.exit_code, r.outcome) == (1, "raised")
    python = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert python.returncode == 1
    assert ours == python.stderr
    assert ours.startswith("Traceback (most recent call last):") and "attnprof" not in ours


def test_syntax_error_is_printed_like_python_and_nothing_runs(trace, tmp_path, capfd):
    r = trace("x = 1\nprint('never'\n", name="broken.py")
    err = capfd.readouterr().err
    python = subprocess.run([sys.executable, "broken.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert err == python.stderr and "SyntaxError" in err
    assert (r.exit_code, r.outcome, r.folder) == (1, "raised", None)
    assert not (tmp_path / "traces").exists()


def test_bad_input_is_one_error_and_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "traces"

    def err(target, is_module=False, out=None):
        with pytest.raises(AttnprofError) as e:
            trace_script(TraceOptions(target=target, is_module=is_module, args=[], out=out, root=root))
        return str(e.value)

    assert err("nope.py") == "can't open file 'nope.py': [Errno 2] No such file or directory"
    (tmp_path / "data.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    assert err("data.bin") == "data.bin is not a Python script"
    assert err("no_such_module_xyz", is_module=True) == "No module named no_such_module_xyz"
    (tmp_path / "ok.py").write_text("print('ran')\n")
    (tmp_path / "taken").mkdir()
    assert "taken already exists" in err("ok.py", out=tmp_path / "taken")
    assert not root.exists()


def test_a_python_file_without_py_suffix_runs(trace, tmp_path):
    r = trace("import sys\nsys.exit(7)\n", name="tool")
    assert r.exit_code == 7 and r.folder.name.startswith("tool-")


def test_run_folders_are_named_and_never_overwritten(trace, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "now", lambda: datetime(2025, 1, 2, 3, 4, 5))
    first = trace("x = 1\n", name="train.py")
    second = trace("x = 1\n", name="train.py")
    assert first.folder == tmp_path / "traces" / "train-20250102-030405"
    assert second.folder == tmp_path / "traces" / "train-20250102-030405-2"
    out = trace("x = 1\n", name="train.py", out=tmp_path / "mine" / "run1", warmup=1)
    assert out.folder == tmp_path / "mine" / "run1"
    assert sorted(p.name for p in out.folder.iterdir()) == ["runinfo.json"]


def test_trace_file_is_named_for_torch_tb_profiler(trace):
    host = socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", host):
        pytest.skip(f"hostname {host!r} is rewritten for the file name")
    r = trace("import torch\nx = torch.randn(4).contiguous()\n", warmup=0, timed=0)
    # `<hostname>_<pid>`, read here from the OS, not from attnprof (the run is in-process: this pid)
    assert [p.name for p in r.trace_files] == [f"{host}_{os.getpid()}.pt.trace.json.gz"]
    assert r.trace_files[0].is_file() and r.runinfo.trace_files == [r.trace_files[0].name]


# --- signals, in a subprocess ---------------------------------------------------------------------------------------

LOOP = """\
import sys, time, torch
import torch.nn.functional as F
q = torch.randn(1, 2, 8, 4)
for i in range(100000):
    F.scaled_dot_product_attention(q, q, q)
    if i == 3:
        print("ready", flush=True)
    time.sleep(0.01)
"""

DRIVER = """\
import sys, time
from pathlib import Path
from attnprof.capture import session
from attnprof.capture.session import TraceOptions, trace_script
if sys.argv[1] == "slow-save":
    write, slept = session.write_runinfo, []
    def slow(info, folder):
        if not slept:
            print("saving", flush=True)
            time.sleep(0.5)
            slept.append(1)
        return write(info, folder)
    session.write_runinfo = slow
r = trace_script(TraceOptions(target="loop.py", is_module=False, args=[], out=Path("run"), warmup=0, timed=0,
                              active=1000))
sys.exit(r.exit_code)
"""


def _driver(tmp_path: Path, mode: str) -> subprocess.Popen:
    (tmp_path / "loop.py").write_text(LOOP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=sigint_as_in_a_terminal)


def _wait_for(proc: subprocess.Popen, word: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == word:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"driver ended before {word!r}: {proc.stderr.read()}")
    raise AssertionError(f"no {word!r} from the driver")


def test_ctrl_c_saves_the_run_and_exits_130(tmp_path):
    proc = _driver(tmp_path, "slow-save")
    try:
        _wait_for(proc, "ready")
        proc.send_signal(signal.SIGINT)
        _wait_for(proc, "saving")
        proc.send_signal(signal.SIGINT)  # a second Ctrl-C while saving must not lose the run
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback (most recent call last):" in err and "\nKeyboardInterrupt\n" in err
    assert "attnprof/" not in err.split("KeyboardInterrupt")[0]
    info = read_runinfo(tmp_path / "run")
    assert (info.outcome, info.exit_code) == ("interrupted", 130)
    assert info.trace_files and (tmp_path / "run" / info.trace_files[0]).is_file(), err
    assert json.load(gzip.open(tmp_path / "run" / info.trace_files[0]))["traceEvents"]
    assert info.steps.stopped_early and "script ended" in info.steps.stopped_early


def test_sigterm_saves_the_run_and_exits_143(tmp_path):
    proc = _driver(tmp_path, "plain")
    try:
        _wait_for(proc, "ready")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    info = read_runinfo(tmp_path / "run")
    assert (info.outcome, info.exit_code) == ("interrupted", 143)
    assert info.calls and info.trace_files


def test_signal_handlers_and_sys_state_are_restored(trace):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), list(sys.meta_path)
    r = trace(textwrap.dedent("""
        import signal
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    """))
    assert (r.exit_code, r.outcome) == (0, "completed")  # the script's own assert held: attnprof's handler was set
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), list(sys.meta_path)) == before


FORKS = """\
import json, multiprocessing as mp, signal
import torch
import torch.nn.functional as F

def child(_):
    from attnprof.capture import patching
    q = torch.randn(1, 2, 4, 8)
    F.scaled_dot_product_attention(q, q, q)
    return [patching._dispatch is None, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL]

if __name__ == "__main__":
    pool = mp.get_context("fork").Pool(2)
    result = pool.map(child, [0, 1])
    pool.terminate()  # SIGTERM to the workers
    pool.join()
    json.dump(result, open("children.json", "w"))
"""


def test_forked_workers_run_untraced_and_die_quietly_on_sigterm(tmp_path):
    """In a subprocess: forking the test process itself (threads of other tests) can deadlock the children."""
    (tmp_path / "forks.py").write_text(FORKS)
    driver = ("import sys; from attnprof.capture.session import TraceOptions, trace_script; "
              "sys.exit(trace_script(TraceOptions(target='forks.py', is_module=False, args=[], out=None, "
              "warmup=0, timed=0, active=2, quiet=True)).exit_code)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "children.json").read_text()) == [[True, True], [True, True]]
    assert "Traceback" not in done.stderr
