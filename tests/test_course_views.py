"""skellab.views.course (the course's figures and helpers) and the static-render fallback."""

import io
import json
import types

import numpy as np
import pytest

from skellab.errors import SkellabError


def _colours(png: bytes) -> int:
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return len(np.unique(im.reshape(-1, 3), axis=0))


@pytest.fixture
def sphere():
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=2)
    return np.asarray(s.vertices) * 0.6, np.asarray(s.faces)


def test_render_falls_back_to_matplotlib_without_opengl(monkeypatch, sphere):
    """Where headless EGL is missing (polyscope cannot start), render_png still returns a picture."""
    from skellab.views import render

    def no_gl():
        raise SkellabError("polyscope could not start a headless OpenGL backend (forced by the test)")

    monkeypatch.setattr(render, "_polyscope", no_gl)
    monkeypatch.delenv("SKELLAB_RENDER_BACKEND", raising=False)
    with pytest.warns(RuntimeWarning, match="matplotlib instead"):
        png = render.render_png(meshes=[sphere], spheres=(np.zeros((2, 3)), np.array([0.1, 0.2])),
                                edges=np.array([[0, 1]]), size=(200, 160))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and _colours(png) > 20  # shaded, not blank
    with pytest.raises(SkellabError, match="OpenGL"):
        render.render_png(meshes=[sphere], backend="polyscope")


def test_render_backend_forced_by_environment(monkeypatch, sphere):
    from skellab.views import render

    monkeypatch.setattr(render, "_polyscope", lambda: pytest.fail("polyscope must not be asked"))
    monkeypatch.setenv("SKELLAB_RENDER_BACKEND", "matplotlib")
    assert _colours(render.render_png(meshes=[sphere], size=(120, 100))) > 20
    with pytest.raises(SkellabError, match="unknown render backend"):
        render.render_png(meshes=[sphere], backend="vulkan")


def test_require_dataset_says_how_to_build_a_missing_one(tmp_path, tiny_dataset):
    from skellab.views import require_dataset

    with pytest.raises(SkellabError, match=r"skellab data build --preset mini --out .*medsdf-mini"):
        require_dataset(tmp_path / "medsdf-mini")
    assert not (tmp_path / "medsdf-mini").exists()  # nothing half-built
    assert require_dataset(tiny_dataset).summary()["shapes"] > 0


def test_held_out_status_matches_the_builders_folds(tiny_dataset):
    """The folds held_out_status assigns are the ones the dataset builder wrote into the manifest."""
    from skellab.views import held_out_status

    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    records = manifest["shapes"] if isinstance(manifest["shapes"], list) else list(manifest["shapes"].values())
    shapes = [types.SimpleNamespace(shape_id=r["id"], organ=r["class"]) for r in records]
    for shape, record in zip(shapes, records):
        status = held_out_status(shape, shapes, ["kidney"])
        assert status["fold"] == record["fold"] and status["held_out"] == (record["fold"] == 5)
        assert status["class_trained"] == (record["class"] == "kidney")
    with pytest.raises(SkellabError):
        held_out_status(types.SimpleNamespace(shape_id="nope", organ="x"), shapes, [])


def test_read_generation_table_rules():
    from skellab.views import read_generation_table

    table = {"methods": {
        "a": {"macro": {"mmd_cd_x1e3": 1.0, "cov_cd": 0.2, "1nna_cd": 0.9, "betti_error": None}},
        "b": {"macro": {"mmd_cd_x1e3": 2.0, "cov_cd": 0.6, "1nna_cd": 0.45, "betti_error": 3.0}},
        "c": {"available": False, "reason": "no checkpoint"},
    }}
    reading = read_generation_table(table)
    assert reading["winners"] == {"mmd_cd_x1e3": "a", "cov_cd": "b", "1nna_cd": "b", "betti_error": "b"}
    assert any("only method" in s for s in reading["sentences"])


def test_shipped_table_is_read_and_plotted():
    pytest.importorskip("matplotlib")
    from skellab.evaluation import shipped_results
    from skellab.views import generation_table_figure, per_class_figure, read_generation_table

    shipped = shipped_results()
    winners = read_generation_table(shipped)["winners"]
    assert winners["betti_error"] == "skellab"  # the point cloud baseline has no Betti numbers
    mmd = {m: shipped["methods"][m]["macro"]["mmd_cd_x1e3"] for m in shipped["methods"]
           if shipped["methods"][m].get("macro")}
    assert len(mmd) == 3 and winners["mmd_cd_x1e3"] == min(mmd, key=mmd.get)  # lower MMD wins
    one_nna = {m: abs(shipped["methods"][m]["macro"]["1nna_cd"] - 0.5) for m in mmd}
    assert winners["1nna_cd"] == min(one_nna, key=one_nna.get)  # nearest 0.5 wins, not the lowest
    fig = generation_table_figure(shipped)
    assert len(fig.axes) == 7
    assert len(per_class_figure(shipped).axes[0].patches) > 0


def test_pipeline_figure_names_every_stage():
    pytest.importorskip("matplotlib")
    from skellab.views import pipeline_figure

    texts = " ".join(t.get_text() for t in pipeline_figure(highlight="05").axes[0].texts)
    for stage in ("Skeleton", "Skeletal latent", "Latent diffusion", "SDF decoder", "Mesh"):
        assert stage in texts


def test_offline_view_embeds_a_self_contained_snapshot(sphere):
    pytest.importorskip("k3d")
    from skellab.views import mesh_view, offline_view

    html = offline_view(mesh_view(*sphere), height=300)._repr_html_()
    assert html.startswith("<iframe") and 'srcdoc="' in html and "height:300px" in html
    assert "&lt;script" in html and "k3dCompressed" in html  # k3d's JavaScript is inlined, escaped
