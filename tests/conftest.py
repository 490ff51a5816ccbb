"""Shared fixtures: a tiny MedSDF dataset built once per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from skellab.data.build import build_dataset

    root = tmp_path_factory.mktemp("medsdf") / "tiny"
    build_dataset(root, preset_name="tiny", workers=1, progress=False)
    return root
