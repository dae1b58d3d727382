"""The hfl-train protocol run in-process (no Flower): FedAvg, quality, and its privacy.

Privacy tests take the coordinator's side: they record everything the
coordinator received or held and try to recover a party's own statistics or
update from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pytest

from fedprop.apps.client_app import NodeConfig
from fedprop.crypto.packing import unpack_sum
from fedprop.crypto.paillier import ciphertexts_from_bytes
from fedprop.data.encoding import local_stats
from fedprop.data.loader import load_party
from fedprop.errors import FedpropError, JobFailedError
from fedprop.models.baselines import federated_model, train_on
from fedprop.protocols.hfl import (
    ContributionReply,
    HflNode,
    InProcessTransport,
    ReleaseRefused,
    ReleaseReply,
    ReleaseRequest,
    Reply,
    Request,
    Step,
    TrainReply,
    decode_average,
    encode_update,
    run_hfl,
)
from fedprop.protocols.keys import KeyBundle
from fedprop.protocols.secure_sum import (
    AggregateError,
    Contribution,
    PaillierScheme,
    PlaintextScheme,
    SignedSum,
    VectorKind,
)
from fedprop.spec import JobSpec

#: Fewer histogram bins keep encrypted test runs short; metrics stay well defined.
TEST_BINS = 200


def nodes_for(spec: JobSpec, configs: Mapping[str, NodeConfig]) -> dict[str, HflNode]:
    return {
        party: HflNode(
            spec,
            dataclasses.replace(load_party(cfg.data_dir, spec.schema), name=party),
            cfg.settings(),
        )
        for party, cfg in configs.items()
    }


def job(spec: JobSpec, aggregation: str, rounds: int) -> JobSpec:
    return spec.with_overrides(
        {
            "job": {"aggregation": aggregation},
            "train": {"rounds": rounds},
            "evaluate": {"histogram-bins": TEST_BINS},
        }
    )


class RecordingTransport(InProcessTransport):
    """Keeps every request the coordinator sent and every reply it received."""

    def __init__(self, nodes: Mapping[str, HflNode]) -> None:
        super().__init__(nodes)
        self.log: list[tuple[Step, Request, Mapping[str, Reply]]] = []

    def broadcast(
        self, step: Step, request: Request, to: Sequence[str] | None = None
    ) -> Mapping[str, Reply]:
        replies = super().broadcast(step, request, to)
        self.log.append((step, request, replies))
        return replies


def test_fedavg_is_the_example_weighted_mean() -> None:
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=6) for _ in range(3)]
    counts = [10, 250, 3]
    summed = np.sum([encode_update(w, n) for w, n in zip(weights, counts, strict=True)], axis=0)
    expected = sum(w * n for w, n in zip(weights, counts, strict=True)) / sum(counts)
    np.testing.assert_allclose(decode_average(summed), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="at least one example"):
        encode_update(np.zeros(3), 0)


def test_federated_logreg_matches_centralized(
    spec: JobSpec, node_configs: dict[str, NodeConfig]
) -> None:
    # The spec's full 20 rounds: the bar is about a converged federation.
    plain = spec.with_overrides({"job": {"aggregation": "plaintext"}})
    nodes = nodes_for(plain, node_configs)
    transport = InProcessTransport(nodes)
    result = run_hfl(plain, transport, node_configs["bank-a"].settings().manifest)

    rounds = plain.train.rounds
    # Round r's train step also scores round r - 1's model; the last model on its own step.
    assert transport.steps == (
        [Step.STATS, Step.TRAIN]
        + [Step.TRAIN, Step.RELEASE] * (rounds - 1)
        + [Step.EVALUATE, Step.RELEASE, Step.RELEASE]
    )
    parties = [n.data for n in nodes.values()]
    stats = np.sum([local_stats(p.train, plain.schema) for p in parties], axis=0)
    pooled_test = pd.concat([p.test for p in parties], ignore_index=True)
    bins = plain.evaluate.histogram_bins
    assert result.weights is not None
    federated = federated_model(plain, stats, result.weights).metrics(pooled_test, bins)
    central = train_on(plain, [p.train for p in parties]).metrics(pooled_test, bins)
    # What the coordinator read from summed histograms is exactly the pooled evaluation.
    assert result.final.auc == pytest.approx(federated.auc, abs=1e-12)
    assert result.final.positives + result.final.negatives == len(pooled_test)
    assert abs(federated.auc - central.auc) <= 0.005
    assert federated.auc > 0.6  # the synthetic signal allows about 0.67


def test_paillier_gives_the_plaintext_model(
    spec: JobSpec, node_configs: dict[str, NodeConfig]
) -> None:
    manifest = node_configs["bank-a"].settings().manifest
    results = {}
    for mode in ("plaintext", "paillier"):
        s = job(spec, mode, rounds=3)
        results[mode] = run_hfl(s, InProcessTransport(nodes_for(s, node_configs)), manifest)
    plain, secure = results["plaintext"], results["paillier"]
    assert plain.weights is not None and secure.weights is not None
    # Fixed-point encoding is the only difference; its error is far below model precision.
    np.testing.assert_allclose(secure.weights, plain.weights, atol=1e-5)
    assert abs(secure.final.auc - plain.final.auc) <= 0.001


@pytest.fixture(scope="module")
def paillier_run(
    spec: JobSpec, node_configs: dict[str, NodeConfig]
) -> tuple[JobSpec, dict[str, HflNode], RecordingTransport]:
    s = job(spec, "paillier", rounds=2)
    nodes = nodes_for(s, node_configs)
    transport = RecordingTransport(nodes)
    run_hfl(s, transport, node_configs["bank-a"].settings().manifest)
    return s, nodes, transport


def _coordinator_bytes(transport: RecordingTransport) -> list[bytes]:
    """Every byte string the coordinator received from a node or sent in a request."""
    held: list[bytes] = []
    for _, request, replies in transport.log:
        held += [v for v in vars(request).values() if isinstance(v, bytes)]
        for reply in replies.values():
            held += [v for v in vars(reply).values() if isinstance(v, bytes)]
    return held


def test_coordinator_cannot_read_any_party_statistics_or_update(
    paillier_run: tuple[JobSpec, dict[str, HflNode], RecordingTransport],
) -> None:
    s, nodes, transport = paillier_run
    held = _coordinator_bytes(transport)
    keys = next(req.keys for step, req, _ in transport.log if step is Step.STATS)  # type: ignore[union-attr]
    public = KeyBundle.from_bytes(keys).public(s, nodes["bank-a"].settings.manifest)
    as_coordinator = PaillierScheme(public, len(s.parties))
    for party, node in nodes.items():
        own = local_stats(node.data.train, s.schema)
        rows = int(own[0])
        # Its exact statistics in any plain encoding appear nowhere in what the coordinator held.
        for needle in (own.astype("<f8").tobytes()[:16], f"{rows}".encode()):
            assert not any(needle in blob for blob in held), party
        contribution = next(
            r
            for step, _, replies in transport.log
            if step is Step.STATS
            for p, r in replies.items()
            if p == party and isinstance(r, ContributionReply)
        )
        # Read as a plaintext vector, the party's contribution is not its statistics...
        plain_view = np.frombuffer(contribution.payload[: 8 * own.size], dtype="<f8")
        assert not np.allclose(plain_view, own)
        # ...and with only the public key, the coordinator cannot open it.
        with pytest.raises(AggregateError, match="private key"):
            as_coordinator.open(contribution.payload, own.size, 1)


def test_the_same_attack_reads_everything_in_plaintext_mode(
    spec: JobSpec, node_configs: dict[str, NodeConfig]
) -> None:
    """The check above can fail: in plaintext mode the coordinator reads every party's rows."""
    s = job(spec, "plaintext", rounds=1)
    nodes = nodes_for(s, node_configs)
    transport = RecordingTransport(nodes)
    run_hfl(s, transport, node_configs["bank-a"].settings().manifest)
    held = _coordinator_bytes(transport)
    for party, node in nodes.items():
        own = local_stats(node.data.train, s.schema)
        assert any(own.astype("<f8").tobytes()[:16] in blob for blob in held), party


