#!/usr/bin/env python
"""Download MedShapeNet / MedShapeNetCore shapes and convert them to the MedSDF format.

Run on a machine with internet (the library itself never touches the network):

    python data_scripts/medshapenet.py list     --organ liver spleen
    python data_scripts/medshapenet.py download --organ liver spleen --out data/msn --limit 50
    python data_scripts/medshapenet.py core     --name FLARE --out data/msn
    python data_scripts/medshapenet.py convert  --raw data/msn/raw --out data/medsdf --workers 2

Layout written under ``--out DIR``::

    DIR/raw/<organ>/<file>.stl          downloaded (or extracted) meshes
    DIR/raw/_core/medshapenetcore_<NAME>.npz   MedShapeNetCore archives
    DIR/raw/downloads.json              ledger: url, size, sha256 (and source) of every completed file

Downloads resume: bytes go to ``<file>.part`` and an HTTP ``Range`` request continues a partial
file (a server that ignores ``Range`` gets a full download); the file is renamed when complete.
On a re-run, completed files are checked against the ledger's sha256 and re-downloaded on a
mismatch. The data are never bundled with skellab: see ``LICENCE`` below.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_URL_LIST = "https://medshapenet.ikim.nrw/uploads/MedShapeNetDataset.txt"
DEFAULT_CORE_RECORD = "10623506"
DEFAULT_CORE_BASE = "https://zenodo.org/records"
LICENCE = (
    "MedShapeNet data licence: CC BY-NC-SA 4.0 (non-commercial, share-alike). Do not "
    "redistribute the downloaded files; cite MedShapeNet (Li et al., 'MedShapeNet - a large-scale "
    "dataset of 3D medical shapes for computer vision', arXiv:2308.16139) and the source datasets. "
    "MedShapeNetCore archives (Zenodo) carry the licence stated on their record page."
)
LICENCE_ID = "CC-BY-NC-SA-4.0"
# Tokens that are not organ names when guessing which organs occur in a URL list.
_NOT_ORGAN = {"stl", "obj", "ply", "nii", "download", "files", "mask", "label", "labels", "seg",
              "case", "train", "test", "val", "img", "image", "sub", "left", "right", "the"}


class ScriptError(Exception):
    """A failure the user can act on; printed as one ``error: ...`` line, exit status 1."""


# ---------------------------------------------------------------- URL list and selection


def read_url_list(source: str, timeout: float) -> list[str]:
    """Lines of a URL list given as a local file path or an http(s) URL (blank/# lines dropped)."""
    if Path(source).is_file():
        text = Path(source).read_text(encoding="utf-8", errors="replace")
    elif urllib.parse.urlparse(source).scheme in ("http", "https", "file"):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as resp:
                text = resp.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ScriptError(f"cannot fetch URL list {source}: {_reason(err)}") from None
    else:
        raise ScriptError(f"URL list {source!r} is neither an existing file nor an http(s) URL")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def file_name(url: str) -> str:
    """Shape file name: the ``files=`` query parameter, else the URL path's basename (made safe)."""
    parts = urllib.parse.urlparse(url)
    names = urllib.parse.parse_qs(parts.query).get("files")
    name = names[0] if names else urllib.parse.unquote(parts.path)
    name = name.replace("\\", "/").rstrip("/").split("/")[-1]
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".")
    return name or hashlib.sha1(url.encode()).hexdigest()[:12]


def select(urls: list[str], organs: list[str]) -> dict[str, list[str]]:
    """Group URLs by the first organ (case-insensitive) that occurs in the unquoted URL."""
    groups: dict[str, list[str]] = {o.lower(): [] for o in organs}
    for url in urls:
        low = urllib.parse.unquote(url).lower()
        for organ in groups:
            if organ in low:
                groups[organ].append(url)
                break
    return groups


