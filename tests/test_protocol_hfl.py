"""The hfl-train protocol run in-process (no Flower): FedAvg arithmetic and quality."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedprop.data.encoding import local_stats
from fedprop.data.loader import load_party
from fedprop.errors import JobFailedError
from fedprop.models.baselines import federated_model, train_on
from fedprop.protocols.hfl import (
    HflNode,
    InProcessTransport,
    PlaintextSum,
    Step,
    decode_average,
    encode_update,
    run_hfl,
)
from fedprop.spec import JobSpec


def test_fedavg_is_the_example_weighted_mean() -> None:
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=6) for _ in range(3)]
    counts = [10, 250, 3]
    summed = PlaintextSum().add([encode_update(w, n) for w, n in zip(weights, counts, strict=True)])
    expected = sum(w * n for w, n in zip(weights, counts, strict=True)) / sum(counts)
    np.testing.assert_allclose(decode_average(summed), expected, rtol=1e-12)


def test_plaintext_sum_refuses_bad_vectors() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        PlaintextSum().add([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="NaN"):
        PlaintextSum().add([np.zeros(3), np.array([0.0, np.nan, 1.0])])
    with pytest.raises(ValueError, match="at least one example"):
        encode_update(np.zeros(3), 0)


def _nodes(spec: JobSpec, party_dirs: Mapping[str, Path]) -> dict[str, HflNode]:
    return {p: HflNode(spec, load_party(party_dirs[p], spec.schema)) for p in spec.parties}


def test_federated_logreg_matches_centralized(
    spec: JobSpec, party_dirs: Mapping[str, Path]
) -> None:
    # The spec's full 20 rounds: the bar is about a converged federation.
    nodes = _nodes(spec, party_dirs)
    transport = InProcessTransport(nodes)
    result = run_hfl(spec, transport)

    assert transport.steps == [Step.STATS] + [Step.TRAIN, Step.EVALUATE] * spec.train.rounds
    assert len(result.rounds) == spec.train.rounds
    parties = [n.data for n in nodes.values()]
    stats = PlaintextSum().add([local_stats(p.train, spec.schema) for p in parties])
    pooled_test = pd.concat([p.test for p in parties], ignore_index=True)
    bins = spec.evaluate.histogram_bins

    federated = federated_model(spec, stats, result.weights).metrics(pooled_test, bins)
    central = train_on(spec, [p.train for p in parties]).metrics(pooled_test, bins)
    # What the coordinator read from summed histograms is exactly the pooled evaluation.
    assert result.final.auc == pytest.approx(federated.auc, abs=1e-12)
    assert result.final.positives + result.final.negatives == len(pooled_test)
    assert abs(federated.auc - central.auc) <= 0.005
    assert federated.auc > 0.6  # the synthetic signal allows about 0.67


def test_a_party_missing_from_the_replies_fails_the_job(
    spec: JobSpec, party_dirs: Mapping[str, Path]
) -> None:
    nodes = _nodes(spec, party_dirs)
    del nodes["bank-c"]
    with pytest.raises(JobFailedError, match=r"missing: bank-c"):
        run_hfl(spec, InProcessTransport(nodes))


def test_a_node_refuses_a_job_it_is_not_part_of(
    spec: JobSpec, party_dirs: Mapping[str, Path]
) -> None:
    other = spec.with_overrides({"job": {"parties": ["bank-a", "bank-b", "bank-d"]}})
    data = load_party(party_dirs["bank-c"], other.schema)
    with pytest.raises(Exception, match="not a party of job"):
        HflNode(other, data)


def test_training_is_deterministic(spec: JobSpec, party_dirs: Mapping[str, Path]) -> None:
    small = spec.with_overrides({"train": {"rounds": 2}})
    first = run_hfl(small, InProcessTransport(_nodes(small, party_dirs)))
    second = run_hfl(small, InProcessTransport(_nodes(small, party_dirs)))
    np.testing.assert_array_equal(first.weights, second.weights)
