"""Mesh and label-volume I/O: round trips, analytic volumes, world coordinates, loud errors."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
import trimesh

from skellab.data.io import (
    fan_triangulate,
    file_suffix,
    load_label_volume,
    load_mesh,
    load_shape_file,
    load_vrml_parts,
    save_mesh,
)
from skellab.data.shape import Shape
from skellab.errors import SkellabError


@pytest.fixture
def sphere() -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=1.5)
    mesh.apply_translation([10.0, -2.0, 3.0])
    return mesh


# --- surface formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["ply", "stl", "obj", "off"])
def test_save_load_round_trip(tmp_path, sphere, ext):
    path = save_mesh(tmp_path / f"ball.{ext}", sphere.vertices, sphere.faces)
    vertices, faces = load_mesh(path)
    assert vertices.dtype == np.float64 and faces.dtype == np.int64
    assert faces.shape == sphere.faces.shape and vertices.shape == sphere.vertices.shape
    back = trimesh.Trimesh(vertices, faces, process=False)
    assert back.is_watertight
    assert back.volume == pytest.approx(sphere.volume, rel=1e-5)
    if ext != "stl":  # STL reorders (and rounds to float32) the shared corners
        np.testing.assert_allclose(vertices, sphere.vertices, atol=1e-6)
        np.testing.assert_array_equal(faces, sphere.faces)
    assert [p.name for p in tmp_path.iterdir()] == [f"ball.{ext}"]  # no temp files left behind


def test_ascii_stl_is_read(tmp_path, sphere):
    path = tmp_path / "ascii.stl"
    path.write_bytes(trimesh.exchange.stl.export_stl_ascii(sphere).encode())
    vertices, faces = load_mesh(path)
    assert len(vertices) == len(sphere.vertices) and len(faces) == len(sphere.faces)


@pytest.mark.parametrize("gz", [False, True])
def test_gifti_read(tmp_path, sphere, gz):
    arrays = [
        nib.gifti.GiftiDataArray(sphere.vertices.astype(np.float32), intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(sphere.faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE"),
    ]
    path = tmp_path / "ball.gii"
    nib.save(nib.gifti.GiftiImage(darrays=arrays), path)
    if gz:
        with open(path, "rb") as src, gzip.open(tmp_path / "ball.gii.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        path = tmp_path / "ball.gii.gz"
    vertices, faces = load_mesh(path)
    np.testing.assert_allclose(vertices, sphere.vertices, atol=1e-5)
    np.testing.assert_array_equal(faces, sphere.faces)


_WRL = """#VRML V2.0 utf8
Transform { children [ Shape { geometry IndexedFaceSet {
  coord Coordinate { point [ 0 0 0, 1 0 0, 1 1 0, 0 1 0,   # a unit cube, quads
                             0 0 1, 1 0 1, 1 1 1, 0 1 1 ] }
  normal Normal { vector [ 0 0 1 ] }
  coordIndex [ 0 3 2 1 -1, 4 5 6 7 -1, 0 1 5 4 -1, 1 2 6 5 -1, 2 3 7 6 -1, 3 0 4 7 -1 ]
} } ] }
Transform { children [ Shape { geometry IndexedFaceSet {
  coord DEF tet Coordinate { point [ 5 0 0, 6 0 0, 5 1 0, 5 0 1 ] }
  coordIndex [ 0, 2, 1, -1, 0, 1, 3, -1, 0, 3, 2, -1, 1, 2, 3 ]
} } ] }
"""


def test_vrml_parts_and_concatenation(tmp_path):
    path = tmp_path / "two.wrl"
    path.write_text(_WRL)
    (cube_v, cube_f), (tet_v, tet_f) = load_vrml_parts(path)
    assert cube_v.shape == (8, 3) and cube_f.shape == (12, 3)
    assert tet_v.shape == (4, 3) and tet_f.shape == (4, 3)
    assert trimesh.Trimesh(cube_v, cube_f, process=False).volume == pytest.approx(1.0)
    vertices, faces = load_mesh(path)
    assert vertices.shape == (12, 3) and faces.shape == (16, 3) and faces.max() == 11
    shape = Shape.from_mesh(cube_v, cube_f, shape_id="cube", organ="box", source="test", license="test")
    assert shape.to_trimesh().is_watertight


def test_fan_triangulate():
    tris = fan_triangulate(np.array([0, 1, 2, 3, 4, -1, 5, 6, -1, 7, 8, 9]))
    np.testing.assert_array_equal(tris, [[0, 1, 2], [0, 2, 3], [0, 3, 4], [7, 8, 9]])


def test_file_suffix():
    assert file_suffix("a/b.NII.GZ") == ".nii.gz"
    assert file_suffix("x.surf.gii.gz") == ".gii.gz"
    assert file_suffix("mesh.Stl") == ".stl"


# --- bad surface inputs ---------------------------------------------------------------------------


def _message(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(SkellabError) as exc:
        load_mesh(tmp_path / "nope.stl")
    assert "not found" in _message(exc)


def test_empty_file(tmp_path):
    (tmp_path / "empty.ply").write_bytes(b"")
    with pytest.raises(SkellabError) as exc:
        load_mesh(tmp_path / "empty.ply")
    assert "empty" in _message(exc)


def test_text_file_named_stl(tmp_path):
    (tmp_path / "notes.stl").write_text("these are my notes, not a mesh\n" * 10)
    with pytest.raises(SkellabError) as exc:
        load_mesh(tmp_path / "notes.stl")
    assert "not a valid STL" in _message(exc)


def test_unsupported_extension(tmp_path):
    (tmp_path / "cloud.xyz").write_text("0 0 0\n1 0 0\n")
    with pytest.raises(SkellabError) as exc:
        load_mesh(tmp_path / "cloud.xyz")
    assert "unsupported" in _message(exc) and ".xyz" in str(exc.value)


def test_point_cloud_has_no_faces(tmp_path):
    properties = "".join(f"property float {c}\n" for c in "xyz")
    header = "ply\nformat ascii 1.0\nelement vertex 3\n" + properties + "end_header\n"
    (tmp_path / "cloud.ply").write_text(header + "0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(SkellabError) as exc:
        load_mesh(tmp_path / "cloud.ply")
    assert "no faces" in _message(exc)


def test_nan_vertices(tmp_path):
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv 1 0 nan\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
    with pytest.raises(SkellabError) as exc:
        load_mesh(tmp_path / "nan.obj")
    assert "NaN" in _message(exc)


def test_mesh_with_hole_is_rejected(tmp_path, sphere):
    save_mesh(tmp_path / "holey.ply", sphere.vertices, sphere.faces[1:])
    with pytest.raises(SkellabError) as exc:
        load_shape_file(tmp_path / "holey.ply", organ="ball")
    assert "watertight" in _message(exc)


def test_save_mesh_rejects_unknown_extension(tmp_path, sphere):
    with pytest.raises(SkellabError):
        save_mesh(tmp_path / "ball.glb", sphere.vertices, sphere.faces)


def test_load_shape_file_mesh(tmp_path, sphere):
    save_mesh(tmp_path / "ball.off", sphere.vertices, sphere.faces)
    shape = load_shape_file(tmp_path / "ball.off", organ="ball", license="CC0")
    assert shape.shape_id == "ball" and shape.organ == "ball" and shape.license == "CC0"
    assert np.abs(shape.vertices).max() == pytest.approx(1.0)
    np.testing.assert_allclose(shape.normalization.center, [10.0, -2.0, 3.0], atol=1e-6)
    assert shape.to_trimesh().volume > 0


# --- label volumes --------------------------------------------------------------------------------

RADIUS_MM = 9.0
CENTER_MM = np.array([-20.0, 35.0, 12.5])


@pytest.fixture
def ball_volume(tmp_path):
    """A ball of label 3 (radius 9 mm, centre CENTER_MM) in a rotated, mirrored, anisotropic grid."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, 1.0, -1.0])  # 30° + mirror
    spacing = np.diag([0.8, 1.1, 0.9])
    linear = rotation @ spacing  # det < 0: a mirrored voxel grid
    assert np.linalg.det(linear) < 0
    shape = (40, 34, 38)
    # put the ball centre at the middle voxel
    mid = (np.array(shape) - 1) / 2
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = CENTER_MM - linear @ mid
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ linear.T + affine[:3, 3]
    labels = np.zeros(shape, dtype=np.int16)
    labels[np.linalg.norm(world - CENTER_MM, axis=-1) <= RADIUS_MM] = 3
    labels[0:2, 0:2, 0:2] = 3  # a speck of the same label: dropped as a smaller component
    labels[30:36, 2:6, 2:6] = 5  # another label
    path = tmp_path / "ball.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path


