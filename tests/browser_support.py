"""Helpers for the real-browser tests: a throw-away JupyterLab server and headless Debian Chromium.

Nothing here downloads anything: Chromium is the Debian package (``/usr/bin/chromium``, see
``.ci/browser-setup``) driven through Playwright's Python API (never ``playwright install``).

Missing Chromium or Playwright makes the browser tests skip, unless ``SKELLAB_REQUIRE_BROWSER=1``
(CI), where it is a failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SKELLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1280, "height": 1000}

# JupyterLab settings overrides: no news/update toasts, no notifications, every cell kept in the DOM
# (the default "contentVisibility"/"full" windowing may detach off-screen outputs and their canvases).
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


# ----------------------------------------------------------------------------------------------
# dependencies


def require_browser() -> Any:
    """Return ``playwright.sync_api.sync_playwright``; skip (or fail under CI) if something is missing."""
    required = os.environ.get("SKELLAB_REQUIRE_BROWSER", "") == "1"
    problems = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        problems.append("python package 'playwright' is not installed (python3 -m pip install playwright)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"{CHROMIUM} not found (apt-get install -y chromium; or set SKELLAB_CHROMIUM)")
    if shutil.which("jupyter-lab") is None and not _module_available("jupyterlab"):
        problems.append("jupyterlab is not installed")
    if problems:
        reason = "browser test dependencies missing: " + "; ".join(problems) + " — run .ci/browser-setup"
        if required:
            pytest.fail(reason + " (SKELLAB_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(reason)
    return sync_playwright


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def artifacts_dir(tmp_path_factory: Any) -> Path:
    """``$SKELLAB_ARTIFACTS`` if set (created), else a pytest temporary directory."""
    env = os.environ.get("SKELLAB_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


# ----------------------------------------------------------------------------------------------
# JupyterLab


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    root: Path
    port: int
    token: str
    log_path: Path
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop the server we started and its kernels (its own process group, by id)."""
    if process.poll() is not None:
        return
    pgid = process.pid  # start_new_session=True: the server leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    # The server shuts its kernels down on SIGTERM; kill any straggler in its group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@contextlib.contextmanager
def jupyterlab(workdir: Path, *, startup_timeout: float = 90.0) -> Iterator[LabServer]:
    """Run JupyterLab on 127.0.0.1 (random port and token) with ``workdir/root`` as its root dir.

    Settings, workspaces and runtime files live under ``workdir``; the server is always stopped.
    """
    workdir = Path(workdir)
    root = workdir / "root"
    dirs = {name: workdir / name for name in ("settings", "app-settings", "workspaces", "runtime", "config", "data")}
    for d in [root, *dirs.values()]:
        d.mkdir(parents=True, exist_ok=True)
    (dirs["app-settings"] / "overrides.json").write_text(json.dumps(LAB_OVERRIDES, indent=2))
    token = secrets.token_hex(24)
    env = dict(os.environ)
    env.update(
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_CONFIG_DIR=str(dirs["config"]),  # ignore the user's jupyter_*_config files
        PYTHONUNBUFFERED="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    env.pop("JUPYTER_TOKEN", None)
    log_path = workdir / "jupyterlab.log"
    last_error: str = ""
    for _attempt in range(3):  # a random port can be taken between free_port() and bind
        port = free_port()
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={token}",
            "--ServerApp.terminals_enabled=False",
            f"--LabApp.app_settings_dir={dirs['app-settings']}",
            f"--LabApp.user_settings_dir={dirs['settings']}",
            f"--LabApp.workspaces_dir={dirs['workspaces']}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",  # no PyPI queries from the extension manager
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        server = LabServer(root=root, port=port, token=token, log_path=log_path, process=process)
        try:
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    last_error = f"jupyterlab exited with {process.returncode}:\n{server.log()[-3000:]}"
                    break
                try:
                    server.api("api/status", timeout=2)
                    break
                except (urllib.error.URLError, OSError, ValueError):
                    time.sleep(0.25)
            else:
                raise TimeoutError(f"jupyterlab did not answer in {startup_timeout} s:\n{server.log()[-3000:]}")
            if process.poll() is not None:
                _stop(process)
                if "address already in use" in server.log().lower():
                    continue
                raise RuntimeError(last_error)
            yield server
            return
        finally:
            _stop(process)
    raise RuntimeError(f"could not start jupyterlab: {last_error}")


def prepare_notebook(source: Path, dest_dir: Path, parameters: dict[str, Any]) -> Path:
    """Copy ``source`` into ``dest_dir`` with an ``injected-parameters`` cell right after its ``parameters`` cell."""
    nb = json.loads(Path(source).read_text())
    cells = nb["cells"]
    index = next((i for i, c in enumerate(cells)
                  if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError(f"{source} has no cell tagged 'parameters'")
    lines = ["# Parameters (browser test)\n"] + [f"{name} = {value!r}\n" for name, value in parameters.items()]
    lines[-1] = lines[-1].rstrip("\n")
    cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["injected-parameters"]},
            "outputs": [], "source": lines}
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) >= (4, 5):
        cell["id"] = uuid.uuid4().hex[:8]
    cells.insert(index + 1, cell)
    dest = Path(dest_dir) / Path(source).name
    dest.write_text(json.dumps(nb, indent=1))
    return dest


