"""The auditor's checks, attacked: each tampering is found, naming the party, entry and rule."""

from __future__ import annotations

import base64
import random
import shutil
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedprop.audit.checkpoint import (
    Checkpoint,
    NoteSignature,
    format_note,
    parse_note,
    sign_note,
)
from fedprop.audit.crosscheck import AuditResult, PartyLog, verify_federation
from fedprop.audit.log import (
    AuditLog,
    DetailValue,
    Entry,
    EntryError,
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
from fedprop.audit.merkle import leaf_hash
from fedprop.audit.verify import Finding, LogReport, Rule, Severity, verify_log

COORDINATOR = "coordinator"
NODES = ("bank-a", "bank-b")
PARTIES = (COORDINATOR, *NODES)
JOB = "job-2026-001"
RULE = "bank-marketing-v1"
ROUNDS = 3


def origin(party: str) -> str:
    return f"audit.example/{party}"


class Federation:
    """The parties' log files in one folder, and their keys."""

    def __init__(self, root: Path, keys: Mapping[str, Ed25519PrivateKey]) -> None:
        self.root = root
        self.keys = keys

    def path(self, party: str) -> Path:
        return self.root / f"{party}.log"

    def open(self, party: str) -> AuditLog:
        return AuditLog.open(self.path(party), party, self.keys[party], origin(party))

    def verify(self, parties: tuple[str, ...] = PARTIES) -> AuditResult:
        logs = [PartyLog(p, self.path(p), origin(p)) for p in parties]
        return verify_federation(logs, {p: k.public_key() for p, k in self.keys.items()})

    def verify_one(self, party: str) -> LogReport:
        return verify_log(self.path(party), party, self.keys[party].public_key(), origin(party))

    def lines(self, party: str) -> list[bytes]:
        return self.path(party).read_bytes().split(b"\n")[:-1]

    def write_lines(self, party: str, lines: list[bytes]) -> None:
        self.path(party).write_bytes(b"".join(line + b"\n" for line in lines))

    def seq(self, party: str, kind: EventKind, nth: int = 0, **detail: object) -> int:
        """The seq of the nth entry of ``kind`` whose detail has these values.

        Keyword names stand for detail keys with ``-`` written ``_`` (``message_type``).
        """
        wanted = {key.replace("_", "-"): value for key, value in detail.items()}
        found = [
            e.seq
            for e in map(Entry.from_bytes, self.lines(party))
            if e.kind is kind and all(e.detail.get(k) == v for k, v in wanted.items())
        ]
        return found[nth]

    def notes(self, party: str) -> list[str]:
        return list(read_checkpoints(checkpoints_path_for(self.path(party))).notes)

    def write_notes(self, party: str, notes: list[str]) -> None:
        checkpoints_path_for(self.path(party)).write_text("".join(n + "\n" for n in notes))


def run_job(fed: Federation, *, unlogged: tuple[str, str, int] | None = None) -> None:
    """A small job: the coordinator and each node exchange fit-ins and fit-res each round.

    Checkpoints travel with the messages and are witnessed on receipt. ``unlogged`` =
    (sender, receiver, round): that round's message goes out without a log entry.
    """
    logs = {p: fed.open(p) for p in PARTIES}
    coordinator = logs[COORDINATOR]
    pub = {p: k.public_key() for p, k in fed.keys.items()}

    def send(sender: str, receiver: str, payload: bytes, kind: str, step: str) -> None:
        if unlogged != (sender, receiver, int(step)):
            detail = message_detail(payload, receiver, kind)
            logs[sender].append(EventKind.MESSAGE_SENT, job=JOB, step=step, detail=detail)
        note = logs[sender].checkpoint()
        logs[receiver].witness(note, sender, pub[sender], job=JOB, step=step)
        detail = message_detail(payload, sender, kind)
        logs[receiver].append(EventKind.MESSAGE_RECEIVED, job=JOB, step=step, detail=detail)

    for log in logs.values():
        log.append(EventKind.JOB_ACCEPTED, job=JOB, detail=decision_detail(RULE))
    coordinator.append(
        EventKind.KEY_CEREMONY, job=JOB, detail=key_ceremony_detail("generated", b"job key")
    )
    for r in range(1, ROUNDS + 1):
        step = str(r)
        for node in NODES:
            send(COORDINATOR, node, f"global model {r} for {node}".encode(), "fit-ins", step)
            spend = budget_detail("customer-rows", 0.25, 1e-6, 1.0, 1e-5)
            logs[node].append(EventKind.BUDGET_SPEND, job=JOB, step=step, detail=spend)
            send(node, COORDINATOR, f"update {r} from {node}".encode(), "fit-res", step)
    coordinator.append(EventKind.RELEASE, job=JOB, detail=release_detail("global-model", RULE))
    for log in logs.values():
        log.close()


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return {p: Ed25519PrivateKey.generate() for p in PARTIES}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Ed25519PrivateKey]) -> Path:
    root = tmp_path_factory.mktemp("clean-job")
    run_job(Federation(root, keys))
    return root


