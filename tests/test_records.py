"""Protocol messages survive the trip through Flower records, and bad content is refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedprop.apps.records import FIELDS_RECORD, from_record, to_record
from fedprop.errors import FedpropError
from fedprop.protocols.hfl import ContributionReply, ModelRequest, ReleaseReply


def test_round_trip_keeps_values_and_dtypes() -> None:
    request = ModelRequest("spec text", b"keys", 3, b"\x00stats", b"model\xff")
    assert from_record(ModelRequest, to_record(request)) == request
    reply = ReleaseReply("bank-a", np.arange(5, dtype=np.float64) / 3, b"sig")
    decoded = from_record(ReleaseReply, to_record(reply))
    assert decoded.values.dtype == np.float64
    np.testing.assert_array_equal(decoded.values, reply.values)


def test_optional_array_may_be_absent() -> None:
    decoded = from_record(ModelRequest, to_record(ModelRequest("s", b"", 1, b"x", None)))
    assert decoded.model is None


def test_missing_field_is_refused() -> None:
    content = to_record(ContributionReply("bank-a", b"payload", b"sig"))
    del content[FIELDS_RECORD]["party"]
    with pytest.raises(FedpropError, match="missing field 'party'"):
        from_record(ContributionReply, content)


def test_missing_array_is_refused() -> None:
    content = to_record(ContributionReply("bank-a", b"payload", b"sig"))
    with pytest.raises(FedpropError, match="missing array 'values'"):
        from_record(ReleaseReply, content)


def test_wrong_type_is_refused() -> None:
    content = to_record(ContributionReply("bank-a", b"payload", b"sig"))
    content[FIELDS_RECORD]["payload"] = "text, not bytes"
    with pytest.raises(FedpropError, match="wrong type"):
        from_record(ContributionReply, content)


def test_foreign_content_is_refused() -> None:
    with pytest.raises(FedpropError, match="not a fedprop"):
        from_record(ContributionReply, RecordDict({"config": ConfigRecord({"lr": 0.1})}))
