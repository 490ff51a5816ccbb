"""`skellab reconstruct` / `skellab interpolate` with the shipped autoencoder: outputs and bad input."""

import numpy as np
import pytest
import torch
import trimesh

from conftest import run_cli


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    d = tmp_path_factory.mktemp("meshes")
    cap = trimesh.creation.capsule(height=40.0, radius=10.0)
    cap.apply_translation([200.0, -50.0, 10.0])
    cap.export(d / "capsule.stl")
    trimesh.creation.icosphere(radius=15.0).export(d / "ball.ply")
    box = trimesh.creation.box(extents=(30.0, 20.0, 12.0))  # sharp edges, which the encoder's one pass rounds off
    box.apply_translation([-40.0, 5.0, 0.0])
    box.export(d / "box.stl")
    return d


pytestmark = pytest.mark.usefixtures("one_thread")


def test_reconstruct_writes_a_watertight_mesh_in_input_units(meshes, tmp_path):
    out = tmp_path / "rec.ply"
    code, stdout, err = run_cli("reconstruct", meshes / "capsule.stl", "--out", out, "--resolution", "48")
    assert code == 0, err
    rec = trimesh.load(out, process=True)
    assert rec.is_watertight
    ref = trimesh.load(meshes / "capsule.stl")
    # the reconstruction overlays the input: same place and size in millimetres
    assert np.allclose(rec.bounds.mean(0), ref.bounds.mean(0), atol=3.0)
    assert np.allclose(np.ptp(rec.vertices, axis=0), np.ptp(ref.vertices, axis=0), rtol=0.2)


def test_reconstruct_refine_fits_the_input_closer_than_the_encoder(meshes, tmp_path):
    """--refine: the features fitted to the input's exact SDF decode closer to it (CD in millimetres) than the
    encoder's own features, with the spheres unchanged; a box's edges are what the encoder misses."""
    from skellab.metrics import chamfer_distance

    ref = trimesh.load(meshes / "box.stl")
    pts = {}
    for steps in ("0", "60"):
        out = tmp_path / f"rec{steps}.ply"
        code, _, err = run_cli("reconstruct", meshes / "box.stl", "--out", out, "--resolution", "48",
                               "--refine", steps)
        assert code == 0, err
        rec = trimesh.load(out, process=True)
        assert rec.is_watertight
        pts[steps] = trimesh.sample.sample_surface(rec, 3000, seed=0)[0]
    truth = trimesh.sample.sample_surface(ref, 3000, seed=1)[0]
    assert chamfer_distance(pts["60"], truth) < chamfer_distance(pts["0"], truth)
    # --fixed-spheres: the features alone, still closer than the encoder's
    out = tmp_path / "rec_fixed.ply"
    code, stdout, err = run_cli("reconstruct", meshes / "box.stl", "--out", out, "--resolution", "48", "--refine", "60",
                                "--fixed-spheres")
    assert code == 0 and "features refined 60 steps" in stdout, err
    fixed = trimesh.sample.sample_surface(trimesh.load(out, process=True), 3000, seed=0)[0]
    assert chamfer_distance(fixed, truth) < chamfer_distance(pts["0"], truth)


def _write_cloud_ply(path, points, normals=None):
    props = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals is not None else [])
    rows = points if normals is None else np.hstack([points, normals])
    header = ["ply", "format ascii 1.0", f"element vertex {len(rows)}", *[f"property double {p}" for p in props],
              "end_header"]
    path.write_text("\n".join(header + [" ".join(repr(float(x)) for x in r) for r in rows]) + "\n")


