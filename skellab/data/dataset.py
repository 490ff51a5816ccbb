"""A torch ``Dataset`` over a MedSDF folder: (surface points, query points, SDF, class) items."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SkellabError
from .medsdf import MANIFEST, MedSDF
from .sampling import SampleConfig


@dataclass(frozen=True)
class SDFBatchConfig:
    """What each item draws from a shape's stored samples."""

    num_surface: int = 2560  # input surface points per item (the paper's N)
    num_queries: int = 4096  # SDF query points per item
    near_fraction: float = 0.9  # fraction of queries drawn from the near-surface band (paper: 0.9)
    with_normals: bool = True  # also return surface normals

    def __post_init__(self) -> None:
        if self.num_surface <= 0 or self.num_queries <= 0:
            raise SkellabError("num_surface and num_queries must be positive")
        if not 0.0 <= self.near_fraction <= 1.0:
            raise SkellabError(f"near_fraction must be in [0, 1], got {self.near_fraction}")


class MedSDFDataset(Dataset):
    """Items of a MedSDF split, sampled reproducibly.

    Each item is a dict:
      ``surface`` (N, 3) float32, ``normals`` (N, 3) float32 (if configured),
      ``queries`` (Q, 3) float32, ``sdf`` (Q,) float32 (negative inside),
      ``class_index`` int64 scalar (index into :attr:`classes`), ``shape_id`` str.
    All coordinates are in the per-shape normalised frame. Which points an item
    draws depends only on ``(seed, epoch, index)``: call :meth:`set_epoch` each epoch.
    Every file is checked against the manifest's sha256 the first time it is read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "train",
        config: SDFBatchConfig = SDFBatchConfig(),
        organs: list[str] | None = None,
        seed: int = 0,
        verify: bool = True,
        cache: bool = True,
    ) -> None:
        self.store = MedSDF.open(root, verify=verify)
        self.classes = self.store.classes
        ids = self.store.ids(split=split)
        if organs is not None:
            unknown = sorted(set(organs) - set(self.classes))
            if unknown:
                raise SkellabError(f"unknown organ class {unknown[0]!r}; this dataset has: {', '.join(self.classes)}")
            ids = [i for i in ids if self.store.record(i)["class"] in organs]
        if not ids:
            raise SkellabError(f"{root}: split {split!r} has no shapes")
        self.ids = ids
        self.config = config
        self.seed = int(seed)
        self.epoch = 0
        self._cache: dict[str, dict[str, np.ndarray]] | None = {} if cache else None
        sample_config = SampleConfig.from_dict(self.store.manifest["sample_config"],
                                               where=f"{self.store.root / MANIFEST}: sample_config")
        self._near_count = sample_config.near_samples

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _arrays(self, shape_id: str) -> dict[str, np.ndarray]:
        if self._cache is not None and shape_id in self._cache:
            return self._cache[shape_id]
        arrays = self.store.samples(shape_id)
        if self._cache is not None:
            self._cache[shape_id] = arrays
        return arrays

    def __getitem__(self, index: int) -> dict[str, object]:
        shape_id = self.ids[index]
        a = self._arrays(shape_id)
        cfg = self.config
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7_919 + index)
        s_idx = torch.randint(len(a["surface_points"]), (cfg.num_surface,), generator=g).numpy()
        n_near_total = min(self._near_count, len(a["sdf_values"]))
        n_uni_total = len(a["sdf_values"]) - n_near_total
        n_near = int(round(cfg.num_queries * cfg.near_fraction)) if n_uni_total else cfg.num_queries
        if n_near_total == 0:
            n_near = 0
        q_near = torch.randint(max(n_near_total, 1), (n_near,), generator=g)
        q_uni = torch.randint(max(n_uni_total, 1), (cfg.num_queries - n_near,), generator=g) + n_near_total
        q_idx = torch.cat([q_near, q_uni]).numpy()
        item: dict[str, object] = {
            "surface": torch.from_numpy(a["surface_points"][s_idx]),
            "queries": torch.from_numpy(a["sdf_points"][q_idx]),
            "sdf": torch.from_numpy(a["sdf_values"][q_idx]),
            "class_index": torch.tensor(self.classes.index(self.store.record(shape_id)["class"])),
            "shape_id": shape_id,
        }
        if cfg.with_normals:
            item["normals"] = torch.from_numpy(a["surface_normals"][s_idx])
        return item
