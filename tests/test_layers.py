"""The package's layers point one way (README "Architecture"; ../shared/docs/DESIGN.md).

Reads every module's imports with ``ast`` (nothing is imported) and fails on
* an import from a lower layer to a higher one,
* a circle between packages (also inside one layer),
* an import placed inside a function, unless it loads an optional extra (viewers, notebook,
  browser, TensorBoard): such imports exist only to dodge circles and hide the real dependencies.

``__main__.py`` entry-point shims are exempt from the layer order (``python -m skellab.train``
is the ``skellab train`` command line, an interface).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "skellab"

#: layer of each top-level unit of the package; imports may only go to the same or a lower number
LAYERS = {
    "errors": 0, "runtime": 0, "checkpoint": 0, "schema": 0, "tables": 0, "weights": 0, "<root>": 0,
    "data": 1, "metrics": 1,
    "skeleton": 2,
    "autoencoder": 3, "diffusion": 3, "baselines": 3,
    "meshing": 4, "interpolation": 4,
    "generation": 5, "pipeline": 5, "evaluation": 5, "train": 5,
    "cli": 6, "views": 6, "demo": 6,
}
#: packages whose import inside a function is allowed (optional extras of pyproject.toml)
OPTIONAL = ("k3d", "polyscope", "ipywidgets", "matplotlib", "mpl_toolkits", "PIL", "IPython",
            "torch.utils.tensorboard", "playwright", "papermill",
            "fcntl", "ctypes")  # POSIX-only standard modules: imported where used, so skellab imports everywhere


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _exists(parts: list[str]) -> bool:
    p = ROOT.parent.joinpath(*parts)
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _imports():
    """(module, unit, imported skellab module or None, lineno, inside a function, text) for every import."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        mod = _module(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                    if not node.module:  # "from . import x": x may be a submodule, else a name of the package
                        targets = [".".join(base + [a.name]) if _exists(base + [a.name]) else ".".join(base)
                                   for a in node.names]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for t in targets:
                out.append((mod, path, t, node.lineno, id(node) in inner))
    return out


def test_no_import_points_up_a_layer():
    assert set(LAYERS) >= {_unit(_module(p)) for p in ROOT.rglob("*.py")}, "a new package needs a layer here"
    bad = []
    for mod, path, target, line, _ in _imports():
        if not target.startswith("skellab") or path.name == "__main__.py":
            continue
        src, dst = _unit(mod), _unit(target) if target != "skellab" else "<root>"
        if LAYERS[dst] > LAYERS[src]:
            bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {src} (layer {LAYERS[src]}) imports "
                       f"{target} (layer {LAYERS[dst]})")
    assert not bad, "imports pointing up a layer:\n" + "\n".join(bad)


def test_no_circles_between_packages():
    g = nx.DiGraph()
    for mod, path, target, _, _ in _imports():
        if target.startswith("skellab") and path.name != "__main__.py":
            src, dst = _unit(mod), _unit(target) if target != "skellab" else "<root>"
            if src != dst:
                g.add_edge(src, dst)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"package-level import circles: {cycles}"


def test_imports_inside_functions_are_only_optional_extras():
    bad = [f"{path.relative_to(ROOT.parent)}:{line}: {target}" for _, path, target, line, inner in _imports()
           if inner and not target.startswith(OPTIONAL)]
    assert not bad, "imports inside functions (move them to the top of the module):\n" + "\n".join(bad)


def test_the_checker_catches_what_it_should(tmp_path, monkeypatch):
    """The rules above fire on a planted violation (so a green run means something)."""
    pkg = tmp_path / "skellab"
    (pkg / "autoencoder").mkdir(parents=True)
    (pkg / "train").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("from ..autoencoder import x\n")
    (pkg / "autoencoder" / "__init__.py").write_text("def f():\n    from ..train import y\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    found = _imports()
    assert ("skellab.autoencoder", pkg / "autoencoder" / "__init__.py", "skellab.train", 2, True) in found
    ups = [t for m, _, t, _, _ in found if _unit(m) == "autoencoder" and LAYERS[_unit(t)] > LAYERS["autoencoder"]]
    assert ups == ["skellab.train"]
