"""The row filter of the enrich stage: one function both engines use.

`select_mask(rows, flt)` reads `flt.column`, compares it with `flt.values` by
`flt.op`, and returns a boolean Series aligned with `rows`. A missing column is
an error naming it; a null value is never selected (except by op = "all").
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .settings import SelectConfig


class SelectError(ValueError):
    """The filter cannot be applied to these rows; the message names the setting."""


def select_mask(rows: pd.DataFrame, flt: SelectConfig) -> pd.Series:
    if flt.op == "all":
        return pd.Series(True, index=rows.index, dtype=bool)
    if flt.column not in rows.columns:
        known = ", ".join(map(str, rows.columns)) or "none"
        raise SelectError(f"enrich.select.column: no column {flt.column!r} in the input (columns: {known})")
    col = rows[flt.column]
    present = col.notna()
    if flt.op in ("in", "not_in"):
        hit = col.isin(list(flt.values))
        mask = hit if flt.op == "in" else ~hit
    else:
        value: Any = flt.values[0]
        try:
            mask = _compare(col, flt.op, value)
        except TypeError as exc:
            raise SelectError(
                f"enrich.select: cannot compare column {flt.column!r} ({col.dtype}) with {value!r} by {flt.op!r}: {exc}"
            ) from None
    return (mask & present).astype(bool)


def _compare(col: pd.Series, op: str, value: Any) -> pd.Series:
    if op == "eq":
        return col == value
    if op == "ne":
        return col != value
    if op == "gt":
        return col > value
    if op == "ge":
        return col >= value
    if op == "lt":
        return col < value
    return col <= value