def common_names(urls: list[str], k: int = 8) -> list[tuple[str, int]]:
    """The ``k`` most frequent alphabetic file-name tokens: a guess at the organ names present."""
    counts: collections.Counter[str] = collections.Counter()
    for url in urls:
        tokens = set(re.split(r"[^a-z]+", Path(file_name(url)).stem.lower()))
        counts.update(t for t in tokens if len(t) >= 3 and t not in _NOT_ORGAN)
    return counts.most_common(k)


def _select_or_fail(urls: list[str], organs: list[str]) -> dict[str, list[str]]:
    groups = select(urls, organs)
    missing = [o for o, g in groups.items() if not g]
    if missing:
        seen = ", ".join(n for n, _ in common_names(urls)) or "none"
        raise ScriptError(f"no URL matches organ(s) {', '.join(missing)}; names that occur: {seen}")
    return groups


# ---------------------------------------------------------------- ledger and downloads


class Ledger:
    """``raw/downloads.json``: ``{"files": {relpath: {url, size, sha256, source}}}``, saved atomically.

    ``record`` saves at most every ``every`` seconds (rewriting a 10k-entry file per download
    would be quadratic); callers ``save()`` at the end. A file completed but not yet recorded
    when the run dies is re-hashed and adopted by the next run (it was renamed only when complete).
    """

    def __init__(self, raw: Path, every: float = 2.0):
        self.raw = raw
        self.path = raw / "downloads.json"
        self.every, self._saved = every, 0.0
        self.data: dict = {"version": 1, "files": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
                self.data.setdefault("files", {})
            except (json.JSONDecodeError, OSError):
                print(f"warning: ignoring unreadable ledger {self.path}", file=sys.stderr)

    @property
    def files(self) -> dict[str, dict]:
        return self.data["files"]

    def record(self, rel: str, **entry) -> None:
        self.files[rel] = entry
        if time.monotonic() - self._saved >= self.every:
            self.save()

    def save(self) -> None:
        self._saved = time.monotonic()
        self.raw.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.raw, prefix=".downloads.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    if isinstance(err, http.client.IncompleteRead):
        return f"connection closed after {len(err.partial)} bytes of the body"
    return str(err) or type(err).__name__


def _fetch_once(url: str, part: Path, timeout: float, progress=None) -> None:
    """One attempt: continue ``part`` with a Range request (or restart it) until the body ends."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "skellab-data-scripts/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: stale .part, start over
            part.unlink()
            return _fetch_once(url, part, timeout, progress)
        raise
    with resp:
        if have and resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise OSError(f"server answered Range {have}- with {resp.headers.get('Content-Range')!r}")
            mode = "ab"
        else:  # 200: server ignored Range (or nothing to resume): full download
            mode, have = "wb", 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if progress is not None:
            progress.reset(total=total)
            progress.update(have)
        with open(part, mode) as fh:
            while block := resp.read(1 << 16):
                fh.write(block)
                if progress is not None:
                    progress.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise OSError(f"incomplete body ({size} of {total} bytes)")


def fetch(url: str, dest: Path, ledger: Ledger, *, source: str, retries: int, timeout: float,
          progress=None) -> str:
    """Make ``dest`` a complete, ledger-verified copy of ``url``; returns what was done.

    ``"skipped"`` (present, sha256 matches the ledger), ``"downloaded"`` or ``"re-downloaded"``
    (a completed file no longer matched its recorded sha256). Retries network errors and HTTP 5xx
    ``retries`` times, resuming from ``dest.part``; HTTP 4xx fails at once. Raises ScriptError.
    """
    rel = dest.relative_to(ledger.raw).as_posix()
    entry = ledger.files.get(rel)
    action = "downloaded"
    if dest.exists():
        digest = sha256_of(dest)
        if entry is None:  # completed (renamed) but the ledger write was lost: adopt it
            ledger.record(rel, url=url, size=dest.stat().st_size, sha256=digest, source=source)
            return "skipped"
        if entry.get("sha256") == digest and entry.get("url", url) == url:
            return "skipped"
        print(f"warning: {rel} does not match its ledger sha256; re-downloading", file=sys.stderr)
        dest.unlink()
        action = "re-downloaded"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                raise ScriptError(f"cannot download {url}: {_reason(err)}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            if attempt == retries:  # connection lost mid-body etc.: the next attempt resumes
                raise ScriptError(f"cannot download {url}: {_reason(err)}") from None
        time.sleep(min(0.5 * 2**attempt, 10.0))
    os.replace(part, dest)
    ledger.record(rel, url=url, size=dest.stat().st_size, sha256=sha256_of(dest), source=source)
    return action


def _plan(groups: dict[str, list[str]], limit: int | None) -> list[tuple[str, str, str]]:
    """(url, organ, file name) per download; duplicate names in one organ get a URL-hash suffix."""
    plan, taken = [], set()
    for organ, urls in groups.items():
        folder = re.sub(r"[^a-z0-9_-]+", "_", organ).strip("_") or "organ"
        for url in urls[:limit]:
            name = file_name(url)
            if (folder, name) in taken:
                p = Path(name)
                name = f"{p.stem}_{hashlib.sha1(url.encode()).hexdigest()[:8]}{p.suffix}"
            taken.add((folder, name))
            plan.append((url, folder, name))
    return plan


# ---------------------------------------------------------------- MedShapeNetCore archives


def _mask_to_mesh(mask):
    """Binary mask (voxel units) → mesh: largest component, fill holes, Gaussian σ=1, MC at 0.5."""
    import numpy as np
    import trimesh
    from scipy import ndimage
    from skimage import measure

    m = np.asarray(mask) > 0
    if m.ndim != 3 or not m.any():
        return None
    lab, n = ndimage.label(m)
    if n > 1:
        m = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    m = ndimage.binary_fill_holes(m)
    vol = ndimage.gaussian_filter(np.pad(m, 3).astype(np.float32), sigma=1.0)
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.5)
    mesh = trimesh.Trimesh(verts - 3.0, faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _mesh_list(mesh_entry) -> list:
    """Normalise the many ways an archive stores meshes to a list of (vertices, faces) or None."""
    import numpy as np

    if isinstance(mesh_entry, dict):
        keys = {str(k).lower(): k for k in mesh_entry}
        v, f = keys.get("vertices", keys.get("verts")), keys.get("faces", keys.get("triangles"))
        if v is None or f is None:
            return []
        verts, faces = mesh_entry[v], mesh_entry[f]
        if isinstance(verts, np.ndarray) and verts.dtype != object and verts.ndim == 2:
            return [(verts, faces)]  # a single mesh, not a per-sample sequence
        return list(zip(list(verts), list(faces)))
    out = []
    for item in list(mesh_entry):
        if isinstance(item, dict):
            out += _mesh_list({k: [v] for k, v in item.items()})
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((item[0], item[1]))
        else:
            out.append(None)
    return out


def _groups_in(data: dict, default_organ: str) -> dict[str, dict]:
    """``{organ: {'mesh'|'mask'|'point': ...}}``: flat archives → one group, nested → per key."""
    shape_keys = {"mesh", "meshes", "mask", "masks", "point", "points"}
    if any(str(k).lower() in shape_keys for k in data):
        return {default_organ: data}
    return {re.sub(r"[^a-z0-9_]+", "_", str(k).lower()): v for k, v in data.items()
            if isinstance(v, dict) and any(str(kk).lower() in shape_keys for kk in v)}


def extract_core(npz: Path, raw: Path, *, name: str, default_organ: str) -> dict[str, int]:
    """Write every shape of a MedShapeNetCore archive as ``raw/<organ>/<name>_<i>.stl``.

    Meshes are written as stored; masks (used when an organ has no meshes) go through
    :func:`_mask_to_mesh`; point clouds alone cannot be meshed and are skipped. Existing files
    are kept. Returns the number of STL files per organ.
    """
    import numpy as np
    import trimesh

    try:
        with np.load(npz, allow_pickle=True) as z:
            data = z["data"].item() if "data" in z.files else {k: z[k] for k in z.files}
    except Exception as err:  # corrupt archive, not an npz, pickled non-dict, ...
        raise ScriptError(f"cannot read archive {npz}: {err}") from None
    if not isinstance(data, dict):
        raise ScriptError(f"archive {npz} holds a {type(data).__name__}, expected a dict")
    groups = _groups_in(data, default_organ)
    if not groups:
        raise ScriptError(f"archive {npz} has no mesh/mask entries; top-level keys: {list(data)[:8]}")
    counts: dict[str, int] = {}
    for organ, group in groups.items():
        plural = {"meshes": "mesh", "masks": "mask", "points": "point"}
        entries = {plural.get(str(k).lower(), str(k).lower()): v for k, v in group.items()}
        meshes = _mesh_list(entries["mesh"]) if "mesh" in entries else []
        masks = []
        if "mask" in entries and not meshes:
            m = entries["mask"]
            masks = [m] if getattr(m, "ndim", 0) == 3 and m.dtype != object else list(m)
        if not meshes and not masks:
            print(f"warning: {organ}: only {sorted(entries)} in archive, no meshes or masks; skipped",
                  file=sys.stderr)
            continue
        (raw / organ).mkdir(parents=True, exist_ok=True)
        n = 0
        for i, item in enumerate(meshes or masks):
            dest = raw / organ / f"{name}_{organ}_{i:04d}.stl"
            if dest.exists():
                n += 1
                continue
            try:
                mesh = (trimesh.Trimesh(np.asarray(item[0], float), np.asarray(item[1], int))
                        if meshes else _mask_to_mesh(item))
            except Exception as err:
                mesh, why = None, err
            else:
                why = "empty"
            if mesh is None or len(mesh.faces) == 0:
                print(f"warning: {npz.name}: {organ} sample {i} unusable ({why}); skipped", file=sys.stderr)
                continue
            mesh.export(dest)
            n += 1
        counts[organ] = n
    return counts


# ---------------------------------------------------------------- conversion to MedSDF


def preprocess(path: Path, out: Path, iterations: int = 5, lamb: float = 0.5) -> str | None:
    """Paper preprocessing: keep the largest component, Laplacian smoothing (λ, iterations).

    Writes ``out`` and returns None, or returns why the mesh is unusable (not watertight, ...).
    Smoothing is plain Laplacian (no volume correction), as in the paper's description.
    """
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=True)
    except Exception as err:
        return f"unreadable ({err})"
    if len(mesh.faces) == 0:
        return "no faces"
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1:
        mesh = max(parts, key=lambda m: len(m.faces))
    if not mesh.is_watertight:
        return "not watertight"
    if not mesh.is_winding_consistent:
        return "inconsistent face winding"
    if iterations > 0:
        trimesh.smoothing.filter_laplacian(mesh, lamb=lamb, iterations=iterations,
                                           volume_constraint=False)
    if mesh.volume < 0:
        mesh.invert()
    if not mesh.volume > 0:
        return "zero volume"
    mesh.export(out)
    return None


def _safe_stem(name: str) -> str:
    """File stem reduced to ``[A-Za-z0-9_-]`` (import_files derives the shape id from it)."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", Path(name).stem).strip("_") or "shape"


