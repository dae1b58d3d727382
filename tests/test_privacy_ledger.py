"""The budget ledger: spends are refused before they exceed a coordinator's budget, composed
properly, kept per coordinator and period, and the file survives a crash mid-append and
refuses to work once edited."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedprop.privacy import ledger as ledger_module
from fedprop.privacy.ledger import (
    BudgetExceededError,
    BudgetLedger,
    LedgerError,
    Mechanism,
    MechanismKind,
    Spend,
    pld_available,
)
from fedprop.privacy.policy import DpBudget

COORDINATOR = "c" * 64
OTHER = "d" * 64
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BUDGET = DpBudget(
    period_days=30, epsilon=3.0, delta=1e-6, max_query_epsilon=1.0, max_query_delta=1e-7
)


def query_spend(query_id: str, epsilon: float = 1.0, coordinator: str = COORDINATOR) -> Spend:
    """A query's spend as the analytics protocol states it: two discrete Laplace vectors."""
    scale = 2 / epsilon
    return Spend(
        coordinator=coordinator,
        query_id=query_id,
        epsilon=epsilon,
        delta=1e-7,
        mechanisms=(
            Mechanism(MechanismKind.DISCRETE_LAPLACE, scale),
            Mechanism(MechanismKind.DISCRETE_LAPLACE, scale),
        ),
        extra_delta=1e-7,
        digest="ab" * 32,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> BudgetLedger:
    return BudgetLedger(tmp_path / "node" / "budget.jsonl", BUDGET)


def test_the_budget_runs_out_and_the_refusal_comes_before_any_record(ledger: BudgetLedger) -> None:
    for i in range(3):
        decision = ledger.check(query_spend(f"q{i}"), at=START)
        assert decision.allowed, decision.reason
        ledger.record(query_spend(f"q{i}"), at=START + timedelta(minutes=i))
    size = ledger.path.stat().st_size
    decision = ledger.check(query_spend("q3"), at=START + timedelta(hours=1))
    assert not decision.allowed
    assert "budget is epsilon 3" in decision.reason
    assert decision.after.epsilon > 3
    with pytest.raises(BudgetExceededError, match="privacy budget"):
        decision.raise_if_refused()
    with pytest.raises(BudgetExceededError):
        ledger.record(query_spend("q3"), at=START + timedelta(hours=1))
    assert ledger.path.stat().st_size == size  # nothing written for a refused spend
    # a smaller query still fits in what is left
    assert not ledger.check(query_spend("q4", epsilon=0.5), at=START + timedelta(hours=1)).allowed
    assert ledger.spent(COORDINATOR, at=START + timedelta(hours=1)).epsilon == pytest.approx(
        3, 1e-4
    )


def test_budgets_are_per_coordinator(ledger: BudgetLedger) -> None:
    for i in range(3):
        ledger.record(query_spend(f"q{i}"), at=START)
    assert not ledger.check(query_spend("q9"), at=START).allowed
    assert ledger.check(query_spend("q9", coordinator=OTHER), at=START).allowed
    assert ledger.spent(OTHER, at=START).epsilon == 0


def test_a_query_id_is_spent_once(ledger: BudgetLedger) -> None:
    ledger.record(query_spend("q1"), at=START)
    decision = ledger.check(query_spend("q1"), at=START)
    assert not decision.allowed
    assert "already run" in decision.reason
    with pytest.raises(BudgetExceededError, match="already run"):
        ledger.record(query_spend("q1"), at=START)


def test_spends_age_out_after_the_period_and_a_clock_going_back_frees_nothing(
    ledger: BudgetLedger,
) -> None:
    for i in range(3):
        ledger.record(query_spend(f"q{i}"), at=START)
    assert not ledger.check(query_spend("late"), at=START + timedelta(days=29)).allowed
    later = START + timedelta(days=30, seconds=1)
    assert ledger.check(query_spend("late"), at=later).allowed
    assert ledger.spent(COORDINATOR, at=later).spends == 0
    # spends dated after the time of a check (a clock set back) still count
    assert not ledger.check(query_spend("early"), at=START - timedelta(days=3)).allowed


def test_composition_uses_privacy_loss_distributions_when_available(tmp_path: Path) -> None:
    """Gaussian releases compose far better than the sum of their epsilons: with PLDs the
    ledger allows what basic composition would refuse, and says which it used."""
    if not pld_available():
        pytest.skip("dp-accounting is not installed: the ledger uses basic composition")
    budget = DpBudget(30, 5.0, 1e-6, 1.0, 1e-8)
    pld = BudgetLedger(tmp_path / "pld.jsonl", budget)
    basic = BudgetLedger(tmp_path / "basic.jsonl", budget, use_pld=False)
    assert (pld.method, basic.method) == ("pld", "basic")

    def gaussian(i: int) -> Spend:
        # noise multiplier 10: about (0.6, 1e-8)-DP on its own
        return Spend(
            coordinator=COORDINATOR,
            query_id=f"g{i}",
            epsilon=0.7,
            delta=1e-8,
            mechanisms=(Mechanism(MechanismKind.GAUSSIAN, 10.0),),
            what="dp-sgd",
        )

    for i in range(12):
        pld.record(gaussian(i), at=START)
    spent = pld.spent(COORDINATOR, at=START)
    assert spent.method == "pld"
    assert spent.epsilon < 5.0 < 12 * 0.7  # basic composition would say 8.4
    for i in range(7):
        basic.record(gaussian(i), at=START)
    assert not basic.check(gaussian(7), at=START).allowed  # 8 * 0.7 > 5


def test_without_dp_accounting_basic_composition_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "_dp_accounting", lambda: None)
    ledger = BudgetLedger(tmp_path / "budget.jsonl", BUDGET)
    assert ledger.method == "basic"
    for i in range(3):
        ledger.record(query_spend(f"q{i}"), at=START)
    spent = ledger.spent(COORDINATOR, at=START)
    assert (spent.method, spent.epsilon, spent.delta) == ("basic", 3.0, pytest.approx(3e-7))
    assert not ledger.check(query_spend("q3"), at=START).allowed


