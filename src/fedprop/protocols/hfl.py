"""Horizontal federated training (``hfl-train``): the protocol, one class per role.

Same columns, different customers: several banks train one propensity model.

Steps (each a request the coordinator broadcasts and every node answers):

1. ``stats`` — each node returns its additive training statistics (row and
   label counts; count, sum and sum of squares of each numeric column). The
   coordinator sums them; the sum fixes the feature scaling and the class
   weight at every node, so all parties encode features identically without
   sharing a row.
2. ``train`` (rounds 1..R) — each node starts from the global model (in round 1
   the seeded initial model every party builds identically; afterwards the
   previous round's aggregate), trains locally and returns
   ``[n * weights, n]``. The coordinator sums the vectors: dividing by the last
   entry gives the example-weighted FedAvg model.
3. ``evaluate`` (every round) — each node scores its own test rows with the
   global model and returns score histograms per label (plus its loss sum);
   the coordinator sums them and reads global AUC, KS, lift, capture and
   calibration from the sum, never from any party's own metrics.

Every vector that leaves a node is summed by the coordinator and nothing else:
aggregation is isolated in :class:`VectorSum`, so an encrypted sum can replace
the plaintext one without touching the steps.

What each role learns in ``plaintext`` mode (the baseline): the coordinator
sees every party's statistics, update and histograms; nodes see the sums.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

import numpy as np
from torch import nn

from fedprop.data.encoding import FeatureEncoder, local_stats
from fedprop.data.loader import PartyData
from fedprop.errors import FedpropError, JobFailedError
from fedprop.models.metrics import GlobalMetrics, ScoreHistogram, global_metrics
from fedprop.models.nets import build_model, load_vector, to_vector
from fedprop.models.train import positive_weight, predict_proba, train_epochs
from fedprop.spec import JobSpec

T = TypeVar("T")

__all__ = [
    "EvalReply",
    "HflCoordinator",
    "HflNode",
    "HflResult",
    "InProcessTransport",
    "ModelRequest",
    "PlaintextSum",
    "RoundRecord",
    "StatsReply",
    "StatsRequest",
    "Step",
    "TrainReply",
    "Transport",
    "VectorSum",
    "decode_average",
    "encode_update",
    "run_hfl",
]


class Step(StrEnum):
    """Protocol steps; the values are the Flower message types that carry them."""

    STATS = "query.stats"
    TRAIN = "train"
    EVALUATE = "evaluate"


# --- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsRequest:
    """Ask every node for its additive training statistics."""

    spec: str


@dataclass(frozen=True)
class StatsReply:
    """A node's statistics vector (layout: :func:`fedprop.data.encoding.stats_layout`)."""

    party: str
    stats: np.ndarray


@dataclass(frozen=True)
class ModelRequest:
    """Train or evaluate from the global model.

    ``model`` is ``None`` for the seeded initial model, otherwise the previous
    aggregate ``[sum n*w, sum n]``; ``stats`` is the summed statistics vector.
    """

    spec: str
    round: int
    stats: np.ndarray
    model: np.ndarray | None


@dataclass(frozen=True)
class TrainReply:
    """A node's weighted update ``[n * weights, n]`` and its mean local training loss."""

    party: str
    update: np.ndarray
    train_loss: float


@dataclass(frozen=True)
class EvalReply:
    """A node's score histograms on its test rows (layout: :meth:`ScoreHistogram.to_vector`)."""

    party: str
    histogram: np.ndarray


Request = StatsRequest | ModelRequest
Reply = StatsReply | TrainReply | EvalReply


class Transport(Protocol):
    """Delivers one request to every party of the job and collects their replies.

    Implementations raise :class:`JobFailedError` naming the party when a
    node fails or does not answer; they never return a partial set.
    """

    def broadcast(self, step: Step, request: Request) -> Mapping[str, Reply]:
        """Send ``request`` for ``step`` to every party; return replies by party name."""
        ...


class InProcessTransport:
    """Calls each party's node directly, in this process.

    For tests and benchmarks of the protocol itself: every party's data is in
    one process, so it isolates nothing. Real jobs run over Flower.
    """

    def __init__(self, nodes: Mapping[str, HflNode]) -> None:
        self.nodes = nodes
        self.steps: list[Step] = []

    def broadcast(self, step: Step, request: Request) -> Mapping[str, Reply]:
        """Hand ``request`` to every node; return their replies by party."""
        self.steps.append(step)
        return {party: node.handle(step, request) for party, node in self.nodes.items()}


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


