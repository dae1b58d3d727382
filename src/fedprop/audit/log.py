"""The append-only privacy log of one party, with signed checkpoints.

Every party (each bank's node and the coordinator) records here everything that left it
or reached it: accepted and refused jobs, key ceremonies, each message sent or received
(its SHA-256 digest, size and counterparty, never its content), releases, privacy budget
spends, errors, and the other parties' checkpoints it witnessed. An auditor verifies the
logs offline with :mod:`fedprop.audit.verify` and :mod:`fedprop.audit.crosscheck`,
trusting only the parties' public keys.

Entries
    ``<log>`` holds one entry per line: the canonical JSON of :class:`Entry` (sorted keys,
    no insignificant whitespace, UTF-8) followed by ``"\\n"``. Entry ``seq`` is its 0-based
    line number. The Merkle leaf of an entry is its line without the newline (RFC 9162 leaf
    hash), so the log is an RFC 9162 tree in file order. Each entry's ``prev`` is the hex
    leaf hash of the entry before it (:data:`GENESIS` for seq 0): a hash chain that lets
    the auditor name the entry that was altered, where a checkpoint alone only shows that
    something in the entries it signs changed.

Event kinds and their detail
    :class:`EventKind` is the closed list of events. :data:`REQUIRED_DETAIL` says which
    :class:`DetailKey` each kind's ``detail`` must carry, :data:`OPTIONAL_DETAIL` which
    group it may carry (all of it or none: a budget spend's window), and :data:`JOB_KINDS`
    which kinds must name a job; an entry without them, or with malformed values, is
    refused when written and reported when audited. Build details with the helpers
    (:func:`decision_detail`, :func:`key_ceremony_detail`, :func:`message_detail`,
    :func:`release_detail`, :func:`budget_detail`, :func:`error_detail`) rather than by
    hand. ``checkpoint-witnessed`` entries are written by :meth:`AuditLog.record_witness`
    (and :meth:`AuditLog.witness`) only.

``<log>.checkpoints``
    Every checkpoint the party signed, in order: each record is a signed note
    (:mod:`fedprop.audit.checkpoint`) followed by one empty line. A note's checkpoint body
    has no empty line and its signature block has none either, so a record ends at its
    second empty line.

Durability
    :meth:`AuditLog.append` writes the whole line on a file opened for appending, then
    ``fsync``s it; it returns only once the entry is on disk. The directory is
    ``fsync``ed when a file is created. Inside :meth:`AuditLog.batch` the ``fsync``
    happens once, when the batch closes (entries appended in a batch are durable only
    then); a ``batch(sync=False)`` leaves its entries to the next write that syncs (the
    next batch's close, append outside a batch, checkpoint or close), for records a party
    acts on only by sending its next message. :meth:`AuditLog.checkpoint` makes the log
    durable before it signs (including entries other processes appended, which may still
    wait for their batch's ``fsync``), so a checkpoint never covers an entry that a crash
    could lose, and :meth:`AuditLog.close` signs a last checkpoint when the log holds
    entries that no checkpoint in the checkpoints file covers.

Several processes
    A party's node may handle its messages in several processes; each opens the same
    log with :meth:`AuditLog.open` and appends to it, and the files stay one log (seq
    contiguous, one ``prev`` chain, checkpoints in non-decreasing size order). The log
    file's exclusive ``flock`` serialises the writers and also guards the checkpoints
    file. ``open`` holds it (waiting while another process holds it) only while it
    replays and recovers the files. Every write (``append``, ``checkpoint``,
    ``witness``, the end of a ``batch``, the last checkpoint of ``close``) holds it from
    start to end, taken by the outermost operation only (``witness`` appends; ``flock``
    does not nest on one open file), and a batch releases it between its appends.
    Having taken it, the object first catches up: it checks each complete line other
    processes appended since it last held the lock exactly as ``open`` checks a
    replayed line (seq, party, ``prev`` link, witnessed checkpoints) and adds it to its
    Merkle tree, so its next entry takes the next seq and chains to the last entry in
    the file, whichever process wrote it. Before signing, it also checks the
    checkpoints the other processes stored (signature, origin, size order, root), so it
    knows the last signed size. Until its next write, an object's :attr:`AuditLog.size`
    and :attr:`AuditLog.root` lag behind other processes' writes. A ``witness`` sees the
    checkpoints every process witnessed. The locks are advisory and assume a local
    filesystem; an object serves only the process that opened it (a forked child must
    open the log again).

Crash recovery (torn writes)
    An entry is complete when its line ends with ``"\\n"``. A crash in the middle of a
    write can leave an incomplete last line: a torn tail. :meth:`AuditLog.open` replays
    the file, checks every complete entry and its chain link and rebuilds the Merkle
    tree; it then cuts the torn tail off (it was never acknowledged to the caller, since
    ``append`` had not returned), reports it in :attr:`AuditLog.torn_tails`, logs a
    warning, and appends an ``error`` entry recording the offset, length and SHA-256 of
    the bytes it removed, so the recovery itself is on the record. The checkpoints file
    is recovered the same way. Writers write whole lines and notes under the ``flock``,
    so an incomplete last line or note that an open log finds when it catches up was
    left by another process that died mid-write: it is cut off and recorded in the same
    way. A complete line that is not a valid entry, a broken chain link, or signed
    checkpoints that do not match the entries (edited, removed or rolled back) are
    tampering or corruption, not a torn write: ``open`` refuses the log
    (:class:`AuditLogError`) and changes nothing, since appending would fork the
    history. Found by an open log catching up, they make the write fail
    (:class:`AuditLogError` naming the line or checkpoint) before it writes anything,
    and the object refuses every later write.

    What the party's own files cannot show is a consistent rollback of both files: the
    defence against that is the copies of checkpoints held by others (witnesses record a
    ``checkpoint-witnessed`` entry in their own logs, see :meth:`AuditLog.witness`).

No bulk data
    ``detail`` is a flat mapping from short lowercase keys to scalars; strings longer
    than :data:`MAX_DETAIL_STRING` characters, nested containers, bytes and non-finite
    numbers are refused (:class:`EntryError`), so rows or plaintext values cannot be
    written into a log by mistake. Messages are logged with :func:`message_detail`,
    which keeps only the digest, size, counterparty and message type.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedprop.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointProblem,
    NoteSignature,
    add_signature,
    format_note,
    key_id,
    parse_note,
    sign_note,
    verify_note,
)
from fedprop.audit.merkle import EMPTY_ROOT, MerkleTree, leaf_hash
from fedprop.errors import FedpropError

__all__ = [
    "CHECKPOINTS_SUFFIX",
    "GENESIS",
    "JOB_KINDS",
    "MAX_DETAIL_KEYS",
    "MAX_DETAIL_STRING",
    "MAX_LABEL",
    "OPTIONAL_DETAIL",
    "REQUIRED_DETAIL",
    "AuditLog",
    "AuditLogError",
    "CheckpointFile",
    "DetailKey",
    "DetailValue",
    "Entry",
    "EntryError",
    "EntryProblem",
    "EventKind",
    "TornTail",
    "budget_detail",
    "checkpoints_path_for",
    "decision_detail",
    "error_detail",
    "format_time",
    "key_ceremony_detail",
    "message_detail",
    "parse_time",
    "read_checkpoints",
    "release_detail",
    "witnessed_note",
]

_log = logging.getLogger(__name__)

#: A value in an entry's ``detail``: a scalar, never a container.
DetailValue = str | int | float | bool

#: Longest string a ``detail`` value may be (characters).
MAX_DETAIL_STRING: Final = 512
#: Most keys a ``detail`` mapping may have.
MAX_DETAIL_KEYS: Final = 32
#: Longest ``party``, ``job`` or ``step`` label (characters).
MAX_LABEL: Final = 128
#: Suffix of the checkpoints file that goes with a log file.
CHECKPOINTS_SUFFIX: Final = ".checkpoints"
#: The ``prev`` of entry 0: there is no entry before it.
GENESIS: Final = "0" * 64

_FIELDS = frozenset({"seq", "time", "party", "job", "step", "kind", "prev", "detail"})
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_INT_LIMIT = 1 << 63
_READ_CHUNK = 1 << 20
_REFUSAL = "the log was altered or corrupted, refusing to append to it"


class EventKind(StrEnum):
    """The closed list of events a privacy log records."""

    JOB_ACCEPTED = "job-accepted"
    JOB_REFUSED = "job-refused"
    KEY_CEREMONY = "key-ceremony"
    MESSAGE_SENT = "message-sent"
    MESSAGE_RECEIVED = "message-received"
    RELEASE = "release"
    BUDGET_SPEND = "budget-spend"
    ERROR = "error"
    CHECKPOINT_WITNESSED = "checkpoint-witnessed"


_KINDS = frozenset(kind.value for kind in EventKind)


class DetailKey(StrEnum):
    """The names of the ``detail`` values the audit reads (see :data:`REQUIRED_DETAIL`)."""

    #: The policy rule behind a decision or release, or the name of an error.
    RULE = "rule"
    #: What a key ceremony did (``"generated"``, ``"received"``, ...).
    ACTION = "action"
    #: SHA-256 (hex) of the public material of a key ceremony.
    KEY_SHA256 = "key-sha256"
    #: SHA-256 (hex) of the exact bytes of a message.
    SHA256 = "sha256"
    #: The length in bytes of a message.
    BYTES = "bytes"
    #: The party at the other end of a message.
    COUNTERPARTY = "counterparty"
    #: The protocol's name for a message (``"fit-ins"``, ``"encrypted-sum"``, ...).
    MESSAGE_TYPE = "message-type"
    #: What a release made available (``"model"``, ``"metrics"``, ...).
    WHAT = "what"
    #: The privacy budget a spend draws on (a dataset or a job, as the policy says).
    BUDGET = "budget"
    #: The epsilon spent by one budget spend.
    EPSILON = "epsilon"
    #: The delta spent by one budget spend.
    DELTA = "delta"
    #: The policy's total epsilon for the budget.
    LIMIT_EPSILON = "limit-epsilon"
    #: The policy's total delta for the budget.
    LIMIT_DELTA = "limit-delta"
    #: When a spend was made (UTC, the entry time format): the end of the window it was
    #: checked in. Spends are checked over a rolling window (see :data:`WINDOW_START`).
    SPENT_AT = "spent-at"
    #: The start of the window a spend was checked in (UTC, exclusive): the spends of its
    #: budget made after this time, itself included, must stay within the limits.
    WINDOW_START = "window-start"
    #: A short human-readable explanation (errors).
    MESSAGE = "message"
    #: Origin line of a witnessed checkpoint.
    ORIGIN = "origin"
    #: Tree size of a witnessed checkpoint.
    SIZE = "size"
    #: Base64 root hash of a witnessed checkpoint.
    ROOT = "root"
    #: The party that signed a witnessed checkpoint.
    SIGNER = "signer"
    #: ``base64(key ID || Ed25519 signature)`` of the signer over the witnessed checkpoint.
    SIGNATURE = "signature"


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _is_hex_digest(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_amount(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _is_time(value: object) -> bool:
    return isinstance(value, str) and _TIME.fullmatch(value) is not None


def _is_base64(size: int) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        if not isinstance(value, str):
            return False
        try:
            return len(base64.b64decode(value, validate=True)) == size
        except (binascii.Error, ValueError):
            return False

    return check


_VALUE_CHECKS: Mapping[DetailKey, tuple[Callable[[object], bool], str]] = {
    DetailKey.RULE: (_is_text, "a non-empty string"),
    DetailKey.ACTION: (_is_text, "a non-empty string"),
    DetailKey.KEY_SHA256: (_is_hex_digest, "64 lowercase hex digits"),
    DetailKey.SHA256: (_is_hex_digest, "64 lowercase hex digits"),
    DetailKey.BYTES: (_is_count, "a non-negative integer"),
    DetailKey.COUNTERPARTY: (_is_text, "a non-empty string"),
    DetailKey.MESSAGE_TYPE: (_is_text, "a non-empty string"),
    DetailKey.WHAT: (_is_text, "a non-empty string"),
    DetailKey.BUDGET: (_is_text, "a non-empty string"),
    DetailKey.EPSILON: (_is_amount, "a non-negative number"),
    DetailKey.DELTA: (_is_amount, "a non-negative number"),
    DetailKey.LIMIT_EPSILON: (_is_amount, "a non-negative number"),
    DetailKey.LIMIT_DELTA: (_is_amount, "a non-negative number"),
    DetailKey.SPENT_AT: (_is_time, "a UTC time 'YYYY-MM-DDTHH:MM:SS.ffffffZ'"),
    DetailKey.WINDOW_START: (_is_time, "a UTC time 'YYYY-MM-DDTHH:MM:SS.ffffffZ'"),
    DetailKey.ORIGIN: (_is_text, "a non-empty string"),
    DetailKey.SIZE: (_is_count, "a non-negative integer"),
    DetailKey.ROOT: (_is_base64(32), "the base64 of a 32-byte hash"),
    DetailKey.SIGNER: (_is_text, "a non-empty string"),
    DetailKey.SIGNATURE: (_is_base64(4 + 64), "the base64 of a key ID and an Ed25519 signature"),
}

_MESSAGE_KEYS = (DetailKey.SHA256, DetailKey.BYTES, DetailKey.COUNTERPARTY, DetailKey.MESSAGE_TYPE)

#: The detail each event kind must carry; other keys may be added.
REQUIRED_DETAIL: Final[Mapping[EventKind, tuple[DetailKey, ...]]] = MappingProxyType(
    {
        EventKind.JOB_ACCEPTED: (DetailKey.RULE,),
        EventKind.JOB_REFUSED: (DetailKey.RULE,),
        EventKind.KEY_CEREMONY: (DetailKey.ACTION, DetailKey.KEY_SHA256),
        EventKind.MESSAGE_SENT: _MESSAGE_KEYS,
        EventKind.MESSAGE_RECEIVED: _MESSAGE_KEYS,
        EventKind.RELEASE: (DetailKey.WHAT, DetailKey.RULE),
        EventKind.BUDGET_SPEND: (
            DetailKey.BUDGET,
            DetailKey.EPSILON,
            DetailKey.DELTA,
            DetailKey.LIMIT_EPSILON,
            DetailKey.LIMIT_DELTA,
        ),
        EventKind.ERROR: (DetailKey.RULE,),
        EventKind.CHECKPOINT_WITNESSED: (
            DetailKey.ORIGIN,
            DetailKey.SIZE,
            DetailKey.ROOT,
            DetailKey.SIGNER,
            DetailKey.SIGNATURE,
        ),
    }
)

#: Detail a kind may carry, all of these keys or none, each checked like required detail:
#: the window a budget spend was checked in (logs written before windows were recorded
#: have none; their spends are checked against the whole log).
OPTIONAL_DETAIL: Final[Mapping[EventKind, tuple[DetailKey, ...]]] = MappingProxyType(
    {EventKind.BUDGET_SPEND: (DetailKey.SPENT_AT, DetailKey.WINDOW_START)}
)

#: The event kinds whose entries must name a job.
JOB_KINDS: Final = frozenset(
    {
        EventKind.JOB_ACCEPTED,
        EventKind.JOB_REFUSED,
        EventKind.MESSAGE_SENT,
        EventKind.MESSAGE_RECEIVED,
        EventKind.RELEASE,
        EventKind.BUDGET_SPEND,
    }
)


class EntryProblem(StrEnum):
    """Why bytes are not a valid entry (the auditor's rule names for entries)."""

    MALFORMED = "entry-malformed"
    NOT_CANONICAL = "entry-not-canonical"
    INCOMPLETE = "entry-incomplete"
    KIND_UNKNOWN = "kind-unknown"
    DETAIL_REFUSED = "detail-refused"


class AuditLogError(FedpropError):
    """A log cannot be opened or written: altered, in use, or a failed write."""


class EntryError(AuditLogError):
    """An entry is invalid, or its detail looks like data rather than a record of an event."""

    def __init__(self, problem: EntryProblem, message: str) -> None:
        self.problem = problem
        super().__init__(message)


# --- detail helpers ------------------------------------------------------------------


def decision_detail(rule: str) -> dict[str, DetailValue]:
    """Detail of ``job-accepted`` / ``job-refused``: the policy rule that decided."""
    return {DetailKey.RULE: rule}


def key_ceremony_detail(action: str, public_material: bytes) -> dict[str, DetailValue]:
    """Detail of ``key-ceremony``: what was done and the SHA-256 of its public material.

    ``public_material`` is the public key (or other public output) of the ceremony;
    only its digest is kept.
    """
    return {
        DetailKey.ACTION: action,
        DetailKey.KEY_SHA256: hashlib.sha256(bytes(public_material)).hexdigest(),
    }


def message_detail(
    payload: bytes | bytearray | memoryview, counterparty: str, message_type: str
) -> dict[str, DetailValue]:
    """Detail of ``message-sent`` / ``message-received``: digest, size, counterparty, type.

    Only the SHA-256 of the exact bytes and their length are kept, never the bytes.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError("payload must be the exact bytes sent or received")
    view = memoryview(payload)
    return {
        DetailKey.SHA256: hashlib.sha256(view).hexdigest(),
        DetailKey.BYTES: view.nbytes,
        DetailKey.COUNTERPARTY: counterparty,
        DetailKey.MESSAGE_TYPE: message_type,
    }


def release_detail(what: str, rule: str) -> dict[str, DetailValue]:
    """Detail of ``release``: what was made available, under which policy rule."""
    return {DetailKey.WHAT: what, DetailKey.RULE: rule}


def budget_detail(
    budget: str,
    epsilon: float,
    delta: float,
    limit_epsilon: float,
    limit_delta: float,
    *,
    window: tuple[datetime, datetime] | None = None,
) -> dict[str, DetailValue]:
    """Detail of ``budget-spend``: this spend and the policy's limits for ``budget``.

    ``window`` is ``(window_start, spent_at)``: the spend was made at ``spent_at`` and
    checked against the spends of ``budget`` made after ``window_start`` (a budget that
    renews over a rolling period). The auditor sums each spend's window, not the log.
    """
    detail: dict[str, DetailValue] = {
        DetailKey.BUDGET: budget,
        DetailKey.EPSILON: epsilon,
        DetailKey.DELTA: delta,
        DetailKey.LIMIT_EPSILON: limit_epsilon,
        DetailKey.LIMIT_DELTA: limit_delta,
    }
    if window is not None:
        start, spent_at = window
        if start > spent_at:
            raise ValueError("a budget window starts before the spend that ends it")
        detail[DetailKey.WINDOW_START] = format_time(start)
        detail[DetailKey.SPENT_AT] = format_time(spent_at)
    return detail


def error_detail(rule: str, message: str = "") -> dict[str, DetailValue]:
    """Detail of ``error``: the name of what went wrong and, optionally, a short message."""
    detail: dict[str, DetailValue] = {DetailKey.RULE: rule}
    if message:
        detail[DetailKey.MESSAGE] = message
    return detail


def _witness_detail(checkpoint: Checkpoint, signature: NoteSignature) -> dict[str, DetailValue]:
    return {
        DetailKey.ORIGIN: checkpoint.origin,
        DetailKey.SIZE: checkpoint.size,
        DetailKey.ROOT: base64.b64encode(checkpoint.root).decode("ascii"),
        DetailKey.SIGNER: signature.name,
        DetailKey.SIGNATURE: signature.encoded,
    }


def witnessed_note(detail: Mapping[str, DetailValue]) -> str:
    """Rebuild the signed note a ``checkpoint-witnessed`` entry records (to verify it).

    Raises :class:`~fedprop.audit.checkpoint.CheckpointError` when the detail does not
    make a well-formed note.
    """
    origin, size, root = detail[DetailKey.ORIGIN], detail[DetailKey.SIZE], detail[DetailKey.ROOT]
    signer, signature = detail[DetailKey.SIGNER], detail[DetailKey.SIGNATURE]
    if not (
        isinstance(origin, str)
        and isinstance(size, int)
        and isinstance(root, str)
        and isinstance(signer, str)
        and isinstance(signature, str)
    ):
        raise CheckpointError(CheckpointProblem.MALFORMED, "witnessed checkpoint detail types")
    checkpoint = Checkpoint.parse_body(f"{origin}\n{size}\n{root}\n")
    return format_note(checkpoint, [NoteSignature.parse(signer, signature)])


# --- entries -------------------------------------------------------------------------


def _check_label(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise EntryError(EntryProblem.MALFORMED, f"{what} must be a non-empty string")
    if len(value) > MAX_LABEL:
        raise EntryError(EntryProblem.MALFORMED, f"{what} is longer than {MAX_LABEL} characters")
    if _CONTROL.search(value):
        raise EntryError(EntryProblem.MALFORMED, f"{what} contains a control character")
    _check_utf8(value, what, EntryProblem.MALFORMED)
    return value


def _check_utf8(value: str, what: str, problem: EntryProblem) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EntryError(problem, f"{what} is not valid Unicode text") from None


def _refuse(message: str) -> EntryError:
    return EntryError(EntryProblem.DETAIL_REFUSED, message)


def _check_detail(detail: object) -> dict[str, DetailValue]:
    """A copy of ``detail`` if every key and value is allowed in a log; refuse otherwise."""
    if not isinstance(detail, Mapping):
        raise _refuse("detail must be a mapping of names to scalars")
    if len(detail) > MAX_DETAIL_KEYS:
        raise _refuse(f"detail has {len(detail)} keys, at most {MAX_DETAIL_KEYS} are allowed")
    checked: dict[str, DetailValue] = {}
    for key, value in detail.items():
        if not isinstance(key, str) or not _DETAIL_KEY.fullmatch(key):
            raise _refuse(
                f"detail key {key!r} is not a short lowercase name ([a-z][a-z0-9_.-]*, "
                "at most 64 characters)"
            )
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not -_INT_LIMIT <= value < _INT_LIMIT:
                raise _refuse(f"detail {key!r} is an integer outside the signed 64-bit range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _refuse(f"detail {key!r} is not a finite number")
        elif isinstance(value, str):
            if len(value) > MAX_DETAIL_STRING:
                raise _refuse(
                    f"detail {key!r} is a string of {len(value)} characters (at most "
                    f"{MAX_DETAIL_STRING}): a log records digests and sizes, never data"
                )
            _check_utf8(value, f"detail {key!r}", EntryProblem.DETAIL_REFUSED)
        else:
            raise _refuse(
                f"detail {key!r} is a {type(value).__name__}: a log holds only scalars "
                "(digests, sizes, names, counts), never containers or data"
            )
        checked[str(key)] = value
    return checked


_REQUIRED_CHECKS = {
    kind: tuple((key.value, *_VALUE_CHECKS[key]) for key in keys)
    for kind, keys in REQUIRED_DETAIL.items()
}
_OPTIONAL_CHECKS = {
    kind: tuple((key.value, *_VALUE_CHECKS[key]) for key in keys)
    for kind, keys in OPTIONAL_DETAIL.items()
}


def _check_required(kind: EventKind, job: str | None, detail: Mapping[str, DetailValue]) -> None:
    if job is None and kind in JOB_KINDS:
        raise EntryError(EntryProblem.INCOMPLETE, f"a {kind} entry must name its job")
    for key, check, expected in _REQUIRED_CHECKS[kind]:
        if key not in detail:
            raise EntryError(EntryProblem.INCOMPLETE, f"a {kind} entry must carry detail {key!r}")
        if not check(detail[key]):
            raise EntryError(
                EntryProblem.INCOMPLETE, f"detail {key!r} of a {kind} entry must be {expected}"
            )
    optional = _OPTIONAL_CHECKS.get(kind, ())
    present = [key for key, _, _ in optional if key in detail]
    if present and len(present) != len(optional):
        names = ", ".join(repr(key) for key, _, _ in optional)
        raise EntryError(
            EntryProblem.INCOMPLETE, f"a {kind} entry carries all of {names} or none of them"
        )
    for key, check, expected in optional if present else ():
        if not check(detail[key]):
            raise EntryError(
                EntryProblem.INCOMPLETE, f"detail {key!r} of a {kind} entry must be {expected}"
            )


def format_time(value: datetime) -> str:
    """A timezone-aware time as a log writes it: UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if value.tzinfo is None:
        raise ValueError("a logged time must be timezone-aware")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(value: object) -> datetime:
    """Read a time :func:`format_time` wrote; :class:`EntryError` if it is not one."""
    return _parse_time(value)


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise EntryError(
            EntryProblem.MALFORMED, "time must be UTC ISO-8601 'YYYY-MM-DDTHH:MM:SS.ffffffZ'"
        )
    try:
        return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
    except ValueError:
        raise EntryError(EntryProblem.MALFORMED, f"time {value!r} is not a date") from None


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Entry:
    """One event in a party's privacy log.

    ``time`` is an aware datetime, stored in UTC with microseconds; ``prev`` is the hex
    RFC 9162 leaf hash of the entry before (:data:`GENESIS` for seq 0); ``detail`` is a
    read-only flat mapping of scalars carrying at least :data:`REQUIRED_DETAIL` for the
    kind (see the module docstring for what is refused).
    """

    seq: int
    time: datetime
    party: str
    job: str | None
    step: str | None
    kind: EventKind
    prev: str
    detail: Mapping[str, DetailValue] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise EntryError(EntryProblem.MALFORMED, "seq must be a non-negative integer")
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise EntryError(EntryProblem.MALFORMED, "time must be a timezone-aware datetime")
        object.__setattr__(self, "time", self.time.astimezone(UTC))
        _check_label(self.party, "party")
        if self.job is not None:
            _check_label(self.job, "job")
        if self.step is not None:
            _check_label(self.step, "step")
        if not _is_hex_digest(self.prev):
            raise EntryError(EntryProblem.MALFORMED, "prev must be 64 lowercase hex digits")
        try:
            kind = EventKind(self.kind)
        except ValueError:
            raise EntryError(
                EntryProblem.KIND_UNKNOWN, f"kind {self.kind!r} is not an event kind"
            ) from None
        object.__setattr__(self, "kind", kind)
        detail = _check_detail(self.detail)
        _check_required(kind, self.job, detail)
        object.__setattr__(self, "detail", MappingProxyType(detail))

    def to_bytes(self) -> bytes:
        """The canonical encoding: JSON with sorted keys, no whitespace, UTF-8."""
        return _canonical_json(
            {
                "seq": self.seq,
                "time": format_time(self.time),
                "party": self.party,
                "job": self.job,
                "step": self.step,
                "kind": self.kind.value,
                "prev": self.prev,
                "detail": dict(self.detail),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        """Read one entry; refuse it unless ``data`` is exactly its canonical encoding."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise EntryError(EntryProblem.MALFORMED, "the entry is not UTF-8") from None
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise EntryError(EntryProblem.MALFORMED, f"the entry is not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise EntryError(EntryProblem.MALFORMED, "the entry is not a JSON object")
        if obj.keys() != _FIELDS:
            missing = sorted(_FIELDS - set(obj))
            extra = sorted(set(obj) - _FIELDS)
            raise EntryError(
                EntryProblem.MALFORMED,
                f"the entry's fields are wrong (missing {missing}, unexpected {extra})",
            )
        kind = obj["kind"]
        if not isinstance(kind, str) or kind not in _KINDS:
            raise EntryError(EntryProblem.KIND_UNKNOWN, f"kind {kind!r} is not an event kind")
        for name in ("job", "step"):
            if obj[name] is not None and not isinstance(obj[name], str):
                raise EntryError(EntryProblem.MALFORMED, f"{name} must be a string or null")
        entry = cls(
            seq=obj["seq"],
            time=_parse_time(obj["time"]),
            party=obj["party"],
            job=obj["job"],
            step=obj["step"],
            kind=EventKind(kind),
            prev=obj["prev"],
            detail=obj["detail"],
        )
        if entry.to_bytes() != data:
            raise EntryError(
                EntryProblem.NOT_CANONICAL,
                "the entry is valid JSON but not in canonical form (re-encoding differs)",
            )
        return entry


def _canonical_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# --- files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TornTail:
    """Bytes after the last complete record of a file: a write cut short by a crash."""

    path: Path
    offset: int
    length: int
    sha256: str

    def describe(self) -> str:
        """One line for a report."""
        return (
            f"{self.path.name}: {self.length} bytes at offset {self.offset} after the last "
            f"complete record are a torn write (sha256 {self.sha256})"
        )


def _torn(path: Path, offset: int, data: bytes) -> TornTail:
    return TornTail(path, offset, len(data), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class CheckpointFile:
    """The notes of a checkpoints file in file order, and its torn tail if any."""

    notes: tuple[str, ...]
    torn_tail: TornTail | None


def checkpoints_path_for(log_path: str | os.PathLike[str]) -> Path:
    """The checkpoints file that goes with ``log_path``: ``<log>.checkpoints``."""
    path = Path(log_path)
    return path.with_name(path.name + CHECKPOINTS_SUFFIX)


def read_checkpoints(path: str | os.PathLike[str]) -> CheckpointFile:
    """Split a checkpoints file into notes (not verified here); a missing file has none.

    A record ends at its second empty line (after the body, after the signatures).
    Bytes after the last complete record are returned as the torn tail.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return CheckpointFile((), None)
    notes, end = _split_notes(data)
    return CheckpointFile(notes, _torn(path, end, data[end:]) if end < len(data) else None)


def _split_notes(data: bytes) -> tuple[tuple[str, ...], int]:
    """The complete checkpoint records at the start of ``data``, and where the last ends."""
    notes: list[str] = []
    pos = 0
    while pos < len(data):
        body_end = data.find(b"\n\n", pos)
        end = data.find(b"\n\n", body_end + 2) if body_end >= 0 else -1
        if end < 0:
            break
        notes.append(data[pos : end + 1].decode("utf-8", "surrogateescape"))
        pos = end + 2
    return tuple(notes), pos


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_range(fd: int, start: int, end: int) -> bytes:
    """The bytes ``[start, end)`` of the file (fewer if it is shorter)."""
    chunks: list[bytes] = []
    while start < end:
        chunk = os.pread(fd, min(end - start, _READ_CHUNK), start)
        if not chunk:
            break
        chunks.append(chunk)
        start += len(chunk)
    return b"".join(chunks)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_append(path: Path) -> tuple[int, bool]:
    """Open ``path`` for appending, creating it (mode 0600); say whether it was created."""
    flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        return os.open(path, flags), False


class _Chain:
    """The entries of one log file read so far: checked line by line, hashed into a tree.

    The one implementation of the checks on the entries of a party's own log, used both
    when :meth:`AuditLog.open` replays the file from its start and when an open log
    catches up with the entries other processes appended. ``offset`` is the byte offset
    just after the last complete line applied; ``witnessed`` maps the (origin, size) of
    every ``checkpoint-witnessed`` entry to the root it recorded.
    """

    __slots__ = ("offset", "party", "path", "tree", "witnessed")

    def __init__(self, path: Path, party: str) -> None:
        self.path = path
        self.party = party
        self.tree = MerkleTree()
        self.witnessed: dict[tuple[str, int], bytes] = {}
        self.offset = 0

    def prev(self) -> str:
        """The ``prev`` the next entry must carry."""
        size = self.tree.size
        return self.tree.leaf_hash(size - 1).hex() if size else GENESIS

    def check(self, data: bytes) -> Entry:
        """Check ``data`` (a line without its newline) as the next entry; change nothing.

        Raises :class:`AuditLogError`, naming the line, unless it is a valid entry of this
        party with the next seq and a ``prev`` that links it to the entry before.
        """
        seq = self.tree.size
        where = f"{self.path}: line {seq + 1} (seq {seq})"
        try:
            entry = Entry.from_bytes(data)
        except EntryError as exc:
            raise AuditLogError(f"{where} is not a valid entry ({exc}); {_REFUSAL}") from None
        if entry.seq != seq:
            raise AuditLogError(f"{where} carries seq {entry.seq}; {_REFUSAL}")
        if entry.party != self.party:
            raise AuditLogError(f"{where} belongs to party {entry.party!r}; {_REFUSAL}")
        if entry.prev != self.prev():
            raise AuditLogError(f"{where} does not chain to the entry before; {_REFUSAL}")
        return entry

    def add(self, entry: Entry, data: bytes) -> None:
        """Apply the next entry (checked, or just written): ``data`` is its line without newline."""
        if entry.kind is EventKind.CHECKPOINT_WITNESSED:
            self.witnessed[_witnessed_head(entry.detail)] = base64.b64decode(
                str(entry.detail[DetailKey.ROOT])
            )
        self.tree.append(leaf_hash(data))
        self.offset += len(data) + 1

    def read(self, fd: int, end: int) -> TornTail | None:
        """Check and apply every complete line from ``offset`` to ``end`` (the file's size).

        Returns the bytes after the last complete line as a torn tail (``None`` when the
        file ends with a newline) without removing them. Raises :class:`AuditLogError` at
        the first line that fails :meth:`check` (the lines before it stay applied), and
        when the file is shorter than ``offset`` (applied entries were removed).
        """
        if end < self.offset:
            raise AuditLogError(
                f"{self.path} is {end} bytes long but its first {self.tree.size} entries end "
                f"at byte {self.offset}: entries were removed; {_REFUSAL}"
            )
        pos = self.offset
        pending = b""
        while pos < end:
            chunk = os.pread(fd, min(end - pos, _READ_CHUNK), pos)
            if not chunk:
                break
            pos += len(chunk)
            buffer = pending + chunk if pending else chunk
            start = 0
            while (newline := buffer.find(b"\n", start)) >= 0:
                data = buffer[start:newline]
                self.add(self.check(data), data)
                start = newline + 1
            pending = buffer[start:]
        return _torn(self.path, self.offset, pending) if pending else None


def _witnessed_head(detail: Mapping[str, DetailValue]) -> tuple[str, int]:
    return str(detail[DetailKey.ORIGIN]), int(detail[DetailKey.SIZE])


def _check_own_checkpoints(
    notes: tuple[str, ...],
    party: str,
    public_key: Ed25519PublicKey,
    origin: str,
    tree: MerkleTree,
    path: Path,
    *,
    first: int = 0,
    previous: int = 0,
) -> int:
    """Refuse the log unless every checkpoint verifies and matches; return the last size.

    ``notes`` are the checkpoints from number ``first`` on; ``previous`` is the size of
    the checkpoint before them (sizes must not decrease).
    """
    for number, note in enumerate(notes, first):
        where = f"{path}: checkpoint #{number}"
        try:
            checkpoint = verify_note(note, {party: public_key})
        except CheckpointError as exc:
            raise AuditLogError(f"{where}: {exc}") from None
        if checkpoint.origin != origin:
            raise AuditLogError(f"{where} is for origin {checkpoint.origin!r}, not {origin!r}")
        if checkpoint.size < previous:
            raise AuditLogError(f"{where} has size {checkpoint.size} after size {previous}")
        if checkpoint.size > tree.size:
            raise AuditLogError(
                f"{where} signs {checkpoint.size} entries but the log holds {tree.size}: "
                "signed entries were removed, refusing to append to the log"
            )
        if tree.root(checkpoint.size) != checkpoint.root:
            raise AuditLogError(
                f"{where} (size {checkpoint.size}) does not match the log: signed entries "
                "were altered, refusing to append to the log"
            )
        previous = checkpoint.size
    return previous


class _WriteLock:
    """The locks a write of one :class:`AuditLog` holds: ``with`` yields the log's fd.

    Entering takes the log's thread lock and, at the outermost level only, the exclusive
    ``flock`` of the log file, then catches the log up with what other processes wrote
    (:meth:`AuditLog._catch_up`). ``flock`` does not nest on one open file (an inner
    unlock would release the outer lock), and writes nest (``witness`` appends; ``open``
    records its recoveries while it holds the lock), so ``depth`` counts the nesting and
    only the outermost exit releases the ``flock``.
    """

    __slots__ = ("depth", "log")

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.depth = 0

    def __enter__(self) -> int:
        log = self.log
        log._lock.acquire()
        try:
            fd = log._writable()
            if self.depth:
                self.depth += 1
                return fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise AuditLogError(f"{log.path}: locking the log failed: {exc}") from exc
            self.depth = 1
            try:
                log._catch_up(fd)
            except BaseException:
                self.depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise
            return fd
        except BaseException:
            log._lock.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        log = self.log
        self.depth -= 1
        if self.depth == 0 and log._fd is not None:
            fcntl.flock(log._fd, fcntl.LOCK_UN)
        log._lock.release()


class AuditLog:
    """The append-only, checkpointed privacy log of one party. Create with :meth:`open`.

    Several processes may each open the same log and append to it; the file stays one
    hash-chained Merkle log. Every write (:meth:`append`, :meth:`checkpoint`,
    :meth:`witness`, the end of a :meth:`batch`, the last checkpoint of :meth:`close`)
    holds an exclusive ``flock`` on the log file, which also guards the checkpoints
    file, and first catches up: it checks and applies the entries other processes
    appended since this object last held the lock, exactly as :meth:`open` checks a
    replayed file, so each entry gets the next ``seq`` and chains to the last entry in
    the file. :attr:`size` and :attr:`root` are this object's view as of its last write
    (or :meth:`open`) and lag behind later writes of other processes. See the module
    docstring ("Several processes") for the details.

    The methods are safe to call from several threads. An object must be used only in
    the process that opened it: after a ``fork`` the child shares the parent's file
    locks, so the child refuses to write with it and must open the log itself.
    """

    def __init__(
        self,
        *,
        path: Path,
        party: str,
        origin: str,
        signing_key: Ed25519PrivateKey,
        clock: Callable[[], datetime],
        fd: int,
        checkpoints_fd: int,
        chain: _Chain,
        checkpointed: int,
        checkpoints_read: tuple[int, int],
        torn_tails: tuple[TornTail, ...],
    ) -> None:
        self._path = path
        self._checkpoints_path = checkpoints_path_for(path)
        self._party = party
        self._origin = origin
        self._key = signing_key
        self._clock = clock
        self._pid = os.getpid()
        self._fd: int | None = fd
        self._checkpoints_fd = checkpoints_fd
        self._chain = chain
        # The size of the last checkpoint in the checkpoints file as last read, how many
        # checkpoints that file held then and the offset where the last one ended.
        self._checkpointed = checkpointed
        self._checkpoints_count, self._checkpoints_offset = checkpoints_read
        self._torn_tails = torn_tails
        self._lock = threading.RLock()
        self._write_lock = _WriteLock(self)
        self._batch_depth = 0
        self._batch_sync = True
        self._unsynced = False
        self._broken: str | None = None
        # Per signer: the last note verified by record_witness, the signer's raw key,
        # its checkpoint and detail.
        self._last_verified: dict[
            str, tuple[str, bytes, Checkpoint, Mapping[str, DetailValue]]
        ] = {}

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        party: str,
        signing_key: Ed25519PrivateKey,
        origin: str,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> AuditLog:
        """Open (or create) the log at ``path`` for ``party``, replaying and checking it.

        ``party`` is the party's name in entries and its signed-note key name;
        ``origin`` is the checkpoint origin line. The replay holds the log's exclusive
        ``flock`` (waiting while another process writes) and releases it before
        returning; other processes may hold the same log open. See the module docstring
        for what happens to a torn tail and for what makes ``open`` refuse a log.
        """
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError("signing_key must be an Ed25519PrivateKey")
        try:
            key_id(party, signing_key.public_key())
            Checkpoint(origin, 0, EMPTY_ROOT)
        except CheckpointError as exc:
            raise AuditLogError(f"cannot open an audit log for {party!r}: {exc}") from None
        _check_label(party, "party")
        path = Path(path)
        fd, created = _open_append(path)
        checkpoints_fd = -1
        log: AuditLog | None = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                checkpoints_path = checkpoints_path_for(path)
                checkpoints_fd, checkpoints_created = _open_append(checkpoints_path)
                if created or checkpoints_created:
                    _fsync_dir(path.parent)
                chain = _Chain(path, party)
                log_torn = chain.read(fd, os.fstat(fd).st_size)
                notes_data = _read_range(checkpoints_fd, 0, os.fstat(checkpoints_fd).st_size)
                notes, notes_end = _split_notes(notes_data)
                checkpointed = _check_own_checkpoints(
                    notes, party, signing_key.public_key(), origin, chain.tree, path
                )
                # Everything complete checked out: only now cut the torn tails off.
                torn: list[TornTail] = []
                if log_torn is not None:
                    os.ftruncate(fd, log_torn.offset)
                    os.fsync(fd)
                    torn.append(log_torn)
                if notes_end < len(notes_data):
                    os.ftruncate(checkpoints_fd, notes_end)
                    os.fsync(checkpoints_fd)
                    torn.append(_torn(checkpoints_path, notes_end, notes_data[notes_end:]))
                log = cls(
                    path=path,
                    party=party,
                    origin=origin,
                    signing_key=signing_key,
                    clock=clock,
                    fd=fd,
                    checkpoints_fd=checkpoints_fd,
                    chain=chain,
                    checkpointed=checkpointed,
                    checkpoints_read=(len(notes), notes_end),
                    torn_tails=(),
                )
                # Record the recoveries before any other process can write.
                log._write_lock.depth = 1
                for tail in torn:
                    log._record_torn_tail(tail)
                log._write_lock.depth = 0
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            if log is not None:
                log._broken = log._broken or "open failed"
                log.close()
            else:
                os.close(fd)
                if checkpoints_fd >= 0:
                    os.close(checkpoints_fd)
            raise
        return log

    # --- what the log is -------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def checkpoints_path(self) -> Path:
        """The file of every checkpoint this log signed (``<log>.checkpoints``)."""
        return self._checkpoints_path

    @property
    def party(self) -> str:
        """The party that keeps this log (also its signing key name)."""
        return self._party

    @property
    def origin(self) -> str:
        """The origin line of this log's checkpoints."""
        return self._origin

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key that verifies this log's checkpoints."""
        return self._key.public_key()

    @property
    def size(self) -> int:
        """The number of entries, as of this object's last write (other processes may add)."""
        with self._lock:
            return self._chain.tree.size

    @property
    def root(self) -> bytes:
        """The RFC 9162 Merkle root of the entries counted by :attr:`size`."""
        with self._lock:
            return self._chain.tree.root()

    @property
    def torn_tails(self) -> tuple[TornTail, ...]:
        """The torn tails this object cut off, in order.

        First those :meth:`open` found (log file, then checkpoints file), then any that a
        later write found while catching up (left by a process that crashed mid-write).
        """
        with self._lock:
            return self._torn_tails

    # --- writing ---------------------------------------------------------------------

    def append(
        self,
        kind: EventKind,
        *,
        job: str | None = None,
        step: str | None = None,
        detail: Mapping[str, DetailValue] | None = None,
    ) -> Entry:
        """Record one event; return the entry once it is on disk (see :meth:`batch`)."""
        with self._write_lock as fd:
            chain = self._chain
            entry = Entry(
                seq=chain.tree.size,
                time=self._clock(),
                party=self._party,
                job=job,
                step=step,
                kind=kind,
                prev=chain.prev(),
                detail={} if detail is None else detail,
            )
            data = entry.to_bytes()
            try:
                _write_all(fd, data + b"\n")
                if self._batch_depth:
                    self._unsynced = True
                else:
                    os.fsync(fd)
                    self._unsynced = False
            except OSError as exc:
                raise self._fail(f"writing seq {entry.seq} failed: {exc}") from exc
            chain.add(entry, data)
            return entry

    @contextlib.contextmanager
    def batch(self, *, sync: bool = True) -> Iterator[None]:
        """Group appends: one ``fsync`` when the (outermost) batch closes.

        Entries appended inside the batch, from any thread, are durable only when it
        closes; do not act on them (send the message they record) before that. The batch
        does not hold the file lock between its appends: other processes' entries may
        land between them.

        With ``sync=False`` (outermost batch only) the batch closes without an ``fsync``:
        its entries become durable with the next write that makes the log durable, which
        is the close of the next batch, the next :meth:`append` outside a batch, the next
        :meth:`checkpoint` or :meth:`close`. It is for records the party acts on only by
        sending its next message (whose own write-ahead batch makes both durable before
        it leaves): a crash before then loses them, and nothing was done on their account.
        """
        with self._lock:
            self._writable()
            self._batch_depth += 1
            if self._batch_depth == 1:
                self._batch_sync = sync
        try:
            yield
        finally:
            with self._lock:
                self._batch_depth -= 1
                if (
                    self._batch_depth == 0
                    and self._batch_sync
                    and self._unsynced
                    and self._fd is not None
                    and self._broken is None
                ):
                    with self._write_lock:
                        self._sync()

    def checkpoint(self) -> str:
        """Sign the current size and root; store the note in the checkpoints file; return it.

        The size is that of the whole log, other processes' entries included (the log is
        caught up first), so checkpoints are stored in non-decreasing size order.
        """
        with self._write_lock:
            self._catch_up_checkpoints()
            self._sync()
            tree = self._chain.tree
            checkpoint = Checkpoint(self._origin, tree.size, tree.root())
            note = sign_note(checkpoint.format_body(), self._party, self._key)
            record = note.encode("utf-8") + b"\n"
            try:
                _write_all(self._checkpoints_fd, record)
                os.fsync(self._checkpoints_fd)
            except OSError as exc:
                raise self._fail(
                    f"writing checkpoint of size {checkpoint.size} failed: {exc}"
                ) from exc
            self._checkpointed = checkpoint.size
            self._checkpoints_count += 1
            self._checkpoints_offset += len(record)
            return note

    def witness(
        self,
        note: str,
        signer: str,
        signer_key: Ed25519PublicKey,
        *,
        job: str | None = None,
        step: str | None = None,
    ) -> str:
        """Check another party's checkpoint, record it, and return it with our cosignature.

        :meth:`record_witness` does the checking and recording. The cosignature is a
        plain Ed25519 signed-note signature (type 0x01) by this party over the same body:
        it says "this party saw and checked this checkpoint", not the C2SP
        ``tlog-cosignature`` statement (which needs a consistency check).
        """
        self.record_witness(note, signer, signer_key, job=job, step=step)
        return add_signature(note, self._party, self._key)

    def record_witness(
        self,
        note: str,
        signer: str,
        signer_key: Ed25519PublicKey,
        *,
        job: str | None = None,
        step: str | None = None,
    ) -> Checkpoint:
        """Check another party's checkpoint and record it; return the checkpoint.

        The note must carry a valid signature by ``signer`` with ``signer_key``. A
        ``checkpoint-witnessed`` entry records its origin, size, root and the signer's
        signature (so an auditor can check that the signer really signed it); a
        checkpoint already witnessed (by any process writing this log) is not recorded
        twice. If this party already witnessed a different root for the same origin and
        size, the signer has shown two histories: that is recorded as an ``error`` entry
        (rule ``split-view``) and refused
        (:class:`~fedprop.audit.checkpoint.CheckpointError`, ``split-view``). Without the
        other log's entries a witness cannot check consistency between different sizes;
        the auditor does that from the logs.

        A party is shown the same note many times (every message carries its sender's
        latest checkpoint): the last note verified for each signer and key is kept, and
        an identical note is not verified again.
        """
        if signer == self._party:
            raise AuditLogError(f"{self._party!r} cannot witness its own checkpoints")
        checkpoint, detail = self._verified_note(note, signer, signer_key)
        head = (checkpoint.origin, checkpoint.size)
        with self._write_lock:
            earlier = self._chain.witnessed.get(head)
            if earlier is not None and earlier != checkpoint.root:
                evidence = error_detail("split-view", f"{signer} signed two roots for one size")
                evidence.update(detail)
                evidence["earlier-root"] = base64.b64encode(earlier).decode("ascii")
                self.append(EventKind.ERROR, job=job, step=step, detail=evidence)
                raise CheckpointError(
                    CheckpointProblem.SPLIT_VIEW,
                    f"{signer!r} signed two different roots for {checkpoint.origin} "
                    f"size {checkpoint.size}",
                )
            if earlier is None:
                self.append(EventKind.CHECKPOINT_WITNESSED, job=job, step=step, detail=detail)
        return checkpoint

    def _verified_note(
        self, note: str, signer: str, signer_key: Ed25519PublicKey
    ) -> tuple[Checkpoint, dict[str, DetailValue]]:
        """Verify ``note`` as signed by ``signer`` (unless this exact note, signer and key
        were verified last time); return its checkpoint and ``checkpoint-witnessed`` detail."""
        raw_key = signer_key.public_bytes_raw()
        with self._lock:
            cached = self._last_verified.get(signer)
        if cached is not None and cached[0] == note and cached[1] == raw_key:
            return cached[2], dict(cached[3])
        checkpoint = verify_note(note, {signer: signer_key})
        wanted = key_id(signer, signer_key)
        signature = next(s for s in parse_note(note)[1] if s.name == signer and s.key_id == wanted)
        detail = _witness_detail(checkpoint, signature)
        with self._lock:
            self._last_verified[signer] = (note, raw_key, checkpoint, MappingProxyType(detail))
        return checkpoint, dict(detail)

    def close(self) -> None:
        """Sign a last checkpoint if needed, make everything durable, release the files.

        The last checkpoint is signed when the log (caught up with other processes) holds
        entries that no checkpoint in the checkpoints file covers yet. Idempotent. A log
        whose write failed, or that found itself altered, is closed without signing.
        """
        with self._lock:
            if self._fd is None:
                return
            try:
                if self._broken is None and os.getpid() == self._pid:
                    with self._write_lock:
                        self._catch_up_checkpoints()
                        if self._chain.tree.size > self._checkpointed:
                            self.checkpoint()
            finally:
                os.close(self._fd)
                os.close(self._checkpoints_fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------

    def _writable(self) -> int:
        if self._fd is None:
            raise AuditLogError(f"{self._path} is closed")
        if self._broken is not None:
            raise AuditLogError(f"{self._path}: {self._broken}; reopen the log to recover")
        if os.getpid() != self._pid:
            raise AuditLogError(
                f"{self._path} was opened in process {self._pid}: open the log again in "
                "this process (a forked copy shares the parent's file lock)"
            )
        return self._fd

    def _catch_up(self, fd: int) -> None:
        """Apply the entries other processes appended; cut off a crashed writer's remnant.

        Runs holding the ``flock``. Writers append whole lines under that lock, so an
        incomplete last line seen here was left by a process that died mid-write: it is
        cut off and recorded as :meth:`open` records a torn tail. A line that fails the
        checks (or a file shorter than what was applied) is tampering: the log is marked
        broken and :class:`AuditLogError` names the line.
        """
        chain = self._chain
        before = chain.offset
        try:
            end = os.fstat(fd).st_size
            if end == before:
                return
            torn = chain.read(fd, end)
        except AuditLogError as exc:
            self._broken = str(exc)
            raise
        except OSError as exc:
            raise self._fail(f"reading the entries of other processes failed: {exc}") from exc
        if chain.offset != before:
            # Other processes wrote these entries; they may still wait for a batch's fsync.
            self._unsynced = True
        if torn is not None:
            try:
                os.ftruncate(fd, torn.offset)
                os.fsync(fd)
            except OSError as exc:
                raise self._fail(f"cutting off a torn tail failed: {exc}") from exc
            self._record_torn_tail(torn)

    def _catch_up_checkpoints(self) -> None:
        """Check the checkpoints other processes signed; cut off a crashed writer's remnant.

        Runs holding the ``flock`` (after :meth:`_catch_up`), before this object relies on
        the last signed size or appends a checkpoint. Checkpoints that do not verify or
        match the entries are tampering: the log is marked broken and
        :class:`AuditLogError` names the checkpoint.
        """
        fd = self._checkpoints_fd
        start = self._checkpoints_offset
        try:
            end = os.fstat(fd).st_size
            data = _read_range(fd, start, end) if end > start else b""
        except OSError as exc:
            raise self._fail(f"reading the checkpoints of other processes failed: {exc}") from exc
        if end < start:
            self._broken = (
                f"{self._checkpoints_path} is {end} bytes long but its first "
                f"{self._checkpoints_count} checkpoints end at byte {start}: signed "
                "checkpoints were removed, refusing to append to the log"
            )
            raise AuditLogError(self._broken)
        if not data:
            return
        notes, used = _split_notes(data)
        try:
            self._checkpointed = _check_own_checkpoints(
                notes,
                self._party,
                self._key.public_key(),
                self._origin,
                self._chain.tree,
                self._path,
                first=self._checkpoints_count,
                previous=self._checkpointed,
            )
        except AuditLogError as exc:
            self._broken = str(exc)
            raise
        self._checkpoints_count += len(notes)
        self._checkpoints_offset += used
        if used < len(data):
            torn = _torn(self._checkpoints_path, self._checkpoints_offset, data[used:])
            try:
                os.ftruncate(fd, torn.offset)
                os.fsync(fd)
            except OSError as exc:
                raise self._fail(f"cutting off a torn checkpoint failed: {exc}") from exc
            self._record_torn_tail(torn)

    def _record_torn_tail(self, tail: TornTail) -> None:
        """Report a torn tail already cut off, and record it as an ``error`` entry."""
        _log.warning("audit log recovery: %s; cut off", tail.describe())
        self._torn_tails = (*self._torn_tails, tail)
        detail = error_detail("torn-tail-truncated", tail.describe())
        detail.update({"file": tail.path.name, "offset": tail.offset, "bytes": tail.length})
        self.append(EventKind.ERROR, detail=detail)

    def _sync(self) -> None:
        if self._unsynced and self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise self._fail(f"fsync failed: {exc}") from exc
            self._unsynced = False

    def _fail(self, reason: str) -> AuditLogError:
        self._broken = reason
        return AuditLogError(f"{self._path}: {reason}; reopen the log to recover")