def test_summary_lists_who_spent_what_when(ledger: BudgetLedger) -> None:
    ledger.record(query_spend("q1", 0.5), at=START)
    ledger.record(query_spend("q2", 1.0), at=START + timedelta(hours=2))
    ledger.record(query_spend("q3", 0.5, coordinator=OTHER), at=START + timedelta(hours=3))
    ledger.record_release(COORDINATOR, "q1", "ab" * 32, at=START + timedelta(minutes=5))
    rows = ledger.summary(at=START + timedelta(days=1))
    assert [(r.coordinator, r.query_id, r.epsilon) for r in rows] == [
        (COORDINATOR, "q1", 0.5),
        (COORDINATOR, "q2", 1.0),
        (OTHER, "q3", 0.5),
    ]
    assert rows[0].at == START and rows[0].released_at == START + timedelta(minutes=5)
    assert rows[1].released_at is None
    assert rows[0].cumulative_epsilon == pytest.approx(0.5, 1e-4)
    assert rows[1].cumulative_epsilon == pytest.approx(1.5, 1e-4)
    assert rows[2].cumulative_epsilon == pytest.approx(0.5, 1e-4)
    assert all(r.in_window for r in rows)
    assert not any(r.in_window for r in ledger.summary(at=START + timedelta(days=31)))
    totals = {t.coordinator: t.spent.epsilon for t in ledger.totals(at=START + timedelta(days=1))}
    assert totals == {COORDINATOR: pytest.approx(1.5, 1e-4), OTHER: pytest.approx(0.5, 1e-4)}


def test_an_answer_is_released_once_and_only_after_its_spend(ledger: BudgetLedger) -> None:
    with pytest.raises(LedgerError, match="no recorded spend"):
        ledger.record_release(COORDINATOR, "q1", "ab" * 32)
    ledger.record(query_spend("q1"))
    with pytest.raises(LedgerError, match="other query text"):
        ledger.record_release(COORDINATOR, "q1", "cd" * 32)
    ledger.record_release(COORDINATOR, "q1", "ab" * 32)
    assert ledger.released(COORDINATOR, "q1")
    with pytest.raises(LedgerError, match="already released"):
        ledger.record_release(COORDINATOR, "q1", "ab" * 32)


def test_a_torn_last_line_is_ignored_then_cut_off(ledger: BudgetLedger) -> None:
    ledger.record(query_spend("q1"), at=START)
    intact = ledger.path.read_bytes()
    with ledger.path.open("ab") as f:  # a crash in the middle of an append
        f.write(b'{"v":1,"kind":"spend","at":"2026-03-01T12:00')
    assert [e.query_id for e in ledger.entries()] == ["q1"]
    assert ledger.check(query_spend("q2"), at=START).allowed
    ledger.record(query_spend("q2"), at=START)
    data = ledger.path.read_bytes()
    assert data.startswith(intact) and data.count(b"\n") == 2
    assert [e.query_id for e in ledger.entries()] == ["q1", "q2"]


@pytest.mark.parametrize("damage", ["edit", "delete", "garbage"])
def test_a_damaged_ledger_fails_closed(ledger: BudgetLedger, damage: str) -> None:
    for i in range(3):
        ledger.record(query_spend(f"q{i}"), at=START)
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    if damage == "edit":  # lower a recorded epsilon to free budget
        record = json.loads(lines[1])
        record["epsilon"] = 0.01
        lines[1] = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
    elif damage == "delete":
        del lines[1]
    else:
        lines[1] = b"not json\n"
    ledger.path.write_bytes(b"".join(lines))
    with pytest.raises(LedgerError, match="line 2"):
        ledger.check(query_spend("q9"), at=START)
    with pytest.raises(LedgerError):
        ledger.record(query_spend("q9"), at=START)


