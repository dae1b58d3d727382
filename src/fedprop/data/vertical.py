"""Party data of a vertical job: one file of customers per party, and the public examples.

In a vertical federation the parties hold *different columns of the same customers*. Each
party's folder holds one file, :data:`VERTICAL_FILE`: a customer id column, the party's own
feature columns and, at the guest only, the label. Ids need not be in the same order or
even cover the same customers at every party: the job aligns them by private set
intersection first.

:func:`read_vertical_party` reads and checks such a file with the cell checks of
:mod:`fedprop.data.loader` (every cell read as text, converted column by column, a bad cell
reported with its row); :func:`prepare_vertical` writes the public example federations:

- ``default-credit``: FATE's vertical split of the Taiwan default-of-credit data
  (``default_credit_hetero_guest.csv``: id, label ``y``, ``x0..x12`` = PAY_6,
  BILL_AMT1..6, PAY_AMT1..6; ``default_credit_hetero_host.csv``: id, ``x0..x9`` =
  LIMIT_BAL, SEX, EDUCATION, MARRIAGE, AGE, PAY_0, PAY_2..PAY_5; all z-scored by FATE).
  The guest ``bank`` keeps every customer; the host ``partner`` loses a seeded 5-10% of
  them, so the alignment has real work to do.
- ``bank-marketing``: UCI ``bank-full.csv`` split by columns: the ``bank`` (guest) holds
  age, job, marital, education, default, balance, housing, loan and the label ``y``; the
  ``partner`` holds the campaign columns contact, day, month, campaign, pdays, previous,
  poutcome. ``duration`` is dropped (it leaks the label); the customer id ``cid`` is the
  row's 0-based index in the source file.

Every party's rows are shuffled independently (seeded), so no party's row order says
anything about another's and alignment is needed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedprop.data.loader import _convert, _ids, _labels, _read_text_table
from fedprop.data.schema import Column, Schema
from fedprop.data.split import BANK_FULL_COLUMNS, ID_COLUMN, LEAKY_COLUMNS
from fedprop.errors import DataValidationError, FedpropError

__all__ = [
    "BANK_GUEST_COLUMNS",
    "BANK_HOST_COLUMNS",
    "CREDIT_GUEST_FILE",
    "CREDIT_HOST_FILE",
    "LAYOUTS",
    "VERTICAL_FILE",
    "VerticalPartySummary",
    "prepare_vertical",
    "read_vertical_party",
]

#: The file of one party of a vertical job, inside its data folder.
VERTICAL_FILE = "data.csv"
#: FATE's vertical default-credit files (guest with the label, host without).
CREDIT_GUEST_FILE = "default_credit_hetero_guest.csv"
CREDIT_HOST_FILE = "default_credit_hetero_host.csv"
_CREDIT_GUEST_COLUMNS = ("id", "y", *(f"x{i}" for i in range(13)))
_CREDIT_HOST_COLUMNS = ("id", *(f"x{i}" for i in range(10)))
#: Share of the default-credit host's customers dropped: drawn (seeded) from this range.
CREDIT_HOST_DROP = (0.05, 0.10)
#: UCI bank-full, split by columns: the bank's (with the label) and the partner's.
BANK_FULL_FILE = "bank-full.csv"
BANK_GUEST_COLUMNS = (
    "age", "job", "marital", "education", "default", "balance", "housing", "loan", "y",
)  # fmt: skip
BANK_HOST_COLUMNS = ("contact", "day", "month", "campaign", "pdays", "previous", "poutcome")
#: The example federations :func:`prepare_vertical` writes, and their (guest, host) names.
LAYOUTS = {"default-credit": ("bank", "partner"), "bank-marketing": ("bank", "partner")}


# --- reading a party's file ------------------------------------------------------------------


def read_vertical_party(
    path: Path,
    id_column: str,
    columns: Sequence[Column],
    label: tuple[str, tuple[str, str]] | None = None,
    *,
    ignore: Sequence[str] = (),
) -> pd.DataFrame:
    """Read and check one party's file of a vertical job.

    Returns a frame with the id column (text), the feature ``columns`` converted as
    :func:`fedprop.data.loader.read_party_csv` converts them and, when ``label`` (its
    column name and its ``(negative, positive)`` values) is given, the label as 0/1. The
    file must have exactly these columns, plus any of ``ignore`` (dropped: a guest's label
    column when it only scores). Ids must be unique and non-empty.
    """
    path = Path(path)
    # A Schema checks the declaration itself (unique names, id not a feature); a host has no
    # label, so a placeholder name that no column carries stands in for it.
    label_name, label_values = label if label is not None else ("\x00label", ("0", "1"))
    schema = Schema(label_name, label_values, tuple(columns), id_column)
    raw = _read_text_table(path)
    header = [str(h) for h in raw.iloc[0]]
    body = raw.iloc[1:].reset_index(drop=True)
    body.columns = pd.Index(header)
    if body.empty:
        raise DataValidationError(path, "has a header but no data rows")
    expected = [id_column, *schema.feature_names, *([label_name] if label is not None else [])]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataValidationError(path, "appears more than once in the header", name)
        seen.add(name)
    missing = [c for c in expected if c not in seen]
    if missing:
        raise DataValidationError(path, "missing from the header", missing[0])
    extra = [c for c in header if c not in expected and c not in ignore]
    if extra:
        raise DataValidationError(path, "is not a column of this party in the job", extra[0])
    out: dict[str, pd.Series] = {id_column: _ids(path, body[id_column], id_column)}
    for column in schema.columns:
        out[column.name] = _convert(path, body[column.name], column)
    if label is not None:
        out[label_name] = _labels(path, body[label_name], schema)
    return pd.DataFrame(out, columns=expected)


# --- the example federations -----------------------------------------------------------------


@dataclass(frozen=True)
class VerticalPartySummary:
    """What :func:`prepare_vertical` wrote for one party."""

    party: str
    file: Path
    rows: int
    columns: tuple[str, ...]


def prepare_vertical(
    layout: str, source_dir: Path, out_dir: Path, seed: int
) -> list[VerticalPartySummary]:
    """Write ``out_dir/<party>/data.csv`` for the example federation ``layout``.

    ``layout`` is one of :data:`LAYOUTS`; ``source_dir`` holds the public source files
    (FATE's ``default_credit_hetero_*.csv`` or UCI ``bank-full.csv``). ``seed`` fixes the
    host's dropped customers and every party's row order. ``out_dir`` must not exist or be
    empty; the folders appear all at once (built in a temporary sibling folder), so a
    failure leaves nothing half-written. Cell texts are copied unchanged.
    """
    if layout not in LAYOUTS:
        raise FedpropError(f"unknown vertical layout '{layout}' (known: {', '.join(LAYOUTS)})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FedpropError(f"seed must be a non-negative integer, got {seed!r}")
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FedpropError(f"{out_dir}: already exists and is not an empty folder")
    if layout == "default-credit":
        frames = _default_credit(source_dir, seed)
    else:
        frames = _bank_marketing(source_dir, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        summaries = []
        for party, frame in frames.items():
            (staging / party).mkdir()
            frame.to_csv(staging / party / VERTICAL_FILE, index=False, lineterminator="\n")
            summaries.append(
                VerticalPartySummary(
                    party, out_dir / party / VERTICAL_FILE, len(frame), tuple(frame.columns)
                )
            )
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summaries


def _read_source(path: Path, columns: Sequence[str], sep: str) -> pd.DataFrame:
    """A source file as text cells, with exactly ``columns``; clear errors otherwise."""
    if not path.exists():
        raise DataValidationError(path, "source file not found")
    if not path.is_file():
        raise DataValidationError(path, "is not a file")
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataValidationError(path, "file is empty") from None
    except pd.errors.ParserError as exc:
        problem = " ".join(str(exc).split())
        raise DataValidationError(path, f"not a valid '{sep}'-separated file: {problem}") from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(path, f"not UTF-8 text: {exc.reason}") from None
    header = [str(c) for c in frame.columns]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataValidationError(path, "missing from the header of the source file", missing[0])
    extra = [c for c in header if c not in columns]
    if extra:
        raise DataValidationError(path, "is not a column this source file should have", extra[0])
    if frame.empty:
        raise DataValidationError(path, "has a header but no data rows")
    return frame


def _shuffled(frame: pd.DataFrame, seed: int, party: int) -> pd.DataFrame:
    order = np.random.default_rng([seed, party]).permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True)


def _default_credit(source_dir: Path, seed: int) -> dict[str, pd.DataFrame]:
    guest = _read_source(source_dir / CREDIT_GUEST_FILE, _CREDIT_GUEST_COLUMNS, ",")
    host = _read_source(source_dir / CREDIT_HOST_FILE, _CREDIT_HOST_COLUMNS, ",")
    for path, frame in ((CREDIT_GUEST_FILE, guest), (CREDIT_HOST_FILE, host)):
        if frame["id"].duplicated().any():
            raise DataValidationError(source_dir / path, "ids are not unique", "id")
    rng = np.random.default_rng([seed, 2])
    low, high = CREDIT_HOST_DROP
    dropped = round(len(host) * float(rng.uniform(low, high)))
    kept = np.sort(rng.permutation(len(host))[dropped:])
    guest_name, host_name = LAYOUTS["default-credit"]
    return {
        guest_name: _shuffled(guest, seed, 0),
        host_name: _shuffled(host.iloc[kept].reset_index(drop=True), seed, 1),
    }


def _bank_marketing(source_dir: Path, seed: int) -> dict[str, pd.DataFrame]:
    frame = _read_source(source_dir / BANK_FULL_FILE, BANK_FULL_COLUMNS, ";")
    frame = frame.drop(columns=list(LEAKY_COLUMNS))
    frame.insert(0, ID_COLUMN, [str(i) for i in range(len(frame))])
    guest_name, host_name = LAYOUTS["bank-marketing"]
    return {
        guest_name: _shuffled(frame[[ID_COLUMN, *BANK_GUEST_COLUMNS]], seed, 0),
        host_name: _shuffled(frame[[ID_COLUMN, *BANK_HOST_COLUMNS]], seed, 1),
    }
