"""`skellab skeletonize`: results in the input's own coordinates, clean errors for bad input."""

import subprocess
import sys

import numpy as np
import pytest
import trimesh


from conftest import run_cli


def _cli(*args):
    return run_cli("skeletonize", *args)


def _subprocess_cli(*args):
    p = subprocess.run([sys.executable, "-m", "skellab.cli", "skeletonize", *map(str, args)],
                       capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def capsule_stl(tmp_path_factory):
    """A capsule in millimetres, off-centre: axis from (100,50,20) to (100,50,80), radius 8."""
    path = tmp_path_factory.mktemp("in") / "capsule.stl"
    m = trimesh.creation.capsule(height=60.0, radius=8.0, count=[48, 48])
    m.apply_translation([100.0, 50.0, 50.0])
    m.export(path)
    return path


def test_medial_skeleton_overlays_the_input_mesh(capsule_stl, tmp_path):
    out = tmp_path / "skel.npz"
    code, stdout, err = _subprocess_cli(capsule_stl, "--out", out, "--points", "64")  # real entry point
    assert code == 0, err
    z = np.load(out)
    assert z["centers"].dtype == np.float32 and z["centers"].shape == (64, 3)
    assert z["radii"].shape == (64,) and z["edges"].dtype == np.int64 and z["edges"].shape[1] == 2
    assert str(z["method"]) == "medial"
    c, r = z["centers"], z["radii"]
    off_axis = np.linalg.norm(c[:, :2] - [100.0, 50.0], axis=1)
    assert np.median(off_axis) < 1.0  # mm: centres sit on the axis of the input mesh
    assert (c[:, 2] > 10).all() and (c[:, 2] < 90).all()
    assert abs(np.median(r) - 8.0) < 1.2  # mm: the inscribed radius, in input units


def test_point_cloud_without_normals(tmp_path):
    rng = np.random.default_rng(0)
    d = rng.normal(size=(3000, 3))
    pts = 5.0 * d / np.linalg.norm(d, axis=1, keepdims=True) * [1.0, 2.0, 3.0]  # ellipsoid surface
    np.save(tmp_path / "cloud.npy", pts)
    code, _, err = _cli(tmp_path / "cloud.npy", "--out", tmp_path / "s.npz", "--points", "32", "--method", "contraction")
    assert code == 0, err
    z = np.load(tmp_path / "s.npz")
    assert z["centers"].shape == (32, 3) and str(z["method"]) == "contraction"
    assert np.abs(z["centers"]).max() < 15.0


@pytest.mark.parametrize(
    "make,args,needle",
    [
        (lambda p: np.save(p, np.random.default_rng(0).normal(size=(100, 3))), ["--points", "256"], "fewer"),
        (lambda p: np.save(p, np.full((500, 3), np.nan)), [], "nan"),
        (lambda p: np.save(p, np.c_[np.random.default_rng(0).normal(size=(500, 2)), np.zeros(500)]), ["--points", "16"], "flat"),
        (lambda p: np.save(p, np.random.default_rng(0).normal(size=(500, 3))), ["--method", "magic"], "unknown"),
        (lambda p: np.save(p, np.zeros((5, 4))), [], "shape"),
        (lambda p: None, [], "not found"),
        (lambda p: np.save(p, np.random.default_rng(0).normal(size=(500, 3))), ["--points", "0"], "positive"),
    ],
    ids=["fewer-than-k", "nan", "flat", "unknown-method", "bad-shape", "missing", "k-zero"],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, make, args, needle):
    path = tmp_path / "in.npy"
    make(path)
    out = tmp_path / "out.npz"
    code, _, err = _cli(path, "--out", out, *args)
    assert code != 0 and "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0].lower(), err
    assert not out.exists()


def test_thinning_needs_a_mesh(tmp_path):
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(500, 3)))
    code, _, err = _cli(tmp_path / "c.npy", "--out", tmp_path / "o.npz", "--method", "thinning", "--points", "16")
    assert code != 0 and "mesh" in err and "Traceback" not in err
