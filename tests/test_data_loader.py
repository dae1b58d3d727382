"""Reading party CSV files: types per the schema, and one precise error per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedprop.data.loader import TEST_FILE, TRAIN_FILE, PartyData, load_party, read_party_csv
from fedprop.data.schema import SIGNED_LOG1P, Column, ColumnKind, Schema
from fedprop.errors import DataValidationError

SCHEMA = Schema(
    label="y",
    label_values=("no", "yes"),
    id_column="cid",
    columns=(
        Column("age", ColumnKind.INTEGER),
        Column("balance", ColumnKind.INTEGER, transform=SIGNED_LOG1P),
        Column("pdays", ColumnKind.INTEGER, sentinel=-1),
        Column("visits", ColumnKind.INTEGER, nullable=True),
        Column("rate", ColumnKind.FLOAT, nullable=True),
        Column("score", ColumnKind.FLOAT),
        Column("job", ColumnKind.CATEGORICAL, vocabulary=("admin.", "NA", "unknown")),
    ),
)
HEADER = "cid,age,balance,pdays,visits,rate,score,job,y"
ROWS = (
    "0,30,-120,-1,3,0.5,1.25,admin.,no",
    "1,45,2000,12,,,-3e2,NA,yes",
    "2,61,0,-1,NaN,nan,0,unknown,no",
)


def write(tmp_path: Path, text: str, name: str = TRAIN_FILE) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def csv(*rows: str, header: str = HEADER) -> str:
    return "\n".join((header, *rows)) + "\n"


def with_cell(row: int, column: str, value: str) -> str:
    """The good file with one cell (1-based data row) replaced."""
    names = HEADER.split(",")
    rows = [r.split(",") for r in ROWS]
    rows[row - 1][names.index(column)] = value
    return csv(*(",".join(r) for r in rows))


def refused(path: Path, schema: Schema = SCHEMA) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        read_party_csv(path, schema)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    assert message.startswith(str(path)), "errors name the file"
    return info.value


def assert_names(error: DataValidationError, column: str | None, *fragments: str) -> None:
    message = str(error)
    assert error.column == column
    if column is not None:
        assert f"column '{column}'" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- good files --------------------------------------------------------------------------------


def test_reads_each_column_with_its_declared_type(tmp_path: Path) -> None:
    frame = read_party_csv(write(tmp_path, csv(*ROWS)), SCHEMA)

    assert list(frame.columns) == list(SCHEMA.expected_columns)
    assert frame["age"].dtype == np.int64
    assert frame["balance"].dtype == np.int64
    assert frame["pdays"].dtype == np.int64
    assert frame["visits"].dtype == np.float64, "a nullable integer column is float64"
    assert frame["rate"].dtype == np.float64
    assert frame["score"].dtype == np.float64
    assert frame["y"].dtype == np.int64
    assert pd.api.types.is_string_dtype(frame["job"].dtype)
    assert pd.api.types.is_string_dtype(frame["cid"].dtype)

    assert frame["age"].tolist() == [30, 45, 61]
    assert frame["balance"].tolist() == [-120, 2000, 0]
    assert frame["pdays"].tolist() == [-1, 12, -1]
    np.testing.assert_array_equal(frame["visits"], [3.0, np.nan, np.nan])
    np.testing.assert_array_equal(frame["rate"], [0.5, np.nan, np.nan])
    assert frame["score"].tolist() == [1.25, -300.0, 0.0]
    assert frame["y"].tolist() == [0, 1, 0]
    assert frame["cid"].tolist() == ["0", "1", "2"]


def test_category_text_that_looks_missing_stays_a_category(tmp_path: Path) -> None:
    frame = read_party_csv(write(tmp_path, csv(*ROWS)), SCHEMA)
    assert frame["job"].tolist() == ["admin.", "NA", "unknown"]
    assert not frame["job"].isna().any()


def test_column_order_in_the_file_does_not_matter(tmp_path: Path) -> None:
    names = HEADER.split(",")
    order = list(reversed(range(len(names))))
    shuffled = [",".join(r.split(",")[i] for i in order) for r in ROWS]
    header = ",".join(names[i] for i in order)
    frame = read_party_csv(write(tmp_path, csv(*shuffled, header=header)), SCHEMA)
    expected = read_party_csv(write(tmp_path, csv(*ROWS), "other.csv"), SCHEMA)
    pd.testing.assert_frame_equal(frame, expected)


def test_schema_without_id_column_reads_files_without_one(tmp_path: Path) -> None:
    schema = Schema("y", ("no", "yes"), (Column("age", ColumnKind.INTEGER),))
    frame = read_party_csv(write(tmp_path, "age,y\n30,yes\n40,no\n"), schema)
    assert list(frame.columns) == ["age", "y"]
    assert frame["y"].tolist() == [1, 0]


def test_quoted_cells_are_read_as_their_text(tmp_path: Path) -> None:
    schema = Schema("y", ("no", "yes"), (Column("c", ColumnKind.CATEGORICAL, ("a,b", "c")),))
    frame = read_party_csv(write(tmp_path, 'c,y\n"a,b",yes\nc,no\n'), schema)
    assert frame["c"].tolist() == ["a,b", "c"]


def test_load_party_reads_train_and_test_and_names_the_party(tmp_path: Path) -> None:
    folder = tmp_path / "bank-c"
    folder.mkdir()
    write(folder, csv(*ROWS), TRAIN_FILE)
    write(folder, csv(ROWS[0]), TEST_FILE)
    party = load_party(folder, SCHEMA)
    assert isinstance(party, PartyData)
    assert party.name == "bank-c"
    assert len(party.train) == 3 and len(party.test) == 1


# --- bad files: one test per problem -----------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error = refused(tmp_path / "train.csv")
    assert_names(error, None, "file not found")


def test_empty_file(tmp_path: Path) -> None:
    error = refused(write(tmp_path, ""))
    assert_names(error, None, "empty")


def test_header_only(tmp_path: Path) -> None:
    error = refused(write(tmp_path, HEADER + "\n"))
    assert_names(error, None, "no data rows")


def test_missing_column(tmp_path: Path) -> None:
    header = HEADER.replace(",pdays", "")
    rows = [r.replace(",-1,", ",", 1).replace(",12,", ",", 1) for r in ROWS]
    error = refused(write(tmp_path, csv(*rows, header=header)))
    assert_names(error, "pdays", "missing from the header")


def test_several_missing_columns_are_all_named(tmp_path: Path) -> None:
    error = refused(write(tmp_path, "cid,age,y\n0,30,no\n"))
    assert_names(error, "balance", "missing", "'pdays'", "'job'")


def test_extra_column(tmp_path: Path) -> None:
    rows = [r + ",42" for r in ROWS]
    error = refused(write(tmp_path, csv(*rows, header=HEADER + ",duration")))
    assert_names(error, "duration", "not declared in the dataset schema")


def test_duplicate_column_header(tmp_path: Path) -> None:
    rows = [r + ",1" for r in ROWS]
    error = refused(write(tmp_path, csv(*rows, header=HEADER + ",age")))
    assert_names(error, "age", "more than once in the header")


def test_text_in_an_integer_column(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(2, "age", "abc")))
    assert_names(error, "age", "'abc' is not an integer", "row 2")


def test_fraction_in_an_integer_column(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(3, "balance", "3.5")))
    assert_names(error, "balance", "'3.5' is not an integer", "row 3")


def test_integer_too_large_for_int64(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(1, "balance", "99999999999999999999")))
    assert_names(error, "balance", "'99999999999999999999'", "64-bit", "row 1")


def test_text_in_a_float_column(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(2, "score", "12.5.1")))
    assert_names(error, "score", "'12.5.1' is not a number", "row 2")


def test_infinity_in_a_float_column(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(3, "score", "inf")))
    assert_names(error, "score", "'inf' is not a finite number", "row 3")


def test_empty_cell_in_a_column_that_is_not_nullable(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(2, "age", "")))
    assert_names(error, "age", "missing value ''", "not nullable", "row 2")


def test_nan_cell_in_a_column_that_is_not_nullable(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(3, "score", "NaN")))
    assert_names(error, "score", "missing value 'NaN'", "not nullable", "row 3")


def test_category_not_in_the_vocabulary(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(2, "job", "Admin.")))
    assert_names(error, "job", "'Admin.' is not in the column's vocabulary", "row 2", "'admin.'")


def test_empty_categorical_cell(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(3, "job", "")))
    assert_names(error, "job", "empty cell", "row 3")


def test_label_column_missing(tmp_path: Path) -> None:
    header = HEADER.removesuffix(",y")
    rows = [r.rsplit(",", 1)[0] for r in ROWS]
    error = refused(write(tmp_path, csv(*rows, header=header)))
    assert_names(error, "y", "label column is missing")


def test_label_value_not_a_declared_label_value(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(2, "y", "1")))
    assert_names(error, "y", "label '1' is not one of the label values", "'no', 'yes'", "row 2")


def test_empty_label_cell(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(3, "y", "")))
    assert_names(error, "y", "empty label cell", "row 3")


def test_duplicate_ids(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(3, "cid", "0")))
    assert_names(error, "cid", "duplicate id '0'", "rows 1 and 3")


def test_empty_id(tmp_path: Path) -> None:
    error = refused(write(tmp_path, with_cell(2, "cid", "")))
    assert_names(error, "cid", "empty id", "row 2")


def test_row_with_too_many_fields(tmp_path: Path) -> None:
    rows = list(ROWS)
    rows[1] += ",surplus"
    error = refused(write(tmp_path, csv(*rows)))
    assert_names(error, None, "row 2 has 10 fields but the header has 9")


def test_the_count_of_bad_cells_is_reported(tmp_path: Path) -> None:
    rows = [r.replace("admin.", "x").replace("unknown", "y") for r in ROWS]
    error = refused(write(tmp_path, csv(*rows)))
    assert_names(error, "job", "'x'", "row 1", "2 bad cells")


def test_load_party_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="party data folder not found") as info:
        load_party(tmp_path / "bank-x", SCHEMA)
    assert info.value.path == str(tmp_path / "bank-x")


def test_load_party_names_the_missing_test_file(tmp_path: Path) -> None:
    write(tmp_path, csv(*ROWS), TRAIN_FILE)
    with pytest.raises(DataValidationError) as info:
        load_party(tmp_path, SCHEMA)
    assert info.value.path == str(tmp_path / TEST_FILE)
    assert "file not found" in str(info.value)
