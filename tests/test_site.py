"""The tutorials site (``bash docs/build.sh OUT``) in headless Chromium, from file://, fully offline.

Builds the site once per session, reusing the notebooks ``tests/test_notebooks.py`` executed in the same
session when all of them are there (else the build executes them itself), or takes a built site from
``$SKELLAB_SITE_DIR``. Screenshots go to ``$SKELLAB_ARTIFACTS`` (default: a pytest temporary folder).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from browser_support import NetworkLog, artifacts_dir, chromium, distinct_colours, require_browser, stable_screenshot

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ERROR_OUTPUT_JS = """() => [...document.querySelectorAll('.cell_output .output')]
  .filter(e => e.classList.contains('traceback') || e.classList.contains('error')
               || e.textContent.includes('Traceback (most recent call last)'))
  .map(e => e.textContent.slice(0, 300))"""
BROKEN_IMAGES_JS = """() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 120))"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get("SKELLAB_SITE_DIR")
    if given:
        assert (Path(given) / "index.html").is_file(), f"SKELLAB_SITE_DIR={given} has no index.html"
        return Path(given)
    require_browser()  # skip (or fail under CI) before a long build if there is no browser
    for module in ("sphinx", "myst_nb", "furo", "papermill"):
        if importlib.util.find_spec(module) is None:
            message = f"the site needs {module}: pip install -e '.[docs]'"
            if os.environ.get("SKELLAB_REQUIRE_BROWSER") == "1":
                pytest.fail(message)
            pytest.skip(message)
    out = tmp_path_factory.mktemp("site") / "site"
    executed = tmp_path_factory.getbasetemp() / "executed-notebooks"
    reuse = ["--reuse", str(executed)] if all((executed / p.name).is_file() for p in NOTEBOOKS) else []
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "docs" / "build.sh"), str(out), *reuse], cwd=ROOT, text=True,
                          capture_output=True, timeout=1800)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, f"docs/build.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    print(f"site built in {time.perf_counter() - t0:.0f} s ({'reusing executed notebooks' if reuse else 'executing'})")
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return artifacts_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    sync_playwright = require_browser()
    pw = sync_playwright().start()
    with chromium(pw, tmp_path_factory.mktemp("chromium-profile")) as ctx:
        yield ctx
    pw.stop()


def _open(context, path: Path):
    net = NetworkLog().attach(context)
    page = context.new_page()
    net.attach_console(page)
    page.goto(path.as_uri(), wait_until="load", timeout=60_000)
    return page, net


def test_every_page_loads_offline_with_its_images(site, context):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 11, [p.name for p in pages]  # index, 8 notebooks, glossary, API (+ search, genindex)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    never_idle = []
    for path in pages:
        page, net = _open(context, path)
        # network-idle is only how long to wait: every request is logged when it starts, so one that leaves the
        # machine or fails is caught below even if the page never goes idle (which a loaded CI machine has shown
        # once in a while on pages that are idle within a second on their own)
        try:
            page.wait_for_load_state("networkidle", timeout=30_000)
        except PlaywrightTimeout:
            never_idle.append(str(path.relative_to(site)))
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
        broken = page.evaluate(BROKEN_IMAGES_JS)
        page.close()
        rel = path.relative_to(site)
        assert not net.failed, f"{rel}: failed requests {net.failed}"
        assert not net.external, f"{rel}: requests left the machine {net.external}"
        assert not broken, f"{rel}: images that did not load {broken}"
    print(f"{len(pages)} pages, all offline" + (f"; not network-idle within 30 s: {never_idle}" if never_idle else ""))


@pytest.mark.parametrize("stem", [p.stem for p in NOTEBOOKS])
def test_notebook_page_shows_outputs_math_and_a_3d_view(site, context, artifacts, stem):
    path = site / "notebooks" / f"{stem}.html"
    assert path.is_file(), f"no page for {stem}"
    page, net = _open(context, path)
    assert page.locator(".cell_output").count() >= 5, "the notebook's outputs are missing"
    assert page.evaluate(ERROR_OUTPUT_JS) == [], "an output cell shows an error"
    assert page.locator("img").count() >= 1, "no figure"
    page.wait_for_function("() => document.querySelectorAll('mjx-container').length > 0", timeout=60_000)
    assert page.locator("mjx-container").count() >= 2 and page.locator("mjx-merror").count() == 0
    assert page.locator("details, .toggle-details, .tag_hide-input").count() >= 2, "solutions are not collapsed"
    frame = page.locator("iframe.skellab-3d").first
    frame.scroll_into_view_if_needed()
    canvas = page.frame_locator("iframe.skellab-3d").first.locator("canvas").first
    canvas.wait_for(state="visible", timeout=60_000)
    shot = stable_screenshot(canvas, timeout=60, path=artifacts / f"site-3d-{stem}.png")
    page.close()
    assert distinct_colours(shot) >= 10, f"the 3D view is blank ({distinct_colours(shot)} colours)"
    assert not net.failed and not net.external, (net.failed, net.external)


def test_search_finds_the_course(site, context):
    page, net = _open(context, site / "search.html")
    page.goto((site / "search.html").as_uri() + "?q=medial", wait_until="load")
    # Sphinx lists hits one by one; read them once its summary says the search has finished
    page.wait_for_function("() => (document.querySelector('.search-summary') || {}).textContent"
                           "?.includes('Search finished')", timeout=60_000)
    hits = page.eval_on_selector_all("ul.search li a", "els => els.map(e => e.getAttribute('href'))")
    page.close()
    assert any("02_skeletonization" in h for h in hits), hits
    assert any("glossary" in h for h in hits), hits
    assert not net.failed and not net.external


def test_next_links_follow_the_course_order(site, context):
    expected = [f"notebooks/{p.stem}.html" for p in NOTEBOOKS] + ["docs/glossary.html", "docs/api.html"]
    page, _ = _open(context, site / "index.html")
    seen = []
    for _ in expected:
        nxt = page.locator("a.next-page").first
        nxt.click()
        page.wait_for_load_state("load")
        seen.append(Path(page.url.split("#")[0].replace("file://", "")).relative_to(site.resolve()).as_posix())
    page.close()
    assert seen == expected


def test_screenshots(site, context, artifacts):
    """Landing page, a notebook page with math and a 3D view, and the glossary (paths printed)."""
    shots = {}
    page, _ = _open(context, site / "index.html")
    shots["landing"] = artifacts / "site-landing.png"
    page.screenshot(path=str(shots["landing"]))
    page.goto((site / "notebooks" / "05_diffusion_sampling.html").as_uri(), wait_until="load")
    page.wait_for_function("() => document.querySelectorAll('mjx-container').length > 0", timeout=60_000)
    page.locator("text=EDM preconditioning").first.scroll_into_view_if_needed()
    shots["math"] = artifacts / "site-05-math.png"
    page.screenshot(path=str(shots["math"]))
    page.locator("iframe.skellab-3d").first.scroll_into_view_if_needed()
    stable_screenshot(page.frame_locator("iframe.skellab-3d").first.locator("canvas").first, timeout=60)
    shots["3d"] = artifacts / "site-05-3d.png"
    page.screenshot(path=str(shots["3d"]))
    page.goto((site / "docs" / "glossary.html").as_uri(), wait_until="load")
    shots["glossary"] = artifacts / "site-glossary.png"
    page.screenshot(path=str(shots["glossary"]))
    page.close()
    for name, path in shots.items():
        print(f"screenshot {name}: {path}")
        assert path.stat().st_size > 10_000
    info = site / "build-info.json"
    if info.is_file():
        print("build:", json.loads(info.read_text()))