def convert(raw: Path, out: Path, *, workers: int, smooth: bool, chunk: int = 64) -> tuple[int, int, int]:
    """Import every ``raw/<organ>/*.stl`` into the MedSDF directory ``out``.

    Each file is preprocessed (:func:`preprocess`) into a temporary STL, validated with the
    library's loader, then imported with ``import_files`` in chunks (the manifest is written after
    every chunk, so an interrupted run keeps its work; shapes already in ``out`` are not redone).
    A chunk that fails is retried file by file so one bad shape costs only itself.
    Returns (imported, skipped, already present).
    """
    try:
        from skellab.data.build import import_files
        from skellab.data.io import load_shape_file
    except ImportError as err:
        raise ScriptError(f"skellab.data.build.import_files is unavailable ({err})") from None
    from skellab.data import medsdf
    from skellab.errors import SkellabError

    ledger = Ledger(raw)
    present: set[str] = set()
    if (out / medsdf.MANIFEST).exists():
        try:
            present = {r["id"] for r in medsdf.read_manifest(out)["shapes"]}
        except SkellabError as err:
            raise ScriptError(str(err)) from None
    organs = sorted(d for d in raw.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    if not any(d.glob("*.stl") for d in organs):
        raise ScriptError(f"no STL files under {raw}/<organ>/; run download or core first")
    quiet = not sys.stderr.isatty()
    imported = skipped = already = 0

    def run(paths: list[Path], organ: str, source: str) -> int:
        nonlocal skipped
        try:
            return len(import_files(paths, organ=organ, out=out, source=source, license=LICENCE_ID,
                                    workers=workers, progress=not quiet))
        except SkellabError as err:
            if len(paths) == 1:
                print(f"warning: skipping {paths[0].name}: {err}", file=sys.stderr)
                skipped += 1
                return 0
        return sum(run([p], organ, source) for p in paths)

    with tempfile.TemporaryDirectory(prefix="skellab-convert-") as tmp:
        for organ_dir in organs:
            organ = organ_dir.name
            pending: dict[str, list[Path]] = collections.defaultdict(list)
            bar = _progress(None, "file", organ)
            for path in sorted(organ_dir.glob("*.stl")):
                bar.update(1)
                if f"{organ}_{_safe_stem(path.name)}" in present:
                    already += 1
                    continue
                source = ledger.files.get(path.relative_to(raw).as_posix(), {}).get("source", "MedShapeNet")
                target = Path(tmp) / organ / f"{_safe_stem(path.name)}.stl"
                target.parent.mkdir(parents=True, exist_ok=True)
                why = preprocess(path, target, iterations=5 if smooth else 0)
                if why is None:
                    try:
                        load_shape_file(target, organ=organ)
                    except SkellabError as err:
                        why = str(err).replace(str(target), target.name)
                if why is not None:
                    print(f"warning: skipping {path}: {why}", file=sys.stderr)
                    skipped += 1
                    continue
                pending[source].append(target)
                if len(pending[source]) >= chunk:
                    imported += run(pending.pop(source), organ, source)
            for source, paths in pending.items():
                imported += run(paths, organ, source)
            bar.close()
    return imported, skipped, already


# ---------------------------------------------------------------- command line


def _progress(total: int | None, unit: str, desc: str):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs and tests stay clean)
    return tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, disable=None, leave=False)


