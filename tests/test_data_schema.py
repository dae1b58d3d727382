"""The dataset schema: parsing the job spec's [dataset] table and refusing bad declarations."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Callable
from typing import Any

import pytest

from fedprop.data.schema import SIGNED_LOG1P, Column, ColumnKind, Schema
from fedprop.errors import SpecError

DATASET_TOML = """
[dataset]
name = "bank-marketing"
id-column = "cid"
label = "y"
label-values = ["no", "yes"]

[[dataset.columns]]
name = "age"
kind = "integer"

[[dataset.columns]]
name = "job"
kind = "categorical"
vocabulary = ["admin.", "blue-collar", "unknown"]

[[dataset.columns]]
name = "balance"
kind = "integer"
transform = "signed-log1p"

[[dataset.columns]]
name = "pdays"
kind = "integer"
sentinel = -1

[[dataset.columns]]
name = "score"
kind = "float"
nullable = true
"""


def dataset() -> dict[str, Any]:
    """A fresh, mutable copy of the [dataset] table."""
    return copy.deepcopy(tomllib.loads(DATASET_TOML)["dataset"])


def column(d: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in d["columns"] if c["name"] == name)


def test_from_dict_reads_every_declaration() -> None:
    schema = Schema.from_dict(dataset())

    assert schema.label == "y"
    assert schema.label_values == ("no", "yes")
    assert schema.id_column == "cid"
    assert schema.feature_names == ("age", "job", "balance", "pdays", "score")
    assert schema.expected_columns == ("cid", "age", "job", "balance", "pdays", "score", "y")
    assert [c.name for c in schema.numeric_columns] == ["age", "balance", "pdays", "score"]
    assert [c.name for c in schema.categorical_columns] == ["job"]
    age, job, balance, pdays, score = schema.columns
    assert age == Column("age", ColumnKind.INTEGER)
    assert job.kind is ColumnKind.CATEGORICAL
    assert job.vocabulary == ("admin.", "blue-collar", "unknown")
    assert balance.transform == SIGNED_LOG1P
    assert pdays.sentinel == -1.0 and isinstance(pdays.sentinel, float)
    assert score.kind is ColumnKind.FLOAT and score.nullable
    assert not age.nullable and age.sentinel is None and age.transform is None


def test_from_dict_without_id_column_expects_features_and_label_only() -> None:
    d = dataset()
    del d["id-column"]
    schema = Schema.from_dict(d)
    assert schema.id_column is None
    assert schema.expected_columns == ("age", "job", "balance", "pdays", "score", "y")


def test_from_dict_ignores_the_dataset_name() -> None:
    with_name = Schema.from_dict(dataset())
    d = dataset()
    del d["name"]
    assert Schema.from_dict(d) == with_name


def test_schema_is_immutable_and_hashable() -> None:
    schema = Schema.from_dict(dataset())
    with pytest.raises(dataclasses.FrozenInstanceError):
        schema.label = "z"  # type: ignore[misc]
    assert hash(schema) == hash(Schema.from_dict(dataset()))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting ``key`` or ``column.key`` of the table."""

    def mutate(d: dict[str, Any]) -> None:
        if "." in path:
            name, key = path.split(".", 1)
            column(d, name)[key] = value
        else:
            d[path] = value

    return mutate


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        del d[key]

    return mutate


