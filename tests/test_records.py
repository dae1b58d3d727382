"""Protocol messages survive the trip through Flower records, and bad content is refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedprop.apps.records import FIELDS_RECORD, from_record, to_record
from fedprop.errors import FedpropError
from fedprop.protocols.hfl import ModelRequest, StatsReply, TrainReply


def test_round_trip_keeps_values_and_dtypes() -> None:
    request = ModelRequest("spec text", 3, np.arange(5, dtype=np.float64), np.ones(4) / 3)
    decoded = from_record(ModelRequest, to_record(request))
    assert decoded.spec == "spec text" and decoded.round == 3
    assert decoded.stats.dtype == np.float64
    np.testing.assert_array_equal(decoded.stats, request.stats)
    assert decoded.model is not None
    np.testing.assert_array_equal(decoded.model, request.model)


def test_optional_array_may_be_absent() -> None:
    decoded = from_record(ModelRequest, to_record(ModelRequest("s", 1, np.zeros(2), None)))
    assert decoded.model is None


def test_missing_field_is_refused() -> None:
    content = to_record(StatsReply("bank-a", np.zeros(3)))
    del content[FIELDS_RECORD]["party"]
    with pytest.raises(FedpropError, match="missing field 'party'"):
        from_record(StatsReply, content)


def test_missing_array_is_refused() -> None:
    content = to_record(TrainReply("bank-a", np.zeros(3), 0.5))
    with pytest.raises(FedpropError, match="missing array 'stats'"):
        from_record(StatsReply, content)


def test_wrong_type_is_refused() -> None:
    content = to_record(TrainReply("bank-a", np.zeros(3), 0.5))
    content[FIELDS_RECORD]["train_loss"] = "high"
    with pytest.raises(FedpropError, match="wrong type"):
        from_record(TrainReply, content)


def test_foreign_content_is_refused() -> None:
    with pytest.raises(FedpropError, match="not a fedprop"):
        from_record(StatsReply, RecordDict({"config": ConfigRecord({"lr": 0.1})}))
