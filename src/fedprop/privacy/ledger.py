"""The node's differential-privacy budget ledger: every spend, by whom, when, composed.

Each coordinator key gets the budget of the node's policy (``[dp]``: ``epsilon`` and
``delta`` per ``period`` days). Every release of data made differentially private spends
from it, and the ledger, a file at the node, keeps the spends:

- :meth:`BudgetLedger.check` answers, before anything is computed, whether a
  :class:`Spend` fits in what the coordinator has left; a query that would not fit is
  refused there, and so is a query id the coordinator already spent on (a query id runs
  once);
- :meth:`BudgetLedger.record` appends the spend, after checking again under an exclusive
  file lock (two queries checked at once cannot both take the last of a budget). A node
  records a spend before its data leaves it in any form that can be released (its sealed
  aggregates), so a query aborted later still counts: what left could still be released;
- :meth:`BudgetLedger.record_release` appends the one release of a query's answer, so that
  a releasing node never draws fresh noise for the same sum twice (averaging two
  independently noised answers would halve the noise's variance);
- :meth:`BudgetLedger.summary` and :meth:`BudgetLedger.totals` are what
  ``fedprop node budget`` shows: who spent what, when, on which query, and the cumulative
  spend.

**Window.** A spend counts against its coordinator for ``period`` days after it was made (a
rolling window, not calendar periods: spending the whole budget at the end of one period
and again at the start of the next is not possible). Spends dated after the time of a check
(a clock that went back) count too. Budgets that renew are a policy choice: over many
periods the privacy loss of a customer still adds up, which the summary shows.

**Composition.** A spend states the ``(epsilon, delta)`` guarantee of its release and, where
it can, the noise mechanisms that make it (:class:`Mechanism`: discrete Laplace, Laplace,
Gaussian, each with its noise parameter and sensitivity, and DP-SGD's Poisson-subsampled
Gaussian, with its sampling probability and number of steps), plus ``extra_delta``: a
failure probability outside those mechanisms (a query's thresholding of cells under k). The
ledger states the spend of a window as the better of two valid bounds:

- *basic composition*: the sum of the stated epsilons and of the stated deltas. For a
  spend of pure mechanisms the stated epsilon is checked against theirs when the spend is
  made; for a spend with a Poisson-subsampled Gaussian (whose epsilon has no closed form)
  the stated ``(epsilon, delta)`` must be a guarantee of its mechanisms alone: DP-SGD
  states the PLD epsilon of its mechanism at its own delta
  (:func:`fedprop.privacy.dpsgd.dp_training_spend`), and :meth:`BudgetLedger.check`
  refuses such a spend if, with ``dp-accounting`` installed, its mechanisms' PLD epsilon
  at ``delta - extra_delta`` is above the stated epsilon;
- *privacy loss distributions* (Google's ``dp-accounting`` library, the
  ``PLDAccountant``, add-or-remove-one neighbouring, pessimistic discretization): the
  mechanisms of every spend composed, evaluated at ``delta_budget - sum(extra_delta)``;
  the window then spends ``(epsilon_pld, delta_budget)``. This is never worse than basic
  composition for the same delta and much better over many Gaussian releases (the
  thousands of steps of a DP-SGD job). It is used when ``dp-accounting`` is installed and
  every spend of the window describes its mechanisms; otherwise basic composition alone,
  which is always valid.

A spend fits if either bound stays within the budget's ``(epsilon, delta)``.

**File.** JSON lines, append-only, one object per line. Each append writes the whole line
with one ``write`` on a descriptor opened with ``O_APPEND``, then ``fsync`` (and the folder
is synced when the file is created), under an exclusive ``flock``. A crash during an append
leaves at most a final line without its newline: that spend never completed (its caller did
not go on to release anything), so readers ignore it and the next append cuts it off first.
Each line holds the SHA-256 of the line before it, so a line edited or removed in the middle
of the file is detected and the ledger refuses to work (it fails closed: no spend is
allowed while the ledger cannot be read). The chain does not protect the last lines against
an operator who removes them; the node's signed audit log is the tamper-evident record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from fedprop.errors import FedpropError
from fedprop.privacy.policy import DpBudget

__all__ = [
    "LEDGER_FORMAT_VERSION",
    "BudgetDecision",
    "BudgetExceededError",
    "BudgetLedger",
    "BudgetTotal",
    "LedgerEntry",
    "LedgerError",
    "Mechanism",
    "MechanismKind",
    "Spend",
    "Spent",
    "SummaryRow",
    "mechanisms_epsilon",
    "pld_available",
]

#: Version written in every ledger line; a line of another version is refused.
LEDGER_FORMAT_VERSION: Final = 1

#: Relative slack on budget comparisons, so that 10 spends of 0.1 fit a budget of 1.0
#: despite float rounding; 1e-9 of a budget is no privacy loss anyone can measure.
_TOLERANCE: Final = 1e-9

#: Discretization of the privacy loss (dp-accounting's default): pessimistic, so the
#: epsilon it reports is an upper bound; a coarser interval would be faster and looser.
_PLD_INTERVAL: Final = 1e-4

_GENESIS: Final = "0" * 64
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"([0-9a-f]{64})?")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_WHAT = re.compile(r"[a-z][a-z0-9-]{0,31}")
_FILE_MODE: Final = 0o600


class LedgerError(FedpropError):
    """The ledger file cannot be read or written, or a spend is malformed."""


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# --- spends -------------------------------------------------------------------------------


class MechanismKind(StrEnum):
    """Noise mechanisms the accountant composes."""

    #: Integer noise, ``P[x]`` proportional to ``exp(-|x| / t)``; ``parameter`` is ``t``,
    #: ``sensitivity`` the integer L1 sensitivity. Pure: epsilon = sensitivity / t.
    DISCRETE_LAPLACE = "discrete-laplace"
    #: Continuous Laplace noise; ``parameter`` is the noise multiplier ``b / L1 sensitivity``.
    #: Pure: epsilon = 1 / multiplier.
    LAPLACE = "laplace"
    #: Continuous Gaussian noise; ``parameter`` is the noise multiplier
    #: ``sigma / L2 sensitivity``. Not pure: (epsilon, delta) only.
    GAUSSIAN = "gaussian"
    #: DP-SGD's steps: each a Gaussian (``parameter``: the noise multiplier, noise standard
    #: deviation over the clipping norm, the L2 sensitivity of one record's clipped
    #: gradient) on the sum over a Poisson sample of the records, each record in with
    #: probability ``sampling``; ``count`` is the number of steps. Composed by
    #: ``dp-accounting`` as ``PoissonSampledDpEvent(GaussianDpEvent)`` self-composed
    #: ``count`` times (add-or-remove-one neighbouring). Not pure.
    SUBSAMPLED_GAUSSIAN = "poisson-subsampled-gaussian"


@dataclass(frozen=True)
class Mechanism:
    """One noise mechanism, applied ``count`` times (adaptively composed).

    ``sampling`` is the Poisson sampling probability of a
    :attr:`MechanismKind.SUBSAMPLED_GAUSSIAN` (in ``(0, 1]``); every other kind leaves it
    at 1 (and does not write it: lines written before it existed read the same).
    """

    kind: MechanismKind
    parameter: float
    sensitivity: int = 1
    count: int = 1
    sampling: float = 1.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", MechanismKind(self.kind))
        except ValueError:
            raise LedgerError(f"unknown noise mechanism {self.kind!r}") from None
        number = _finite(self.parameter)
        if number is None or number <= 0:
            raise LedgerError(
                f"{self.kind} noise parameter must be a finite number above 0, "
                f"got {self.parameter!r}"
            )
        object.__setattr__(self, "parameter", number)
        if not _count(self.sensitivity):
            raise LedgerError(f"sensitivity must be a positive integer, got {self.sensitivity!r}")
        if self.kind is not MechanismKind.DISCRETE_LAPLACE and self.sensitivity != 1:
            raise LedgerError(
                f"{self.kind}: the sensitivity is part of the noise multiplier; leave it at 1"
            )
        if not _count(self.count):
            raise LedgerError(f"count must be a positive integer, got {self.count!r}")
        sampling = _finite(self.sampling)
        if sampling is None or not 0 < sampling <= 1:
            raise LedgerError(
                f"sampling probability must be a number in (0, 1], got {self.sampling!r}"
            )
        if self.kind is not MechanismKind.SUBSAMPLED_GAUSSIAN and sampling != 1:
            raise LedgerError(f"{self.kind} is not subsampled; leave its sampling at 1")
        object.__setattr__(self, "sampling", sampling)

    @property
    def pure_epsilon(self) -> float | None:
        """The epsilon of all ``count`` applications (pure DP), or None if not pure."""
        if self.kind is MechanismKind.DISCRETE_LAPLACE:
            return self.count * self.sensitivity / self.parameter
        if self.kind is MechanismKind.LAPLACE:
            return self.count / self.parameter
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``sampling`` only for the subsampled kind)."""
        data: dict[str, Any] = {
            "kind": self.kind.value,
            "parameter": self.parameter,
            "sensitivity": self.sensitivity,
            "count": self.count,
        }
        if self.kind is MechanismKind.SUBSAMPLED_GAUSSIAN:
            data["sampling"] = self.sampling
        return data

    @classmethod
    def from_dict(cls, data: object) -> Mechanism:
        """Parse :meth:`to_dict` output."""
        if not isinstance(data, Mapping) or set(data) not in (_MECHANISM_KEYS, _SAMPLED_KEYS):
            raise LedgerError(f"malformed mechanism {data!r}")
        if (data["kind"] == MechanismKind.SUBSAMPLED_GAUSSIAN.value) != ("sampling" in data):
            raise LedgerError(f"malformed mechanism {data!r}")
        return cls(
            data["kind"],
            data["parameter"],
            data["sensitivity"],
            data["count"],
            data.get("sampling", 1.0),
        )


