"""Horizontal federated training (``hfl-train``): the protocol, one class per role.

Same columns, different customers: several banks train one propensity model.

Steps (each a request the coordinator broadcasts and every node answers):

0. ``keys`` (paillier mode) — the spec's key holder makes the job key and
   seals it to every party (:mod:`fedprop.protocols.keys`); the coordinator
   keeps the public key and relays the bundle with every later request.
1. ``stats`` — each node contributes its additive training statistics (row and
   label counts; count, sum and sum of squares of each numeric column). The
   sum fixes feature scaling at every node, so all parties encode features
   identically without sharing a row.
2. ``train`` (rounds 1..R) — each node opens the previous round's summed
   update (round 1: the seeded initial model every party builds identically),
   trains locally and contributes ``[n * weights, n]``; dividing the sum by its
   last entry gives the example-weighted FedAvg model. From round 2 the same
   message also scores the model the node starts from (the previous round's)
   on its own test rows and contributes score histograms per label and its
   loss sum: one message per node per round, not two.
3. ``evaluate`` (after round R) — the last round's model, scored the same way.
4. ``release`` — the coordinator asks nodes to open a sum it is entitled to:
   each round's summed histograms (it reads global AUC, KS, lift, capture and
   calibration from them; round r's during round r + 1), opened by one node per
   round in turn (:func:`metrics_releaser`), and the final summed update where the spec asks
   for the model and the node allows it, opened by every node. A releasing
   node signs what it releases, so a wrong metric is attributable to it; the
   model is accepted only if every party released the same values.
   Statistics are never released.

All vectors travel as signed contributions through a
:class:`~fedprop.protocols.secure_sum.SumScheme`, and a node opens a sum only
after checking it is the sum of one signed contribution from every party
(:func:`~fedprop.protocols.secure_sum.check_aggregate`).

What each role learns (paillier): the coordinator holds the job's public key,
ciphertexts, the summed histograms, and the final model if every node released
it; never a single party's statistics, update, example count or metrics. Each
node learns the sums. In ``plaintext`` mode (a baseline) the coordinator can
read every contribution.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

import numpy as np
from torch import nn

from fedprop.crypto.identity import Manifest, NodeIdentity, check_parties, sign, verify
from fedprop.data.encoding import (
    FeatureEncoder,
    count_slots,
    encoded_feature_names,
    local_stats,
    stats_layout,
)
from fedprop.data.loader import PartyData
from fedprop.errors import FedpropError, JobFailedError
from fedprop.models.metrics import GlobalMetrics, ScoreHistogram, global_metrics
from fedprop.models.nets import build_model, load_vector, parameter_count, to_vector
from fedprop.models.train import positive_weight, predict_proba, train_epochs
from fedprop.privacy.dpsgd import train_epochs_dp
from fedprop.protocols.keys import KeyBundle, make_bundle
from fedprop.protocols.messages import AbortReply, AbortRequest, ContributionReply, KeysReply
from fedprop.protocols.secure_sum import (
    Contribution,
    PaillierScheme,
    PlaintextScheme,
    SignedSum,
    SumScheme,
    VectorKind,
    check_aggregate,
    check_contributions,
    release_digest,
    sign_contribution,
)
from fedprop.spec import Aggregation, JobSpec

__all__ = [
    "REPLIES",
    "REQUESTS",
    "AbortReply",
    "AbortRequest",
    "ContributionReply",
    "HflCoordinator",
    "HflNode",
    "HflResult",
    "InProcessTransport",
    "JobRequest",
    "KeysReply",
    "ModelRequest",
    "NodeSettings",
    "ReleaseRefused",
    "ReleaseReply",
    "ReleaseRequest",
    "RoundRecord",
    "Step",
    "TrainReply",
    "Transport",
    "decode_average",
    "encode_update",
    "metrics_releaser",
    "run_hfl",
]

T = TypeVar("T")


class Step(StrEnum):
    """Protocol steps; the values are the Flower message types that carry them."""

    KEYS = "query.keys"
    STATS = "query.stats"
    TRAIN = "train"
    EVALUATE = "evaluate"
    RELEASE = "query.release"
    ABORT = "query.abort"


# --- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """The keys and stats steps: the spec and (paillier) the job's key bundle."""

    spec: str
    keys: bytes


