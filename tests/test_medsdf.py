"""MedSDF format, builder, importer, torch Dataset and the `skellab data` CLI (incl. bad input)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from skellab import SkellabError
from skellab.cli import main
from skellab.data.build import build_dataset, import_files, merge_shards, parse_shard
from skellab.data.dataset import MedSDFDataset, SDFBatchConfig
from skellab.data.medsdf import MedSDF, read_manifest
from skellab.data.sampling import sign_agreement


from conftest import run_cli as _run_cli


def _run_subprocess(*args):
    """Run the real console entry point in a new process; return (code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "skellab.cli", *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def _assert_clean_error(code, err, *needles):
    assert code != 0
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


def test_tiny_dataset_manifest_files_and_checksums(tiny_dataset):
    ds = MedSDF.open(tiny_dataset)
    assert len(ds) == 20 and ds.classes == ["colon", "kidney", "liver", "vessel_tree"]
    assert ds.manifest["sign_convention"].startswith("negative inside")
    assert ds.verify_all() == 40
    for organ in ds.classes:  # stratified folds: every class has a test shape
        assert ds.ids(split="test", organ=organ)
    all_ids = set(ds.ids())
    assert set(ds.ids(split="train")) | set(ds.ids(split="val")) | set(ds.ids(split="test")) == all_ids
    assert not set(ds.ids(split="train")) & set(ds.ids(split="test"))
    rec = ds.record(ds.ids()[0])
    assert rec["license"] and rec["source"].startswith("procedural:") and rec["has_skeleton"]
    shape = ds.shape(rec["id"])
    assert shape.to_trimesh().is_watertight and np.isclose(np.abs(shape.vertices).max(), 1.0, atol=1e-6)
    arrays = ds.samples(rec["id"])
    assert arrays["sdf_points"].shape[0] == 24000 and arrays["surface_points"].shape == (4096, 3)
    assert sign_agreement(shape, arrays["sdf_points"][:4000], arrays["sdf_values"][:4000]) >= 0.999


def test_dataset_items_are_reproducible(tiny_dataset):
    cfg = SDFBatchConfig(num_surface=512, num_queries=1000, near_fraction=0.9)
    a = MedSDFDataset(tiny_dataset, split="train", config=cfg, seed=1)
    b = MedSDFDataset(tiny_dataset, split="train", config=cfg, seed=1)
    x, y = a[0], b[0]
    assert x["surface"].shape == (512, 3) and x["queries"].shape == (1000, 3) and x["sdf"].shape == (1000,)
    assert torch.equal(x["queries"], y["queries"]) and torch.equal(x["sdf"], y["sdf"])
    a.set_epoch(1)
    assert not torch.equal(a[0]["queries"], x["queries"])
    assert 0 <= int(x["class_index"]) < len(a.classes)
    with pytest.raises(SkellabError, match="unknown organ"):
        MedSDFDataset(tiny_dataset, organs=["spleen"])
    with pytest.raises(SkellabError, match="unknown split"):
        MedSDFDataset(tiny_dataset, split="holdout")


def test_corrupt_sample_file_is_detected(tiny_dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_dataset, root)
    ds = MedSDF.open(root)
    victim = root / ds.record(ds.ids()[0])["files"]["samples"]["path"]
    victim.write_bytes(victim.read_bytes()[:-100] + b"x" * 100)
    with pytest.raises(SkellabError, match="checksum mismatch"):
        MedSDF.open(root).samples(ds.ids()[0])
    code, _, err = _run_subprocess("data", "info", root, "--verify")  # the real entry point, end to end
    _assert_clean_error(code, err, "checksum mismatch")


def test_corrupt_manifest_is_detected(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "medsdf", "format_version": 1, "shapes": [')
    code, _, err = _run_cli("data", "info", tmp_path)
    _assert_clean_error(code, err, "corrupt manifest")
    code, _, err = _run_cli("data", "info", tmp_path / "nowhere")
    _assert_clean_error(code, err, "not found")


def test_cli_info_and_unknown_preset(tiny_dataset, tmp_path):
    code, out, _ = _run_cli("data", "info", tiny_dataset, "--json")
    assert code == 0 and json.loads(out)["shapes"] == 20
    out_dir = tmp_path / "never"
    code, _, err = _run_cli("data", "build", "--preset", "huge", "--out", out_dir)
    _assert_clean_error(code, err, "unknown preset")
    assert not out_dir.exists()
    code, _, err = _run_cli("data", "build", "--preset", "tiny", "--out", out_dir, "--workers", "0")
    _assert_clean_error(code, err, "--workers")
    code, _, err = _run_cli("data", "build", "--preset", "tiny", "--out", tiny_dataset)
    _assert_clean_error(code, err, "already holds")


def test_sharded_build_merges_to_the_same_dataset(tiny_dataset, tmp_path):
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "-1/2"):
        with pytest.raises(SkellabError, match="bad shard"):
            parse_shard(bad)
    for i in range(2):
        build_dataset(tmp_path, preset_name="tiny", shard=(i, 2), progress=False)
    assert not (tmp_path / "manifest.json").exists()
    merge_shards(tmp_path)
    merged = read_manifest(tmp_path)["shapes"]
    full = read_manifest(tiny_dataset)["shapes"]
    key = lambda recs: [(r["id"], r["fold"], r["files"]["samples"]["sha256"]) for r in recs]
    assert key(merged) == key(full)  # bit-identical files and the same folds




def test_resume_reuses_complete_files_and_redoes_missing_or_broken_ones(tiny_dataset, tmp_path, monkeypatch):
    """An interrupted build (files, no manifest) resumed with --resume gives the full build's dataset."""
    import skellab.data.build as build

    out = tmp_path / "ds"
    shutil.copytree(tiny_dataset, out)
    (out / "manifest.json").unlink()  # killed before the manifest
    (out / "samples" / "kidney_0001.npz").unlink()  # never written
    (out / "samples" / "liver_0002.npz").write_bytes(b"PK\x03\x04 not a zip")  # a damaged file
    sampled = []
    real_sample = build.sample_sdf
    monkeypatch.setattr(build, "sample_sdf", lambda shape, **kw: sampled.append(shape.shape_id) or real_sample(shape, **kw))
    code, _, err = _run_cli("data", "build", "--preset", "tiny", "--out", out, "--resume", "--quiet")
    assert code == 0, err
    assert sorted(sampled) == ["kidney_0001", "liver_0002"]  # the 18 complete shapes were not sampled again
    full = read_manifest(tiny_dataset)["shapes"]
    resumed = read_manifest(out)["shapes"]
    key = lambda recs: [(r["id"], r["fold"], r["files"]["mesh"]["sha256"], r["files"]["samples"]["sha256"]) for r in recs]
    assert key(resumed) == key(full)  # the same bytes and folds as an uninterrupted build
    ds = MedSDF.open(out)
    assert ds.verify_all() == 2 * len(full) and ds.orphans() == []  # the damaged file was cleaned up
def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_import_meshes_and_bad_files_leave_dataset_untouched(tmp_path):
    good = tmp_path / "organ_a.stl"
    trimesh.creation.capsule(height=30, radius=8).export(good)
    trimesh.creation.icosphere(radius=12).export(tmp_path / "organ_b.ply")
    out = tmp_path / "ds"
    code, stdout, err = _run_cli("data", "import", good, tmp_path / "organ_b.ply", "--class", "spleen", "--out", out, "--quiet")
    assert code == 0, err
    ds = MedSDF.open(out)
    assert len(ds) == 2 and ds.classes == ["spleen"]
    shape = ds.shape("spleen_organ_a")
    assert np.allclose(shape.normalization.scale, 23.0, atol=0.1)  # half-length of the capsule in mm
    before = (out / "manifest.json").read_bytes()
    files_before = sorted(p.name for p in out.rglob("*"))

    holey = trimesh.creation.icosphere()
    holey.update_faces(np.arange(len(holey.faces) - 5))
    bad_inputs = {
        "empty": (_write(tmp_path / "empty.stl", b""), "empty"),
        "text": (_write(tmp_path / "notes.stl", b"this is not a mesh\n" * 20), "stl"),
        "holes": (tmp_path / "holey.ply", "not watertight"),
        "nan": (tmp_path / "nan.obj", "nan"),
        "missing": (tmp_path / "missing.stl", "not found"),
    }
    holey.export(bad_inputs["holes"][0])
    (tmp_path / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 3 4\nf 1 2 4\nf 2 3 4\n")
    for name, (path, needle) in bad_inputs.items():
        code, _, err = _run_cli("data", "import", good, path, "--class", "liver", "--out", out, "--quiet")
        _assert_clean_error(code, err, needle)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.rglob("*")) == files_before
    with pytest.raises(SkellabError, match="already"):
        import_files([good], organ="spleen", out=out, progress=False)


def test_import_label_volume(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.zeros((40, 40, 40), np.int16)
    z, y, x = np.mgrid[:40, :40, :40]
    vol[(x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 < 100] = 6
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 1.5, 1.0])), path)
    out = tmp_path / "ds"
    assert import_files([path], organ="liver", label=6, out=out, progress=False) == ["liver_labels_label6"]
    code, _, err = _run_cli("data", "import", path, "--label", "3", "--class", "liver", "--out", tmp_path / "ds2")
    _assert_clean_error(code, err, "label")
    assert not (tmp_path / "ds2" / "manifest.json").exists()


def test_cli_bad_flags_exit_nonzero_without_traceback():
    code, _, err = _run_cli("data", "build", "--out", "never", "--bogus")
    assert code == 2 and "Traceback" not in err and "unrecognized" in err
    assert main(["data", "info", "/definitely/not/here"]) == 2


def test_check_dataset_confirms_watertight_meshes_and_signs(tiny_dataset):
    from skellab.data.checks import check_dataset

    report = check_dataset(tiny_dataset, samples_per_shape=500, progress=False)
    assert report["shapes"] == report["watertight"] == 20
    assert report["sign_agreement"] >= 0.999
    code, out, _ = _run_cli("data", "check", tiny_dataset, "--samples", "200", "--quiet")
    assert code == 0 and json.loads(out)["sign_checked_points"] == 4000
