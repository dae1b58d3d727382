"""The node's privacy policy: what this node accepts, decided in one place.

The node is sovereign: every check that protects a party runs on that party's node, against
its own policy file, and the coordinator's word is never trusted for any of it. The policy
file (TOML, kebab-case keys, see ``node/policy.example.toml``) says

- which federations the node belongs to and, for each, which coordinator keys it accepts
  (pinned as manifest fingerprints, the SHA-256 that ``NodePublicKeys.fingerprint()``
  returns);
- per dataset, the columns that may be used as model features, as group-by keys and as
  query targets, and the columns that may never be touched;
- the job types and aggregation modes it runs, and the smallest Paillier key it accepts;
- the smallest cohort ``k`` of any released cell (a global count, over every party);
- the differential-privacy budget ``(epsilon, delta)`` each coordinator gets per period,
  and the most one query may spend;
- whether a trained model may be released to the coordinator.

:func:`parse_policy` and :func:`load_policy` refuse a file with any problem: an unknown key
(a typo never falls back to a default), a wrong type, an empty list where one is needed, a
column both allowed and forbidden, ``k < 2``, a non-positive or non-finite epsilon, a delta
outside ``[0, 1)``, a per-query maximum above the period budget, a key size below
``MIN_PAILLIER_BITS``, an unknown job type or aggregation mode, a malformed period or key
fingerprint. Each error is one line naming the file, the key path (``datasets.bank.features[3]``)
and what is wrong. The dataclasses check the same invariants when built in code, so no
:class:`NodePolicy` that breaks them can exist.

:func:`decide` is the single decision: given the policy and a :class:`JobRequest` (what an
incoming job or query asks, in neutral terms), it runs the checks of :data:`CHECK_ORDER`
in that order and returns a :class:`Decision` naming the first rule that refuses, with one
line for the coordinator. It reads no data and has no switch: nothing in the request can
turn a check off, and a malformed request (an unknown job type, a NaN epsilon, a cohort
size that is not an integer) is refused, never passed. The order is fixed: first who asks
(federation, coordinator), so an unknown coordinator learns nothing else about the policy;
then what kind of job (type, aggregation, key size); then which data (dataset, columns,
forbidden columns first); then what would be released (cohort size, per-query privacy
loss, model). The per-period budget is not checked here: it depends on what was already
spent, which a ledger keeps; the per-query maximum is.

Security argument: a job or query reaches the data only if :func:`decide` allowed it, and
:func:`decide` allows only what every rule allows. A released cell is then counted over at
least :func:`effective_k` customers overall (the policy's ``k``, or more if the request asks
for more, never less), and a query spends at most the per-query epsilon and delta.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeGuard, TypeVar

from fedprop.crypto.identity import Manifest
from fedprop.crypto.params import ALLOWED_PAILLIER_BITS, MIN_PAILLIER_BITS
from fedprop.errors import FedpropError
from fedprop.spec import Aggregation, JobSpec

__all__ = [
    "CHECK_ORDER",
    "MAX_PERIOD_DAYS",
    "MIN_COHORT_SIZE",
    "DatasetPolicy",
    "Decision",
    "DpBudget",
    "FederationPolicy",
    "JobKind",
    "JobRequest",
    "NodePolicy",
    "PolicyError",
    "PolicyRefusedError",
    "PolicyRule",
    "decide",
    "effective_k",
    "load_policy",
    "parse_policy",
    "training_request",
]

#: Smallest cohort size a policy may set: a cell counted over one customer is that
#: customer's value.
MIN_COHORT_SIZE: Final = 2

#: Longest budget period, in days (about ten years): longer is a lifetime budget in effect.
MAX_PERIOD_DAYS: Final = 3660

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as manifest names
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # TOML bare key: printed without quotes
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_PERIOD = re.compile(r"([1-9][0-9]{0,5})d")
_SHOWN_CHARS: Final = 80  # longest value a reason or error quotes
_E = TypeVar("_E", bound=StrEnum)


class PolicyError(FedpropError):
    """A node policy file (TOML) that is malformed or inconsistent."""


class JobKind(StrEnum):
    """Job types a policy can allow (a closed list)."""

    HFL_TRAIN = "hfl-train"
    VFL_TRAIN = "vfl-train"
    QUERY = "query"
    PSI = "psi"
    SCORE = "score"


#: Job types that sum parties' values and must name their aggregation mode.
_AGGREGATING: Final = frozenset({JobKind.HFL_TRAIN, JobKind.VFL_TRAIN, JobKind.QUERY})


class PolicyRule(StrEnum):
    """The rules :func:`decide` checks, in the order it checks them."""

    #: The federation is one the policy lists.
    FEDERATION = "federation"
    #: The coordinator's key fingerprint is pinned for that federation.
    COORDINATOR = "coordinator"
    #: The job type is known and allowed.
    JOB_TYPE = "job-type"
    #: The aggregation mode is allowed (and named, for job types that aggregate).
    AGGREGATION = "aggregation"
    #: The Paillier key is an allowed size, at least the policy's minimum.
    KEY_SIZE = "key-size"
    #: The dataset is one the policy lists.
    DATASET = "dataset"
    #: No column the request names is forbidden.
    FORBIDDEN_COLUMN = "forbidden-column"
    #: Every feature column may be used as a feature.
    FEATURE_COLUMN = "feature-column"
    #: Every group-by column may be used as a group-by key.
    GROUP_BY_COLUMN = "group-by-column"
    #: Every filter column may be used as a group-by key (a filter selects one segment).
    FILTER_COLUMN = "filter-column"
    #: Every target column may be used as a target.
    TARGET_COLUMN = "target-column"
    #: The cohort size asked, if any, is at least the policy's k.
    COHORT_SIZE = "cohort-size"
    #: The query's epsilon is stated (queries must) and at most the per-query maximum.
    QUERY_EPSILON = "query-epsilon"
    #: The query's delta, if stated, is at most the per-query maximum.
    QUERY_DELTA = "query-delta"
    #: A model is released only if the policy allows it.
    MODEL_RELEASE = "model-release"


# --- helpers shared by the dataclasses and the parser --------------------------------------


def _show(value: object) -> str:
    """A value quoted for a one-line message: repr (escapes newlines), cut if long."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _join(path: str, key: object) -> str:
    """Key path ``path.key``, quoting ``key`` as TOML does when it is not a bare key."""
    text = key if isinstance(key, str) and _BARE_KEY.fullmatch(key) else _quote(key)
    return f"{path}.{text}" if path else text