@dataclass(frozen=True)
class ModelRequest:
    """Train or evaluate from the global model.

    ``stats`` is the summed statistics and ``model`` the previous summed update
    (``None``: the seeded initial model), each a :class:`SignedSum` in bytes.
    """

    spec: str
    keys: bytes
    round: int
    stats: bytes
    model: bytes | None


@dataclass(frozen=True)
class TrainReply:
    """A node's sealed, signed update and, from round 2, its sealed, signed score
    histograms of the model the round started from (empty bytes in round 1)."""

    party: str
    update: bytes
    update_signature: bytes
    histograms: bytes
    histograms_signature: bytes


@dataclass(frozen=True)
class ReleaseRequest:
    """Open a sum the coordinator is entitled to (``kind``: histogram or update)."""

    spec: str
    keys: bytes
    round: int
    kind: str
    total: bytes


@dataclass(frozen=True)
class ReleaseReply:
    """An opened sum and the releasing node's signature over it."""

    party: str
    values: np.ndarray
    signature: bytes


Request = JobRequest | ModelRequest | ReleaseRequest | AbortRequest
Reply = KeysReply | ContributionReply | TrainReply | ReleaseReply | AbortReply

#: The request each step carries, and the reply it expects.
REQUESTS: Mapping[Step, type[Request]] = {
    Step.KEYS: JobRequest,
    Step.STATS: JobRequest,
    Step.TRAIN: ModelRequest,
    Step.EVALUATE: ModelRequest,
    Step.RELEASE: ReleaseRequest,
    Step.ABORT: AbortRequest,
}
REPLIES: Mapping[Step, type[Reply]] = {
    Step.KEYS: KeysReply,
    Step.STATS: ContributionReply,
    Step.TRAIN: TrainReply,
    Step.EVALUATE: ContributionReply,
    Step.RELEASE: ReleaseReply,
    Step.ABORT: AbortReply,
}


class Transport(Protocol):
    """Delivers one request to the job's parties and collects their replies.

    Implementations raise :class:`JobFailedError` naming the party when a
    node fails or does not answer; they never return a partial set.
    """

    def broadcast(
        self, step: Step, request: Request, to: Sequence[str] | None = None
    ) -> Mapping[str, Reply]:
        """Send ``request`` for ``step`` to the parties ``to`` (default: all of them);
        return replies by party name."""
        ...


class InProcessTransport:
    """Calls each party's node directly, in this process.

    For tests and benchmarks of the protocol itself: every party's data is in
    one process, so it isolates nothing. Real jobs run over Flower.
    """

    def __init__(self, nodes: Mapping[str, HflNode]) -> None:
        self.nodes = nodes
        self.steps: list[Step] = []

    def broadcast(
        self, step: Step, request: Request, to: Sequence[str] | None = None
    ) -> Mapping[str, Reply]:
        """Hand ``request`` to the nodes ``to`` (default: all); return their replies by party."""
        self.steps.append(step)
        parties = self.nodes if to is None else to
        return {party: self.nodes[party].handle(step, request) for party in parties}


# --- pure steps --------------------------------------------------------------------------------


def encode_update(weights: np.ndarray, examples: int) -> np.ndarray:
    """The vector a node contributes to FedAvg: ``[examples * weights, examples]``."""
    if examples <= 0:
        raise ValueError("a node must train on at least one example")
    return np.concatenate([weights * float(examples), [float(examples)]])


def decode_average(aggregate: np.ndarray) -> np.ndarray:
    """The example-weighted average model from a summed update vector."""
    total = float(aggregate[-1])
    if not total > 0:
        raise ValueError("aggregate carries no examples")
    return np.asarray(aggregate[:-1] / total, dtype=np.float64)


def update_length(spec: JobSpec) -> int:
    """Values in one update vector: every model parameter, then the example count."""
    n_features = len(encoded_feature_names(spec.schema))
    return parameter_count(build_model(spec.model, n_features, spec.train.seed)) + 1


def histogram_length(spec: JobSpec) -> int:
    """Values in one histogram vector (:meth:`ScoreHistogram.to_vector`)."""
    return 2 * spec.evaluate.histogram_bins + 1


def histogram_counts(spec: JobSpec) -> int:
    """Leading values of a histogram vector that are counts (all but the loss sum)."""
    return 2 * spec.evaluate.histogram_bins


def metrics_releaser(spec: JobSpec, round_: int) -> str:
    """The party that opens round ``round_``'s summed histograms (parties take turns)."""
    return spec.parties[(round_ - 1) % len(spec.parties)]


