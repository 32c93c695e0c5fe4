"""The attnprof TensorBoard plugin: every run under the logdir that attnprof can analyse, offline.

A run is a folder holding an attnprof.json, a torch.profiler trace (an attnprof run folder, or plain traces such as
tensorboard_trace_handler writes) or a compare.json (`attnprof compare`). What attnprof wrote there is served when it
is newer than the traces; otherwise the folder is analysed when the tab asks for it, and the result kept in memory
until a file of the folder changes (nothing is written into the logdir).

Routes, under /data/plugin/attnprof/:

    index.js              the tab (an ES module TensorBoard loads in an iframe and calls render() on)
    runs                  [{"run": name}], name as TensorBoard names runs (path under the logdir)
    report?run=NAME       the run's attnprof.json, calls without their kernel lists (the tab shows tables)
    dashboard?run=NAME    the run's dashboard (self-contained: plotly.js is inside, nothing is fetched)

Run names only ever select among the folders found under the logdir: nothing outside it is served.
"""
from __future__ import annotations

import base64
import hashlib
import html
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import msgspec
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from attnprof.errors import AttnprofError
from attnprof.trace.compare import COMPARE_FILE
from attnprof.trace.load import DERIVED_MARK, TRACE_SUFFIXES

PLUGIN_NAME = "attnprof"
REPORT_FILE = "attnprof.json"  # what render/json_report.py writes into a run folder
DASHBOARD_FILE = "dashboard.html"
# Inline <script> elements (no src): their sha256 goes into the page's Content-Security-Policy.
_INLINE_SCRIPT = re.compile(rb"<script\b(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)


class AttnprofPlugin(base_plugin.TBPlugin):
    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        super().__init__(context)
        # The logdir as given (for messages) and resolved (for serving); None when TensorBoard reads no local
        # folder (--logdir_spec, a remote URL): then the tab stays inactive.
        self._logdir_arg = context.logdir or None
        logdir = Path(context.logdir).expanduser() if context.logdir else None
        self._logdir = logdir.resolve() if logdir and logdir.is_dir() else None
        self._cache: dict[Path, _Analysed] = {}

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_index_js,
            "/runs": self._serve_runs,
            "/report": self._serve_report,
            "/dashboard": self._serve_dashboard,
        }

    def is_active(self) -> bool:
        return next(self._walk_runs(), None) is not None

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="attnprof", disable_reload=True)

    # --- runs -----------------------------------------------------------------------------------------------------

    def _walk_runs(self):
        """(name, folder) of every folder under the logdir attnprof can analyse, named as TensorBoard names runs."""
        if self._logdir is None:
            return
        for root, dirs, files in os.walk(self._logdir):
            dirs.sort()
            if any(_is_input(f) for f in files) or REPORT_FILE in files:
                folder = Path(root)
                yield folder.relative_to(self._logdir).as_posix(), folder

    def _run_folder(self, request) -> Path | None:
        name = request.args.get("run")
        return dict(self._walk_runs()).get(name) if name is not None else None

    def _analysed(self, folder: Path) -> _Analysed:
        """The folder's report document and dashboard: attnprof's own files when newer than every input, else
        analysed now; kept until a file of the folder changes."""
        stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
        cached = self._cache.get(folder)
        if cached is not None and cached.stamp == stamp:
            return cached
        newest_input = max((t for name, t in stamp if _is_input(name)), default=0)
        report_file, page_file = folder / REPORT_FILE, folder / DASHBOARD_FILE
        fresh = dict(stamp)
        if fresh.get(REPORT_FILE, -1) >= newest_input and fresh.get(DASHBOARD_FILE, -1) >= newest_input:
            result = _Analysed(stamp, report_file.read_bytes(), page_file.read_bytes())
        else:
            result = _Analysed(stamp, *_analyse(folder))
        self._cache[folder] = result
        return result

    # --- routes ---------------------------------------------------------------------------------------------------

    @wrappers.Request.application  # type: ignore[arg-type]  # typed for functions; a method works too
    def _serve_index_js(self, request):
        return http_util.Respond(request, resources.files("attnprof.tbplugin").joinpath("static").joinpath("index.js").read_bytes(), "application/javascript")

    @wrappers.Request.application  # type: ignore[arg-type]  # typed for functions; a method works too
    def _serve_runs(self, request):
        runs = [{"run": name} for name, _ in self._walk_runs()]
        return http_util.Respond(request, runs, "application/json")

    @wrappers.Request.application  # type: ignore[arg-type]  # typed for functions; a method works too
    def _serve_report(self, request):
        folder = self._run_folder(request)
        if folder is None:
            return _not_found(request)
        try:
            doc = msgspec.json.decode(self._analysed(folder).report)
        except (OSError, msgspec.DecodeError, AttnprofError) as e:
            return http_util.Respond(request, {"error": f"cannot analyse {request.args['run']}: {e}"},
                                     "application/json", code=500)
        for call in doc.get("calls") or []:
            call.pop("kernels", None)  # the bulk of the file; the tables show calls and their copies
        return http_util.Respond(request, doc, "application/json; charset=utf-8")

    @wrappers.Request.application  # type: ignore[arg-type]  # typed for functions; a method works too
    def _serve_dashboard(self, request):
        folder = self._run_folder(request)
        if folder is None:
            return _not_found(request)
        try:
            content = self._analysed(folder).page
        except (OSError, AttnprofError) as e:
            return http_util.Respond(request, f"<p>attnprof cannot analyse {html.escape(request.args['run'])}: "
                                              f"{html.escape(str(e))}</p>", "text/html", code=500)
        # TensorBoard serves pages under a strict Content-Security-Policy; the dashboard's own inline scripts
        # (plotly.js and its figures) are allowed by their hashes, and nothing from other origins is.
        hashes = [base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
                  for m in _INLINE_SCRIPT.finditer(content)]
        return http_util.Respond(request, content, "text/html", csp_scripts_sha256s=hashes)


@dataclass
class _Analysed:
    stamp: tuple  # (file name, mtime) of every file in the folder when analysed
    report: bytes  # attnprof.json
    page: bytes  # dashboard.html


def _is_input(name: str) -> bool:
    """A file attnprof analyses: a torch.profiler trace (not one of its own derived views) or compare.json."""
    return (name.endswith(TRACE_SUFFIXES) and DERIVED_MARK not in name) or name == COMPARE_FILE


def _analyse(folder: Path) -> tuple[bytes, bytes]:
    """attnprof.json and dashboard.html of a folder, as `attnprof trace` / `attnprof dashboard` would write them."""
    from attnprof.pipeline import analyze_run, dashboard_html, render_json  # lazy: torch-free, but not light

    try:
        run = analyze_run(folder)
    except AttnprofError:
        if not (folder / COMPARE_FILE).is_file():
            raise
        run = None  # a compare.json without its traces: the compare panels only
    report = run.report if run else None
    doc = render_json(report).encode() if report else b'{"sites": [], "calls": [], "notes": []}'
    return doc, dashboard_html(report, folder, call_info=run.call_info if run else None).encode()


def _not_found(request):
    return http_util.Respond(request, {"error": "no such run under the logdir"}, "application/json", code=404)
