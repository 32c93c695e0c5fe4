"""What capture could not do is said in the run's notes (runinfo.json's note -> the console and attnprof.json's
notes), never swallowed: each failure is forced here and its one line looked for in both records. And every profiler
trace attnprof writes, `attnprof compare`'s too, has its non-UTF-8 names repaired."""
from __future__ import annotations

import gzip
import json
import sys

import torch

from attnprof.capture import session as session_mod
from attnprof.capture.window import StepWindow
from attnprof.pipeline import analyze_run, render_json
from attnprof.trace.runinfo import read_runinfo

#: One nn.MultiheadAttention forward per step, three steps: the model is the step's root (a forward pre-hook).
MHA_LOOP = """
import torch
import torch.nn as nn

torch.manual_seed(0)
mha = nn.MultiheadAttention(8, 2, batch_first=True)
x = torch.randn(1, 4, 8)
for _ in range(3):
    mha(x, x, x)
"""


def notes_of(folder) -> tuple[str, list[str]]:
    """(runinfo.json's note, attnprof.json's notes) of a run folder, as written and as analysed."""
    note = read_runinfo(folder).note or ""
    report = json.loads(render_json(analyze_run(folder).report))
    return note, report["notes"]


def assert_noted(folder, line: str) -> None:
    note, report_notes = notes_of(folder)
    assert line in note, note
    assert any(line in n for n in report_notes), report_notes


def test_a_function_that_cannot_be_wrapped_at_import_is_named(trace, tmp_path, monkeypatch, capfd):
    """flash_attn, imported by the script during the run, refuses to have flash_attn_func replaced: the run goes
    on, and the note says which function is not profiled and why."""
    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import sys, types\n"
        "def flash_attn_func(q, k, v, *args, **kwargs):\n"
        "    return q\n"
        "class _ReadOnly(types.ModuleType):\n"
        "    def __setattr__(self, name, value):\n"
        "        if name == 'flash_attn_func':\n"
        "            raise AttributeError('read-only module')\n"
        "        super().__setattr__(name, value)\n"
        "sys.modules[__name__].__class__ = _ReadOnly\n")
    for name in [m for m in sys.modules if m.partition(".")[0] == "flash_attn"]:
        monkeypatch.delitem(sys.modules, name)
    try:
        r = trace("import flash_attn\n" + MHA_LOOP)
    finally:
        for name in [m for m in sys.modules if m.partition(".")[0] == "flash_attn"]:
            del sys.modules[name]
    assert r.exit_code == 0
    line = "flash_attn.flash_attn_func not wrapped: AttributeError: read-only module; its calls are not profiled"
    assert_noted(r.folder, line)
    assert f"attnprof: {line}" in capfd.readouterr().err  # said when it happened


def test_a_failing_step_hook_is_named(trace, monkeypatch):
    """The root module's forward pre-hook fails (step counting): the forwards still run, the note says so."""
    next_step = StepWindow._next_step

    def failing(self, kind):
        if kind == "iteration" and self.root is not None:  # only the root's pre-hook counts steps this way
            raise RuntimeError("step counter broke")
        return next_step(self, kind)

    monkeypatch.setattr(StepWindow, "_next_step", failing)
    r = trace(MHA_LOOP)
    assert r.exit_code == 0
    assert_noted(r.folder, "step counting failed in the forward pre-hook of MultiheadAttention: RuntimeError: step "
                           "counter broke; that forward was not counted as a step")


def test_a_root_module_that_cannot_be_hooked_is_named(trace, monkeypatch):
    def refuse(module, hook, **kwargs):
        raise RuntimeError("hooks are off")

    monkeypatch.setattr(torch.nn.Module, "register_forward_pre_hook", refuse)
    r = trace(MHA_LOOP)
    assert r.exit_code == 0
    assert_noted(r.folder, "could not hook the forward of MultiheadAttention (the model the first attention call ran "
                           "in): RuntimeError: hooks are off; steps are counted by the first call site instead")


def test_runinfo_not_saved_when_the_window_closed_is_named(trace, monkeypatch):
    """The runinfo.json written when the window closes (kept in case the process is killed) fails; the one written
    at the end says so."""
    real = session_mod.write_runinfo
    calls = []

    def first_fails(info, folder):
        calls.append(info.outcome)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(info, folder)

    monkeypatch.setattr(session_mod, "write_runinfo", first_fails)
    r = trace(MHA_LOOP, active=1)
    assert calls == ["running", "completed"]
    assert_noted(r.folder, "could not save runinfo.json when the window closed: OSError: [Errno 28] No space left on "
                           "device; it is written at the end of the run only")


