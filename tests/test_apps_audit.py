"""Privacy logging at the edges: the node's mod and the coordinator's side, message by message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedprop.apps.audit import (
    AUDIT_ERROR_CODE,
    CoordinatorAudit,
    NodeAudit,
    log_origin,
    log_path,
    open_party_log,
)
from fedprop.apps.records import attach_checkpoint, attached_checkpoint, message_bytes, to_record
from fedprop.audit import AuditLog, EventKind, verify_log, verify_note
from fedprop.crypto.identity import Manifest, generate_identity, save_identity
from fedprop.errors import JobFailedError
from fedprop.protocols.hfl import ContributionReply, JobRequest, Step
from fedprop.spec import JobSpec


@pytest.fixture(autouse=True)
def flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower builds messages for the run and node of the process; here, a made-up one."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 7)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture
def parties(tmp_path: Path) -> tuple[Manifest, dict[str, AuditLog]]:
    """A manifest with bank-a and a coordinator, and each one's open log."""
    bank, coordinator = generate_identity("bank-a"), generate_identity("coordinator")
    manifest = Manifest("pilot", (bank.public,), coordinator.public)
    logs = {
        i.name: open_party_log(tmp_path / i.name, i, manifest.federation)
        for i in (bank, coordinator)
    }
    return manifest, logs


def _request(spec: JobSpec, note: str | None) -> Message:
    message = Message(
        to_record(JobRequest(spec.text, b"")), dst_node_id=7, message_type=Step.STATS.value
    )
    if note is not None:
        attach_checkpoint(message, note)
    return message


def _answer(calls: list[Message]):  # type: ignore[no-untyped-def]
    def call_next(message: Message, context: Context) -> Message:
        calls.append(message)
        reply = ContributionReply("bank-a", b"sealed", b"signature")
        return Message(to_record(reply), reply_to=message)

    return call_next


def _kinds(log: AuditLog) -> list[str]:
    return [json.loads(line)["kind"] for line in log.path.read_text().splitlines()]


CONTEXT = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_a_node_logs_the_message_witnesses_the_coordinator_and_signs_its_reply(
    spec: JobSpec, parties: tuple[Manifest, dict[str, AuditLog]]
) -> None:
    manifest, logs = parties
    node = NodeAudit(logs["bank-a"], manifest)
    calls: list[Message] = []
    request = _request(spec, logs["coordinator"].checkpoint())
    reply = node.handle(request, CONTEXT, _answer(calls))
    assert len(calls) == 1 and not reply.has_error()
    assert _kinds(logs["bank-a"]) == [
        "message-received",
        "checkpoint-witnessed",
        "job-accepted",
        "message-sent",
    ]
    entries = [json.loads(line) for line in logs["bank-a"].path.read_text().splitlines()]
    assert entries[0]["job"] == spec.id and entries[0]["step"] == Step.STATS.value
    received, sent = entries[0]["detail"], entries[-1]["detail"]
    assert received["bytes"] == len(message_bytes(request))
    assert sent["bytes"] == len(message_bytes(reply)) and sent["counterparty"] == "coordinator"
    # The reply carries bank-a's checkpoint, valid under the manifest's key for bank-a.
    note = attached_checkpoint(reply)
    assert note is not None
    checkpoint = verify_note(note, {"bank-a": manifest.node("bank-a").signing_key()})
    assert checkpoint.size == 4  # every entry, the reply's own send included


def test_a_forged_coordinator_checkpoint_is_refused_before_anything_runs(
    spec: JobSpec, parties: tuple[Manifest, dict[str, AuditLog]], tmp_path: Path
) -> None:
    manifest, logs = parties
    impostor = generate_identity("coordinator")
    with open_party_log(tmp_path / "impostor", impostor, "pilot") as forged_log:
        forged = forged_log.checkpoint()
    calls: list[Message] = []
    reply = NodeAudit(logs["bank-a"], manifest).handle(
        _request(spec, forged), CONTEXT, _answer(calls)
    )
    assert calls == []
    assert reply.has_error() and reply.error.code == AUDIT_ERROR_CODE
    assert "bank-a" in (reply.error.reason or "")
    kinds = _kinds(logs["bank-a"])
    assert kinds[0] == "message-received" and kinds[-1] == "message-sent"
    assert "job-refused" in kinds and "checkpoint-witnessed" not in kinds


