"""Splitting UCI Bank Marketing (``bank-full.csv``) into one folder per bank.

The horizontal federation has four banks with the same columns and different
customers: each row goes to the bank of its customer's job group
(:data:`PARTY_GROUPS`). Within each bank the rows are split into training and
test rows, stratified by the label, with a seeded generator so that a split is
reproducible.

``duration`` is dropped (:data:`LEAKY_COLUMNS`): it is the length of the call,
known only after the outcome. A ``cid`` column, the row's 0-based index in the
source file, is added first so that rows can be traced back.

The split is written atomically: everything is built in a temporary sibling
folder that is renamed into place at the end, so an interrupted split never
leaves half-written party folders behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from fedprop.data.loader import TEST_FILE, TRAIN_FILE
from fedprop.errors import DataValidationError, FedpropError

__all__ = [
    "BANK_FULL_COLUMNS",
    "ID_COLUMN",
    "LEAKY_COLUMNS",
    "PARTY_GROUPS",
    "OutputExistsError",
    "SplitSummary",
    "split_bank_marketing",
]

#: The job groups of each bank (party) in the horizontal split.
PARTY_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "bank-a": ("blue-collar", "services", "housemaid"),
        "bank-b": ("management", "entrepreneur", "self-employed"),
        "bank-c": ("technician", "admin."),
        "bank-d": ("retired", "student", "unemployed", "unknown"),
    }
)
#: Columns dropped because they leak the label.
LEAKY_COLUMNS: tuple[str, ...] = ("duration",)
#: The columns of ``bank-full.csv``, in file order.
BANK_FULL_COLUMNS: tuple[str, ...] = (
    "age", "job", "marital", "education", "default", "balance", "housing", "loan", "contact",
    "day", "month", "duration", "campaign", "pdays", "previous", "poutcome", "y",
)  # fmt: skip
#: The row id column added by the split (0-based row index in the source file).
ID_COLUMN = "cid"

_LABEL = "y"
_LABEL_VALUES = ("no", "yes")
_GROUP_COLUMN = "job"


class OutputExistsError(FedpropError):
    """The output folder already holds files that the split would replace."""


@dataclass(frozen=True)
class SplitSummary:
    """What was written for one party."""

    party: str
    folder: Path
    train_rows: int
    test_rows: int
    train_positive_rate: float
    test_positive_rate: float


def split_bank_marketing(
    source: Path,
    out_dir: Path,
    *,
    test_fraction: float = 0.2,
    seed: int = 20240501,
    overwrite: bool = False,
) -> list[SplitSummary]:
    """Split ``bank-full.csv`` into ``out_dir/<party>/train.csv`` and ``test.csv``.

    Each party's rows are split per label value: ``round(n * test_fraction)`` of
    each class go to the test file, chosen by a generator seeded with ``seed``
    and the party's position in :data:`PARTY_GROUPS`. Rows keep their source
    order within each file, and cell texts are copied unchanged.

    ``out_dir`` must not exist or be empty. With ``overwrite=True`` an earlier
    split there is replaced, but only if ``out_dir`` holds nothing except party
    folders with ``train.csv``/``test.csv`` in them; anything else is refused,
    so a mistyped path never deletes unrelated files.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    source = Path(source)
    out_dir = Path(out_dir)
    _check_output(out_dir, overwrite)
    frame = _read_source(source)
    parties = _assign(source, frame, test_fraction, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        summaries = []
        for party, (train, test) in parties.items():
            folder = staging / party
            folder.mkdir()
            train.to_csv(folder / TRAIN_FILE, index=False, lineterminator="\n")
            test.to_csv(folder / TEST_FILE, index=False, lineterminator="\n")
            summaries.append(
                SplitSummary(
                    party=party,
                    folder=out_dir / party,
                    train_rows=len(train),
                    test_rows=len(test),
                    train_positive_rate=_positive_rate(train),
                    test_positive_rate=_positive_rate(test),
                )
            )
        _replace(staging, out_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summaries


# --- source ------------------------------------------------------------------------------------


def _read_source(source: Path) -> pd.DataFrame:
    if not source.exists():
        raise DataValidationError(source, "source file not found")
    if not source.is_file():
        raise DataValidationError(source, "is not a file")
    try:
        frame = pd.read_csv(source, sep=";", dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataValidationError(source, "file is empty") from None
    except pd.errors.ParserError as exc:
        problem = " ".join(str(exc).split())
        raise DataValidationError(source, f"not a valid ';'-separated file: {problem}") from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(source, f"not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise DataValidationError(source, f"cannot read file: {exc.strerror or exc}") from None

    header = [str(c) for c in frame.columns]
    missing = [c for c in BANK_FULL_COLUMNS if c not in header]
    if missing:
        hint = "" if len(header) > 1 else " (is the file ';'-separated like bank-full.csv?)"
        raise DataValidationError(
            source, f"missing from the header; bank-full.csv has 17 columns{hint}", missing[0]
        )
    extra = [c for c in header if c not in BANK_FULL_COLUMNS]
    if extra:
        raise DataValidationError(source, "is not a bank-full.csv column", extra[0])
    if frame.empty:
        raise DataValidationError(source, "has a header but no data rows")
    _check_values(source, frame, _LABEL, _LABEL_VALUES)
    _check_values(source, frame, _GROUP_COLUMN, tuple(j for g in PARTY_GROUPS.values() for j in g))
    return frame


def _check_values(source: Path, frame: pd.DataFrame, column: str, allowed: tuple[str, ...]) -> None:
    bad = np.flatnonzero(~np.asarray(frame[column].isin(allowed), dtype=bool))
    if bad.size:
        row = int(bad[0])
        raise DataValidationError(
            source,
            f"{frame[column].iloc[row]!r} is not one of: {', '.join(allowed)} (row {row + 1})",
            column,
        )


# --- split -------------------------------------------------------------------------------------


def _assign(
    source: Path, frame: pd.DataFrame, test_fraction: float, seed: int
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Each party's (train, test) frames: ``cid`` first, leaky columns dropped."""
    kept = [c for c in frame.columns if c not in LEAKY_COLUMNS]
    rows = frame[kept].copy()
    rows.insert(0, ID_COLUMN, [str(i) for i in range(len(rows))])
    labels = rows[_LABEL].to_numpy()
    jobs = rows[_GROUP_COLUMN].to_numpy()

    parties: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for position, (party, groups) in enumerate(PARTY_GROUPS.items()):
        members = np.flatnonzero(np.isin(jobs, groups))
        rng = np.random.default_rng([seed, position])
        test_parts = []
        for value in _LABEL_VALUES:
            of_class = members[labels[members] == value]
            n_test = int(np.floor(of_class.size * test_fraction + 0.5))
            test_parts.append(rng.permutation(of_class)[:n_test])
        test_index = np.sort(np.concatenate(test_parts))
        train_index = np.setdiff1d(members, test_index, assume_unique=True)
        if train_index.size == 0 or test_index.size == 0:
            raise DataValidationError(
                source,
                f"party '{party}' would get {train_index.size} training and "
                f"{test_index.size} test rows; the source has too few rows for jobs "
                f"{', '.join(groups)}",
            )
        parties[party] = (
            rows.iloc[train_index].reset_index(drop=True),
            rows.iloc[test_index].reset_index(drop=True),
        )
    return parties


def _positive_rate(frame: pd.DataFrame) -> float:
    return float(np.mean(frame[_LABEL].to_numpy() == _LABEL_VALUES[1]))


# --- output ------------------------------------------------------------------------------------


def _check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse early, before any work, if the split could not be put in place."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a folder")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise OutputExistsError(
            f"{out_dir}: already exists and is not empty; "
            "pass overwrite=True (--overwrite) to replace an earlier split"
        )
    for name in entries:
        entry = out_dir / name
        if name not in PARTY_GROUPS or not entry.is_dir() or entry.is_symlink():
            raise OutputExistsError(
                f"{out_dir}: does not look like an earlier split (it holds '{name}'); "
                "refusing to replace it"
            )
        inside = {p.name for p in entry.iterdir()}
        unexpected = sorted(inside - {TRAIN_FILE, TEST_FILE})
        if unexpected:
            raise OutputExistsError(
                f"{out_dir}: does not look like an earlier split "
                f"('{name}/{unexpected[0]}' is not a split file); refusing to replace it"
            )


def _replace(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Move ``staging`` to ``out_dir``; the old split (if any) is removed only afterwards."""
    _check_output(out_dir, overwrite)
    old: Path | None = None
    if out_dir.exists():
        if any(out_dir.iterdir()):
            old = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent)
            )
            os.replace(out_dir, old / out_dir.name)
        else:
            out_dir.rmdir()
    try:
        os.replace(staging, out_dir)
    except OSError:
        if old is not None:
            os.replace(old / out_dir.name, out_dir)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