def test_a_failure_to_close_a_call_that_raised_is_named(trace, monkeypatch):
    """An attention call raises (bad shapes) and closing its timing fails too: the script's own error handling
    runs as under python, and the note says the call's timing may be left open."""
    exit_selection = session_mod.ncu_select.exit

    def exit_failing_in_abort(selection):  # closing the raised call fails; closing the calls that returned does not
        if sys._getframe(1).f_code.co_name == "_abort":
            raise RuntimeError("timer state lost")
        return exit_selection(selection)

    monkeypatch.setattr(session_mod.ncu_select, "exit", exit_failing_in_abort)
    r = trace(MHA_LOOP + """
import torch.nn.functional as F
try:
    F.scaled_dot_product_attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 8))
except RuntimeError:
    print("caught")
""", warmup=1, timed=1, active=1, after="time")  # a call after the window that still goes through attnprof
    assert r.exit_code == 0
    assert_noted(r.folder, "could not close an attention call that raised: RuntimeError: timer state lost; its "
                           "timing and NVTX range may be left open")


def _with_bad_bytes(export):
    """profile.export_chrome_trace, then an op name made not UTF-8 (pytorch#113564: a freed code object's name)."""
    def corrupted(prof, path):
        result = export(prof, path)
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
        assert b'"name": "aten::' in data
        data = data.replace(b'"name": "aten::', b'"name": "\xff\xfeaten::', 1)
        with opener(path, "wb") as f:
            f.write(data)
        return result

    return corrupted


def _trace_texts(folder) -> list[bytes]:
    return [gzip.decompress(p.read_bytes()) for p in sorted(folder.glob("*.pt.trace.json.gz"))]


def test_trace_repairs_names_that_are_not_utf8(trace, monkeypatch):
    monkeypatch.setattr(torch.profiler.profile, "export_chrome_trace",
                        _with_bad_bytes(torch.profiler.profile.export_chrome_trace))
    r = trace(MHA_LOOP, active=1)
    (text,) = _trace_texts(r.folder)
    assert "\ufffd\ufffdaten::" in text.decode("utf-8")  # strict: raises if a bad byte was left
    assert analyze_run(r.folder).report.sites  # and the analysis reads it


def test_compare_repairs_names_that_are_not_utf8(tmp_path, monkeypatch):
    """`attnprof compare` exports its traces through the same function as `attnprof trace`: the repair applies."""
    from attnprof.capture.ceilings import device_name
    from attnprof.cli import main
    from attnprof.trace.ceilings import Ceilings, save_ceilings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # cached ceilings: compare measures none
    save_ceilings(Ceilings(device=device_name(torch.device("cpu")), torch_version=str(torch.__version__),
                           copy_gbps=10.0, matmul_tflops=0.05, dtype="float32",
                           measured_at="2026-01-01T00:00:00+00:00", method="test values"))
    monkeypatch.setattr(torch.profiler.profile, "export_chrome_trace",
                        _with_bad_bytes(torch.profiler.profile.export_chrome_trace))
    code = main(["compare", "--device", "cpu", "--shape", "1,2,16,8", "--backends", "sdpa-math", "--reps", "1",
                 "--warmup", "0", "--out", str(tmp_path / "cmp"), "--json"])
    assert code == 0
    texts = _trace_texts(tmp_path / "cmp")
    assert len(texts) == 1
    assert "\ufffd\ufffdaten::" in texts[0].decode("utf-8")
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert [r["unsupported"] for r in rows if r["backend"] == "sdpa-math"] == [None]
    assert [r["window_us"] is not None for r in rows if r["backend"] == "sdpa-math"] == [True]


def test_a_failure_to_make_way_for_the_scripts_profiler_is_named(trace, monkeypatch):
    def takes(self, profiler, kind):
        raise RuntimeError("watch broke")

    monkeypatch.setattr(session_mod.Session, "_user_profiler_takes", takes)
    r = trace(MHA_LOOP + """
with torch.profiler.profile():
    mha(x, x, x)
print("own profiler ran")
""", active=1)
    assert r.exit_code == 0
    assert_noted(r.folder, "could not make way for the script's own profiler (torch.profiler): RuntimeError: watch "
                           "broke; attnprof's window may still have been open when it started")


def test_wrappers_torchscript_cannot_see_are_named(trace, monkeypatch):
    """TorchScript must see the wrappers of sdpa and of TransformerEncoderLayer's fused op as the aten ops they
    stand for; when registering them fails, scripting such code may fail under attnprof: the notes say so."""
    import torch.jit._builtins as builtins

    from attnprof.capture import patching

    def refuse(fn, op):
        raise RuntimeError("registry closed")

    monkeypatch.setattr(builtins, "_register_builtin", refuse)
    monkeypatch.setattr(patching, "_wrappers", {})  # made afresh in this run, not taken from an earlier one
    r = trace(MHA_LOOP, active=1)
    assert r.exit_code == 0
    assert_noted(r.folder, "sdpa's wrapper not registered with TorchScript as aten::scaled_dot_product_attention: "
                           "RuntimeError: registry closed; torch.jit.script of code that calls it may fail under "
                           "attnprof")
    assert_noted(r.folder, "TransformerEncoderLayer's fused op not registered with TorchScript: RuntimeError: "
                           "registry closed; torch.jit.script of such a layer may fail under attnprof")