def _single_party_vectors_decodable(
    spec: JobSpec, node_configs: dict[str, NodeConfig], mode: str, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Run a job, then attack: which single-party vectors can be read from what the
    coordinator held? Returns a description of each one found."""
    s = job(spec, mode, rounds=2)
    sealed: list[tuple[str, np.ndarray]] = []
    for scheme in (PaillierScheme, PlaintextScheme):
        original = scheme.seal

        def recording(self: object, vector: np.ndarray, counts: int = 0, _f=original) -> bytes:  # type: ignore[no-untyped-def]
            sealed.append((type(self).__name__, np.array(vector, dtype=np.float64)))
            return _f(self, vector, counts)

        monkeypatch.setattr(scheme, "seal", recording)
    nodes = nodes_for(s, node_configs)
    transport = RecordingTransport(nodes)
    result = run_hfl(s, transport, node_configs["bank-a"].settings().manifest)
    held = _coordinator_bytes(transport)
    released = [
        r.values for _, _, replies in transport.log for r in replies.values()
        if isinstance(r, ReleaseReply)
    ]  # fmt: skip
    keys = next(req.keys for step, req, _ in transport.log if step is Step.STATS)  # type: ignore[union-attr]
    as_coordinator = (
        PaillierScheme(KeyBundle.from_bytes(keys).public(s, nodes["bank-a"].settings.manifest), 4)
        if mode == "paillier"
        else None
    )
    payloads = [
        r.payload for _, _, replies in transport.log for r in replies.values()
        if isinstance(r, ContributionReply)
    ]  # fmt: skip
    found = []
    assert len(sealed) == 4 * (1 + 2 * 2)  # stats, then an update and histograms per round
    for i, (_, vector) in enumerate(sealed):
        # 1. Its bytes, as float64 or float32, anywhere in a message.
        for dtype in ("<f8", "<f4"):
            needle = vector[:4].astype(dtype).tobytes()
            if any(needle in blob for blob in held):
                found.append(f"vector {i} as {dtype} bytes")
        # 2. A release or the result that equals it.
        if any(v.shape == vector.shape and np.allclose(v, vector) for v in released):
            found.append(f"vector {i} released")
        own = vector[:-1] / vector[-1] if vector[-1] else vector  # a party's own weights
        weights = result.weights
        if weights is not None and own.size == weights.size and np.allclose(weights, own):
            found.append(f"vector {i} in the result")
        # 3. A contribution read as packed plaintexts with the public packing spec.
        if as_coordinator is not None:
            for payload in payloads:
                integers = ciphertexts_from_bytes(as_coordinator.public, payload)
                for spec_ in (as_coordinator.counts, as_coordinator.reals):
                    try:
                        n = min(vector.size, len(integers) * spec_.slots_per_plaintext)
                        k = spec_.ciphertexts_for(n)
                        guess = unpack_sum(spec_, integers[:k], n, 1)
                    except FedpropError:
                        continue
                    if np.allclose(guess, vector[:n], atol=1e-3):
                        found.append(f"vector {i} unpacked from a ciphertext")
    return found


def test_nothing_the_coordinator_held_reveals_one_partys_vector(
    spec: JobSpec, node_configs: dict[str, NodeConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _single_party_vectors_decodable(spec, node_configs, "paillier", monkeypatch) == []


def test_the_same_attack_finds_every_vector_in_plaintext_mode(
    spec: JobSpec, node_configs: dict[str, NodeConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    found = _single_party_vectors_decodable(spec, node_configs, "plaintext", monkeypatch)
    assert {f"vector {i} as <f8 bytes" for i in range(20)} <= set(found)


def _first_histograms(transport: RecordingTransport) -> bytes:
    """Round 1's valid histogram contributions (carried by round 2's train replies), with
    bank-a's lone payload as the 'sum'."""
    for step, request, replies in transport.log:
        if step is Step.TRAIN and getattr(request, "round", 0) == 2:
            contributions = [
                Contribution(r.party, r.histograms, r.histograms_signature)
                for r in replies.values()
                if isinstance(r, TrainReply)
            ]
            return SignedSum(contributions[0].payload, tuple(contributions)).to_bytes()
    raise AssertionError("no round-2 train step recorded")