class VectorSum(Protocol):
    """How the coordinator adds the vectors parties send (plaintext or encrypted)."""

    def add(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """Return the element-wise sum."""
        ...


class PlaintextSum:
    """Sums vectors in the clear (the baseline aggregation mode)."""

    def add(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """Element-wise sum; all vectors must have the same length and be finite."""
        if not vectors:
            raise ValueError("nothing to sum")
        size = vectors[0].shape
        for v in vectors:
            if v.shape != size:
                raise ValueError(f"vector shapes differ: {v.shape} vs {size}")
            if not np.all(np.isfinite(v)):
                raise ValueError("vector contains NaN or infinity")
        total: np.ndarray = np.sum(np.stack(vectors), axis=0)
        return total


# --- roles -------------------------------------------------------------------------------------


class HflNode:
    """A party: holds its own rows and answers the coordinator's steps."""

    def __init__(self, spec: JobSpec, data: PartyData) -> None:
        if data.name not in spec.parties:
            raise FedpropError(f"party '{data.name}' is not a party of job '{spec.id}'")
        self.spec = spec
        self.data = data
        self._index = spec.parties.index(data.name)
        self._encoded: tuple[bytes, FeatureEncoder, np.ndarray, np.ndarray] | None = None

    def stats(self) -> StatsReply:
        """Step 1: this party's additive training statistics."""
        return StatsReply(self.data.name, local_stats(self.data.train, self.spec.schema))

    def _encoder(self, stats: np.ndarray) -> tuple[FeatureEncoder, np.ndarray, np.ndarray]:
        key = stats.tobytes()
        if self._encoded is None or self._encoded[0] != key:
            encoder = FeatureEncoder.from_global_stats(self.spec.schema, stats)
            x = encoder.transform(self.data.train)
            y = encoder.labels(self.data.train)
            self._encoded = (key, encoder, x, y)
        return self._encoded[1], self._encoded[2], self._encoded[3]

    def _global_model(self, request: ModelRequest, n_features: int) -> nn.Module:
        """The seeded initial model (round 1) or the average of the received aggregate."""
        model = build_model(self.spec.model, n_features, self.spec.train.seed)
        if request.model is not None:
            load_vector(model, decode_average(request.model))
        return model

    def train(self, request: ModelRequest) -> TrainReply:
        """Step 2: train from the global model on this party's rows."""
        encoder, x, y = self._encoder(request.stats)
        model = self._global_model(request, encoder.n_features)
        cfg = self.spec.train
        loss = train_epochs(
            model,
            x,
            y,
            cfg,
            epochs=cfg.local_epochs,
            pos_weight=positive_weight(cfg.class_weighting, encoder.rows, encoder.positives),
            seed=cfg.seed + 7919 * request.round + self._index,
        )
        return TrainReply(self.data.name, encode_update(to_vector(model), len(x)), loss)

    def evaluate(self, request: ModelRequest) -> EvalReply:
        """Step 3: score this party's test rows with the global model; return histograms."""
        encoder, _, _ = self._encoder(request.stats)
        model = self._global_model(request, encoder.n_features)
        x = encoder.transform(self.data.test)
        y = encoder.labels(self.data.test)
        scores = predict_proba(model, x)
        histogram = ScoreHistogram.from_scores(scores, y, self.spec.evaluate.histogram_bins)
        eps = 1e-12
        loss = -float(np.sum(y * np.log(scores + eps) + (1 - y) * np.log(1 - scores + eps)))
        histogram = ScoreHistogram(histogram.positives, histogram.negatives, loss)
        return EvalReply(self.data.name, histogram.to_vector())

    def handle(self, step: Step, request: Request) -> Reply:
        """Answer one request (the single entry point an adapter calls)."""
        if step is Step.STATS and isinstance(request, StatsRequest):
            return self.stats()
        if step is Step.TRAIN and isinstance(request, ModelRequest):
            return self.train(request)
        if step is Step.EVALUATE and isinstance(request, ModelRequest):
            return self.evaluate(request)
        raise FedpropError(f"step '{step}' does not take a {type(request).__name__}")


@dataclass(frozen=True)
class RoundRecord:
    """What the coordinator learned in one round."""

    round: int
    metrics: GlobalMetrics
    train_loss: float
    seconds: float


@dataclass(frozen=True)
class HflResult:
    """The outcome of a training job, as the coordinator holds it."""

    spec: JobSpec
    weights: np.ndarray
    n_features: int
    rounds: tuple[RoundRecord, ...]
    final: GlobalMetrics
    seconds: float = 0.0
    bytes_sent: Mapping[str, int] = field(default_factory=dict)


class HflCoordinator:
    """The coordinator: sums what parties send and reads the global metrics."""

    def __init__(self, spec: JobSpec, summer: VectorSum | None = None) -> None:
        self.spec = spec
        self.summer: VectorSum = summer or PlaintextSum()

    def _check_parties(self, step: Step, replies: Mapping[str, Reply]) -> None:
        expected = set(self.spec.parties)
        got = set(replies)
        if got != expected:
            missing = ", ".join(sorted(expected - got)) or "none"
            extra = ", ".join(sorted(got - expected)) or "none"
            raise JobFailedError(
                f"{step.value}: replies do not match the job's parties "
                f"(missing: {missing}; unexpected: {extra})"
            )

    def _ordered(self, replies: Mapping[str, Reply]) -> list[Reply]:
        """Replies in the spec's party order, so sums do not depend on arrival order."""
        return [replies[p] for p in self.spec.parties]

    def sum_stats(self, replies: Mapping[str, Reply]) -> np.ndarray:
        """Sum the parties' statistics vectors."""
        self._check_parties(Step.STATS, replies)
        return self.summer.add([_expect(r, StatsReply).stats for r in self._ordered(replies)])

    def sum_updates(self, replies: Mapping[str, Reply]) -> tuple[np.ndarray, float]:
        """Sum the weighted updates; also return the example-weighted mean training loss."""
        self._check_parties(Step.TRAIN, replies)
        train = [_expect(r, TrainReply) for r in self._ordered(replies)]
        aggregate = self.summer.add([r.update for r in train])
        loss = sum(r.train_loss * float(r.update[-1]) for r in train) / float(aggregate[-1])
        return aggregate, loss

    def read_metrics(self, replies: Mapping[str, Reply]) -> GlobalMetrics:
        """Global metrics from the summed histograms."""
        self._check_parties(Step.EVALUATE, replies)
        summed = self.summer.add([_expect(r, EvalReply).histogram for r in self._ordered(replies)])
        bins = self.spec.evaluate.histogram_bins
        return global_metrics(ScoreHistogram.from_vector(summed, bins))


def _expect(reply: Reply, kind: type[T]) -> T:
    if not isinstance(reply, kind):
        raise JobFailedError(f"expected a {kind.__name__}, got a {type(reply).__name__}")
    return reply


ProgressFn = Callable[[RoundRecord], None]


def run_hfl(
    spec: JobSpec,
    transport: Transport,
    *,
    summer: VectorSum | None = None,
    progress: ProgressFn | None = None,
) -> HflResult:
    """Run a whole ``hfl-train`` job over ``transport``; return what the coordinator holds."""
    started = time.perf_counter()
    coordinator = HflCoordinator(spec, summer)
    stats = coordinator.sum_stats(transport.broadcast(Step.STATS, StatsRequest(spec.text)))
    aggregate: np.ndarray | None = None
    records: list[RoundRecord] = []
    for rnd in range(1, spec.train.rounds + 1):
        t0 = time.perf_counter()
        request = ModelRequest(spec.text, rnd, stats, aggregate)
        aggregate, loss = coordinator.sum_updates(transport.broadcast(Step.TRAIN, request))
        evaluation = ModelRequest(spec.text, rnd, stats, aggregate)
        metrics = coordinator.read_metrics(transport.broadcast(Step.EVALUATE, evaluation))
        record = RoundRecord(rnd, metrics, loss, time.perf_counter() - t0)
        records.append(record)
        if progress is not None:
            progress(record)
    assert aggregate is not None  # rounds >= 1 is enforced by the spec
    weights = decode_average(aggregate)
    encoder_features = FeatureEncoder.from_global_stats(spec.schema, stats).n_features
    return HflResult(
        spec=spec,
        weights=weights,
        n_features=encoder_features,
        rounds=tuple(records),
        final=records[-1].metrics,
        seconds=time.perf_counter() - started,
    )
