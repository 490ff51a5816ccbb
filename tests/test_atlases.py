"""Unseen real anatomy: the numpy VTI reader, the optional package sources and the unseen split."""

from __future__ import annotations

import base64
import zlib
from functools import cache

import numpy as np
import pytest

from skellab.data import atlases
from skellab.data.atlases import read_vti, unseen_shapes, write_vti
from skellab.data.detail import HELD_OUT_FAMILY
from skellab.errors import SkellabError


def _has_pyvista_frog() -> bool:
    try:
        atlases.frog_file()
    except SkellabError:
        return False
    return True


HAS_FROG = _has_pyvista_frog()
HAS_MRICRON = (atlases.MRICRON_DIR / "aal.nii.gz").is_file()
HAS_CRANIUM = atlases.CRANIUM_FILE.is_file()


# -- the VTI reader --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
@pytest.mark.parametrize("block_size", [64, 32768])
def test_vti_round_trip(tmp_path, dtype, block_size):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 30, size=(7, 5, 4)).astype(dtype)
    path = write_vti(tmp_path / "a.vti", data, spacing=(1.0, 2.0, 1.5), origin=(3.0, 0.0, -1.0), block_size=block_size)
    got, origin, spacing = read_vti(path)
    assert got.dtype == np.dtype(dtype) and got.shape == (7, 5, 4)
    assert np.array_equal(got, data)
    assert np.allclose(origin, [3, 0, -1]) and np.allclose(spacing, [1, 2, 1.5])


def test_vti_is_x_fastest_as_vtk_stores_it(tmp_path):
    # a hand-made file: 3 x 2 x 1 values 0..5 in VTK order (x fastest) → data[i, j, 0] = i + 3 j
    raw = bytes(range(6))
    comp = zlib.compress(raw)
    header = np.array([1, 6, 6, len(comp)], dtype="<u4").tobytes()
    b64 = base64.b64encode(header).decode() + base64.b64encode(comp).decode()
    (tmp_path / "h.vti").write_text(
        '<VTKFile type="ImageData" version="0.1" byte_order="LittleEndian" header_type="UInt32" '
        'compressor="vtkZLibDataCompressor"><ImageData WholeExtent="0 2 0 1 0 0" Origin="0 0 0" Spacing="1 1 1">'
        f'<Piece Extent="0 2 0 1 0 0"><PointData><DataArray type="UInt8" Name="L" format="binary">{b64}'
        "</DataArray></PointData></Piece></ImageData></VTKFile>"
    )
    data, _, _ = read_vti(tmp_path / "h.vti")
    assert data.shape == (3, 2, 1)
    assert [[int(data[i, j, 0]) for j in range(2)] for i in range(3)] == [[0, 3], [1, 4], [2, 5]]


def test_vti_ascii_and_errors(tmp_path):
    (tmp_path / "a.vti").write_text(
        '<VTKFile type="ImageData" byte_order="LittleEndian"><ImageData WholeExtent="0 1 0 0 0 0">'
        '<Piece><PointData><DataArray type="Int16" Name="v" format="ascii">-4 7</DataArray>'
        "</PointData></Piece></ImageData></VTKFile>"
    )
    data, _, spacing = read_vti(tmp_path / "a.vti")
    assert data.ravel().tolist() == [-4, 7] and np.allclose(spacing, 1)
    with pytest.raises(SkellabError, match="no DataArray named"):
        read_vti(tmp_path / "a.vti", array="labels")
    (tmp_path / "b.vti").write_text('<VTKFile type="PolyData"><PolyData></PolyData></VTKFile>')
    with pytest.raises(SkellabError, match="ImageData"):
        read_vti(tmp_path / "b.vti")
    with pytest.raises(SkellabError, match="not found"):
        read_vti(tmp_path / "missing.vti")


# -- real sources (each skipped when its package is absent) ------------------------------------------
@cache
def _frog():
    return atlases.load_frog_organs()