def cmd_list(args) -> None:
    print(LICENCE)
    urls = read_url_list(args.url_list, args.timeout)
    print(f"{len(urls)} URLs in {args.url_list}")
    if not args.organ:
        print("most frequent names (use --organ NAME to select):")
        for name, n in common_names(urls, k=30):
            print(f"  {name:24s} {n}")
        return
    for organ, group in _select_or_fail(urls, args.organ).items():
        print(f"  {organ:24s} {len(group)}")


def cmd_download(args) -> None:
    print(LICENCE)
    urls = read_url_list(args.url_list, args.timeout)
    plan = _plan(_select_or_fail(urls, args.organ), args.limit)
    raw = Path(args.out) / "raw"
    ledger = Ledger(raw)
    done: collections.Counter[str] = collections.Counter()
    failures = 0
    bar = _progress(len(plan), "file", "download")
    try:
        for url, organ, name in plan:
            try:
                done[fetch(url, raw / organ / name, ledger, source="MedShapeNet",
                           retries=args.retries, timeout=args.timeout)] += 1
            except ScriptError as err:
                if not args.keep_going:
                    raise
                print(f"error: {err}", file=sys.stderr)
                failures += 1
            bar.update(1)
    finally:
        bar.close()
        ledger.save()
    summary = ", ".join(f"{n} {what}" for what, n in sorted(done.items())) or "nothing"
    print(f"{summary} into {raw} (ledger {ledger.path})")
    if failures:
        raise ScriptError(f"{failures} of {len(plan)} downloads failed; re-run to retry")


