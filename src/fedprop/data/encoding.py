"""Feature encoding that is identical at every party, built without sharing rows.

Each party computes :func:`local_stats` on its own training rows: a vector of
counts and sums that is additive, so the element-wise sum of all parties'
vectors equals the vector of the pooled rows. Only that sum is shared. Every
party then builds the same :class:`FeatureEncoder` from it and encodes its rows
into the same feature columns:

* numeric columns: the declared transform, then standardized with the global
  mean and population standard deviation (a constant column is divided by 1);
* a column with a sentinel gets a 0/1 ``<name>=sentinel`` feature, and its
  sentinel cells the mean (0 after standardizing); NaN in a nullable column
  likewise gets 0 and a ``<name>=missing`` feature;
* categorical columns: one-hot over the full declared vocabulary, in declared
  order, so a party that never sees a category still has its column.

Numeric features come first (in declared order), then the one-hot features.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedprop.data.schema import SIGNED_LOG1P, Column, Schema
from fedprop.errors import FedpropError, SpecError

__all__ = [
    "FeatureEncoder",
    "apply_transform",
    "local_stats",
    "stats_layout",
]

_HEAD = ("rows", "positives")
_PER_NUMERIC = ("count", "sum", "sumsq")


def _signed_log1p(values: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.sign(values) * np.log1p(np.abs(values))
    return result


_TRANSFORMS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {SIGNED_LOG1P: _signed_log1p}


def apply_transform(column: Column, values: np.ndarray) -> np.ndarray:
    """``values`` (float64) after the column's declared transform (a copy if there is none)."""
    values = np.asarray(values, dtype=np.float64)
    if column.transform is None:
        return values.copy()
    return _TRANSFORMS[column.transform](values)


def stats_layout(schema: Schema) -> tuple[str, ...]:
    """The name of each slot of a :func:`local_stats` vector."""
    slots = list(_HEAD)
    for column in schema.numeric_columns:
        slots.extend(f"{column.name}.{part}" for part in _PER_NUMERIC)
    return tuple(slots)


def encoded_feature_names(schema: Schema) -> tuple[str, ...]:
    """The features a schema encodes to, in matrix column order (known before any data)."""
    names: list[str] = []
    for column in schema.numeric_columns:
        names.append(column.name)
        if column.sentinel is not None:
            names.append(f"{column.name}=sentinel")
        if column.nullable:
            names.append(f"{column.name}=missing")
        names.extend(_band_names(column))
    for column in schema.categorical_columns:
        names.extend(f"{column.name}={value}" for value in column.vocabulary)
    return tuple(names)


def count_slots(schema: Schema) -> np.ndarray:
    """Boolean mask of the :func:`local_stats` slots that hold counts (whole numbers)."""
    return np.array([not name.endswith((".sum", ".sumsq")) for name in stats_layout(schema)])


def local_stats(df: pd.DataFrame, schema: Schema) -> np.ndarray:
    """This party's additive statistics of ``df`` (a frame as read by the loader).

    A float64 vector laid out as :func:`stats_layout`: the number of rows and of
    positive labels, then for each numeric column the count, sum and sum of
    squares of its transformed values, leaving out NaN and sentinel cells.
    """
    _require_columns(df, (schema.label, *(c.name for c in schema.numeric_columns)))
    labels = _label_array(df, schema)
    stats = [float(len(df)), float(labels.sum())]
    for column in schema.numeric_columns:
        values, usable = _numeric(df, column)
        kept = values[usable]
        stats.extend((float(kept.size), math.fsum(kept), math.fsum(kept * kept)))
    return np.array(stats, dtype=np.float64)


