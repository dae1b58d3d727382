"""Privacy logging at the edges: every message a party sends or receives, on its log.

On a node, :func:`audit_mod` is a Flower ClientApp mod, so every incoming message
and every reply passes through it whatever step the protocol runs; on the
coordinator, :class:`CoordinatorAudit` is called by the ServerApp's transport for
every message it pushes and every reply it pulls. Both write the party's
:class:`~fedprop.audit.AuditLog` (``<audit-dir>/<party>.log``, signed with the
party's identity key):

- ``message-received`` / ``message-sent``: SHA-256 and size of the message's
  canonical bytes (:func:`~fedprop.apps.records.message_bytes`), the counterparty
  and the message type; never the content;
- on a node: ``job-accepted`` at the first step of a job it carries out (the rule:
  the aggregation mode it allowed) or ``job-refused`` with the reason it gave, a
  ``key-ceremony`` when it made and sealed the job key, a ``release`` for every sum
  it opened for the coordinator (what, under which rule), ``error`` for a failed step.

Cross-party evidence: every message carries its sender's latest signed checkpoint
(renewed at most every :data:`CHECKPOINT_INTERVAL_SECONDS`; the log closes with one)
(:data:`~fedprop.apps.records.AUDIT_RECORD`); the receiver checks the signature
against its pinned manifest and records it as witnessed
(:meth:`~fedprop.audit.AuditLog.record_witness`): the ``checkpoint-witnessed`` entry,
covered by the receiver's own next signed checkpoint, is its countersignature. A note
seen again is not verified again. A message whose checkpoint does not verify,
or that shows a second history for a size already witnessed, is refused. A node that
cannot write its log refuses the message: nothing is computed unlogged.
"""

from __future__ import annotations

import atexit
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedprop.apps.records import (
    attach_checkpoint,
    attached_checkpoint,
    error_reply,
    from_record,
    message_bytes,
)
from fedprop.audit import (
    AuditLog,
    AuditResult,
    EventKind,
    PartyLog,
    decision_detail,
    error_detail,
    key_ceremony_detail,
    message_detail,
    release_detail,
    verify_federation,
)
from fedprop.audit.log import DetailValue
from fedprop.crypto.identity import Manifest, NodeIdentity, load_identity
from fedprop.crypto.params import IDENTITY_DIR_MODE
from fedprop.errors import FedpropError, JobFailedError
from fedprop.protocols.analytics import QueryStep
from fedprop.protocols.hfl import ReleaseRequest, Step
from fedprop.protocols.messages import AbortRequest, KeysReply
from fedprop.protocols.secure_sum import VectorKind
from fedprop.protocols.steps import REQUESTS, VERTICAL_KINDS, job_of
from fedprop.protocols.vertical import ScoreSpec, parse_vertical
from fedprop.spec import JobSpec

__all__ = [
    "AUDIT_ERROR_CODE",
    "COORDINATOR",
    "CoordinatorAudit",
    "audit_mod",
    "log_origin",
    "log_path",
    "note_event",
    "open_party_log",
    "step_label",
    "verify_logs",
]

_log = logging.getLogger(__name__)

#: Flower error code of a message refused because of its audit evidence or a log failure.
AUDIT_ERROR_CODE = 4002
#: Counterparty name of the coordinator when the manifest does not list one.
COORDINATOR = "coordinator"
#: A party signs a new checkpoint for its messages at most this often (and whenever its
#: last one is older); messages in between carry the latest one. Every entry is still
#: written and fsync'd before the message it records leaves.
CHECKPOINT_INTERVAL_SECONDS = 1.0


class _Checkpoints:
    """The latest signed checkpoint of a log, renewed at most every interval."""

    def __init__(self, log: AuditLog, interval: float = CHECKPOINT_INTERVAL_SECONDS) -> None:
        self.log = log
        self.interval = interval
        self._note = ""
        self._signed_at = -math.inf

    def latest(self) -> str:
        """A checkpoint no older than the interval."""
        now = time.monotonic()
        if now - self._signed_at >= self.interval:
            self._note, self._signed_at = self.log.checkpoint(), now
        return self._note