def cmd_core(args) -> None:
    print(LICENCE)
    name = args.name
    url = (f"{args.base_url.rstrip('/')}/{args.record}/files/medshapenetcore_{name}.npz?download=1")
    raw = Path(args.out) / "raw"
    ledger = Ledger(raw)
    dest = raw / "_core" / f"medshapenetcore_{name}.npz"
    bar = _progress(None, "B", dest.name)
    try:
        what = fetch(url, dest, ledger, source=f"MedShapeNetCore/{name}", retries=args.retries,
                     timeout=args.timeout, progress=bar)
    finally:
        bar.close()
        ledger.save()
    print(f"{dest}: {what}")
    counts = extract_core(dest, raw, name=name, default_organ=(args.organ or name).lower())
    ledger.data.setdefault("extracted", {})[dest.name] = counts
    for organ, n in counts.items():
        for path in sorted((raw / organ).glob(f"{name}_{organ}_*.stl")):
            rel = path.relative_to(raw).as_posix()
            if rel not in ledger.files:
                ledger.files[rel] = {"url": url, "size": path.stat().st_size, "sha256": sha256_of(path),
                                     "source": f"MedShapeNetCore/{name}", "extracted_from": dest.name}
        print(f"  {organ:24s} {n} STL files in {raw / organ}")
    ledger.save()


