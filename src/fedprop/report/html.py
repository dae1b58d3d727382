"""The HTML report of a federated propensity job, built from its results dictionary.

The page is one self-contained file: CSS is inline, the four charts are PNGs embedded
as base64 ``data:`` URIs, there is no JavaScript and nothing is fetched from
elsewhere, so it can be mailed or archived as it is. Every piece of text taken from
the results is HTML-escaped.

The results dictionary is the one written to ``results.json`` by ``fedprop demo``.
Required keys are checked before anything is drawn; a missing or malformed one raises
:class:`~fedprop.report.plots.ReportDataError` (a :class:`ValueError`) whose message
names the key, for example ``results['job']: missing required key 'id'``. The
``timing`` and ``notes`` keys are optional.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

from fedprop.files import write_text_atomic
from fedprop.report.plots import (
    ReportDataError,
    calibration_png,
    gains_png,
    roc_png,
    round_curve_png,
)

__all__ = ["REPORT_FILE", "ReportDataError", "render_report_html", "write_report"]

#: Name of the report file that :func:`write_report` writes.
REPORT_FILE = "report.html"

_MISSING = "—"
_POOLED = "pooled test"
_FOOTNOTE = (
    "The federated model's metrics (the round-by-round curve and its pooled-test results) "
    "were computed from score histograms summed across the banks: each bank contributed only "
    "counts of its test rows per score bin, so no bank's own metrics were disclosed. The "
    "per-bank rows and the centralized and local models are lab references computed with "
    "access to every bank's rows, for comparison only; a production federation does not "
    "produce them."
)
#: AUC differences up to this size are described as "next to nothing" in the captions.
_CLOSE_AUC = 0.005
_TIMING_LABELS = {
    "total_seconds": "Total run time",
    "federation_seconds": "Federated training",
}

_CSS = """
:root { --ink: #1d2430; --muted: #5f6b73; --line: #d9dde3; --pass: #1a7f37;
        --fail: #c62828; --fed: #eaf2fb; --bg: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6f8; color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 32px 40px; background: var(--bg); }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h1 .date { color: var(--muted); font-weight: 400; font-size: 1.1rem; }
h2 { font-size: 1.2rem; margin: 32px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
.subtitle { color: var(--muted); margin: 0 0 8px; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dl.summary dt { color: var(--muted); }
dl.summary dd { margin: 0; }
.headline { background: #f6f8fa; border-left: 4px solid #1f6fb4; padding: 10px 14px;
            margin: 14px 0 0; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.federated td { background: var(--fed); }
.mark { font-weight: 700; white-space: nowrap; }
.mark.pass { color: var(--pass); }
.mark.fail { color: var(--fail); }
.verdict.pass { color: var(--pass); font-weight: 600; }
.verdict.fail { color: var(--fail); font-weight: 600; }
.explain { color: var(--muted); font-size: 0.85rem; margin: 8px 0 0; }
figure { margin: 18px 0 26px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 0.9rem; margin-top: 8px; max-width: 780px; }
figcaption strong { display: block; margin-bottom: 2px; }
details summary { cursor: pointer; color: #1f6fb4; margin: 8px 0; }
ul.notes { padding-left: 20px; }
footer { margin-top: 36px; padding-top: 10px; border-top: 1px solid var(--line);
         color: var(--muted); font-size: 0.85rem; }
"""


# --- reading the results ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    id: str
    model: str
    rounds: int
    aggregation: str
    parties: tuple[str, ...]
    dataset: str | None


@dataclass(frozen=True)
class _Row:
    model: str
    trained_on: str
    evaluated_on: str
    auc: float
    ks: float
    lift_10: float
    capture_10: float
    lift_20: float
    capture_20: float
    rows: int


@dataclass(frozen=True)
class _Check:
    name: str
    value: float | int
    limit: float | int
    passed: bool


@dataclass(frozen=True)
class _Round:
    round: int
    auc: float
    ks: float | None
    log_loss: float
    train_loss: float | None
    seconds: float | None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ReportDataError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ReportDataError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise ReportDataError(f"{where}: missing required key '{key}'")
    return mapping[key]


def _text(mapping: Mapping[str, Any], key: str, where: str) -> str:
    value = _require(mapping, key, where)
    if not isinstance(value, str):
        raise ReportDataError(f"{where}['{key}']: expected text, got {value!r}")
    return value


def _num(mapping: Mapping[str, Any], key: str, where: str) -> float | int:
    value = _require(mapping, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportDataError(f"{where}['{key}']: expected a number, got {value!r}")
    return value


def _int(mapping: Mapping[str, Any], key: str, where: str) -> int:
    value = _num(mapping, key, where)
    if isinstance(value, float):
        if not value.is_integer():
            raise ReportDataError(f"{where}['{key}']: expected a whole number, got {value!r}")
        return int(value)
    return value


def _optional_num(mapping: Mapping[str, Any], key: str, where: str) -> float | None:
    if mapping.get(key) is None:
        return None
    return float(_num(mapping, key, where))


def _job(results: Mapping[str, Any]) -> _Job:
    where = "results['job']"
    job = _mapping(_require(results, "job", "results"), where)
    parties = _list(_require(job, "parties", where), f"{where}['parties']")
    for i, party in enumerate(parties):
        if not isinstance(party, str):
            raise ReportDataError(f"{where}['parties'][{i}]: expected text, got {party!r}")
    dataset = _require(job, "dataset", where)
    return _Job(
        id=_text(job, "id", where),
        model=_text(job, "model", where),
        rounds=_int(job, "rounds", where),
        aggregation=_text(job, "aggregation", where),
        parties=tuple(parties),
        dataset=None if dataset is None else str(dataset),
    )


def _table(results: Mapping[str, Any]) -> list[_Row]:
    rows = []
    for i, raw in enumerate(_list(_require(results, "table", "results"), "results['table']")):
        where = f"results['table'][{i}]"
        row = _mapping(raw, where)
        rows.append(
            _Row(
                model=_text(row, "model", where),
                trained_on=_text(row, "trained_on", where),
                evaluated_on=_text(row, "evaluated_on", where),
                auc=float(_num(row, "auc", where)),
                ks=float(_num(row, "ks", where)),
                lift_10=float(_num(row, "lift_10", where)),
                capture_10=float(_num(row, "capture_10", where)),
                lift_20=float(_num(row, "lift_20", where)),
                capture_20=float(_num(row, "capture_20", where)),
                rows=_int(row, "rows", where),
            )
        )
    return rows


def _checks(results: Mapping[str, Any]) -> list[_Check]:
    checks = []
    for i, raw in enumerate(_list(_require(results, "checks", "results"), "results['checks']")):
        where = f"results['checks'][{i}]"
        check = _mapping(raw, where)
        passed = _require(check, "passed", where)
        if not isinstance(passed, bool):
            raise ReportDataError(f"{where}['passed']: expected true or false, got {passed!r}")
        checks.append(
            _Check(
                name=_text(check, "name", where),
                value=_num(check, "value", where),
                limit=_num(check, "limit", where),
                passed=passed,
            )
        )
    return checks


def _rounds(results: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[_Round]]:
    raw_rounds = _list(_require(results, "rounds", "results"), "results['rounds']")
    raw: list[Mapping[str, Any]] = []
    parsed = []
    for i, entry in enumerate(raw_rounds):
        where = f"results['rounds'][{i}]"
        r = _mapping(entry, where)
        raw.append(r)
        parsed.append(
            _Round(
                round=_int(r, "round", where),
                auc=float(_num(r, "auc", where)),
                ks=_optional_num(r, "ks", where),
                log_loss=float(_num(r, "log_loss", where)),
                train_loss=_optional_num(r, "train_loss", where),
                seconds=_optional_num(r, "seconds", where),
            )
        )
    return raw, parsed


def _curves(results: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    curves = _mapping(_require(results, "curves", "results"), "results['curves']")
    for name, entry in curves.items():
        where = f"results['curves']['{name}']"
        curve = _mapping(entry, where)
        for key in ("roc", "gains", "calibration"):
            _list(_require(curve, key, where), f"{where}['{key}']")
    return curves


def _created(results: Mapping[str, Any]) -> str:
    value = _require(results, "created", "results")
    if not isinstance(value, str):
        raise ReportDataError(f"results['created']: expected an ISO 8601 timestamp, got {value!r}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value
    stamp = when.strftime("%Y-%m-%d %H:%M")
    offset = when.utcoffset()
    if offset is None:
        return stamp
    if offset == timedelta(0):
        return f"{stamp} UTC"
    return f"{stamp} {when.strftime('%z')[:3]}:{when.strftime('%z')[3:]}"


# --- formatting -------------------------------------------------------------------------------


def _fixed(value: float | None, decimals: int) -> str:
    if value is None or not math.isfinite(value):
        return _MISSING
    return f"{value:.{decimals}f}"


def _percent(value: float | None, decimals: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return _MISSING
    return f"{value:.{decimals}%}"


def _general(value: float | int) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return _MISSING
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return _MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s ({seconds:,.1f} s)"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}" width="770" height="495">'


# --- page sections ----------------------------------------------------------------------------


def _find(table: Sequence[_Row], model: str, evaluated_on: str = _POOLED) -> _Row | None:
    exact = [r for r in table if r.model == model and r.evaluated_on == evaluated_on]
    return exact[0] if exact else None


def _summary(job: _Job, created: str, table: Sequence[_Row], checks: Sequence[_Check]) -> str:
    parties = ", ".join(job.parties) if job.parties else _MISSING
    items = [
        ("Model", job.model),
        ("Parties", f"{len(job.parties)}: {parties}"),
        ("Federated rounds", f"{job.rounds}"),
        ("Aggregation", job.aggregation),
        ("Dataset", job.dataset if job.dataset is not None else _MISSING),
        ("Created", created),
    ]
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    lines = [f'<section id="summary"><h2>Summary</h2><dl class="summary">{body}</dl>']
    headline: list[str] = []  # HTML fragments, already escaped
    fed, central = _find(table, "federated"), _find(table, "centralized")
    if fed is not None and central is not None:
        gap = fed.auc - central.auc
        headline.append(
            _e(
                f"On the pooled test rows the federated model reaches an AUC of "
                f"{_fixed(fed.auc, 4)}, against {_fixed(central.auc, 4)} for the same model "
                f"trained centrally on pooled data (difference {gap:+.4f})."
            )
        )
    elif fed is not None:
        headline.append(
            _e(
                "On the pooled test rows the federated model reaches an AUC of "
                f"{_fixed(fed.auc, 4)}."
            )
        )
    if checks:
        failed = sum(not c.passed for c in checks)
        if failed:
            verdict, css = f"{failed} of {len(checks)} quality checks failed.", "fail"
        else:
            verdict, css = f"All {len(checks)} quality checks passed.", "pass"
        headline.append(f'<span class="verdict {css}">{_e(verdict)}</span>')
    if headline:
        lines.append(f'<p class="headline">{" ".join(headline)}</p>')
    lines.append("</section>")
    return "".join(lines)


def _checks_section(checks: Sequence[_Check]) -> str:
    if not checks:
        return '<section id="checks"><h2>Quality checks</h2><p>No checks recorded.</p></section>'
    rows = []
    for c in checks:
        css, mark = ("pass", "✔ PASS") if c.passed else ("fail", "✘ FAIL")
        rows.append(
            f'<tr class="check check-{css}"><td class="mark {css}">{mark}</td>'
            f"<td>{_e(c.name)}</td>"
            f'<td class="num">{_e(_general(c.value))}</td>'
            f'<td class="num">{_e(_general(c.limit))}</td></tr>'
        )
    head = (
        '<tr><th>Result</th><th>Check</th><th class="num">Value</th><th class="num">Limit</th></tr>'
    )
    return (
        '<section id="checks"><h2>Quality checks</h2>'
        f'<table class="checks"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
        "</section>"
    )


def _comparison_section(table: Sequence[_Row]) -> str:
    columns = [
        ("Model", False),
        ("Trained on", False),
        ("Evaluated on", False),
        ("Test rows", True),
        ("AUC", True),
        ("KS", True),
        ("Lift @10%", True),
        ("Capture @10%", True),
        ("Lift @20%", True),
        ("Capture @20%", True),
    ]
    head = "".join(
        f'<th class="num">{_e(n)}</th>' if num else f"<th>{_e(n)}</th>" for n, num in columns
    )
    body = []
    for r in table:
        cells = [
            f"<td>{_e(r.model)}</td>",
            f"<td>{_e(r.trained_on)}</td>",
            f"<td>{_e(r.evaluated_on)}</td>",
            f'<td class="num">{r.rows:,}</td>',
            f'<td class="num">{_fixed(r.auc, 4)}</td>',
            f'<td class="num">{_fixed(r.ks, 4)}</td>',
            f'<td class="num">{_fixed(r.lift_10, 2)}</td>',
            f'<td class="num">{_percent(r.capture_10)}</td>',
            f'<td class="num">{_fixed(r.lift_20, 2)}</td>',
            f'<td class="num">{_percent(r.capture_20)}</td>',
        ]
        css = ' class="federated"' if r.model == "federated" else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(columns)}">No comparison rows recorded.</td></tr>')
    explain = (
        "AUC: chance that a random subscriber is scored above a random non-subscriber "
        "(0.5 = random). KS: largest gap between the score distributions of subscribers and "
        "non-subscribers. Lift @10%: subscription rate among the top-scored 10% of customers "
        "divided by the overall rate. Capture @10%: share of all subscribers found in that top "
        "10%. Federated rows are shaded."
    )
    return (
        '<section id="comparison"><h2>Model comparison</h2>'
        f'<table class="comparison"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        f'<p class="explain">{_e(explain)}</p></section>'
    )


def _round_caption(rounds: Sequence[_Round], central: _Row | None) -> str:
    text = (
        "Each point is the federated model after one round, scored on the banks' pooled test "
        "rows. AUC should rise and level off while the loss falls; a flat tail means more "
        "rounds would not help."
    )
    if rounds:
        last = rounds[-1]
        text += f" After round {last.round} the AUC is {_fixed(last.auc, 4)}."
        if central is not None and math.isfinite(last.auc) and math.isfinite(central.auc):
            gap = last.auc - central.auc
            text += f" The dashed line is the centralized model's AUC ({_fixed(central.auc, 4)})"
            if gap < 0:
                text += (
                    f": the federated model ends {-gap:.4f} below it, which is what keeping "
                    "each bank's data at the bank costs in ranking quality."
                )
            else:
                text += (
                    f": the federated model ends {gap:.4f} above it, so keeping each bank's "
                    "data at the bank cost nothing in ranking quality here."
                )
    return text


def _roc_caption(fed: _Row | None, central: _Row | None) -> str:
    text = (
        "For every score threshold, the share of subscribers the model flags (up) against the "
        "share of non-subscribers it also flags (right). Curves closer to the top-left corner "
        "rank customers better; the dotted diagonal is random selection."
    )
    if fed is not None and central is not None:
        gap = abs(fed.auc - central.auc)
        text += (
            f" The federated model's AUC is {_fixed(fed.auc, 4)} and the centralized one's "
            f"{_fixed(central.auc, 4)}"
        )
        if gap <= _CLOSE_AUC:
            text += (
                ": curves lying on top of each other mean federation loses next to nothing "
                "in how well customers are ranked."
            )
        else:
            text += (
                f", a gap of {gap:.4f}: where the curves separate, one model ranks those "
                "customers better."
            )
    return text


def _gains_caption(fed: _Row | None) -> str:
    text = (
        "Rank all customers by score and call from the top: the curve shows the share of all "
        "subscribers reached for each share of customers called. The dotted diagonal is calling "
        "at random; the vertical lines mark campaigns that call the top 10% and top 20%."
    )
    if fed is not None:
        text += (
            f" With the federated model, targeting the top 10% of customers reaches "
            f"{_percent(fed.capture_10)} of all subscribers "
            f"({_fixed(fed.lift_10, 2)} times the random rate), "
            f"and targeting the top 20% reaches {_percent(fed.capture_20)} "
            f"({_fixed(fed.lift_20, 2)} times), against 10% and 20% when calling at random."
        )
    return text


def _calibration_caption(curves: Mapping[str, Mapping[str, Any]]) -> str:
    text = (
        "Customers are grouped by predicted probability; each point compares the group's "
        "average predicted probability with the share that actually subscribed (larger markers "
        "are larger groups). Points on the diagonal mean a score can be read as a probability, "
        "e.g. to forecast conversions and budget a campaign; points above it mean the model "
        "under-predicts, below it over-predicts."
    )
    gap = _calibration_gap(curves.get("federated"))
    if gap is not None:
        text += (
            f" For the federated model, predicted and observed rates differ by "
            f"{gap * 100:.1f} percentage points on average (weighted by group size)."
        )
    return text


def _calibration_gap(curve: Mapping[str, Any] | None) -> float | None:
    if curve is None:
        return None
    total = weighted = 0.0
    for point in curve.get("calibration", []):
        try:
            mean_score, observed, count = (float(v) for v in point[:3])
        except (TypeError, ValueError, IndexError):
            return None
        if not (math.isfinite(mean_score) and math.isfinite(observed) and count > 0):
            continue
        total += count
        weighted += count * abs(mean_score - observed)
    return weighted / total if total > 0 else None


def _figure(png: bytes, title: str, caption: str, anchor: str) -> str:
    return (
        f'<figure id="{anchor}">{_img(png, title)}'
        f"<figcaption><strong>{_e(title)}</strong>{_e(caption)}</figcaption></figure>"
    )


def _charts_section(
    raw_rounds: Sequence[Mapping[str, Any]],
    rounds: Sequence[_Round],
    curves: Mapping[str, Mapping[str, Any]],
    table: Sequence[_Row],
) -> str:
    fed, central = _find(table, "federated"), _find(table, "centralized")
    central_auc = central.auc if central is not None else None
    figures = [
        _figure(
            round_curve_png(raw_rounds, central_auc),
            "Training progress per round",
            _round_caption(rounds, central),
            "chart-rounds",
        ),
        _figure(roc_png(curves), "ROC curve", _roc_caption(fed, central), "chart-roc"),
        _figure(gains_png(curves), "Cumulative gains", _gains_caption(fed), "chart-gains"),
        _figure(
            calibration_png(curves),
            "Calibration",
            _calibration_caption(curves),
            "chart-calibration",
        ),
    ]
    return f'<section id="charts"><h2>Charts</h2>{"".join(figures)}</section>'


def _rounds_section(rounds: Sequence[_Round]) -> str:
    if not rounds:
        return ""
    show_train = any(r.train_loss is not None for r in rounds)
    head = ["Round", "AUC", "KS", "Test log loss", *(["Training loss"] if show_train else [])]
    head.append("Seconds")
    rows = []
    for r in rounds:
        cells = [str(r.round), _fixed(r.auc, 4), _fixed(r.ks, 4), _fixed(r.log_loss, 4)]
        if show_train:
            cells.append(_fixed(r.train_loss, 4))
        cells.append(_fixed(r.seconds, 1))
        rows.append("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")
    header = "".join(f'<th class="num">{_e(h)}</th>' for h in head)
    return (
        '<section id="rounds"><details><summary>Metrics for each of the '
        f"{len(rounds)} federated rounds</summary>"
        f'<table class="rounds"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></details></section>"
    )


def _timing_section(results: Mapping[str, Any], rounds: Sequence[_Round]) -> str:
    timing = results.get("timing")
    items: list[tuple[str, str]] = []
    if isinstance(timing, Mapping):
        for key, value in timing.items():
            label = _TIMING_LABELS.get(
                str(key), str(key).removesuffix("_seconds").replace("_", " ").capitalize()
            )
            if isinstance(value, int | float) and not isinstance(value, bool):
                shown = _duration(float(value)) if str(key).endswith("seconds") else _general(value)
            else:
                shown = str(value)
            items.append((label, shown))
    seconds = [r.seconds for r in rounds if r.seconds is not None and math.isfinite(r.seconds)]
    if seconds:
        items.append(("Mean time per round", _duration(sum(seconds) / len(seconds))))
    if not items:
        return ""
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f'<section id="timing"><h2>Timing</h2><dl class="summary">{body}</dl></section>'


def _notes_section(results: Mapping[str, Any]) -> str:
    notes = results.get("notes")
    if isinstance(notes, str):
        notes = [notes]
    if not isinstance(notes, Sequence) or not notes:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f'<section id="notes"><h2>Notes</h2><ul class="notes">{items}</ul></section>'


# --- public API -------------------------------------------------------------------------------


def render_report_html(results: Mapping[str, Any]) -> str:
    """The complete, self-contained HTML report for ``results`` (see the module docstring)."""
    results = _mapping(results, "results")
    job = _job(results)
    created = _created(results)
    raw_rounds, rounds = _rounds(results)
    table = _table(results)
    curves = _curves(results)
    checks = _checks(results)

    title = f"{job.id} — {created}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Federated propensity report: {_e(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f'<header><h1>Federated propensity report: {_e(job.id)} <span class="date">· '
        f"{_e(created)}</span></h1>",
        f'<p class="subtitle">Propensity model trained across {len(job.parties)} '
        f"banks without pooling their data, compared with the same model trained on pooled data "
        f"and with each bank's model trained alone.</p></header>",
        _summary(job, created, table, checks),
        _checks_section(checks),
        _comparison_section(table),
        _charts_section(raw_rounds, rounds, curves, table),
        _rounds_section(rounds),
        _timing_section(results, rounds),
        _notes_section(results),
        f'<footer><p class="footnote">{_e(_FOOTNOTE)}</p></footer>',
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(results: Mapping[str, Any], out_dir: Path) -> Path:
    """Render the report and write it to ``out_dir / "report.html"`` atomically; return its path.

    The page is rendered before anything is written, so invalid results leave ``out_dir``
    untouched. The file is written to a temporary file in ``out_dir`` and moved into place
    with :func:`os.replace`, so a reader never sees a half-written report.
    """
    page = render_report_html(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    write_text_atomic(path, page)
    return path
