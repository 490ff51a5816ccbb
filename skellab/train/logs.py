"""Training logs: one CSV row per step (validation columns when validated), TensorBoard scalars if installed."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from ..runtime import atomic_path

__all__ = ["RunLog", "read_log"]


class RunLog:
    """CSV (one row per step, rank 0) + optional TensorBoard scalars."""

    def __init__(self, out: Path | None, enabled: bool, resume_step: int) -> None:
        self.path = None if out is None else out / "log.csv"
        self.enabled = enabled and out is not None
        self.fields: list[str] | None = None
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        if not self.enabled:
            return
        if self.path.is_file():  # keep the rows up to the checkpoint we resume from, drop the rest
            old = read_log(self.path)
            keep = [r for r in old if int(r["step"]) <= resume_step] if resume_step else []
            self.rows = keep
            if keep:
                self.fields = list(old[0].keys())
            with atomic_path(self.path) as tmp:
                self._write_all(tmp, keep)
        try:
            from torch.utils.tensorboard import (
                SummaryWriter,  # needs the optional tensorboard package
            )
        except Exception:  # noqa: BLE001  (ImportError, or tensorboard present but broken)
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def _write_all(self, path: Path, rows: list[dict[str, Any]]) -> None:
        with open(path, "w", newline="") as fh:
            if rows:
                w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
                w.writeheader()
                w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        if self.fields is None or set(row) - set(self.fields):
            self.fields = list(dict.fromkeys([*(self.fields or []), *row]))
            with atomic_path(self.path) as tmp:  # new columns (first validation): rewrite with the wider header
                self._write_all(tmp, [{k: r.get(k, "") for k in self.fields} for r in self.rows])
        else:
            with open(self.path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.fields).writerow({k: row.get(k, "") for k in self.fields})
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v == v:
                    self.tb.add_scalar(k, v, int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``log.csv`` as dicts of floats (``step`` as int; empty cells → NaN)."""
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append({k: (int(v) if k == "step" else float(v) if v not in ("", None) else float("nan"))
                         for k, v in r.items()})
    return rows
