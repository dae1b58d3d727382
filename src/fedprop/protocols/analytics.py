"""Federated analytics (``query``): counts, sums, means, rates and histograms by segment.

The data team writes a small declarative query (TOML, :class:`QuerySpec`): which measures
(``count``; ``sum`` and ``mean`` of a numeric column between stated clip bounds; ``rate`` of
the label or of one category; ``histogram`` of a column), grouped by which columns
(categories, or numeric columns cut into stated bands), filtered how (a category in a list,
a number in a range), with which privacy (``epsilon``, ``delta``) and smallest cohort ``k``.
No code and no SQL reaches a node: the spec is parsed and checked by each node itself, and
its columns go through the node's policy (:func:`fedprop.privacy.policy.decide`).

Steps (the coordinator relays; nodes keep no state between them but their ledger):

1. **contribute** — each node parses the query, asks its policy (``decide``) and its budget
   ledger (:meth:`~fedprop.privacy.ledger.BudgetLedger.check`) before it reads a row; then
   computes its local aggregates over the *full* grid of cells (the cartesian product of
   every group-by column's values from the schema, in a fixed order, so a node's vector
   says nothing about which cells it has), seals them under the query's Paillier key with
   :class:`~fedprop.protocols.secure_sum.PaillierScheme` (counts as exact integers, sums
   of clipped values on an integer grid), records the spend in its ledger (durably, before
   anything leaves), and returns the signed contribution.
2. **collect** — the coordinator checks the signatures and multiplies the ciphertexts: it
   holds the encrypted sum, and nothing it can read.
3. **release** — the query's ``releaser`` node checks that the sum is exactly one signed
   contribution from every party (:func:`~fedprop.protocols.secure_sum.check_aggregate`),
   opens it, suppresses small cells, adds noise, records the release in its ledger (an
   answer is released once) and signs the answer. Only that answer leaves in the clear.

**Where the noise is added, and why there.** The releasing node adds calibrated noise to the
opened sums, once (central noise at the decrypting party), rather than each node adding a
share of distributed noise inside the encrypted sum. The releasing node already sees the
exact sum: in this federation every party holds the query's key, as in ``hfl-train``, so
whoever opens a sum is trusted with it (semi-honest model; threshold decryption would
remove that trust and is on the roadmap). Noise added there gives the coordinator, and
everyone the answer reaches, the stated differential privacy against the pooled data. Two
further reasons decide it. (a) The policy's cohort size ``k`` is a promise about exact
counts ("a released cell covers at least k customers"), which only a party that sees the
exact count can keep; with distributed noise nobody sees it. (b) Distributed noise
protects only as long as the other nodes' shares stay secret: each node knows its own
share, so every node would have to over-noise for the shares of colluders, and the
answers would be noisier for the same epsilon. What distributed noise would add, keeping
exact sums from the nodes themselves, the current trust model does not give anyway.

**Noise and sensitivity.** Neighbouring datasets differ by one customer record (add or
remove one row at one party). Each noised vector (one value per cell, or per cell and bin)
has integer L1 sensitivity: 1 for the cell counts, for a rate's positives and for a
histogram (one customer falls in one cell, or one cell and bin); ``max(|lo|, |hi|)`` in grid
units for a clipped sum (values are clipped to ``[lo, hi]`` and rounded to a multiple of
``resolution``). The query's epsilon is split equally over its noised vectors: the cell
counts (always released: they carry the suppression and are the denominators of rates and
means), and one vector per rate, sum, mean and histogram measure (a ``count`` measure adds
none). Each vector gets discrete Laplace noise of scale ``sensitivity / (epsilon / n)``
(:mod:`fedprop.privacy.noise`: exact sampling from the OS CSPRNG, no floating point), so
the query is ``epsilon``-DP before suppression. Rate = noised positives / noised count and
mean = noised sum / noised count (post-processing, clamped to ``[0, 1]`` and ``[lo, hi]``);
answers carry each value's noise scale ``b`` and a delta-method standard error. The only way
to answer without noise is a node built with the test-only
``NoiseSource(testing_only_no_noise=True)``: no key of a query reaches it, and such an
answer says ``noised = false``.

**Suppression.** A cell is released only if its exact count is at least ``k`` (the policy's
promise, kept exactly) *and* its noised count is at least ``tau = k - 1 + m``. The exact
test alone would not be differentially private: a cell at ``k - 1`` customers would be
suppressed where its neighbour at ``k`` is released. With the noised test, the release
differs from that of a purely noised-threshold mechanism (which is ``epsilon``-DP) only if
some cell under ``k`` draws noise of at least ``m``; ``m`` is chosen so that this has
probability ``beta`` with ``cells * (1 + e^epsilon) * P[noise >= m] <= delta``, which makes the
whole release ``(epsilon, delta)``-DP (``delta >= beta + e^epsilon * beta``). So a query must
state ``delta > 0``; the ledger accounts it as the spend's ``extra_delta``.

**Budget.** Every node spends from its own ledger, per coordinator key, the query's
``(epsilon, delta)`` with its mechanisms (composed with privacy loss distributions where
``dp-accounting`` is installed). A query that does not fit, or that the policy refuses, is
refused before a row is read. ``k`` must be stated by the query, so that every node's
``decide`` checks it against its own policy's ``k`` (the releasing node applies the largest).

What each role learns (paillier): the coordinator, ciphertexts and the answer (noised cells
of at least ``k`` customers, with their noise scales); the releasing node, the exact summed
cells of the query; every other node, nothing beyond the answer (it holds the key, but is
sent no sum). Nobody sees another party's own cells. Limits: a node colluding with the
coordinator could decrypt another party's contribution, and the releasing node could hand
it the exact sums (with three parties the releaser learns the sum of the other two), as in
``hfl-train``; threshold decryption removes both. A person who is a customer of several
banks is several records, protected at ``epsilon`` per record (group privacy beyond that).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, TypeVar
from typing import Protocol as TypingProtocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedprop.crypto.identity import Manifest, NodeIdentity, check_parties, sign, verify
from fedprop.crypto.params import ALLOWED_PAILLIER_BITS, DEFAULT_PAILLIER_BITS
from fedprop.data.schema import Column, ColumnKind, Schema
from fedprop.errors import FedpropError, JobFailedError, SpecError
from fedprop.framing import join_frames, split_frames
from fedprop.privacy.ledger import BudgetDecision, BudgetLedger, Mechanism, MechanismKind, Spend
from fedprop.privacy.noise import (
    NoiseSource,
    discrete_laplace_tail,
    discrete_laplace_variance,
    laplace_scale,
)
from fedprop.privacy.policy import (
    MIN_COHORT_SIZE,
    JobKind,
    JobRequest,
    NodePolicy,
    decide,
    effective_k,
)
from fedprop.protocols.keys import KeyBundle, make_bundle
from fedprop.protocols.messages import ContributionReply, KeysReply
from fedprop.protocols.secure_sum import (
    Contribution,
    PaillierScheme,
    PlaintextScheme,
    SignedSum,
    SumScheme,
    VectorKind,
    check_aggregate,
    check_contributions,
    sign_contribution,
)
from fedprop.spec import MIN_PARTIES_FOR_SECURE_SUM, Aggregation

__all__ = [
    "MAX_CELLS",
    "MAX_SUM_UNITS",
    "MAX_VECTOR_VALUES",
    "QUERY_REPLIES",
    "QUERY_REQUESTS",
    "AnswerReply",
    "Calibration",
    "CellAnswer",
    "Filter",
    "GroupBy",
    "KeyScope",
    "Measure",
    "MeasureAnswer",
    "MeasureKind",
    "QueryAnswer",
    "QueryCoordinator",
    "QueryNode",
    "QueryNodeAdapter",
    "QueryNodeSettings",
    "QueryOutcome",
    "QueryReleaseRequest",
    "QueryRequest",
    "QueryRun",
    "QuerySpec",
    "QueryStep",
    "QueryTransport",
    "ReleaseRefusedError",
    "SignedAnswer",
    "answer_frame",
    "band_labels",
    "calibrate",
    "local_aggregates",
    "query_signer",
    "query_spend",
    "release_cells",
    "run_query",
    "run_query_in_process",
    "sign_query",
]

#: Most cells a query's grid may have: more cells than customers in a segment only makes
#: suppressed cells, and the threshold margin grows with the log of the cell count.
MAX_CELLS: Final = 10_000
#: Most values one party's vector may have (cells times bins, over all measures); bounds
#: the ciphertexts and noise draws a query can make a node produce.
MAX_VECTOR_VALUES: Final = 100_000
#: Largest clip bound of a sum, in grid units (``max(|lo|, |hi|) / resolution``): keeps
#: every party's cell sum exact in the secure sum's fixed-point slots (at most 2**40).
MAX_SUM_UNITS: Final = 2**24

T = TypeVar("T")

_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_RELEASE_CONTEXT: Final = b"fedprop-query-release-v1"


class ReleaseRefusedError(FedpropError):
    """A node refused to release a query's answer (not the releaser, not spent, released)."""