# --- roles -------------------------------------------------------------------------------------


class ReleaseRefused(FedpropError):
    """A node refused to open a sum for the coordinator."""


@dataclass(frozen=True)
class NodeSettings:
    """What a node brings besides its data: its identity, pinned manifest and choices."""

    identity: NodeIdentity
    manifest: Manifest
    allow_plaintext: bool = False
    allow_model_release: bool = False


@dataclass(frozen=True)
class _Encoded:
    """A node's rows encoded for one job: the statistics they were encoded with, the
    encoder, and the features and labels of its training and test rows."""

    stats: bytes
    encoder: FeatureEncoder
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class HflNode:
    """A party: holds its own rows and answers the coordinator's steps."""

    def __init__(self, spec: JobSpec, data: PartyData, settings: NodeSettings) -> None:
        name = settings.identity.name
        if data.name != name:
            raise FedpropError(f"data of '{data.name}' given to node '{name}'")
        if name not in spec.parties:
            raise FedpropError(f"party '{name}' is not a party of job '{spec.id}'")
        check_parties(settings.manifest, spec.parties)
        if spec.aggregation is Aggregation.PLAINTEXT and not settings.allow_plaintext:
            raise FedpropError(
                f"party '{name}' refuses job '{spec.id}': aggregation 'plaintext' would show "
                "its updates to the coordinator, and this node does not allow it"
            )
        self.spec = spec
        self.data = data
        self.settings = settings
        self._index = spec.parties.index(name)
        self._schemes: dict[bytes, SumScheme] = {}
        self._encoded: _Encoded | None = None
        self._model_sum: tuple[bytes, np.ndarray] | None = None

    @property
    def name(self) -> str:
        """This node's party name."""
        return self.settings.identity.name

    # -- sums --

    def _scheme(self, keys: bytes) -> SumScheme:
        if self.spec.aggregation is Aggregation.PLAINTEXT:
            return PlaintextScheme()
        if keys not in self._schemes:
            bundle = KeyBundle.from_bytes(keys)
            private = bundle.private(self.spec, self.settings.manifest, self.settings.identity)
            self._schemes = {keys: PaillierScheme(private, len(self.spec.parties))}
        return self._schemes[keys]

    def _contribute(
        self, keys: bytes, kind: VectorKind, round_: int, vector: np.ndarray, counts: int = 0
    ) -> ContributionReply:
        payload = self._scheme(keys).seal(vector, counts)
        c = sign_contribution(self.settings.identity, self.spec.id, kind, round_, payload)
        return ContributionReply(c.party, c.payload, c.signature)

    def _open(
        self,
        keys: bytes,
        total: bytes,
        kind: VectorKind,
        round_: int,
        length: int,
        counts: int = 0,
    ) -> np.ndarray:
        signed = SignedSum.from_bytes(total)
        scheme = self._scheme(keys)
        check_aggregate(
            scheme,
            signed.aggregate,
            signed.contributions,
            manifest=self.settings.manifest,
            parties=self.spec.parties,
            job_id=self.spec.id,
            kind=kind,
            round_=round_,
        )
        return scheme.open(signed.aggregate, length, len(self.spec.parties), counts)

    def _stats(self, keys: bytes, total: bytes) -> np.ndarray:
        stats = self._open(keys, total, VectorKind.STATS, 0, len(stats_layout(self.spec.schema)))
        counts = count_slots(self.spec.schema)
        stats[counts] = np.rint(stats[counts])  # exact counts, free of fixed-point error
        return stats

    def _encoder(self, request: ModelRequest) -> _Encoded:
        """This party's rows encoded with the federation's statistics (once per job)."""
        if self._encoded is None or self._encoded.stats != request.stats:
            encoder = FeatureEncoder.from_global_stats(
                self.spec.schema, self._stats(request.keys, request.stats)
            )
            self._encoded = _Encoded(
                request.stats,
                encoder,
                encoder.transform(self.data.train),
                encoder.labels(self.data.train),
                encoder.transform(self.data.test),
                encoder.labels(self.data.test),
            )
        return self._encoded

    def _global_model(self, request: ModelRequest, n_features: int, round_: int) -> nn.Module:
        """The seeded initial model, or the average of the previous round's summed update."""
        model = build_model(self.spec.model, n_features, self.spec.train.seed)
        if request.model is None:
            return model
        if self._model_sum is None or self._model_sum[0] != request.model:
            # evaluate (round r) and train (round r + 1) start from the same sum: open it once
            summed = self._open(
                request.keys, request.model, VectorKind.UPDATE, round_, update_length(self.spec)
            )
            self._model_sum = (request.model, summed)
        load_vector(model, decode_average(self._model_sum[1]))
        return model

    # -- steps --

    def keys(self, request: JobRequest) -> KeysReply:
        """Step 0: the key holder makes and seals the job key; others answer empty."""
        if self.name != self.spec.key_holder or self.spec.aggregation is Aggregation.PLAINTEXT:
            return KeysReply(self.name, b"")
        bundle = make_bundle(self.spec, self.settings.manifest, self.settings.identity)
        return KeysReply(self.name, bundle.to_bytes())

    def stats(self, request: JobRequest) -> ContributionReply:
        """Step 1: this party's additive training statistics, sealed."""
        vector = local_stats(self.data.train, self.spec.schema)
        return self._contribute(request.keys, VectorKind.STATS, 0, vector)

    def train(self, request: ModelRequest) -> TrainReply:
        """Step 2: from round 2, score the global model the round starts from (the previous
        round's) on this party's test rows; then train from it on this party's rows (DP-SGD
        if the spec has ``[dp]``: :func:`~fedprop.privacy.dpsgd.train_epochs_dp`)."""
        encoded = self._encoder(request)
        encoder, x, y = encoded.encoder, encoded.x_train, encoded.y_train
        model = self._global_model(request, encoder.n_features, request.round - 1)
        scored = ContributionReply(self.name, b"", b"")
        if request.model is not None:
            scored = self._score(request.keys, model, encoded, request.round - 1)
        cfg = self.spec.train
        train = train_epochs if cfg.dp is None else train_epochs_dp
        train(
            model,
            x,
            y,
            cfg,
            epochs=cfg.local_epochs,
            pos_weight=positive_weight(cfg.class_weighting, encoder.rows, encoder.positives),
            seed=cfg.seed + 7919 * request.round + self._index,
        )
        update = encode_update(to_vector(model), len(x))
        sealed = self._contribute(request.keys, VectorKind.UPDATE, request.round, update)
        return TrainReply(
            self.name, sealed.payload, sealed.signature, scored.payload, scored.signature
        )

    def evaluate(self, request: ModelRequest) -> ContributionReply:
        """Step 3: score this party's test rows with the last round's global model."""
        encoded = self._encoder(request)
        model = self._global_model(request, encoded.encoder.n_features, request.round)
        return self._score(request.keys, model, encoded, request.round)

    def _score(
        self, keys: bytes, model: nn.Module, encoded: _Encoded, round_: int
    ) -> ContributionReply:
        """This party's test rows scored by ``model`` (round ``round_``'s global model), as
        sealed score histograms per label and loss sum."""
        scores = predict_proba(model, encoded.x_test)
        histogram = ScoreHistogram.from_scores(
            scores, encoded.y_test, self.spec.evaluate.histogram_bins
        )
        return self._contribute(
            keys, VectorKind.HISTOGRAM, round_, histogram.to_vector(), histogram_counts(self.spec)
        )

    def release(self, request: ReleaseRequest) -> ReleaseReply:
        """Step 4: open a sum for the coordinator, where this node's rules allow it."""
        kind = VectorKind(request.kind)
        counts = 0
        if kind is VectorKind.HISTOGRAM:
            length, counts = histogram_length(self.spec), histogram_counts(self.spec)
        elif kind is VectorKind.UPDATE and not self.spec.release_model:
            raise ReleaseRefused(f"'{self.name}': job '{self.spec.id}' does not ask for the model")
        elif kind is VectorKind.UPDATE and not self.settings.allow_model_release:
            raise ReleaseRefused(f"'{self.name}' does not allow the model to be released")
        elif kind is VectorKind.UPDATE:
            length = update_length(self.spec)
        else:
            raise ReleaseRefused(f"'{self.name}' never releases summed {kind.value}")
        values = self._open(request.keys, request.total, kind, request.round, length, counts)
        digest = release_digest(self.spec.id, kind, request.round, values)
        return ReleaseReply(self.name, values, sign(self.settings.identity, digest))

    def handle(self, step: Step, request: Request) -> Reply:
        """Answer one request (the single entry point an adapter calls)."""
        if step is Step.KEYS and isinstance(request, JobRequest):
            return self.keys(request)
        if step is Step.STATS and isinstance(request, JobRequest):
            return self.stats(request)
        if step is Step.TRAIN and isinstance(request, ModelRequest):
            return self.train(request)
        if step is Step.EVALUATE and isinstance(request, ModelRequest):
            return self.evaluate(request)
        if step is Step.RELEASE and isinstance(request, ReleaseRequest):
            return self.release(request)
        raise FedpropError(f"step '{step}' does not take a {type(request).__name__}")


