"""Detail families: valid meshes of the stated topology, measured wall thickness, exact-sign SDF, augmentation."""

from __future__ import annotations

from functools import cache

import igl
import numpy as np
import pytest

from skellab.data import build
from skellab.data.augment import anisotropic_scale, mirror, random_anisotropic_scale
from skellab.data.detail import (
    DETAIL_FAMILIES,
    GENUS_RANGE,
    HELD_OUT_FAMILY,
    THIN_WALLED,
    TRAIN_DETAIL_FAMILIES,
    WALL_FRACTION,
    detail_sdf,
)
from skellab.data.procedural import FAMILIES, make_shape
from skellab.data.sampling import signed_distance
from skellab.errors import SkellabError

SEED = 2


@cache
def _shape(family: str, seed: int = SEED):
    return make_shape(family, seed)


def _inside(shape, points: np.ndarray) -> np.ndarray:
    w = igl.fast_winding_number(shape.vertices, shape.faces, np.ascontiguousarray(points, dtype=np.float64))
    return w > 0.5


def _wall_thickness(shape, count: int = 400, step: float = 0.002) -> np.ndarray:
    """Thickness (normalised units) measured on the mesh: march inward from surface samples until outside."""
    mesh = shape.to_trimesh()
    pts, face = mesh.sample(count, return_index=True, seed=0)
    normals = mesh.face_normals[face]
    t = np.arange(1, 101) * step  # up to 0.2: beyond the thickest wall allowed (0.08 x 2)
    q = pts[:, None, :] - t[None, :, None] * normals[:, None, :]
    d = signed_distance(q.reshape(-1, 3), shape)
    outside = d.reshape(count, len(t)) > 0
    first = np.where(outside.any(1), outside.argmax(1), len(t) - 1)
    return t[first]


def test_families_registered_and_held_out_one_excluded():
    assert set(DETAIL_FAMILIES).isdisjoint(FAMILIES)  # MedSDF-mini's family list is unchanged
    assert HELD_OUT_FAMILY in DETAIL_FAMILIES and HELD_OUT_FAMILY not in TRAIN_DETAIL_FAMILIES
    assert set(THIN_WALLED) == {"chamber_shell", "perforated_shell", "vessel_wall"}
    with pytest.raises(SkellabError, match="haustral_colon"):  # the error lists the detail families too
        make_shape("no_such_family", 0)


@pytest.mark.parametrize("family", DETAIL_FAMILIES)
def test_shape_is_watertight_outward_normalised_with_its_genus(family):
    shape = _shape(family)
    mesh = shape.to_trimesh()
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert len(mesh.split(only_watertight=False)) == 1
    assert np.isclose(np.abs(shape.vertices).max(), 1.0)
    lo, hi = GENUS_RANGE[family]
    assert lo <= shape.meta["genus"] <= hi
    assert mesh.euler_number == 2 - 2 * shape.meta["genus"]
    assert shape.organ == family and shape.source == f"procedural:{family}" and shape.seed == SEED
    assert shape.meta["held_out"] == (family == HELD_OUT_FAMILY)


@pytest.mark.parametrize("family", ["haustral_colon", "chamber_shell", "vessel_wall"])
def test_same_seed_is_bit_identical_and_seeds_differ(family):
    a, b, c = _shape(family), make_shape(family, SEED), _shape(family, SEED + 1)
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces) and a.meta == b.meta
    assert a.vertices.shape != c.vertices.shape or not np.allclose(a.vertices, c.vertices)


def test_perforated_shells_have_genus_3_to_7():
    genus = [_shape(HELD_OUT_FAMILY, s).meta["genus"] for s in range(4)]
    for s, g in zip(range(4), genus):
        assert _shape(HELD_OUT_FAMILY, s).to_trimesh().euler_number == 2 - 2 * g
    assert min(genus) >= 3 and max(genus) <= 7


@pytest.mark.parametrize("family", DETAIL_FAMILIES)
def test_sdf_agrees_in_sign_with_the_mesh(family):
    shape = _shape(family)
    sdf = detail_sdf(family, SEED, draw=shape.meta["redraws"])
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.uniform(-1.05, 1.05, (4000, 3)),
                        shape.vertices[rng.integers(len(shape.vertices), size=4000)] + rng.normal(0, 0.03, (4000, 3))])
    d = sdf(shape.normalization.invert(q)) / shape.normalization.scale  # normalised units, |d| <= distance
    voxel = shape.meta["grid"]["voxel"] / shape.normalization.scale
    far = np.abs(d) > voxel  # the mesh is within a voxel of the zero set
    assert far.sum() > 3000 and (d < 0).any() and (d > 0).any()
    assert ((d[far] < 0) == _inside(shape, q[far])).mean() >= 0.995


@pytest.mark.parametrize("family", THIN_WALLED)
def test_wall_thickness_measured_on_the_mesh_is_in_range(family):
    shape = _shape(family)
    extent = 2.0  # normalised frame: the largest side spans [-1, 1]
    t = _wall_thickness(shape) / extent
    lo, hi = WALL_FRACTION
    p10, p50, p90 = np.percentile(t, [10, 50, 90])
    assert lo <= p10 and p90 <= hi, (p10, p50, p90)
    assert abs(p50 - shape.meta["wall_fraction"]) < 0.15 * shape.meta["wall_fraction"]