_MECHANISM_KEYS: Final = frozenset({"kind", "parameter", "sensitivity", "count"})
_SAMPLED_KEYS: Final = _MECHANISM_KEYS | {"sampling"}


@dataclass(frozen=True, kw_only=True)
class Spend:
    """What one release takes from a coordinator's budget.

    ``epsilon`` and ``delta`` are the release's own guarantee; ``mechanisms`` the noise
    that makes it (empty: the stated guarantee is all the ledger can compose);
    ``extra_delta`` the part of ``delta`` the mechanisms do not account for. ``digest``
    (SHA-256 hex of what was asked, e.g. the query text) binds a later release to this
    spend.
    """

    coordinator: str
    query_id: str
    epsilon: float
    delta: float
    mechanisms: tuple[Mechanism, ...] = ()
    extra_delta: float = 0.0
    what: str = "query"
    digest: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.coordinator, str) or not _FINGERPRINT.fullmatch(self.coordinator):
            raise LedgerError(
                f"coordinator must be a key fingerprint (64 hex digits), got {self.coordinator!r}"
            )
        if not isinstance(self.query_id, str) or not _ID.fullmatch(self.query_id):
            raise LedgerError(f"malformed query id {self.query_id!r}")
        if not isinstance(self.what, str) or not _WHAT.fullmatch(self.what):
            raise LedgerError(f"malformed spend kind {self.what!r}")
        if not isinstance(self.digest, str) or not _DIGEST.fullmatch(self.digest):
            raise LedgerError(f"digest must be 64 hex digits or empty, got {self.digest!r}")
        epsilon = _finite(self.epsilon)
        if epsilon is None or epsilon <= 0:
            raise LedgerError(f"epsilon must be a finite number above 0, got {self.epsilon!r}")
        delta = _finite(self.delta)
        if delta is None or not 0 <= delta < 1:
            raise LedgerError(f"delta must be a number in [0, 1), got {self.delta!r}")
        extra = _finite(self.extra_delta)
        if extra is None or not 0 <= extra <= delta:
            raise LedgerError(
                f"extra_delta must be in [0, delta = {delta:g}], got {self.extra_delta!r}"
            )
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "delta", delta)
        object.__setattr__(self, "extra_delta", extra)
        if isinstance(self.mechanisms, str | bytes) or not all(
            isinstance(m, Mechanism) for m in self.mechanisms
        ):
            raise LedgerError("mechanisms must be a sequence of Mechanism")
        object.__setattr__(self, "mechanisms", tuple(self.mechanisms))
        pure = [m.pure_epsilon for m in self.mechanisms]
        if self.mechanisms and all(p is not None for p in pure):
            total = math.fsum(p for p in pure if p is not None)
            if total > epsilon * (1 + _TOLERANCE):
                raise LedgerError(
                    f"the mechanisms spend epsilon {total:.6g}, more than the stated {epsilon:g}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "coordinator": self.coordinator,
            "query": self.query_id,
            "what": self.what,
            "digest": self.digest,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "extra_delta": self.extra_delta,
            "mechanisms": [m.to_dict() for m in self.mechanisms],
        }