# --- the query spec ------------------------------------------------------------------------


class MeasureKind(StrEnum):
    """What a query computes per cell."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    RATE = "rate"
    HISTOGRAM = "histogram"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def band_labels(cuts: Sequence[float]) -> tuple[str, ...]:
    """Labels of the bands ``cuts`` make: ``< c0``, ``[c0, c1)``, ..., ``>= c_last``."""
    if not cuts:
        return ("all",)
    inner = [f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in itertools.pairwise(cuts)]
    return (f"< {_fmt(cuts[0])}", *inner, f">= {_fmt(cuts[-1])}")


@dataclass(frozen=True)
class Measure:
    """One measure of a query (built by :meth:`QuerySpec.from_toml`, which checks it)."""

    kind: MeasureKind
    column: str | None = None
    #: rate of a categorical column: the category counted as a positive.
    value: str | None = None
    #: sum and mean: values are clipped to ``[lo, hi]`` (bounds the sensitivity).
    clip: tuple[float, float] | None = None
    #: sum and mean: values are rounded to a multiple of this before summing.
    resolution: float = 1.0
    #: histogram of a numeric column: the cut points of its bins.
    cuts: tuple[float, ...] = ()
    #: histogram: the bins' labels, in order.
    bins: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """How answers name the measure: ``count``, ``rate(y)``, ``rate(contact=cellular)``,
        ``sum(campaign)``, ``mean(campaign)``, ``histogram(job)``."""
        if self.kind is MeasureKind.COUNT:
            return "count"
        if self.value is not None:
            return f"{self.kind}({self.column}={self.value})"
        return f"{self.kind}({self.column})"

    @property
    def sensitivity(self) -> int:
        """L1 sensitivity of this measure's own noised vector (0: it has none)."""
        if self.kind is MeasureKind.COUNT:
            return 0
        if self.kind in (MeasureKind.SUM, MeasureKind.MEAN):
            assert self.clip is not None
            return max(abs(_units(bound, self.resolution)) for bound in self.clip)
        return 1

    @property
    def width(self) -> int:
        """Values per cell of this measure's vector (0: no vector of its own)."""
        if self.kind is MeasureKind.COUNT:
            return 0
        return len(self.bins) if self.kind is MeasureKind.HISTOGRAM else 1


def _units(value: float, resolution: float) -> int:
    return int(np.rint(value / resolution))


@dataclass(frozen=True)
class GroupBy:
    """A group-by column and its groups: the categories, or the bands of its cut points."""

    column: str
    labels: tuple[str, ...]
    cuts: tuple[float, ...] = ()


@dataclass(frozen=True)
class Filter:
    """Rows kept: a category in ``values``, or a number in ``[at_least, below)``."""

    column: str
    values: tuple[str, ...] = ()
    at_least: float | None = None
    below: float | None = None


@dataclass(frozen=True)
class KeyScope:
    """A query's job key: made by ``key_holder`` for ``parties``, bound to ``id`` (the
    query's contribution id, so no training job's bundle can pass for it)."""

    id: str
    key_holder: str
    key_bits: int
    parties: tuple[str, ...]


@dataclass(frozen=True)
class QuerySpec:
    """A parsed, checked query. Build it with :meth:`from_toml`; ``text`` is its TOML."""

    id: str
    dataset: str
    parties: tuple[str, ...]
    key_holder: str
    #: The node that opens the sum, adds the noise and releases the answer.
    releaser: str
    aggregation: Aggregation
    key_bits: int
    epsilon: float
    delta: float
    k: int
    group_by: tuple[GroupBy, ...]
    filters: tuple[Filter, ...]
    measures: tuple[Measure, ...]
    schema: Schema
    text: str

    @classmethod
    def from_toml(cls, text: str, source: str = "<query>") -> QuerySpec:
        """Parse and check a query; :class:`SpecError` naming ``source`` and the problem."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{source}: not valid TOML: {exc}") from None
        try:
            return _parse(doc, text)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: Path | str) -> QuerySpec:
        """Read and parse a query file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError(f"{path}: query not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{path}: cannot read query: {exc}") from None
        return cls.from_toml(text, str(path))

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the query text: binds contributions, spends and the answer."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def contribution_id(self) -> str:
        """The id contributions are signed under (never a training job's id: ':' is not
        allowed in those)."""
        return f"query:{self.id}:{self.digest}"

    @property
    def cells(self) -> int:
        """Cells of the grid (1 without group-by)."""
        return math.prod(len(g.labels) for g in self.group_by)

    def cell_groups(self) -> list[tuple[str, ...]]:
        """Each cell's group labels, in the fixed cell order (first group-by slowest)."""
        return list(itertools.product(*(g.labels for g in self.group_by)))

    @property
    def vectors(self) -> tuple[tuple[str, Measure | None], ...]:
        """The noised vectors, in the order of a node's contribution: the cell counts,
        rates and histograms (exact counts), then sums and means (grid units)."""
        counted = [m for m in self.measures if m.kind in (MeasureKind.RATE, MeasureKind.HISTOGRAM)]
        summed = [m for m in self.measures if m.kind in (MeasureKind.SUM, MeasureKind.MEAN)]
        return (("count", None), *((m.name, m) for m in (*counted, *summed)))

    @property
    def count_values(self) -> int:
        """Leading values of a contribution that are exact counts."""
        return self.cells * (
            1
            + sum(
                m.width
                for m in self.measures
                if m.kind in (MeasureKind.RATE, MeasureKind.HISTOGRAM)
            )
        )

    @property
    def vector_length(self) -> int:
        """Values in one party's contribution."""
        return self.cells * (1 + sum(m.width for m in self.measures))

    @property
    def target_columns(self) -> tuple[str, ...]:
        """Columns the measures read (the policy's targets)."""
        columns = [m.column for m in self.measures if m.column is not None]
        return tuple(dict.fromkeys(columns))

    @property
    def key_scope(self) -> KeyScope:
        """What the query's Paillier key is made for (bound to this exact query text)."""
        return KeyScope(self.contribution_id, self.key_holder, self.key_bits, self.parties)

    def to_request(self, federation: str, coordinator: str) -> JobRequest:
        """What this query asks of a node, for :func:`~fedprop.privacy.policy.decide`.

        ``coordinator`` is the fingerprint of the key that signed the query.
        """
        return JobRequest(
            federation=federation,
            coordinator=coordinator,
            job_type=JobKind.QUERY.value,
            aggregation=self.aggregation.value,
            dataset=self.dataset,
            feature_columns=(),
            group_by_columns=tuple(g.column for g in self.group_by),
            target_columns=self.target_columns,
            filter_columns=tuple(dict.fromkeys(f.column for f in self.filters)),
            key_bits=self.key_bits if self.aggregation is Aggregation.PAILLIER else None,
            model_release=False,
            dp_epsilon=self.epsilon,
            dp_delta=self.delta,
            k=self.k,
        )


# --- parsing -------------------------------------------------------------------------------

