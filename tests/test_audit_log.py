"""One party's log: entries, durable appends, torn-write recovery, checkpoints, witnessing."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedprop.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointProblem,
    sign_note,
    verify_note,
)
from fedprop.audit.log import (
    GENESIS,
    MAX_DETAIL_STRING,
    AuditLog,
    AuditLogError,
    DetailKey,
    Entry,
    EntryError,
    EntryProblem,
    EventKind,
    budget_detail,
    checkpoints_path_for,
    decision_detail,
    error_detail,
    key_ceremony_detail,
    message_detail,
    read_checkpoints,
    release_detail,
)
from fedprop.audit.merkle import leaf_hash, root
from fedprop.audit.verify import Rule, Severity, verify_log

JOB = "job-2026-001"
ORIGIN = "audit.example/bank-a"
PAYLOAD = b"\x00model-update\xff" * 40


class Clock:
    """A clock that advances one millisecond per reading."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def log(tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[AuditLog]:
    with AuditLog.open(tmp_path / "bank-a.log", "bank-a", key, ORIGIN, clock=Clock()) as opened:
        yield opened


def _fill(log: AuditLog) -> None:
    log.append(EventKind.JOB_ACCEPTED, job=JOB, detail=decision_detail("policy-7"))
    log.append(EventKind.KEY_CEREMONY, job=JOB, detail=key_ceremony_detail("received", b"pk"))
    log.append(
        EventKind.MESSAGE_SENT,
        job=JOB,
        step="1",
        detail=message_detail(PAYLOAD, "coordinator", "fit-res"),
    )
    log.append(
        EventKind.BUDGET_SPEND, job=JOB, step="1", detail=budget_detail("rows", 0.5, 0, 1.0, 0)
    )
    log.append(EventKind.RELEASE, job=JOB, detail=release_detail("model", "policy-7"))


def _verify(path: Path, key: Ed25519PrivateKey) -> Any:
    return verify_log(path, "bank-a", key.public_key(), ORIGIN)


# --- entries ---------------------------------------------------------------------------


