"""Feature encoding from additive statistics: identical at every party, without sharing rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedprop.data.encoding import FeatureEncoder, apply_transform, local_stats, stats_layout
from fedprop.data.loader import read_party_csv
from fedprop.data.schema import SIGNED_LOG1P, TRANSFORMS, Column, ColumnKind, Schema
from fedprop.errors import FedpropError, SpecError

SCHEMA = Schema(
    label="y",
    label_values=("no", "yes"),
    id_column="cid",
    columns=(
        Column("age", ColumnKind.INTEGER),
        Column("job", ColumnKind.CATEGORICAL, vocabulary=("admin.", "retired", "student")),
        Column("balance", ColumnKind.INTEGER, transform=SIGNED_LOG1P),
        Column("pdays", ColumnKind.INTEGER, sentinel=-1),
        Column("rate", ColumnKind.FLOAT, nullable=True),
        Column("contact", ColumnKind.CATEGORICAL, vocabulary=("cellular", "unknown")),
    ),
)


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """A frame as the loader returns it."""
    rng = np.random.default_rng(seed)
    rate = rng.normal(3.0, 2.0, rows)
    rate[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "cid": pd.Series([str(i) for i in range(rows)], dtype=str),
            "age": rng.integers(18, 90, rows).astype(np.int64),
            "job": pd.Series(rng.choice(["admin.", "retired", "student"], rows), dtype=str),
            "balance": rng.integers(-5_000, 100_000, rows).astype(np.int64),
            "pdays": np.where(rng.random(rows) < 0.6, -1, rng.integers(1, 400, rows)),
            "rate": rate,
            "contact": pd.Series(rng.choice(["cellular", "unknown"], rows), dtype=str),
            "y": (rng.random(rows) < 0.15).astype(np.int64),
        }
    )


TINY = pd.DataFrame(
    {
        "cid": pd.Series(["a", "b", "c", "d"], dtype=str),
        "age": np.array([20, 30, 40, 50], dtype=np.int64),
        "job": pd.Series(["admin.", "admin.", "retired", "admin."], dtype=str),
        "balance": np.array([0, 9, -99, 0], dtype=np.int64),
        "pdays": np.array([-1, 10, -1, 30], dtype=np.int64),
        "rate": np.array([1.0, np.nan, 3.0, 5.0]),
        "contact": pd.Series(["unknown", "cellular", "cellular", "cellular"], dtype=str),
        "y": np.array([0, 1, 0, 1], dtype=np.int64),
    }
)


def test_stats_layout_names_every_slot() -> None:
    assert stats_layout(SCHEMA) == (
        "rows", "positives",
        "age.count", "age.sum", "age.sumsq",
        "balance.count", "balance.sum", "balance.sumsq",
        "pdays.count", "pdays.sum", "pdays.sumsq",
        "rate.count", "rate.sum", "rate.sumsq",
    )  # fmt: skip


def test_local_stats_counts_sums_and_squares_transformed_usable_values() -> None:
    stats = local_stats(TINY, SCHEMA)
    log10, log100 = math.log1p(9), math.log1p(99)
    expected = [
        4, 2,
        4, 140, 400 + 900 + 1600 + 2500,
        4, log10 - log100, log10**2 + log100**2,
        2, 40, 100 + 900,  # sentinel cells left out
        3, 9, 1 + 9 + 25,  # NaN left out
    ]  # fmt: skip
    assert stats.dtype == np.float64
    np.testing.assert_allclose(stats, expected, rtol=1e-15)


def test_local_stats_are_additive_across_parties() -> None:
    pooled = frame(3_000, seed=1)
    parts = [pooled.iloc[:500], pooled.iloc[500:2100], pooled.iloc[2100:]]
    summed = sum(local_stats(p, SCHEMA) for p in parts)
    whole = local_stats(pooled, SCHEMA)
    assert isinstance(summed, np.ndarray)
    np.testing.assert_allclose(summed, whole, rtol=1e-12)
    # Counts are exact.
    layout = stats_layout(SCHEMA)
    counts = [i for i, name in enumerate(layout) if name in ("rows", "positives")]
    counts += [i for i, name in enumerate(layout) if name.endswith(".count")]
    np.testing.assert_array_equal(summed[counts], whole[counts])


def test_encoder_from_summed_stats_equals_encoder_from_pooled_rows() -> None:
    pooled = frame(3_000, seed=2)
    parts = [pooled.iloc[:1000], pooled.iloc[1000:1001], pooled.iloc[1001:]]
    federated = FeatureEncoder.from_global_stats(
        SCHEMA, np.sum([local_stats(p, SCHEMA) for p in parts], axis=0)
    )
    central = FeatureEncoder.from_global_stats(SCHEMA, local_stats(pooled, SCHEMA))
    assert (federated.rows, federated.positives) == (central.rows, central.positives)
    np.testing.assert_allclose(federated.means, central.means, rtol=1e-12)
    np.testing.assert_allclose(federated.stds, central.stds, rtol=1e-12)
    np.testing.assert_allclose(federated.transform(pooled), central.transform(pooled), atol=1e-6)
    for part in parts:
        np.testing.assert_allclose(federated.transform(part), central.transform(part), atol=1e-6)


def test_means_and_stds_are_the_population_moments_of_usable_values() -> None:
    pooled = frame(2_000, seed=3)
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(pooled, SCHEMA))
    age = pooled["age"].to_numpy(float)
    balance = np.sign(pooled["balance"]) * np.log1p(np.abs(pooled["balance"]))
    pdays = pooled["pdays"][pooled["pdays"] != -1].to_numpy(float)
    rate = pooled["rate"].dropna().to_numpy()
    for got_mean, got_std, values in zip(
        encoder.means, encoder.stds, (age, balance, pdays, rate), strict=True
    ):
        assert got_mean == pytest.approx(np.mean(values), rel=1e-9)
        assert got_std == pytest.approx(np.std(values), rel=1e-9)
    assert encoder.rows == 2_000
    assert encoder.positives == int(pooled["y"].sum())
    assert encoder.positive_rate == pytest.approx(pooled["y"].mean())


def test_feature_names_numeric_with_indicators_then_full_vocabularies() -> None:
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(TINY, SCHEMA))
    assert encoder.feature_names == (
        "age", "balance", "pdays", "pdays=sentinel", "rate", "rate=missing",
        "job=admin.", "job=retired", "job=student", "contact=cellular", "contact=unknown",
    )  # fmt: skip
    assert encoder.n_features == 11


def test_transform_standardizes_and_marks_sentinel_and_missing_cells() -> None:
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(TINY, SCHEMA))
    x = encoder.transform(TINY)
    names = encoder.feature_names
    col = {name: x[:, names.index(name)] for name in names}

    assert x.dtype == np.float32 and x.shape == (4, 11)
    age_std = np.std([20, 30, 40, 50])
    np.testing.assert_allclose(col["age"], (np.array([20, 30, 40, 50]) - 35) / age_std, rtol=1e-6)
    # pdays: mean 20, std 10 over the two usable cells; sentinel cells sit at the mean.
    np.testing.assert_allclose(col["pdays"], [0, -1, 0, 1], atol=1e-6)
    np.testing.assert_array_equal(col["pdays=sentinel"], [1, 0, 1, 0])
    # rate: mean 3 over usable cells; the NaN sits at the mean and is flagged.
    rate_std = float(np.std([1.0, 3.0, 5.0]))
    np.testing.assert_allclose(col["rate"], [-2 / rate_std, 0, 0, 2 / rate_std], rtol=1e-6)
    np.testing.assert_array_equal(col["rate=missing"], [0, 1, 0, 0])
    # balance is signed-log1p transformed before standardizing.
    logged = np.sign([0, 9, -99, 0]) * np.log1p(np.abs([0, 9, -99, 0]))
    np.testing.assert_allclose(
        col["balance"], (logged - logged.mean()) / logged.std(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(col["job=admin."], [1, 1, 0, 1])
    np.testing.assert_array_equal(col["job=retired"], [0, 0, 1, 0])
    np.testing.assert_array_equal(col["job=student"], [0, 0, 0, 0])
    np.testing.assert_array_equal(col["contact=unknown"], [1, 0, 0, 0])


def test_standardized_columns_have_mean_0_and_std_1_on_the_pooled_rows() -> None:
    pooled = frame(5_000, seed=4)
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(pooled, SCHEMA))
    x = encoder.transform(pooled).astype(np.float64)
    names = encoder.feature_names
    usable = {
        "age": np.ones(len(pooled), dtype=bool),
        "balance": np.ones(len(pooled), dtype=bool),
        "pdays": pooled["pdays"].to_numpy() != -1,
        "rate": pooled["rate"].notna().to_numpy(),
    }
    for name, rows in usable.items():
        values = x[rows, names.index(name)]
        assert values.mean() == pytest.approx(0.0, abs=1e-5), name
        assert values.std() == pytest.approx(1.0, abs=1e-5), name


def test_one_hot_columns_align_across_parties_that_see_different_categories() -> None:
    pooled = frame(900, seed=5)
    only_admin = pooled[pooled["job"] == "admin."]
    no_admin = pooled[pooled["job"] != "admin."]
    stats = local_stats(only_admin, SCHEMA) + local_stats(no_admin, SCHEMA)
    encoder = FeatureEncoder.from_global_stats(SCHEMA, stats)
    names = list(encoder.feature_names)
    job = [names.index(f"job={v}") for v in ("admin.", "retired", "student")]

    x_admin, x_other = encoder.transform(only_admin), encoder.transform(no_admin)
    assert x_admin.shape[1] == x_other.shape[1] == encoder.n_features
    np.testing.assert_array_equal(x_admin[:, job], np.tile([1, 0, 0], (len(only_admin), 1)))
    assert not x_other[:, job[0]].any()
    np.testing.assert_array_equal(x_other[:, job].sum(axis=1), 1)
    expected = no_admin["job"].to_numpy()[:, None] == np.array(["admin.", "retired", "student"])
    np.testing.assert_array_equal(x_other[:, job], expected)


def test_labels_are_float32_zeros_and_ones() -> None:
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(TINY, SCHEMA))
    y = encoder.labels(TINY)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 1, 0, 1])


def test_a_constant_column_is_divided_by_one() -> None:
    constant = TINY.assign(age=np.int64(33))
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(constant, SCHEMA))
    assert encoder.means[0] == pytest.approx(33)
    assert encoder.stds[0] == 1.0
    np.testing.assert_allclose(encoder.transform(constant)[:, 0], 0.0, atol=1e-6)


def test_a_column_whose_cells_are_all_sentinels_encodes_to_zero_and_the_flag() -> None:
    never = TINY.assign(pdays=np.int64(-1))
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(never, SCHEMA))
    names = encoder.feature_names
    x = encoder.transform(never)
    assert (encoder.means[2], encoder.stds[2]) == (0.0, 1.0)
    np.testing.assert_array_equal(x[:, names.index("pdays")], 0)
    np.testing.assert_array_equal(x[:, names.index("pdays=sentinel")], 1)


def test_encodes_frames_read_by_the_loader(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    TINY.assign(y=np.where(TINY["y"] == 1, "yes", "no")).to_csv(path, index=False)
    loaded = read_party_csv(path, SCHEMA)
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(loaded, SCHEMA))
    reference = FeatureEncoder.from_global_stats(SCHEMA, local_stats(TINY, SCHEMA))
    np.testing.assert_array_equal(encoder.transform(loaded), reference.transform(TINY))
    np.testing.assert_array_equal(encoder.labels(loaded), reference.labels(TINY))


def test_every_declared_transform_is_implemented() -> None:
    for name in TRANSFORMS:
        column = Column("x", ColumnKind.FLOAT, transform=name)
        assert apply_transform(column, np.array([0.0, 1.0, -1.0])).shape == (3,)
    signed = Column("x", ColumnKind.FLOAT, transform=SIGNED_LOG1P)
    np.testing.assert_allclose(
        apply_transform(signed, np.array([-99.0, 0.0, 9.0])), [-math.log(100), 0, math.log(10)]
    )


# --- refusals ----------------------------------------------------------------------------------


def test_stats_of_the_wrong_length_are_refused() -> None:
    stats = local_stats(TINY, SCHEMA)
    with pytest.raises(SpecError, match=r"has shape \(13,\), but this dataset's layout has 14"):
        FeatureEncoder.from_global_stats(SCHEMA, stats[:-1])
    with pytest.raises(SpecError, match="layout"):
        FeatureEncoder.from_global_stats(SCHEMA, np.stack([stats, stats]))


def test_stats_with_zero_rows_are_refused() -> None:
    with pytest.raises(SpecError, match="zero training rows"):
        FeatureEncoder.from_global_stats(SCHEMA, np.zeros(len(stats_layout(SCHEMA))))


@pytest.mark.parametrize(
    ("slot", "value", "message"),
    [
        ("positives", 5.0, "5 positives for 4 rows"),
        ("positives", -1.0, "positives for 4 rows"),
        ("rows", 3.5, "rows must be a whole number"),
        ("age.sum", np.nan, "NaN or infinity"),
        ("age.count", 7.0, "counts 7 values of 'age' for 4 rows"),
    ],
)
def test_inconsistent_stats_are_refused(slot: str, value: float, message: str) -> None:
    stats = local_stats(TINY, SCHEMA)
    stats[stats_layout(SCHEMA).index(slot)] = value
    with pytest.raises(SpecError, match=message):
        FeatureEncoder.from_global_stats(SCHEMA, stats)


def test_a_category_outside_the_vocabulary_is_refused() -> None:
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(TINY, SCHEMA))
    bad = TINY.assign(job=pd.Series(["admin.", "pilot", "admin.", "admin."], dtype=str))
    with pytest.raises(FedpropError, match=r"column 'job': 'pilot' is not in .* \(row 2\)"):
        encoder.transform(bad)


def test_frames_not_read_by_the_loader_are_refused() -> None:
    encoder = FeatureEncoder.from_global_stats(SCHEMA, local_stats(TINY, SCHEMA))
    with pytest.raises(FedpropError, match="label column 'y' must hold 0/1 integers"):
        encoder.labels(TINY.assign(y=pd.Series(["no", "yes", "no", "yes"], dtype=str)))
    with pytest.raises(FedpropError, match="column 'age' must be numeric"):
        encoder.transform(TINY.assign(age=pd.Series(["1", "2", "3", "4"], dtype=str)))
    with pytest.raises(FedpropError, match="lacks column"):
        local_stats(TINY.drop(columns="pdays"), SCHEMA)
    with pytest.raises(FedpropError, match="'age' is not nullable"):
        local_stats(TINY.assign(age=[1.0, np.nan, 2.0, 3.0]), SCHEMA)


def test_encoder_fields_are_checked_on_construction() -> None:
    with pytest.raises(SpecError, match="one mean and one std per numeric column"):
        FeatureEncoder(SCHEMA, (0.0,), (1.0,), rows=4, positives=1)
    with pytest.raises(SpecError, match="stds must be finite and positive"):
        FeatureEncoder(SCHEMA, (0.0,) * 4, (1.0, 0.0, 1.0, 1.0), rows=4, positives=1)