def cmd_convert(args) -> None:
    print(LICENCE)
    raw, out = Path(args.raw), Path(args.out)
    if not raw.is_dir():
        raise ScriptError(f"--raw {raw} is not a directory")
    imported, skipped, already = convert(raw, out, workers=args.workers, smooth=not args.no_smooth)
    print(f"imported {imported} shapes into {out}, skipped {skipped}, already present {already}")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def net(q, retries=True):
        q.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
        if retries:
            q.add_argument("--retries", type=_int_at_least(0), default=3, help="retries per file (default 3)")

    q = sub.add_parser("list", help="count the URLs per organ in MedShapeNet's URL list")
    q.add_argument("--url-list", default=DEFAULT_URL_LIST, help="URL or local file of the list")
    q.add_argument("--organ", nargs="+", default=[], help="organ names to count (case-insensitive)")
    net(q, retries=False)
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("download", help="download the STL files of some organs (resumable)")
    q.add_argument("--url-list", default=DEFAULT_URL_LIST, help="URL or local file of the list")
    q.add_argument("--organ", nargs="+", required=True, help="organ names (case-insensitive)")
    q.add_argument("--out", required=True, help="output directory; files go to OUT/raw/<organ>/")
    q.add_argument("--limit", type=_int_at_least(1), default=None, help="at most N files per organ")
    q.add_argument("--keep-going", action="store_true", help="continue past failed files")
    net(q)
    q.set_defaults(func=cmd_download)

    q = sub.add_parser("core", help="download a MedShapeNetCore archive and extract STL meshes")
    q.add_argument("--name", required=True, help="dataset name, e.g. FLARE, ASOCA, ThoracicAorta_Saitta")
    q.add_argument("--record", default=DEFAULT_CORE_RECORD, help="Zenodo record id")
    q.add_argument("--base-url", default=DEFAULT_CORE_BASE, help="records base URL")
    q.add_argument("--organ", default=None, help="organ name for archives without per-organ keys")
    q.add_argument("--out", required=True, help="output directory; files go to OUT/raw/")
    net(q)
    q.set_defaults(func=cmd_core)

    q = sub.add_parser("convert", help="turn OUT/raw/<organ>/*.stl into a MedSDF directory")
    q.add_argument("--raw", required=True, help="the raw/ directory written by download/core")
    q.add_argument("--out", required=True, help="MedSDF output directory")
    q.add_argument("--workers", type=_int_at_least(1), default=1, help="parallel workers for import_files")
    q.add_argument("--no-smooth", action="store_true",
                   help="skip the paper's Laplacian smoothing (largest component is still kept)")
    q.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ScriptError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
