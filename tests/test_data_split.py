"""Splitting bank-full.csv into one folder per bank: grouping, stratification, atomic output."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedprop.data.loader import TEST_FILE, TRAIN_FILE, load_party
from fedprop.data.schema import SIGNED_LOG1P, Column, ColumnKind, Schema
from fedprop.data.split import (
    BANK_FULL_COLUMNS,
    LEAKY_COLUMNS,
    PARTY_GROUPS,
    OutputExistsError,
    SplitSummary,
    split_bank_marketing,
)
from fedprop.errors import DataValidationError, FedpropError

REAL_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bank-full.csv"
REAL_ROWS = 45_211

JOBS = tuple(sorted(j for group in PARTY_GROUPS.values() for j in group))
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "job": JOBS,
    "marital": ("divorced", "married", "single"),
    "education": ("primary", "secondary", "tertiary", "unknown"),
    "default": ("no", "yes"),
    "housing": ("no", "yes"),
    "loan": ("no", "yes"),
    "contact": ("cellular", "telephone", "unknown"),
    "month": MONTHS,
    "poutcome": ("failure", "other", "success", "unknown"),
}
INTEGERS = ("age", "balance", "day", "campaign", "pdays", "previous")


def bank_schema() -> Schema:
    """The schema of the split's output files (bank-full without duration, plus cid)."""
    columns = []
    for name in BANK_FULL_COLUMNS:
        if name in VOCABULARIES:
            columns.append(Column(name, ColumnKind.CATEGORICAL, vocabulary=VOCABULARIES[name]))
        elif name == "pdays":
            columns.append(Column(name, ColumnKind.INTEGER, sentinel=-1))
        elif name == "balance":
            columns.append(Column(name, ColumnKind.INTEGER, transform=SIGNED_LOG1P))
        elif name in INTEGERS:
            columns.append(Column(name, ColumnKind.INTEGER))
    return Schema(label="y", label_values=("no", "yes"), columns=tuple(columns), id_column="cid")


def bank_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    """A small bank-full-like frame: every job, about 20% positives."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {name: rng.choice(VOCABULARIES[name], rows) for name in VOCABULARIES},
    )
    frame["job"] = [JOBS[i % len(JOBS)] for i in range(rows)]
    for name in INTEGERS:
        frame[name] = rng.integers(-5, 500, rows)
    frame["pdays"] = np.where(rng.random(rows) < 0.7, -1, frame["pdays"])
    frame["duration"] = rng.integers(0, 900, rows)
    frame["y"] = np.where(rng.random(rows) < 0.2, "yes", "no")
    return frame[list(BANK_FULL_COLUMNS)]


def write_source(path: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as bank-full.csv is written: ';'-separated, strings quoted."""
    frame.to_csv(path, sep=";", index=False, quoting=csv.QUOTE_NONNUMERIC)
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "bank-full.csv", bank_rows(600))


def read_split(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / name, dtype=str, keep_default_na=False)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != "bank-full.csv")


# --- synthetic source --------------------------------------------------------------------------


