"""fedprop's privacy audit log: what each party sent and received, tamper-evident.

- :mod:`fedprop.audit.merkle`: RFC 6962 / RFC 9162 Merkle tree hashes, inclusion and
  consistency proofs.
- :mod:`fedprop.audit.checkpoint`: signed checkpoints (C2SP ``tlog-checkpoint`` bodies in
  C2SP ``signed-note`` envelopes, Ed25519) and cosignatures.
- :mod:`fedprop.audit.log`: one party's append-only log (:class:`AuditLog`): the closed
  list of event kinds, the detail each kind carries and helpers that build it, durable
  appends, torn-write recovery, periodic checkpoints, witnessing other parties'
  checkpoints.
- :mod:`fedprop.audit.verify`: the offline audit of one log (:func:`verify_log`).
- :mod:`fedprop.audit.crosscheck`: the audit of a federation's logs together
  (:func:`verify_federation`): messages sent against messages received, and checkpoints
  witnessed by peers against the logs shown to the auditor.
- :mod:`fedprop.audit.report`: the auditor's report (JSON and HTML).

A log never holds data: message entries carry the SHA-256 and size of the bytes, and
``detail`` values are short scalars.
"""

from fedprop.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointProblem,
    parse_verifier_key,
    verifier_key,
    verify_note,
)
from fedprop.audit.crosscheck import AuditResult, PartyLog, verify_federation
from fedprop.audit.log import (
    REQUIRED_DETAIL,
    AuditLog,
    AuditLogError,
    DetailKey,
    Entry,
    EntryError,
    EventKind,
    budget_detail,
    decision_detail,
    error_detail,
    key_ceremony_detail,
    message_detail,
    release_detail,
)
from fedprop.audit.merkle import MerkleTree, ProofError
from fedprop.audit.report import build_report, render_html, write_report
from fedprop.audit.verify import Finding, LogReport, Rule, Severity, verify_log

__all__ = [
    "REQUIRED_DETAIL",
    "AuditLog",
    "AuditLogError",
    "AuditResult",
    "Checkpoint",
    "CheckpointError",
    "CheckpointProblem",
    "DetailKey",
    "Entry",
    "EntryError",
    "EventKind",
    "Finding",
    "LogReport",
    "MerkleTree",
    "PartyLog",
    "ProofError",
    "Rule",
    "Severity",
    "budget_detail",
    "build_report",
    "decision_detail",
    "error_detail",
    "key_ceremony_detail",
    "message_detail",
    "parse_verifier_key",
    "release_detail",
    "render_html",
    "verifier_key",
    "verify_federation",
    "verify_log",
    "verify_note",
    "write_report",
]
