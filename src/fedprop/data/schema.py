"""The dataset schema a job spec declares: feature columns, label and id column.

Every party checks its files against the same schema, and every party encodes
features from it, so the schema is the contract that keeps the parties' model
inputs identical. It is built either directly or from the ``[dataset]`` table of
a job spec (:meth:`Schema.from_dict`); both paths run the same checks and raise
:class:`~fedprop.errors.SpecError` with a one-line message naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from fedprop.errors import SpecError

__all__ = [
    "SIGNED_LOG1P",
    "TRANSFORMS",
    "Column",
    "ColumnKind",
    "Schema",
]

#: ``sign(x) * log1p(|x|)``: compresses heavy-tailed amounts (balances) while keeping the sign.
SIGNED_LOG1P = "signed-log1p"
#: Names of the value transforms a numeric column may declare.
TRANSFORMS: tuple[str, ...] = (SIGNED_LOG1P,)

_DATASET_KEYS = frozenset({"name", "id-column", "label", "label-values", "columns"})
_COLUMN_KEYS = frozenset(
    {"name", "kind", "vocabulary", "nullable", "sentinel", "transform", "bands"}
)


class ColumnKind(StrEnum):
    """How a column's cells are read and encoded."""

    INTEGER = "integer"
    FLOAT = "float"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Column:
    """One feature column.

    ``vocabulary`` lists every category of a categorical column (required, and
    forbidden for numeric columns). ``nullable`` allows empty cells in a numeric
    column; a categorical column never allows them ("unknown" is a category).
    ``sentinel`` is a numeric value meaning "not applicable" (``pdays = -1``), and
    ``transform`` names a value transform from :data:`TRANSFORMS`. ``bands``
    lists strictly increasing cut points on a numeric column's raw values; the
    encoder adds one 0/1 feature per band (below the first cut, between cuts,
    at or above the last), as scorecards do for effects that are not linear,
    such as age.
    """

    name: str
    kind: ColumnKind
    vocabulary: tuple[str, ...] = ()
    nullable: bool = False
    sentinel: float | None = None
    transform: str | None = None
    bands: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"column name must be a non-empty string, got {self.name!r}")
        where = f"column '{self.name}'"
        try:
            kind = ColumnKind(self.kind)
        except ValueError:
            allowed = ", ".join(k.value for k in ColumnKind)
            raise SpecError(f"{where}: kind '{self.kind}' is not one of: {allowed}") from None
        object.__setattr__(self, "kind", kind)
        if not isinstance(self.vocabulary, tuple):
            raise SpecError(f"{where}: vocabulary must be a tuple of strings")
        if not isinstance(self.nullable, bool):
            raise SpecError(f"{where}: nullable must be true or false, got {self.nullable!r}")
        if kind is ColumnKind.CATEGORICAL:
            self._check_categorical(where)
        else:
            self._check_numeric(where, kind)

    def _check_categorical(self, where: str) -> None:
        if not self.vocabulary:
            raise SpecError(f"{where}: a categorical column needs a non-empty vocabulary")
        for value in self.vocabulary:
            if not isinstance(value, str) or not value:
                raise SpecError(
                    f"{where}: vocabulary entries must be non-empty strings, got {value!r}"
                )
        seen: set[str] = set()
        for value in self.vocabulary:
            if value in seen:
                raise SpecError(f"{where}: vocabulary lists '{value}' twice")
            seen.add(value)
        if self.nullable:
            raise SpecError(
                f"{where}: nullable is only allowed on numeric columns "
                "(declare a category such as 'unknown' instead)"
            )
        if self.sentinel is not None:
            raise SpecError(f"{where}: sentinel is only allowed on integer and float columns")
        if self.transform is not None:
            raise SpecError(f"{where}: transform is only allowed on integer and float columns")
        if self.bands:
            raise SpecError(f"{where}: bands are only allowed on integer and float columns")

    def _check_numeric(self, where: str, kind: ColumnKind) -> None:
        if self.vocabulary:
            raise SpecError(f"{where}: vocabulary is only allowed on categorical columns")
        if self.sentinel is not None:
            sentinel = self.sentinel
            if isinstance(sentinel, bool) or not isinstance(sentinel, int | float):
                raise SpecError(f"{where}: sentinel must be a number, got {sentinel!r}")
            if not math.isfinite(sentinel):
                raise SpecError(f"{where}: sentinel must be a finite number, got {sentinel!r}")
            if kind is ColumnKind.INTEGER and not float(sentinel).is_integer():
                raise SpecError(
                    f"{where}: sentinel of an integer column must be an integer, got {sentinel!r}"
                )
            object.__setattr__(self, "sentinel", float(sentinel))
        if not isinstance(self.bands, tuple) or not all(
            isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b)
            for b in self.bands
        ):
            raise SpecError(f"{where}: bands must be finite numbers, got {self.bands!r}")
        if any(lo >= hi for lo, hi in zip(self.bands, self.bands[1:], strict=False)):
            raise SpecError(f"{where}: bands must be strictly increasing, got {list(self.bands)}")
        object.__setattr__(self, "bands", tuple(float(b) for b in self.bands))
        if self.transform is not None and self.transform not in TRANSFORMS:
            raise SpecError(
                f"{where}: transform '{self.transform}' is not one of: {', '.join(TRANSFORMS)}"
            )

    @property
    def is_numeric(self) -> bool:
        """Whether the column is an integer or float column."""
        return self.kind is not ColumnKind.CATEGORICAL


