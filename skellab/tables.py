"""Plain-text tables: the one table formatter of the package (notebooks, CLI, benchmarks)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["format_table"]


def format_table(rows: Sequence[dict[str, Any]] | Sequence[Sequence[Any]], columns: Sequence[str] | None = None, *,
                 digits: int = 3) -> str:
    """Aligned text table of ``rows``: dicts (``columns`` picks and orders keys, default the first
    row's) or sequences (then ``columns`` are the headers). Floats rounded to ``digits``; None → "-"."""
    if not rows:
        return "(no rows)"
    first = rows[0]
    if isinstance(first, dict):
        columns = list(columns or first.keys())
        values = [[r.get(c, "") for c in columns] for r in rows]  # type: ignore[union-attr]
    else:
        if columns is None:
            raise ValueError("format_table: sequence rows need column headers")
        columns, values = list(columns), [list(r) for r in rows]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    table = [list(map(str, columns))] + [[cell(v) for v in row] for row in values]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
