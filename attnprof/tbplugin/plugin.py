"""The attnprof TensorBoard plugin: serves the runs under the logdir that hold an attnprof.json.

Routes, under /data/plugin/attnprof/:

    index.js              the tab (an ES module TensorBoard loads in an iframe and calls render() on)
    runs                  [{"run": name, "dashboard": bool}], name as TensorBoard names runs (path under the logdir)
    report?run=NAME       the run's attnprof.json, calls without their kernel lists (the tab shows tables)
    dashboard?run=NAME    the run's dashboard.html, or a page saying how to make one

Run names only ever select among the folders found under the logdir: nothing outside it is served.
"""
from __future__ import annotations

import base64
import hashlib
import html
import os
import re
from pathlib import Path

import msgspec
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

PLUGIN_NAME = "attnprof"
REPORT_FILE = "attnprof.json"  # what render/json_report.py writes into a run folder
DASHBOARD_FILE = "dashboard.html"
_STATIC = Path(__file__).parent / "static"
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
        """(name, folder) of every folder under the logdir with an attnprof.json, named as TensorBoard names runs."""
        if self._logdir is None:
            return
        for root, dirs, files in os.walk(self._logdir):
            dirs.sort()
            if REPORT_FILE in files:
                folder = Path(root)
                yield folder.relative_to(self._logdir).as_posix(), folder

    def _run_folder(self, request) -> Path | None:
        name = request.args.get("run")
        return dict(self._walk_runs()).get(name) if name is not None else None

    # --- routes ---------------------------------------------------------------------------------------------------

    @wrappers.Request.application
    def _serve_index_js(self, request):
        return http_util.Respond(request, (_STATIC / "index.js").read_bytes(), "application/javascript")

    @wrappers.Request.application
    def _serve_runs(self, request):
        runs = [{"run": name, "dashboard": (folder / DASHBOARD_FILE).is_file()} for name, folder in self._walk_runs()]
        return http_util.Respond(request, runs, "application/json")

    @wrappers.Request.application
    def _serve_report(self, request):
        folder = self._run_folder(request)
        if folder is None:
            return _not_found(request)
        try:
            doc = msgspec.json.decode((folder / REPORT_FILE).read_bytes())
        except (OSError, msgspec.DecodeError) as e:
            return http_util.Respond(request, {"error": f"cannot read {REPORT_FILE}: {e}"}, "application/json",
                                     code=500)
        for call in doc.get("calls") or []:
            call.pop("kernels", None)  # the bulk of the file; the tables show calls and their copies
        doc["dashboard"] = (folder / DASHBOARD_FILE).is_file()
        return http_util.Respond(request, doc, "application/json; charset=utf-8")

    @wrappers.Request.application
    def _serve_dashboard(self, request):
        folder = self._run_folder(request)
        if folder is None:
            return _not_found(request)
        page = folder / DASHBOARD_FILE
        if not page.is_file():
            return http_util.Respond(request, self._no_dashboard_page(request.args["run"], folder), "text/html")
        content = page.read_bytes()
        # TensorBoard serves pages under a strict Content-Security-Policy; the dashboard's own inline scripts
        # (plotly.js and its figures) are allowed by their hashes, and nothing from other origins is.
        hashes = [base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
                  for m in _INLINE_SCRIPT.finditer(content)]
        return http_util.Respond(request, content, "text/html", csp_scripts_sha256s=hashes)

    def _no_dashboard_page(self, run: str, folder: Path) -> str:
        shown = Path(self._logdir_arg) / run if self._logdir_arg else folder
        command = f"attnprof dashboard {shown}"
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>attnprof: no dashboard yet</title>"
            "<style>body{font:14px system-ui,sans-serif;margin:2em;color:#333}"
            "code{background:#f1f3f4;padding:2px 6px;border-radius:3px}</style></head><body>"
            f"<p id='attnprof-no-dashboard'><b>No dashboard yet</b> for run {html.escape(run)}: run "
            f"<code>{html.escape(command)}</code>, then reload this tab.</p>"
            "<p>The tables below come from the run's attnprof.json.</p></body></html>"
        )


def _not_found(request):
    return http_util.Respond(request, {"error": "no such run with an attnprof.json under the logdir"},
                             "application/json", code=404)
