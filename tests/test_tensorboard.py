"""`tensorboard --logdir` over attnprof run folders: the PyTorch Profiler tab loads the runs, the attnprof tab lists
them and serves each run's tables and dashboard, the scalars carry attnprof's tags, and the tab renders in a browser.

One TensorBoard for the module, on a free loopback port, always stopped at the end.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from seed_traces import profile_seed_case

from attnprof.analysis.records import CallSplit, Report
from attnprof.pipeline import analyze_run, write_reports
from attnprof.render.chrome_trace import overlay_path
from attnprof.render.tensorboard import ScalarsRenderer, scalar_series
from attnprof.tbplugin.plugin import DASHBOARD_FILE, PLUGIN_NAME
from attnprof.trace.compare import COMPARE_FILE

CHROMIUM = Path("/usr/bin/chromium")
H100_TRACES = Path(__file__).resolve().parents[1] / "traces" / "h100"
H200_TRACES = Path(__file__).resolve().parents[1] / "traces" / "h200"
COMPARE_TRACES = ("12x64x256x64.float16.sdpa-cudnn.native.pt.trace.json.gz",
                  "16x128x784x128.float16.sdpa-cudnn.native.pt.trace.json.gz")
WORKER = "testhost_1"
START_TIMEOUT_S = 30
LOAD_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """Two run folders as attnprof leaves them (trace, attnprof.json, dashboard, overlay, scalars); the second's
    dashboard removed, for the tab to make on demand; and a plain trace and a compare folder attnprof did not write."""
    root = tmp_path_factory.mktemp("logdir")
    runs = {}
    for name, argv in (("seed-backward", ["--variant", "seed", "--steps", "2", "--backward"]),
                       ("all-variants", ["--variant", "all", "--steps", "2"])):
        folder = root / name
        profile_seed_case(folder, argv, worker=WORKER)
        run = analyze_run(folder)
        write_reports(run, folder, console=False)
        runs[name] = run.report
    (root / "all-variants" / DASHBOARD_FILE).unlink()  # the tab makes it when asked
    # what attnprof did not write: a plain torch.profiler trace and a compare folder (two of its traces)
    (root / "plain-b2b").mkdir()
    shutil.copy(H200_TRACES / "plain-back-to-back" / "back_to_back.pt.trace.json.gz", root / "plain-b2b")
    (root / "compare").mkdir()
    for name in (COMPARE_FILE, *COMPARE_TRACES):
        shutil.copy(H100_TRACES / "compare" / name, root / "compare")
    return root, runs


@pytest.fixture(scope="module")
def tensorboard(logdir):
    root, _ = logdir
    port = _free_port()
    exe = Path(sys.executable).parent / "tensorboard"
    log = open(root.parent / "tensorboard.log", "wb")
    proc = subprocess.Popen([str(exe), "--logdir", str(root), "--host", "127.0.0.1", "--port", str(port),
                             "--reload_interval", "1"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                _get(base, "/data/plugins_listing")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("TensorBoard did not start:\n" + (root.parent / "tensorboard.log").read_text())
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _get(base: str, path: str) -> bytes:
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return r.read()


def _json(base: str, path: str):
    return json.loads(_get(base, path))


def _status(base: str, path: str) -> int:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _poll(fetch, done, what: str):
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last answer: {value}")
        time.sleep(0.3)


def _q(run: str) -> str:
    return urllib.parse.quote(run)


def _call(call_id, step, window, op="sdpa", site="model.py:42", phase="fwd", launch=1.0) -> CallSplit:
    return CallSplit(id=call_id, op=op, backend="flash", phase=phase, site=site, found_by="attnprof",
                     device="cuda:0", step=step, window_us=window, compute_us=window / 2, copy_us=window / 4,
                     launch_us=launch, other_us=window / 4 - (launch or 0.0))


def _report(calls) -> Report:
    return Report(schema_version=1, source="test", trace_files=[], device="test", torch_version=None, calls=calls,
                  sites=[])


def test_scalars_are_step_means_per_site_and_phase():
    series = scalar_series(_report([_call(1, 5, 10.0), _call(2, 5, 20.0), _call(3, 6, 40.0),
                                    _call(1, 5, 30.0, phase="bwd")]))
    assert series["attnprof/model.py:42 fwd/window_us"] == [(5, 15.0), (6, 40.0)]
    assert series["attnprof/model.py:42 fwd/compute_us"] == [(5, 7.5), (6, 20.0)]
    assert series["attnprof/model.py:42 bwd/copy_us"] == [(5, 7.5)]
    assert {t.rsplit("/", 1)[1] for t in series} == {"window_us", "compute_us", "copy_us", "launch_us", "other_us"}


def test_scalars_without_steps_or_launch_and_with_two_ops_on_a_line():
    series = scalar_series(_report([_call(1, None, 10.0, launch=None), _call(2, None, 30.0, op="flash_attn_func",
                                                                             launch=None)]))
    assert series["attnprof/model.py:42 sdpa fwd/window_us"] == [(0, 10.0)]
    assert series["attnprof/model.py:42 flash_attn_func fwd/window_us"] == [(0, 30.0)]
    assert not any(t.endswith("/launch_us") for t in series)


def test_run_folder_gets_overlay_and_scalars(logdir):
    root, runs = logdir
    for name, report in runs.items():
        folder = root / name
        assert overlay_path(folder / f"{WORKER}.pt.trace.json.gz").is_file()
        events = list(folder.glob("events.out.tfevents.*.attnprof"))
        assert len(events) == 1
        # writing again replaces attnprof's event file instead of adding a second one
        again = ScalarsRenderer().write(report, folder)
        assert list(folder.glob("events.out.tfevents.*.attnprof")) == [again]


def test_both_tabs_are_listed(tensorboard):
    plugins = _json(tensorboard, "/data/plugins_listing")
    assert plugins["pytorch_profiler"]["enabled"]
    assert plugins[PLUGIN_NAME]["enabled"]
    assert plugins[PLUGIN_NAME]["loading_mechanism"] == {"type": "IFRAME",
                                                         "module_path": f"/data/plugin/{PLUGIN_NAME}/index.js"}


def test_pytorch_profiler_tab_loads_both_runs(tensorboard, logdir):
    _, runs = logdir
    answer = _poll(lambda: _json(tensorboard, "/data/plugin/pytorch_profiler/runs"),
                   lambda a: set(a["runs"]) >= set(runs) and not a["loading"], "torch-tb-profiler to load the runs")
    assert set(answer["runs"]) >= set(runs)
    for run in runs:
        views = _json(tensorboard, f"/data/plugin/pytorch_profiler/views?run={_q(run)}")
        workers = _json(tensorboard, f"/data/plugin/pytorch_profiler/workers?run={_q(run)}&view={_q(views[0])}")
        # the overlay is a worker of its own there: its Trace view shows attnprof's tracks
        assert set(workers) == {WORKER, f"{WORKER}.attnprof"}


def test_attnprof_tab_serves_runs_tables_and_dashboards(tensorboard, logdir):
    root, runs = logdir
    listed = _json(tensorboard, f"/data/plugin/{PLUGIN_NAME}/runs")
    # every folder attnprof can analyse, whoever wrote it
    assert [r["run"] for r in listed] == ["all-variants", "compare", "plain-b2b", "seed-backward"]
    for run, report in runs.items():
        doc = _json(tensorboard, f"/data/plugin/{PLUGIN_NAME}/report?run={_q(run)}")
        on_disk = json.loads((root / run / "attnprof.json").read_text())
        assert doc["sites"] == on_disk["sites"] and len(doc["sites"]) == len(report.sites) > 0
        assert [(c["id"], c["phase"], c["site"]) for c in doc["calls"]] == [(c.id, c.phase, c.site)
                                                                             for c in report.calls]
        assert all("kernels" not in c for c in doc["calls"])
    with urllib.request.urlopen(f"{tensorboard}/data/plugin/{PLUGIN_NAME}/dashboard?run=seed-backward") as r:
        page = r.read()
        assert page == (root / "seed-backward" / DASHBOARD_FILE).read_bytes()  # attnprof's own, newer than the trace
        assert "'sha256-" in r.headers["Content-Security-Policy"]  # its inline scripts, allowed by hash
    # no dashboard.html: made on demand, and nothing written into the logdir
    made = _get(tensorboard, f"/data/plugin/{PLUGIN_NAME}/dashboard?run=all-variants").decode()
    assert 'id="attnprof-data"' in made and not (root / "all-variants" / DASHBOARD_FILE).exists()
    # the plain trace: back_to_back.py's two attention calls per step, found by their ops (no attnprof ranges)
    plain = _json(tensorboard, f"/data/plugin/{PLUGIN_NAME}/report?run=plain-b2b")
    assert plain["calls"] and all(c["found_by"] != "attnprof" for c in plain["calls"])
    # the compare folder: one site per shape, and its page with the compare rows
    cmp = _json(tensorboard, f"/data/plugin/{PLUGIN_NAME}/report?run=compare")
    assert sorted(s["site"] for s in cmp["sites"]) == ["sdpa-cudnn/native 12×64×256×64 float16",
                                                      "sdpa-cudnn/native 16×128×784×128 float16"]
    assert "id=compare-rows" in _get(tensorboard, f"/data/plugin/{PLUGIN_NAME}/dashboard?run=compare").decode()
    assert sorted(p.name for p in (root / "compare").iterdir()) == sorted((COMPARE_FILE, *COMPARE_TRACES))
    for bad in ("no-such-run", "..", "../..", str(root)):
        assert _status(tensorboard, f"/data/plugin/{PLUGIN_NAME}/report?run={_q(bad)}") == 404
        assert _status(tensorboard, f"/data/plugin/{PLUGIN_NAME}/dashboard?run={_q(bad)}") == 404


def test_scalars_carry_attnprof_tags(tensorboard, logdir):
    _, runs = logdir
    expected = {run: set(scalar_series(report)) for run, report in runs.items()}
    tags = _poll(lambda: _json(tensorboard, "/data/plugin/scalars/tags"),
                 lambda t: all(set(t.get(run, {})) >= want for run, want in expected.items()),
                 "the scalars of both runs")
    for run, want in expected.items():
        assert set(tags[run]) == want and all(t.startswith("attnprof/") for t in want)
        assert not any(t.endswith("/launch_us") for t in want)  # CPU runs: launch does not apply
    run, report = "seed-backward", runs["seed-backward"]
    tag, points = next(iter(scalar_series(report).items()))
    served = _json(tensorboard, f"/data/plugin/scalars/scalars?run={_q(run)}&tag={_q(tag)}")
    assert [(step, pytest.approx(value, rel=1e-6)) for _, step, value in served] == points


def test_attnprof_tab_renders_in_a_browser(tensorboard, logdir):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("no chromium to drive")
    _, runs = logdir
    problems = []

    def ours(url: str) -> bool:
        return f"/plugin/{PLUGIN_NAME}/" in url or f"plugin_entry.html?name={PLUGIN_NAME}" in url

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text} ({m.location.get('url')})")
                    if m.type == "error" and (ours(m.location.get("url", "")) or not m.location.get("url")) else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}") if ours(r.url) else None)
            page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}")
                    if r.status >= 400 and ours(r.url) else None)
            page.goto(f"{tensorboard}/#{PLUGIN_NAME}")
            tab = page.frame_locator(f"iframe[src*='plugin_entry.html?name={PLUGIN_NAME}']")
            first, second = sorted(runs)  # the tab opens on the first run, as its selector lists them
            assert (first, second) == ("all-variants", "seed-backward")
            rows = tab.locator("#attnprof-sites tbody tr")
            rows.first.wait_for(timeout=20_000)
            assert tab.locator("#attnprof-run").input_value() == first
            assert rows.count() == len(runs[first].sites)
            assert tab.locator("#attnprof-calls tbody tr").count() == len(runs[first].calls)
            dashboard = tab.frame_locator("#attnprof-dashboard")
            dashboard.locator(".figure .main-svg").first.wait_for(timeout=30_000)  # made on demand, drawn
            tab.locator("#attnprof-run").select_option(second)
            # the dashboard runs inside the tab: plotly drew the second run's figures
            page.wait_for_function(
                "([sel, run]) => { const f = document.querySelector(sel);"
                " const d = f && f.contentDocument.querySelector('#attnprof-dashboard');"
                " const doc = d && d.contentDocument;"
                " return doc && doc.location.href.includes('run=' + run) && doc.readyState === 'complete'"
                " && doc.querySelector('.figure .main-svg') !== null; }",
                arg=[f"iframe[src*='plugin_entry.html?name={PLUGIN_NAME}']", second], timeout=20_000)
            page.wait_for_function(
                "([sel, n]) => { const f = document.querySelector(sel);"
                " return f && f.contentDocument.querySelectorAll('#attnprof-calls tbody tr').length === n; }",
                arg=[f"iframe[src*='plugin_entry.html?name={PLUGIN_NAME}']", len(runs[second].calls)],
                timeout=10_000)
            assert rows.count() == len(runs[second].sites)
        finally:
            browser.close()
    assert problems == []
