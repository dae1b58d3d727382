"""The auditor's report of a federation's privacy logs: JSON for tools, HTML for people.

:func:`build_report` turns an :class:`~fedprop.audit.crosscheck.AuditResult` into a
JSON-ready dictionary:

``format``, ``verdict`` (``"pass"`` when no finding is an error, else ``"fail"``),
``totals``
    the report's version, the verdict, and counts of parties, entries, errors, warnings;
``parties``
    one row per log: origin, entries, checkpoints, entries covered by a matching
    checkpoint, errors and warnings;
``jobs``
    per job, per party: the policy decisions (``job-accepted``/``job-refused`` and their
    rule), every message sent or received (step, counterparty, message type, bytes,
    SHA-256, and the rule of the acceptance it was sent under, ``null`` when there was
    none), message and byte totals each way, releases (what, rule), budget spends and key
    ceremonies, and whether a finding names the entry (``flagged``);
``budgets``
    per party and budget: epsilon and delta spent over the whole log, the most spent in
    one window of the budget's rolling period (what the limit applies to), the limits,
    the number of spends;
``findings``
    every finding (:meth:`~fedprop.audit.verify.Finding.to_dict`), in report order.

:func:`render_html` renders that dictionary as one self-contained page (inline CSS, no
script, nothing fetched); every piece of text from the logs is HTML-escaped.
:func:`write_report` writes both files atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from fedprop.audit.crosscheck import AuditResult
from fedprop.audit.log import DetailKey, Entry, EventKind
from fedprop.audit.verify import BudgetSpends
from fedprop.files import write_text_atomic

__all__ = ["HTML_FILE", "JSON_FILE", "REPORT_FORMAT", "build_report", "render_html", "write_report"]

#: Version tag of the JSON report.
REPORT_FORMAT = "fedprop-audit-report/1"
#: File names :func:`write_report` writes.
JSON_FILE = "audit-report.json"
HTML_FILE = "audit-report.html"

_DIRECTIONS = {EventKind.MESSAGE_SENT: "sent", EventKind.MESSAGE_RECEIVED: "received"}


def _party_job(entries: Sequence[Entry], flagged: set[int]) -> dict[str, dict[str, Any]]:
    """One party's record of each job it took part in, keyed by job."""
    jobs: dict[str, dict[str, Any]] = {}
    rule_of: dict[str, str | None] = {}
    for e in entries:
        if e.job is None:
            continue
        job = jobs.setdefault(
            e.job,
            {
                "decisions": [],
                "messages": [],
                "sent": {"messages": 0, "bytes": 0},
                "received": {"messages": 0, "bytes": 0},
                "releases": [],
                "budget_spends": [],
                "key_ceremonies": [],
                "errors": [],
            },
        )
        d = e.detail
        row: dict[str, Any] = {"seq": e.seq, "step": e.step, "flagged": e.seq in flagged}
        if e.kind in (EventKind.JOB_ACCEPTED, EventKind.JOB_REFUSED):
            rule = str(d[DetailKey.RULE])
            rule_of[e.job] = rule if e.kind is EventKind.JOB_ACCEPTED else None
            job["decisions"].append({**row, "decision": e.kind.value, "rule": rule})
        elif e.kind in _DIRECTIONS:
            direction = _DIRECTIONS[e.kind]
            size = d[DetailKey.BYTES]
            job["messages"].append(
                {
                    **row,
                    "direction": direction,
                    "counterparty": d[DetailKey.COUNTERPARTY],
                    "message_type": d[DetailKey.MESSAGE_TYPE],
                    "bytes": size,
                    "sha256": d[DetailKey.SHA256],
                    "rule": rule_of.get(e.job),
                }
            )
            job[direction]["messages"] += 1
            job[direction]["bytes"] += size
        elif e.kind is EventKind.RELEASE:
            job["releases"].append({**row, "what": d[DetailKey.WHAT], "rule": d[DetailKey.RULE]})
        elif e.kind is EventKind.BUDGET_SPEND:
            job["budget_spends"].append(
                {
                    **row,
                    "budget": d[DetailKey.BUDGET],
                    "epsilon": d[DetailKey.EPSILON],
                    "delta": d[DetailKey.DELTA],
                    "limit_epsilon": d[DetailKey.LIMIT_EPSILON],
                    "limit_delta": d[DetailKey.LIMIT_DELTA],
                }
            )
        elif e.kind is EventKind.KEY_CEREMONY:
            job["key_ceremonies"].append(
                {**row, "action": d[DetailKey.ACTION], "key_sha256": d[DetailKey.KEY_SHA256]}
            )
        elif e.kind is EventKind.ERROR:
            job["errors"].append(
                {**row, "rule": d[DetailKey.RULE], "message": d.get(DetailKey.MESSAGE, "")}
            )
    return jobs


