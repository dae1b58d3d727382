"""Reading a party's CSV files and checking them against the job's schema.

A party's folder holds ``train.csv`` and ``test.csv``: plain comma-separated
files with a header row, as written by :mod:`fedprop.data.split`. Every cell is
read as text and then converted column by column as the schema says, so that a
category such as ``unknown`` or ``NA`` is never silently turned into a missing
value and a bad cell is reported precisely.

Every problem raises :class:`~fedprop.errors.DataValidationError` with a
one-line message naming the file, the column, the problem and, where it
applies, an example bad value and its row. Rows are numbered from 1, counting
data rows only (the header is not a row).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedprop.data.schema import Column, ColumnKind, Schema
from fedprop.errors import DataValidationError

__all__ = [
    "TEST_FILE",
    "TRAIN_FILE",
    "PartyData",
    "load_party",
    "read_party_csv",
]

TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"

#: Cell texts that mean "no value" in a numeric column (compared case-insensitively).
MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none"})

_INTEGER = re.compile(r"[+-]?\d+")
_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


@dataclass(frozen=True)
class PartyData:
    """One party's checked training and test rows (see :func:`read_party_csv`)."""

    name: str
    train: pd.DataFrame
    test: pd.DataFrame


def load_party(folder: Path, schema: Schema) -> PartyData:
    """Read and check ``folder/train.csv`` and ``folder/test.csv``; the party is ``folder.name``."""
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "party data folder not found"
        raise DataValidationError(folder, problem)
    return PartyData(
        name=folder.name,
        train=read_party_csv(folder / TRAIN_FILE, schema),
        test=read_party_csv(folder / TEST_FILE, schema),
    )


def read_party_csv(path: Path, schema: Schema) -> pd.DataFrame:
    """Read one party CSV file and check it against ``schema``.

    Returns a frame with the schema's columns in order (id, features, label):
    integer columns as ``int64`` (``float64`` if nullable, missing cells NaN),
    float columns as ``float64``, categorical columns and the id as ``str``, and
    the label as ``int64`` (1 for the positive label value, 0 for the negative).
    """
    path = Path(path)
    raw = _read_text_table(path)
    header = [str(h) for h in raw.iloc[0]]
    body = raw.iloc[1:].reset_index(drop=True)
    body.columns = pd.Index(header)
    if body.empty:
        raise DataValidationError(path, "has a header but no data rows")
    _check_header(path, header, schema)

    out: dict[str, pd.Series] = {}
    if schema.id_column is not None:
        out[schema.id_column] = _ids(path, body[schema.id_column], schema.id_column)
    for column in schema.columns:
        out[column.name] = _convert(path, body[column.name], column)
    out[schema.label] = _labels(path, body[schema.label], schema)
    return pd.DataFrame(out, columns=list(schema.expected_columns))


# --- reading -----------------------------------------------------------------------------------