_TOP_KEYS: Final = frozenset({"query", "dataset"})
_QUERY_KEYS: Final = frozenset(
    {
        "id",
        "parties",
        "key-holder",
        "releaser",
        "aggregation",
        "key-bits",
        "epsilon",
        "delta",
        "k",
        "group-by",
        "filters",
        "measures",
    }
)
_MEASURE_KEYS: Final = frozenset({"kind", "column", "value", "clip", "resolution", "bins"})
_GROUP_KEYS: Final = frozenset({"column", "bands"})
_FILTER_KEYS: Final = frozenset({"column", "equals", "in", "at-least", "below"})


def _keys(table: Mapping[str, Any], where: str, allowed: frozenset[str]) -> None:
    unknown = sorted(str(k) for k in table if k not in allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object, where: str) -> float:
    if not _is_number(value):
        raise SpecError(f"{where}: expected a number, got {value!r}")
    assert isinstance(value, int | float)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SpecError(f"{where}: must be a finite number, got {value!r}")
    return number


def _cuts(value: object, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: expected a non-empty list of cut points, got {value!r}")
    cuts = tuple(_number(v, where) for v in value)
    if any(lo >= hi for lo, hi in itertools.pairwise(cuts)):
        raise SpecError(f"{where}: cut points must be strictly increasing, got {list(cuts)}")
    return cuts


def _feature(schema: Schema, name: object, where: str) -> Column:
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}: expected a column name, got {name!r}")
    if name == schema.id_column:
        raise SpecError(f"{where}: '{name}' is the row id column; no query may use it")
    if name == schema.label:
        raise SpecError(f"{where}: '{name}' is the label; a query reads it only as a rate")
    for column in schema.columns:
        if column.name == name:
            return column
    raise SpecError(f"{where}: '{name}' is not a column of the dataset")


def _parse(doc: Mapping[str, Any], text: str) -> QuerySpec:
    _keys(doc, "top level", _TOP_KEYS)
    query = doc.get("query")
    if not isinstance(query, Mapping):
        raise SpecError("missing table [query]")
    dataset = doc.get("dataset")
    if not isinstance(dataset, Mapping):
        raise SpecError("missing table [dataset] (the schema every party's data has)")
    _keys(query, "[query]", _QUERY_KEYS)
    dataset_name = dataset.get("name")
    if not isinstance(dataset_name, str) or not dataset_name:
        raise SpecError("[dataset] name: expected the dataset's name")
    schema = Schema.from_dict(dataset)

    query_id = query.get("id")
    if not isinstance(query_id, str) or not query_id or not set(query_id) <= _ID_CHARS:
        raise SpecError(
            f"[query] id: {query_id!r} must be non-empty letters, digits, '-', '_', '.'"
        )
    if len(query_id) > 128:
        raise SpecError("[query] id: at most 128 characters")
    parties = query.get("parties")
    if (
        not isinstance(parties, list)
        or not parties
        or not all(isinstance(p, str) and p for p in parties)
    ):
        raise SpecError("[query] parties: must be a non-empty list of party names")
    if len(set(parties)) != len(parties):
        raise SpecError("[query] parties: duplicate party name")
    try:
        aggregation = Aggregation(query.get("aggregation", Aggregation.PAILLIER.value))
    except ValueError:
        allowed = ", ".join(a.value for a in Aggregation)
        raise SpecError(
            f"[query] aggregation: {query.get('aggregation')!r} is not one of: {allowed}"
        ) from None
    if aggregation is Aggregation.PAILLIER and len(parties) < MIN_PARTIES_FOR_SECURE_SUM:
        raise SpecError(
            f"[query] parties: a paillier query needs at least {MIN_PARTIES_FOR_SECURE_SUM} "
            f"parties; with {len(parties)}, the releasing party learns the other's aggregates"
        )
    key_holder = query.get("key-holder", parties[0])
    if key_holder not in parties:
        raise SpecError(f"[query] key-holder: {key_holder!r} is not one of the parties")
    releaser = query.get("releaser", key_holder)
    if releaser not in parties:
        raise SpecError(f"[query] releaser: {releaser!r} is not one of the parties")
    key_bits = query.get("key-bits", DEFAULT_PAILLIER_BITS)
    if isinstance(key_bits, bool) or key_bits not in ALLOWED_PAILLIER_BITS:
        allowed = ", ".join(str(b) for b in ALLOWED_PAILLIER_BITS)
        raise SpecError(f"[query] key-bits: {key_bits!r} is not allowed (allowed: {allowed})")

    if "epsilon" not in query:
        raise SpecError("[query] epsilon: missing (every query states the privacy it spends)")
    epsilon = _number(query["epsilon"], "[query] epsilon")
    if epsilon <= 0:
        raise SpecError(f"[query] epsilon: must be above 0, got {query['epsilon']!r}")
    if "delta" not in query:
        raise SpecError(
            "[query] delta: missing (suppressing cells under k needs a small delta, e.g. 1e-7)"
        )
    delta = _number(query["delta"], "[query] delta")
    if not 0 < delta < 1:
        raise SpecError(
            f"[query] delta: must be in (0, 1), got {query['delta']!r} (suppressing cells "
            "under k on exact counts is differentially private only with a delta above 0)"
        )
    k = query.get("k")
    if k is None:
        raise SpecError("[query] k: missing (the smallest cohort of a released cell)")
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_COHORT_SIZE:
        raise SpecError(f"[query] k: must be an integer of at least {MIN_COHORT_SIZE}, got {k!r}")

    group_by = _parse_group_by(query.get("group-by", []), schema)
    filters = _parse_filters(query.get("filters", []), schema)
    measures = _parse_measures(query.get("measures"), schema)

    spec = QuerySpec(
        id=query_id,
        dataset=dataset_name,
        parties=tuple(parties),
        key_holder=key_holder,
        releaser=releaser,
        aggregation=aggregation,
        key_bits=key_bits,
        epsilon=epsilon,
        delta=delta,
        k=k,
        group_by=group_by,
        filters=filters,
        measures=measures,
        schema=schema,
        text=text,
    )
    if spec.cells > MAX_CELLS:
        raise SpecError(
            f"[query] group-by: {spec.cells} cells; at most {MAX_CELLS} (group by fewer "
            "columns or coarser bands)"
        )
    if spec.vector_length > MAX_VECTOR_VALUES:
        raise SpecError(
            f"[query] measures: {spec.vector_length} values per party; at most "
            f"{MAX_VECTOR_VALUES} (fewer cells, measures or histogram bins)"
        )
    return spec


def _parse_group_by(raw: object, schema: Schema) -> tuple[GroupBy, ...]:
    if not isinstance(raw, list):
        raise SpecError("[query] group-by: expected a list of columns")
    out: list[GroupBy] = []
    for index, entry in enumerate(raw):
        where = f"[query] group-by[{index}]"
        bands: tuple[float, ...] | None = None
        if isinstance(entry, Mapping):
            _keys(entry, where, _GROUP_KEYS)
            name = entry.get("column")
            if "bands" in entry:
                bands = _cuts(entry["bands"], f"{where} bands")
        else:
            name = entry
        column = _feature(schema, name, where)
        if column.is_numeric:
            cuts = bands if bands is not None else column.bands
            if not cuts:
                raise SpecError(
                    f"{where}: numeric column '{column.name}' needs bands (cut points), in the "
                    "query or the dataset schema; raw values would single customers out"
                )
            out.append(GroupBy(column.name, band_labels(cuts), cuts))
        else:
            if bands is not None:
                raise SpecError(f"{where}: bands are for numeric columns; '{column.name}' is not")
            out.append(GroupBy(column.name, column.vocabulary))
    names = [g.column for g in out]
    if len(set(names)) != len(names):
        raise SpecError("[query] group-by: a column is listed twice")
    return tuple(out)


