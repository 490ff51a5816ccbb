"""Every tutorial notebook runs headless through papermill with small parameters, and reads as a lesson.

The small parameters live in ``docs/ci_parameters.json``: the tutorials site (``docs/build.sh``) executes
the notebooks with the same ones.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CI_PARAMETERS = json.loads((ROOT / "docs" / "ci_parameters.json").read_text())["notebooks"]


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _text(cell):
    return "".join(cell["source"])


def declared_parameters(path):
    """Names assigned in the notebook's ``parameters`` cell (what papermill can set)."""
    source = "\n".join(_text(c) for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", []))
    return set(re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=\n]+)?=", source, re.M))


def notebook_parameters(path, dataset_dir):
    """The CI parameters of one notebook (+ ``dataset_dir`` where declared); unknown names are an error."""
    params = dict(CI_PARAMETERS.get(path.stem, {}))
    declared = declared_parameters(path)
    unknown = sorted(set(params) - declared)
    if unknown:
        raise ValueError(f"{path.name}: parameters {unknown} are not declared in its parameters cell "
                         f"(declared: {sorted(declared)}); a renamed parameter would run the notebook at full size")
    if "dataset_dir" in declared:
        params["dataset_dir"] = str(dataset_dir)
    return params


def test_notebooks_are_committed_clean_with_a_parameters_cell():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} has outputs"
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), path.name


def test_every_ci_parameter_is_declared(tmp_path):
    assert set(CI_PARAMETERS) == {p.stem for p in NOTEBOOKS}, "docs/ci_parameters.json and notebooks/ disagree"
    for path in NOTEBOOKS:
        notebook_parameters(path, tmp_path)  # raises on an unknown parameter


def test_an_unknown_parameter_fails(tmp_path, monkeypatch):
    path = next(p for p in NOTEBOOKS if p.stem.startswith("03"))
    monkeypatch.setitem(CI_PARAMETERS, path.stem, {**CI_PARAMETERS[path.stem], "resolutoin": 16})
    with pytest.raises(ValueError, match="resolutoin"):
        notebook_parameters(path, tmp_path)


def test_course_order_next_links():
    """One reading order, 01 → 08: every "Next:" names the notebook after it; the last has none."""
    from skellab.views import COURSE

    assert [p.stem for p in NOTEBOOKS] == [name for name, _ in COURSE]
    for i, path in enumerate(NOTEBOOKS):
        text = "\n".join(_text(c) for c in _cells(path) if c["cell_type"] == "markdown")
        nexts = re.findall(r"Next:\s*\*\*(\d\d)", text)
        if i + 1 < len(NOTEBOOKS):
            assert nexts == [NOTEBOOKS[i + 1].stem[:2]], f"{path.name}: Next links {nexts}"
        else:
            assert nexts == [], f"{path.name} is the last notebook but says Next: {nexts}"


def test_section_references_exist():
    """A "section N" in a notebook (text or comment) names one of its own numbered "## N." headings."""
    for path in NOTEBOOKS:
        cells = _cells(path)
        headings = set(re.findall(r"^## (\d+)\.", "\n".join(_text(c) for c in cells if c["cell_type"] == "markdown"), re.M))
        for c in cells:
            for ref in re.findall(r"\bsections? (\d+)\b", _text(c)):
                assert ref in headings, f"{path.name} mentions section {ref}; its sections are {sorted(headings, key=int)}"


def test_notebooks_are_lessons():
    """Header, typeset math, the paper's link, 2-3 exercises with hidden, self-checking solutions, a recap, asserts."""
    for path in NOTEBOOKS:
        cells = _cells(path)
        markdown = "\n".join(_text(c) for c in cells if c["cell_type"] == "markdown")
        for needle in ("**Prerequisites:**", "**Run first:**", "**Run time**", "https://arxiv.org/abs/2603.07504",
                       "../docs/glossary.md", "## Exercises", "## Recap"):
            assert needle in markdown, f"{path.name}: no {needle!r}"
        assert re.search(r"\$\$.+?\$\$|\$[^$\n]+\$", markdown, re.S), f"{path.name}: no LaTeX math"
        solutions = [c for c in cells if "solution" in c.get("metadata", {}).get("tags", [])]
        assert 2 <= len(solutions) <= 3, f"{path.name}: {len(solutions)} solution cells"
        for c in solutions:
            assert c["cell_type"] == "code" and c["metadata"].get("jupyter", {}).get("source_hidden") is True
            assert "hide-input" in c["metadata"]["tags"]
            assert "assert" in _text(c), f"{path.name}: a solution that checks nothing"
        checks = [c for c in cells if c["cell_type"] == "code" and "all checks passed" in _text(c)]
        assert checks and _text(checks[-1]).count("assert") >= 2, f"{path.name}: no closing asserts"
        assert any("offline_view(" in _text(c) for c in cells), f"{path.name}: no offline 3D view"


def test_heavy_notebooks_check_their_dataset_first():
    """05 and 08 need a real dataset: the first cell after the parameters opens it (or says how to build it)."""
    for stem in ("05_diffusion_sampling", "08_evaluation"):
        cells = [c for c in _cells(ROOT / "notebooks" / f"{stem}.ipynb") if c["cell_type"] == "code"]
        first = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
        assert "require_dataset(dataset_dir)" in _text(cells[first + 1]), stem


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tiny_dataset, tmp_path, tmp_path_factory, monkeypatch):
    papermill = pytest.importorskip("papermill")
    # figures inline, as a reader's Jupyter shows them (CI exports MPLBACKEND=Agg, which would drop them
    # from the outputs the site reuses)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    executed = tmp_path / f"{path.stem}.executed.ipynb"
    papermill.execute_notebook(
        str(path), str(executed), parameters=notebook_parameters(path, tiny_dataset),
        kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
    )
    # tests/test_site.py builds the tutorials site from these instead of executing every notebook again
    shared = tmp_path_factory.getbasetemp() / "executed-notebooks"
    shared.mkdir(exist_ok=True)
    shutil.copy(executed, shared / path.name)