def test_a_node_refuses_to_open_one_partys_ciphertext_passed_off_as_the_sum(
    paillier_run: tuple[JobSpec, dict[str, HflNode], RecordingTransport],
) -> None:
    s, nodes, transport = paillier_run
    keys = next(req.keys for step, req, _ in transport.log if step is Step.STATS)  # type: ignore[union-attr]
    forged = _first_histograms(transport)  # aggregate = bank-a's lone contribution
    with pytest.raises(AggregateError, match="not the sum"):
        nodes["bank-b"].release(ReleaseRequest(s.text, keys, 1, "histogram", forged))


def test_a_node_never_releases_statistics_and_respects_model_release(
    paillier_run: tuple[JobSpec, dict[str, HflNode], RecordingTransport],
    node_configs: dict[str, NodeConfig],
) -> None:
    s, nodes, transport = paillier_run
    keys = next(req.keys for step, req, _ in transport.log if step is Step.STATS)  # type: ignore[union-attr]
    with pytest.raises(ReleaseRefused, match="never releases summed stats"):
        nodes["bank-c"].release(ReleaseRequest(s.text, keys, 0, "stats", b""))
    strict = dataclasses.replace(node_configs["bank-c"], allow_model_release=False)
    node = HflNode(s, nodes["bank-c"].data, strict.settings())
    with pytest.raises(ReleaseRefused, match="does not allow the model"):
        node.release(ReleaseRequest(s.text, keys, 2, VectorKind.UPDATE.value, b""))