def _parse_filters(raw: object, schema: Schema) -> tuple[Filter, ...]:
    if not isinstance(raw, list):
        raise SpecError("[query] filters: expected [[query.filters]] tables")
    out: list[Filter] = []
    for index, entry in enumerate(raw):
        where = f"[query] filters[{index}]"
        if not isinstance(entry, Mapping):
            raise SpecError(f"{where}: expected a table")
        _keys(entry, where, _FILTER_KEYS)
        column = _feature(schema, entry.get("column"), where)
        if column.is_numeric:
            if "equals" in entry or "in" in entry:
                raise SpecError(
                    f"{where}: numeric column '{column.name}' is filtered by at-least and below"
                )
            at_least = (
                _number(entry["at-least"], f"{where} at-least") if "at-least" in entry else None
            )
            below = _number(entry["below"], f"{where} below") if "below" in entry else None
            if at_least is None and below is None:
                raise SpecError(f"{where}: give at-least, below or both")
            if at_least is not None and below is not None and at_least >= below:
                raise SpecError(f"{where}: at-least ({at_least:g}) must be below 'below'")
            out.append(Filter(column.name, at_least=at_least, below=below))
            continue
        if "at-least" in entry or "below" in entry:
            raise SpecError(
                f"{where}: categorical column '{column.name}' is filtered by equals or in"
            )
        if ("equals" in entry) == ("in" in entry):
            raise SpecError(f"{where}: give exactly one of equals and in")
        values = [entry["equals"]] if "equals" in entry else entry["in"]
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: in: expected a non-empty list of categories")
        for value in values:
            if value not in column.vocabulary:
                raise SpecError(
                    f"{where}: {value!r} is not a category of '{column.name}' "
                    f"({', '.join(column.vocabulary)})"
                )
        if len(set(values)) != len(values):
            raise SpecError(f"{where}: a category is listed twice")
        out.append(Filter(column.name, values=tuple(values)))
    return tuple(out)


def _parse_measures(raw: object, schema: Schema) -> tuple[Measure, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecError("[query] measures: expected at least one [[query.measures]] table")
    out = tuple(_parse_measure(entry, i, schema) for i, entry in enumerate(raw))
    names = [m.name for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpecError(f"[query] measures: {', '.join(twice)} asked twice")
    summed = [m.column for m in out if m.kind in (MeasureKind.SUM, MeasureKind.MEAN)]
    both = sorted({c for c in summed if c is not None and summed.count(c) > 1})
    if both:
        raise SpecError(
            f"[query] measures: '{both[0]}' is both summed and averaged; ask for one (each "
            "would spend budget on the same sum)"
        )
    return out


def _parse_measure(entry: object, index: int, schema: Schema) -> Measure:
    where = f"[query] measures[{index}]"
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: expected a table")
    _keys(entry, where, _MEASURE_KEYS)
    try:
        kind = MeasureKind(str(entry.get("kind")))
    except ValueError:
        allowed = ", ".join(k.value for k in MeasureKind)
        raise SpecError(f"{where} kind: {entry.get('kind')!r} is not one of: {allowed}") from None
    where = f"{where} ({kind})"

    def refuse_keys(*names: str) -> None:
        for name in names:
            if name in entry:
                raise SpecError(f"{where}: '{name}' does not apply to a {kind} measure")

    if kind is MeasureKind.COUNT:
        refuse_keys("column", "value", "clip", "resolution", "bins")
        return Measure(kind)
    name = entry.get("column")
    if kind is MeasureKind.RATE:
        refuse_keys("clip", "resolution", "bins")
        if name == schema.label:
            if "value" in entry:
                raise SpecError(f"{where}: a rate of the label counts its positive value")
            return Measure(kind, schema.label)
        column = _feature(schema, name, where)
        if column.is_numeric:
            raise SpecError(
                f"{where}: a rate is of the label or of one category; '{column.name}' is numeric"
            )
        value = entry.get("value")
        if value not in column.vocabulary:
            raise SpecError(
                f"{where}: value: give the category counted as a positive, one of "
                f"{', '.join(column.vocabulary)}"
            )
        return Measure(kind, column.name, value=value)
    column = _feature(schema, name, where)
    if kind is MeasureKind.HISTOGRAM:
        refuse_keys("value", "clip", "resolution")
        if not column.is_numeric:
            if "bins" in entry:
                raise SpecError(f"{where}: the bins of a categorical column are its categories")
            return Measure(kind, column.name, bins=column.vocabulary)
        cuts = _cuts(entry["bins"], f"{where} bins") if "bins" in entry else column.bands
        if not cuts:
            raise SpecError(
                f"{where}: numeric column '{column.name}' needs bins (cut points), in the "
                "query or as bands in the dataset schema"
            )
        return Measure(kind, column.name, cuts=cuts, bins=band_labels(cuts))
    # sum and mean
    refuse_keys("value", "bins")
    if not column.is_numeric:
        raise SpecError(f"{where}: '{column.name}' is not numeric")
    if column.nullable:
        raise SpecError(f"{where}: '{column.name}' may be empty; sums need a value on every row")
    clip = entry.get("clip")
    if not isinstance(clip, list) or len(clip) != 2:
        raise SpecError(
            f"{where}: clip = [lo, hi] is required: the sensitivity of a sum is its largest "
            "possible contribution"
        )
    lo, hi = (_number(v, f"{where} clip") for v in clip)
    if lo >= hi:
        raise SpecError(f"{where}: clip: lo ({lo:g}) must be below hi ({hi:g})")
    if "resolution" in entry:
        resolution = _number(entry["resolution"], f"{where} resolution")
        if resolution <= 0:
            raise SpecError(f"{where}: resolution must be above 0")
    elif column.kind is ColumnKind.INTEGER:
        resolution = 1.0
    else:
        raise SpecError(
            f"{where}: resolution is required for float column '{column.name}' (values are "
            "summed as whole multiples of it)"
        )
    measure = Measure(kind, column.name, clip=(lo, hi), resolution=resolution)
    units = max(abs(lo), abs(hi)) / resolution
    if not 1 <= measure.sensitivity <= MAX_SUM_UNITS or units > MAX_SUM_UNITS:
        raise SpecError(
            f"{where}: clip bounds of {units:.6g} resolution units; must be 1 to "
            f"{MAX_SUM_UNITS} (coarser resolution or narrower clip)"
        )
    return measure


# --- node side: local aggregates -----------------------------------------------------------


def _codes(frame: pd.DataFrame, column: str, labels: Sequence[str], cuts: Sequence[float]) -> Any:
    """Per row: the index of its group (category or band); -1 for a missing number."""
    series = frame[column]
    if cuts:
        values = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64)
        codes = np.searchsorted(np.asarray(cuts, dtype=np.float64), values, side="right")
        return np.where(np.isnan(values), -1, codes).astype(np.int64)
    codes = pd.Categorical(series.astype(str), categories=list(labels)).codes.astype(np.int64)
    if np.any(codes < 0):
        bad = series[codes < 0].iloc[0]
        raise FedpropError(f"column '{column}': {bad!r} is not a category of the query's schema")
    return codes


def _row_cells(query: QuerySpec, frame: pd.DataFrame) -> npt.NDArray[np.int64]:
    """Each row's cell index, or -1 for rows the filters drop (or with a missing group)."""
    rows = len(frame)
    keep = np.ones(rows, dtype=bool)
    for f in query.filters:
        series = frame[f.column]
        if f.values:
            keep &= series.astype(str).isin(f.values).to_numpy(dtype=bool)
        else:
            values = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64)
            inside = ~np.isnan(values)
            if f.at_least is not None:
                inside &= values >= f.at_least
            if f.below is not None:
                inside &= values < f.below
            keep &= inside
    cells = np.zeros(rows, dtype=np.int64)
    for g in query.group_by:
        codes = _codes(frame, g.column, g.labels, g.cuts)
        keep &= codes >= 0
        cells = cells * len(g.labels) + codes
    return np.where(keep, cells, -1).astype(np.int64)