def test_two_checks_at_once_cannot_both_take_the_last_of_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "budget.jsonl"
    first, second = BudgetLedger(path, BUDGET), BudgetLedger(path, BUDGET)
    first.record(query_spend("q0"), at=START)
    first.record(query_spend("q1"), at=START)
    assert first.check(query_spend("a"), at=START).allowed
    assert second.check(query_spend("b"), at=START).allowed  # both see room for one more
    first.record(query_spend("a"), at=START)
    with pytest.raises(BudgetExceededError):
        second.record(query_spend("b"), at=START)  # re-checked under the file lock


def test_the_file_is_private_to_the_node(ledger: BudgetLedger) -> None:
    ledger.record(query_spend("q1"))
    assert stat.S_IMODE(os.stat(ledger.path).st_mode) == 0o600


@pytest.mark.parametrize(
    "changes",
    [
        {"coordinator": "not-a-fingerprint"},
        {"query_id": "bad id"},
        {"epsilon": 0.0},
        {"epsilon": float("nan")},
        {"delta": 1.0},
        {"extra_delta": 1e-6},  # more than the delta
        {"epsilon": 0.5},  # less than the mechanisms spend (1.0)
        {"digest": "xyz"},
    ],
)
def test_malformed_spends_are_refused(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "coordinator": COORDINATOR,
        "query_id": "q1",
        "epsilon": 1.0,
        "delta": 1e-7,
        "mechanisms": query_spend("q1").mechanisms,
        "extra_delta": 1e-7,
        **changes,
    }
    with pytest.raises(LedgerError):
        Spend(**fields)  # type: ignore[arg-type]


def test_mechanisms_are_checked() -> None:
    with pytest.raises(LedgerError):
        Mechanism(MechanismKind.DISCRETE_LAPLACE, 0.0)
    with pytest.raises(LedgerError):
        Mechanism("exponential", 1.0)  # type: ignore[arg-type]
    with pytest.raises(LedgerError):
        Mechanism(MechanismKind.GAUSSIAN, 1.0, sensitivity=2)
    assert Mechanism(MechanismKind.DISCRETE_LAPLACE, 4.0, sensitivity=2).pure_epsilon == 0.5
    assert Mechanism(MechanismKind.LAPLACE, 2.0, count=3).pure_epsilon == 1.5
    assert Mechanism(MechanismKind.GAUSSIAN, 2.0).pure_epsilon is None


def test_naive_times_are_refused(ledger: BudgetLedger) -> None:
    with pytest.raises(LedgerError, match="timezone"):
        ledger.check(query_spend("q1"), at=datetime(2026, 3, 1, 12, 0))


def test_fedprop_node_budget_lists_each_spend_and_the_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedprop.cli import main
    from fedprop.privacy import load_policy

    policy_file = Path(__file__).resolve().parents[1] / "node" / "policy.example.toml"
    budget = load_policy(policy_file).dp
    assert budget is not None
    ledger = BudgetLedger(tmp_path / "budget.jsonl", budget)
    ledger.record(query_spend("rate-by-age", epsilon=0.25))
    ledger.record(query_spend("count-by-job", epsilon=0.5))
    code = main(
        ["node", "budget", "--ledger", str(tmp_path / "budget.jsonl"), "--policy", str(policy_file)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "2 spend(s)" in out and "rate-by-age" in out and "count-by-job" in out
    assert f"spent epsilon {ledger.totals()[0].spent.epsilon:.4g} of 3" in out


def test_a_node_that_spends_its_budget_every_period_audits_clean(
    tmp_path: Path, ledger: BudgetLedger
) -> None:
    """The node's log states the window each spend was checked in, so the auditor sums
    windows as the ledger does: three periods, each spent in full, raise no finding (the
    log as a whole holds three budgets' worth)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedprop.apps.audit import _noting
    from fedprop.apps.client_app import _note_spend
    from fedprop.audit import AuditLog, verify_log

    key = Ed25519PrivateKey.generate()
    path = tmp_path / "bank-a.log"
    with AuditLog.open(path, "bank-a", key, "fedprop/pilot/bank-a") as log:
        for period in range(3):
            for i in range(3):
                spend = query_spend(f"q{period}-{i}")
                at = START + timedelta(days=31 * period, minutes=i)
                decision = ledger.check(spend, at=at)
                decision.raise_if_refused()
                assert (decision.window_start, decision.at) == (at - BUDGET.period, at)
                ledger.record(spend, at=decision.at)
                with _noting() as noted:
                    _note_spend(decision)
                for kind, detail in noted:
                    log.append(kind, job=spend.query_id, detail=detail)
        assert not ledger.check(query_spend("one-more"), at=at).allowed
    report = verify_log(path, "bank-a", key.public_key(), "fedprop/pilot/bank-a")
    assert report.ok and report.findings == ()