def test_reconstruct_an_oriented_point_cloud_and_refine_on_its_points(meshes, tmp_path):
    """A scan without a mesh: an (N, 6) .npy or a PLY of points with normals reconstructs in the input's units, and
    --refine fitted to the SDF its points imply decodes closer to the surface than the encoder alone."""
    from skellab.metrics import chamfer_distance

    ref = trimesh.load(meshes / "box.stl")
    points, faces = trimesh.sample.sample_surface(ref, 8000, seed=3)
    cloud = np.hstack([points, ref.face_normals[faces]])
    np.save(tmp_path / "scan.npy", cloud)
    _write_cloud_ply(tmp_path / "scan.ply", points, ref.face_normals[faces])
    truth = trimesh.sample.sample_surface(ref, 3000, seed=1)[0]
    cd = {}
    for name, steps in (("scan.npy", "0"), ("scan.npy", "60"), ("scan.ply", "0")):
        out = tmp_path / f"rec-{name}-{steps}.ply"
        code, _, err = run_cli("reconstruct", tmp_path / name, "--out", out, "--resolution", "48", "--refine", steps)
        assert code == 0, err
        rec = trimesh.load(out, process=True)
        assert rec.is_watertight and np.allclose(rec.bounds.mean(0), ref.bounds.mean(0), atol=3.0)
        cd[name, steps] = chamfer_distance(trimesh.sample.sample_surface(rec, 3000, seed=0)[0], truth)
    assert cd["scan.npy", "60"] < cd["scan.npy", "0"]
    assert cd["scan.ply", "0"] == pytest.approx(cd["scan.npy", "0"], rel=1e-3)  # the same cloud, read from PLY
    # no normals, too few points: one line, nothing written
    np.save(tmp_path / "bare.npy", points)
    _write_cloud_ply(tmp_path / "bare.ply", points)
    np.save(tmp_path / "few.npy", cloud[:100])
    np.save(tmp_path / "flipped.npy", np.hstack([points, -ref.face_normals[faces]]))
    for name, needle in (("bare.npy", "needs outward normals"), ("bare.ply", "needs outward normals"),
                         ("few.npy", "the cloud has 100"), ("flipped.npy", "normals pointing outward")):
        out = tmp_path / "bad.ply"
        code, _, err = run_cli("reconstruct", tmp_path / name, "--out", out)
        assert code == 2 and "Traceback" not in err and needle in err, err
        assert not out.exists()


def test_interpolate_writes_steps(meshes, tmp_path):
    code, stdout, err = run_cli("interpolate", meshes / "capsule.stl", meshes / "ball.ply", "--steps", "3",
                                "--out", tmp_path / "interp", "--resolution", "40")
    assert code == 0, err
    files = sorted((tmp_path / "interp").glob("step_*.ply"))
    assert len(files) == 3 and stdout.count("watertight") == 3


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--resolution", "8"], "resolution"),
        (["--resolution", "100000"], "resolution"),
        (["--checkpoint", "{tmp}/missing.pt"], "not found"),
        (["--checkpoint", "{tmp}/garbage.pt"], "corrupt"),
        (["--checkpoint", "{tmp}/other.pt"], "format"),
        (["--organ", "unicorn"], "unknown organ"),
        (["--refine", "-3"], "refine"),
        (["--refine", "many"], "refine"),
    ],
    ids=["res-small", "res-huge", "missing-ckpt", "corrupt-ckpt", "other-format", "unknown-organ", "refine-negative",
         "refine-word"],
)
def test_reconstruct_bad_input(meshes, tmp_path, args, needle):
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    torch.save({"format": "skellab.learned_skeleton/1", "config": {}}, tmp_path / "other.pt")
    args = [a.format(tmp=tmp_path) for a in args]
    out = tmp_path / "rec.ply"
    code, _, err = run_cli("reconstruct", meshes / "capsule.stl", "--out", out, *args)
    assert code == 2 and "Traceback" not in err
    assert needle in err.lower(), err
    assert not out.exists()


def test_interpolate_bad_steps(meshes, tmp_path):
    code, _, err = run_cli("interpolate", meshes / "capsule.stl", meshes / "ball.ply", "--steps", "1",
                           "--out", tmp_path / "o")
    assert code == 2 and "steps" in err