def test_label_volume_ball(ball_volume):
    vertices, faces = load_label_volume(ball_volume, 3, smoothing_sigma=1.0)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight and mesh.body_count == 1
    assert mesh.volume > 0  # outward although the affine is mirrored
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * RADIUS_MM**3, rel=0.05)
    np.testing.assert_allclose(mesh.center_mass, CENTER_MM, atol=0.3)  # world mm, through the affine
    distance = np.linalg.norm(vertices - CENTER_MM, axis=1)
    assert np.abs(distance - RADIUS_MM).max() < 1.2  # within about one voxel


def test_label_volume_shape(ball_volume):
    shape = load_shape_file(ball_volume, organ="ball", label=3)
    assert shape.shape_id == "ball_label3" and shape.source.endswith("#label=3")
    assert shape.normalization.scale == pytest.approx(RADIUS_MM, rel=0.1)
    assert shape.to_trimesh().volume > 0


def test_label_not_present(ball_volume):
    with pytest.raises(SkellabError) as exc:
        load_label_volume(ball_volume, 7)
    msg = _message(exc)
    assert "label 7 not present" in msg and "3, 5" in msg


def test_volume_needs_label(ball_volume):
    with pytest.raises(SkellabError):
        load_shape_file(ball_volume, organ="ball")


def test_non_integer_volume(tmp_path):
    data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "t1.nii")
    with pytest.raises(SkellabError) as exc:
        load_label_volume(tmp_path / "t1.nii", 1)
    assert "integer" in _message(exc)


def test_four_d_volume(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.int16), np.eye(4)), tmp_path / "bold.nii.gz")
    with pytest.raises(SkellabError) as exc:
        load_label_volume(tmp_path / "bold.nii.gz", 1)
    assert "3D" in _message(exc)


def test_unreadable_volume(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(SkellabError) as exc:
        load_label_volume(tmp_path / "broken.nii.gz", 1)
    assert "cannot read" in _message(exc)