def test_writes_train_and_test_for_every_party(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "parties"
    summaries = split_bank_marketing(source, out)

    assert [s.party for s in summaries] == list(PARTY_GROUPS)
    assert sorted(p.name for p in out.iterdir()) == sorted(PARTY_GROUPS)
    for s in summaries:
        assert s.folder == out / s.party
        assert sorted(p.name for p in s.folder.iterdir()) == [TEST_FILE, TRAIN_FILE]
        train, test = read_split(s.folder, TRAIN_FILE), read_split(s.folder, TEST_FILE)
        assert (s.train_rows, s.test_rows) == (len(train), len(test))
        assert s.train_positive_rate == pytest.approx((train["y"] == "yes").mean())
        assert s.test_positive_rate == pytest.approx((test["y"] == "yes").mean())


def test_output_columns_are_cid_then_source_columns_without_duration(
    source: Path, tmp_path: Path
) -> None:
    split_bank_marketing(source, tmp_path / "parties")
    expected = ["cid", *(c for c in BANK_FULL_COLUMNS if c not in LEAKY_COLUMNS)]
    for party in PARTY_GROUPS:
        for name in (TRAIN_FILE, TEST_FILE):
            header = (tmp_path / "parties" / party / name).read_text().splitlines()[0]
            assert header.split(",") == expected
    assert "duration" not in expected


def test_rows_go_to_their_job_group_and_keep_their_source_values(
    source: Path, tmp_path: Path
) -> None:
    split_bank_marketing(source, tmp_path / "parties")
    original = pd.read_csv(source, sep=";", dtype=str, keep_default_na=False)
    seen: list[int] = []
    for party, groups in PARTY_GROUPS.items():
        for name in (TRAIN_FILE, TEST_FILE):
            frame = read_split(tmp_path / "parties" / party, name)
            assert set(frame["job"]) <= set(groups)
            cids = frame["cid"].astype(int).to_numpy()
            assert list(cids) == sorted(cids), "rows keep their source order"
            pd.testing.assert_frame_equal(
                frame.drop(columns="cid").reset_index(drop=True),
                original.drop(columns="duration").iloc[cids].reset_index(drop=True),
            )
            seen.extend(cids)
    assert sorted(seen) == list(range(len(original))), "every row once, in exactly one file"


def test_each_label_value_is_split_in_the_test_fraction(source: Path, tmp_path: Path) -> None:
    split_bank_marketing(source, tmp_path / "parties", test_fraction=0.25)
    for party in PARTY_GROUPS:
        train = read_split(tmp_path / "parties" / party, TRAIN_FILE)
        test = read_split(tmp_path / "parties" / party, TEST_FILE)
        for value in ("no", "yes"):
            n_train, n_test = (train["y"] == value).sum(), (test["y"] == value).sum()
            assert n_test == int(np.floor((n_train + n_test) * 0.25 + 0.5))


def test_the_same_seed_gives_identical_files(source: Path, tmp_path: Path) -> None:
    split_bank_marketing(source, tmp_path / "first", seed=7)
    split_bank_marketing(source, tmp_path / "second", seed=7)
    for party in PARTY_GROUPS:
        for name in (TRAIN_FILE, TEST_FILE):
            first = (tmp_path / "first" / party / name).read_bytes()
            assert first == (tmp_path / "second" / party / name).read_bytes()


def test_another_seed_gives_another_split(source: Path, tmp_path: Path) -> None:
    split_bank_marketing(source, tmp_path / "first", seed=7)
    split_bank_marketing(source, tmp_path / "second", seed=8)
    first = read_split(tmp_path / "first" / "bank-a", TEST_FILE)["cid"].tolist()
    second = read_split(tmp_path / "second" / "bank-a", TEST_FILE)["cid"].tolist()
    assert first != second


def test_split_files_load_with_the_bank_schema(source: Path, tmp_path: Path) -> None:
    split_bank_marketing(source, tmp_path / "parties")
    party = load_party(tmp_path / "parties" / "bank-d", bank_schema())
    assert party.name == "bank-d"
    assert set(party.train["job"]) <= set(PARTY_GROUPS["bank-d"])
    assert "unknown" in set(party.train["job"]) | set(party.test["job"])
    assert set(party.train["y"]) <= {0, 1}


# --- atomic output -----------------------------------------------------------------------------


def test_refuses_a_non_empty_output_folder(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "parties"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="already exists and is not empty") as info:
        split_bank_marketing(source, out)
    assert isinstance(info.value, FedpropError)
    assert str(out) in str(info.value)
    assert (out / "notes.txt").read_text() == "keep me"
    assert siblings(out) == ["parties"], "no temporary folder is left behind"


def test_an_empty_output_folder_is_used(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "parties"
    out.mkdir()
    split_bank_marketing(source, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(PARTY_GROUPS)
    assert siblings(out) == ["parties"]


def test_overwrite_replaces_an_earlier_split(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "parties"
    split_bank_marketing(source, out, seed=1)
    before = read_split(out / "bank-b", TEST_FILE)["cid"].tolist()
    split_bank_marketing(source, out, seed=2, overwrite=True)
    after = read_split(out / "bank-b", TEST_FILE)["cid"].tolist()
    assert before != after
    assert siblings(out) == ["parties"]


def test_overwrite_refuses_a_folder_that_is_not_a_split(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "parties"
    split_bank_marketing(source, out)
    (out / "bank-a" / "model.pt").write_text("weights")
    with pytest.raises(OutputExistsError, match="does not look like an earlier split"):
        split_bank_marketing(source, out, overwrite=True)
    assert (out / "bank-a" / "model.pt").read_text() == "weights"


def test_an_interrupted_split_leaves_no_party_folders(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_to_csv = pd.DataFrame.to_csv
    calls = 0

    def failing_to_csv(self: pd.DataFrame, *args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise OSError("disk full")
        return real_to_csv(self, *args, **kwargs)  # type: ignore[call-overload]

    out = tmp_path / "parties"
    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(OSError, match="disk full"):
        split_bank_marketing(source, out)
    assert not out.exists()
    assert siblings(out) == []


def test_an_interrupted_overwrite_keeps_the_earlier_split(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "parties"
    split_bank_marketing(source, out, seed=1)
    before = {p: (out / p / TRAIN_FILE).read_bytes() for p in PARTY_GROUPS}

    def failing_to_csv(self: pd.DataFrame, *args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(OSError, match="disk full"):
        split_bank_marketing(source, out, seed=2, overwrite=True)
    assert {p: (out / p / TRAIN_FILE).read_bytes() for p in PARTY_GROUPS} == before
    assert siblings(out) == ["parties"]


def test_a_failed_rename_restores_the_earlier_split(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "parties"
    split_bank_marketing(source, out, seed=1)
    before = {p: (out / p / TEST_FILE).read_bytes() for p in PARTY_GROUPS}
    real_replace = os.replace

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        if Path(src).name.endswith(".tmp"):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        split_bank_marketing(source, out, seed=2, overwrite=True)
    assert {p: (out / p / TEST_FILE).read_bytes() for p in PARTY_GROUPS} == before
    assert siblings(out) == ["parties"]


# --- bad sources -------------------------------------------------------------------------------


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="source file not found") as info:
        split_bank_marketing(tmp_path / "nope.csv", tmp_path / "parties")
    assert info.value.path == str(tmp_path / "nope.csv")
    assert not (tmp_path / "parties").exists()


def test_source_missing_a_column(tmp_path: Path) -> None:
    path = write_source(tmp_path / "bank-full.csv", bank_rows(100).drop(columns="pdays"))
    with pytest.raises(DataValidationError) as info:
        split_bank_marketing(path, tmp_path / "parties")
    assert info.value.column == "pdays"
    assert "missing from the header" in str(info.value)


def test_comma_separated_source_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "bank-full.csv"
    bank_rows(50).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="';'-separated"):
        split_bank_marketing(path, tmp_path / "parties")


def test_source_with_an_extra_column(tmp_path: Path) -> None:
    frame = bank_rows(100).assign(extra=1)
    path = write_source(tmp_path / "bank-full.csv", frame)
    with pytest.raises(DataValidationError, match=r"not a bank-full\.csv column") as info:
        split_bank_marketing(path, tmp_path / "parties")
    assert info.value.column == "extra"


def test_source_with_header_only(tmp_path: Path) -> None:
    path = write_source(tmp_path / "bank-full.csv", bank_rows(0))
    with pytest.raises(DataValidationError, match="no data rows"):
        split_bank_marketing(path, tmp_path / "parties")


def test_source_with_a_job_outside_every_group(tmp_path: Path) -> None:
    frame = bank_rows(100)
    frame.loc[41, "job"] = "pilot"
    path = write_source(tmp_path / "bank-full.csv", frame)
    with pytest.raises(DataValidationError, match=r"'pilot' is not one of: .*\(row 42\)") as info:
        split_bank_marketing(path, tmp_path / "parties")
    assert info.value.column == "job"


def test_source_with_a_label_other_than_yes_or_no(tmp_path: Path) -> None:
    frame = bank_rows(100)
    frame.loc[9, "y"] = "1"
    path = write_source(tmp_path / "bank-full.csv", frame)
    with pytest.raises(DataValidationError, match=r"'1' is not one of: no, yes \(row 10\)") as info:
        split_bank_marketing(path, tmp_path / "parties")
    assert info.value.column == "y"


def test_a_party_without_rows_is_refused(tmp_path: Path) -> None:
    frame = bank_rows(100)
    frame = frame[~frame["job"].isin(PARTY_GROUPS["bank-c"])]
    path = write_source(tmp_path / "bank-full.csv", frame)
    with pytest.raises(DataValidationError, match="party 'bank-c' would get 0 training"):
        split_bank_marketing(path, tmp_path / "parties")
    assert not (tmp_path / "parties").exists()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_test_fraction_must_be_between_0_and_1(
    source: Path, tmp_path: Path, fraction: float
) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_bank_marketing(source, tmp_path / "parties", test_fraction=fraction)


# --- the real bank-full.csv --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SplitSummary]]:
    if not REAL_SOURCE.is_file():
        pytest.skip(f"{REAL_SOURCE} is not available")
    out = tmp_path_factory.mktemp("real") / "parties"
    return out, split_bank_marketing(REAL_SOURCE, out)


def test_real_split_covers_every_row_once(real_split: tuple[Path, list[SplitSummary]]) -> None:
    out, summaries = real_split
    assert sum(s.train_rows + s.test_rows for s in summaries) == REAL_ROWS
    cids: list[int] = []
    for party in PARTY_GROUPS:
        for name in (TRAIN_FILE, TEST_FILE):
            cids.extend(read_split(out / party, name)["cid"].astype(int))
    assert len(cids) == len(set(cids)) == REAL_ROWS
    assert set(cids) == set(range(REAL_ROWS))


def test_real_split_train_and_test_positive_rates_agree(
    real_split: tuple[Path, list[SplitSummary]],
) -> None:
    _, summaries = real_split
    for s in summaries:
        assert abs(s.train_positive_rate - s.test_positive_rate) < 0.01, s.party
        assert s.test_rows / (s.train_rows + s.test_rows) == pytest.approx(0.2, abs=0.001)
    rates = {
        s.party: (s.train_rows * s.train_positive_rate + s.test_rows * s.test_positive_rate)
        / (s.train_rows + s.test_rows)
        for s in summaries
    }
    # Positive rates per job group, as documented with the shared data.
    assert rates["bank-a"] == pytest.approx(0.078, abs=0.001)
    assert rates["bank-b"] == pytest.approx(0.129, abs=0.001)
    assert rates["bank-c"] == pytest.approx(0.115, abs=0.001)
    assert rates["bank-d"] == pytest.approx(0.213, abs=0.001)


def test_real_split_has_no_duration_and_loads_with_the_bank_schema(
    real_split: tuple[Path, list[SplitSummary]],
) -> None:
    out, summaries = real_split
    schema = bank_schema()
    for s in summaries:
        party = load_party(out / s.party, schema)
        assert "duration" not in party.train.columns
        assert len(party.train) == s.train_rows and len(party.test) == s.test_rows


def test_real_split_is_deterministic(
    real_split: tuple[Path, list[SplitSummary]], tmp_path: Path
) -> None:
    out, _ = real_split
    again = tmp_path / "again"
    split_bank_marketing(REAL_SOURCE, again)
    for party in PARTY_GROUPS:
        for name in (TRAIN_FILE, TEST_FILE):
            assert (out / party / name).read_bytes() == (again / party / name).read_bytes()


def test_real_file_vocabularies_and_integer_columns() -> None:
    """The categories a job spec must declare for bank-full.csv, exactly."""
    if not REAL_SOURCE.is_file():
        pytest.skip(f"{REAL_SOURCE} is not available")
    frame = pd.read_csv(REAL_SOURCE, sep=";", dtype=str, keep_default_na=False)
    assert tuple(frame.columns) == BANK_FULL_COLUMNS
    assert len(frame) == REAL_ROWS
    for name, vocabulary in VOCABULARIES.items():
        assert set(frame[name]) == set(vocabulary), name
    assert set(frame["month"]) == set(MONTHS)
    for name in (*INTEGERS, "duration"):
        assert frame[name].str.fullmatch(r"-?\d+").all(), name
    assert set(frame["y"]) == {"no", "yes"}
    assert os.path.getsize(REAL_SOURCE) == 4_610_348