def log_path(audit_dir: Path, party: str) -> Path:
    """Where ``party`` keeps its log in ``audit_dir``."""
    return Path(audit_dir) / f"{party}.log"


def log_origin(federation: str, party: str) -> str:
    """The origin line of ``party``'s checkpoints in ``federation``."""
    return f"fedprop/{federation}/{party}"


def open_party_log(audit_dir: Path, identity: NodeIdentity, federation: str) -> AuditLog:
    """Open (or create) ``identity``'s log in ``audit_dir``, signed with its identity key."""
    Path(audit_dir).mkdir(parents=True, exist_ok=True, mode=IDENTITY_DIR_MODE)
    return AuditLog.open(
        log_path(audit_dir, identity.name),
        identity.name,
        identity.signing,
        log_origin(federation, identity.name),
    )


@lru_cache(maxsize=64)
def _spec(spec_text: str) -> JobSpec:
    """A received job spec, parsed once per process."""
    return JobSpec.from_toml(spec_text, "received job spec")


def _request(step: str, message: Message) -> object | None:
    """The protocol request a message carries, or ``None`` if it carries none."""
    try:
        request: object = from_record(REQUESTS[step], message.content)
    except (ValueError, KeyError, FedpropError):
        return None
    return request


def _job(request: object | None) -> str | None:
    """The id of the job or query a request is for, if it names one."""
    text = getattr(request, "spec", None)
    ref = job_of(text) if isinstance(text, str) else None
    return None if ref is None else ref.id


Event = tuple[EventKind, Mapping[str, DetailValue]]
_NOTED: ContextVar[list[Event] | None] = ContextVar("fedprop_noted_events", default=None)


def note_event(kind: EventKind, detail: Mapping[str, DetailValue]) -> None:
    """Have the node's audit write ``kind`` with ``detail`` for the message being answered,
    in the same durable batch as the reply (a step handler reports budget spends and
    releases this way). Without an audit around the handler, nothing is written."""
    noted = _NOTED.get()
    if noted is not None:
        noted.append((kind, detail))


@contextmanager
def _noting() -> Iterator[list[Event]]:
    noted: list[Event] = []
    token = _NOTED.set(noted)
    try:
        yield noted
    finally:
        _NOTED.reset(token)


def step_label(message_type: str, request: object | None) -> str:
    """An entry's ``step``: the message type, and the protocol round (or a vertical job's
    epoch and mini-batch) where there is one."""
    round_ = getattr(request, "round", None)
    if round_ is not None:
        return f"{message_type} round {round_}"
    epoch = getattr(request, "epoch", 0)
    if isinstance(epoch, int) and epoch > 0:
        return f"{message_type} epoch {epoch} batch {getattr(request, 'batch', 0)}"
    return message_type


def _signer_key(manifest: Manifest, name: str) -> Ed25519PublicKey:
    for entry in manifest.participants:
        if entry.name == name:
            return entry.signing_key()
    raise FedpropError(f"'{name}' is not in the federation manifest")


