"""Dataset-wide quality checks: watertight meshes and SDF signs against an independent test."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .medsdf import MedSDF, dataset_lock
from .medsdf import remove_orphans as medsdf_remove_orphans
from .sampling import sign_agreement


def check_dataset(root: str | os.PathLike, *, samples_per_shape: int = 2000, seed: int = 0,
                  progress: bool = True, remove_orphans: bool = True) -> dict[str, Any]:
    """Re-verify every shape of a MedSDF dataset.

    First the files that no manifest names (left by interrupted builds and imports, see
    :func:`skellab.data.medsdf.find_orphans`) are listed under ``orphaned_files`` and, with
    ``remove_orphans``, deleted (under the dataset's writer lock, so never a running writer's).
    For each shape: sha256 of its files, sample arrays, the stored mesh is watertight with positive
    volume, and the stored SDF sign of ``samples_per_shape`` random stored samples agrees
    with the exact generalised winding number (igl.winding_number), an inside test
    independent of the pseudonormal sign used to build the dataset.
    Returns totals and the worst shapes.
    """
    ds = MedSDF.open(root)
    removed = False
    if remove_orphans:
        try:
            with dataset_lock(root):
                orphans = [str(p.relative_to(ds.root)) for p in medsdf_remove_orphans(root, locked=True)]
            removed = True
        except OSError:  # a read-only dataset (permissions, read-only mount): report only
            pass
    if not removed:
        orphans = [str(p.relative_to(ds.root)) for p in ds.orphans()]
    rng = np.random.default_rng(seed)
    agree, total, not_watertight, per_shape = 0, 0, [], []
    for shape_id in tqdm(ds.ids(), desc="check", unit="shape", disable=not progress):
        shape = ds.shape(shape_id)
        mesh = shape.to_trimesh()
        if not (mesh.is_watertight and mesh.volume > 0):
            not_watertight.append(shape_id)
        arrays = ds.samples(shape_id)
        idx = rng.choice(len(arrays["sdf_values"]), size=min(samples_per_shape, len(arrays["sdf_values"])), replace=False)
        frac = sign_agreement(shape, arrays["sdf_points"][idx], arrays["sdf_values"][idx])
        agree += round(frac * len(idx))
        total += len(idx)
        per_shape.append((frac, shape_id))
    per_shape.sort()
    return {
        "shapes": len(ds),
        "watertight": len(ds) - len(not_watertight),
        "not_watertight": not_watertight,
        "sign_checked_points": total,
        "sign_agreement": agree / max(total, 1),
        "worst_sign_agreement": [{"id": i, "agreement": f} for f, i in per_shape[:5]],
        "orphaned_files": orphans,
        "orphans_removed": removed,
    }
