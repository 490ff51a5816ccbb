"""Every tutorial notebook runs headless through papermill with small parameters."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Small parameters per notebook (CPU, seconds); the dataset comes from the tiny fixture.
SMALL = {
    "01_medsdf_data": {"slice_resolution": 48, "show_real": True},
    "02_skeletonization": {"num_points": 1024, "k": 256, "train_steps": 5},
    "03_skeletal_autoencoder": {"resolution": 48, "metric_points": 512, "train_steps": 3, "eval_resolution": 32},
    "04_organ_interpolation": {"per_class": 1, "steps": 5, "preview_resolution": 24, "full_resolution": 32,
                               "strip_resolution": 32},
    "05_diffusion_sampling": {"num_samples": 2, "steps": 8, "guidance_values": "0,2", "resolution": 40, "num_real": 3,
                              "solver_steps": "2,4"},
    "08_evaluation": {"classes": "kidney", "n": 1, "num_points": 512, "emd_points": 64, "resolution": 32, "steps": 4,
                      "baseline_seconds": 3.0, "toy_shapes": 2},
    "06_sdf_decoding": {"slice_resolution": 48, "resolutions": "24,32", "mc_resolutions": "16,24,32",
                        "metric_points": 512, "edit_resolution": 32},
    "07_full_training": {"preset": "tiny", "device": "cpu", "max_steps": 20, "eval_resolution": 32, "eval_points": 256,
                         "num_samples": 1, "sampler_steps": 4, "baseline_seconds": 2.0, "run_dir": "run"},
}


def test_notebooks_are_committed_clean_with_a_parameters_cell():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} has outputs"
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), path.name


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tiny_dataset, tmp_path):
    papermill = pytest.importorskip("papermill")
    params = {"dataset_dir": str(tiny_dataset), **SMALL.get(path.stem, {})}
    nb = json.loads(path.read_text())
    source = "".join("".join(c["source"]) for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    params = {k: v for k, v in params.items() if f"{k}:" in source or f"{k} =" in source}
    papermill.execute_notebook(
        str(path), str(tmp_path / f"{path.stem}.executed.ipynb"), parameters=params,
        kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
    )
