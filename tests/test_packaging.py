"""The package installs what it says, and environment.yml stays in sync with pyproject.toml."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_pyproject_through_pip():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip_section == ["-e .[all]"], "environment.yml must install the project itself, nothing else"
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    # torch and python constraints must agree with pyproject.toml
    torch_req = next(r for r in pyproject["project"]["dependencies"] if r.startswith("torch"))
    assert any(d.replace("pytorch", "torch") == torch_req for d in conda_deps), (torch_req, conda_deps)
    assert f"python{pyproject['project']['requires-python']}" in conda_deps
    # the 'all' extra really covers every other extra
    extras = pyproject["project"]["optional-dependencies"]
    assert set(re.findall(r"\w+", extras["all"][0].split("[", 1)[1])) == set(extras) - {"all"}


def test_torch_is_a_range_not_a_pin():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(r for r in deps if r.startswith("torch"))
    assert "==" not in torch_req and ">=" in torch_req


def test_anatomy_requirements_are_pinned_and_installed():
    from importlib.metadata import version

    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements-anatomy.txt").read_text().splitlines()]
    reqs = [l for l in lines if l]
    assert len(reqs) >= 4
    for req in reqs:
        name, pinned = req.split("==")
        assert version(name) == pinned, req


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "skellab.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "skeletonize"):
        assert command in out.stdout


def test_import_has_no_side_effects():
    code = "import torch, skellab, skellab.data.shape; print(torch.initial_seed() != 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # skellab did not seed torch