@pytest.mark.parametrize("family", THIN_WALLED)
def test_medial_sheet_lies_inside_the_wall_at_half_thickness(family):
    shape = _shape(family)
    sk = shape.skeleton
    assert shape.meta["skeleton_kind"] == "medial_sheet" and len(sk.centers) > 500 and sk.edges.shape == (0, 2)
    assert _inside(shape, sk.centers).mean() >= 0.99
    d = signed_distance(sk.centers, shape)
    assert np.median(np.abs(-d - sk.radii) / sk.radii) < 0.15


@pytest.mark.parametrize("family", [f for f in DETAIL_FAMILIES if f not in THIN_WALLED])
def test_surface_detail_families_carry_multiscale_noise_and_a_curve_skeleton(family):
    shape = _shape(family)
    assert len(shape.meta["params"]["noise"]) == 3 and shape.meta["lipschitz"] > 1.0
    assert shape.meta["skeleton_kind"] == "construction"
    assert _inside(shape, shape.skeleton.centers).mean() >= 0.99


# -- augmentation -------------------------------------------------------------------------------
def test_mirror_is_a_valid_outward_reflection():
    s = _shape("haustral_colon").replace(meta={**_shape("haustral_colon").meta, "hemisphere": "L"})
    m = mirror(s)
    mesh = m.to_trimesh()
    assert mesh.is_watertight and mesh.volume > 0
    assert np.isclose(mesh.volume, s.to_trimesh().volume)
    assert np.array_equal(m.vertices[:, 0], -s.vertices[:, 0]) and np.array_equal(m.vertices[:, 1:], s.vertices[:, 1:])
    assert m.meta["hemisphere"] == "R" and m.meta["augmented_from"] == s.shape_id and m.shape_id.endswith("_mirror")
    assert np.allclose(m.skeleton.centers[:, 0], -s.skeleton.centers[:, 0])
    back = mirror(m)
    assert np.array_equal(back.vertices, s.vertices) and np.array_equal(back.faces, s.faces)
    assert back.meta["augmented_from"] == s.shape_id


def test_anisotropic_scale_stays_within_ten_percent_and_keeps_original_units():
    s = _shape("chamber_shell")
    f = np.array([1.08, 0.95, 1.0])
    a = anisotropic_scale(s, f)
    assert a.to_trimesh().is_watertight and a.to_trimesh().volume > 0
    assert np.isclose(np.abs(a.vertices).max(), 1.0)
    orig = s.normalization.invert(s.vertices)
    c = np.asarray(s.normalization.center)
    assert np.allclose(a.normalization.invert(a.vertices), c + (orig - c) * f)
    with pytest.raises(SkellabError, match="10 %"):
        anisotropic_scale(s, [1.2, 1.0, 1.0])
    r = random_anisotropic_scale(s, 7)
    factors = np.array([float(x) for x in r.meta["augmentation"][-1].split(":")[1].split(",")])
    assert np.all(np.abs(factors - 1) <= 0.1)
    assert np.array_equal(r.vertices, random_anisotropic_scale(s, 7).vertices)


# -- the preset ------------------------------------------------------------------------------------
def test_fidelity_preset_adds_detail_families_but_not_the_held_out_one():
    p, mini, tiny = build.preset("fidelity"), build.preset("mini"), build.preset("tiny")
    assert set(p.detail_families) == set(TRAIN_DETAIL_FAMILIES) and p.detail_per_family > 0
    assert HELD_OUT_FAMILY not in p.detail_families and set(p.augment) == {"mirror", "scale"}
    assert mini.detail_families == () and mini.augment == () and mini.per_family == 40  # unchanged
    assert tiny.detail_families == () and tiny.per_family == 5


def test_generation_preset_is_mini_with_four_times_the_procedural_shapes(monkeypatch):
    monkeypatch.setattr(build, "load_packaged_anatomy", list)
    gen, mini = build.preset("generation"), build.preset("mini")
    assert gen.per_family == 4 * mini.per_family and gen.anatomy and gen.families is None
    assert gen.detail_families == () and gen.augment == () and gen.sample_config == mini.sample_config
    seeds = {(s[1], s[2]) for s in build._specs(gen)}
    assert {(s[1], s[2]) for s in build._specs(mini)} < seeds  # mini's procedural shapes are among them


def test_augmented_copies_share_their_originals_fold():
    records = [{"id": f"thalamus_{i}", "class": "thalamus", "meta": {}} for i in range(10)]
    records += [{"id": f"thalamus_{i}_mirror", "class": "thalamus", "meta": {"augmented_from": f"thalamus_{i}"}}
                for i in range(10)]
    build._assign_folds(records)
    fold = {r["id"]: r["fold"] for r in records}
    assert all(fold[f"thalamus_{i}_mirror"] == fold[f"thalamus_{i}"] for i in range(10))
    assert sorted(fold[f"thalamus_{i}"] for i in range(10)) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