# --- composition --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spent:
    """A (epsilon, delta) guarantee for several spends together, and how it was composed."""

    epsilon: float
    delta: float
    #: "pld" (privacy loss distributions) or "basic" (sums).
    method: str
    spends: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "method": self.method,
            "spends": self.spends,
        }

    @classmethod
    def from_dict(cls, data: object) -> Spent:
        """Parse :meth:`to_dict` output."""
        if not isinstance(data, Mapping) or set(data) != {"epsilon", "delta", "method", "spends"}:
            raise LedgerError(f"malformed cumulative spend {data!r}")
        epsilon, delta = _finite(data["epsilon"]), _finite(data["delta"])
        if epsilon is None or delta is None or data["method"] not in {"pld", "basic"}:
            raise LedgerError(f"malformed cumulative spend {data!r}")
        if not isinstance(data["spends"], int) or isinstance(data["spends"], bool):
            raise LedgerError(f"malformed cumulative spend {data!r}")
        return cls(epsilon, delta, data["method"], data["spends"])


_NOTHING = Spent(0.0, 0.0, "basic", 0)
_dp_module: ModuleType | None = None
_dp_tried = False


def _dp_accounting() -> ModuleType | None:
    """The ``dp_accounting`` package, or None if it is not installed (imported once)."""
    global _dp_module, _dp_tried
    if not _dp_tried:
        _dp_tried = True
        try:
            _dp_module = importlib.import_module("dp_accounting")
            importlib.import_module("dp_accounting.pld.pld_privacy_accountant")
        except ImportError:
            _dp_module = None
    return _dp_module