@pytest.mark.parametrize("field", ["update", "histograms"])
def test_a_tampered_contribution_fails_the_round(
    spec: JobSpec, node_configs: dict[str, NodeConfig], field: str
) -> None:
    # A train reply carries two contributions: the round's update and, from round 2, the
    # histograms of the previous round's model. Flipping a bit of either fails the job.
    s = job(spec, "paillier", rounds=2)
    nodes = nodes_for(s, node_configs)

    class Tamper(InProcessTransport):
        def broadcast(
            self, step: Step, request: Request, to: Sequence[str] | None = None
        ) -> Mapping[str, Reply]:
            replies = dict(super().broadcast(step, request, to))
            reply = replies["bank-d"]
            if isinstance(reply, TrainReply) and getattr(reply, field):
                payload: bytes = getattr(reply, field)
                tampered = payload[:-1] + bytes([payload[-1] ^ 1])
                replies["bank-d"] = dataclasses.replace(reply, **{field: tampered})
            return replies

    with pytest.raises(JobFailedError, match="bank-d"):
        run_hfl(s, Tamper(nodes), node_configs["bank-a"].settings().manifest)


def test_a_party_missing_from_the_replies_fails_the_job(
    spec: JobSpec, node_configs: dict[str, NodeConfig]
) -> None:
    s = job(spec, "plaintext", rounds=1)
    nodes = nodes_for(s, node_configs)
    del nodes["bank-c"]
    with pytest.raises(JobFailedError, match=r"missing: bank-c"):
        run_hfl(s, InProcessTransport(nodes), node_configs["bank-a"].settings().manifest)


def test_a_node_refuses_plaintext_unless_it_allows_it(
    spec: JobSpec, node_configs: dict[str, NodeConfig]
) -> None:
    s = job(spec, "plaintext", rounds=1)
    strict = dataclasses.replace(node_configs["bank-b"], allow_plaintext=False)
    data = load_party(strict.data_dir, s.schema)
    with pytest.raises(FedpropError, match=r"refuses job .* 'plaintext'"):
        HflNode(s, data, strict.settings())


def test_a_node_refuses_a_job_it_is_not_part_of(
    spec: JobSpec, node_configs: dict[str, NodeConfig]
) -> None:
    other = spec.with_overrides({"job": {"parties": ["bank-a", "bank-b", "bank-d"]}})
    cfg = node_configs["bank-c"]
    with pytest.raises(FedpropError, match="not a party of job"):
        HflNode(other, load_party(cfg.data_dir, other.schema), cfg.settings())


def test_training_is_deterministic(spec: JobSpec, node_configs: dict[str, NodeConfig]) -> None:
    s = job(spec, "plaintext", rounds=2)
    manifest = node_configs["bank-a"].settings().manifest
    first = run_hfl(s, InProcessTransport(nodes_for(s, node_configs)), manifest)
    second = run_hfl(s, InProcessTransport(nodes_for(s, node_configs)), manifest)
    assert first.weights is not None and second.weights is not None
    np.testing.assert_array_equal(first.weights, second.weights)