@pytest.mark.skipif(not HAS_FROG, reason="pyvista not installed (pip install --no-deps pyvista)")
def test_frog_file_has_the_vtk_frog_labels():
    labels, _, spacing = read_vti(atlases.frog_file())
    assert labels.shape == (500, 470, 136) and np.allclose(spacing, [1, 1, 1.5])
    sizes = np.bincount(labels.ravel(), minlength=30)
    organs = {name: sizes[k] for k, name in atlases.FROG_TISSUES.items()}
    assert max(organs, key=organs.get) == "skeleton" and organs["liver"] > organs["stomach"] > organs["heart"]
    # the brain and eyes sit at the head end, far from the stomach
    x = {k: np.argwhere(labels[::4, ::4, ::2] == k)[:, 0].mean() * 4 for k in (2, 4, 6, 15)}
    assert x[2] > x[6] > x[15] and x[4] > x[6]


@pytest.mark.skipif(not HAS_FROG, reason="pyvista not installed (pip install --no-deps pyvista)")
def test_frog_yields_at_least_eight_valid_organs():
    shapes = _frog()
    assert len({s.organ for s in shapes}) >= 8
    for s in shapes:
        mesh = s.to_trimesh()
        assert mesh.is_watertight and mesh.volume > 0, s.shape_id
        assert np.isclose(np.abs(s.vertices).max(), 1.0) and s.organ.startswith("frog_")
        assert s.source.startswith("pyvista:") and isinstance(s.meta["genus"], int)


@pytest.mark.skipif(not HAS_MRICRON, reason="Debian mricron-data not installed (apt-get install mricron-data)")
def test_mricron_regions():
    shapes = atlases.load_mricron_regions()
    assert {s.organ for s in shapes} == {"cerebellar_lobule", "white_matter_tract"} and len(shapes) == 8
    for s in shapes:
        assert s.to_trimesh().is_watertight and s.to_trimesh().volume > 0, s.shape_id
    tract = next(s for s in shapes if s.shape_id == "jhu_corticospinal_tract_L")
    ext = np.sort(tract.vertices.max(0) - tract.vertices.min(0))
    assert ext[2] > 2.5 * ext[0]  # thin and elongated


@pytest.mark.skipif(not HAS_CRANIUM, reason="Debian invesalius-examples not installed")
def test_skull_interior_is_a_closed_cavity_of_plausible_size():
    s = atlases.load_skull_interior()
    mesh = s.to_trimesh(original_units=True)
    assert mesh.is_watertight and mesh.volume > 0
    assert 1.1e6 < mesh.volume < 1.8e6  # mm³: an adult intracranial volume is ~1.2-1.7 litres
    ext = np.sort(mesh.extents)
    assert 110 < ext[0] and ext[2] < 200  # mm
    assert s.license.startswith("GPL-2")


# -- the split --------------------------------------------------------------------------------------
def test_missing_sources_are_skipped_with_a_warning(monkeypatch):
    def absent():
        raise SkellabError("pyvista is not installed")

    monkeypatch.setattr(atlases, "frog_file", absent)
    with pytest.warns(UserWarning, match="skipping frog"):
        shapes = unseen_shapes(sources=("frog", "procedural"), procedural_seeds=[0])
    assert [s.organ for s in shapes] == [HELD_OUT_FAMILY] and shapes[0].meta["split"] == "unseen"
    with pytest.raises(SkellabError, match="unknown unseen source"):
        unseen_shapes(sources=("medshapenet",))


@pytest.mark.skipif(not (HAS_FROG and HAS_MRICRON), reason="needs pyvista and mricron-data")
def test_unseen_split_has_three_real_classes_and_the_held_out_family(recwarn):
    shapes = unseen_shapes(sources=("frog", "mricron", "procedural"), procedural_seeds=[0, 1],
                           frog_organs=("heart", "kidney", "liver"))
    classes = {s.organ for s in shapes}
    assert {"frog_heart", "frog_kidney", "frog_liver", "cerebellar_lobule", HELD_OUT_FAMILY} <= classes
    assert all(s.meta["split"] == "unseen" for s in shapes)
    assert len({s.shape_id for s in shapes}) == len(shapes)
    from skellab.data.anatomy import ANATOMY_SOURCES

    assert not any(s.source.split(":")[0] in ANATOMY_SOURCES for s in shapes)  # none of MedSDF-mini's sources