def test_a_coordinator_showing_two_histories_is_refused(
    spec: JobSpec, parties: tuple[Manifest, dict[str, AuditLog]], tmp_path: Path
) -> None:
    manifest, logs = parties
    node = NodeAudit(logs["bank-a"], manifest)
    coordinator = logs["coordinator"]
    coordinator.append(EventKind.ERROR, detail={"rule": "x"})
    node.handle(_request(spec, coordinator.checkpoint()), CONTEXT, _answer([]))
    # A second log under the coordinator's key, same size, other entries: a split view.
    other = AuditLog.open(
        tmp_path / "fork.log", "coordinator", coordinator._key, coordinator.origin
    )
    other.append(EventKind.ERROR, detail={"rule": "y"})
    calls: list[Message] = []
    reply = node.handle(_request(spec, other.checkpoint()), CONTEXT, _answer(calls))
    assert calls == [] and reply.has_error()
    assert "two different roots" in (reply.error.reason or "")


def test_the_coordinator_refuses_a_reply_without_a_valid_node_checkpoint(
    spec: JobSpec, parties: tuple[Manifest, dict[str, AuditLog]], tmp_path: Path
) -> None:
    manifest, logs = parties
    audit = CoordinatorAudit(logs["coordinator"], manifest, spec.id)
    request = _request(spec, audit.checkpoint())
    reply = Message(to_record(ContributionReply("bank-a", b"p", b"s")), reply_to=request)
    with pytest.raises(JobFailedError, match="carries no audit checkpoint"):
        audit.received("bank-a", reply, "train round 1")
    impostor = generate_identity("bank-a")
    with open_party_log(tmp_path / "impostor", impostor, "pilot") as forged_log:
        attach_checkpoint(reply, forged_log.checkpoint())
    with pytest.raises(JobFailedError, match="audit checkpoint of 'bank-a' refused"):
        audit.received("bank-a", reply, "train round 1")
    assert log_path(tmp_path / "coordinator", "coordinator") == logs["coordinator"].path


def test_message_bytes_are_the_same_at_both_ends_and_differ_with_content(spec: JobSpec) -> None:
    request = _request(spec, None)
    twin = _request(spec, None)
    assert message_bytes(request) == message_bytes(twin)
    other = Message(
        to_record(JobRequest(spec.text, b"k")), dst_node_id=7, message_type=Step.STATS.value
    )
    assert message_bytes(other) != message_bytes(request)
    # The attached checkpoint is signed on its own, not part of the message's bytes.
    attach_checkpoint(twin, "note")
    assert message_bytes(twin) == message_bytes(request)


_EXITING_NODE = """
import sys
from pathlib import Path
from fedprop.apps.audit import _node_audit
from fedprop.audit import EventKind, error_detail
audit = _node_audit(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
audit.log.append(EventKind.ERROR, detail=error_detail("last-entry-before-exit"))
"""


def test_a_node_process_signs_its_log_tail_when_it_exits(tmp_path: Path) -> None:
    bank, coordinator = generate_identity("bank-a"), generate_identity("coordinator")
    save_identity(bank, tmp_path / "keys")
    manifest = Manifest("pilot", (bank.public,), coordinator.public)
    (tmp_path / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    audit_dir = tmp_path / "audit"
    args = [str(audit_dir), str(tmp_path / "keys"), str(tmp_path / "manifest.json")]
    subprocess.run([sys.executable, "-c", _EXITING_NODE, *args], check=True, timeout=120)
    path = log_path(audit_dir, "bank-a")
    report = verify_log(path, "bank-a", bank.signing.public_key(), log_origin("pilot", "bank-a"))
    assert report.ok and report.entries == 1
    # The one entry the process wrote is signed: no uncheckpointed-entries warning.
    assert report.findings == (), report.findings
