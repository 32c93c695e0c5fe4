"""Hostile places to write: bad output paths, full disks, read-only folders, failing renders, closed streams, odd
script names (issue 8). Every refused command exits 2 with one line and leaves its inputs byte-identical; a write that
fails leaves the last good file or none, never a truncated one; `trace` keeps the script's exit code whatever
attnprof's own writes do.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from attnprof import files
from attnprof.cli import main
from attnprof.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "traces" / "h100" / "seed-fwd"
SEED_TRACE = "vm_447.pt.trace.json.gz"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnprof: error: "), err
    return lines[0]


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too: a left-over temporary file shows here) with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(SEED, run)
    return run


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if p.returncode:
        pytest.skip("mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KB tmpfs: the dashboard (plotly.js embedded, megabytes) cannot fit."""
    where = tmp_path / "small"
    _mount_tmpfs(where, "512k")
    yield where
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def read_only(tmp_path):
    """A read-only tmpfs holding a copy of the seed run (root ignores mode bits: only a read-only mount refuses)."""
    where = tmp_path / "ro"
    _mount_tmpfs(where, "8m")
    shutil.copytree(SEED, where / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    yield where
    subprocess.run(["umount", str(where)], check=True)


# --- dashboard -o: checked before any work ---------------------------------------------------------------------------

def _under_a_file(run):
    return run / "runinfo.json" / "page.html", "runinfo.json is a file, not a folder"


def _onto_a_folder(run):
    return run, "is a folder: give a file name"


def _missing_parent(run):
    return run / "no" / "such" / "page.html", "no folder"


def _onto_runinfo(run):
    return run / "runinfo.json", "is an input of this command"


def _onto_the_trace(run):
    return run / SEED_TRACE, "is an input of this command"


def _onto_attnprof_json(run):
    (run / "attnprof.json").write_text("{}\n")  # left by an earlier `attnprof trace`; analysis reads the folder
    return run / "attnprof.json", "is an input of this command"


def _onto_a_link_to_the_trace(run):
    link = run.parent / "link.json.gz"
    link.symlink_to(run / SEED_TRACE)
    return link, "is an input of this command"


TARGETS = [_under_a_file, _onto_a_folder, _missing_parent, _onto_runinfo, _onto_the_trace, _onto_attnprof_json,
           _onto_a_link_to_the_trace]


@pytest.mark.parametrize("target", TARGETS, ids=[t.__name__.strip("_") for t in TARGETS])
def test_dashboard_output_refused_before_any_work(capsys, run_copy, target):
    output, message = target(run_copy)
    before = digests(run_copy)
    code, out, err = cli(capsys, "dashboard", run_copy, "-o", output)
    assert code == 2 and out == ""
    assert message in one_line_error(err)
    assert digests(run_copy) == before  # nothing written, nothing overwritten


def test_dashboard_of_a_trace_file_onto_itself(capsys, tmp_path):
    trace = tmp_path / SEED_TRACE
    shutil.copy(SEED / SEED_TRACE, trace)
    before = trace.read_bytes()
    code, _, err = cli(capsys, "dashboard", trace, "-o", trace)
    assert code == 2 and "is an input of this command" in one_line_error(err)
    assert trace.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [SEED_TRACE]


def test_dashboard_into_a_read_only_place(capsys, read_only):
    before = digests(read_only)
    code, _, err = cli(capsys, "dashboard", read_only / "run")  # default target: run/dashboard.html
    assert code == 2 and "is not writable" in one_line_error(err)
    code, _, err = cli(capsys, "dashboard", read_only / "run", "-o", read_only / "page.html")
    assert code == 2 and "is not writable" in one_line_error(err)
    assert digests(read_only) == before


def test_dashboard_on_a_full_disk_keeps_the_last_good_page(capsys, run_copy, small_disk):
    page = small_disk / "dashboard.html"
    page.write_text("<html>the last good page</html>\n")
    code, out, err = cli(capsys, "dashboard", run_copy, "-o", page)
    assert code == 2 and out == ""
    assert f"could not write {page}: no space left on the device" in one_line_error(err)
    assert page.read_text() == "<html>the last good page</html>\n"
    assert [p.name for p in small_disk.iterdir()] == ["dashboard.html"]  # no half-written temporary file


# --- atomic writes ---------------------------------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "attnprof.json"
    path.write_text('{"good": true}\n')

    def writer(f):
        f.write(b'{"half": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, writer)
    assert path.read_text() == '{"good": true}\n' and [p.name for p in tmp_path.iterdir()] == ["attnprof.json"]
    atomic_write(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would have made it, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fail_fsync_of(monkeypatch, name: str) -> None:
    """A full disk seen where it shows with delayed allocation: at the flush to disk of the file named `name`."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_runinfo_write_on_a_full_disk_keeps_the_previous_one(monkeypatch, run_copy):
    from attnprof.trace.runinfo import read_runinfo, write_runinfo

    before = (run_copy / "runinfo.json").read_bytes()
    info = read_runinfo(run_copy)
    info.exit_code = 7
    _fail_fsync_of(monkeypatch, "runinfo.json")
    with pytest.raises(OSError):
        write_runinfo(info, run_copy)
    assert (run_copy / "runinfo.json").read_bytes() == before
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


def test_reports_on_a_full_disk_write_what_fits(monkeypatch, run_copy):
    from attnprof.pipeline import analyze_run, write_reports

    (run_copy / "dashboard.html").write_text("old page\n")
    _fail_fsync_of(monkeypatch, "dashboard.html")
    missing = write_reports(analyze_run(run_copy), run_copy, console=False)
    assert missing == [f"could not write {run_copy / 'dashboard.html'}: no space left on the device"]
    assert (run_copy / "dashboard.html").read_text() == "old page\n"
    report = json.loads((run_copy / "attnprof.json").read_text())  # complete, and written before the failure
    assert len(report["calls"]) == 6  # seed-fwd: 6 attention calls profiled (runinfo.json: steps.profiled_calls)
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


# --- trace: the script's exit code, whatever attnprof's own writes do ----------------------------------------------

SCRIPT = """
    import sys
    import torch
    import torch.nn.functional as F

    open("ran.txt", "w").write("yes")
    q = torch.randn(1, 2, 8, 4)
    for _ in range(2):
        F.scaled_dot_product_attention(q, q, q)
    sys.exit(3)
"""


def _failing_overlay(monkeypatch):
    import attnprof.render.trace_views as views

    def boom(*args):
        raise RuntimeError("overlay renderer broke")

    monkeypatch.setattr(views.TraceOverlayRenderer, "write", boom)
    return "the analysis failed (RuntimeError: overlay renderer broke)", None


def _full_disk_at_dashboard(monkeypatch):
    _fail_fsync_of(monkeypatch, "dashboard.html")
    return "dashboard.html: no space left on the device", "dashboard.html"


@pytest.mark.parametrize("fault", [_full_disk_at_dashboard, _failing_overlay], ids=["full-disk", "render-bug"])
def test_trace_keeps_the_exit_code_when_a_report_cannot_be_written(capsys, monkeypatch, tmp_path, fault):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    message, absent = fault(monkeypatch)
    code = main(["trace", "--out", "run", "--warmup", "0", "--timed", "0", "--active", "1", "script.py"])
    err = capsys.readouterr().err
    assert code == 3
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if message in line]
    assert len(lines) == 1 and "run folder kept: run" in lines[0]
    run = tmp_path / "run"
    assert json.loads((run / "runinfo.json").read_text())["exit_code"] == 3
    if absent:
        assert not (run / absent).exists()  # none, never a truncated one
        assert json.loads((run / "attnprof.json").read_text())["calls"]  # what fitted is complete
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def _root_is_a_file(tmp_path):
    (tmp_path / "traces").write_text("not a folder")
    return ["--root", "traces"], "--root traces is a file, not a folder"


def _out_exists(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    return ["--out", "run"], "run already exists"


def _out_under_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    return ["--out", "notes.txt/run"], "notes.txt is a file, not a folder"


RUN_FOLDERS = [_root_is_a_file, _out_exists, _out_under_a_file]


@pytest.mark.parametrize("command", ["trace", "compare", "nsys"])
@pytest.mark.parametrize("where", RUN_FOLDERS, ids=[w.__name__.strip("_") for w in RUN_FOLDERS])
def test_run_folder_target_refused_before_the_script_runs(capsys, monkeypatch, tmp_path, command, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    options, message = where(tmp_path)
    before = digests(tmp_path)
    argv = [command, *options] + {"trace": ["script.py"], "compare": ["--device", "cpu"],
                                  "nsys": ["--", "script.py"]}[command]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert message in one_line_error(err)
    assert digests(tmp_path) == before  # the script never ran (it writes ran.txt), nothing created


def test_trace_into_a_read_only_place(capsys, monkeypatch, tmp_path, read_only):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    code, _, err = cli(capsys, "trace", "--root", read_only / "traces", "script.py")
    assert code == 2 and f"{read_only} is not writable" in one_line_error(err)
    assert not (tmp_path / "ran.txt").exists()


def _run_both(tmp_path, source: str, name: str = "script.py") -> tuple:
    (tmp_path / name).write_text(textwrap.dedent(source), encoding="utf-8")
    plain = subprocess.run([sys.executable, name], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    traced = subprocess.run([sys.executable, "-m", "attnprof", "trace", "--out", "run", "--warmup", "0", "--timed",
                             "0", "--active", "1", name], capture_output=True, text=True, cwd=tmp_path, env=ENV,
                            timeout=300)
    return plain, traced


def test_script_that_closes_stderr_exits_as_under_python(tmp_path):
    # no attention call (python alone need not import torch): attnprof still has its say after the script
    plain, traced = _run_both(tmp_path, """
        import sys

        sys.stderr.close()
        print("done")
    """)
    assert plain.returncode == 0 and plain.stdout == "done\n"
    assert (traced.returncode, traced.stdout) == (plain.returncode, plain.stdout)
    assert "Traceback" not in traced.stderr and "lost sys.stderr" not in traced.stderr
    assert json.loads((tmp_path / "run" / "runinfo.json").read_text())["outcome"] == "completed"


def test_non_ascii_script_name_gives_a_site_selectors_match(capsys, monkeypatch, tmp_path):
    from attnprof.capture.session import TraceOptions, trace_script

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sïte.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn.functional as F

        q = torch.randn(1, 2, 8, 4)
        for _ in range(2):
            F.scaled_dot_product_attention(q, q, q)
    """), encoding="utf-8")
    result = trace_script(TraceOptions(target="sïte.py", is_module=False, args=[], out=tmp_path / "run",
                                       root=tmp_path, warmup=0, timed=0, active=1, quiet=True))
    assert result.exit_code == 0
    code, out, err = cli(capsys, "analyze", "--json", "run")
    assert code == 0
    assert {c["site"] for c in json.loads(out)["calls"]} == {"sïte.py:7"}  # line 7 of the script above
    code, out, err = cli(capsys, "explain", "run::sïte.py:7", "--json")
    assert code == 0 and "Traceback" not in err, err
    assert [d["subject"]["sites"] for d in json.loads(out)["diagnoses"]] == [["sïte.py:7"]]


# --- compare -----------------------------------------------------------------------------------------------------------

def test_compare_shape_beyond_memory_is_unsupported_with_the_reason(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no cached ceilings: none measured either
    code, out, err = cli(capsys, "compare", "--device", "cpu", "--shape", "1024,128,65536,128", "--backends",
                         "sdpa-math", "--warmup", "0", "--reps", "1", "--out", tmp_path / "cmp", "--json")
    assert code == 0 and "Traceback" not in err
    rows = json.loads(out)
    assert {r["phase"] for r in rows} == {"fwd"} and rows
    # q, k, v and the output: 4 x 1024*128*65536*128 fp32 values = 4 x 4 TiB = 16,384 GiB
    assert all(r["unsupported"].startswith("its inputs and output need 16,384.0 GiB") for r in rows)
    assert (tmp_path / "cmp" / "compare.json").is_file()
    assert not (tmp_path / "cache").exists()  # nothing ran: the device's ceilings were not measured


@pytest.mark.parametrize("out", [True, False], ids=["--out", "--root"])
def test_failed_compare_leaves_no_empty_folder(capsys, monkeypatch, tmp_path, out):
    import attnprof.capture.compare as compare

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare._Runner, "time", interrupted)
    where = ["--out", tmp_path / "cmp"] if out else ["--root", tmp_path / "traces"]
    code, _, err = cli(capsys, "compare", "--device", "cpu", "--backends", "sdpa-math", "--reps", "1", *where)
    assert code == 130 and "Traceback" not in err and err.strip().splitlines()[-1] == "attnprof: interrupted"
    assert not (tmp_path / "cmp").exists() and list((tmp_path / "traces").iterdir() if not out else []) == []


# --- gallery ---------------------------------------------------------------------------------------------------------

def test_gallery_out_a_file(capsys, tmp_path):
    (tmp_path / "out").write_text("mine")
    code, _, err = cli(capsys, "dashboard", "--gallery", "--traces", SEED.parent, "--out", tmp_path / "out")
    assert code == 2 and "is a file, not a folder" in one_line_error(err)
    assert (tmp_path / "out").read_text() == "mine"


def test_gallery_out_onto_its_traces(capsys, tmp_path):
    traces = tmp_path / "traces"
    shutil.copytree(SEED, traces / "seed-fwd")
    (traces / "README.md").write_text("the traces' own readme\n")
    before = digests(traces)
    code, _, err = cli(capsys, "dashboard", "--gallery", "--traces", traces, "--out", traces)
    assert code == 2 and "never writes among its inputs" in one_line_error(err)
    assert digests(traces) == before