def local_aggregates(query: QuerySpec, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    """A node's vector for ``query``: per cell of the full grid, in the order of
    :attr:`QuerySpec.vectors`, the row count, each rate's positives, each histogram's bin
    counts, then each sum's and mean's sum of clipped values in grid units. Every value is a
    whole number. Rows a filter drops, or with no value in a group-by column, are in no cell.
    """
    missing = [c for c in (*_used_columns(query),) if c not in frame.columns]
    if missing:
        raise FedpropError(f"the data has no column '{missing[0]}' that query '{query.id}' reads")
    cells = _row_cells(query, frame)
    inside = cells >= 0
    where = cells[inside]
    n = query.cells
    parts: list[npt.NDArray[np.float64]] = [np.bincount(where, minlength=n).astype(np.float64)]
    for _, measure in query.vectors[1:]:
        assert measure is not None and measure.column is not None
        series = frame[measure.column][inside]
        if measure.kind is MeasureKind.RATE:
            if measure.value is None:
                positive = series.to_numpy(dtype=np.float64)
            else:
                positive = (series.astype(str) == measure.value).to_numpy(dtype=np.float64)
            parts.append(np.rint(np.bincount(where, weights=positive, minlength=n)))
        elif measure.kind is MeasureKind.HISTOGRAM:
            bins = _codes(frame[inside], measure.column, measure.bins, measure.cuts)
            has = bins >= 0
            flat = where[has] * len(measure.bins) + bins[has]
            parts.append(np.bincount(flat, minlength=n * len(measure.bins)).astype(np.float64))
        else:
            assert measure.clip is not None
            values = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64)
            units = np.rint(np.clip(values, *measure.clip) / measure.resolution)
            parts.append(np.rint(np.bincount(where, weights=units, minlength=n)))
    return np.concatenate(parts)


def _used_columns(query: QuerySpec) -> tuple[str, ...]:
    names = [g.column for g in query.group_by] + [f.column for f in query.filters]
    return tuple(dict.fromkeys([*names, *query.target_columns]))


# --- calibration and the spend -------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The noise of a query: one discrete Laplace scale per noised vector, and the margin
    a released cell's noised count must clear."""

    #: Epsilon of each noised vector (the query's epsilon split equally).
    vector_epsilon: float
    #: Discrete Laplace scale of each vector, in :attr:`QuerySpec.vectors` order, in the
    #: vector's integer units.
    scales: tuple[Fraction, ...]
    #: L1 sensitivity of each vector, in its integer units.
    sensitivities: tuple[int, ...]
    #: ``m``: a released cell's noised count is at least ``k - 1 + m``.
    margin: int

    def threshold(self, k: int) -> int:
        """The noised count a cell must reach, with cohort size ``k``."""
        return k - 1 + self.margin


def calibrate(query: QuerySpec) -> Calibration:
    """The query's noise (see the module docs: equal split of epsilon, discrete Laplace,
    threshold margin from delta)."""
    vectors = query.vectors
    share = query.epsilon / len(vectors)
    sensitivities = tuple(1 if m is None else m.sensitivity for _, m in vectors)
    scales = tuple(laplace_scale(s, share) for s in sensitivities)
    count_scale = float(scales[0])
    bound = query.cells * (1 + math.exp(query.epsilon)) / query.delta
    margin = max(1, math.ceil(count_scale * math.log(bound / (1 + math.exp(-1 / count_scale)))))
    while query.cells * (1 + math.exp(query.epsilon)) * discrete_laplace_tail(
        scales[0], margin
    ) > query.delta * (1 - 1e-12):
        margin += 1  # guard against rounding in the closed form above
    return Calibration(share, scales, sensitivities, margin)


def _float_at_most(value: Fraction) -> float:
    number = float(value)
    return math.nextafter(number, 0.0) if Fraction(number) > value else number


def query_spend(query: QuerySpec, coordinator: str) -> Spend:
    """What ``query`` takes from ``coordinator``'s budget at a node: its epsilon and delta,
    its discrete Laplace mechanisms, and its threshold's delta outside them."""
    calibration = calibrate(query)
    return Spend(
        coordinator=coordinator,
        query_id=query.id,
        epsilon=query.epsilon,
        delta=query.delta,
        mechanisms=tuple(
            Mechanism(MechanismKind.DISCRETE_LAPLACE, _float_at_most(scale), sensitivity)
            for scale, sensitivity in zip(
                calibration.scales, calibration.sensitivities, strict=True
            )
        ),
        extra_delta=query.delta,
        what="query",
        digest=query.digest,
    )


# --- release: suppression, noise, answers --------------------------------------------------


@dataclass(frozen=True)
class MeasureAnswer:
    """One measure's released value in one cell.

    ``noise_b`` is the scale of the discrete Laplace noise on the measure's own noised
    vector, in the measure's units (the positives of a rate, the sum of a mean or sum, each
    bin of a histogram); ``std_error`` the standard deviation the noise gives the value
    (delta-method for rates and means, evaluated at the noised values). Both are 0 for an
    answer made without noise (tests only).
    """

    name: str
    value: float | tuple[int, ...]
    noise_b: float
    std_error: float
    bins: tuple[str, ...] = ()


@dataclass(frozen=True)
class CellAnswer:
    """One cell: its groups, and its noised count and measures, or suppressed (None)."""

    group: tuple[str, ...]
    suppressed: bool
    count: int | None = None
    count_noise_b: float | None = None
    measures: tuple[MeasureAnswer, ...] = ()