@dataclass(frozen=True)
class RoundRecord:
    """What the coordinator learned in one round: the metrics of the round's global model,
    and the wall time and bytes from each party from the start of the round's train step to
    the start of the next round's (the last round: to the release of its metrics)."""

    round: int
    metrics: GlobalMetrics
    seconds: float
    bytes_from: Mapping[str, int]


@dataclass(frozen=True)
class HflResult:
    """The outcome of a training job, as the coordinator holds it."""

    spec: JobSpec
    weights: np.ndarray | None
    rounds: tuple[RoundRecord, ...]
    final: GlobalMetrics
    seconds: float


def _expect(reply: Reply, kind: type[T]) -> T:
    if not isinstance(reply, kind):
        raise JobFailedError(f"expected a {kind.__name__}, got a {type(reply).__name__}")
    return reply


def _contribution(reply: Reply, kind: VectorKind) -> Contribution:
    """The contribution of ``kind`` a reply carries (a train reply carries two)."""
    if isinstance(reply, TrainReply) and kind is VectorKind.HISTOGRAM:
        return Contribution(reply.party, reply.histograms, reply.histograms_signature)
    if isinstance(reply, TrainReply):
        return Contribution(reply.party, reply.update, reply.update_signature)
    r = _expect(reply, ContributionReply)
    return Contribution(r.party, r.payload, r.signature)


