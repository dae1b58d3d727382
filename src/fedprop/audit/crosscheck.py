"""Verification of a federation's logs together: what no single log can show.

:func:`verify_federation` takes every party's log (:class:`PartyLog`) and the
federation's pinned Ed25519 keys, runs :func:`~fedprop.audit.verify.verify_log`'s checks
on each log, then checks the logs against each other:

* messages: every ``message-received`` entry at party R naming sender S must be matched
  by a ``message-sent`` entry at S naming R, for the same job, with the same SHA-256 and
  size (:data:`~fedprop.audit.log.DetailKey`). An unmatched receipt is an error
  (``received-not-sent``) naming R's entry: either S sent a message it did not log, or R
  recorded a message that was never sent. An unmatched send is a warning
  (``sent-not-received``): a message can be lost on the way, or its receiver failed.
  Matching is one to one, so a message logged once but received twice is found too.
  A counterparty that is not a party of the federation is a warning
  (``counterparty-unknown``): that message cannot be cross-checked.
* witnessed checkpoints: each ``checkpoint-witnessed`` entry at party W records a
  checkpoint of party P together with P's signature. It must verify with P's pinned key
  for P's origin (else ``witnessed-invalid``, naming W's entry: W recorded something P did
  not sign). Its root must then be the root of P's log at that size: a different root is
  a ``split-view`` (P showed W a different history than the log it shows the auditor),
  a size beyond P's log is ``rolled-back`` (P removed entries it had shown W, along with
  their checkpoints). Both findings name P and the entries concerned, and point at W's
  entry as the evidence.

A party listed in ``keys`` whose log is not given is a ``log-missing`` error, and one whose
log cannot be read a ``log-unreadable`` error: neither is cross-checked, and its peers'
records of messages with it are not matched.
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedprop.audit.checkpoint import CheckpointError, verify_note
from fedprop.audit.log import DetailKey, Entry, EventKind, checkpoints_path_for, witnessed_note
from fedprop.audit.verify import (
    Finding,
    LogReport,
    Rule,
    Severity,
    Verdict,
    _audit_log,
    _Audited,
    _Findings,
    sorted_findings,
)

__all__ = ["AuditResult", "PartyLog", "verify_federation"]

# job, sender, receiver, sha256, bytes
_MessageKey = tuple[str, str, str, str, int]


@dataclass(frozen=True)
class PartyLog:
    """Where one party's log is and the origin line its checkpoints carry.

    ``checkpoints_path`` defaults to ``<path>.checkpoints``.
    """

    party: str
    path: Path
    origin: str
    checkpoints_path: Path | None = None


@dataclass(frozen=True)
class AuditResult(Verdict):
    """The audit of a federation's logs.

    ``logs`` has one report per party whose log was given (in the order given);
    ``findings`` holds every finding, per log and across logs, in report order;
    ``entries`` maps each party to the valid entries of its log, as verified.
    """

    logs: tuple[LogReport, ...]
    findings: tuple[Finding, ...]
    entries: Mapping[str, tuple[Entry, ...]]

    def summary(self) -> str:
        """A short text report: verdict line, one line per party, one per finding."""
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"audit {verdict}: {len(self.logs)} logs, {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings"
        ]
        lines += [
            f"  {r.party}: {r.entries} entries, {r.checkpoints} checkpoints" for r in self.logs
        ]
        lines += [str(f) for f in self.findings]
        return "\n".join(lines)


def verify_federation(
    logs: Iterable[PartyLog], keys: Mapping[str, Ed25519PublicKey]
) -> AuditResult:
    """Verify each party's log, then the logs against each other (module docstring).

    ``keys`` maps every party of the federation (nodes and coordinator) to its pinned
    Ed25519 signing key, for example ``{p.name: p.signing for p in manifest.nodes}`` plus
    the coordinator's. Raises :class:`ValueError` when a log's party has no key or two
    logs name the same party.
    """
    audited: dict[str, _Audited] = {}
    origins: dict[str, str] = {}
    for log in logs:
        if log.party not in keys:
            raise ValueError(f"no public key for party {log.party!r}")
        if log.party in audited:
            raise ValueError(f"two logs for party {log.party!r}")
        path = Path(log.path)
        notes = checkpoints_path_for(path) if log.checkpoints_path is None else log.checkpoints_path
        audited[log.party] = _audit_log(
            path, Path(notes), log.party, keys[log.party], log.origin, keep_entries=True
        )
        origins[log.party] = log.origin
    out = {party: _Findings(party) for party in sorted(keys)}
    for party in sorted(set(keys) - set(audited)):
        out[party].add(Rule.LOG_MISSING, f"no log was given for {party}")
    # An unreadable log is reported as such; its peers are not checked against it.
    readable = {
        party: a
        for party, a in audited.items()
        if all(f.rule is not Rule.LOG_UNREADABLE for f in a.report.findings)
    }
    _match_messages(readable, keys, out)
    _check_witnessed(readable, origins, keys, out)
    findings = [f for a in audited.values() for f in a.report.findings]
    findings += [f for collected in out.values() for f in collected.items]
    return AuditResult(
        logs=tuple(a.report for a in audited.values()),
        findings=sorted_findings(findings),
        entries={party: tuple(a.entries) for party, a in audited.items()},
    )


def _match_messages(
    audited: Mapping[str, _Audited],
    keys: Mapping[str, Ed25519PublicKey],
    out: Mapping[str, _Findings],
) -> None:
    sent: dict[_MessageKey, list[int]] = {}
    received: dict[_MessageKey, list[int]] = {}
    for party, a in audited.items():
        for entry in a.entries:
            if entry.kind not in (EventKind.MESSAGE_SENT, EventKind.MESSAGE_RECEIVED):
                continue
            detail = entry.detail
            other = str(detail[DetailKey.COUNTERPARTY])
            if other not in keys or other == party:
                out[party].add(
                    Rule.COUNTERPARTY_UNKNOWN,
                    f"counterparty {other!r} is not another party of the federation; "
                    "the message cannot be cross-checked",
                    severity=Severity.WARNING,
                    seq=entry.seq,
                )
                continue
            if other not in audited:
                continue  # reported as log-missing
            job, digest = str(entry.job), str(detail[DetailKey.SHA256])
            size = int(detail[DetailKey.BYTES])
            if entry.kind is EventKind.MESSAGE_SENT:
                sent.setdefault((job, party, other, digest, size), []).append(entry.seq)
            else:
                received.setdefault((job, other, party, digest, size), []).append(entry.seq)
    for key, receipts in received.items():
        job, sender, receiver, digest, size = key
        for seq in receipts[len(sent.get(key, ())) :]:
            out[receiver].add(
                Rule.RECEIVED_NOT_SENT,
                f"{receiver} recorded receiving {size} bytes (sha256 {digest}) from {sender} "
                f"for job {job!r}, but {sender}'s log records no such message sent to "
                f"{receiver}: {sender} sent a message it did not log, or {receiver} recorded "
                "one that was never sent",
                seq=seq,
                peer=sender,
            )
    for key, sends in sent.items():
        job, sender, receiver, digest, size = key
        for seq in sends[len(received.get(key, ())) :]:
            out[sender].add(
                Rule.SENT_NOT_RECEIVED,
                f"{sender} recorded sending {size} bytes (sha256 {digest}) to {receiver} for "
                f"job {job!r}; {receiver}'s log records no such message received",
                severity=Severity.WARNING,
                seq=seq,
                peer=receiver,
            )


def _check_witnessed(
    audited: Mapping[str, _Audited],
    origins: Mapping[str, str],
    keys: Mapping[str, Ed25519PublicKey],
    out: Mapping[str, _Findings],
) -> None:
    for witness, a in audited.items():
        for entry in a.entries:
            if entry.kind is not EventKind.CHECKPOINT_WITNESSED:
                continue
            signer = str(entry.detail[DetailKey.SIGNER])
            if signer not in keys or signer == witness:
                out[witness].add(
                    Rule.WITNESSED_INVALID,
                    f"records a checkpoint signed by {signer!r}, which is not another party "
                    "of the federation",
                    seq=entry.seq,
                )
                continue
            try:
                checkpoint = verify_note(witnessed_note(entry.detail), {signer: keys[signer]})
            except CheckpointError as exc:
                out[witness].add(
                    Rule.WITNESSED_INVALID,
                    f"records a checkpoint of {signer} that {signer}'s key does not sign: {exc}",
                    seq=entry.seq,
                    peer=signer,
                )
                continue
            if signer not in audited:
                continue  # reported as log-missing
            if checkpoint.origin != origins[signer]:
                out[witness].add(
                    Rule.WITNESSED_INVALID,
                    f"records a checkpoint of {signer} for origin {checkpoint.origin!r}, not "
                    f"{signer}'s log {origins[signer]!r}",
                    seq=entry.seq,
                    peer=signer,
                )
                continue
            signed = audited[signer]
            size, tree = checkpoint.size, signed.tree
            head = f"{signer} signed size {size} root {_b64(checkpoint.root)}, which {witness}"
            if size > tree.size:
                out[signer].add(
                    Rule.ROLLED_BACK,
                    f"{head} witnessed, but {signer}'s log holds {tree.size} entries: entries "
                    "shown to a peer were removed with their checkpoints",
                    seq=tree.size,
                    last_seq=size - 1,
                    peer=witness,
                    peer_seq=entry.seq,
                )
            elif tree.root(size) != checkpoint.root:
                i = bisect.bisect_left(signed.matched, size)
                first = signed.matched[i - 1] if i else 0
                out[signer].add(
                    Rule.SPLIT_VIEW,
                    f"{head} witnessed, but {signer}'s log has root {_b64(tree.root(size))} at "
                    f"that size: {signer} showed {witness} a different history (it differs in "
                    f"seq {first}..{size - 1})",
                    seq=first if size else None,
                    last_seq=size - 1 if size else None,
                    peer=witness,
                    peer_seq=entry.seq,
                )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
