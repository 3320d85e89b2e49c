"""Rows written by hand as results.csv holds them: every column, the numeric ones typed as load_results types them."""

from __future__ import annotations

import pandas as pd

from bench_kernels.results import COLUMNS, NUMERIC_COLUMNS


def typed_frame(rows: list[dict], base: dict | None = None) -> pd.DataFrame:
    """One row per dict (over the base values), every results column, numeric columns as numbers (empty: NaN)."""
    df = pd.DataFrame([{c: {**(base or {}), **r}.get(c, "") for c in COLUMNS} for r in rows], columns=list(COLUMNS))
    for column in NUMERIC_COLUMNS:
        df[column] = pd.to_numeric(df[column].replace("", None), errors="coerce")
    return df