class NodeAudit:
    """A node's side: logs each message and its outcome, witnesses the coordinator."""

    def __init__(self, log: AuditLog, manifest: Manifest) -> None:
        self.log = log
        self.manifest = manifest
        self.coordinator = manifest.coordinator.name if manifest.coordinator else COORDINATOR
        self.checkpoints = _Checkpoints(log)
        self._accepted: set[str] = set()

    def handle(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Log ``message`` and, before it leaves, the ClientApp's reply; attach the latest
        signed checkpoint to the reply."""
        message_type = message.metadata.message_type
        request = _request(message_type, message)
        step = step_label(message_type, request)
        job = _job(request)
        # One batch, made durable before the reply leaves. A crash before then loses the
        # receipt too, and no reply was sent: the coordinator's record of sending is then
        # an unanswered message, as for any node that failed.
        with self.log.batch():
            self.log.append(
                EventKind.MESSAGE_RECEIVED,
                job=job,
                step=step,
                detail=message_detail(message_bytes(message), self.coordinator, message_type),
            )
            noted: list[Event] = []
            try:
                self._witness(message, job, step)
            except FedpropError as exc:
                reply = error_reply(message, AUDIT_ERROR_CODE, self.log.party, str(exc))
            else:
                with _noting() as noted:
                    reply = call_next(message, context)
            self._record_outcome(message_type, step, job, request, reply)
            if job is not None and not reply.has_error():
                for kind, detail in noted:
                    self.log.append(kind, job=job, step=step, detail=detail)
            self.log.append(
                EventKind.MESSAGE_SENT,
                job=job,
                step=step,
                detail=message_detail(message_bytes(reply), self.coordinator, message_type),
            )
        attach_checkpoint(reply, self.checkpoints.latest())
        return reply

    def _witness(self, message: Message, job: str | None, step: str) -> None:
        note = attached_checkpoint(message)
        if note is None or self.manifest.coordinator is None:
            return
        key = self.manifest.coordinator.signing_key()
        self.log.record_witness(note, self.manifest.coordinator.name, key, job=job, step=step)

    def _record_outcome(
        self,
        message_type: str,
        step: str,
        job: str | None,
        request: object | None,
        reply: Message,
    ) -> None:
        if job is None:
            return
        if reply.has_error():
            reason = (reply.error.reason or "")[:400]
            if job in self._accepted:
                self.log.append(
                    EventKind.ERROR, job=job, step=step, detail=error_detail("step-failed", reason)
                )
            else:
                self.log.append(
                    EventKind.JOB_REFUSED, job=job, step=step, detail=decision_detail(reason)
                )
            return
        if isinstance(request, AbortRequest):
            detail = error_detail("job-aborted", request.reason[:400])
            self.log.append(EventKind.ERROR, job=job, step=step, detail=detail)
            return
        if job not in self._accepted and request is not None:
            rule = _accepted_rule(str(getattr(request, "spec", "")))
            self.log.append(
                EventKind.JOB_ACCEPTED, job=job, step=step, detail=decision_detail(rule)
            )
            self._accepted.add(job)
        if message_type in (Step.KEYS, QueryStep.KEYS):
            bundle = _reply_bundle(reply)
            if bundle:
                detail = key_ceremony_detail("job-key-made-and-sealed", bundle)
                self.log.append(EventKind.KEY_CEREMONY, job=job, step=step, detail=detail)
        if message_type == Step.RELEASE and isinstance(request, ReleaseRequest):
            rule = (
                "job release-model and node allow-model-release"
                if request.kind == VectorKind.UPDATE
                else "summed metrics of every party"
            )
            what = f"summed {request.kind}, round {request.round}"
            self.log.append(
                EventKind.RELEASE, job=job, step=step, detail=release_detail(what, rule)
            )


def _accepted_rule(text: str) -> str:
    """Why a node carried out a job's first step: its policy allowed it (queries), or the
    job's parties and aggregation mode passed its checks (training)."""
    ref = job_of(text)
    if ref is not None and ref.kind == "query":
        return "query allowed by the node's policy and budget; signed by the pinned coordinator"
    if ref is not None and ref.kind in VERTICAL_KINDS:
        vertical = parse_vertical(text)
        if isinstance(vertical, ScoreSpec):
            return f"parties in pinned manifest; scoring with its part of model '{vertical.model}'"
        aggregation = vertical.aggregation.value
    else:
        aggregation = _spec(text).aggregation.value
    return f"parties in pinned manifest; aggregation {aggregation} allowed"


def _reply_bundle(reply: Message) -> bytes:
    try:
        return from_record(KeysReply, reply.content).bundle
    except FedpropError:
        return b""


@lru_cache(maxsize=8)
def _node_audit(audit_dir: Path, key_dir: Path, manifest_path: Path) -> NodeAudit:
    """This process's audit of one node (its log stays open between messages)."""
    manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"))
    identity = load_identity(key_dir)
    log = open_party_log(audit_dir, identity, manifest.federation)
    atexit.register(_close_at_exit, log)
    return NodeAudit(log, manifest)


def _close_at_exit(log: AuditLog) -> None:
    """When a node's process ends, sign a last checkpoint over the entries no checkpoint
    covers yet (after every reply left, so off every message's path); a log that cannot
    be closed keeps its unsigned tail, which an audit reports."""
    try:
        log.close()
    except (OSError, FedpropError) as exc:
        _log.warning("closing the privacy log %s failed: %s", log.path, exc)


NodePaths = Callable[[Context], tuple[str, Path, Path, Path]]


def audit_mod(paths: NodePaths) -> Mod:
    """A ClientApp mod logging every message of the node ``paths`` names.

    ``paths(context)`` gives the node's party name, audit folder, key folder and
    pinned manifest.
    """

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        party = "?"
        try:
            party, *where = paths(context)
            audit = _node_audit(*where)
        except (OSError, FedpropError) as exc:
            reason = f"cannot open the node's audit log, refusing to answer: {exc}"
            return error_reply(message, AUDIT_ERROR_CODE, party, reason)
        return audit.handle(message, context, call_next)

    return mod


class CoordinatorAudit:
    """The coordinator's side: logs what it pushes and pulls, witnesses the nodes."""

    def __init__(self, log: AuditLog, manifest: Manifest, job: str) -> None:
        self.log = log
        self.manifest = manifest
        self.job = job
        self.checkpoints = _Checkpoints(log)

    def checkpoint(self) -> str:
        """The latest signed checkpoint, to travel with the next messages."""
        return self.checkpoints.latest()

    def sent(self, party: str, message: Message, step: str) -> None:
        """Record a message pushed to ``party``'s node for ``step`` (:func:`step_label`)."""
        detail = message_detail(message_bytes(message), party, message.metadata.message_type)
        self.log.append(EventKind.MESSAGE_SENT, job=self.job, step=step, detail=detail)

    def unanswered(self, party: str, reason: str, step: str) -> None:
        """Record that ``party``'s node did not answer ``step`` (the SuperLink's reason)."""
        detail = error_detail("no-reply", f"{party}: {reason}"[:400])
        self.log.append(EventKind.ERROR, job=self.job, step=step, detail=detail)

    def received(self, party: str, message: Message, step: str) -> None:
        """Record a reply from ``party``'s node for ``step`` and witness its checkpoint.

        :class:`JobFailedError` if the checkpoint is missing or does not verify.
        """
        detail = message_detail(message_bytes(message), party, message.metadata.message_type)
        self.log.append(EventKind.MESSAGE_RECEIVED, job=self.job, step=step, detail=detail)
        if message.has_error():
            return
        note = attached_checkpoint(message)
        if note is None:
            raise JobFailedError(f"{step}: the reply of '{party}' carries no audit checkpoint")
        try:
            self.log.record_witness(
                note, party, _signer_key(self.manifest, party), job=self.job, step=step
            )
        except FedpropError as exc:
            raise JobFailedError(f"{step}: audit checkpoint of '{party}' refused: {exc}") from None


def verify_logs(manifest: Manifest, paths: Sequence[Path]) -> AuditResult:
    """Verify the logs at ``paths`` (``<party>.log`` each) against ``manifest``'s keys.

    Every participant the manifest lists is expected to hand in its log; one it lists
    without a log is a finding. :class:`FedpropError` for a log of a party it does not list.
    """
    keys = {e.name: e.signing_key() for e in manifest.participants}
    logs = []
    for path in paths:
        party = Path(path).name.removesuffix(".log")
        if party not in keys:
            raise FedpropError(
                f"{path}: '{party}' is not a participant of federation '{manifest.federation}'"
            )
        logs.append(PartyLog(party, Path(path), log_origin(manifest.federation, party)))
    try:
        return verify_federation(logs, keys)
    except ValueError as exc:
        raise FedpropError(str(exc)) from None