# ----------------------------------------------------------------------------------------------
# Chromium


@contextlib.contextmanager
def chromium(playwright: Any, user_data_dir: Path, **kwargs: Any) -> Iterator[Any]:
    """A headless Debian Chromium (fresh profile) as a Playwright persistent context."""
    Path(user_data_dir).mkdir(parents=True, exist_ok=True)
    context = playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport=VIEWPORT, device_scale_factor=1, **kwargs,
    )
    try:
        yield context
    finally:
        with contextlib.suppress(Exception):
            context.close()


LOCAL = re.compile(r"^(file:|data:|blob:|about:|chrome-error:|https?://(127\.0\.0\.1|localhost)(:\d+)?/)")


@dataclass
class NetworkLog:
    """Every request the page made, the failed ones, and HTTP errors (status >= 400)."""

    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def attach(self, target: Any) -> NetworkLog:
        target.on("request", lambda r: self.requests.append(r.url))
        target.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        target.on("response", lambda r: r.status >= 400 and self.http_errors.append(f"{r.status} {r.url}"))
        return self

    def attach_console(self, page: Any) -> NetworkLog:
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        return self

    @property
    def external(self) -> list[str]:
        return sorted({u for u in self.requests if not LOCAL.match(u)})


# ----------------------------------------------------------------------------------------------
# pixels


def png_pixels(png: bytes) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def changed_fraction(a: bytes, b: bytes, tolerance: int = 8) -> float:
    """Fraction of pixels whose RGB differs by more than ``tolerance`` (1.0 if the sizes differ)."""
    pa, pb = png_pixels(a), png_pixels(b)
    if pa.shape != pb.shape:
        return 1.0
    return float((abs(pa - pb).max(axis=-1) > tolerance).mean())


