"""Real-browser end-to-end tests: JupyterLab + headless Debian Chromium through Playwright.

Setup once per machine: ``bash .ci/browser-setup``. Run: ``python3 -m pytest -m browser -s``.
Screenshots go to ``$SKELLAB_ARTIFACTS`` (default: a pytest temporary directory); their paths are printed.
Missing Chromium/Playwright skips these tests, unless ``SKELLAB_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from browser_support import (
    NetworkLog,
    artifacts_dir,
    chromium,
    distinct_colours,
    drive_widget_notebook,
    jupyterlab,
    require_browser,
    stable_screenshot,
)

pytestmark = pytest.mark.browser

# The notebook under test, its (small, fast) parameters, and where its slider widget lives.
WIDGET_NOTEBOOK = {
    "notebook": "notebooks/04_organ_interpolation.ipynb",
    "parameters": {"per_class": 1, "steps": 5, "preview_resolution": 24, "full_resolution": 32,
                   "strip_steps": 3, "strip_resolution": 24, "render": False},
    "widget": ".jp-OutputArea-output:has(.widget-slider)",  # output area holding the interpolation widget
    "handle": ".noUi-handle",  # ipywidgets 8 slider (noUiSlider)
    "label": "div.widget-label",  # the widget's status Label (t, resolution, faces), rewritten by the kernel
    "kernel_value": "widget.slider.value",  # the slider's value as the kernel sees it
    "presses": 2,
}


@pytest.fixture(scope="module")
def playwright():
    sync_playwright = require_browser()
    pw = sync_playwright().start()
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return artifacts_dir(tmp_path_factory)


@pytest.fixture
def browser(playwright, tmp_path):
    with chromium(playwright, tmp_path / "chromium-profile") as context:
        yield context


def test_notebook_widgets_in_jupyterlab(browser, artifacts, tmp_path, tiny_dataset):
    """Run All in JupyterLab, a k3d canvas renders, ArrowRight on the slider reaches the kernel and redraws."""
    t0 = time.monotonic()
    net = NetworkLog().attach(browser)
    page = browser.new_page()
    net.attach_console(page)
    with jupyterlab(tmp_path / "lab") as lab:
        params = {**WIDGET_NOTEBOOK, "parameters": {**WIDGET_NOTEBOOK["parameters"], "dataset_dir": str(tiny_dataset)}}
        check = drive_widget_notebook(page, lab, artifacts=artifacts, **params)
    for path in check.screenshots:
        print(f"screenshot: {path}")
    print(f"timings (s): {({k: round(v, 1) for k, v in check.seconds.items()})}, total {time.monotonic() - t0:.1f}")
    print(f"slider {check.value_before} -> {check.value_dom_after} (kernel {check.value_kernel_after}, max "
          f"{check.slider_max}); label {check.label_before!r} -> {check.label_after!r}; "
          f"canvas pixels changed: {check.canvas_changed_fraction:.2%}")
    if net.console_errors:
        print("browser console errors:", *net.console_errors[:20], sep="\n  ")

    assert check.value_dom_after > check.value_before
    assert abs(check.value_kernel_after - check.value_dom_after) < 1e-6, "the kernel did not receive the slider's new value"
    if WIDGET_NOTEBOOK.get("label"):
        assert check.label_after != check.label_before, "the kernel-side observer did not update the label"
    assert check.canvas_changed_fraction > 0.001, "the k3d canvas did not redraw after the slider moved"
    assert not net.failed, f"failed requests: {net.failed}"
    assert not net.http_errors, f"HTTP errors: {net.http_errors}"
    assert not net.external, f"requests left 127.0.0.1: {net.external}"


def test_offline_k3d_snapshot_html(browser, artifacts, tmp_path):
    """A k3d snapshot HTML renders from file:// with no failed, erroring or off-machine request."""
    pytest.importorskip("k3d")
    import trimesh

    from skellab.views import mesh_view, snapshot_html

    sphere = trimesh.creation.icosphere(subdivisions=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Given trait value dtype")
        plot = mesh_view(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.uint32))
    html = artifacts / "k3d-snapshot.html"
    snapshot_html(plot, html)

    net = NetworkLog().attach(browser)
    page = browser.new_page()
    net.attach_console(page)
    page.goto(html.as_uri(), wait_until="load", timeout=60_000)
    canvas = page.locator("canvas").first
    canvas.wait_for(state="visible", timeout=60_000)
    shot = stable_screenshot(canvas, timeout=60, path=artifacts / "k3d-snapshot-canvas.png")
    page.screenshot(path=str(artifacts / "k3d-snapshot-page.png"))
    page.wait_for_load_state("networkidle", timeout=30_000)
    print(f"snapshot: {html} ({html.stat().st_size / 1e6:.1f} MB)")
    print(f"screenshot: {artifacts / 'k3d-snapshot-canvas.png'}")
    print(f"screenshot: {artifacts / 'k3d-snapshot-page.png'}")
    print(f"requests: {[u[:80] for u in net.requests]}, console errors: {net.console_errors[:10]}")

    assert distinct_colours(shot) >= 3, "the snapshot canvas is blank"
    assert not net.failed, f"failed requests: {net.failed}"
    assert not net.http_errors, f"HTTP errors: {net.http_errors}"
    assert not net.external, f"the offline snapshot fetched from the network: {net.external}"


def test_demo_gallery_renders_offline(browser, artifacts, demo_run):
    """The demo's index.html shows every image from file:// with no failed or off-machine request."""
    out, code, _, err = demo_run
    assert code == 0, err
    net = NetworkLog().attach(browser)
    page = browser.new_page()
    net.attach_console(page)
    page.goto((out / "index.html").as_uri(), wait_until="load", timeout=60_000)
    page.wait_for_load_state("networkidle", timeout=30_000)
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
    page.screenshot(path=str(artifacts / "demo-gallery.png"), full_page=True)
    print(f"screenshot: {artifacts / 'demo-gallery.png'} ({len(sizes)} images)")
    assert len(sizes) >= 5 and all(done and width > 0 for done, width in sizes), sizes
    assert not net.failed, f"failed requests: {net.failed}"
    assert not net.http_errors, f"HTTP errors: {net.http_errors}"
    assert not net.external, f"the gallery fetched from the network: {net.external}"