def pld_available() -> bool:
    """Whether ``dp-accounting`` is installed, so the ledger composes with PLDs."""
    return _dp_accounting() is not None


def _dp_event(dp: Any, mechanism: Mechanism) -> Any:
    if mechanism.kind is MechanismKind.DISCRETE_LAPLACE:
        event = dp.dp_event.DiscreteLaplaceDpEvent(
            noise_parameter=1 / mechanism.parameter, sensitivity=mechanism.sensitivity
        )
    elif mechanism.kind is MechanismKind.LAPLACE:
        event = dp.dp_event.LaplaceDpEvent(noise_multiplier=mechanism.parameter)
    else:
        event = dp.dp_event.GaussianDpEvent(noise_multiplier=mechanism.parameter)
        if mechanism.kind is MechanismKind.SUBSAMPLED_GAUSSIAN and mechanism.sampling < 1:
            event = dp.dp_event.PoissonSampledDpEvent(
                sampling_probability=mechanism.sampling, event=event
            )
    if mechanism.count > 1:
        event = dp.dp_event.SelfComposedDpEvent(event=event, count=mechanism.count)
    return event


def _pld_epsilon(spends: Sequence[Spend], target_delta: float) -> float | None:
    """PLD composition of every spend's mechanisms at ``target_delta``; None if it cannot
    be computed (library missing, a spend without mechanisms)."""
    if not spends or any(not s.mechanisms for s in spends):
        return None
    return mechanisms_epsilon([m for s in spends for m in s.mechanisms], target_delta)


def mechanisms_epsilon(mechanisms: Sequence[Mechanism], delta: float) -> float | None:
    """The epsilon of ``mechanisms`` composed, at ``delta``, as the ledger composes them
    (``dp-accounting``'s PLD accountant, pessimistic discretization); None if it cannot be
    computed (``dp-accounting`` missing, no mechanisms, ``delta <= 0``, an event the
    accountant does not support)."""
    dp = _dp_accounting()
    if dp is None or not mechanisms or not delta > 0:
        return None
    module = importlib.import_module("dp_accounting.pld.pld_privacy_accountant")
    accountant = module.PLDAccountant(value_discretization_interval=_PLD_INTERVAL)
    # identical mechanisms composed as one self-composition: the same privacy loss, and
    # far cheaper (a Gaussian's PLD is built once, a Laplace's is convolved with itself)
    repeats: Counter[tuple[MechanismKind, float, int, float]] = Counter()
    for m in mechanisms:
        repeats[(m.kind, m.parameter, m.sensitivity, m.sampling)] += m.count
    event = dp.dp_event.ComposedDpEvent(
        events=[
            _dp_event(dp, Mechanism(kind, parameter, sensitivity, count, sampling))
            for (kind, parameter, sensitivity, sampling), count in repeats.items()
        ]
    )
    try:
        if not accountant.supports(event):
            return None
        accountant.compose(event)
        epsilon = float(accountant.get_epsilon(delta))
    except (ValueError, ArithmeticError, RuntimeError):
        return None  # basic composition, always valid, decides alone
    return epsilon if math.isfinite(epsilon) else None


