"""Offline tests of data_scripts/medshapenet.py against a local HTTP server on 127.0.0.1.

The server serves generated STL files (``/download?files=NAME``) and MedShapeNetCore-style
archives (``/records/<id>/files/NAME``), supports ``Range`` requests (the stdlib handler does
not), logs every request, and can be told to ignore ``Range``. No test touches the internet:
every ``urlopen`` in this process is checked to target 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import trimesh

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data_scripts" / "medshapenet.py"

_spec = importlib.util.spec_from_file_location("medshapenet_script", SCRIPT)
msn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(msn)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- local server


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET ``/download?files=NAME`` or ``/records/<id>/files/NAME``, with ``bytes=a-[b]`` ranges."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        parts = urllib.parse.urlparse(self.path)
        names = urllib.parse.parse_qs(parts.query).get("files")
        name = names[0] if names else parts.path.rstrip("/").split("/")[-1]
        rng = self.headers.get("Range")
        server.log.append((name, rng))
        path = server.root / name
        if "/" in name or not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        if name in server.cut_once:  # simulate a dropped connection: promise all, send a third
            server.cut_once.discard(name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        if name in server.fail_once:  # transient server error
            server.fail_once.discard(name)
            self.send_error(503, "Service Unavailable")
            return
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and not server.ignore_range:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _stl(mesh: trimesh.Trimesh) -> bytes:
    return mesh.export(file_type="stl")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    broken = trimesh.creation.icosphere(subdivisions=2)
    broken = trimesh.Trimesh(broken.vertices, broken.faces[:-12], process=False)  # holes
    files = {
        "liver_001.stl": _stl(trimesh.creation.icosphere(subdivisions=3, radius=10.0)),
        "Liver_002.stl": _stl(trimesh.creation.capsule(height=20.0, radius=6.0, count=[24, 24])),
        "spleen_001.stl": _stl(trimesh.creation.box(extents=(10.0, 14.0, 8.0))),
        "spleen_002.stl": _stl(broken),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.root, httpd.log, httpd.ignore_range = root, [], False
    httpd.cut_once, httpd.fail_once = set(), set()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    urls = [f"{base}/download?path=%2F&files={name}" for name in files]
    (root / "list.txt").write_text("\n".join(urls + [""]))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base, httpd.files, httpd.list_file = base, files, root / "list.txt"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def local_only(monkeypatch, server):
    """Fail any urlopen in this process that does not target 127.0.0.1; reset the request log."""
    real = urllib.request.urlopen

    def guarded(req, *args, **kwargs):
        url = req.full_url if isinstance(req, urllib.request.Request) else req
        assert urllib.parse.urlparse(url).hostname == "127.0.0.1", url
        return real(req, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    server.log.clear()
    server.ignore_range = False
    server.cut_once.clear()
    server.fail_once.clear()


def run_main(capsys, *argv):
    rc = msn.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------- list / select


def test_list_counts_per_organ(server, capsys):
    rc, out, _ = run_main(capsys, "list", "--url-list", f"{server.base}/download?files=list.txt",
                          "--organ", "liver", "SPLEEN")
    assert rc == 0
    assert re.search(r"liver\s+2\b", out) and re.search(r"spleen\s+2\b", out)
    assert "CC BY-NC-SA 4.0" in out


def test_file_name_and_selection():
    assert msn.file_name("https://h/x/download?path=%2F&files=a%2Fb_liver.stl") == "b_liver.stl"
    assert msn.file_name("https://h/files/c_spleen.stl?download=1") == "c_spleen.stl"
    groups = msn.select(["u/liver_1.stl", "u/LIVER_2.stl", "u/spleen.stl"], ["liver"])
    assert groups == {"liver": ["u/liver_1.stl", "u/LIVER_2.stl"]}


def test_unknown_organ_lists_names(server, capsys):
    rc, _, err = run_main(capsys, "download", "--url-list", server.list_file, "--organ", "pancreas",
                          "--out", "unused")
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "pancreas" in lines[0]
    assert "liver" in lines[0] and "spleen" in lines[0]


# ---------------------------------------------------------------- download, resume, ledger


def test_download_selects_by_organ_and_writes_ledger(server, tmp_path, capsys):
    rc, out, _ = run_main(capsys, "download", "--url-list", server.list_file, "--organ", "liver",
                          "--out", tmp_path)
    assert rc == 0
    assert "CC BY-NC-SA 4.0" in out and "redistribute" in out
    raw = tmp_path / "raw"
    assert sorted(p.name for p in raw.rglob("*.stl")) == ["Liver_002.stl", "liver_001.stl"]
    ledger = json.loads((raw / "downloads.json").read_text())["files"]
    assert set(ledger) == {"liver/liver_001.stl", "liver/Liver_002.stl"}
    for rel, entry in ledger.items():
        data = server.files[Path(rel).name]
        assert entry["sha256"] == sha256(data) and entry["size"] == len(data)
        assert urllib.parse.urlparse(entry["url"]).hostname == "127.0.0.1"
    assert not list(raw.rglob("*.part"))
    # --limit caps the files per organ
    rc, _, _ = run_main(capsys, "download", "--url-list", server.list_file, "--organ", "spleen",
                        "--out", tmp_path, "--limit", "1")
    assert rc == 0 and len(list((raw / "spleen").glob("*.stl"))) == 1


@pytest.mark.parametrize("ignore_range", [False, True])
def test_resume_from_partial_file(server, tmp_path, capsys, ignore_range):
    server.ignore_range = ignore_range
    data = server.files["liver_001.stl"]
    part = tmp_path / "raw" / "liver" / "liver_001.stl.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 3])
    rc, _, _ = run_main(capsys, "download", "--url-list", server.list_file, "--organ", "liver",
                        "--out", tmp_path)
    assert rc == 0
    assert ("liver_001.stl", f"bytes={len(data) // 3}-") in server.log  # a Range request was sent
    final = tmp_path / "raw" / "liver" / "liver_001.stl"
    assert sha256(final.read_bytes()) == sha256(data)  # server that ignores Range: full download
    assert not part.exists()


def test_dropped_connection_and_503_are_retried_with_resume(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(msn.time, "sleep", lambda s: None)  # no back-off waits in tests
    data = server.files["Liver_002.stl"]
    server.cut_once.add("Liver_002.stl")
    server.fail_once.add("liver_001.stl")
    rc, out, _ = run_main(capsys, "download", "--url-list", server.list_file, "--organ", "liver",
                          "--out", tmp_path, "--retries", "2")
    assert rc == 0 and "2 downloaded" in out
    calls = [rng for name, rng in server.log if name == "Liver_002.stl"]
    assert calls == [None, f"bytes={len(data) // 3}-"]  # second attempt resumed the .part
    assert sha256((tmp_path / "raw" / "liver" / "Liver_002.stl").read_bytes()) == sha256(data)
    assert [name for name, _ in server.log].count("liver_001.stl") == 2


def test_rerun_skips_complete_and_redownloads_corrupted(server, tmp_path, capsys):
    args = ("download", "--url-list", server.list_file, "--organ", "liver", "--out", tmp_path)
    assert run_main(capsys, *args)[0] == 0
    server.log.clear()
    rc, out, _ = run_main(capsys, *args)
    assert rc == 0 and server.log == [] and "2 skipped" in out
    victim = tmp_path / "raw" / "liver" / "Liver_002.stl"
    blob = bytearray(victim.read_bytes())
    blob[100] ^= 0xFF  # same size, different content
    victim.write_bytes(bytes(blob))
    rc, out, err = run_main(capsys, *args)
    assert rc == 0 and "Liver_002.stl" in err and "1 re-downloaded" in out
    assert [name for name, _ in server.log] == ["Liver_002.stl"]
    assert sha256(victim.read_bytes()) == sha256(server.files["Liver_002.stl"])


def _cli(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_http_404_is_one_line_error(server, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{server.base}/download?files=liver_999.stl\n")
    res = _cli("download", "--url-list", lst, "--organ", "liver", "--out", tmp_path, "--retries", "0")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "404" in lines[0]
    assert "CC BY-NC-SA 4.0" in res.stdout


def test_unreachable_url_list_is_one_line_error(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = run_main(capsys, "list", "--url-list", f"http://127.0.0.1:{port}/list.txt",
                          "--timeout", "5")
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot fetch URL list")


def test_bad_flags_are_argparse_errors():
    res = _cli("download", "--organ", "liver", "--out", "x", "--limit", "0")
    assert res.returncode == 2 and "--limit" in res.stderr
    assert _cli("--help").returncode == 0


# ---------------------------------------------------------------- MedShapeNetCore


def _objects(items):
    arr = np.empty(len(items), dtype=object)  # per-sample arrays, as MedShapeNetCore stores them
    arr[:] = items
    return arr


def _ball(n=24, r=7.0, c=(12, 12, 12)):
    g = np.indices((n, n, n)).transpose(1, 2, 3, 0) - np.asarray(c)
    return (np.linalg.norm(g, axis=-1) < r).astype(np.uint8)


def test_core_archive_flat_meshes_and_nested_masks(server, tmp_path, capsys):
    spheres = [trimesh.creation.icosphere(subdivisions=2, radius=r) for r in (5.0, 8.0)]
    flat = {
        "mask": np.stack([_ball(), _ball(r=5.0)]),
        "point": np.zeros((2, 16, 3)),
        "mesh": {"vertices": _objects([s.vertices for s in spheres]),
                 "faces": _objects([s.faces for s in spheres])},
    }
    nested = {"liver": {"mask": np.stack([_ball()])}, "spleen": {"point": np.zeros((1, 8, 3))}}
    for name, data in (("TOY", flat), ("NEST", nested)):
        np.savez(server.root / f"medshapenetcore_{name}.npz", data=np.array(data, dtype=object))
    base = f"{server.base}/records"
    rc, out, _ = run_main(capsys, "core", "--name", "TOY", "--record", "42", "--base-url", base,
                          "--organ", "aorta", "--out", tmp_path)
    assert rc == 0 and "CC BY-NC-SA 4.0" in out
    raw = tmp_path / "raw"
    stls = sorted((raw / "aorta").glob("*.stl"))
    assert [p.name for p in stls] == ["TOY_aorta_0000.stl", "TOY_aorta_0001.stl"]
    assert np.isclose(trimesh.load(stls[1]).bounding_box.extents.max(), 16.0, atol=0.5)
    ledger = json.loads((raw / "downloads.json").read_text())["files"]
    assert ledger["_core/medshapenetcore_TOY.npz"]["sha256"] == sha256(
        (server.root / "medshapenetcore_TOY.npz").read_bytes())
    assert ledger["aorta/TOY_aorta_0000.stl"]["source"] == "MedShapeNetCore/TOY"
    assert ("medshapenetcore_TOY.npz", None) in server.log

    rc, _, err = run_main(capsys, "core", "--name", "NEST", "--record", "42", "--base-url", base,
                          "--out", tmp_path)
    assert rc == 0 and "spleen" in err  # points only: skipped with a warning
    mesh = trimesh.load(raw / "liver" / "NEST_liver_0000.stl")
    assert mesh.is_watertight and mesh.volume > 0

    rc, _, err = run_main(capsys, "core", "--name", "MISSING", "--record", "42", "--base-url", base,
                          "--out", tmp_path, "--retries", "0")
    assert rc == 1 and err.startswith("error:") and "404" in err


# ---------------------------------------------------------------- convert to MedSDF


def test_convert_imports_valid_shapes_and_skips_broken(server, tmp_path, capsys):
    build = pytest.importorskip("skellab.data.build")
    if not hasattr(build, "import_files"):
        pytest.skip("skellab.data.build has no import_files yet")
    from skellab.data import medsdf

    rc, _, _ = run_main(capsys, "download", "--url-list", server.list_file, "--organ", "liver",
                        "spleen", "--out", tmp_path)
    assert rc == 0
    out = tmp_path / "medsdf"
    rc, stdout, err = run_main(capsys, "convert", "--raw", tmp_path / "raw", "--out", out)
    assert rc == 0, err
    assert "imported 3" in stdout and "skipped 1" in stdout
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning")]
    assert len(warnings) == 1 and "spleen_002.stl" in warnings[0]
    manifest = medsdf.read_manifest(out)
    records = {r["id"]: r for r in manifest["shapes"]}
    assert set(records) == {"liver_liver_001", "liver_Liver_002", "spleen_spleen_001"}
    assert {r["license"] for r in records.values()} == {msn.LICENCE_ID}
    assert {r["class"] for r in records.values()} == {"liver", "spleen"}
    # a re-run finds everything in place and imports nothing twice
    rc, stdout, _ = run_main(capsys, "convert", "--raw", tmp_path / "raw", "--out", out)
    assert rc == 0 and "imported 0" in stdout and "already present 3" in stdout
