"""Shared fixtures: a tiny MedSDF dataset built once per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from skellab.data.build import build_dataset

    root = tmp_path_factory.mktemp("medsdf") / "tiny"
    build_dataset(root, preset_name="tiny", workers=1, progress=False)
    return root


def run_cli(*args):
    """Run ``skellab`` in-process; return (exit code, stdout, stderr) like a subprocess would."""
    import contextlib
    import io

    from skellab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors and --help
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`skellab demo` run once (small resolution, no k3d snapshots): (folder, exit code, stdout, stderr)."""
    import torch

    out = tmp_path_factory.mktemp("demo") / "demo"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, stdout, stderr = run_cli("demo", "--out", out, "--resolution", "40", "--no-snapshots")
    finally:
        torch.set_num_threads(threads)
    return out, code, stdout, stderr


@pytest.fixture
def one_thread():
    """Small models run several times faster single-threaded on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