def _understated(spend: Spend) -> str | None:
    """Why ``spend``'s stated epsilon is not a guarantee of its subsampled Gaussian
    mechanisms (what basic composition adds up), or None if it is or none is subsampled.

    Fails closed: a subsampled Gaussian whose epsilon cannot be computed (no
    ``dp-accounting``, no delta for the mechanisms) is not taken on its word.
    """
    if not any(m.kind is MechanismKind.SUBSAMPLED_GAUSSIAN for m in spend.mechanisms):
        return None
    delta = spend.delta - spend.extra_delta
    epsilon = mechanisms_epsilon(spend.mechanisms, delta)
    if epsilon is None:
        return (
            f"query '{spend.query_id}': the epsilon of its subsampled Gaussian noise at "
            f"delta {delta:g} cannot be computed here (dp-accounting is needed), so its "
            f"stated epsilon {spend.epsilon:g} cannot be checked"
        )
    if epsilon > spend.epsilon * (1 + _TOLERANCE):
        return (
            f"query '{spend.query_id}' states epsilon {spend.epsilon:g}, but its noise "
            f"mechanisms alone spend epsilon {epsilon:.6g} at delta {delta:g}"
        )
    return None


def _fits(spent: Spent, budget: DpBudget) -> bool:
    return spent.epsilon <= budget.epsilon * (1 + _TOLERANCE) and spent.delta <= budget.delta * (
        1 + _TOLERANCE
    )


def _compose(spends: Sequence[Spend], budget: DpBudget, use_pld: bool) -> Spent:
    """The tightest valid statement for ``spends`` together: within the budget if any is."""
    if not spends:
        return _NOTHING
    basic = Spent(
        math.fsum(s.epsilon for s in spends),
        math.fsum(s.delta for s in spends),
        "basic",
        len(spends),
    )
    candidates = [basic]
    if use_pld:
        target = budget.delta - math.fsum(s.extra_delta for s in spends)
        epsilon = _pld_epsilon(spends, target)
        if epsilon is not None:
            candidates.append(Spent(epsilon, budget.delta, "pld", len(spends)))
    fitting = [c for c in candidates if c.delta <= budget.delta * (1 + _TOLERANCE)]
    return min(fitting or candidates, key=lambda c: c.epsilon)


# --- decisions and entries ----------------------------------------------------------------


@dataclass(frozen=True)
class BudgetDecision:
    """What :meth:`BudgetLedger.check` concluded, with the spend before and after."""

    allowed: bool
    #: One line for the coordinator and the node's log.
    reason: str
    coordinator: str
    before: Spent
    after: Spent
    limit_epsilon: float
    limit_delta: float
    #: Spends made after this time count against the coordinator.
    window_start: datetime
    #: The time of the check, the end of its window (``window_start`` plus the period).
    #: Record the spend with it (``record(spend, at=decision.at)``) so that the ledger,
    #: the decision and the node's log all state the same window.
    at: datetime

    def raise_if_refused(self) -> None:
        """Raise :class:`BudgetExceededError` if this decision refuses."""
        if not self.allowed:
            raise BudgetExceededError(self)


class BudgetExceededError(FedpropError):
    """A spend the coordinator's budget cannot take (or a query id already spent on)."""

    def __init__(self, decision: BudgetDecision) -> None:
        self.decision = decision
        super().__init__(f"refused by the node's privacy budget: {decision.reason}")


@dataclass(frozen=True)
class LedgerEntry:
    """One line of the ledger: a spend (with the cumulative spend it made), or a release."""

    kind: str
    at: datetime
    coordinator: str
    query_id: str
    digest: str
    spend: Spend | None = None
    cumulative: Spent | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class SummaryRow:
    """One spend as ``fedprop node budget`` lists it."""

    coordinator: str
    at: datetime
    query_id: str
    what: str
    epsilon: float
    delta: float
    #: The coordinator's spend in the window ending at this spend, this one included, as
    #: the node computed it when it recorded the spend.
    cumulative_epsilon: float
    cumulative_delta: float
    method: str
    #: When the answer was released by this node (None: not by this node, or not yet).
    released_at: datetime | None
    #: Whether the spend still counts against the coordinator now.
    in_window: bool