class HflCoordinator:
    """The coordinator: relays the job key, adds contributions, accepts releases."""

    def __init__(self, spec: JobSpec, manifest: Manifest) -> None:
        check_parties(manifest, spec.parties)
        self.spec = spec
        self.manifest = manifest
        self.keys = b""
        self.scheme: SumScheme = PlaintextScheme()
        self.received: dict[str, int] = dict.fromkeys(spec.parties, 0)

    def _ordered(self, step: Step, replies: Mapping[str, Reply]) -> list[Reply]:
        """Replies in the spec's party order; all parties, no others."""
        expected, got = set(self.spec.parties), set(replies)
        if got != expected:
            missing = ", ".join(sorted(expected - got)) or "none"
            extra = ", ".join(sorted(got - expected)) or "none"
            raise JobFailedError(
                f"{step.value}: replies do not match the job's parties "
                f"(missing: {missing}; unexpected: {extra})"
            )
        return [replies[p] for p in self.spec.parties]

    def use_keys(self, replies: Mapping[str, Reply]) -> None:
        """Take the key holder's bundle; keep only its public key."""
        reply = _expect(
            self._ordered(Step.KEYS, replies)[self.spec.parties.index(self.spec.key_holder)],
            KeysReply,
        )
        try:
            public = KeyBundle.from_bytes(reply.bundle).public(self.spec, self.manifest)
        except FedpropError as exc:
            raise JobFailedError(f"keys: {exc}") from None
        self.keys = reply.bundle
        self.scheme = PaillierScheme(public, len(self.spec.parties))

    def collect(
        self, step: Step, replies: Mapping[str, Reply], kind: VectorKind, round_: int
    ) -> bytes:
        """Add the parties' contributions; return the signed sum to relay, in bytes."""
        contributions = [_contribution(r, kind) for r in self._ordered(step, replies)]
        for c in contributions:
            self.received[c.party] += len(c.payload) + len(c.signature)
        try:
            check_contributions(
                contributions,
                manifest=self.manifest,
                parties=self.spec.parties,
                job_id=self.spec.id,
                kind=kind,
                round_=round_,
            )
            aggregate = self.scheme.add([c.payload for c in contributions])
        except FedpropError as exc:
            raise JobFailedError(f"{step.value}: {exc}") from None
        return SignedSum(aggregate, tuple(contributions)).to_bytes()

    def accept_release(
        self, replies: Mapping[str, Reply], kind: VectorKind, round_: int, releasers: Sequence[str]
    ) -> np.ndarray:
        """The released sum, once each of ``releasers`` released the same values and signed
        them."""
        if set(replies) != set(releasers):
            raise JobFailedError(
                f"release of {kind} round {round_}: expected releases from "
                f"{', '.join(releasers)}, got {', '.join(sorted(replies)) or 'none'}"
            )
        releases = [_expect(replies[p], ReleaseReply) for p in releasers]
        keys = {node.name: node for node in self.manifest.nodes}
        first = releases[0].values
        for r in releases:
            self.received[r.party] += r.values.nbytes + len(r.signature)
            if r.values.shape != first.shape or not np.array_equal(r.values, first):
                raise JobFailedError(
                    f"release of {kind} round {round_}: '{r.party}' released different values"
                )
            try:
                verify(
                    keys[r.party], release_digest(self.spec.id, kind, round_, r.values), r.signature
                )
            except FedpropError:
                raise JobFailedError(
                    f"release of {kind} round {round_}: signature of '{r.party}' does not verify"
                ) from None
        return np.array(first, dtype=np.float64)