def test_entries_are_canonical_json_lines_chained_by_leaf_hash(
    log: AuditLog, key: Ed25519PrivateKey
) -> None:
    _fill(log)
    log.close()
    lines = log.path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == log.size == 5
    previous = GENESIS
    for seq, line in enumerate(lines):
        entry = Entry.from_bytes(line)
        assert entry.seq == seq and entry.party == "bank-a" and entry.prev == previous
        assert entry.to_bytes() == line
        assert line == json.dumps(
            json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        previous = leaf_hash(line).hex()
    assert log.root == root(lines)


def test_message_entries_keep_digest_and_size_never_the_bytes(log: AuditLog) -> None:
    entry = log.append(
        EventKind.MESSAGE_RECEIVED,
        job=JOB,
        step="3",
        detail=message_detail(PAYLOAD, "coordinator", "fit-ins"),
    )
    assert dict(entry.detail) == {
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
        "bytes": len(PAYLOAD),
        "counterparty": "coordinator",
        "message-type": "fit-ins",
    }
    assert b"model-update" not in log.path.read_bytes()


@pytest.mark.parametrize(
    ("detail", "problem"),
    [
        ({"rows": [1, 2, 3]}, EntryProblem.DETAIL_REFUSED),
        ({"blob": b"raw"}, EntryProblem.DETAIL_REFUSED),
        ({"value": "x" * (MAX_DETAIL_STRING + 1)}, EntryProblem.DETAIL_REFUSED),
        ({"score": float("nan")}, EntryProblem.DETAIL_REFUSED),
        ({"Bad Key": 1}, EntryProblem.DETAIL_REFUSED),
        ({"message": "no rule"}, EntryProblem.INCOMPLETE),
        ({"rule": ""}, EntryProblem.INCOMPLETE),
    ],
)
def test_bad_details_are_refused_and_nothing_is_written(
    log: AuditLog, detail: dict[str, Any], problem: EntryProblem
) -> None:
    with pytest.raises(EntryError) as exc:
        log.append(EventKind.ERROR, detail=detail)
    assert exc.value.problem is problem
    assert log.size == 0 and log.path.read_bytes() == b""


def test_each_kind_requires_its_detail_and_job(log: AuditLog) -> None:
    with pytest.raises(EntryError, match="must name its job") as exc:
        log.append(EventKind.MESSAGE_SENT, detail=message_detail(b"x", "coordinator", "t"))
    assert exc.value.problem is EntryProblem.INCOMPLETE
    broken = message_detail(b"x", "coordinator", "t")
    broken[DetailKey.BYTES] = -1
    with pytest.raises(EntryError, match="'bytes'"):
        log.append(EventKind.MESSAGE_SENT, job=JOB, detail=broken)
    del broken[DetailKey.BYTES]
    with pytest.raises(EntryError, match="must carry detail 'bytes'"):
        log.append(EventKind.MESSAGE_SENT, job=JOB, detail=broken)
    with pytest.raises(EntryError) as exc:
        log.append("data-export", job=JOB)  # type: ignore[arg-type]
    assert exc.value.problem is EntryProblem.KIND_UNKNOWN


def test_reading_refuses_anything_but_the_canonical_encoding(log: AuditLog) -> None:
    line = log.append(EventKind.ERROR, detail=error_detail("disk-full")).to_bytes()
    assert Entry.from_bytes(line).detail["rule"] == "disk-full"
    spaced = json.dumps(json.loads(line), sort_keys=True).encode()
    with pytest.raises(EntryError) as exc:
        Entry.from_bytes(spaced)
    assert exc.value.problem is EntryProblem.NOT_CANONICAL
    with pytest.raises(EntryError, match="duplicate key"):
        Entry.from_bytes(line[:-1] + b',"seq":0}')
    unknown = line.replace(b'"kind":"error"', b'"kind":"data-export"')
    with pytest.raises(EntryError) as exc:
        Entry.from_bytes(unknown)
    assert exc.value.problem is EntryProblem.KIND_UNKNOWN


# --- durability ------------------------------------------------------------------------


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, every ``os.fsync`` still syncs and appends its fd to the list returned."""
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return calls


def test_append_fsyncs_each_entry_and_a_batch_once(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_fsyncs(monkeypatch)
    log.append(EventKind.ERROR, detail=error_detail("a"))
    log.append(EventKind.ERROR, detail=error_detail("b"))
    assert len(calls) == 2
    with log.batch():
        for i in range(10):
            log.append(EventKind.ERROR, detail=error_detail(f"c{i}"))
        assert len(calls) == 2
    assert len(calls) == 3
    log.checkpoint()  # log already durable: one fsync, of the checkpoints file
    assert len(calls) == 4


def test_a_batch_without_sync_waits_for_the_next_write_that_syncs(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bank-a.log"
    log = AuditLog.open(path, "bank-a", key, ORIGIN)
    calls = _count_fsyncs(monkeypatch)
    with log.batch(sync=False):
        log.append(EventKind.ERROR, detail=error_detail("received-1"))
        log.append(EventKind.ERROR, detail=error_detail("received-2"))
    assert calls == [] and len(path.read_bytes().splitlines()) == 2  # written, not synced
    with log.batch():
        log.append(EventKind.ERROR, detail=error_detail("sent"))
    assert len(calls) == 1  # one fsync made both batches durable
    with log.batch(sync=False):
        log.append(EventKind.ERROR, detail=error_detail("received-3"))
    assert len(calls) == 1
    log.append(EventKind.ERROR, detail=error_detail("alone"))  # outside a batch: fsync'd
    assert len(calls) == 2
    with log.batch(sync=False):
        log.append(EventKind.ERROR, detail=error_detail("received-4"))
    note = log.checkpoint()  # makes the log durable before it signs
    assert len(calls) == 4 and verify_note(note, {"bank-a": key.public_key()}).size == 6
    with log.batch(sync=False):
        log.append(EventKind.ERROR, detail=error_detail("last"))
    log.close()  # syncs the log and signs a last checkpoint
    assert len(calls) == 6
    notes = read_checkpoints(checkpoints_path_for(path)).notes
    assert verify_note(notes[-1], {"bank-a": key.public_key()}).size == 7


def test_close_signs_a_last_checkpoint(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "bank-a.log"
    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        _fill(log)
        log.checkpoint()
        log.append(EventKind.ERROR, detail=error_detail("late"))
    notes = read_checkpoints(checkpoints_path_for(path)).notes
    assert [verify_note(n, {"bank-a": key.public_key()}).size for n in notes] == [5, 6]
    report = _verify(path, key)
    assert report.ok and not report.findings and report.checkpointed == 6


def test_reopening_replays_the_log(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "bank-a.log"
    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        _fill(log)
        size, head = log.size, log.root
    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        assert (log.size, log.root, log.torn_tails) == (size, head, ())
        entry = log.append(EventKind.ERROR, detail=error_detail("after-reopen"))
        assert (
            entry.seq == size
            and entry.prev == leaf_hash(path.read_bytes().split(b"\n")[size - 1]).hex()
        )
    assert _verify(path, key).ok


# --- crashes -----------------------------------------------------------------------------


def test_a_torn_last_line_verifies_up_to_the_last_entry_and_open_recovers(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "bank-a.log"
    with AuditLog.open(path, "bank-a", key, ORIGIN, clock=Clock()) as log:
        _fill(log)
    complete = path.read_bytes()
    half = Entry(
        seq=5,
        time=datetime(2026, 3, 1, tzinfo=UTC),
        party="bank-a",
        job=JOB,
        step="2",
        kind=EventKind.ERROR,
        prev=leaf_hash(complete.split(b"\n")[4]).hex(),
        detail=error_detail("never-finished"),
    ).to_bytes()[:57]
    path.write_bytes(complete + half)  # a crash in the middle of the write of seq 5

    report = _verify(path, key)
    assert report.ok and report.entries == 5
    [torn] = report.warnings
    assert (torn.rule, torn.seq, torn.severity) == (Rule.TORN_TAIL, 5, Severity.WARNING)
    assert "verifies up to seq 4" in torn.message

    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        [tail] = log.torn_tails
        assert (tail.offset, tail.length) == (len(complete), len(half))
        assert tail.sha256 == hashlib.sha256(half).hexdigest()
        assert log.size == 6  # the five entries and the record of the recovery
    lines = path.read_bytes().split(b"\n")
    assert path.read_bytes().startswith(complete) and half not in path.read_bytes()
    recovery = Entry.from_bytes(lines[5])
    assert recovery.kind is EventKind.ERROR and recovery.detail["rule"] == "torn-tail-truncated"
    assert recovery.detail["bytes"] == len(half)
    after = _verify(path, key)
    assert after.ok and not after.findings


def test_a_torn_checkpoint_is_cut_off_on_open(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "bank-a.log"
    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        _fill(log)
    notes_path = checkpoints_path_for(path)
    notes_path.write_bytes(notes_path.read_bytes() + b"audit.example/bank-a\n5\n")
    report = _verify(path, key)
    assert report.ok and [f.rule for f in report.findings] == [Rule.CHECKPOINT_TORN_TAIL]
    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        assert [t.path for t in log.torn_tails] == [notes_path]
    assert len(read_checkpoints(notes_path).notes) == 2  # the old one and the one on close
    assert read_checkpoints(notes_path).torn_tail is None


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda b: b.replace(b'"policy-7"', b'"policy-8"', 1), "does not chain|does not match"),
        (lambda b: b.replace(b'"seq":1', b'"seq":7', 1), "carries seq 7"),
        (lambda b: b.replace(b"{", b"[", 1), "not a valid entry"),
        (lambda b: b[: b.rindex(b"\n", 0, -1) + 1], "signed entries were removed"),
    ],
)
def test_open_refuses_an_altered_log_and_changes_nothing(
    tmp_path: Path, key: Ed25519PrivateKey, tamper: Any, reason: str
) -> None:
    path = tmp_path / "bank-a.log"
    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        _fill(log)
    path.write_bytes(tamper(path.read_bytes()))
    before = (path.read_bytes(), checkpoints_path_for(path).read_bytes())
    with pytest.raises(AuditLogError, match=reason):
        AuditLog.open(path, "bank-a", key, ORIGIN)
    assert (path.read_bytes(), checkpoints_path_for(path).read_bytes()) == before


def test_open_refuses_checkpoints_signed_by_another_key(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "bank-a.log"
    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        _fill(log)
    with pytest.raises(AuditLogError, match="unknown-key"):
        AuditLog.open(path, "bank-a", Ed25519PrivateKey.generate(), ORIGIN)


# --- witnessing ----------------------------------------------------------------------------


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[AuditLog, Ed25519PrivateKey]]:
    ckey = Ed25519PrivateKey.generate()
    path = tmp_path / "coordinator.log"
    with AuditLog.open(path, "coordinator", ckey, "audit.example/coordinator") as clog:
        clog.append(EventKind.JOB_ACCEPTED, job=JOB, detail=decision_detail("federation"))
        yield clog, ckey


def test_witnessing_records_the_checkpoint_and_cosigns_it(
    log: AuditLog, key: Ed25519PrivateKey, coordinator: tuple[AuditLog, Ed25519PrivateKey]
) -> None:
    clog, ckey = coordinator
    note = clog.checkpoint()
    cosigned = log.witness(note, "coordinator", ckey.public_key(), job=JOB, step="1")
    both = {"coordinator": ckey.public_key(), "bank-a": key.public_key()}
    assert verify_note(cosigned, both).size == 1
    assert cosigned.startswith(note)
    [entry] = [Entry.from_bytes(line) for line in log.path.read_bytes().splitlines()]
    assert entry.kind is EventKind.CHECKPOINT_WITNESSED
    assert entry.detail["origin"] == "audit.example/coordinator" and entry.detail["size"] == 1
    assert base64.b64decode(str(entry.detail["root"])) == clog.root
    assert str(entry.detail["signature"]) in note  # the coordinator's own signature
    log.witness(note, "coordinator", ckey.public_key())
    assert log.size == 1  # the same checkpoint is recorded once


def test_a_witness_checks_a_note_it_was_shown_before_only_once(
    log: AuditLog,
    coordinator: tuple[AuditLog, Ed25519PrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fedprop.audit.log as audit_log

    clog, ckey = coordinator
    verified: list[str] = []
    real_verify = audit_log.verify_note

    def counting_verify(note: str, verifiers: Any) -> Checkpoint:
        verified.append(note)
        return real_verify(note, verifiers)

    monkeypatch.setattr(audit_log, "verify_note", counting_verify)
    note = clog.checkpoint()
    for _ in range(3):
        checkpoint = log.record_witness(note, "coordinator", ckey.public_key(), job=JOB)
    assert verified == [note] and log.size == 1 and checkpoint.root == clog.root
    # Under another key the same note is checked again, and refused.
    with pytest.raises(CheckpointError) as exc:
        log.record_witness(note, "coordinator", Ed25519PrivateKey.generate().public_key())
    assert exc.value.problem is CheckpointProblem.UNKNOWN_KEY and len(verified) == 2
    # A new note is checked and recorded.
    clog.append(EventKind.ERROR, detail=error_detail("next"))
    later = clog.checkpoint()
    log.record_witness(later, "coordinator", ckey.public_key(), job=JOB)
    assert len(verified) == 3 and log.size == 2


def test_a_witness_refuses_a_second_root_for_the_same_size(
    log: AuditLog, key: Ed25519PrivateKey, coordinator: tuple[AuditLog, Ed25519PrivateKey]
) -> None:
    clog, ckey = coordinator
    log.witness(clog.checkpoint(), "coordinator", ckey.public_key())
    with AuditLog.open(
        log.path.parent / "fork.log", "coordinator", ckey, "audit.example/coordinator"
    ) as fork:
        fork.append(EventKind.JOB_ACCEPTED, job=JOB, detail=decision_detail("something-else"))
        forked = fork.checkpoint()
    with pytest.raises(CheckpointError) as exc:
        log.witness(forked, "coordinator", ckey.public_key())
    assert exc.value.problem is CheckpointProblem.SPLIT_VIEW
    evidence = Entry.from_bytes(log.path.read_bytes().splitlines()[-1])
    assert evidence.kind is EventKind.ERROR and evidence.detail["rule"] == "split-view"
    # the refusal survives a restart: the witnessed roots are replayed from the log
    log.close()
    with AuditLog.open(log.path, "bank-a", key, ORIGIN) as reopened, pytest.raises(CheckpointError):
        reopened.witness(forked, "coordinator", ckey.public_key())


def test_a_witness_refuses_bad_notes_and_its_own(
    log: AuditLog, key: Ed25519PrivateKey, coordinator: tuple[AuditLog, Ed25519PrivateKey]
) -> None:
    clog, _ = coordinator
    with pytest.raises(CheckpointError) as exc:
        log.witness(clog.checkpoint(), "coordinator", Ed25519PrivateKey.generate().public_key())
    assert exc.value.problem is CheckpointProblem.UNKNOWN_KEY
    with pytest.raises(AuditLogError, match="its own"):
        log.witness(log.checkpoint(), "bank-a", key.public_key())
    assert log.size == 0


# --- several writers ----------------------------------------------------------------------


def _entries(path: Path) -> list[Entry]:
    return [Entry.from_bytes(line) for line in path.read_bytes().splitlines()]


def _checkpoint_sizes(path: Path, key: Ed25519PrivateKey) -> list[int]:
    notes = read_checkpoints(checkpoints_path_for(path)).notes
    return [verify_note(n, {"bank-a": key.public_key()}).size for n in notes]


def test_two_open_logs_on_one_file_write_one_chain(
    tmp_path: Path, key: Ed25519PrivateKey, coordinator: tuple[AuditLog, Ed25519PrivateKey]
) -> None:
    clog, ckey = coordinator
    path = tmp_path / "bank-a.log"
    first = AuditLog.open(path, "bank-a", key, ORIGIN)
    second = AuditLog.open(path, "bank-a", key, ORIGIN)  # no longer refused
    a = first.append(EventKind.ERROR, detail=error_detail("first", "0"))
    b = second.append(EventKind.ERROR, detail=error_detail("second", "0"))
    assert (a.seq, b.seq) == (0, 1)  # the second caught up with the first's entry
    assert b.prev == leaf_hash(a.to_bytes()).hex()
    note = clog.checkpoint()
    first.witness(note, "coordinator", ckey.public_key(), job=JOB)
    second.witness(note, "coordinator", ckey.public_key(), job=JOB)  # already witnessed
    with second.batch():
        second.append(EventKind.ERROR, detail=error_detail("second", "1"))
        first.append(EventKind.ERROR, detail=error_detail("first", "1"))
        second.append(EventKind.ERROR, detail=error_detail("second", "2"))
    first.checkpoint()
    second.checkpoint()  # the same size and root again: still a valid checkpoint
    second.append(EventKind.ERROR, detail=error_detail("second", "3"))
    second.checkpoint()
    first.append(EventKind.ERROR, detail=error_detail("first", "2"))
    assert first.size == 8 and second.size == 7  # the second has not seen the last entry
    second.close()  # catches up and signs the whole log
    first.close()  # nothing left to sign
    entries = _entries(path)
    assert [e.seq for e in entries] == list(range(8))
    assert [(e.detail.get("rule"), e.detail.get("message")) for e in entries] == [
        ("first", "0"),
        ("second", "0"),
        (None, None),
        ("second", "1"),
        ("first", "1"),
        ("second", "2"),
        ("second", "3"),
        ("first", "2"),
    ]
    assert sum(e.kind is EventKind.CHECKPOINT_WITNESSED for e in entries) == 1
    assert _checkpoint_sizes(path, key) == [6, 6, 7, 8]
    report = _verify(path, key)
    assert report.ok and not report.findings and report.checkpointed == 8


def test_an_open_log_catches_up_with_witnessed_checkpoints(
    tmp_path: Path, key: Ed25519PrivateKey, coordinator: tuple[AuditLog, Ed25519PrivateKey]
) -> None:
    clog, ckey = coordinator
    path = tmp_path / "bank-a.log"
    with (
        AuditLog.open(path, "bank-a", key, ORIGIN) as first,
        AuditLog.open(path, "bank-a", key, ORIGIN) as second,
    ):
        first.witness(clog.checkpoint(), "coordinator", ckey.public_key())
        with AuditLog.open(
            tmp_path / "fork.log", "coordinator", ckey, "audit.example/coordinator"
        ) as fork:
            fork.append(EventKind.JOB_ACCEPTED, job=JOB, detail=decision_detail("other"))
            forked = fork.checkpoint()
        with pytest.raises(CheckpointError) as exc:
            second.witness(forked, "coordinator", ckey.public_key())
        assert exc.value.problem is CheckpointProblem.SPLIT_VIEW
    assert [e.kind for e in _entries(path)] == [EventKind.CHECKPOINT_WITNESSED, EventKind.ERROR]
    assert _verify(path, key).ok


WORKERS = 4
PER_WORKER = 200
CHECKPOINT_EVERY = 50


def append_from_process(path: str, raw_key: bytes, worker: int, start: Any) -> None:
    """Open the log in this process and append ``PER_WORKER`` entries (spawned by a test)."""
    key = Ed25519PrivateKey.from_private_bytes(raw_key)
    with AuditLog.open(path, "bank-a", key, ORIGIN) as log:
        start.wait(60)  # all open before any appends, so the appends interleave
        for i in range(PER_WORKER):
            if worker == 0 and i % 10 == 0:  # one writer appends in batches of ten
                with log.batch():
                    for j in range(i, i + 10):
                        log.append(EventKind.ERROR, detail=error_detail(f"w{worker}", str(j)))
            elif worker != 0:
                log.append(EventKind.ERROR, detail=error_detail(f"w{worker}", str(i)))
            if (i + 1) % CHECKPOINT_EVERY == 0:
                log.checkpoint()


def test_processes_appending_to_one_log_keep_it_one_valid_chain(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "bank-a.log"
    raw_key = key.private_bytes_raw()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WORKERS)
    processes = [
        context.Process(target=append_from_process, args=(str(path), raw_key, w, start))
        for w in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert [p.exitcode for p in processes] == [0] * WORKERS
    entries = _entries(path)
    assert [e.seq for e in entries] == list(range(WORKERS * PER_WORKER))
    for worker in range(WORKERS):
        mine = [e.detail["message"] for e in entries if e.detail["rule"] == f"w{worker}"]
        assert mine == [str(i) for i in range(PER_WORKER)]  # each once, in its own order
    sizes = _checkpoint_sizes(path, key)
    assert sizes == sorted(sizes) and sizes[-1] == len(entries)
    assert len(sizes) >= WORKERS * PER_WORKER // CHECKPOINT_EVERY
    report = _verify(path, key)
    assert report.ok and not report.findings and report.checkpointed == len(entries)


def test_a_crashed_writers_partial_line_is_cut_off_by_the_next_append(
    log: AuditLog, key: Ed25519PrivateKey
) -> None:
    _fill(log)
    complete = log.path.read_bytes()
    remnant = b'{"detail":{"rule":"never-fin'
    with log.path.open("ab") as f:  # another process died in the middle of its write
        f.write(remnant)
    entry = log.append(EventKind.ERROR, detail=error_detail("after-the-crash"))
    [tail] = log.torn_tails
    assert (tail.path, tail.offset, tail.length) == (log.path, len(complete), len(remnant))
    assert tail.sha256 == hashlib.sha256(remnant).hexdigest()
    assert entry.seq == 6 and log.size == 7
    entries = _entries(log.path)
    assert log.path.read_bytes().startswith(complete) and remnant not in log.path.read_bytes()
    recovery = entries[5]
    assert recovery.kind is EventKind.ERROR and recovery.detail["rule"] == "torn-tail-truncated"
    assert (recovery.detail["offset"], recovery.detail["bytes"]) == (len(complete), len(remnant))
    log.close()
    report = _verify(log.path, key)
    assert report.ok and not report.findings


def test_a_crashed_writers_partial_checkpoint_is_cut_off_by_the_next_checkpoint(
    log: AuditLog, key: Ed25519PrivateKey
) -> None:
    _fill(log)
    log.checkpoint()
    notes_path = checkpoints_path_for(log.path)
    with notes_path.open("ab") as f:
        f.write(b"audit.example/bank-a\n5\n")
    log.checkpoint()
    [tail] = log.torn_tails
    assert tail.path == notes_path
    assert _entries(log.path)[-1].detail["rule"] == "torn-tail-truncated"
    assert read_checkpoints(notes_path).torn_tail is None
    assert _checkpoint_sizes(log.path, key) == [5, 6]
    log.close()
    report = _verify(log.path, key)
    assert report.ok and not report.findings


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda b: b + b'{"seq":5}\n', r"line 6 \(seq 5\) is not a valid entry"),
        (lambda b: b + b.splitlines(keepends=True)[-1], r"line 6 \(seq 5\) carries seq 4"),
        (
            lambda b: b + b.splitlines(keepends=True)[-1].replace(b'"seq":4', b'"seq":5'),
            r"line 6 \(seq 5\) does not chain",
        ),
        (lambda b: b[: b.rindex(b"\n", 0, -1) + 1], "entries were removed"),
    ],
)
def test_tampering_behind_an_open_log_stops_its_writes(
    log: AuditLog, tamper: Any, reason: str
) -> None:
    _fill(log)
    log.checkpoint()
    log.path.write_bytes(tamper(log.path.read_bytes()))
    before = (log.path.read_bytes(), log.checkpoints_path.read_bytes())
    with pytest.raises(AuditLogError, match=reason):
        log.append(EventKind.ERROR, detail=error_detail("after"))
    with pytest.raises(AuditLogError, match=r"altered|removed"):
        log.checkpoint()
    log.close()  # closes without signing
    assert (log.path.read_bytes(), log.checkpoints_path.read_bytes()) == before


def test_a_forged_checkpoint_behind_an_open_log_stops_its_checkpoints(log: AuditLog) -> None:
    _fill(log)
    forged = sign_note(
        Checkpoint(ORIGIN, log.size, log.root).format_body(),
        "bank-a",
        Ed25519PrivateKey.generate(),
    )
    with log.checkpoints_path.open("ab") as f:
        f.write(forged.encode() + b"\n")
    before = (log.path.read_bytes(), log.checkpoints_path.read_bytes())
    with pytest.raises(AuditLogError, match="checkpoint #0"):
        log.checkpoint()
    with pytest.raises(AuditLogError, match="checkpoint #0"):
        log.append(EventKind.ERROR, detail=error_detail("after"))
    log.close()
    assert (log.path.read_bytes(), log.checkpoints_path.read_bytes()) == before


def test_a_forked_child_must_open_the_log_itself(log: AuditLog) -> None:
    log.append(EventKind.ERROR, detail=error_detail("parent"))
    pid = os.fork()
    if pid == 0:  # the child shares the parent's lock: it must not write with this object
        try:
            log.append(EventKind.ERROR, detail=error_detail("child"))
        except AuditLogError:
            os._exit(0)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert log.append(EventKind.ERROR, detail=error_detail("parent")).seq == 1