@dataclass(frozen=True)
class BudgetTotal:
    """A coordinator's spend now, against its budget."""

    coordinator: str
    spent: Spent
    limit_epsilon: float
    limit_delta: float
    window_start: datetime


def _now(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise LedgerError("times must be timezone-aware datetimes")
    return at.astimezone(UTC)


# --- the ledger ---------------------------------------------------------------------------


class BudgetLedger:
    """A node's budget ledger: one append-only JSON-lines file, one budget per coordinator.

    ``budget`` is the policy's :class:`~fedprop.privacy.policy.DpBudget` (read each time
    the node starts; spends already in the file are composed against the current one).
    ``use_pld=False`` composes with basic composition only.
    """

    def __init__(self, path: Path | str, budget: DpBudget, *, use_pld: bool = True) -> None:
        if not isinstance(budget, DpBudget):
            raise TypeError("budget must be the policy's DpBudget")
        self.path = Path(path)
        self.budget = budget
        self.use_pld = bool(use_pld) and pld_available()

    @property
    def method(self) -> str:
        """How spends are composed: privacy loss distributions, or basic composition."""
        return "pld" if self.use_pld else "basic"

    # -- reading --

    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every complete line, checked (:class:`LedgerError` if the file is damaged)."""
        with self._locked(exclusive=False) as fd:
            return tuple(_parse(_read_all(fd), self.path)[0])

    def spend_of(self, coordinator: str, query_id: str) -> LedgerEntry | None:
        """The spend recorded for ``query_id`` from ``coordinator``, if any."""
        return next(
            (
                e
                for e in self.entries()
                if e.kind == "spend" and e.coordinator == coordinator and e.query_id == query_id
            ),
            None,
        )

    def released(self, coordinator: str, query_id: str) -> bool:
        """Whether this node already released the answer of ``query_id``."""
        return any(
            e.kind == "release" and e.coordinator == coordinator and e.query_id == query_id
            for e in self.entries()
        )

    def window_start(self, at: datetime | None = None) -> datetime:
        """Spends after this time count against their coordinator at time ``at``."""
        return _now(at) - self.budget.period

    def spent(self, coordinator: str, *, at: datetime | None = None) -> Spent:
        """What ``coordinator`` has spent in the window ending at ``at`` (default: now)."""
        return _compose(self._window(self.entries(), coordinator, at), self.budget, self.use_pld)

    def check(self, spend: Spend, *, at: datetime | None = None) -> BudgetDecision:
        """Whether ``spend`` fits in its coordinator's budget now. Reads only."""
        return self._decide(self.entries(), spend, at)

    def totals(self, *, at: datetime | None = None) -> list[BudgetTotal]:
        """Each coordinator's spend now, against the budget."""
        entries = self.entries()
        start = self.window_start(at)
        coordinators = sorted({e.coordinator for e in entries if e.kind == "spend"})
        return [
            BudgetTotal(
                c,
                _compose(self._window(entries, c, at), self.budget, self.use_pld),
                self.budget.epsilon,
                self.budget.delta,
                start,
            )
            for c in coordinators
        ]

    def summary(self, *, at: datetime | None = None) -> list[SummaryRow]:
        """Every spend in the file, oldest first, with its cumulative spend and release."""
        entries = self.entries()
        start = self.window_start(at)
        releases = {(e.coordinator, e.query_id): e.at for e in entries if e.kind == "release"}
        rows = []
        for e in entries:
            if e.kind != "spend" or e.spend is None or e.cumulative is None:
                continue
            rows.append(
                SummaryRow(
                    coordinator=e.coordinator,
                    at=e.at,
                    query_id=e.query_id,
                    what=e.spend.what,
                    epsilon=e.spend.epsilon,
                    delta=e.spend.delta,
                    cumulative_epsilon=e.cumulative.epsilon,
                    cumulative_delta=e.cumulative.delta,
                    method=e.cumulative.method,
                    released_at=releases.get((e.coordinator, e.query_id)),
                    in_window=e.at > start,
                )
            )
        return rows

    # -- writing --

    def record(self, spend: Spend, *, at: datetime | None = None) -> LedgerEntry:
        """Append ``spend`` if it still fits (checked again under the file lock), durably.

        :class:`BudgetExceededError` if it does not fit or its query id was spent on.
        """
        when = _now(at)
        with self._locked(exclusive=True) as fd:
            entries, last = _parse(_repair(fd, self.path), self.path)
            decision = self._decide(entries, spend, when)
            decision.raise_if_refused()
            record = {
                "v": LEDGER_FORMAT_VERSION,
                "kind": "spend",
                "at": when.isoformat(),
                **spend.to_dict(),
                "cumulative": decision.after.to_dict(),
                "prev": last,
            }
            _append(fd, record)
        return LedgerEntry(
            "spend", when, spend.coordinator, spend.query_id, spend.digest, spend, decision.after
        )

    def record_release(
        self, coordinator: str, query_id: str, digest: str, *, at: datetime | None = None
    ) -> LedgerEntry:
        """Append the release of ``query_id``'s answer, durably.

        :class:`LedgerError` unless this node recorded the spend of that query, for the same
        ``digest``, and has not released it before: an answer is released once.
        """
        when = _now(at)
        with self._locked(exclusive=True) as fd:
            entries, last = _parse(_repair(fd, self.path), self.path)
            spend = next(
                (
                    e
                    for e in entries
                    if e.kind == "spend" and e.coordinator == coordinator and e.query_id == query_id
                ),
                None,
            )
            if spend is None:
                raise LedgerError(
                    f"query '{query_id}' has no recorded spend here: nothing to release"
                )
            if spend.digest != digest:
                raise LedgerError(
                    f"query '{query_id}' was spent on for other query text than the one to release"
                )
            if any(
                e.kind == "release" and e.coordinator == coordinator and e.query_id == query_id
                for e in entries
            ):
                raise LedgerError(
                    f"query '{query_id}' was already released; an answer is released once "
                    "(fresh noise on the same sum would let the noise be averaged away)"
                )
            record = {
                "v": LEDGER_FORMAT_VERSION,
                "kind": "release",
                "at": when.isoformat(),
                "coordinator": coordinator,
                "query": query_id,
                "digest": digest,
                "prev": last,
            }
            _append(fd, record)
        return LedgerEntry("release", when, coordinator, query_id, digest)

    # -- internals --

    def _window(
        self, entries: Sequence[LedgerEntry], coordinator: str, at: datetime | None
    ) -> list[Spend]:
        start = self.window_start(at)
        return [
            e.spend
            for e in entries
            if e.kind == "spend"
            and e.spend is not None
            and e.coordinator == coordinator
            and e.at > start
        ]

    def _decide(
        self, entries: Sequence[LedgerEntry], spend: Spend, at: datetime | None
    ) -> BudgetDecision:
        if not isinstance(spend, Spend):
            raise TypeError("check() and record() take a Spend")
        when = _now(at)
        window = self._window(entries, spend.coordinator, when)
        before = _compose(window, self.budget, self.use_pld)
        after = _compose([*window, spend], self.budget, self.use_pld)
        b = self.budget

        def decision(allowed: bool, reason: str) -> BudgetDecision:
            return BudgetDecision(
                allowed,
                reason,
                spend.coordinator,
                before,
                after,
                b.epsilon,
                b.delta,
                when - b.period,
                when,
            )

        if any(
            e.kind == "spend"
            and e.coordinator == spend.coordinator
            and e.query_id == spend.query_id
            for e in entries
        ):
            return decision(
                False,
                f"query id '{spend.query_id}' was already run for this coordinator "
                "(each query runs once; send a new id)",
            )
        understated = _understated(spend)
        if understated is not None:
            return decision(False, understated)
        if not _fits(after, b):
            return decision(
                False,
                f"query '{spend.query_id}' (epsilon {spend.epsilon:g}, delta {spend.delta:g}) "
                f"would bring coordinator {spend.coordinator[:16]}'s spend over the last "
                f"{b.period_days} day(s) to epsilon {after.epsilon:.4g}, delta {after.delta:.3g} "
                f"({after.method}); the budget is epsilon {b.epsilon:g}, delta {b.delta:g} "
                f"(spent so far: epsilon {before.epsilon:.4g}, delta {before.delta:.3g})",
            )
        return decision(
            True,
            f"query '{spend.query_id}' fits: spend over the last {b.period_days} day(s) becomes "
            f"epsilon {after.epsilon:.4g}, delta {after.delta:.3g} ({after.method}) of "
            f"epsilon {b.epsilon:g}, delta {b.delta:g}",
        )

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[int]:
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, _FILE_MODE)
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot open the budget ledger: {exc}") from None
        try:
            if created:
                _fsync_dir(self.path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)  # releases the lock