def _budgets(party: str, entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Per budget: every spend added up, and the most spent in one window (what the
    limit applies to, as :class:`~fedprop.audit.verify.BudgetSpends` counts it)."""
    spends: dict[str, BudgetSpends] = {}
    peaks: dict[str, tuple[float, float]] = {}
    for seq, e in enumerate(entries):
        if e.kind is not EventKind.BUDGET_SPEND:
            continue
        name = str(e.detail[DetailKey.BUDGET])
        if name not in spends:
            spends[name] = BudgetSpends.of(e, seq)
        budget = spends[name]
        epsilon, delta, _, _ = budget.spend(e)
        peak = peaks.get(name, (0.0, 0.0))
        peaks[name] = (max(peak[0], epsilon), max(peak[1], delta))
    rows = []
    for name in sorted(spends):
        budget = spends[name]
        epsilon, delta = budget.total
        rows.append(
            {
                "party": party,
                "budget": name,
                "epsilon": epsilon,
                "delta": delta,
                "window_epsilon": peaks[name][0],
                "window_delta": peaks[name][1],
                "limit_epsilon": budget.limit_epsilon,
                "limit_delta": budget.limit_delta,
                "spends": len(budget.times),
            }
        )
    return rows


def build_report(result: AuditResult) -> dict[str, Any]:
    """The JSON-ready report of ``result`` (see the module docstring for its keys)."""
    flagged: dict[str, set[int]] = {}
    for f in result.findings:
        if f.seq is not None and f.last_seq == f.seq:
            flagged.setdefault(f.party, set()).add(f.seq)
    jobs: dict[str, list[dict[str, Any]]] = {}
    budgets: list[dict[str, Any]] = []
    for party in sorted(result.entries):
        entries = result.entries[party]
        for job, record in _party_job(entries, flagged.get(party, set())).items():
            jobs.setdefault(job, []).append({"party": party, **record})
        budgets += _budgets(party, entries)
    parties = [
        {
            "party": r.party,
            "origin": r.origin,
            "entries": r.entries,
            "checkpoints": r.checkpoints,
            "checkpointed": r.checkpointed,
            "errors": sum(1 for f in result.errors if f.party == r.party),
            "warnings": sum(1 for f in result.warnings if f.party == r.party),
        }
        for r in result.logs
    ]
    return {
        "format": REPORT_FORMAT,
        "verdict": "pass" if result.ok else "fail",
        "totals": {
            "parties": len(result.logs),
            "entries": sum(r.entries for r in result.logs),
            "errors": len(result.errors),
            "warnings": len(result.warnings),
        },
        "parties": parties,
        "jobs": [{"job": job, "parties": jobs[job]} for job in sorted(jobs)],
        "budgets": budgets,
        "findings": [f.to_dict() for f in result.findings],
    }


# --- HTML --------------------------------------------------------------------------------

_CSS = """
:root { --ink: #1d2430; --muted: #5f6b73; --line: #d9dde3; --pass: #1a7f37;
        --fail: #c62828; --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6f8; color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 32px 40px; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 8px; }
h2 { font-size: 1.2rem; margin: 32px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 1rem; margin: 20px 0 6px; }
table { border-collapse: collapse; width: 100%; font-size: 0.88rem; margin-bottom: 10px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-size: 0.8rem; word-break: break-all; }
tr.flagged td { background: #fdecea; }
.verdict.pass { color: var(--pass); font-weight: 700; }
.verdict.fail { color: var(--fail); font-weight: 700; }
.severity.error { color: var(--fail); font-weight: 600; }
.severity.warning { color: var(--warn); font-weight: 600; }
.muted { color: var(--muted); }
details summary { cursor: pointer; color: #1f6fb4; margin: 6px 0; }
"""


def _cell(value: Any, *, num: bool = False) -> str:
    text = "—" if value is None else str(value)
    cls = ' class="num"' if num else ""
    return f"<td{cls}>{escape(text)}</td>"


def _table(head: Sequence[str], rows: Sequence[str]) -> str:
    if not rows:
        return '<p class="muted">None.</p>'
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(cells: Sequence[str], flagged: bool = False) -> str:
    cls = ' class="flagged"' if flagged else ""
    return f"<tr{cls}>{''.join(cells)}</tr>"


def _findings_html(findings: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for f in findings:
        seq, last = f["seq"], f["last_seq"]
        where = "—" if seq is None else (str(seq) if last in (None, seq) else f"{seq}..{last}")
        peer = f["peer"] if f["peer_seq"] is None else f"{f['peer']} seq {f['peer_seq']}"
        severity = escape(str(f["severity"]))
        rows.append(
            _row(
                [
                    f'<td class="severity {severity}">{severity}</td>',
                    _cell(f["party"]),
                    _cell(where, num=True),
                    _cell(f["checkpoint"], num=True),
                    f"<td><code>{escape(str(f['rule']))}</code></td>",
                    _cell(peer),
                    _cell(f["message"]),
                ]
            )
        )
    return _table(["severity", "party", "seq", "checkpoint", "rule", "against", "finding"], rows)


def _party_html(record: Mapping[str, Any]) -> str:
    parts = [f"<h3>{escape(str(record['party']))}</h3>"]
    decisions = [
        _row([_cell(d["seq"], num=True), _cell(d["decision"]), _cell(d["rule"])], d["flagged"])
        for d in record["decisions"]
    ]
    parts.append(_table(["seq", "decision", "rule"], decisions))
    sent, received = record["sent"], record["received"]
    parts.append(
        f"<p>Sent {sent['messages']} messages ({sent['bytes']:,} bytes), received "
        f"{received['messages']} messages ({received['bytes']:,} bytes).</p>"
    )
    messages = [
        _row(
            [
                _cell(m["seq"], num=True),
                _cell(m["step"]),
                _cell(m["direction"]),
                _cell(m["counterparty"]),
                _cell(m["message_type"]),
                _cell(f"{m['bytes']:,}", num=True),
                f"<td><code>{escape(str(m['sha256']))}</code></td>",
                _cell(m["rule"]),
            ],
            m["flagged"],
        )
        for m in record["messages"]
    ]
    head = ["seq", "step", "direction", "counterparty", "type", "bytes", "sha256", "rule"]
    parts.append(
        f"<details><summary>{len(messages)} messages</summary>{_table(head, messages)}</details>"
    )
    releases = [
        _row(
            [_cell(r["seq"], num=True), _cell(r["step"]), _cell(r["what"]), _cell(r["rule"])],
            r["flagged"],
        )
        for r in record["releases"]
    ]
    parts.append("<p>Releases:</p>" + _table(["seq", "step", "what", "rule"], releases))
    spends = [
        _row(
            [
                _cell(b["seq"], num=True),
                _cell(b["step"]),
                _cell(b["budget"]),
                _cell(b["epsilon"], num=True),
                _cell(b["delta"], num=True),
                _cell(b["limit_epsilon"], num=True),
                _cell(b["limit_delta"], num=True),
            ],
            b["flagged"],
        )
        for b in record["budget_spends"]
    ]
    if spends:
        head = ["seq", "step", "budget", "epsilon", "delta", "limit epsilon", "limit delta"]
        parts.append("<p>Budget spends:</p>" + _table(head, spends))
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """The report dictionary (:func:`build_report`) as one self-contained HTML page."""
    verdict = str(report["verdict"])
    totals = report["totals"]
    parties = [
        _row(
            [
                _cell(p["party"]),
                _cell(p["origin"]),
                _cell(p["entries"], num=True),
                _cell(p["checkpoints"], num=True),
                _cell(p["checkpointed"], num=True),
                _cell(p["errors"], num=True),
                _cell(p["warnings"], num=True),
            ]
        )
        for p in report["parties"]
    ]
    budgets = [
        _row(
            [
                _cell(b["party"]),
                _cell(b["budget"]),
                _cell(f"{b['window_epsilon']:.6g}", num=True),
                _cell(b["limit_epsilon"], num=True),
                _cell(f"{b['window_delta']:.6g}", num=True),
                _cell(b["limit_delta"], num=True),
                _cell(f"{b['epsilon']:.6g}", num=True),
                _cell(f"{b['delta']:.6g}", num=True),
                _cell(b["spends"], num=True),
            ]
        )
        for b in report["budgets"]
    ]
    jobs = "".join(
        f"<h2>Job {escape(str(job['job']))}</h2>" + "".join(_party_html(p) for p in job["parties"])
        for job in report["jobs"]
    )
    body = [
        "<h1>Privacy audit</h1>",
        f'<p>Verdict: <span class="verdict {escape(verdict)}">{escape(verdict.upper())}</span>'
        f" — {totals['parties']} logs, {totals['entries']:,} entries, "
        f"{totals['errors']} errors, {totals['warnings']} warnings.</p>",
        "<h2>Findings</h2>",
        _findings_html(report["findings"]),
        "<h2>Logs</h2>",
        _table(
            ["party", "origin", "entries", "checkpoints", "signed", "errors", "warnings"], parties
        ),
        "<h2>Privacy budgets</h2>",
        _table(
            [
                "party",
                "budget",
                "epsilon in one window (most)",
                "limit",
                "delta in one window (most)",
                "limit",
                "epsilon, whole log",
                "delta, whole log",
                "spends",
            ],
            budgets,
        ),
        jobs,
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Privacy audit: {escape(verdict)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(result: AuditResult, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write :data:`JSON_FILE` and :data:`HTML_FILE` to ``out_dir``; return their paths."""
    report = build_report(result)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / JSON_FILE, directory / HTML_FILE
    write_text_atomic(json_path, json.dumps(report, indent=1, sort_keys=True) + "\n")
    write_text_atomic(html_path, render_html(report))
    return json_path, html_path
