"""The auditor's report: what was sent to whom, under which rule, budgets and findings."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedprop.audit.crosscheck import AuditResult, PartyLog, verify_federation
from fedprop.audit.log import (
    AuditLog,
    EventKind,
    budget_detail,
    decision_detail,
    message_detail,
    release_detail,
)
from fedprop.audit.report import (
    HTML_FILE,
    JSON_FILE,
    REPORT_FORMAT,
    build_report,
    render_html,
    write_report,
)

JOB = "job-7"
HOSTILE = '<script>alert("x")</script>'
UPDATE = b"encrypted update" * 10


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> AuditResult:
    """A coordinator and one bank; the coordinator also claims a message never sent."""
    root = tmp_path_factory.mktemp("report")
    keys = {p: Ed25519PrivateKey.generate() for p in ("coordinator", "bank-a")}
    logs = {
        p: AuditLog.open(root / f"{p}.log", p, k, f"audit.example/{p}") for p, k in keys.items()
    }
    bank, coordinator = logs["bank-a"], logs["coordinator"]
    for log in logs.values():
        log.append(EventKind.JOB_ACCEPTED, job=JOB, detail=decision_detail("campaign-2026"))
    for step, payload in (("1", b"model one"), ("2", b"model two")):
        coordinator.append(
            EventKind.MESSAGE_SENT,
            job=JOB,
            step=step,
            detail=message_detail(payload, "bank-a", "fit-ins"),
        )
        bank.append(
            EventKind.MESSAGE_RECEIVED,
            job=JOB,
            step=step,
            detail=message_detail(payload, "coordinator", "fit-ins"),
        )
        bank.append(
            EventKind.BUDGET_SPEND,
            job=JOB,
            step=step,
            detail=budget_detail("rows", 0.4, 1e-6, 1, 1e-5),
        )
    bank.append(
        EventKind.MESSAGE_SENT,
        job=JOB,
        step="2",
        detail=message_detail(UPDATE, "coordinator", HOSTILE),
    )
    coordinator.append(
        EventKind.MESSAGE_RECEIVED,
        job=JOB,
        step="2",
        detail=message_detail(UPDATE, "bank-a", HOSTILE),
    )
    coordinator.append(
        EventKind.MESSAGE_RECEIVED,
        job=JOB,
        step="2",
        detail=message_detail(b"never sent", "bank-a", "fit-res"),
    )
    coordinator.append(
        EventKind.RELEASE, job=JOB, detail=release_detail("global-model", "campaign-2026")
    )
    for log in logs.values():
        log.close()
    return verify_federation(
        [PartyLog(p, root / f"{p}.log", f"audit.example/{p}") for p in keys],
        {p: k.public_key() for p, k in keys.items()},
    )


def test_the_report_lists_each_partys_messages_with_their_rule(result: AuditResult) -> None:
    report = build_report(result)
    assert report["format"] == REPORT_FORMAT and report["verdict"] == "fail"
    [job] = report["jobs"]
    assert job["job"] == JOB
    by_party = {p["party"]: p for p in job["parties"]}
    bank = by_party["bank-a"]
    assert bank["decisions"] == [
        {
            "seq": 0,
            "step": None,
            "flagged": False,
            "decision": "job-accepted",
            "rule": "campaign-2026",
        }
    ]
    assert bank["sent"] == {"messages": 1, "bytes": len(UPDATE)}
    assert bank["received"] == {"messages": 2, "bytes": len(b"model one") + len(b"model two")}
    sent = [m for m in bank["messages"] if m["direction"] == "sent"]
    assert sent == [
        {
            "seq": 5,
            "step": "2",
            "flagged": False,
            "direction": "sent",
            "counterparty": "coordinator",
            "message_type": HOSTILE,
            "bytes": len(UPDATE),
            "sha256": hashlib.sha256(UPDATE).hexdigest(),
            "rule": "campaign-2026",
        }
    ]
    coordinator = by_party["coordinator"]
    assert coordinator["releases"] == [
        {"seq": 5, "step": None, "flagged": False, "what": "global-model", "rule": "campaign-2026"}
    ]
    flagged = [m["seq"] for m in coordinator["messages"] if m["flagged"]]
    assert flagged == [4]  # the message the coordinator claims, which bank-a never sent


def test_the_report_adds_up_budgets_and_lists_findings(result: AuditResult) -> None:
    report = build_report(result)
    [budget] = report["budgets"]
    assert (budget["party"], budget["budget"], budget["spends"]) == ("bank-a", "rows", 2)
    assert budget["epsilon"] == pytest.approx(0.8) and budget["delta"] == pytest.approx(2e-6)
    assert (budget["limit_epsilon"], budget["limit_delta"]) == (1, 1e-5)
    assert report["totals"] == {"parties": 2, "entries": 12, "errors": 1, "warnings": 0}
    [finding] = report["findings"]
    assert (finding["party"], finding["seq"], finding["rule"], finding["peer"]) == (
        "coordinator",
        4,
        "received-not-sent",
        "bank-a",
    )
    assert json.loads(json.dumps(report)) == report


def test_the_html_page_is_self_contained_and_escaped(result: AuditResult) -> None:
    page = render_html(build_report(result))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "received-not-sent" in page and "FAIL" in page and "campaign-2026" in page
    assert "http://" not in page and "https://" not in page
    assert hashlib.sha256(UPDATE).hexdigest() in page


def test_write_report_writes_json_and_html(result: AuditResult, tmp_path: Path) -> None:
    json_path, html_path = write_report(result, tmp_path / "out")
    assert (json_path.name, html_path.name) == (JSON_FILE, HTML_FILE)
    assert json.loads(json_path.read_text()) == build_report(result)
    assert html_path.read_text() == render_html(build_report(result))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([JSON_FILE, HTML_FILE])


def test_the_report_shows_the_most_spent_in_one_window_beside_the_whole_log(
    tmp_path: Path,
) -> None:
    # A node whose budget renews every 30 days: 0.6 in March, 0.3 and then 0.5 in May.
    # The whole log holds 1.4 against a limit of 1.0, yet no window holds more than 0.8.
    key = Ed25519PrivateKey.generate()
    march = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    with AuditLog.open(tmp_path / "bank-a.log", "bank-a", key, "audit.example/bank-a") as log:
        for job, epsilon, at in (
            ("job-1", 0.6, march),
            ("job-2", 0.3, march + timedelta(days=61)),
            ("job-3", 0.5, march + timedelta(days=71)),
        ):
            window = (at - timedelta(days=30), at)
            detail = budget_detail("rows", epsilon, 0.0, 1.0, 1e-5, window=window)
            log.append(EventKind.BUDGET_SPEND, job=job, detail=detail)
    result = verify_federation(
        [PartyLog("bank-a", tmp_path / "bank-a.log", "audit.example/bank-a")],
        {"bank-a": key.public_key()},
    )
    assert result.ok
    [budget] = build_report(result)["budgets"]
    assert budget["epsilon"] == pytest.approx(1.4) and budget["spends"] == 3
    assert budget["window_epsilon"] == pytest.approx(0.8) and budget["limit_epsilon"] == 1.0
    html = render_html(build_report(result))
    assert "epsilon in one window (most)" in html and '<td class="num">0.8</td>' in html
