"""Real anatomy that MedSDF-mini never trains on: the *unseen-class split*.

Sources (all offline; each is optional and skipped with a warning when absent):

- ``pyvista``'s ``examples/frog_tissues.vti`` (MIT; ``pip install --no-deps pyvista``):
  a VTK XML ImageData label volume (500 x 470 x 136, spacing 1 x 1 x 1.5 mm) of a frog's
  organs, read with :func:`read_vti` (numpy only, no vtk). Label numbers follow VTK's
  frog example tissue table (:data:`FROG_TISSUES`).
- Debian ``mricron-data`` (``apt-get install mricron-data``): AAL and JHU white-matter
  label atlases in ``/usr/share/mricron/templates`` (cerebellar lobules, a thin elongated
  white-matter tract).
- Debian ``invesalius-examples`` (GPL-2; ``apt-get install invesalius-examples``): one real
  head CT, ``Cranium.inv3``; :func:`load_skull_interior` meshes the cranial cavity at run
  time. The file is read in place and never copied anywhere.

Every loader returns validated, watertight, outward, normalised :class:`Shape` objects
(label → largest component → fill holes → Gaussian → marching cubes, as
:func:`skellab.data.io.label_volume_surface` does), with ``meta["units"] == "mm"`` and
``meta["genus"]``. :func:`unseen_shapes` gathers the split, including the held-out
procedural family :data:`skellab.data.detail.HELD_OUT_FAMILY`.
"""

from __future__ import annotations

import base64
import importlib.metadata
import plistlib
import re
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy import ndimage

from ..errors import SkellabError
from .detail import HELD_OUT_FAMILY
from .io import label_volume_surface, read_label_image
from .procedural import make_shape
from .shape import Shape

# --- VTK XML ImageData (.vti) ------------------------------------------------------------------

_VTK_DTYPES = {
    "Int8": "i1", "UInt8": "u1", "Int16": "i2", "UInt16": "u2", "Int32": "i4", "UInt32": "u4",
    "Int64": "i8", "UInt64": "u8", "Float32": "f4", "Float64": "f8",
}  # fmt: skip


def _attrs(text: str) -> dict[str, str]:
    return dict(re.findall(r'([\w:]+)\s*=\s*"([^"]*)"', text))