def _add_column(table: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d["columns"].append(table)

    return mutate


BAD_DECLARATIONS: list[tuple[str, Callable[[dict[str, Any]], None], tuple[str, ...]]] = [
    ("unknown dataset key", _set("labels", "y"), ("unknown key(s) labels",)),
    ("unknown column key", _set("age.sentinal", -1), ("column 'age'", "unknown key(s) sentinal")),
    ("unknown kind", _set("age.kind", "int"), ("column 'age'", "kind", "'int'", "integer")),
    (
        "duplicate column",
        _add_column({"name": "age", "kind": "float"}),
        ("column 'age'", "declared twice"),
    ),
    ("label is a feature", _set("label", "age"), ("label 'age'", "feature column")),
    ("id is a feature", _set("id-column", "job"), ("id-column 'job'", "feature column")),
    ("id is the label", _set("id-column", "y"), ("id-column 'y'", "label")),
    (
        "vocabulary on numeric",
        _set("age.vocabulary", ["1", "2"]),
        ("column 'age'", "vocabulary", "categorical"),
    ),
    ("sentinel on categorical", _set("job.sentinel", -1), ("column 'job'", "sentinel")),
    (
        "transform on categorical",
        _set("job.transform", "signed-log1p"),
        ("column 'job'", "transform"),
    ),
    ("nullable categorical", _set("job.nullable", True), ("column 'job'", "nullable")),
    ("unknown transform", _set("balance.transform", "log"), ("column 'balance'", "'log'")),
    ("no vocabulary", _set("job.vocabulary", []), ("column 'job'", "vocabulary")),
    (
        "duplicate category",
        _set("job.vocabulary", ["a", "b", "a"]),
        ("column 'job'", "'a' twice"),
    ),
    ("empty category", _set("job.vocabulary", ["a", ""]), ("column 'job'", "non-empty")),
    ("one label value", _set("label-values", ["no"]), ("label-values",)),
    ("equal label values", _set("label-values", ["no", "no"]), ("label-values", "different")),
    ("numeric label values", _set("label-values", [0, 1]), ("label-values",)),
    ("missing label", _delete("label"), ("missing key 'label'",)),
    ("missing label-values", _delete("label-values"), ("missing key 'label-values'",)),
    ("missing columns", _delete("columns"), ("missing key 'columns'",)),
    ("no columns", _set("columns", []), ("at least one feature column",)),
    ("column not a table", _set("columns", ["age"]), ("columns",)),
    ("column without name", _add_column({"kind": "float"}), ("column #6", "'name'")),
    ("column without kind", _add_column({"name": "x"}), ("column 'x'", "'kind'")),
    ("fractional sentinel", _set("pdays.sentinel", -1.5), ("column 'pdays'", "integer")),
    ("boolean sentinel", _set("pdays.sentinel", True), ("column 'pdays'", "sentinel")),
    ("text sentinel", _set("pdays.sentinel", "-1"), ("column 'pdays'", "sentinel")),
    ("infinite sentinel", _set("score.sentinel", float("inf")), ("column 'score'", "finite")),
    ("text nullable", _set("score.nullable", "yes"), ("column 'score'", "nullable")),
    ("id not a string", _set("id-column", 1), ("id-column",)),
    ("empty id", _set("id-column", ""), ("id-column",)),
    ("empty label", _set("label", ""), ("label",)),
]


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [pytest.param(m, f, id=case) for case, m, f in BAD_DECLARATIONS],
)
def test_from_dict_refuses_bad_declarations(
    mutate: Callable[[dict[str, Any]], None], fragments: tuple[str, ...]
) -> None:
    d = dataset()
    mutate(d)
    with pytest.raises(SpecError) as info:
        Schema.from_dict(d)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("[dataset]")
    for fragment in fragments:
        assert fragment in message


def test_direct_construction_runs_the_same_checks() -> None:
    with pytest.raises(SpecError, match="column 'job': a categorical column needs"):
        Column("job", ColumnKind.CATEGORICAL)
    with pytest.raises(SpecError, match="column 'age': vocabulary is only allowed"):
        Column("age", ColumnKind.INTEGER, vocabulary=("1",))
    with pytest.raises(SpecError, match="declared twice"):
        Schema("y", ("no", "yes"), (Column("a", ColumnKind.FLOAT), Column("a", ColumnKind.FLOAT)))
    with pytest.raises(SpecError, match="label-values"):
        Schema("y", ("yes", "yes"), (Column("a", ColumnKind.FLOAT),))


def test_column_kind_given_as_text_is_normalized() -> None:
    column = Column("age", "integer")  # type: ignore[arg-type]
    assert column.kind is ColumnKind.INTEGER
    with pytest.raises(SpecError, match="kind 'int' is not one of: integer, float, categorical"):
        Column("age", "int")  # type: ignore[arg-type]