@dataclass(frozen=True)
class QueryAnswer:
    """What the coordinator receives: every cell of the grid, released or suppressed."""

    query_id: str
    #: SHA-256 of the query text the answer is for.
    digest: str
    releaser: str
    group_by: tuple[str, ...]
    measures: tuple[str, ...]
    cells: tuple[CellAnswer, ...]
    k: int
    #: The noised count a released cell reached.
    threshold: int
    epsilon: float
    delta: float
    mechanism: str = "discrete-laplace"
    #: False only for answers made by the test-only noiseless source.
    noised: bool = True

    def to_json(self) -> str:
        """Canonical JSON (what the releasing node signs)."""
        return json.dumps(_answer_dict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> QueryAnswer:
        """Parse :meth:`to_json` output; :class:`FedpropError` if malformed."""
        try:
            return _answer_from(json.loads(text))
        except (KeyError, TypeError, ValueError) as exc:
            raise FedpropError(f"malformed query answer: {exc}") from None


def _answer_dict(answer: QueryAnswer) -> dict[str, Any]:
    return {
        "query": answer.query_id,
        "digest": answer.digest,
        "releaser": answer.releaser,
        "group_by": list(answer.group_by),
        "measures": list(answer.measures),
        "k": answer.k,
        "threshold": answer.threshold,
        "epsilon": answer.epsilon,
        "delta": answer.delta,
        "mechanism": answer.mechanism,
        "noised": answer.noised,
        "cells": [
            {
                "group": list(c.group),
                "suppressed": c.suppressed,
                "count": c.count,
                "count_noise_b": c.count_noise_b,
                "measures": [
                    {
                        "name": m.name,
                        "value": list(m.value) if isinstance(m.value, tuple) else m.value,
                        "noise_b": m.noise_b,
                        "std_error": m.std_error,
                        "bins": list(m.bins),
                    }
                    for m in c.measures
                ],
            }
            for c in answer.cells
        ],
    }


def _answer_from(d: Mapping[str, Any]) -> QueryAnswer:
    cells = tuple(
        CellAnswer(
            group=tuple(str(g) for g in c["group"]),
            suppressed=bool(c["suppressed"]),
            count=None if c["count"] is None else int(c["count"]),
            count_noise_b=None if c["count_noise_b"] is None else float(c["count_noise_b"]),
            measures=tuple(
                MeasureAnswer(
                    name=str(m["name"]),
                    value=tuple(int(v) for v in m["value"])
                    if isinstance(m["value"], list)
                    else float(m["value"]),
                    noise_b=float(m["noise_b"]),
                    std_error=float(m["std_error"]),
                    bins=tuple(str(b) for b in m["bins"]),
                )
                for m in c["measures"]
            ),
        )
        for c in d["cells"]
    )
    return QueryAnswer(
        query_id=str(d["query"]),
        digest=str(d["digest"]),
        releaser=str(d["releaser"]),
        group_by=tuple(str(g) for g in d["group_by"]),
        measures=tuple(str(m) for m in d["measures"]),
        cells=cells,
        k=int(d["k"]),
        threshold=int(d["threshold"]),
        epsilon=float(d["epsilon"]),
        delta=float(d["delta"]),
        mechanism=str(d["mechanism"]),
        noised=bool(d["noised"]),
    )


def _integral(totals: npt.NDArray[np.float64], query: QuerySpec) -> list[int]:
    values = np.asarray(totals, dtype=np.float64)
    if values.shape != (query.vector_length,):
        raise FedpropError(
            f"query '{query.id}': a sum of {values.size} values, expected {query.vector_length}"
        )
    rounded = np.rint(values)
    if not np.all(np.isfinite(values)) or np.max(np.abs(values - rounded), initial=0.0) > 1e-3:
        raise FedpropError(f"query '{query.id}': summed aggregates are not whole numbers")
    counts = rounded[: query.count_values]
    if np.any(counts < 0):
        raise FedpropError(f"query '{query.id}': a summed count is negative")
    return [int(v) for v in rounded.tolist()]


def release_cells(
    query: QuerySpec,
    totals: npt.NDArray[np.float64],
    *,
    k: int,
    noise: NoiseSource,
    releaser: str = "",
) -> QueryAnswer:
    """The answer to ``query`` from its opened sums ``totals`` (run by the releasing node).

    Every value of every noised vector gets its discrete Laplace noise, drawn once from
    ``noise``; a cell is released if its exact count is at least ``k`` and its noised count
    at least :meth:`Calibration.threshold` (``k`` itself when ``noise`` is the test-only
    noiseless source). Suppressed cells carry nothing but their groups.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < query.k:
        raise FedpropError(f"cohort size {k!r} is below the query's k = {query.k}")
    if not isinstance(noise, NoiseSource):
        raise TypeError("noise must be a NoiseSource")
    values = _integral(totals, query)
    calibration = calibrate(query)
    cells = query.cells
    noised: list[list[int]] = []
    offset = 0
    for (_, measure), scale in zip(query.vectors, calibration.scales, strict=True):
        size = cells * (1 if measure is None else measure.width)
        draws = noise.discrete_laplace(scale, size)
        noised.append([v + z for v, z in zip(values[offset : offset + size], draws, strict=True)])
        offset += size
    exact_counts = values[:cells]
    threshold = calibration.threshold(k) if noise.enabled else k
    on = 1.0 if noise.enabled else 0.0
    variances = [discrete_laplace_variance(s) * on for s in calibration.scales]
    count_b = float(calibration.scales[0]) * on

    answers: list[CellAnswer] = []
    for cell, group in enumerate(query.cell_groups()):
        count = noised[0][cell]
        if exact_counts[cell] < k or count < threshold:
            answers.append(CellAnswer(group, suppressed=True))
            continue
        measures: list[MeasureAnswer] = []
        for measure in query.measures:
            if measure.kind is MeasureKind.COUNT:
                measures.append(
                    MeasureAnswer("count", float(count), count_b, math.sqrt(variances[0]))
                )
                continue
            index = next(i for i, (_, m) in enumerate(query.vectors) if m is measure)
            vector, scale, variance = noised[index], calibration.scales[index], variances[index]
            measures.append(
                _measure_answer(
                    measure, vector, cell, count, float(scale) * on, variance, variances[0]
                )
            )
        answers.append(CellAnswer(group, False, count, count_b, tuple(measures)))
    return QueryAnswer(
        query_id=query.id,
        digest=query.digest,
        releaser=releaser,
        group_by=tuple(g.column for g in query.group_by),
        measures=tuple(m.name for m in query.measures),
        cells=tuple(answers),
        k=k,
        threshold=threshold,
        epsilon=query.epsilon,
        delta=query.delta,
        noised=noise.enabled,
    )


def _measure_answer(
    measure: Measure,
    vector: Sequence[int],
    cell: int,
    count: int,
    scale: float,
    variance: float,
    count_variance: float,
) -> MeasureAnswer:
    if measure.kind is MeasureKind.HISTOGRAM:
        width = len(measure.bins)
        bins = tuple(max(0, v) for v in vector[cell * width : (cell + 1) * width])
        return MeasureAnswer(measure.name, bins, scale, math.sqrt(variance), measure.bins)
    numerator = vector[cell]
    if measure.kind is MeasureKind.RATE:
        rate = min(1.0, max(0.0, numerator / count))
        error = math.sqrt(variance + rate**2 * count_variance) / count
        return MeasureAnswer(measure.name, rate, scale, error)
    unit = measure.resolution
    assert measure.clip is not None
    total = numerator * unit
    if measure.kind is MeasureKind.SUM:
        return MeasureAnswer(measure.name, total, scale * unit, math.sqrt(variance) * unit)
    mean = min(measure.clip[1], max(measure.clip[0], total / count))
    error = math.sqrt(variance * unit**2 + mean**2 * count_variance) / count
    return MeasureAnswer(measure.name, mean, scale * unit, error)


def answer_frame(answer: QueryAnswer) -> pd.DataFrame:
    """The answer as a table, one row per cell: the group columns, ``suppressed``, ``count``
    and its ``count noise_b``, then per measure its value, ``noise_b`` and ``std_error``
    (a histogram: one column per bin). Suppressed cells have empty values."""
    rows: list[dict[str, Any]] = []
    for cell in answer.cells:
        row: dict[str, Any] = dict(zip(answer.group_by, cell.group, strict=True))
        row["suppressed"] = cell.suppressed
        row["count"] = cell.count
        row["count noise_b"] = cell.count_noise_b
        for m in cell.measures:
            if m.name == "count":
                continue
            if isinstance(m.value, tuple):
                for label, value in zip(m.bins, m.value, strict=True):
                    row[f"{m.name}[{label}]"] = value
            else:
                row[m.name] = m.value
            row[f"{m.name} noise_b"] = m.noise_b
            row[f"{m.name} std_error"] = m.std_error
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["count"] = frame["count"].astype("Int64")
    frame.attrs.update(
        query=answer.query_id,
        k=answer.k,
        threshold=answer.threshold,
        epsilon=answer.epsilon,
        delta=answer.delta,
        mechanism=answer.mechanism,
        noised=answer.noised,
    )
    return frame


# --- roles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedAnswer:
    """The releasing node's answer and its signature over it."""

    party: str
    answer: str
    signature: bytes

    def to_bytes(self) -> bytes:
        """Canonical bytes."""
        return join_frames([self.party.encode(), self.answer.encode(), self.signature])

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedAnswer:
        """Parse; :class:`FedpropError` if malformed."""
        frames = split_frames(data, "signed answer")
        if len(frames) != 3:
            raise FedpropError("signed answer is malformed")
        try:
            return cls(frames[0].decode(), frames[1].decode(), frames[2])
        except UnicodeDecodeError:
            raise FedpropError("signed answer is malformed") from None


def _answer_message(query: QuerySpec, party: str, answer: str) -> bytes:
    return join_frames(
        [_RELEASE_CONTEXT, query.contribution_id.encode(), party.encode(), answer.encode()]
    )


@dataclass(frozen=True)
class QueryNodeSettings:
    """What a node brings to queries besides its data."""

    identity: NodeIdentity
    manifest: Manifest
    policy: NodePolicy
    ledger: BudgetLedger
    noise: NoiseSource = field(default_factory=NoiseSource)

    def __post_init__(self) -> None:
        if self.policy.dp is None or self.ledger.budget != self.policy.dp:
            raise FedpropError("the budget ledger must keep the policy's [dp] budget")


def _check_scheme(query: QuerySpec, scheme: SumScheme) -> None:
    if query.aggregation is Aggregation.PLAINTEXT:
        if not isinstance(scheme, PlaintextScheme):
            raise FedpropError(f"query '{query.id}' is plaintext; got a {type(scheme).__name__}")
        return
    if not isinstance(scheme, PaillierScheme):
        raise FedpropError(f"query '{query.id}' is paillier; got a {type(scheme).__name__}")
    if scheme.public.bits < query.key_bits:
        raise FedpropError(
            f"query key has {scheme.public.bits} bits; the query asks for {query.key_bits}"
        )
    if scheme.counts.max_summands != len(query.parties):
        raise FedpropError("the sum scheme is not packed for the query's parties")


class QueryNode:
    """A party answering queries: its own rows, policy, ledger and noise source.

    :attr:`timings` holds the seconds each part of the last step took.
    """

    def __init__(
        self,
        data: pd.DataFrame | Callable[[Schema], pd.DataFrame],
        settings: QueryNodeSettings,
    ) -> None:
        self._data = data
        self._frame: pd.DataFrame | None = None
        self.settings = settings
        self.timings: dict[str, float] = {}
        self.last_spend: BudgetDecision | None = None

    def frame(self, schema: Schema) -> pd.DataFrame:
        """This node's rows, read (once) only when a query was admitted."""
        if self._frame is None:
            self._frame = self._data if isinstance(self._data, pd.DataFrame) else self._data(schema)
        return self._frame

    @property
    def name(self) -> str:
        """This node's party name."""
        return self.settings.identity.name

    def admit(self, query_text: str, coordinator: str) -> tuple[QuerySpec, Spend]:
        """Parse the query and ask the policy and the budget; read no data.

        :class:`~fedprop.errors.SpecError`, :class:`~fedprop.privacy.policy.PolicyRefusedError`
        or :class:`~fedprop.privacy.ledger.BudgetExceededError` if refused.
        """
        query = QuerySpec.from_toml(query_text, "query")
        if self.name not in query.parties:
            raise FedpropError(f"'{self.name}' is not a party of query '{query.id}'")
        check_parties(self.settings.manifest, query.parties)
        request = query.to_request(self.settings.manifest.federation, coordinator)
        decide(self.settings.policy, request).raise_if_refused()
        spend = query_spend(query, coordinator)
        decision = self.settings.ledger.check(spend)
        decision.raise_if_refused()
        self.last_spend = decision
        return query, spend

    def contribute(self, query_text: str, coordinator: str, scheme: SumScheme) -> Contribution:
        """Step 1: admit, compute the local aggregates, seal, record the spend, sign."""
        clock = _Clock()
        query, spend = self.admit(query_text, coordinator)
        _check_scheme(query, scheme)
        clock.lap("admit")
        vector = local_aggregates(query, self.frame(query.schema))
        clock.lap("aggregates")
        payload = scheme.seal(vector, query.count_values)
        clock.lap("seal")
        contribution = sign_contribution(
            self.settings.identity, query.contribution_id, VectorKind.HISTOGRAM, 0, payload
        )
        clock.lap("sign")
        # Durable before the contribution leaves; made at the time it was checked, so the
        # spend's window is the one its decision (and the node's log) states.
        checked = self.last_spend.at if self.last_spend is not None else None
        self.settings.ledger.record(spend, at=checked)
        clock.lap("record")
        self.timings = clock.laps
        return contribution

    def release(
        self, query_text: str, coordinator: str, scheme: SumScheme, total: bytes
    ) -> SignedAnswer:
        """Step 3 (the releaser only): check and open the sum, suppress, noise, record, sign."""
        clock = _Clock()
        query = QuerySpec.from_toml(query_text, "query")
        if self.name != query.releaser:
            raise ReleaseRefusedError(
                f"'{self.name}' is not the releaser of query '{query.id}' ({query.releaser})"
            )
        request = query.to_request(self.settings.manifest.federation, coordinator)
        decide(self.settings.policy, request).raise_if_refused()
        _check_scheme(query, scheme)
        ledger = self.settings.ledger
        spent = ledger.spend_of(coordinator, query.id)
        if spent is None or spent.digest != query.digest:
            raise ReleaseRefusedError(
                f"'{self.name}' did not contribute to query '{query.id}' as sent"
            )
        if ledger.released(coordinator, query.id):
            raise ReleaseRefusedError(
                f"'{self.name}' already released query '{query.id}'; an answer is released once"
            )
        clock.lap("admit")
        try:
            signed = SignedSum.from_bytes(total)
            check_aggregate(
                scheme,
                signed.aggregate,
                signed.contributions,
                manifest=self.settings.manifest,
                parties=query.parties,
                job_id=query.contribution_id,
                kind=VectorKind.HISTOGRAM,
                round_=0,
            )
        except FedpropError as exc:
            raise ReleaseRefusedError(f"'{self.name}' refuses the sum: {exc}") from None
        clock.lap("check")
        totals = scheme.open(
            signed.aggregate, query.vector_length, len(query.parties), query.count_values
        )
        clock.lap("open")
        answer = release_cells(
            query,
            totals,
            k=effective_k(self.settings.policy, request),
            noise=self.settings.noise,
            releaser=self.name,
        )
        text = answer.to_json()
        clock.lap("noise")
        ledger.record_release(coordinator, query.id, query.digest)  # before anything leaves
        clock.lap("record")
        signature = sign(self.settings.identity, _answer_message(query, self.name, text))
        clock.lap("sign")
        self.timings = clock.laps
        return SignedAnswer(self.name, text, signature)


class QueryCoordinator:
    """The coordinator: adds the sealed contributions, accepts the signed answer."""

    def __init__(self, query_text: str, manifest: Manifest, scheme: SumScheme) -> None:
        self.query = QuerySpec.from_toml(query_text, "query")
        check_parties(manifest, self.query.parties)
        self.manifest = manifest
        self.scheme = scheme
        self.received = 0

    def collect(self, contributions: Sequence[Contribution]) -> bytes:
        """Check and add one contribution per party; the signed sum for the releaser."""
        q = self.query
        try:
            ordered = check_contributions(
                contributions,
                manifest=self.manifest,
                parties=q.parties,
                job_id=q.contribution_id,
                kind=VectorKind.HISTOGRAM,
                round_=0,
            )
            aggregate = self.scheme.add([c.payload for c in ordered])
        except FedpropError as exc:
            raise JobFailedError(f"query '{q.id}': {exc}") from None
        self.received += sum(len(c.payload) + len(c.signature) for c in ordered)
        return SignedSum(aggregate, tuple(ordered)).to_bytes()

    def accept(self, reply: SignedAnswer) -> QueryAnswer:
        """The answer, once it is the releaser's, for this query text, and signed by it."""
        q = self.query
        if reply.party != q.releaser:
            raise JobFailedError(f"query '{q.id}': answer from '{reply.party}', not the releaser")
        try:
            verify(
                self.manifest.node(reply.party),
                _answer_message(q, reply.party, reply.answer),
                reply.signature,
            )
        except FedpropError:
            raise JobFailedError(
                f"query '{q.id}': the answer's signature of '{reply.party}' does not verify"
            ) from None
        answer = QueryAnswer.from_json(reply.answer)
        if answer.query_id != q.id or answer.digest != q.digest:
            raise JobFailedError(f"query '{q.id}': the answer is for another query")
        return answer


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


@dataclass(frozen=True)
class QueryRun:
    """A query run in one process: the answer and where the time went."""

    answer: QueryAnswer
    seconds: float
    #: Per node, the seconds of each part of its contribution (and, for the releaser,
    #: ``release.*`` parts).
    node_seconds: Mapping[str, Mapping[str, float]]
    #: The coordinator's parts: ``collect`` and ``accept``.
    coordinator_seconds: Mapping[str, float]
    bytes_to_coordinator: int


def run_query_in_process(
    query_text: str,
    coordinator: str,
    nodes: Mapping[str, QueryNode],
    schemes: Mapping[str, SumScheme],
    coordinator_scheme: SumScheme,
    manifest: Manifest,
) -> QueryRun:
    """Run a whole query with every party in this process (tests and benchmarks: it
    isolates nothing; real queries run over Flower). ``schemes`` are the nodes' sum schemes
    (with the query's private key); ``coordinator_scheme`` holds only the public key."""
    started = time.perf_counter()
    c = QueryCoordinator(query_text, manifest, coordinator_scheme)
    contributions = []
    node_seconds: dict[str, dict[str, float]] = {}
    for party in c.query.parties:
        node = nodes[party]
        contributions.append(node.contribute(query_text, coordinator, schemes[party]))
        node_seconds[party] = dict(node.timings)
    t0 = time.perf_counter()
    total = c.collect(contributions)
    collect = time.perf_counter() - t0
    releaser = nodes[c.query.releaser]
    reply = SignedAnswer.from_bytes(
        releaser.release(query_text, coordinator, schemes[releaser.name], total).to_bytes()
    )
    node_seconds[releaser.name].update({f"release.{k}": v for k, v in releaser.timings.items()})
    t0 = time.perf_counter()
    answer = c.accept(reply)
    accept = time.perf_counter() - t0
    return QueryRun(
        answer=answer,
        seconds=time.perf_counter() - started,
        node_seconds=node_seconds,
        coordinator_seconds={"collect": collect, "accept": accept},
        bytes_to_coordinator=c.received + len(reply.to_bytes()),
    )


# --- over a transport (Flower) -------------------------------------------------------------

_QUERY_SIGNATURE_CONTEXT: Final = b"fedprop-query-v1"


class QueryStep(StrEnum):
    """A query's steps; the values are the Flower message types that carry them (Flower
    takes only Python identifiers after ``query.``)."""

    KEYS = "query.analytics_keys"
    CONTRIBUTE = "query.analytics_contribute"
    RELEASE = "query.analytics_release"


@dataclass(frozen=True)
class QueryRequest:
    """The keys and contribute steps: the query text, the coordinator's signature over
    it, and (paillier, after the key step) the query's key bundle."""

    spec: str
    signature: bytes
    keys: bytes


@dataclass(frozen=True)
class QueryReleaseRequest:
    """The release step, to the releaser: the request fields and the signed sum."""

    spec: str
    signature: bytes
    keys: bytes
    total: bytes


@dataclass(frozen=True)
class AnswerReply:
    """The releaser's answer (JSON) and its signature."""

    party: str
    answer: str
    signature: bytes


#: The request each step carries, and the reply it expects.
QUERY_REQUESTS: Mapping[QueryStep, type[QueryRequest | QueryReleaseRequest]] = {
    QueryStep.KEYS: QueryRequest,
    QueryStep.CONTRIBUTE: QueryRequest,
    QueryStep.RELEASE: QueryReleaseRequest,
}
QUERY_REPLIES: Mapping[QueryStep, type[KeysReply | ContributionReply | AnswerReply]] = {
    QueryStep.KEYS: KeysReply,
    QueryStep.CONTRIBUTE: ContributionReply,
    QueryStep.RELEASE: AnswerReply,
}


def sign_query(coordinator: NodeIdentity, query_text: str) -> bytes:
    """The coordinator's signature over a query's exact text."""
    return sign(coordinator, join_frames([_QUERY_SIGNATURE_CONTEXT, query_text.encode("utf-8")]))


def query_signer(manifest: Manifest, query_text: str, signature: bytes) -> str:
    """The fingerprint of the manifest's coordinator, once ``signature`` is its signature
    over ``query_text``; :class:`~fedprop.errors.FedpropError` otherwise (a forged query,
    or one a node's pinned manifest does not vouch for)."""
    if manifest.coordinator is None:
        raise FedpropError(
            f"the pinned manifest of '{manifest.federation}' lists no coordinator: "
            "no query can be checked, so none is answered"
        )
    try:
        verify(
            manifest.coordinator,
            join_frames([_QUERY_SIGNATURE_CONTEXT, query_text.encode("utf-8")]),
            signature,
        )
    except FedpropError:
        raise FedpropError(
            "the query is not signed by the coordinator of the pinned manifest; refused"
        ) from None
    return manifest.coordinator.fingerprint()


class QueryNodeAdapter:
    """Answers a query's steps for one :class:`QueryNode` (what a Flower node calls).

    Every step first checks the coordinator's signature over the query text; the key
    step makes the query's key at its key holder; contribute and release run the
    node's own checks (policy, budget, one release per query).
    """

    def __init__(self, node: QueryNode) -> None:
        self.node = node

    def _scheme(self, query: QuerySpec, keys: bytes) -> SumScheme:
        if query.aggregation is Aggregation.PLAINTEXT:
            return PlaintextScheme()
        settings = self.node.settings
        private = KeyBundle.from_bytes(keys).private(
            query.key_scope, settings.manifest, settings.identity
        )
        return PaillierScheme(private, len(query.parties))

    def handle(
        self, step: QueryStep, request: QueryRequest | QueryReleaseRequest
    ) -> KeysReply | ContributionReply | AnswerReply:
        """Answer one request (the single entry point an adapter calls)."""
        settings = self.node.settings
        coordinator = query_signer(settings.manifest, request.spec, request.signature)
        if step is QueryStep.KEYS:
            query, _ = self.node.admit(request.spec, coordinator)
            if self.node.name != query.key_holder or query.aggregation is Aggregation.PLAINTEXT:
                return KeysReply(self.node.name, b"")
            bundle = make_bundle(query.key_scope, settings.manifest, settings.identity)
            return KeysReply(self.node.name, bundle.to_bytes())
        query = QuerySpec.from_toml(request.spec, "query")
        scheme = self._scheme(query, request.keys)
        if step is QueryStep.CONTRIBUTE and isinstance(request, QueryRequest):
            c = self.node.contribute(request.spec, coordinator, scheme)
            return ContributionReply(c.party, c.payload, c.signature)
        if step is QueryStep.RELEASE and isinstance(request, QueryReleaseRequest):
            signed = self.node.release(request.spec, coordinator, scheme, request.total)
            return AnswerReply(signed.party, signed.answer, signed.signature)
        raise FedpropError(f"step '{step}' does not take a {type(request).__name__}")


class QueryTransport(TypingProtocol):
    """Delivers one query request to some parties and returns their replies by party
    (raising :class:`~fedprop.errors.JobFailedError` naming a party that failed)."""

    def broadcast(
        self,
        step: QueryStep,
        request: QueryRequest | QueryReleaseRequest,
        to: Sequence[str] | None = None,
    ) -> Mapping[str, Any]:
        """Send ``request`` to the parties ``to`` (default: all); replies by party."""
        ...


@dataclass(frozen=True)
class QueryOutcome:
    """What the coordinator holds after a query: the answer and the time it took."""

    answer: QueryAnswer
    seconds: float
    #: Bytes of every node's replies (contributions, and the answer).
    bytes_received: int


def _reply(replies: Mapping[str, Any], party: str, kind: type[T], step: QueryStep) -> T:
    reply = replies.get(party)
    if not isinstance(reply, kind):
        raise JobFailedError(f"{step.value}: no {kind.__name__} from '{party}'")
    return reply


def run_query(
    query_text: str,
    transport: QueryTransport,
    manifest: Manifest,
    coordinator: NodeIdentity,
) -> QueryOutcome:
    """Run one query over ``transport`` as the coordinator ``coordinator``.

    Steps: ``keys`` (paillier: the key holder makes the query's key and seals it to every
    party; the coordinator keeps the public key), ``contribute`` (every party), ``release``
    (the releaser only). Each request carries the query and the coordinator's signature.
    ``transport`` sends to the query's parties by default.
    """
    started = time.perf_counter()
    query = QuerySpec.from_toml(query_text, "query")
    signature = sign_query(coordinator, query_text)
    scheme: SumScheme = PlaintextScheme()
    keys = b""
    if query.aggregation is Aggregation.PAILLIER:
        replies = transport.broadcast(QueryStep.KEYS, QueryRequest(query_text, signature, b""))
        reply = _reply(replies, query.key_holder, KeysReply, QueryStep.KEYS)
        try:
            public = KeyBundle.from_bytes(reply.bundle).public(query.key_scope, manifest)
        except FedpropError as exc:
            raise JobFailedError(f"{QueryStep.KEYS.value}: {exc}") from None
        keys = reply.bundle
        scheme = PaillierScheme(public, len(query.parties))
    c = QueryCoordinator(query_text, manifest, scheme)
    replies = transport.broadcast(QueryStep.CONTRIBUTE, QueryRequest(query_text, signature, keys))
    contributions = []
    for party in query.parties:
        r = _reply(replies, party, ContributionReply, QueryStep.CONTRIBUTE)
        contributions.append(Contribution(r.party, r.payload, r.signature))
    total = c.collect(contributions)
    replies = transport.broadcast(
        QueryStep.RELEASE,
        QueryReleaseRequest(query_text, signature, keys, total),
        [query.releaser],
    )
    answer = _reply(replies, query.releaser, AnswerReply, QueryStep.RELEASE)
    result = c.accept(SignedAnswer(answer.party, answer.answer, answer.signature))
    received = c.received + len(answer.answer.encode("utf-8")) + len(answer.signature)
    return QueryOutcome(result, time.perf_counter() - started, received)
