"""Execute the tutorial notebooks and build the tutorials site with Sphinx + MyST-NB (see docs/README.md).

Called by ``docs/build.sh``; run that. Steps: (1) stage a Sphinx source tree in a temporary folder with the
repository's layout (``notebooks/``, ``docs/``), (2) execute every notebook with papermill (the CI parameters
of ``docs/ci_parameters.json`` and the tiny MedSDF dataset, or the notebooks' own defaults with ``--full``),
(3) replace live-widget outputs, which need a kernel, by a one-line note (each notebook also shows an offline
k3d snapshot of its 3D view), (4) write the API page from the package-level modules, (5) ``sphinx-build``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[interactive widget: it needs a running kernel; open the notebook in Jupyter to use it]"


def ci_parameters(stem: str, declared: set[str], dataset_dir: str) -> dict:
    params = dict(json.loads((DOCS / "ci_parameters.json").read_text())["notebooks"].get(stem, {}))
    unknown = sorted(set(params) - declared)
    if unknown:
        raise SystemExit(f"{stem}: parameters {unknown} are not declared in its parameters cell")
    if "dataset_dir" in declared:
        params["dataset_dir"] = dataset_dir
    return params


def execute(notebooks: list[Path], out: Path, *, full: bool, reuse: Path | None, work: Path) -> dict[str, float]:
    import papermill

    seconds: dict[str, float] = {}
    dataset = work / "medsdf-tiny"
    for path in notebooks:
        target = out / path.name
        found = [reuse / f"{path.stem}.executed.ipynb", reuse / path.name] if reuse else []
        found = [p for p in found if p.is_file()]
        if found:
            shutil.copy(found[0], target)
            seconds[path.stem] = 0.0
            print(f"  {path.stem}: reused {found[0]}", flush=True)
            continue
        if not full and not (dataset / "manifest.json").exists():
            from skellab.data.build import build_dataset

            build_dataset(dataset, preset_name="tiny", workers=1, progress=False)
        declared = set(papermill.inspect_notebook(str(path)))
        params = {} if full else ci_parameters(path.stem, declared, str(dataset))
        cwd = work / "run" / path.stem
        cwd.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        papermill.execute_notebook(str(path), str(target), parameters=params, kernel_name="python3",
                                   progress_bar=False, cwd=str(cwd))
        seconds[path.stem] = time.perf_counter() - t0
        print(f"  {path.stem}: executed in {seconds[path.stem]:.0f} s", flush=True)
    return seconds


def strip_widgets(path: Path) -> int:
    """Live ipywidgets need a kernel (and their JavaScript from a CDN): keep a note instead."""
    nb = json.loads(path.read_text())
    n = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if WIDGET in out.get("data", {}):
                out["data"] = {"text/plain": WIDGET_NOTE}
                out.get("metadata", {}).pop(WIDGET, None)
                n += 1
    nb["metadata"].pop("widgets", None)
    path.write_text(json.dumps(nb, indent=1))
    return n


def api_page() -> str:
    """One section per package-level module of skellab: its public names (``__all__``) or its modules."""
    import skellab

    lines = ["# API reference", "",
             "Generated from the docstrings of the package-level modules (`skellab.<name>`); a package without",
             "`__all__` is documented module by module.", ""]
    for info in sorted(pkgutil.iter_modules(skellab.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        name = f"skellab.{info.name}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # an optional dependency missing: say so, keep building
            lines += [f"## `{name}`", "", f"(not importable here: {exc})", ""]
            continue
        lines += [f"## `{name}`", "", "```{eval-rst}", f".. automodule:: {name}", "   :members:"]
        if hasattr(module, "__all__"):
            lines += ["   :imported-members:", "```", ""]
            continue
        lines += ["```", ""]
        if info.ispkg:
            for sub in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name):
                if not sub.name.startswith("_"):
                    lines += ["```{eval-rst}", f".. automodule:: {name}.{sub.name}", "   :members:", "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--mathjax", type=Path, required=True, help="MathJax 3 tex-svg-full.js (vendored by build.sh)")
    ap.add_argument("--full", action="store_true", help="the notebooks' own defaults instead of the CI parameters")
    ap.add_argument("--reuse", type=Path, help="folder of already executed notebooks to use where present")
    ap.add_argument("--keep-executed", type=Path, help="also copy the executed notebooks into this folder")
    args = ap.parse_args(argv)
    # the kernels must show figures inline even where a headless shell exports MPLBACKEND=Agg (CI does)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    with tempfile.TemporaryDirectory(prefix="skellab-site-") as tmp:
        work = Path(tmp)
        src = work / "src"
        (src / "notebooks").mkdir(parents=True)
        (src / "docs").mkdir()
        (src / "_static" / "mathjax").mkdir(parents=True)
        shutil.copy(args.mathjax, src / "_static" / "mathjax" / "tex-svg-full.js")
        for name in ("conf.py", "index.md"):
            shutil.copy(DOCS / name, src / name)
        shutil.copy(DOCS / "glossary.md", src / "docs" / "glossary.md")
        shutil.copy(DOCS / "custom.css", src / "_static" / "custom.css")
        (src / "docs" / "api.md").write_text(api_page())
        notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
        t0 = time.perf_counter()
        print(f"executing {len(notebooks)} notebooks ({'full defaults' if args.full else 'CI parameters'})", flush=True)
        seconds = execute(notebooks, src / "notebooks", full=args.full, reuse=args.reuse, work=work)
        widgets = sum(strip_widgets(p) for p in (src / "notebooks").glob("*.ipynb"))
        t1 = time.perf_counter()
        print(f"notebooks: {t1 - t0:.0f} s; {widgets} live-widget outputs replaced by a note", flush=True)
        if args.out.exists():
            shutil.rmtree(args.out)
        subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "1", "-d", str(work / "doctrees"),
                        str(src), str(args.out)], check=True)
        if args.keep_executed:
            args.keep_executed.mkdir(parents=True, exist_ok=True)
            for nb in (src / "notebooks").glob("*.ipynb"):
                shutil.copy(nb, args.keep_executed / nb.name)
        print(f"sphinx: {time.perf_counter() - t1:.0f} s", flush=True)
        (args.out / "build-info.json").write_text(json.dumps(
            {"parameters": "full" if args.full else "docs/ci_parameters.json", "notebook_seconds": seconds,
             "sphinx_seconds": time.perf_counter() - t1}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
