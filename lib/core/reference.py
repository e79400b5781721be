"""The papers' reported numbers, as data: `lib/reference/<paper>/<table>.csv`, installed with the package.

    paper_numbers("dir", "table1")                   # one row per number of DIR's Table 1
    reference_table("hgd", "table2", index="defense", columns="test_set", metric="accuracy", eps=4 / 255)

Each row of a file is one number of the paper: the columns `paper, table, page` (the table, figure or
section it comes from, and where in the paper: the page, or the section where the text marks no pages),
the cell's keys (defense, attack, eps, dataset, target, ... as the table needs), then `value, unit, note`.
`eps` and `step_size` are written as in the papers, `k/255`, and read as floats in pixel units; `True` / `False` columns are
read as booleans and numeric columns as numbers. lib/reference/README.md lists the files and their labels.
The notebooks print these numbers beside ours; the leaderboard reads the same files.
"""
from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from importlib import resources

import pandas as pd

REQUIRED = ("paper", "table", "page", "value", "unit", "note")


def _root():
    return resources.files("lib.reference")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", str(name).lower())


def papers() -> list[str]:
    """The papers with reference numbers (folder names under lib/reference)."""
    return sorted(p.name for p in _root().iterdir() if p.is_dir() and any(f.name.endswith(".csv") for f in p.iterdir()))


def tables(paper: str) -> list[str]:
    """The reference tables of one paper (file names without .csv)."""
    return sorted(f.name[:-4] for f in _paper_dir(paper).iterdir() if f.name.endswith(".csv"))


def _paper_dir(paper: str):
    for name in papers():
        if _norm(name) == _norm(paper):
            return _root() / name
    raise KeyError(f"No reference numbers for paper {paper!r}; available: {papers()} (lib/reference/<paper>/).")


def _eps(text: str) -> float:
    try:
        return float(Fraction(text.replace(" ", ""))) if text != "" else float("nan")
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps {text!r} is neither k/255 nor a number") from None


def _column(values: pd.Series) -> pd.Series:
    filled = values[values != ""]
    if len(filled) and filled.isin(["True", "False"]).all() and len(filled) == len(values):
        return values == "True"
    numbers = pd.to_numeric(filled, errors="coerce")
    if len(filled) and numbers.notna().all():
        return pd.to_numeric(values.mask(values == ""))
    return values


@lru_cache(maxsize=None)
def _read(paper_dir_name: str, table: str) -> pd.DataFrame:
    source = _root() / paper_dir_name / f"{table}.csv"
    with source.open() as f:
        frame = pd.read_csv(f, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"lib/reference/{paper_dir_name}/{table}.csv lacks the columns {missing} (every file has "
                         f"{list(REQUIRED)} plus the cell's keys).")
    value = pd.to_numeric(frame["value"], errors="coerce")
    if value.isna().any():
        rows = list(frame.index[value.isna()] + 2)
        raise ValueError(f"lib/reference/{paper_dir_name}/{table}.csv: non-numeric value on lines {rows}.")
    keys = [c for c in frame.columns if c not in ("value", "unit", "note", "page")]
    if frame.duplicated(keys).any():
        raise ValueError(f"lib/reference/{paper_dir_name}/{table}.csv: two rows have the same keys "
                         f"{frame[frame.duplicated(keys, keep=False)].head(4).to_dict('records')}.")
    for column in frame.columns:
        if column in ("eps", "step_size"):
            frame[column] = frame[column].map(_eps)
        elif column not in REQUIRED:
            frame[column] = _column(frame[column])
    frame["value"] = value
    return frame


def paper_numbers(paper: str, table: str | None = None) -> pd.DataFrame:
    """The numbers one paper reports: every table of it (table=None), or one.

    paper: a folder of lib/reference ('hgd', 'dir'; any case). table: a file name without .csv ('table2',
    'section4_3') or the label in its `table` column ('Table 2'). An unknown name is a KeyError that lists
    the available ones. Returns a copy: columns paper, table, page, the keys, value (float), unit, note.
    """
    directory = _paper_dir(paper)
    names = tables(directory.name)
    if table is None:
        chosen = names
    else:
        chosen = [n for n in names if _norm(n) == _norm(table)]
        if not chosen:
            labels = {n: _read(directory.name, n)["table"].unique().tolist() for n in names}
            chosen = [n for n, ls in labels.items() if any(_norm(label) == _norm(table) for label in ls)]
        if not chosen:
            raise KeyError(f"No reference table {table!r} for {directory.name}; available: {names} "
                           f"(lib/reference/{directory.name}/<table>.csv).")
    frame = pd.concat([_read(directory.name, n) for n in chosen], ignore_index=True)
    if table is not None and len(chosen) == 1 and _norm(chosen[0]) != _norm(table):
        frame = frame[[_norm(label) == _norm(table) for label in frame["table"]]]
    ordered = [c for c in frame.columns if c not in ("value", "unit", "note")] + ["value", "unit", "note"]
    return frame[ordered].reset_index(drop=True).copy()


def reference_table(paper: str, table: str, index: str | list[str], columns: str | list[str],
                    value: str = "value", **where) -> pd.DataFrame:
    """The pivoted view of one reference table: `value` by `index` × `columns`, rows and columns in the
    paper's order, after keeping the rows whose columns equal `where` (eps within 1e-9).

    Two numbers in one cell (keys left out of index, columns and where) are a ValueError.
    """
    frame = paper_numbers(paper, table)
    for column, wanted in where.items():
        if column not in frame.columns:
            raise KeyError(f"{paper} {table} has no column {column!r}; its columns are {list(frame.columns)}")
        if isinstance(wanted, float):
            frame = frame[(frame[column] - wanted).abs() < 1e-9]
        else:
            frame = frame[frame[column] == wanted]
    index_cols = [index] if isinstance(index, str) else list(index)
    column_cols = [columns] if isinstance(columns, str) else list(columns)
    if frame.empty:
        raise LookupError(f"No numbers in {paper} {table} match {where}.")
    if frame.duplicated(index_cols + column_cols).any():
        raise ValueError(f"{paper} {table}: several numbers per cell of {index_cols} × {column_cols}; narrow them "
                         f"with where= (e.g. metric=...).")
    return frame.pivot_table(index=index, columns=columns, values=value, aggfunc="first", sort=False)
