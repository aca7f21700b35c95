"""Comparing two reports CSV for CSV: exact for counts and text, 1e-9 relative for floats (a helper of
test_archive.py and test_committed_reports.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

RTOL = 1e-9


def csv_differences(expected: Path, got: Path) -> list[str]:
    """Every difference between the CSVs of two report folders, one line each; [] when they agree."""
    names = sorted(p.name for p in Path(expected).glob("*.csv"))
    out = []
    if names != sorted(p.name for p in Path(got).glob("*.csv")):
        out.append(f"CSV files differ: {names} vs {sorted(p.name for p in Path(got).glob('*.csv'))}")
    for name in names:
        if (Path(got) / name).is_file():
            out += [f"{name}: {d}" for d in frame_differences(pd.read_csv(Path(expected) / name),
                                                               pd.read_csv(Path(got) / name))]
    return out


def frame_differences(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    if list(a.columns) != list(b.columns):
        return [f"columns {list(a.columns)} vs {list(b.columns)}"]
    if len(a) != len(b):
        return [f"{len(a)} rows vs {len(b)}"]
    out = []
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
            same = np.isclose(x.to_numpy(), y.to_numpy(), rtol=RTOL, atol=0.0, equal_nan=True) | (
                x.to_numpy() == y.to_numpy())  # equal infinities
        else:  # text, counts, booleans: exact (missing equals missing)
            same = (x.isna().to_numpy() & y.isna().to_numpy()) | (x.astype(object).astype(str).to_numpy()
                                                                  == y.astype(object).astype(str).to_numpy())
        if not same.all():
            row = int(np.flatnonzero(~same)[0])
            out.append(f"column {col!r}, row {row}: {x.iloc[row]!r} vs {y.iloc[row]!r} ({(~same).sum()} rows differ)")
    return out