# --- file format --------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _repair(fd: int, path: Path) -> bytes:
    """The file's bytes; a torn last line (a crash mid-append) is cut off first."""
    data = _read_all(fd)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        except OSError as exc:
            raise LedgerError(f"{path}: cannot cut off a torn last line: {exc}") from None
        data = data[:keep]
    return data


def _append(fd: int, record: Mapping[str, Any]) -> None:
    line = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
    data = memoryview(line.encode("utf-8"))
    try:
        while data:
            written = os.write(fd, data)
            data = data[written:]
        os.fsync(fd)
    except OSError as exc:
        raise LedgerError(f"cannot append to the budget ledger: {exc}") from None


def _parse(data: bytes, path: Path) -> tuple[list[LedgerEntry], str]:
    """Entries of every complete line (a torn last line is ignored), and the hash of the last
    complete line (the next line's ``prev``)."""
    entries: list[LedgerEntry] = []
    last = _GENESIS
    lines = data.split(b"\n")[:-1]  # the piece after the last newline is torn or empty
    for number, raw in enumerate(lines, start=1):
        where = f"{path}: line {number}"
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LedgerError(f"{where}: not a JSON object; the ledger is damaged") from None
        if not isinstance(record, dict):
            raise LedgerError(f"{where}: not a JSON object; the ledger is damaged")
        if record.get("prev") != last:
            raise LedgerError(
                f"{where}: does not follow line {number - 1} (a line was edited or removed)"
            )
        try:
            entries.append(_entry(record, number))
        except LedgerError as exc:
            raise LedgerError(f"{where}: {exc}") from None
        last = hashlib.sha256(raw + b"\n").hexdigest()
    return entries, last