@pytest.fixture
def fed(clean: Path, tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> Federation:
    """A fresh copy of the clean job's logs, to attack."""
    shutil.copytree(clean, tmp_path / "logs")
    return Federation(tmp_path / "logs", keys)


def _only(findings: tuple[Finding, ...], rule: Rule) -> Finding:
    matching = [f for f in findings if f.rule is rule]
    assert len(matching) == 1, [str(f) for f in findings]
    return matching[0]


# --- an honest job -------------------------------------------------------------------------


def test_an_honest_job_verifies_without_findings(fed: Federation) -> None:
    result = fed.verify()
    assert result.ok and result.findings == (), result.summary()
    for report in result.logs:
        assert report.entries > 0 and report.checkpointed == report.entries
    assert len(result.entries[COORDINATOR]) == 1 + 1 + ROUNDS * len(NODES) * 3 + 1


# --- editing, deleting, reordering, truncating -------------------------------------------


def test_editing_one_byte_of_any_entry_is_caught_and_names_it(fed: Federation) -> None:
    rng = random.Random(20260301)
    for party in PARTIES:
        original = fed.lines(party)
        for seq, line in enumerate(original):
            offset = rng.randrange(len(line))
            flipped = line[offset] ^ (0x01 if line[offset] != 0x0B else 0x02)
            edited = line[:offset] + bytes([flipped]) + line[offset + 1 :]
            fed.write_lines(party, [*original[:seq], edited, *original[seq + 1 :]])
            report = fed.verify_one(party)
            named = [f for f in report.errors if f.covers(seq)]
            assert named, f"{party} seq {seq} byte {offset}: {report.summary()}"
        fed.write_lines(party, original)


def test_an_edit_that_breaks_an_entry_names_it(fed: Federation) -> None:
    lines = fed.lines("bank-a")
    lines[4] = b"[" + lines[4][1:]
    fed.write_lines("bank-a", lines)
    finding = _only(fed.verify().findings, Rule.ENTRY_MALFORMED)
    assert (finding.party, finding.seq, finding.last_seq) == ("bank-a", 4, 4)


def test_an_edit_that_still_parses_is_named_through_the_chain(fed: Federation) -> None:
    seq = fed.seq("bank-a", EventKind.MESSAGE_SENT, 1)
    lines = fed.lines("bank-a")
    digest = Entry.from_bytes(lines[seq]).detail["sha256"]
    assert isinstance(digest, str)
    forged = ("0" if digest[0] != "0" else "1") + digest[1:]
    lines[seq] = lines[seq].replace(digest.encode(), forged.encode())
    fed.write_lines("bank-a", lines)
    result = fed.verify()
    chain = _only(result.findings, Rule.CHAIN_BROKEN)
    assert (chain.party, chain.seq, chain.last_seq, chain.severity) == (
        "bank-a",
        seq,
        seq,
        Severity.ERROR,
    )
    mismatch = [f for f in result.findings if f.rule is Rule.CHECKPOINT_ROOT_MISMATCH]
    assert mismatch and all(f.covers(seq) for f in mismatch)
    # the edited digest no longer matches the coordinator's record of the message
    received = _only(result.findings, Rule.RECEIVED_NOT_SENT)
    assert (received.party, received.peer) == (COORDINATOR, "bank-a")


def test_an_edit_of_the_last_entry_is_named_by_the_last_checkpoint(fed: Federation) -> None:
    lines = fed.lines(COORDINATOR)
    last = len(lines) - 1
    lines[last] = lines[last].replace(b'"global-model"', b'"global-modes"')
    fed.write_lines(COORDINATOR, lines)
    finding = _only(fed.verify().findings, Rule.CHECKPOINT_ROOT_MISMATCH)
    assert (finding.party, finding.seq, finding.last_seq) == (COORDINATOR, last, last)
    assert finding.checkpoint == len(fed.notes(COORDINATOR)) - 1


def test_a_deleted_entry_is_named(fed: Federation) -> None:
    lines = fed.lines("bank-b")
    del lines[5]
    fed.write_lines("bank-b", lines)
    finding = _only(fed.verify().findings, Rule.SEQ_GAP)
    assert (finding.party, finding.seq, finding.last_seq) == ("bank-b", 5, 5)


def test_reordered_entries_are_named(fed: Federation) -> None:
    lines = fed.lines("bank-b")
    lines[6], lines[7] = lines[7], lines[6]
    fed.write_lines("bank-b", lines)
    result = fed.verify()
    finding = _only(result.findings, Rule.SEQ_OUT_OF_ORDER)
    assert (finding.party, finding.seq) == ("bank-b", 6)
    assert not [f for f in result.findings if f.rule is Rule.SEQ_GAP]


def test_a_truncated_log_is_named_by_its_checkpoint(fed: Federation) -> None:
    lines = fed.lines(COORDINATOR)
    fed.write_lines(COORDINATOR, lines[:-3])
    result = fed.verify()
    finding = _only(result.findings, Rule.CHECKPOINT_BEYOND_LOG)
    assert (finding.party, finding.seq, finding.last_seq) == (
        COORDINATOR,
        len(lines) - 3,
        len(lines) - 1,
    )
    # bank-b's last update is no longer on the coordinator's record
    lost = _only(result.findings, Rule.SENT_NOT_RECEIVED)
    assert (lost.party, lost.peer, lost.severity) == ("bank-b", COORDINATOR, Severity.WARNING)


# --- checkpoints and signatures ----------------------------------------------------------


def test_a_checkpoint_signed_by_another_key_is_named(fed: Federation) -> None:
    notes = fed.notes("bank-a")
    checkpoint, _ = parse_note(notes[1])
    notes[1] = sign_note(checkpoint.format_body(), "bank-a", Ed25519PrivateKey.generate())
    fed.write_notes("bank-a", notes)
    finding = _only(fed.verify().findings, Rule.CHECKPOINT_UNKNOWN_KEY)
    assert (finding.party, finding.checkpoint) == ("bank-a", 1)


def test_a_replaced_checkpoint_of_another_history_is_named(fed: Federation) -> None:
    notes = fed.notes("bank-a")
    checkpoint, _ = parse_note(notes[1])
    other = Checkpoint(checkpoint.origin, checkpoint.size, leaf_hash(b"another history"))
    notes[1] = sign_note(other.format_body(), "bank-a", fed.keys["bank-a"])
    fed.write_notes("bank-a", notes)
    finding = _only(fed.verify().findings, Rule.CHECKPOINT_ROOT_MISMATCH)
    assert (finding.party, finding.checkpoint, finding.seq) == ("bank-a", 1, None)
    assert "checkpoint replaced" in finding.message


def test_a_forged_checkpoint_signature_is_named(fed: Federation) -> None:
    notes = fed.notes("bank-b")
    checkpoint, [sig] = parse_note(notes[0])
    forged = NoteSignature(
        sig.name, sig.key_id, sig.signature[:-1] + bytes([sig.signature[-1] ^ 1])
    )
    notes[0] = format_note(checkpoint, [forged])
    fed.write_notes("bank-b", notes)
    finding = _only(fed.verify().findings, Rule.CHECKPOINT_BAD_SIGNATURE)
    assert (finding.party, finding.checkpoint) == ("bank-b", 0)


def test_a_forged_witnessed_checkpoint_is_named(fed: Federation) -> None:
    body = Checkpoint(origin(COORDINATOR), 1, leaf_hash(b"made up")).format_body()
    fake = parse_note(sign_note(body, COORDINATOR, fed.keys["bank-a"]))[1][0]
    with fed.open("bank-a") as log:
        entry = log.append(
            EventKind.CHECKPOINT_WITNESSED,
            detail={
                "origin": origin(COORDINATOR),
                "size": 1,
                "root": base64.b64encode(leaf_hash(b"made up")).decode(),
                "signer": COORDINATOR,
                "signature": fake.encoded,
            },
        )
    finding = _only(fed.verify().findings, Rule.WITNESSED_INVALID)
    assert (finding.party, finding.seq, finding.peer) == ("bank-a", entry.seq, COORDINATOR)


def test_a_missing_checkpoints_file_is_an_error(fed: Federation) -> None:
    checkpoints_path_for(fed.path("bank-a")).unlink()
    finding = _only(fed.verify().findings, Rule.CHECKPOINTS_MISSING)
    assert (finding.party, finding.seq, finding.last_seq) == ("bank-a", 0, 12)


# --- split views and rollbacks ------------------------------------------------------------


def test_two_histories_of_the_same_size_are_a_split_view(fed: Federation) -> None:
    size = len(fed.lines(COORDINATOR))
    fork_dir = fed.root / "fork"
    fork_dir.mkdir()
    fork = Federation(fork_dir, fed.keys)
    shutil.copy(fed.path(COORDINATOR), fork.path(COORDINATOR))
    shutil.copy(
        checkpoints_path_for(fed.path(COORDINATOR)), checkpoints_path_for(fork.path(COORDINATOR))
    )
    pub = fed.keys[COORDINATOR].public_key()
    with fed.open(COORDINATOR) as real, fork.open(COORDINATOR) as forked:
        real.append(EventKind.ERROR, job=JOB, detail=error_detail("node-timeout", "bank-b"))
        forked.append(EventKind.ERROR, job=JOB, detail=error_detail("all-well"))
        shown_to_a, shown_to_b = real.checkpoint(), forked.checkpoint()
    assert parse_note(shown_to_a)[0].size == parse_note(shown_to_b)[0].size == size + 1
    with fed.open("bank-a") as a, fed.open("bank-b") as b:
        a.witness(shown_to_a, COORDINATOR, pub, job=JOB)
        witnessed = b.size
        b.witness(shown_to_b, COORDINATOR, pub, job=JOB)
    result = fed.verify()
    finding = _only(result.findings, Rule.SPLIT_VIEW)
    assert (finding.party, finding.seq, finding.last_seq) == (COORDINATOR, size, size)
    assert (finding.peer, finding.peer_seq) == ("bank-b", witnessed)
    assert [f.rule for f in result.errors] == [Rule.SPLIT_VIEW]
    # shown the fork instead, the auditor finds the same split view through bank-a
    shutil.copy(fork.path(COORDINATOR), fed.path(COORDINATOR))
    shutil.copy(
        checkpoints_path_for(fork.path(COORDINATOR)), checkpoints_path_for(fed.path(COORDINATOR))
    )
    finding = _only(fed.verify().findings, Rule.SPLIT_VIEW)
    assert (finding.party, finding.seq, finding.peer) == (COORDINATOR, size, "bank-a")


def test_a_rollback_of_both_files_is_caught_by_a_witness(fed: Federation) -> None:
    snapshot = {
        p: p.read_bytes()
        for p in (fed.path(COORDINATOR), checkpoints_path_for(fed.path(COORDINATOR)))
    }
    size = len(fed.lines(COORDINATOR))
    with fed.open(COORDINATOR) as log:
        log.append(EventKind.ERROR, job=JOB, detail=error_detail("late-1"))
        log.append(EventKind.ERROR, job=JOB, detail=error_detail("late-2"))
        note = log.checkpoint()
    with fed.open("bank-a") as a:
        a.witness(note, COORDINATOR, fed.keys[COORDINATOR].public_key())
        witnessed = a.size - 1
    for path, data in snapshot.items():
        path.write_bytes(data)
    assert fed.verify_one(COORDINATOR).findings == ()  # its own files agree with each other
    finding = _only(fed.verify().findings, Rule.ROLLED_BACK)
    assert (finding.party, finding.seq, finding.last_seq) == (COORDINATOR, size, size + 1)
    assert (finding.peer, finding.peer_seq) == ("bank-a", witnessed)


# --- messages ---------------------------------------------------------------------------


def test_a_node_that_sends_a_message_it_did_not_log_is_found(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    fed = Federation(tmp_path, keys)
    run_job(fed, unlogged=("bank-a", COORDINATOR, 2))
    assert fed.verify_one("bank-a").findings == ()  # bank-a's own log is consistent
    received = fed.seq(
        COORDINATOR, EventKind.MESSAGE_RECEIVED, 0, counterparty="bank-a", message_type="fit-res"
    )
    result = fed.verify()
    finding = _only(result.findings, Rule.RECEIVED_NOT_SENT)
    second_round = fed.seq(COORDINATOR, EventKind.MESSAGE_RECEIVED, 1, counterparty="bank-a")
    assert received < second_round
    assert (finding.party, finding.seq, finding.peer) == (COORDINATOR, second_round, "bank-a")
    assert [f.rule for f in result.findings] == [Rule.RECEIVED_NOT_SENT]


def test_a_node_receipt_the_coordinator_never_logged_sending_is_found(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    fed = Federation(tmp_path, keys)
    run_job(fed, unlogged=(COORDINATOR, "bank-a", 1))
    result = fed.verify()
    finding = _only(result.findings, Rule.RECEIVED_NOT_SENT)
    first = fed.seq("bank-a", EventKind.MESSAGE_RECEIVED, 0)
    assert (finding.party, finding.seq, finding.peer) == ("bank-a", first, COORDINATOR)


def test_a_coordinator_that_claims_a_message_never_sent_is_found(fed: Federation) -> None:
    with fed.open(COORDINATOR) as log:
        claimed = log.append(
            EventKind.MESSAGE_RECEIVED,
            job=JOB,
            step="3",
            detail=message_detail(b"an update bank-b never sent", "bank-b", "fit-res"),
        )
    finding = _only(fed.verify().findings, Rule.RECEIVED_NOT_SENT)
    assert (finding.party, finding.seq, finding.peer) == (COORDINATOR, claimed.seq, "bank-b")


def test_a_message_recorded_with_another_size_does_not_match(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    fed = Federation(tmp_path, keys)
    with fed.open("bank-a") as a, fed.open(COORDINATOR) as c:
        payload = b"update"
        a.append(EventKind.MESSAGE_SENT, job=JOB, detail=message_detail(payload, COORDINATOR, "t"))
        detail = message_detail(payload, "bank-a", "t")
        detail["bytes"] = len(payload) + 1
        entry = c.append(EventKind.MESSAGE_RECEIVED, job=JOB, detail=detail)
    result = fed.verify((COORDINATOR, "bank-a"))
    finding = _only(result.errors, Rule.RECEIVED_NOT_SENT)
    assert (finding.party, finding.seq) == (COORDINATOR, entry.seq)
    assert _only(result.warnings, Rule.SENT_NOT_RECEIVED).party == "bank-a"
    assert _only(result.findings, Rule.LOG_MISSING).party == "bank-b"


def test_an_unreadable_log_is_reported_and_not_held_against_its_peers(fed: Federation) -> None:
    fed.path(COORDINATOR).unlink()
    result = fed.verify()
    assert [(f.party, f.rule) for f in result.errors] == [(COORDINATOR, Rule.LOG_UNREADABLE)]


def test_a_counterparty_outside_the_federation_is_reported(fed: Federation) -> None:
    with fed.open("bank-a") as log:
        entry = log.append(
            EventKind.MESSAGE_SENT, job=JOB, detail=message_detail(b"x", "bank-z", "export")
        )
    finding = _only(fed.verify().findings, Rule.COUNTERPARTY_UNKNOWN)
    assert (finding.party, finding.seq, finding.severity) == ("bank-a", entry.seq, Severity.WARNING)


# --- kinds and policy ---------------------------------------------------------------------


def test_an_event_kind_outside_the_closed_list_is_named(fed: Federation) -> None:
    lines = fed.lines("bank-a")
    forged = Entry(
        seq=len(lines),
        time=datetime(2026, 3, 2, tzinfo=UTC),
        party="bank-a",
        job=JOB,
        step=None,
        kind=EventKind.ERROR,
        prev=leaf_hash(lines[-1]).hex(),
        detail=error_detail("x"),
    ).to_bytes()
    fed.write_lines("bank-a", [*lines, forged.replace(b'"kind":"error"', b'"kind":"data-export"')])
    finding = _only(fed.verify().findings, Rule.KIND_UNKNOWN)
    assert (finding.party, finding.seq) == ("bank-a", len(lines))


def _policy_log(fed: Federation, write: Callable[[AuditLog], None]) -> LogReport:
    with fed.open("bank-a") as log:
        write(log)
    return fed.verify_one("bank-a")


def _windowed_spend(
    epsilon: float, spent_at: datetime, period_days: int = 30
) -> dict[str, DetailValue]:
    window = (spent_at - timedelta(days=period_days), spent_at)
    return budget_detail("coordinator c0ffee", epsilon, 0.0, 1.0, 1e-5, window=window)


def test_budget_spends_are_summed_over_the_window_each_was_checked_in(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    march = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def two_windows(log: AuditLog) -> None:
        # 0.6 in March and 0.6 in May: each 30-day window holds 0.6 of 1.0, though the
        # log holds 1.2 in all (a long-lived node's budget renews).
        log.append(EventKind.BUDGET_SPEND, job=JOB, detail=_windowed_spend(0.6, march))
        may = march + timedelta(days=61)
        log.append(EventKind.BUDGET_SPEND, job="job-2", detail=_windowed_spend(0.6, may))

    (tmp_path / "clean").mkdir()
    assert _policy_log(Federation(tmp_path / "clean", keys), two_windows).findings == ()

    def one_window_over(log: AuditLog) -> None:
        log.append(EventKind.ERROR, detail=error_detail("unrelated"))
        log.append(EventKind.BUDGET_SPEND, job=JOB, detail=_windowed_spend(0.6, march))
        later = march + timedelta(days=61)
        log.append(EventKind.BUDGET_SPEND, job="job-2", detail=_windowed_spend(0.3, later))
        # 10 days after that: 0.3 + 0.8 in one window.
        over = later + timedelta(days=10)
        log.append(EventKind.BUDGET_SPEND, job="job-3", detail=_windowed_spend(0.8, over))

    (tmp_path / "over").mkdir()
    report = _policy_log(Federation(tmp_path / "over", keys), one_window_over)
    [finding] = report.findings
    assert (finding.party, finding.seq, finding.rule) == ("bank-a", 3, Rule.BUDGET_EXCEEDED)
    assert finding.severity is Severity.ERROR
    assert "spent epsilon 1.1" in finding.message and "window after 2026-04-11" in finding.message


def test_a_spend_dated_before_one_already_logged_counts_in_its_window(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    may = datetime(2026, 5, 1, tzinfo=UTC)

    def clock_went_back(log: AuditLog) -> None:
        log.append(EventKind.BUDGET_SPEND, job=JOB, detail=_windowed_spend(0.6, may))
        # The node's clock went back a day: the spend logged first still counts, as in
        # the node's ledger (spends dated after a check count too).
        back = may - timedelta(days=1)
        log.append(EventKind.BUDGET_SPEND, job="job-2", detail=_windowed_spend(0.6, back))

    report = _policy_log(Federation(tmp_path, keys), clock_went_back)
    assert [(f.rule, f.seq) for f in report.findings] == [(Rule.BUDGET_EXCEEDED, 1)]


def test_a_budget_window_is_all_there_or_refused(tmp_path: Path) -> None:
    detail = dict(_windowed_spend(0.1, datetime(2026, 3, 1, tzinfo=UTC)))
    del detail["window-start"]
    with pytest.raises(EntryError, match="all of"):
        Entry(0, datetime.now(UTC), "bank-a", JOB, None, EventKind.BUDGET_SPEND, "0" * 64, detail)
    detail["window-start"] = "yesterday"
    with pytest.raises(EntryError, match="'window-start'"):
        Entry(0, datetime.now(UTC), "bank-a", JOB, None, EventKind.BUDGET_SPEND, "0" * 64, detail)


def test_a_release_needs_an_acceptance_before_it(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    def write(log: AuditLog) -> None:
        log.append(EventKind.RELEASE, job="job-1", detail=release_detail("model", RULE))
        log.append(EventKind.JOB_ACCEPTED, job="job-1", detail=decision_detail(RULE))
        log.append(EventKind.RELEASE, job="job-1", detail=release_detail("model", RULE))
        log.append(EventKind.JOB_REFUSED, job="job-2", detail=decision_detail("no-consent"))
        log.append(EventKind.RELEASE, job="job-2", detail=release_detail("scores", RULE))
        log.append(EventKind.RELEASE, job="job-3", detail=release_detail("model", RULE))

    report = _policy_log(Federation(tmp_path, keys), write)
    named = [(f.rule, f.seq) for f in report.findings]
    assert named == [
        (Rule.RELEASE_NOT_ALLOWED, 0),
        (Rule.RELEASE_NOT_ALLOWED, 4),
        (Rule.RELEASE_NOT_ALLOWED, 5),
    ]
    assert "refused it" in report.findings[1].message


def test_budget_spends_stay_within_the_limit(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    def write(log: AuditLog) -> None:
        for _ in range(4):  # 4 x 0.25 is exactly the limit
            log.append(
                EventKind.BUDGET_SPEND, job=JOB, detail=budget_detail("rows", 0.25, 0, 1.0, 1e-5)
            )
        log.append(
            EventKind.BUDGET_SPEND, job=JOB, detail=budget_detail("rows", 0.01, 0, 1.0, 1e-5)
        )
        log.append(EventKind.BUDGET_SPEND, job=JOB, detail=budget_detail("other", 0, 2e-5, 9, 1e-5))
        log.append(EventKind.BUDGET_SPEND, job=JOB, detail=budget_detail("other", 0, 0, 9, 1e-3))

    report = _policy_log(Federation(tmp_path, keys), write)
    named = [(f.rule, f.seq) for f in report.findings]
    assert named == [
        (Rule.BUDGET_EXCEEDED, 4),
        (Rule.BUDGET_EXCEEDED, 5),
        (Rule.BUDGET_EXCEEDED, 6),
        (Rule.BUDGET_LIMIT_CHANGED, 6),
    ]


# --- the result -------------------------------------------------------------------------------


def test_findings_are_sorted_and_name_party_entry_and_rule(fed: Federation) -> None:
    lines = fed.lines("bank-b")
    del lines[3]
    fed.write_lines("bank-b", lines)
    lines = fed.lines("bank-a")
    lines[2] = b"not json"
    fed.write_lines("bank-a", lines)
    result = fed.verify()
    assert not result.ok
    assert list(result.findings) == sorted(result.findings, key=Finding.sort_key)
    assert result.findings[0].party == "bank-a"
    for finding in result.errors:
        assert finding.party in PARTIES and isinstance(finding.rule, Rule)
        assert finding.seq is not None or finding.checkpoint is not None
        assert finding.party in str(finding) and finding.rule.value in str(finding)
    assert "audit FAILED" in result.summary()


def test_a_log_without_a_key_is_refused(fed: Federation) -> None:
    with pytest.raises(ValueError, match="no public key"):
        verify_federation([PartyLog("bank-z", fed.path("bank-a"), origin("bank-a"))], {})
    log = PartyLog("bank-a", fed.path("bank-a"), origin("bank-a"))
    with pytest.raises(ValueError, match="two logs"):
        verify_federation([log, log], {"bank-a": fed.keys["bank-a"].public_key()})