def _quote(key: object) -> str:
    """A TOML quoted key (JSON escapes are valid TOML basic-string escapes), cut if long."""
    text = json.dumps(str(key))
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 4] + '..."'


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_name(name: object, path: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError(
            f"{path}: {_show(name)} is not a valid name (1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)"
        )


def _check_unique_strings(values: object, path: str, what: str) -> tuple[str, ...]:
    """``values`` must be a tuple of distinct ``what`` strings; return it."""
    if not isinstance(values, tuple):
        raise PolicyError(f"{path}: expected a list of {what}s, got {_show(values)}")
    seen: set[str] = set()
    for index, value in enumerate(values):
        where = f"{path}[{index}]"
        if not isinstance(value, str):
            raise PolicyError(f"{where}: expected a {what} (a string), got {_show(value)}")
        if value in seen:
            raise PolicyError(f"{where}: {_show(value)} is listed twice")
        seen.add(value)
    return values


def _check_columns(values: object, path: str) -> tuple[str, ...]:
    columns = _check_unique_strings(values, path, "column name")
    for index, column in enumerate(columns):
        if not column or column != column.strip() or not column.isprintable():
            raise PolicyError(
                f"{path}[{index}]: {_show(column)} is not a column name "
                "(non-empty, printable, no leading or trailing spaces)"
            )
    return columns


def _check_enum_list(values: object, path: str, enum: type[StrEnum], what: str) -> None:
    if not isinstance(values, tuple) or not values:
        raise PolicyError(f"{path}: must list at least one {what}")
    seen: set[StrEnum] = set()
    for index, value in enumerate(values):
        if not isinstance(value, enum):
            raise PolicyError(f"{path}[{index}]: expected a {enum.__name__}, got {_show(value)}")
        if value in seen:
            raise PolicyError(f"{path}[{index}]: '{value}' is listed twice")
        seen.add(value)


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else None."""
    if not _is_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _check_epsilon(value: object, path: str) -> None:
    number = _finite(value)
    if number is None or number <= 0:
        raise PolicyError(f"{path}: must be a finite number above 0, got {_show(value)}")


def _check_delta(value: object, path: str) -> None:
    number = _finite(value)
    if number is None or not 0 <= number < 1:
        raise PolicyError(f"{path}: must be a number in [0, 1), got {_show(value)}")


# --- the policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FederationPolicy:
    """A federation the node belongs to, and the coordinator keys it accepts in it."""

    name: str
    #: Manifest fingerprints (64 lowercase hex digits) of the accepted coordinator keys.
    coordinators: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, _join("federations", self.name))
        path = _join(_join("federations", self.name), "coordinators")
        _check_unique_strings(self.coordinators, path, "key fingerprint")
        if not self.coordinators:
            raise PolicyError(f"{path}: must list at least one coordinator key fingerprint")
        for index, fingerprint in enumerate(self.coordinators):
            if not _FINGERPRINT.fullmatch(fingerprint):
                raise PolicyError(
                    f"{path}[{index}]: {_show(fingerprint)} is not a key fingerprint "
                    "(64 lowercase hex digits, as the federation manifest lists it)"
                )


@dataclass(frozen=True)
class DatasetPolicy:
    """What may be done with one dataset's columns.

    A column may be in several of ``features``, ``group_by`` and ``targets``; a column in
    ``forbidden`` is in none of them and may never be named by any job or query.
    """

    name: str
    features: tuple[str, ...]
    group_by: tuple[str, ...]
    targets: tuple[str, ...]
    forbidden: tuple[str, ...]

    def __post_init__(self) -> None:
        base = _join("datasets", self.name)
        _check_name(self.name, base)
        allowed = {
            "features": _check_columns(self.features, _join(base, "features")),
            "group-by": _check_columns(self.group_by, _join(base, "group-by")),
            "targets": _check_columns(self.targets, _join(base, "targets")),
        }
        forbidden = set(_check_columns(self.forbidden, _join(base, "forbidden")))
        if not any(allowed.values()):
            raise PolicyError(
                f"{base}: allows no column (features, group-by and targets are all empty)"
            )
        for key, columns in allowed.items():
            for index, column in enumerate(columns):
                if column in forbidden:
                    raise PolicyError(
                        f"{_join(base, key)}[{index}]: '{column}' is also listed in "
                        f"{_join(base, 'forbidden')}"
                    )


@dataclass(frozen=True)
class DpBudget:
    """The differential-privacy budget each coordinator gets per period, and per query."""

    period_days: int
    epsilon: float
    delta: float
    max_query_epsilon: float
    max_query_delta: float

    def __post_init__(self) -> None:
        if not _is_int(self.period_days) or not 1 <= self.period_days <= MAX_PERIOD_DAYS:
            raise PolicyError(
                f"dp.period: must be 1 to {MAX_PERIOD_DAYS} days, got {_show(self.period_days)}"
            )
        _check_epsilon(self.epsilon, "dp.epsilon")
        _check_delta(self.delta, "dp.delta")
        _check_epsilon(self.max_query_epsilon, "dp.max-query-epsilon")
        _check_delta(self.max_query_delta, "dp.max-query-delta")
        if self.max_query_epsilon > self.epsilon:
            raise PolicyError(
                f"dp.max-query-epsilon: {self.max_query_epsilon} is more than the period "
                f"budget dp.epsilon = {self.epsilon}"
            )
        if self.max_query_delta > self.delta:
            raise PolicyError(
                f"dp.max-query-delta: {self.max_query_delta} is more than the period "
                f"budget dp.delta = {self.delta}"
            )

    @property
    def period(self) -> timedelta:
        """The budget period (the ledger's window)."""
        return timedelta(days=self.period_days)


@dataclass(frozen=True)
class NodePolicy:
    """A parsed, checked node policy. Build it with :func:`parse_policy` or :func:`load_policy`."""

    federations: tuple[FederationPolicy, ...]
    job_types: tuple[JobKind, ...]
    aggregations: tuple[Aggregation, ...]
    min_key_bits: int
    #: k: the smallest global count of any released cell.
    min_cohort: int
    model_release: bool
    #: The differential-privacy budget; None if the node runs no query (then nothing may
    #: ask for a privacy budget).
    dp: DpBudget | None
    datasets: tuple[DatasetPolicy, ...]
    #: SHA-256 (hex) of the policy file's text when parsed from one, for the node's log.
    digest: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.federations, tuple) or not self.federations:
            raise PolicyError("federations: must list at least one federation")
        names = [f.name for f in self.federations if isinstance(f, FederationPolicy)]
        if len(names) != len(self.federations) or len(set(names)) != len(names):
            raise PolicyError("federations: expected distinct FederationPolicy entries")
        _check_enum_list(self.job_types, "jobs.types", JobKind, "job type")
        _check_enum_list(self.aggregations, "jobs.aggregation", Aggregation, "aggregation mode")
        if not _is_int(self.min_key_bits) or self.min_key_bits < MIN_PAILLIER_BITS:
            raise PolicyError(
                f"jobs.min-key-bits: must be an integer of at least {MIN_PAILLIER_BITS}, "
                f"got {_show(self.min_key_bits)}"
            )
        if self.min_key_bits > max(ALLOWED_PAILLIER_BITS):
            allowed = ", ".join(str(b) for b in ALLOWED_PAILLIER_BITS)
            raise PolicyError(
                f"jobs.min-key-bits: {self.min_key_bits} is above every key size fedprop "
                f"accepts ({allowed})"
            )
        if not _is_int(self.min_cohort) or self.min_cohort < MIN_COHORT_SIZE:
            raise PolicyError(
                f"release.min-cohort: must be an integer of at least {MIN_COHORT_SIZE}, "
                f"got {_show(self.min_cohort)}"
            )
        if not isinstance(self.model_release, bool):
            raise PolicyError(
                f"release.model: expected true or false, got {_show(self.model_release)}"
            )
        if self.dp is not None and not isinstance(self.dp, DpBudget):
            raise PolicyError(f"dp: expected a DpBudget, got {_show(self.dp)}")
        if self.dp is None and JobKind.QUERY in self.job_types:
            raise PolicyError(
                "jobs.types: 'query' needs a [dp] table (every query spends a privacy budget)"
            )
        if not isinstance(self.datasets, tuple) or not self.datasets:
            raise PolicyError("datasets: must list at least one dataset")
        names = [d.name for d in self.datasets if isinstance(d, DatasetPolicy)]
        if len(names) != len(self.datasets) or len(set(names)) != len(names):
            raise PolicyError("datasets: expected distinct DatasetPolicy entries")

    def federation(self, name: object) -> FederationPolicy | None:
        """The federation called ``name``, or None."""
        return next((f for f in self.federations if f.name == name), None)

    def dataset(self, name: object) -> DatasetPolicy | None:
        """The dataset called ``name``, or None."""
        return next((d for d in self.datasets if d.name == name), None)

    def summary(self) -> str:
        """A few lines for an operator: what this node accepts."""
        lines = [
            "federations: "
            + "; ".join(
                f"{f.name} ({len(f.coordinators)} coordinator key(s))" for f in self.federations
            ),
            "jobs: "
            + ", ".join(self.job_types)
            + "; aggregation: "
            + ", ".join(self.aggregations)
            + f"; Paillier keys of at least {self.min_key_bits} bits",
            f"released cells: at least {self.min_cohort} customers overall; model release: "
            + ("allowed" if self.model_release else "refused"),
        ]
        if self.dp is None:
            lines.append("differential privacy: no budget (nothing may spend one)")
        else:
            dp = self.dp
            lines.append(
                f"privacy budget per coordinator: epsilon {dp.epsilon:g}, delta {dp.delta:g} "
                f"per {dp.period_days} day(s); per query at most epsilon "
                f"{dp.max_query_epsilon:g}, delta {dp.max_query_delta:g}"
            )
        for d in self.datasets:
            forbidden = ", ".join(d.forbidden) or "none"
            lines.append(
                f"dataset {d.name}: {len(d.features)} feature, {len(d.group_by)} group-by, "
                f"{len(d.targets)} target column(s); forbidden: {forbidden}"
            )
        return "\n".join(lines)


# --- parsing -------------------------------------------------------------------------------

_TOP_KEYS: Final = frozenset({"federations", "jobs", "release", "dp", "datasets"})
_FEDERATION_KEYS: Final = frozenset({"coordinators"})
_JOBS_KEYS: Final = frozenset({"types", "aggregation", "min-key-bits"})
_RELEASE_KEYS: Final = frozenset({"min-cohort", "model"})
_DP_KEYS: Final = frozenset({"period", "epsilon", "delta", "max-query-epsilon", "max-query-delta"})
_DATASET_KEYS: Final = frozenset({"features", "group-by", "targets", "forbidden"})


def parse_policy(text: str, source: str = "<policy>") -> NodePolicy:
    """Parse and check a node policy; :class:`PolicyError` naming ``source`` and the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    try:
        return _parse(doc, hashlib.sha256(text.encode("utf-8")).hexdigest())
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None


def load_policy(path: Path | str) -> NodePolicy:
    """Read and parse a node policy file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read policy file: {exc}") from None
    return parse_policy(text, str(path))


def _table(doc: Mapping[str, Any], key: str, path: str, *, required: bool) -> Mapping[str, Any]:
    where = _join(path, key)
    if key not in doc:
        if required:
            raise PolicyError(f"{where}: missing (a table [{where}] is required)")
        return {}
    value = doc[key]
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected a table, got {_show(value)}")
    return value


def _sub_table(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{path}: expected a table, got {_show(value)}")
    return value


def _check_keys(table: Mapping[str, Any], path: str, allowed: frozenset[str]) -> None:
    for key in table:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise PolicyError(f"{_join(path, key)}: unknown key (expected one of: {expected})")


def _value(table: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
    if key in table:
        return table[key]
    if default is None:
        raise PolicyError(f"{_join(path, key)}: missing")
    return default


def _list(table: Mapping[str, Any], key: str, path: str, default: Any) -> tuple[Any, ...]:
    value = _value(table, key, path, default)
    if not isinstance(value, list | tuple):
        raise PolicyError(f"{_join(path, key)}: expected a list, got {_show(value)}")
    return tuple(value)


def _int(table: Mapping[str, Any], key: str, path: str, default: int | None) -> int:
    value = _value(table, key, path, default)
    if not _is_int(value):
        raise PolicyError(f"{_join(path, key)}: expected an integer, got {_show(value)}")
    return int(value)


def _number(table: Mapping[str, Any], key: str, path: str) -> float:
    value = _value(table, key, path, None)
    if not _is_number(value):
        raise PolicyError(f"{_join(path, key)}: expected a number, got {_show(value)}")
    if isinstance(value, float):
        return value
    number = _finite(value)
    return math.inf if number is None else number  # an int beyond float range: not finite


def _bool(table: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = _value(table, key, path, default)
    if not isinstance(value, bool):
        raise PolicyError(f"{_join(path, key)}: expected true or false, got {_show(value)}")
    return value


def _enums(
    table: Mapping[str, Any], key: str, path: str, enum: type[_E], default: Any
) -> tuple[_E, ...]:
    where = _join(path, key)
    out: list[_E] = []
    for index, raw in enumerate(_list(table, key, path, default)):
        try:
            out.append(enum(raw))
        except ValueError:
            allowed = ", ".join(member.value for member in enum)
            raise PolicyError(f"{where}[{index}]: {_show(raw)} is not one of: {allowed}") from None
    return tuple(out)


def _period_days(raw: object) -> int:
    match = _PERIOD.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise PolicyError(
            f'dp.period: {_show(raw)} is not a period (a number of days, e.g. "30d", "7d", "1d")'
        )
    return int(match.group(1))


def _parse(doc: Mapping[str, Any], digest: str) -> NodePolicy:
    _check_keys(doc, "", _TOP_KEYS)

    federations = []
    for name, value in _table(doc, "federations", "", required=True).items():
        path = _join("federations", name)
        table = _sub_table(value, path)
        _check_keys(table, path, _FEDERATION_KEYS)
        federations.append(
            FederationPolicy(name=name, coordinators=_list(table, "coordinators", path, None))
        )

    jobs = _table(doc, "jobs", "", required=True)
    _check_keys(jobs, "jobs", _JOBS_KEYS)
    job_types = _enums(jobs, "types", "jobs", JobKind, None)
    aggregations = _enums(jobs, "aggregation", "jobs", Aggregation, [Aggregation.PAILLIER.value])
    min_key_bits = _int(jobs, "min-key-bits", "jobs", MIN_PAILLIER_BITS)

    release = _table(doc, "release", "", required=True)
    _check_keys(release, "release", _RELEASE_KEYS)
    min_cohort = _int(release, "min-cohort", "release", None)
    model_release = _bool(release, "model", "release", False)

    dp: DpBudget | None = None
    if "dp" in doc:
        table = _table(doc, "dp", "", required=True)
        _check_keys(table, "dp", _DP_KEYS)
        dp = DpBudget(
            period_days=_period_days(_value(table, "period", "dp", None)),
            epsilon=_number(table, "epsilon", "dp"),
            delta=_number(table, "delta", "dp"),
            max_query_epsilon=_number(table, "max-query-epsilon", "dp"),
            max_query_delta=_number(table, "max-query-delta", "dp"),
        )

    datasets = []
    for name, value in _table(doc, "datasets", "", required=True).items():
        path = _join("datasets", name)
        table = _sub_table(value, path)
        _check_keys(table, path, _DATASET_KEYS)
        datasets.append(
            DatasetPolicy(
                name=name,
                features=_list(table, "features", path, []),
                group_by=_list(table, "group-by", path, []),
                targets=_list(table, "targets", path, []),
                forbidden=_list(table, "forbidden", path, []),
            )
        )

    return NodePolicy(
        federations=tuple(federations),
        job_types=job_types,
        aggregations=aggregations,
        min_key_bits=min_key_bits,
        min_cohort=min_cohort,
        model_release=model_release,
        dp=dp,
        datasets=tuple(datasets),
        digest=digest,
    )


# --- requests and the decision -------------------------------------------------------------


_COLUMN_FIELDS: Final = ("feature_columns", "group_by_columns", "target_columns", "filter_columns")


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """What an incoming job or query asks of this node, in neutral terms.

    Build it from what the coordinator sent (the signed job spec or query), naming every
    column the job would read in the role it would read it: the label of a training job is
    a target column. Values are taken as sent; :func:`decide` refuses malformed ones.
    """

    federation: str
    #: The manifest fingerprint of the key that signed the request.
    coordinator: str
    job_type: str
    #: None for a job type that aggregates nothing (psi, score).
    aggregation: str | None
    dataset: str
    feature_columns: tuple[str, ...]
    group_by_columns: tuple[str, ...]
    target_columns: tuple[str, ...]
    #: Columns whose values select rows (``where`` clauses).
    filter_columns: tuple[str, ...]
    #: Size of the job's Paillier modulus; None if the job uses no Paillier key.
    key_bits: int | None
    model_release: bool
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    #: Smallest cohort the request asks for; it can only raise the policy's k.
    k: int | None = None

    def __post_init__(self) -> None:
        for name in _COLUMN_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str | bytes):
                raise TypeError(
                    f"JobRequest.{name} must be a sequence of column names, not a string"
                )
            object.__setattr__(self, name, tuple(value))


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concluded: ``rule`` names the refusing rule (None if allowed)."""

    allowed: bool
    rule: PolicyRule | None
    #: One line for the coordinator and the node's log.
    reason: str

    def __post_init__(self) -> None:
        if self.allowed != (self.rule is None):
            raise ValueError("a Decision names a rule exactly when it refuses")

    def raise_if_refused(self) -> None:
        """Raise :class:`PolicyRefusedError` if this decision refuses."""
        if not self.allowed:
            raise PolicyRefusedError(self)


class PolicyRefusedError(FedpropError):
    """A job or query this node's policy refuses; the message names the rule."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(f"refused by the node's policy, rule '{decision.rule}': {decision.reason}")


def effective_k(policy: NodePolicy, request: JobRequest) -> int:
    """The cohort size every released cell must reach: the policy's k, or the request's if
    larger. A request asking less than the policy's k is refused by :func:`decide`; here it
    just cannot lower the result."""
    if _is_int(request.k) and request.k > policy.min_cohort:
        return int(request.k)
    return policy.min_cohort


def _check_federation(policy: NodePolicy, request: JobRequest) -> str | None:
    if policy.federation(request.federation) is None:
        return f"federation {_show(request.federation)} is not one this node belongs to"
    return None


def _check_coordinator(policy: NodePolicy, request: JobRequest) -> str | None:
    federation = policy.federation(request.federation)
    assert federation is not None  # checked before
    if request.coordinator not in federation.coordinators:
        return (
            f"coordinator key {_show(request.coordinator)} is not pinned for federation "
            f"'{federation.name}'"
        )
    return None


def _job_kind(request: JobRequest) -> JobKind | None:
    try:
        return JobKind(request.job_type)
    except (ValueError, TypeError):
        return None


def _check_job_type(policy: NodePolicy, request: JobRequest) -> str | None:
    kind = _job_kind(request)
    if kind is None:
        return f"unknown job type {_show(request.job_type)}"
    if kind not in policy.job_types:
        return f"job type '{kind}' is not allowed by this node's policy"
    return None


def _check_aggregation(policy: NodePolicy, request: JobRequest) -> str | None:
    kind = _job_kind(request)
    if request.aggregation is None:
        if kind in _AGGREGATING:
            return f"a {kind} job must name its aggregation mode"
        return None
    if request.aggregation not in [a.value for a in Aggregation]:
        return f"unknown aggregation mode {_show(request.aggregation)}"
    if request.aggregation not in policy.aggregations:
        return f"aggregation mode '{request.aggregation}' is not allowed by this node's policy"
    return None


def _check_key_size(policy: NodePolicy, request: JobRequest) -> str | None:
    bits = request.key_bits
    if bits is None:
        if request.aggregation == Aggregation.PAILLIER:
            return "a paillier job must state its key size"
        return None
    if not _is_int(bits) or bits not in ALLOWED_PAILLIER_BITS:
        allowed = ", ".join(str(b) for b in ALLOWED_PAILLIER_BITS)
        return f"key size {_show(bits)} is not one fedprop accepts ({allowed})"
    if bits < policy.min_key_bits:
        return f"key size {bits} is below this node's minimum of {policy.min_key_bits} bits"
    return None


def _check_dataset(policy: NodePolicy, request: JobRequest) -> str | None:
    if policy.dataset(request.dataset) is None:
        return f"dataset {_show(request.dataset)} is not offered by this node"
    return None


_ROLE_NAMES: Final = {
    "feature_columns": "a feature",
    "group_by_columns": "a group-by key",
    "target_columns": "a target",
    "filter_columns": "a filter",
}


def _check_forbidden(policy: NodePolicy, request: JobRequest) -> str | None:
    dataset = policy.dataset(request.dataset)
    assert dataset is not None  # checked before
    for name in _COLUMN_FIELDS:
        for column in getattr(request, name):
            if isinstance(column, str) and column in dataset.forbidden:
                return (
                    f"column '{column}' of dataset '{dataset.name}' may never be used "
                    f"(asked as {_ROLE_NAMES[name]})"
                )
    return None


def _column_check(
    name: str, allowed: Callable[[DatasetPolicy], tuple[str, ...]], why: str = ""
) -> Callable[[NodePolicy, JobRequest], str | None]:
    def check(policy: NodePolicy, request: JobRequest) -> str | None:
        dataset = policy.dataset(request.dataset)
        assert dataset is not None  # checked before
        for column in getattr(request, name):
            if not isinstance(column, str):
                return f"column names must be strings, got {_show(column)}"
            if column not in allowed(dataset):
                return (
                    f"column {_show(column)} of dataset '{dataset.name}' may not be used as "
                    f"{_ROLE_NAMES[name]}{why}"
                )
        return None

    return check


def _check_cohort(policy: NodePolicy, request: JobRequest) -> str | None:
    if request.k is None:
        return None
    if not _is_int(request.k):
        return f"cohort size {_show(request.k)} is not an integer"
    if request.k < policy.min_cohort:
        return (
            f"cohort size {request.k} is below this node's minimum of {policy.min_cohort} "
            "customers per released cell"
        )
    return None


def _check_epsilon_asked(policy: NodePolicy, request: JobRequest) -> str | None:
    epsilon = request.dp_epsilon
    if epsilon is None:
        if _job_kind(request) is JobKind.QUERY:
            return "a query must state the differential-privacy epsilon it spends"
        return None
    if policy.dp is None:
        return "this node has no differential-privacy budget to spend"
    number = _finite(epsilon)
    if number is None or number <= 0:
        return f"epsilon {_show(epsilon)} is not a finite number above 0"
    if number > policy.dp.max_query_epsilon:
        return (
            f"epsilon {number:g} is more than this node allows per query "
            f"({policy.dp.max_query_epsilon:g})"
        )
    return None


def _check_delta_asked(policy: NodePolicy, request: JobRequest) -> str | None:
    delta = request.dp_delta
    if delta is None:
        return None
    if policy.dp is None:
        return "this node has no differential-privacy budget to spend"
    number = _finite(delta)
    if number is None or not 0 <= number < 1:
        return f"delta {_show(delta)} is not a number in [0, 1)"
    if number > policy.dp.max_query_delta:
        return (
            f"delta {number:g} is more than this node allows per query "
            f"({policy.dp.max_query_delta:g})"
        )
    return None


def _check_model_release(policy: NodePolicy, request: JobRequest) -> str | None:
    if request.model_release is not False and not policy.model_release:
        return "this node's policy does not allow releasing a model"
    return None


_CHECKS: Final[tuple[tuple[PolicyRule, Callable[[NodePolicy, JobRequest], str | None]], ...]] = (
    (PolicyRule.FEDERATION, _check_federation),
    (PolicyRule.COORDINATOR, _check_coordinator),
    (PolicyRule.JOB_TYPE, _check_job_type),
    (PolicyRule.AGGREGATION, _check_aggregation),
    (PolicyRule.KEY_SIZE, _check_key_size),
    (PolicyRule.DATASET, _check_dataset),
    (PolicyRule.FORBIDDEN_COLUMN, _check_forbidden),
    (PolicyRule.FEATURE_COLUMN, _column_check("feature_columns", lambda d: d.features)),
    (PolicyRule.GROUP_BY_COLUMN, _column_check("group_by_columns", lambda d: d.group_by)),
    (
        PolicyRule.FILTER_COLUMN,
        _column_check(
            "filter_columns",
            lambda d: d.group_by,
            " (a filter selects a segment, so it must be allowed as a group-by key)",
        ),
    ),
    (PolicyRule.TARGET_COLUMN, _column_check("target_columns", lambda d: d.targets)),
    (PolicyRule.COHORT_SIZE, _check_cohort),
    (PolicyRule.QUERY_EPSILON, _check_epsilon_asked),
    (PolicyRule.QUERY_DELTA, _check_delta_asked),
    (PolicyRule.MODEL_RELEASE, _check_model_release),
)

#: The rules :func:`decide` checks, in order; the first that refuses is reported.
CHECK_ORDER: Final[tuple[PolicyRule, ...]] = tuple(rule for rule, _ in _CHECKS)


def decide(policy: NodePolicy, request: JobRequest) -> Decision:
    """Allow ``request`` only if every rule of ``policy`` allows it.

    The rules run in :data:`CHECK_ORDER`; the first that refuses is returned, with a
    one-line reason for the coordinator. Reads no data and has no side effect; the caller
    returns a refusal to the coordinator and writes the decision to the node's log.
    """
    if not isinstance(policy, NodePolicy) or not isinstance(request, JobRequest):
        raise TypeError("decide(policy: NodePolicy, request: JobRequest)")
    for rule, check in _CHECKS:
        reason = check(policy, request)
        if reason is not None:
            return Decision(allowed=False, rule=rule, reason=reason)
    return Decision(
        allowed=True,
        rule=None,
        reason=(
            f"{request.job_type} on dataset '{request.dataset}' allowed for coordinator "
            f"{request.coordinator[:16]} in federation '{request.federation}'"
        ),
    )


def training_request(spec: JobSpec, manifest: Manifest) -> JobRequest:
    """What a training job asks of a node, for :func:`decide`: its federation and
    coordinator (the pinned manifest's), type, aggregation, dataset, every feature column
    and the label as its target, its key size and whether it asks for the model."""
    coordinator = manifest.coordinator.fingerprint() if manifest.coordinator else ""
    return JobRequest(
        federation=manifest.federation,
        coordinator=coordinator,
        job_type=spec.type,
        aggregation=spec.aggregation,
        dataset=spec.dataset,
        feature_columns=spec.schema.feature_names,
        group_by_columns=(),
        target_columns=(spec.schema.label,),
        filter_columns=(),
        key_bits=spec.key_bits,
        model_release=spec.release_model,
    )