_SPEND_KEYS: Final = frozenset(
    {
        "v",
        "kind",
        "at",
        "coordinator",
        "query",
        "what",
        "digest",
        "epsilon",
        "delta",
        "extra_delta",
        "mechanisms",
        "cumulative",
        "prev",
    }
)
_RELEASE_KEYS: Final = frozenset({"v", "kind", "at", "coordinator", "query", "digest", "prev"})


def _entry(record: Mapping[str, Any], number: int) -> LedgerEntry:
    if record.get("v") != LEDGER_FORMAT_VERSION:
        raise LedgerError(f"unsupported ledger version {record.get('v')!r}")
    kind = record.get("kind")
    expected = {"spend": _SPEND_KEYS, "release": _RELEASE_KEYS}.get(str(kind))
    if expected is None or set(record) != expected:
        raise LedgerError(f"malformed {kind!r} entry")
    try:
        at = datetime.fromisoformat(record["at"])
    except (TypeError, ValueError):
        raise LedgerError(f"malformed time {record['at']!r}") from None
    if at.tzinfo is None:
        raise LedgerError(f"time {record['at']!r} has no timezone")
    if kind == "release":
        coordinator, query, digest = record["coordinator"], record["query"], record["digest"]
        if not all(isinstance(v, str) for v in (coordinator, query, digest)):
            raise LedgerError("malformed release entry")
        return LedgerEntry("release", at, coordinator, query, digest, line=number)
    mechanisms = record["mechanisms"]
    if not isinstance(mechanisms, list):
        raise LedgerError("malformed mechanisms")
    spend = Spend(
        coordinator=record["coordinator"],
        query_id=record["query"],
        epsilon=record["epsilon"],
        delta=record["delta"],
        mechanisms=tuple(Mechanism.from_dict(m) for m in mechanisms),
        extra_delta=record["extra_delta"],
        what=record["what"],
        digest=record["digest"],
    )
    return LedgerEntry(
        "spend",
        at,
        spend.coordinator,
        spend.query_id,
        spend.digest,
        spend,
        Spent.from_dict(record["cumulative"]),
        line=number,
    )