def _read_text_table(path: Path) -> pd.DataFrame:
    """The file as a table of strings, header included as row 0."""
    if not path.exists():
        raise DataValidationError(path, "file not found")
    if not path.is_file():
        raise DataValidationError(path, "is not a file")
    try:
        raw = pd.read_csv(
            path,
            header=None,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8",
        )
    except pd.errors.EmptyDataError:
        raise DataValidationError(path, "file is empty (no header, no rows)") from None
    except pd.errors.ParserError as exc:
        match = _FIELDS.search(str(exc))
        if match is None:
            raise DataValidationError(path, f"not a valid CSV file: {_one_line(exc)}") from None
        expected, line, saw = (int(g) for g in match.groups())
        raise DataValidationError(
            path, f"row {line - 1} has {saw} fields but the header has {expected}"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(path, f"not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise DataValidationError(path, f"cannot read file: {exc.strerror or exc}") from None
    return raw


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_header(path: Path, header: Sequence[str], schema: Schema) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataValidationError(path, "appears more than once in the header", name)
        seen.add(name)
    if schema.label not in seen:
        raise DataValidationError(path, "label column is missing from the header", schema.label)
    expected = schema.expected_columns
    missing = [c for c in expected if c not in seen]
    if missing:
        raise DataValidationError(path, "missing from the header" + _also(missing), missing[0])
    declared = set(expected)
    extra = [c for c in header if c not in declared]
    if extra:
        raise DataValidationError(
            path, "is not declared in the dataset schema" + _also(extra), extra[0]
        )


def _also(names: Sequence[str]) -> str:
    if len(names) == 1:
        return ""
    return " (also: " + ", ".join(f"'{n}'" for n in names[1:]) + ")"


# --- cells -------------------------------------------------------------------------------------


def _first_bad(path: Path, column: str, bad: np.ndarray, values: pd.Series, problem: str) -> None:
    """Raise for the first row where ``bad`` is true; ``{value}`` in ``problem`` shows its cell."""
    rows = np.flatnonzero(bad)
    if rows.size == 0:
        return
    first = int(rows[0])
    count = "" if rows.size == 1 else f"; {rows.size} bad cells in all"
    text = problem.replace("{value}", repr(str(values.iloc[first])))
    raise DataValidationError(path, f"{text} (row {first + 1}{count})", column)


def _is_missing(values: pd.Series) -> np.ndarray:
    lowered = values.str.strip().str.lower()
    return np.asarray(lowered.isin(MISSING_TOKENS), dtype=bool)


def _convert(path: Path, values: pd.Series, column: Column) -> pd.Series:
    if column.kind is ColumnKind.CATEGORICAL:
        return _categorical(path, values, column)
    missing = _is_missing(values)
    if not column.nullable:
        _first_bad(
            path,
            column.name,
            missing,
            values,
            "missing value {value} in a column that is not nullable",
        )
    present = values.str.strip().where(~missing, "")
    if column.kind is ColumnKind.INTEGER:
        return _integers(path, present, missing, column)
    return _floats(path, present, missing, column)


def _integers(path: Path, text: pd.Series, missing: np.ndarray, column: Column) -> pd.Series:
    ok = np.asarray(text.str.fullmatch(_INTEGER.pattern), dtype=bool) | missing
    _first_bad(path, column.name, ~ok, text, "{value} is not an integer")
    filled = text.where(~missing, "0")
    # Up to 18 digits always fits in int64; check only longer numbers one by one.
    long = np.asarray(filled.str.lstrip("+-").str.len() > 18, dtype=bool)
    too_big = np.zeros(len(filled), dtype=bool)
    for row in np.flatnonzero(long):
        too_big[row] = not _INT64_MIN <= int(filled.iloc[row]) <= _INT64_MAX
    _first_bad(path, column.name, too_big, text, "{value} is out of the 64-bit integer range")
    ints = filled.astype(np.int64).to_numpy(np.int64)
    if column.nullable:
        floats = ints.astype(np.float64)
        floats[missing] = np.nan
        return pd.Series(floats, dtype=np.float64)
    return pd.Series(ints, dtype=np.int64)


def _floats(path: Path, text: pd.Series, missing: np.ndarray, column: Column) -> pd.Series:
    numbers = pd.to_numeric(text.where(~missing, "nan"), errors="coerce").to_numpy(np.float64)
    unparsed = np.isnan(numbers) & ~missing
    _first_bad(path, column.name, unparsed, text, "{value} is not a number")
    _first_bad(path, column.name, np.isinf(numbers), text, "{value} is not a finite number")
    return pd.Series(numbers, dtype=np.float64)


def _categorical(path: Path, values: pd.Series, column: Column) -> pd.Series:
    empty = np.asarray(values.str.strip() == "", dtype=bool)
    _first_bad(
        path,
        column.name,
        empty,
        values,
        "empty cell {value}; a categorical column allows no missing values",
    )
    unknown = ~np.asarray(values.isin(column.vocabulary), dtype=bool)
    _first_bad(
        path,
        column.name,
        unknown,
        values,
        "{value} is not in the column's vocabulary (" + _shorten(column.vocabulary) + ")",
    )
    return values.astype(str).reset_index(drop=True)


def _shorten(values: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _labels(path: Path, values: pd.Series, schema: Schema) -> pd.Series:
    negative, positive = schema.label_values
    empty = np.asarray(values.str.strip() == "", dtype=bool)
    _first_bad(path, schema.label, empty, values, "empty label cell {value}")
    is_positive = np.asarray(values == positive, dtype=bool)
    is_negative = np.asarray(values == negative, dtype=bool)
    _first_bad(
        path,
        schema.label,
        ~(is_positive | is_negative),
        values,
        "label {value} is not one of the label values " + _shorten((negative, positive)),
    )
    return pd.Series(is_positive.astype(np.int64), dtype=np.int64)


def _ids(path: Path, values: pd.Series, name: str) -> pd.Series:
    empty = np.asarray(values.str.strip() == "", dtype=bool)
    _first_bad(path, name, empty, values, "empty id cell {value}")
    duplicated = np.asarray(values.duplicated(keep=False), dtype=bool)
    rows = np.flatnonzero(duplicated)
    if rows.size:
        first = values.iloc[int(rows[0])]
        same = np.flatnonzero(np.asarray(values == first, dtype=bool))
        raise DataValidationError(
            path,
            f"duplicate id '{first}' (rows {int(same[0]) + 1} and {int(same[1]) + 1}; "
            f"{rows.size} rows have an id that is not unique)",
            name,
        )
    return values.astype(str).reset_index(drop=True)