def read_vti(path: str | Path, array: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one point-data array of a VTK XML ImageData file (``.vti``) with numpy alone.

    Supports inline ``format="binary"`` (base64) arrays, raw or ``vtkZLibDataCompressor``
    compressed, UInt32 or UInt64 headers, little or big endian, and ``format="ascii"``.
    ``array`` picks a DataArray by ``Name`` (default: the first one).

    Returns ``(data, origin, spacing)``: data (X, Y, Z) indexed ``[i, j, k]`` (VTK stores
    x fastest), origin (3,) and spacing (3,) float64. A non-identity ``Direction`` is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise SkellabError(f"{p}: file not found")
    text = p.read_bytes().decode("latin-1")
    head = re.search(r"<VTKFile\b([^>]*)>", text)
    img = re.search(r"<ImageData\b([^>]*)>", text)
    if head is None or img is None:
        raise SkellabError(f"{p}: not a VTK XML ImageData file")
    h, g = _attrs(head.group(1)), _attrs(img.group(1))
    if h.get("type") != "ImageData":
        raise SkellabError(f"{p}: VTK file type {h.get('type')!r}, expected ImageData")
    if re.search(r"<AppendedData\b", text):
        raise SkellabError(f"{p}: appended-data .vti files are not supported (inline binary or ascii only)")
    extent = np.array(g["WholeExtent"].split(), dtype=np.int64)
    dims = extent[1::2] - extent[0::2] + 1
    origin = np.array(g.get("Origin", "0 0 0").split(), dtype=np.float64)
    spacing = np.array(g.get("Spacing", "1 1 1").split(), dtype=np.float64)
    direction = np.array(g.get("Direction", "1 0 0 0 1 0 0 0 1").split(), dtype=np.float64)
    if not np.allclose(direction, np.eye(3).ravel()):
        raise SkellabError(f"{p}: rotated image (Direction={g['Direction']}) is not supported")
    arrays = re.findall(r"<DataArray\b([^>]*)>(.*?)</DataArray>", text, re.S)
    if not arrays:
        raise SkellabError(f"{p}: no DataArray found")
    chosen = [(a, body) for a, body in arrays if array is None or _attrs(a).get("Name") == array]
    if not chosen:
        names = ", ".join(_attrs(a).get("Name", "?") for a, _ in arrays)
        raise SkellabError(f"{p}: no DataArray named {array!r} (have: {names})")
    attrs, body = _attrs(chosen[0][0]), chosen[0][1]
    if attrs.get("type") not in _VTK_DTYPES:
        raise SkellabError(f"{p}: unsupported DataArray type {attrs.get('type')!r}")
    if int(attrs.get("NumberOfComponents", "1")) != 1:
        raise SkellabError(f"{p}: only scalar (1-component) arrays are supported")
    order = ">" if h.get("byte_order") == "BigEndian" else "<"
    dtype = np.dtype(order + _VTK_DTYPES[attrs["type"]])
    fmt = attrs.get("format", "ascii")
    if fmt == "ascii":
        data = np.array(body.split(), dtype=dtype)
    elif fmt == "binary":
        header_t = np.dtype(order + ("u8" if h.get("header_type") == "UInt64" else "u4"))
        data = np.frombuffer(_decode_binary(re.sub(r"\s+", "", body), header_t, "compressor" in h, p), dtype=dtype)
    else:
        raise SkellabError(f"{p}: unsupported DataArray format {fmt!r}")
    if data.size != int(np.prod(dims)):
        raise SkellabError(f"{p}: array has {data.size} values, extent needs {int(np.prod(dims))}")
    return data.reshape(tuple(dims[::-1])).transpose(2, 1, 0), origin, spacing


def _decode_binary(b64: str, header_t: np.dtype, compressed: bool, p: Path) -> bytes:
    """Inline VTK binary: the header and the data are two separate base64 streams when compressed."""
    size = header_t.itemsize
    try:
        if not compressed:  # one stream: [nbytes][data]
            raw = base64.b64decode(b64)
            n = int(np.frombuffer(raw[:size], header_t)[0])
            return raw[size : size + n]
        first = base64.b64decode(b64[: 4 * ((size + 2) // 3 + 1)])  # enough chars for the block count
        nblocks = int(np.frombuffer(first[:size], header_t)[0])
        header_chars = 4 * ((size * (3 + nblocks) + 2) // 3)
        header = np.frombuffer(base64.b64decode(b64[:header_chars]), header_t)[: 3 + nblocks]
        payload = base64.b64decode(b64[header_chars:])
        sizes = header[3:].astype(np.int64)
        ends = np.cumsum(sizes)
        out = b"".join(zlib.decompress(payload[e - s : e]) for s, e in zip(sizes, ends))
    except (ValueError, zlib.error, IndexError) as exc:
        raise SkellabError(f"{p}: corrupt binary DataArray ({type(exc).__name__}: {exc})") from exc
    expected = int(header[1]) * (nblocks - 1) + int(header[2] or header[1]) if nblocks else 0
    if len(out) != expected:
        raise SkellabError(f"{p}: decompressed {len(out)} bytes, header says {expected}")
    return out


def write_vti(path: str | Path, data: np.ndarray, *, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
              name: str = "labels", block_size: int = 32768) -> Path:
    """Write a (X, Y, Z) array as a zlib-compressed inline-binary .vti (UInt32 header); for tests."""
    inv = {v: k for k, v in _VTK_DTYPES.items()}
    arr = np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)).astype(np.asarray(data).dtype.newbyteorder("<"))
    raw = arr.tobytes()
    blocks = [raw[i : i + block_size] for i in range(0, len(raw), block_size)] or [b""]
    comp = [zlib.compress(b) for b in blocks]
    header = np.array([len(blocks), block_size, len(blocks[-1]) if len(blocks[-1]) != block_size else 0]
                      + [len(c) for c in comp], dtype="<u4")
    b64 = base64.b64encode(header.tobytes()).decode() + base64.b64encode(b"".join(comp)).decode()
    x, y, z = np.asarray(data).shape
    text = (
        '<?xml version="1.0"?>\n<VTKFile type="ImageData" version="0.1" byte_order="LittleEndian" '
        'header_type="UInt32" compressor="vtkZLibDataCompressor">\n'
        f'<ImageData WholeExtent="0 {x - 1} 0 {y - 1} 0 {z - 1}" Origin="{" ".join(map(str, origin))}" '
        f'Spacing="{" ".join(map(str, spacing))}" Direction="1 0 0 0 1 0 0 0 1">\n'
        f'<Piece Extent="0 {x - 1} 0 {y - 1} 0 {z - 1}">\n<PointData Scalars="{name}">\n'
        f'<DataArray type="{inv[np.asarray(data).dtype.str[1:]]}" Name="{name}" format="binary">\n{b64}\n'
        "</DataArray>\n</PointData>\n<CellData>\n</CellData>\n</Piece>\n</ImageData>\n</VTKFile>\n"
    )
    Path(path).write_text(text)
    return Path(path)


# --- shapes from label volumes ---------------------------------------------------------------------


def _genus(shape: Shape) -> int:
    euler = len(shape.vertices) - len(shape.faces) // 2  # closed triangle mesh: E = 3F/2
    return int(round((2 - euler) / 2))


def _label_shape(labels: np.ndarray, affine: np.ndarray, label: int, *, shape_id: str, organ: str, source: str,
                 license: str, meta: dict[str, Any], smoothing_sigma: float = 1.0) -> Shape:
    v, f = label_volume_surface(labels, affine, label, smoothing_sigma=smoothing_sigma, name=shape_id)
    shape = Shape.from_mesh(v, f, shape_id=shape_id, organ=organ, source=source, license=license,
                            meta={"units": "mm", "smoothing_sigma_voxels": float(smoothing_sigma), **meta})
    return shape.replace(meta={**shape.meta, "genus": _genus(shape)})


# --- pyvista: frog organs ---------------------------------------------------------------------------

FROG_FILE = "pyvista/examples/frog_tissues.vti"
FROG_LICENSE = "MIT (pyvista example data); frog data: Lawrence Berkeley Laboratory Whole Frog Project"
# VTK's frog example tissue table (vtk-examples FrogSlice / FrogReconstruction); checked here
# against the file: 2 brain and 4/5 eyes sit at the head end (x ≈ 380-410), 10 liver is the
# largest organ, 6 heart lies between the eyes and the stomach (15), 11 lung has two pieces,
# 1 blood, 12 nerve and 13 skeleton are scattered (hundreds of pieces) and not used as organs.
# Labels 16-29 hold a few hundred stray voxels at most.
FROG_TISSUES: dict[int, str] = {
    1: "blood", 2: "brain", 3: "duodenum", 4: "eye_retina", 5: "eye_white", 6: "heart", 7: "ileum",
    8: "kidney", 9: "l_intestine", 10: "liver", 11: "lung", 12: "nerve", 13: "skeleton", 14: "spleen",
    15: "stomach",
}  # fmt: skip
FROG_ORGANS = ("heart", "liver", "kidney", "stomach", "brain", "spleen", "lung", "duodenum", "ileum", "l_intestine")


def frog_file() -> Path:
    """Path of pyvista's packaged ``frog_tissues.vti`` (raises :class:`SkellabError` if pyvista is absent)."""
    try:
        dist = importlib.metadata.distribution("pyvista")
    except importlib.metadata.PackageNotFoundError as exc:
        raise SkellabError("pyvista is not installed: pip install --no-deps pyvista (only its data file is used)") from exc
    path = Path(str(dist.locate_file(FROG_FILE)))
    if not path.is_file():
        raise SkellabError(f"pyvista {dist.version} does not ship {FROG_FILE} (added in pyvista 0.44)")
    return path


def load_frog_organs(organs: Iterable[str] = FROG_ORGANS, *, smoothing_sigma: float = 1.0) -> list[Shape]:
    """Frog organs from pyvista's ``frog_tissues.vti``; class ``frog_<organ>``, id ``frog_<organ>``.

    Units are the file's (spacing 1 x 1 x 1.5); the largest connected piece of each label is kept.
    """
    path = frog_file()
    labels, origin, spacing = read_vti(path)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    by_name = {v: k for k, v in FROG_TISSUES.items()}
    shapes = []
    for organ in organs:
        if organ not in by_name:
            raise SkellabError(f"unknown frog tissue {organ!r} (known: {', '.join(by_name)})")
        label = by_name[organ]
        shapes.append(_label_shape(labels, affine, label, shape_id=f"frog_{organ}", organ=f"frog_{organ}",
                                   source=f"pyvista:{FROG_FILE}#label={label}", license=FROG_LICENSE,
                                   meta={"label": label, "species": "frog", "units": "file units (VTK frog)"},
                                   smoothing_sigma=smoothing_sigma))
    return shapes


# --- Debian mricron-data: brain atlas regions --------------------------------------------------------

MRICRON_DIR = Path("/usr/share/mricron/templates")
MRICRON_LICENSE = "Debian mricron-data (BSD-3 packaging); AAL: Tzourio-Mazoyer et al. 2002; JHU: Mori et al. 2008"
# (atlas file, label, class, shape_id): cerebellar lobules (AAL) and thin elongated tracts (JHU)
MRICRON_REGIONS: tuple[tuple[str, int, str, str], ...] = (
    ("aal.nii.gz", 91, "cerebellar_lobule", "aal_cerebellum_crus1_L"),
    ("aal.nii.gz", 92, "cerebellar_lobule", "aal_cerebellum_crus1_R"),
    ("aal.nii.gz", 97, "cerebellar_lobule", "aal_cerebellum_4_5_L"),
    ("aal.nii.gz", 98, "cerebellar_lobule", "aal_cerebellum_4_5_R"),
    ("JHU-WhiteMatter-labels-1mm.nii.gz", 7, "white_matter_tract", "jhu_corticospinal_tract_R"),
    ("JHU-WhiteMatter-labels-1mm.nii.gz", 8, "white_matter_tract", "jhu_corticospinal_tract_L"),
    ("JHU-WhiteMatter-labels-1mm.nii.gz", 35, "white_matter_tract", "jhu_cingulum_R"),
    ("JHU-WhiteMatter-labels-1mm.nii.gz", 36, "white_matter_tract", "jhu_cingulum_L"),
)


def load_mricron_regions(regions=MRICRON_REGIONS, *, root: str | Path = MRICRON_DIR,
                         smoothing_sigma: float = 1.0) -> list[Shape]:
    """Regions of the Debian ``mricron-data`` atlases (default: 4 AAL cerebellar lobules, 4 JHU tracts)."""
    root = Path(root)
    if not (root / regions[0][0]).is_file():
        raise SkellabError(f"{root / regions[0][0]} not found: apt-get install mricron-data")
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shapes = []
    for atlas, label, organ, shape_id in regions:
        if atlas not in cache:
            labels, affine, _ = read_label_image(root / atlas)
            cache[atlas] = (labels, affine)
        labels, affine = cache[atlas]
        shapes.append(_label_shape(labels, affine, label, shape_id=shape_id, organ=organ,
                                   source=f"mricron-data:{atlas}#label={label}", license=MRICRON_LICENSE,
                                   meta={"label": label, "atlas": atlas}, smoothing_sigma=smoothing_sigma))
    return shapes


# --- Debian invesalius-examples: the cranial cavity of a real head CT --------------------------------

CRANIUM_FILE = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
CRANIUM_LICENSE = "GPL-2 (Debian invesalius-examples, ProMED CT 0051): used at run time, never redistributed"


def load_skull_interior(path: str | Path = CRANIUM_FILE, *, bone_hu: float = 150.0, erosion_voxels: int = 3,
                        smoothing_sigma: float = 1.5) -> Shape:
    """The cranial cavity (inner skull surface) of InVesalius' example head CT, class ``skull_interior``.

    The brain and CSF are the soft tissue (-30..120 HU) the skull (>= ``bone_hu``, grown by one
    voxel) encloses: soft tissue is eroded by ``erosion_voxels`` (cutting the thin channels
    through the foramina and the orbits' canals, and the scalp's thin layers), the largest
    piece is grown back inside the soft tissue and its holes filled. (Filling the bone ring
    slice by slice fails: the thin temporal and parietal bone leaves gaps at 1.5 mm slices.)
    Measured: ~1.4 litres, 130 x 177 x 150 mm. The GPL file is read in place (nothing is
    extracted to disk).
    """

    p = Path(path)
    if not p.is_file():
        raise SkellabError(f"{p} not found: apt-get install invesalius-examples")
    try:
        with tarfile.open(p) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()}
            main = plistlib.loads(tar.extractfile(members["main.plist"]).read())
            mat = main["matrix"]
            raw = tar.extractfile(members[mat["filename"]]).read()
    except (tarfile.TarError, KeyError, AttributeError) as exc:
        raise SkellabError(f"{p}: not a readable InVesalius project ({type(exc).__name__}: {exc})") from exc
    ct = np.frombuffer(raw, dtype=np.dtype(mat["dtype"]).newbyteorder("<")).reshape(mat["shape"])  # (z, y, x)
    ct = ct.transpose(2, 1, 0)  # (x, y, z), matching the (x, y, z) spacing
    ball = ndimage.generate_binary_structure(3, 1)
    soft = (ct > -30) & (ct < 120) & ~ndimage.binary_dilation(ct >= bone_hu, ball)
    core, n = ndimage.label(ndimage.binary_erosion(soft, ball, iterations=erosion_voxels))
    if n == 0:
        raise SkellabError(f"{p}: no cranial cavity found")
    sizes = np.bincount(core.ravel())
    sizes[0] = 0
    cavity = ndimage.binary_dilation(core == int(np.argmax(sizes)), ball, iterations=erosion_voxels) & soft
    mask = ndimage.binary_fill_holes(cavity).astype(np.int64)
    affine = np.diag([*[float(s) for s in main["spacing"]], 1.0])
    return _label_shape(mask, affine, 1, shape_id="cranium_skull_interior", organ="skull_interior",
                        source=f"invesalius-examples:{p.name}#cranial_cavity", license=CRANIUM_LICENSE,
                        meta={"bone_hu": float(bone_hu), "erosion_voxels": int(erosion_voxels)},
                        smoothing_sigma=smoothing_sigma)


# --- the unseen-class split --------------------------------------------------------------------------

UNSEEN_SOURCES = ("frog", "mricron", "cranium", "procedural")


def unseen_shapes(sources: Iterable[str] = UNSEEN_SOURCES, *, procedural_seeds: Iterable[int] = range(8),
                  frog_organs: Iterable[str] = FROG_ORGANS) -> list[Shape]:
    """Shapes of classes never used in training, each with its class in ``shape.organ``.

    - ``frog``: pyvista frog organs (``frog_heart``, ``frog_liver``, ``frog_kidney``, ...);
    - ``mricron``: ``cerebellar_lobule`` (AAL) and ``white_matter_tract`` (JHU);
    - ``cranium``: ``skull_interior`` (real head CT, GPL data read at run time);
    - ``procedural``: the held-out family :data:`skellab.data.detail.HELD_OUT_FAMILY`
      (a thin-walled perforated shell, genus >= 3), one shape per seed of ``procedural_seeds``.

    A source whose package is missing is skipped with a :class:`UserWarning` naming the
    install command; the function never raises for a missing source. ``shape.meta["split"]``
    is ``"unseen"``.
    """
    loaders = {
        "frog": lambda: load_frog_organs(frog_organs),
        "mricron": load_mricron_regions,
        "cranium": lambda: [load_skull_interior()],
        "procedural": lambda: [make_shape(HELD_OUT_FAMILY, s) for s in procedural_seeds],
    }
    shapes: list[Shape] = []
    for key in sources:
        if key not in loaders:
            raise SkellabError(f"unknown unseen source {key!r} (known: {', '.join(UNSEEN_SOURCES)})")
        try:
            got = loaders[key]()
        except SkellabError as exc:
            warnings.warn(f"unseen split: skipping {key}: {exc}", stacklevel=2)
            continue
        shapes += [s.replace(meta={**s.meta, "split": "unseen"}) for s in got]
    return shapes
