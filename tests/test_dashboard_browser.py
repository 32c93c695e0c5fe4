"""A generated dashboard in headless Chromium: every chart drawn, the theme toggle re-themes them, no console or
page error, and nothing fetched from the network (the page is self-contained)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hand_records import compare_doc, seed_vs_sdpa
from seed_runs import seed_runs

from attnprof.pipeline import analyze_path, write_dashboard_for
from attnprof.render import dashboard as db

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def open_page(browser, path: Path):
    """The page with its problems: console errors and warnings, page errors, requests that left the file."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def route(r):
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            problems.append(f"network: {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.goto(path.as_uri())
    return page, problems


_DRAWN = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
    id: gd.id,
    svgs: gd.querySelectorAll('.main-svg').length,
    traces: (gd._fullData || []).length,
    drawn: gd.querySelectorAll('g.trace, g.table').length,
    marks: gd.querySelectorAll('g.trace path, g.trace .point, g.table .cell-text').length,
    paper: gd._fullLayout.paper_bgcolor,
}))"""


def check_all_drawn(page, path: Path) -> list[dict]:
    expected = db.read_dashboard_data(path)["figures"]
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length === {len(expected)}")
    drawn = {d["id"]: d for d in page.evaluate(_DRAWN)}
    assert set(drawn) == {f"fig-{k}" for k in expected}
    for key, fig in expected.items():
        d = drawn[f"fig-{key}"]
        assert d["svgs"] >= 1, key
        assert d["traces"] == len(fig["data"]), key
        assert d["drawn"] >= 1 and d["marks"] >= 1, f"{key}: nothing drawn"
    return list(drawn.values())


def test_every_chart_renders_and_the_theme_toggles(browser, tmp_path):
    r, _, _ = seed_vs_sdpa()
    (tmp_path / "compare.json").write_text(json.dumps(compare_doc()))
    path = write_dashboard_for(r, tmp_path)  # every panel kind: bars, waterfall, timeline, roofline, sweep, table
    page, problems = open_page(browser, path)
    before = check_all_drawn(page, path)
    theme = page.evaluate("document.documentElement.dataset.theme")
    page.click("#theme")
    page.wait_for_function(f"document.documentElement.dataset.theme !== '{theme}'")
    after = page.evaluate(_DRAWN)
    # every chart took the other template
    assert all(a["paper"] != b["paper"] for a, b in zip(after, before, strict=True))
    assert problems == []
    page.close()


def test_cpu_run_dashboard_renders(browser, tmp_path_factory):
    run = seed_runs(tmp_path_factory.getbasetemp())["all"]
    path = write_dashboard_for(analyze_path(run), run)
    page, problems = open_page(browser, path)
    drawn = check_all_drawn(page, path)
    assert {d["id"] for d in drawn} >= {"fig-sites", "fig-waterfall-0", "fig-timeline"}
    assert problems == []
    page.close()


def test_dark_preference_is_the_first_theme(browser, tmp_path):
    r, _, _ = seed_vs_sdpa()
    path = write_dashboard_for(r, tmp_path)
    page = browser.new_page(color_scheme="dark")
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    dark_paper = db.read_dashboard_data(path)["templates"]["dark"]["layout"]["paper_bgcolor"]
    assert page.evaluate("document.querySelector('.js-plotly-plot')._fullLayout.paper_bgcolor") == dark_paper
    page.close()


_BOXES = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
    const box = el => { if (!el) return null; const r = el.getBoundingClientRect();
                        return [r.left, r.top, r.right, r.bottom]; };
    return {id: gd.id, legend: box(gd.querySelector('g.legend')), toolbar: box(gd.querySelector('.modebar')),
            plot: box(gd.querySelector('.main-svg'))};
})"""


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.fixture(scope="module")
def h100_pages(tmp_path_factory):
    """The dashboards of the reference H100 runs a user opens first: a forward run and a two-shape compare."""
    from seed_runs import H100_TRACES

    from attnprof.pipeline import analyze_run, read_compare

    out = tmp_path_factory.mktemp("pages")
    pages = {}
    for name in ("seed-fwd", "compare"):
        run = analyze_run(H100_TRACES / name)
        pages[name] = (run.report, write_dashboard_for(run.report, out, compare=read_compare(H100_TRACES / name),
                                                       name=f"{name}.html", call_info=run.call_info))
    return pages


@pytest.mark.parametrize("width", [1400, 800])
def test_legends_clear_of_the_toolbar_and_nothing_wider_than_the_page(browser, h100_pages, width):
    for _, path in h100_pages.values():
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(path.as_uri())
        check_all_drawn(page, path)
        boxes = page.evaluate(_BOXES)
        assert boxes
        for b in boxes:
            assert b["toolbar"] is not None, b["id"]
            if b["legend"] is not None:
                assert not _overlap(b["legend"], b["toolbar"]), f"{path.name} {b['id']} at {width} px: {b}"
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path.name
        page.close()


@pytest.mark.parametrize("width", [1400, 800])
def test_headline_on_top_and_bars_scaled_by_the_users_time(browser, h100_pages, width):
    report, path = h100_pages["seed-fwd"]
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(path.as_uri())
    check_all_drawn(page, path)
    headline = page.inner_text("#headline")
    # the seed wrapper's site is slower than SDPA's, mostly by its layout copies
    assert "flash_attention seed_case.py:34 via :47 is " in headline and "slower" in headline and "layout copies" in headline
    # the headline comes before the first chart
    assert page.evaluate("document.querySelector('#headline').getBoundingClientRect().bottom <= "
                         "document.querySelector('#fig-sites').getBoundingClientRect().top")
    top = page.evaluate("document.getElementById('fig-sites')._fullLayout.xaxis.range[1]")
    # the longest bar is the seed site's true time (CUDA events outside the profiler) plus its copies' busy time:
    # the axis ends a little past it, far below the 3,500 µs profiled windows it used to span
    user_max = max(s.window_true_us for s in report.sites)
    profiled_max = max(s.window_us for s in report.sites)
    assert user_max <= top <= 1.5 * user_max and top < profiled_max / 5
    page.close()


def test_gallery_pages_draw_from_the_one_shared_plotly(browser, tmp_path):
    """The gallery's pages load plotly.js from the one plotly.min.js beside them (offline, no copy inside a page):
    each draws all its charts; a page copied away from that file draws none."""
    from seed_runs import H100_TRACES

    from attnprof.gallery import build_gallery

    out = tmp_path / "gallery"
    entries = build_gallery(H100_TRACES, out)
    assert [p.name for p in out.glob("*.js")] == ["plotly.min.js"]
    assert (out / "plotly.min.js").stat().st_size > 3_000_000  # plotly.js itself (4.6 MB minified)
    for entry in entries:
        text = entry.path.read_text()
        assert text.count('<script src="plotly.min.js"></script>') == 1 and text.count("<script") == 3
        assert entry.path.stat().st_size < 500_000, entry.path.name  # no plotly.js inside
        page, problems = open_page(browser, entry.path)
        check_all_drawn(page, entry.path)
        assert problems == [], entry.path.name
        page.close()
    alone = tmp_path / "alone" / entries[0].path.name
    alone.parent.mkdir()
    alone.write_text(entries[0].path.read_text())
    page, problems = open_page(browser, alone)
    page.wait_for_load_state("load")
    assert page.evaluate("typeof Plotly") == "undefined"
    assert page.evaluate("document.querySelectorAll('.js-plotly-plot').length") == 0
    assert any("Plotly is not defined" in p for p in problems)
    page.close()