@dataclass(frozen=True)
class FeatureEncoder:
    """Turns checked frames into model inputs, identically at every party.

    Build it with :meth:`from_global_stats` from the sum of every party's
    :func:`local_stats` vector. ``means`` and ``stds`` hold one entry per numeric
    column (after its transform); ``rows`` and ``positives`` count the global
    training rows and positive labels.
    """

    schema: Schema
    means: tuple[float, ...]
    stds: tuple[float, ...]
    rows: int
    positives: int

    def __post_init__(self) -> None:
        n = len(self.schema.numeric_columns)
        if len(self.means) != n or len(self.stds) != n:
            raise SpecError(
                f"encoder needs one mean and one std per numeric column ({n}), "
                f"got {len(self.means)} and {len(self.stds)}"
            )
        if not all(math.isfinite(m) for m in self.means):
            raise SpecError("encoder means must be finite")
        if not all(math.isfinite(s) and s > 0 for s in self.stds):
            raise SpecError("encoder stds must be finite and positive")
        if self.rows <= 0 or not 0 <= self.positives <= self.rows:
            raise SpecError(
                f"encoder needs rows > 0 and 0 <= positives <= rows, "
                f"got rows={self.rows}, positives={self.positives}"
            )

    @classmethod
    def from_global_stats(cls, schema: Schema, stats: np.ndarray) -> FeatureEncoder:
        """The encoder for the federation whose summed :func:`local_stats` vector is ``stats``."""
        layout = stats_layout(schema)
        vector = np.asarray(stats, dtype=np.float64)
        if vector.ndim != 1 or vector.size != len(layout):
            raise SpecError(
                f"statistics vector has shape {vector.shape}, but this dataset's layout has "
                f"{len(layout)} slots ({', '.join(layout[:4])}, ...); "
                "were the parties' vectors computed with the same dataset schema?"
            )
        if not np.all(np.isfinite(vector)):
            raise SpecError("statistics vector contains NaN or infinity")
        rows, positives = _whole(vector[0], "rows"), _whole(vector[1], "positives")
        if rows <= 0:
            raise SpecError("statistics vector counts zero training rows")
        if not 0 <= positives <= rows:
            raise SpecError(f"statistics vector has {positives} positives for {rows} rows")
        means: list[float] = []
        stds: list[float] = []
        for i, column in enumerate(schema.numeric_columns):
            count, total, squares = vector[2 + 3 * i : 5 + 3 * i]
            if not 0 <= count <= rows:
                raise SpecError(
                    f"statistics vector counts {count:g} values of '{column.name}' for {rows} rows"
                )
            mean = float(total / count) if count > 0 else 0.0
            variance = float(squares / count) - mean * mean if count > 0 else 0.0
            # A constant column leaves only rounding noise: treat it as spread 1.
            tolerance = 1e-12 * max(mean * mean, 1.0)
            stds.append(math.sqrt(variance) if variance > tolerance else 1.0)
            means.append(mean)
        return cls(schema, tuple(means), tuple(stds), rows, positives)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The name of each encoded feature, in matrix column order."""
        return encoded_feature_names(self.schema)

    @property
    def n_features(self) -> int:
        """The number of encoded features."""
        return len(self.feature_names)

    @property
    def positive_rate(self) -> float:
        """The share of positive labels in the federation's training rows."""
        return self.positives / self.rows

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """The float32 feature matrix ``(len(df), n_features)`` of a checked frame."""
        _require_columns(df, self.schema.feature_names)
        blocks: list[np.ndarray] = []
        for column, mean, std in zip(
            self.schema.numeric_columns, self.means, self.stds, strict=True
        ):
            values, usable = _numeric(df, column)
            blocks.append(np.where(usable, (values - mean) / std, 0.0))
            if column.sentinel is not None:
                raw = df[column.name].to_numpy(dtype=np.float64)
                blocks.append((raw == column.sentinel).astype(np.float64))
            if column.nullable:
                blocks.append(np.isnan(df[column.name].to_numpy(dtype=np.float64)).astype(float))
            if column.bands:
                blocks.extend(_band_indicators(df, column, usable))
        matrix = np.zeros((len(df), self.n_features), dtype=np.float32)
        if blocks:
            matrix[:, : len(blocks)] = np.column_stack(blocks)
        offset = len(blocks)
        for column in self.schema.categorical_columns:
            codes = _category_codes(df, column)
            rows = np.flatnonzero(codes >= 0)
            matrix[rows, offset + codes[rows]] = 1.0
            offset += len(column.vocabulary)
        return matrix

    def labels(self, df: pd.DataFrame) -> np.ndarray:
        """The float32 0/1 labels of a checked frame."""
        _require_columns(df, (self.schema.label,))
        return _label_array(df, self.schema).astype(np.float32)


# --- helpers -----------------------------------------------------------------------------------


def _band_names(column: Column) -> list[str]:
    if not column.bands:
        return []
    cuts = [f"{b:g}" for b in column.bands]
    inner = [f"{column.name}[{lo},{hi})" for lo, hi in itertools.pairwise(cuts)]
    return [f"{column.name}[<{cuts[0]}]", *inner, f"{column.name}[>={cuts[-1]}]"]


def _band_indicators(df: pd.DataFrame, column: Column, usable: np.ndarray) -> list[np.ndarray]:
    """One 0/1 vector per band of the raw values; sentinel and missing cells are in no band."""
    raw = df[column.name].to_numpy(dtype=np.float64)
    band = np.searchsorted(np.asarray(column.bands), raw, side="right")
    return [((band == i) & usable).astype(np.float64) for i in range(len(column.bands) + 1)]


def _whole(value: float, what: str) -> int:
    if not float(value).is_integer():
        raise SpecError(f"statistics vector: {what} must be a whole number, got {value!r}")
    return int(value)


def _require_columns(df: pd.DataFrame, names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise FedpropError(
            f"frame lacks column(s) {', '.join(missing)} required by the dataset schema "
            "(read party files with fedprop.data.loader)"
        )


def _label_array(df: pd.DataFrame, schema: Schema) -> np.ndarray:
    series = df[schema.label]
    if not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        raise FedpropError(
            f"label column '{schema.label}' must hold 0/1 integers, got dtype {series.dtype} "
            "(read party files with fedprop.data.loader)"
        )
    labels = series.to_numpy(dtype=np.float64)
    if not np.all((labels == 0) | (labels == 1)):
        raise FedpropError(f"label column '{schema.label}' must hold only 0 and 1")
    return labels


def _numeric(df: pd.DataFrame, column: Column) -> tuple[np.ndarray, np.ndarray]:
    """The column's transformed values and which of them are usable (not NaN or sentinel)."""
    series = df[column.name]
    if not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        raise FedpropError(
            f"column '{column.name}' must be numeric, got dtype {series.dtype} "
            "(read party files with fedprop.data.loader)"
        )
    raw = series.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(raw)
    if missing.any() and not column.nullable:
        row = int(np.flatnonzero(missing)[0])
        raise FedpropError(
            f"column '{column.name}' is not nullable but has a missing value (row {row + 1})"
        )
    usable = ~missing
    if column.sentinel is not None:
        usable &= raw != column.sentinel
    values = apply_transform(column, np.where(usable, raw, 0.0))
    return values, usable


def _category_codes(df: pd.DataFrame, column: Column) -> np.ndarray:
    """Each row's index in the column's vocabulary; unknown categories are an error."""
    series = df[column.name]
    codes = np.asarray(pd.Index(column.vocabulary).get_indexer(pd.Index(series)), dtype=np.int64)
    unknown = np.flatnonzero(codes < 0)
    if unknown.size:
        row = int(unknown[0])
        raise FedpropError(
            f"column '{column.name}': {series.iloc[row]!r} is not in the declared vocabulary "
            f"(row {row + 1})"
        )
    return codes
