"""Offline verification of one party's privacy log and its signed checkpoints.

The auditor trusts nothing but the party's Ed25519 public key. :func:`verify_log` reads
the log file and the checkpoints file once, front to back, and reports
:class:`Finding` objects, each naming the party, the rule broken and the entries
concerned (by seq):

* every line is a valid entry in canonical form (re-encoding gives the same bytes), its
  kind is in the closed list and it carries the detail its kind requires; ``party`` is
  the party's name;
* the entries form a chain: ``seq`` counts up from 0 without a gap (a missing entry and
  an entry moved out of order are each named), and each entry's ``prev`` is the leaf
  hash of the entry before it, so an entry altered after its successor was written is
  named exactly;
* every checkpoint carries a valid signature by the party's key for the expected origin,
  and its root equals the RFC 9162 Merkle root of the log's first ``size`` lines, so an
  edited, removed, inserted, reordered or truncated entry is caught even when it still
  parses and its chain was rewritten; sizes never decrease. Consecutive checkpoints are
  therefore consistent (append-only): both are roots of prefixes of this one log, which
  is exactly when the RFC 9162 consistency proof between them, computed from the log,
  verifies;
* policy: every ``release`` comes after a ``job-accepted`` entry for its job at this
  party (and no ``job-refused`` in between); the limit of each budget never changes, and
  its ``budget-spend`` entries never add up to more than the limit over the window each
  spend was checked in: a node's budget renews over a rolling period, so a spend that
  states its window (``window-start``, ``spent-at``) counts with the spends of its
  budget made after that window's start, one that does not (older logs) with every
  spend of its budget in the log;
* a torn last line (a crash mid-write) is a warning: the log verifies up to the last
  complete entry, and the finding says which; entries after the last matching checkpoint
  are a warning too (nothing signs them).

Where a checkpoint does not match, the finding names the entries between the last
checkpoint that matches and that checkpoint. When the hash chain inside that range is
intact, the last entry of the range is certainly altered (any earlier change would have
to be carried into it through the chain), and the finding names that one entry.

The checks across parties (messages, witnessed checkpoints) are in
:mod:`fedprop.audit.crosscheck`.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedprop.audit.checkpoint import CheckpointError, CheckpointProblem, verify_note
from fedprop.audit.log import (
    GENESIS,
    DetailKey,
    Entry,
    EntryError,
    EntryProblem,
    EventKind,
    checkpoints_path_for,
    format_time,
    parse_time,
    read_checkpoints,
)
from fedprop.audit.merkle import MerkleTree, leaf_hash

__all__ = [
    "BudgetSpends",
    "Finding",
    "LogReport",
    "Rule",
    "Severity",
    "Verdict",
    "sorted_findings",
    "verify_log",
]


class Severity(StrEnum):
    """How bad a finding is: an error fails the audit, a warning does not."""

    ERROR = "error"
    WARNING = "warning"


class Rule(StrEnum):
    """The rules an audit checks; each finding names one."""

    # one log: its entries
    LOG_UNREADABLE = "log-unreadable"
    TORN_TAIL = "torn-tail"
    ENTRY_MALFORMED = EntryProblem.MALFORMED.value
    ENTRY_NOT_CANONICAL = EntryProblem.NOT_CANONICAL.value
    ENTRY_INCOMPLETE = EntryProblem.INCOMPLETE.value
    KIND_UNKNOWN = EntryProblem.KIND_UNKNOWN.value
    DETAIL_REFUSED = EntryProblem.DETAIL_REFUSED.value
    PARTY_MISMATCH = "party-mismatch"
    SEQ_GAP = "seq-gap"
    SEQ_OUT_OF_ORDER = "seq-out-of-order"
    CHAIN_BROKEN = "chain-broken"
    # one log: its checkpoints
    CHECKPOINTS_MISSING = "checkpoints-missing"
    CHECKPOINT_TORN_TAIL = "checkpoint-torn-tail"
    CHECKPOINT_MALFORMED = "checkpoint-malformed"
    CHECKPOINT_UNKNOWN_KEY = "checkpoint-unknown-key"
    CHECKPOINT_BAD_SIGNATURE = "checkpoint-bad-signature"
    CHECKPOINT_MISSING_SIGNER = "checkpoint-missing-signer"
    CHECKPOINT_ORIGIN_MISMATCH = "checkpoint-origin-mismatch"
    CHECKPOINT_BEYOND_LOG = "checkpoint-beyond-log"
    CHECKPOINT_ROOT_MISMATCH = "checkpoint-root-mismatch"
    CHECKPOINT_SIZE_DECREASED = "checkpoint-size-decreased"
    UNCHECKPOINTED_ENTRIES = "uncheckpointed-entries"
    # one log: policy
    RELEASE_NOT_ALLOWED = "release-not-allowed"
    BUDGET_EXCEEDED = "budget-exceeded"
    BUDGET_LIMIT_CHANGED = "budget-limit-changed"
    # across parties (fedprop.audit.crosscheck)
    LOG_MISSING = "log-missing"
    COUNTERPARTY_UNKNOWN = "counterparty-unknown"
    RECEIVED_NOT_SENT = "received-not-sent"
    SENT_NOT_RECEIVED = "sent-not-received"
    WITNESSED_INVALID = "witnessed-invalid"
    SPLIT_VIEW = "split-view"
    ROLLED_BACK = "rolled-back"


_CHECKPOINT_RULES: Mapping[CheckpointProblem, Rule] = {
    CheckpointProblem.MALFORMED: Rule.CHECKPOINT_MALFORMED,
    CheckpointProblem.UNKNOWN_KEY: Rule.CHECKPOINT_UNKNOWN_KEY,
    CheckpointProblem.BAD_SIGNATURE: Rule.CHECKPOINT_BAD_SIGNATURE,
    CheckpointProblem.MISSING_SIGNER: Rule.CHECKPOINT_MISSING_SIGNER,
    CheckpointProblem.SPLIT_VIEW: Rule.SPLIT_VIEW,
}

#: Relative slack when comparing summed budget spends with their limit (float sums).
_BUDGET_SLACK = 1e-9


@dataclass(frozen=True)
class Finding:
    """One problem found in a party's log, or between two parties' logs.

    ``seq``..``last_seq`` (inclusive) are the entries concerned: one entry when they are
    equal, ``None`` when the finding is not about entries. An entry is named by its seq,
    which is also its 0-based line number in an intact log; a line that cannot be read
    is named by its line number. ``checkpoint`` is the 0-based number of the note
    concerned in the party's checkpoints file. ``peer`` and ``peer_seq`` name the other
    party's entry a cross-party finding was made against.
    """

    party: str
    rule: Rule
    message: str
    severity: Severity = Severity.ERROR
    seq: int | None = None
    last_seq: int | None = None
    checkpoint: int | None = None
    peer: str | None = None
    peer_seq: int | None = None

    def covers(self, seq: int) -> bool:
        """Whether this finding names entry ``seq``."""
        if self.seq is None:
            return False
        last = self.seq if self.last_seq is None else self.last_seq
        return self.seq <= seq <= last

    def sort_key(self) -> tuple[Any, ...]:
        """Party, then entry, then checkpoint, then rule: the order reports list findings."""
        return (
            self.party,
            -1 if self.seq is None else self.seq,
            -1 if self.checkpoint is None else self.checkpoint,
            self.rule.value,
            self.peer or "",
            -1 if self.peer_seq is None else self.peer_seq,
            self.message,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "severity": self.severity.value,
            "party": self.party,
            "seq": self.seq,
            "last_seq": self.last_seq,
            "checkpoint": self.checkpoint,
            "rule": self.rule.value,
            "peer": self.peer,
            "peer_seq": self.peer_seq,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = ""
        if self.seq is not None:
            last = self.seq if self.last_seq is None else self.last_seq
            where = f" seq {self.seq}" if last == self.seq else f" seq {self.seq}..{last}"
        if self.checkpoint is not None:
            where += f" checkpoint #{self.checkpoint}"
        if self.peer is not None:
            where += f" (vs {self.peer}" + (
                f" seq {self.peer_seq})" if self.peer_seq is not None else ")"
            )
        return f"{self.severity.value}: {self.party}{where}: {self.rule.value}: {self.message}"


def sorted_findings(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """``findings`` in report order (:meth:`Finding.sort_key`)."""
    return tuple(sorted(findings, key=Finding.sort_key))


class Verdict:
    """What an audit's findings add up to (for results that hold ``findings``)."""

    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """True only when no finding is an error."""
        return not self.errors

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The findings that fail the audit."""
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """The findings that do not fail the audit."""
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)


@dataclass(frozen=True)
class LogReport(Verdict):
    """The result of auditing one party's log.

    ``checkpointed`` is the number of entries covered by the largest checkpoint that
    matches the log.
    """

    party: str
    origin: str
    entries: int
    checkpoints: int
    checkpointed: int
    findings: tuple[Finding, ...]

    def summary(self) -> str:
        """A short text report: verdict line, then one line per finding."""
        verdict = "OK" if self.ok else "FAILED"
        head = (
            f"{self.party} ({self.origin}): {verdict}: {self.entries} entries, "
            f"{self.checkpoints} checkpoints, {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings"
        )
        return "\n".join([head, *(str(f) for f in self.findings)])


class _Findings:
    """Collects the findings about one party."""

    def __init__(self, party: str) -> None:
        self.party = party
        self.items: list[Finding] = []

    def add(
        self,
        rule: Rule,
        message: str,
        *,
        severity: Severity = Severity.ERROR,
        seq: int | None = None,
        last_seq: int | None = None,
        checkpoint: int | None = None,
        peer: str | None = None,
        peer_seq: int | None = None,
    ) -> None:
        self.items.append(
            Finding(
                party=self.party,
                rule=rule,
                message=message,
                severity=severity,
                seq=seq,
                last_seq=seq if last_seq is None else last_seq,
                checkpoint=checkpoint,
                peer=peer,
                peer_seq=peer_seq,
            )
        )


@dataclass
class BudgetSpends:
    """The spends of one budget in a log so far, sorted by when they were made.

    The one place that says how much of a budget a ``budget-spend`` entry counts against:
    a node's budget renews over a rolling period, so a spend that states its window
    (``window-start``, ``spent-at``) counts with the spends of its budget made after that
    window's start (spends dated after its own time included, as when a clock went back);
    one that does not (older logs) counts with every spend of its budget in the log.
    """

    limit_epsilon: float
    limit_delta: float
    first_seq: int
    times: list[datetime] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)

    @staticmethod
    def limits_of(entry: Entry) -> tuple[float, float]:
        """The epsilon and delta limits a ``budget-spend`` ``entry`` states."""
        detail = entry.detail
        return _number(detail[DetailKey.LIMIT_EPSILON]), _number(detail[DetailKey.LIMIT_DELTA])

    @classmethod
    def of(cls, entry: Entry, seq: int) -> BudgetSpends:
        """No spends yet, under the limits the ``budget-spend`` ``entry`` (at ``seq``) states."""
        return cls(*cls.limits_of(entry), first_seq=seq)

    def spend(self, entry: Entry) -> tuple[float, float, datetime | None, datetime]:
        """Add the ``budget-spend`` ``entry``; return the epsilon and delta spent in its
        window (itself included), the window's start (``None``: the whole log) and when
        the spend was made."""
        detail = entry.detail
        windowed = DetailKey.WINDOW_START in detail
        at = parse_time(detail[DetailKey.SPENT_AT]) if windowed else entry.time
        start = parse_time(detail[DetailKey.WINDOW_START]) if windowed else None
        epsilon, delta = _number(detail[DetailKey.EPSILON]), _number(detail[DetailKey.DELTA])
        i = bisect.bisect_right(self.times, at)
        self.times.insert(i, at)
        self.epsilons.insert(i, epsilon)
        self.deltas.insert(i, delta)
        first = 0 if start is None else bisect.bisect_right(self.times, start)
        return math.fsum(self.epsilons[first:]), math.fsum(self.deltas[first:]), start, at

    @property
    def total(self) -> tuple[float, float]:
        """Epsilon and delta of every spend so far."""
        return math.fsum(self.epsilons), math.fsum(self.deltas)


@dataclass
class _Policy:
    """The policy state of one log, entry by entry."""

    out: _Findings
    decisions: dict[str, tuple[EventKind, int]] = field(default_factory=dict)
    budgets: dict[str, BudgetSpends] = field(default_factory=dict)

    def check(self, entry: Entry, seq: int) -> None:
        kind, job, detail = entry.kind, entry.job, entry.detail
        if job is None:
            return
        if kind in (EventKind.JOB_ACCEPTED, EventKind.JOB_REFUSED):
            self.decisions[job] = (kind, seq)
        elif kind is EventKind.RELEASE:
            decision = self.decisions.get(job)
            what = f"release of {detail[DetailKey.WHAT]!r} under rule {detail[DetailKey.RULE]!r}"
            if decision is None:
                self.out.add(
                    Rule.RELEASE_NOT_ALLOWED,
                    f"{what}: no job-accepted entry for job {job!r} before it",
                    seq=seq,
                )
            elif decision[0] is EventKind.JOB_REFUSED:
                self.out.add(
                    Rule.RELEASE_NOT_ALLOWED,
                    f"{what}: the last decision on job {job!r} (seq {decision[1]}) refused it",
                    seq=seq,
                )
        elif kind is EventKind.BUDGET_SPEND:
            self._spend(entry, seq)

    def _spend(self, entry: Entry, seq: int) -> None:
        """Add a spend to its budget; check the window it was made in against the limits
        (:class:`BudgetSpends` says which spends a window holds)."""
        name = str(entry.detail[DetailKey.BUDGET])
        budget = self.budgets.get(name)
        limits = BudgetSpends.limits_of(entry)
        if budget is None:
            budget = self.budgets[name] = BudgetSpends.of(entry, seq)
        elif limits != (budget.limit_epsilon, budget.limit_delta):
            self.out.add(
                Rule.BUDGET_LIMIT_CHANGED,
                f"budget {name!r}: limit (epsilon, delta) {limits} differs from "
                f"{(budget.limit_epsilon, budget.limit_delta)} set at seq {budget.first_seq}",
                seq=seq,
            )
        epsilon, delta, start, at = budget.spend(entry)
        if epsilon > budget.limit_epsilon * (1 + _BUDGET_SLACK) or delta > budget.limit_delta * (
            1 + _BUDGET_SLACK
        ):
            where = (
                "after this entry"
                if start is None
                else f"in the window after {format_time(start)} (this spend made at "
                f"{format_time(at)})"
            )
            self.out.add(
                Rule.BUDGET_EXCEEDED,
                f"budget {name!r}: spent epsilon {epsilon:.6g}, delta {delta:.6g} {where}; "
                f"the limit is epsilon {budget.limit_epsilon:.6g}, delta "
                f"{budget.limit_delta:.6g}",
                seq=seq,
            )


def _number(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


@dataclass
class _Read:
    tree: MerkleTree
    entries: list[Entry]
    #: Line numbers an entry-level finding names, ascending (with repeats).
    suspects: list[int]


def _read_log(path: Path, out: _Findings, keep_entries: bool) -> _Read:
    """Check every line, its chain link and the policy; return the tree of the lines."""
    result = _Read(MerkleTree(), [], [])
    tree, suspects = result.tree, result.suspects
    policy = _Policy(out)
    gaps: list[tuple[int, int, int]] = []  # first and last missing seq, line where seen
    late: list[tuple[int, int]] = []  # seq below the expected one, line
    expected = 0
    previous: Entry | None = None
    previous_leaf = b""
    try:
        f = path.open("rb")
    except OSError as exc:
        out.add(Rule.LOG_UNREADABLE, f"cannot read {path.name}: {exc.strerror or exc}")
        return result
    with f:
        for line in f:
            pos = tree.size
            if not line.endswith(b"\n"):
                verified = f"up to seq {pos - 1}" if pos else "no entry"
                out.add(
                    Rule.TORN_TAIL,
                    f"the last {len(line)} bytes are an incomplete line, a write cut short; "
                    f"the log verifies {verified}",
                    severity=Severity.WARNING,
                    seq=pos,
                )
                break
            data = line[:-1]
            leaf = leaf_hash(data)
            tree.append(leaf)
            try:
                entry = Entry.from_bytes(data)
            except EntryError as exc:
                out.add(Rule(exc.problem.value), f"line {pos + 1}: {exc}", seq=pos)
                suspects.append(pos)
                previous, previous_leaf = None, leaf
                continue
            if entry.seq == 0 and entry.prev != GENESIS:
                out.add(Rule.CHAIN_BROKEN, "seq 0 does not start the chain", seq=pos)
                suspects.append(pos)
            elif (
                previous is not None
                and previous.seq == entry.seq - 1
                and entry.prev != previous_leaf.hex()
            ):
                out.add(
                    Rule.CHAIN_BROKEN,
                    f"seq {previous.seq} does not hash to the prev recorded by seq {entry.seq}: "
                    f"it was altered after seq {entry.seq} was written",
                    seq=pos - 1,
                )
                suspects.append(pos - 1)
            if entry.party != out.party:
                out.add(Rule.PARTY_MISMATCH, f"the entry names party {entry.party!r}", seq=pos)
                suspects.append(pos)
            if entry.seq != expected:
                suspects.append(pos)
                if entry.seq > expected:
                    gaps.append((expected, entry.seq - 1, pos))
                else:
                    late.append((entry.seq, pos))
            expected = max(expected, entry.seq + 1)
            policy.check(entry, pos)
            if keep_entries:
                result.entries.append(entry)
            previous, previous_leaf = entry, leaf
    _report_seq_order(gaps, late, out)
    return result


def _report_seq_order(
    gaps: list[tuple[int, int, int]], late: list[tuple[int, int]], out: _Findings
) -> None:
    """Name the missing seqs, and the entries that came later than their place."""
    late_seqs = sorted(seq for seq, _ in late)
    for first, last, pos in gaps:
        start = first
        lo = bisect.bisect_left(late_seqs, first)
        hi = bisect.bisect_right(late_seqs, last)
        for moved in [*late_seqs[lo:hi], last + 1]:
            if moved > start:
                count = moved - start
                out.add(
                    Rule.SEQ_GAP,
                    f"{count} {'entry is' if count == 1 else 'entries are'} missing before "
                    f"line {pos + 1} (removed)",
                    seq=start,
                    last_seq=moved - 1,
                )
            start = max(start, moved + 1)
    gap_starts = [first for first, _, _ in gaps]
    for seq, pos in late:
        i = bisect.bisect_right(gap_starts, seq) - 1
        moved_here = i >= 0 and seq <= gaps[i][1]
        reason = "out of order (entries were reordered)" if moved_here else "a second time"
        out.add(Rule.SEQ_OUT_OF_ORDER, f"seq {seq} appears at line {pos + 1}, {reason}", seq=seq)


def _check_checkpoints(
    notes: Sequence[str],
    public_key: Ed25519PublicKey,
    origin: str,
    read: _Read,
    out: _Findings,
) -> list[int]:
    """Verify each note and match it with the log; return the matching sizes, ascending."""
    tree = read.tree
    valid: list[tuple[int, int, bytes]] = []
    for number, note in enumerate(notes):
        try:
            checkpoint = verify_note(note, {out.party: public_key})
        except CheckpointError as exc:
            out.add(_CHECKPOINT_RULES[exc.problem], str(exc), checkpoint=number)
            continue
        if checkpoint.origin != origin:
            out.add(
                Rule.CHECKPOINT_ORIGIN_MISMATCH,
                f"origin is {checkpoint.origin!r}, expected {origin!r}",
                checkpoint=number,
            )
            continue
        valid.append((number, checkpoint.size, checkpoint.root))
    roots = {size: tree.root(size) for _, size, _ in valid if size <= tree.size}
    matched = sorted({size for _, size, root in valid if roots.get(size) == root})
    largest = 0
    for number, size, root in valid:
        if size < largest:
            out.add(
                Rule.CHECKPOINT_SIZE_DECREASED,
                f"size {size} follows a checkpoint of size {largest}",
                checkpoint=number,
            )
        largest = max(largest, size)
        if size > tree.size:
            out.add(
                Rule.CHECKPOINT_BEYOND_LOG,
                f"signs {size} entries but the log holds {tree.size}: the entries from seq "
                f"{tree.size} on were removed (log truncated or rolled back)",
                seq=tree.size,
                last_seq=size - 1,
                checkpoint=number,
            )
        elif roots[size] != root:
            _report_mismatch(number, size, matched, read.suspects, out)
    return matched


def _report_mismatch(
    number: int, size: int, matched: list[int], suspects: list[int], out: _Findings
) -> None:
    i = bisect.bisect_left(matched, size)
    if i < len(matched):
        out.add(
            Rule.CHECKPOINT_ROOT_MISMATCH,
            f"the root of size {size} does not match the log, yet the larger checkpoint of "
            f"size {matched[i]} does: this note signs another history (checkpoint replaced)",
            checkpoint=number,
        )
        return
    first = matched[i - 1] if i else 0
    if size == 0:
        out.add(Rule.CHECKPOINT_ROOT_MISMATCH, "signs a wrong empty root", checkpoint=number)
    elif bisect.bisect_left(suspects, first) == bisect.bisect_left(suspects, size):
        out.add(
            Rule.CHECKPOINT_ROOT_MISMATCH,
            f"the root of size {size} does not match the log; the chain of seq {first}.."
            f"{size - 1} is intact, so seq {size - 1} was altered (and possibly earlier "
            "entries with it)",
            seq=size - 1,
            checkpoint=number,
        )
    else:
        out.add(
            Rule.CHECKPOINT_ROOT_MISMATCH,
            f"the root of size {size} does not match the log: an entry in seq {first}.."
            f"{size - 1} differs from what was signed (edited, removed, inserted or reordered)",
            seq=first,
            last_seq=size - 1,
            checkpoint=number,
        )


@dataclass(frozen=True)
class _Audited:
    report: LogReport
    tree: MerkleTree
    matched: list[int]
    entries: list[Entry]


def _audit_log(
    log_path: Path,
    checkpoints_path: Path,
    party: str,
    public_key: Ed25519PublicKey,
    origin: str,
    keep_entries: bool,
) -> _Audited:
    out = _Findings(party)
    read = _read_log(log_path, out, keep_entries)
    tree = read.tree
    if not checkpoints_path.exists() and tree.size:
        out.add(
            Rule.CHECKPOINTS_MISSING,
            f"{checkpoints_path.name} does not exist: no entry of the log is signed",
            seq=0,
            last_seq=tree.size - 1,
        )
    records = read_checkpoints(checkpoints_path)
    if records.torn_tail is not None:
        out.add(
            Rule.CHECKPOINT_TORN_TAIL,
            f"{records.torn_tail.describe()}; the checkpoints before it are checked",
            severity=Severity.WARNING,
        )
    readable = not any(f.rule is Rule.LOG_UNREADABLE for f in out.items)
    matched = _check_checkpoints(records.notes, public_key, origin, read, out) if readable else []
    covered = matched[-1] if matched else 0
    if tree.size > covered:
        out.add(
            Rule.UNCHECKPOINTED_ENTRIES,
            f"no matching checkpoint signs seq {covered}..{tree.size - 1}",
            severity=Severity.WARNING,
            seq=covered,
            last_seq=tree.size - 1,
        )
    report = LogReport(
        party=party,
        origin=origin,
        entries=tree.size,
        checkpoints=len(records.notes),
        checkpointed=covered,
        findings=sorted_findings(out.items),
    )
    return _Audited(report, tree, matched, read.entries)


def verify_log(
    log_path: str | os.PathLike[str],
    party: str,
    public_key: Ed25519PublicKey,
    origin: str,
    *,
    checkpoints_path: str | os.PathLike[str] | None = None,
) -> LogReport:
    """Audit one party's log against its checkpoints (see the module docstring).

    ``party`` is the party's name (in its entries and as its signed-note key name),
    ``public_key`` its pinned Ed25519 key and ``origin`` the origin line its checkpoints
    must carry. The checkpoints file defaults to ``<log>.checkpoints``. The cost is
    linear in the size of the log; no entry is kept in memory.
    """
    path = Path(log_path)
    notes_path = checkpoints_path_for(path) if checkpoints_path is None else Path(checkpoints_path)
    return _audit_log(path, notes_path, party, public_key, origin, keep_entries=False).report