@dataclass(frozen=True)
class Schema:
    """The columns every party's data file must have, and how to read them.

    ``label_values`` is ``(negative, positive)`` as written in the files.
    ``columns`` are the feature columns, in order. ``id_column`` (optional)
    identifies rows and is never a feature.
    """

    label: str
    label_values: tuple[str, str]
    columns: tuple[Column, ...]
    id_column: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise SpecError(f"label must be a non-empty column name, got {self.label!r}")
        values = self.label_values
        if (
            not isinstance(values, tuple)
            or len(values) != 2
            or not all(isinstance(v, str) and v for v in values)
            or values[0] == values[1]
        ):
            raise SpecError(
                "label-values must be two different non-empty strings "
                f"(negative, positive), got {values!r}"
            )
        if not isinstance(self.columns, tuple) or not self.columns:
            raise SpecError("columns must declare at least one feature column")
        for column in self.columns:
            if not isinstance(column, Column):
                raise SpecError(f"columns must be Column objects, got {column!r}")
        names: set[str] = set()
        for column in self.columns:
            if column.name in names:
                raise SpecError(f"column '{column.name}' is declared twice")
            names.add(column.name)
        if self.label in names:
            raise SpecError(f"label '{self.label}' is also declared as a feature column")
        if self.id_column is not None:
            if not isinstance(self.id_column, str) or not self.id_column:
                raise SpecError(
                    f"id-column must be a non-empty column name, got {self.id_column!r}"
                )
            if self.id_column in names:
                raise SpecError(
                    f"id-column '{self.id_column}' is also declared as a feature column"
                )
            if self.id_column == self.label:
                raise SpecError(f"id-column '{self.id_column}' is also the label")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the feature columns, in declared order."""
        return tuple(c.name for c in self.columns)

    @property
    def numeric_columns(self) -> tuple[Column, ...]:
        """The integer and float feature columns, in declared order."""
        return tuple(c for c in self.columns if c.is_numeric)

    @property
    def categorical_columns(self) -> tuple[Column, ...]:
        """The categorical feature columns, in declared order."""
        return tuple(c for c in self.columns if not c.is_numeric)

    @property
    def expected_columns(self) -> tuple[str, ...]:
        """Every column a data file must have: id (if any), features, label."""
        head = (self.id_column,) if self.id_column is not None else ()
        return (*head, *self.feature_names, self.label)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Schema:
        """Build a schema from a job spec's ``[dataset]`` table (as parsed by ``tomllib``).

        The ``name`` key is accepted and ignored. Unknown keys, missing keys and
        every inconsistency raise :class:`SpecError` naming the key or column.
        """
        if not isinstance(d, Mapping):
            raise SpecError("[dataset] must be a table")
        _check_keys(d, _DATASET_KEYS, "[dataset]")
        label = _required_str(d, "label", "[dataset]")
        id_column = d.get("id-column")
        if id_column is not None and not isinstance(id_column, str):
            raise SpecError(f"[dataset] id-column: expected a string, got {id_column!r}")
        raw_values = _required(d, "label-values", "[dataset]")
        if (
            not isinstance(raw_values, list)
            or len(raw_values) != 2
            or not all(isinstance(v, str) for v in raw_values)
        ):
            raise SpecError(
                "[dataset] label-values: expected two strings [negative, positive], "
                f"got {raw_values!r}"
            )
        raw_columns = _required(d, "columns", "[dataset]")
        if not isinstance(raw_columns, list) or not all(
            isinstance(c, Mapping) for c in raw_columns
        ):
            raise SpecError("[dataset] columns: expected [[dataset.columns]] tables")
        columns = tuple(_column_from_dict(c, i) for i, c in enumerate(raw_columns, start=1))
        try:
            return cls(
                label=label,
                label_values=(raw_values[0], raw_values[1]),
                columns=columns,
                id_column=id_column,
            )
        except SpecError as exc:
            raise SpecError(f"[dataset] {exc}") from None


def _check_keys(table: Mapping[str, object], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in table if k not in allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _required(table: Mapping[str, object], key: str, where: str) -> object:
    if key not in table:
        raise SpecError(f"{where}: missing key '{key}'")
    return table[key]


def _required_str(table: Mapping[str, object], key: str, where: str) -> str:
    value = _required(table, key, where)
    if not isinstance(value, str):
        raise SpecError(f"{where} {key}: expected a string, got {value!r}")
    return value


def _column_from_dict(table: Mapping[str, object], position: int) -> Column:
    where = f"[dataset] column #{position}"
    name = _required_str(table, "name", where)
    where = f"[dataset] column '{name}'"
    _check_keys(table, _COLUMN_KEYS, where)
    raw_kind = _required_str(table, "kind", where)
    try:
        kind = ColumnKind(raw_kind)
    except ValueError:
        allowed = ", ".join(k.value for k in ColumnKind)
        raise SpecError(f"{where} kind: '{raw_kind}' is not one of: {allowed}") from None

    vocabulary = table.get("vocabulary", [])
    if not isinstance(vocabulary, list) or not all(isinstance(v, str) for v in vocabulary):
        raise SpecError(f"{where} vocabulary: expected a list of strings, got {vocabulary!r}")
    nullable = table.get("nullable", False)
    if not isinstance(nullable, bool):
        raise SpecError(f"{where} nullable: expected true or false, got {nullable!r}")
    sentinel = table.get("sentinel")
    if sentinel is not None and (
        isinstance(sentinel, bool) or not isinstance(sentinel, int | float)
    ):
        raise SpecError(f"{where} sentinel: expected a number, got {sentinel!r}")
    transform = table.get("transform")
    if transform is not None and not isinstance(transform, str):
        raise SpecError(f"{where} transform: expected a string, got {transform!r}")
    bands = table.get("bands", [])
    if not isinstance(bands, list) or not all(
        isinstance(b, int | float) and not isinstance(b, bool) for b in bands
    ):
        raise SpecError(f"{where} bands: expected a list of numbers, got {bands!r}")
    try:
        return Column(
            name=name,
            kind=kind,
            vocabulary=tuple(vocabulary),
            nullable=nullable,
            sentinel=None if sentinel is None else float(sentinel),
            transform=transform,
            bands=tuple(bands),
        )
    except SpecError as exc:
        raise SpecError(f"[dataset] {exc}") from None