ProgressFn = Callable[[RoundRecord], None]
#: When a round's train step started, and the bytes received from each party by then.
_Mark = tuple[float, dict[str, int]]


def run_hfl(
    spec: JobSpec,
    transport: Transport,
    manifest: Manifest,
    *,
    progress: ProgressFn | None = None,
) -> HflResult:
    """Run a whole ``hfl-train`` job over ``transport``; return what the coordinator holds."""
    started = time.perf_counter()
    c = HflCoordinator(spec, manifest)
    if spec.aggregation is Aggregation.PAILLIER:
        c.use_keys(transport.broadcast(Step.KEYS, JobRequest(spec.text, b"")))
    stats = c.collect(
        Step.STATS,
        transport.broadcast(Step.STATS, JobRequest(spec.text, c.keys)),
        VectorKind.STATS,
        0,
    )

    def release(
        kind: VectorKind, round_: int, total: bytes, releasers: Sequence[str]
    ) -> np.ndarray:
        request = ReleaseRequest(spec.text, c.keys, round_, kind.value, total)
        replies = transport.broadcast(Step.RELEASE, request, to=releasers)
        return c.accept_release(replies, kind, round_, releasers)

    # Each round's train step also scores the model the round starts from, so round r's
    # metrics are released during round r + 1; the last model is scored on its own step.
    # A round's seconds and bytes run from the start of its train step to the next one's
    # (the last round: to its metrics' release).
    model: bytes | None = None
    records: list[RoundRecord] = []
    starts: list[_Mark] = []

    def mark() -> _Mark:
        return time.perf_counter(), dict(c.received)

    def record(round_: int, histograms: bytes) -> None:
        releaser = metrics_releaser(spec, round_)
        summed = release(VectorKind.HISTOGRAM, round_, histograms, [releaser])
        metrics = global_metrics(ScoreHistogram.from_vector(summed, spec.evaluate.histogram_bins))
        # starts[round_] is the next round's start; the last round ends now.
        end = starts[round_] if round_ < len(starts) else mark()
        (t0, before), (t1, after) = starts[round_ - 1], end
        sent = {p: after[p] - before[p] for p in spec.parties}
        records.append(RoundRecord(round_, metrics, t1 - t0, sent))
        if progress is not None:
            progress(records[-1])

    for rnd in range(1, spec.train.rounds + 1):
        starts.append(mark())
        replies = transport.broadcast(
            Step.TRAIN, ModelRequest(spec.text, c.keys, rnd, stats, model)
        )
        model = c.collect(Step.TRAIN, replies, VectorKind.UPDATE, rnd)
        if rnd > 1:
            record(rnd - 1, c.collect(Step.TRAIN, replies, VectorKind.HISTOGRAM, rnd - 1))
    assert model is not None  # rounds >= 1 is enforced by the spec
    last = spec.train.rounds
    evaluate = ModelRequest(spec.text, c.keys, last, stats, model)
    histograms = c.collect(
        Step.EVALUATE, transport.broadcast(Step.EVALUATE, evaluate), VectorKind.HISTOGRAM, last
    )
    record(last, histograms)
    weights = (
        decode_average(release(VectorKind.UPDATE, spec.train.rounds, model, spec.parties))
        if spec.release_model
        else None
    )
    return HflResult(
        spec=spec,
        weights=weights,
        rounds=tuple(records),
        final=records[-1].metrics,
        seconds=time.perf_counter() - started,
    )