def distinct_colours(png: bytes) -> int:
    import numpy as np

    px = png_pixels(png).reshape(-1, 3)
    return len(np.unique(px[:: max(1, len(px) // 20000)], axis=0))


# ----------------------------------------------------------------------------------------------
# driving a notebook in JupyterLab

_PROMPTS_JS = """() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return {prompts: [], errors: [], dialogs: []};
  // cells whose source is collapsed (the notebooks' hidden exercise solutions) show no prompt: skip them;
  // Run All halts at an error, so the visible cells after them prove they ran
  const prompts = [...nb.querySelectorAll('.jp-CodeCell')].filter(c => !c.querySelector('.jp-InputPlaceholder'))
      .map(c => (c.querySelector('.jp-InputPrompt') || {textContent: ''}).textContent.trim());
  // JupyterLab renders error outputs as stderr text; keep the tracebacks.
  const errors = [...nb.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
      .map(e => e.textContent).filter(t => t.includes('Traceback (most recent call last)'))
      .map(t => t.slice(-3000));
  const dialogs = [...document.querySelectorAll('.jp-Dialog')].map(e => e.textContent.slice(0, 500));
  return {prompts, errors, dialogs};
}"""


def run_all_cells(page: Any, *, attempts: int = 3, start_timeout: float = 15.0) -> None:
    """Menu Run → Run All Cells; retried if no cell starts (e.g. a kernel still settling)."""
    for _ in range(attempts):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            prompts = page.evaluate(_PROMPTS_JS)["prompts"]
            if any(p != "[ ]:" for p in prompts):
                return
            time.sleep(0.25)
    raise TimeoutError(f"Run All Cells started no cell in {attempts} attempts")


def wait_for_all_cells(page: Any, n_code: int, timeout: float) -> list[str]:
    """Wait until every code cell has an execution count ``[n]:``.

    Fails fast when execution stopped early (a cell raised: Run All halts, the kernel goes idle and
    later cells keep ``[ ]:``) or when a dialog (e.g. kernel selection) is open.
    """
    deadline = time.monotonic() + timeout
    state: dict = {}
    halted_since = None
    while time.monotonic() < deadline:
        state = page.evaluate(_PROMPTS_JS)
        if state["dialogs"]:
            raise AssertionError("unexpected JupyterLab dialog: " + " | ".join(state["dialogs"]))
        prompts = state["prompts"]
        numbered = [p for p in prompts if re.fullmatch(r"\[\d+\]:", p)]
        if len(prompts) >= n_code and len(numbered) == len(prompts):
            return prompts
        halted = numbered and "[*]:" not in prompts and page.evaluate(_KERNEL_IDLE_JS)
        halted_since = (halted_since or time.monotonic()) if halted else None
        if halted_since and (state["errors"] or time.monotonic() - halted_since > 5):
            raise AssertionError(f"execution stopped early (prompts {prompts}); tracebacks:\n"
                                 + "\n---\n".join(state["errors"] or ["(none shown)"]))
        time.sleep(0.5)
    raise TimeoutError(f"cells not all executed after {timeout} s: prompts {state.get('prompts')}")


_KERNEL_IDLE_JS = """() => {
  const ind = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
  const bar = [...document.querySelectorAll('.jp-StatusBar-TextItem')].map(e => e.textContent.trim());
  // The toolbar indicator says "idle" before any kernel exists; the status bar names the kernel.
  return !!ind && ind.dataset.status === 'idle' && bar.some(t => /\\| Idle$/.test(t) && !/^No Kernel/.test(t));
}"""


def wait_for_kernel_idle(page: Any, timeout: float) -> None:
    """Wait until the open notebook has a connected kernel that is idle."""
    page.wait_for_function(_KERNEL_IDLE_JS, timeout=timeout * 1000, polling=200)


def stable_screenshot(locator: Any, *, timeout: float, min_colours: int = 3, path: Path | None = None) -> bytes:
    """Screenshot ``locator`` once it shows something (>= ``min_colours``) and two shots agree."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        shot = locator.screenshot(animations="disabled")
        if previous is not None and shot == previous and distinct_colours(shot) >= min_colours:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"canvas did not settle on a non-blank image in {timeout} s "
                               f"({distinct_colours(shot)} colours)")
        previous = shot
        time.sleep(0.4)
    if path is not None:
        Path(path).write_bytes(shot)
    return shot


def run_code_in_new_cell(page: Any, code: str, marker: str, timeout: float) -> str:
    """Append a code cell at the end of the open notebook, run it, return the text of its output with ``marker``."""
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    notebook.locator(".jp-Cell").last.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")  # command mode
    page.keyboard.press("b")  # insert a cell below
    page.keyboard.press("Enter")  # edit mode
    page.keyboard.insert_text(code)  # no key events: no auto-closed brackets
    page.keyboard.press("Shift+Enter")
    output = notebook.locator(".jp-OutputArea-output", has_text=marker).last
    output.wait_for(state="visible", timeout=timeout * 1000)
    return output.inner_text()


@dataclass
class WidgetCheck:
    """What ``drive_widget_notebook`` observed."""

    prompts: list[str]
    slider_max: float
    value_before: float
    value_expected: float
    value_dom_after: float
    value_kernel_after: float
    label_before: str
    label_after: str
    canvas_changed_fraction: float
    seconds: dict[str, float]
    screenshots: list[Path]


def drive_widget_notebook(
    page: Any,
    lab: LabServer,
    notebook: str | Path,
    *,
    parameters: dict[str, Any],
    artifacts: Path,
    widget: str = ".jp-OutputArea-output:has(.widget-slider)",
    handle: str = ".noUi-handle",
    label: str | None = "div.widget-label",
    canvas: str = "canvas",
    kernel_value: str = "scrubber.slider.value",
    presses: int = 3,
    timeout: float = 180.0,
) -> WidgetCheck:
    """Open ``notebook`` (repo-relative) in JupyterLab with ``parameters``, Run All, then drive its slider.

    ``widget`` selects the output area holding the slider and its k3d view; ``handle``, ``label`` and
    ``canvas`` are looked up inside it (``label``, optional, is a widget the kernel rewrites when the
    value changes: proof of the round trip); ``kernel_value`` is a Python expression giving the slider's
    value in the kernel. The slider is focused and ArrowRight pressed ``presses`` times.
    """
    t0 = time.monotonic()
    seconds: dict[str, float] = {}
    shots: list[Path] = []

    def shot(name: str, locator: Any = None) -> Path:
        path = artifacts / name
        (locator or page).screenshot(path=str(path))
        shots.append(path)
        return path

    source = ROOT / notebook
    copied = prepare_notebook(source, lab.root, parameters)
    n_code = sum(c["cell_type"] == "code" and not c.get("metadata", {}).get("jupyter", {}).get("source_hidden")
                 for c in json.loads(copied.read_text())["cells"])
    stem = copied.stem
    try:
        page.goto(lab.url(f"lab/tree/{copied.name}"), timeout=60_000)
        page.locator(".jp-NotebookPanel .jp-Notebook .jp-CodeCell").first.wait_for(timeout=90_000)
        wait_for_kernel_idle(page, timeout=90)
        seconds["open"] = time.monotonic() - t0

        run_all_cells(page)
        prompts = wait_for_all_cells(page, n_code, timeout)
        wait_for_kernel_idle(page, timeout=timeout)
        seconds["run_all"] = time.monotonic() - t0 - seconds["open"]
        shot(f"{stem}-01-after-run-all.png")

        box = page.locator(widget)
        assert box.count() == 1, f"expected one output matching {widget!r}, found {box.count()}"
        the_canvas = box.locator(canvas).first
        the_canvas.wait_for(state="visible", timeout=timeout * 1000)
        the_handle = box.locator(handle).first
        the_label = box.locator(label).first if label else None
        the_handle.scroll_into_view_if_needed()
        before = stable_screenshot(the_canvas, timeout=60, path=artifacts / f"{stem}-02-canvas-before.png")
        shots.append(artifacts / f"{stem}-02-canvas-before.png")
        shot(f"{stem}-03-widget-before.png", box)
        seconds["canvas"] = time.monotonic() - t0 - seconds["open"] - seconds["run_all"]

        slider_max = float(the_handle.get_attribute("aria-valuemax"))
        value_before = float(the_handle.get_attribute("aria-valuenow"))
        label_before = the_label.inner_text().strip() if the_label else ""
        assert value_before < slider_max, f"slider already at its maximum {slider_max}"

        the_handle.focus()
        for _ in range(presses):
            page.keyboard.press("ArrowRight")
            time.sleep(0.15)
        # Integer or float sliders alike: wait until the handle has moved right by `presses` steps
        # (or hit its maximum) and stays there.
        page.wait_for_function("([h, v]) => Number(h.getAttribute('aria-valuenow')) > v",
                               arg=[the_handle.element_handle(), value_before], timeout=30_000)
        time.sleep(0.5)
        expected = float(the_handle.get_attribute("aria-valuenow"))
        # The label is written by the kernel's observer: it changes only after the round trip.
        label_after = ""
        if the_label is not None:
            deadline = time.monotonic() + 30
            while the_label.inner_text().strip() == label_before and time.monotonic() < deadline:
                time.sleep(0.2)
            label_after = the_label.inner_text().strip()

        deadline = time.monotonic() + 30
        fraction = 0.0
        while time.monotonic() < deadline:
            after = the_canvas.screenshot(animations="disabled")
            fraction = changed_fraction(before, after)
            if fraction > 0.001:
                break
            time.sleep(0.3)
        after = stable_screenshot(the_canvas, timeout=30, path=artifacts / f"{stem}-04-canvas-after.png")
        shots.append(artifacts / f"{stem}-04-canvas-after.png")
        fraction = changed_fraction(before, after)
        shot(f"{stem}-05-widget-after.png", box)
        value_dom_after = float(the_handle.get_attribute("aria-valuenow"))

        marker = "SKELLAB_KERNEL_VALUE"
        text = run_code_in_new_cell(page, f'print("{marker}", repr({kernel_value}))', marker, timeout=60)
        match = re.search(marker + r"\s+(-?[0-9.]+(?:e-?[0-9]+)?)", text)
        assert match, f"could not read the kernel value from {text!r}"
        value_kernel_after = float(match.group(1))
        shot(f"{stem}-06-kernel-value.png")
        seconds["interact"] = time.monotonic() - t0 - sum(seconds.values())
    except BaseException:
        with contextlib.suppress(Exception):
            shot(f"{stem}-FAILED.png")
        with contextlib.suppress(Exception):
            (artifacts / f"{stem}-jupyterlab.log").write_text(lab.log())
        raise
    return WidgetCheck(prompts, slider_max, value_before, expected, value_dom_after, value_kernel_after, label_before,
                       label_after, fraction, seconds, shots)
