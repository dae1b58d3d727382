"""Tests of the HTML report: content, number formats, embedded charts, escaping, writing."""

from __future__ import annotations

import base64
import copy
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest

from fedprop.report import ReportDataError, render_report_html, write_report
from fedprop.report.plots import calibration_png, gains_png, roc_png, round_curve_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
PARTIES = ["bank-a", "bank-b", "bank-c", "bank-d"]


# --- a realistic results dictionary, generated in code ----------------------------------------


def _scores(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels at an ~11.7% positive rate and calibrated scores (AUC about 0.77 at signal 1)."""
    base_rate = 0.117
    labels = (rng.random(n) < base_rate).astype(int)
    shift = 1.05 * signal
    z = shift * labels + rng.normal(0.0, 1.0, n)
    logits = np.log(base_rate / (1 - base_rate)) + shift * z - shift**2 / 2
    return 1.0 / (1.0 + np.exp(-logits)), labels


def _metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    order = np.argsort(-scores, kind="stable")
    ranked = labels[order]
    positives = ranked.sum()
    tpr = np.concatenate([[0.0], np.cumsum(ranked) / positives])
    fpr = np.concatenate([[0.0], np.cumsum(1 - ranked) / (len(ranked) - positives)])
    frac = np.arange(len(ranked) + 1) / len(ranked)
    rate = positives / len(ranked)

    def capture(cut: float) -> float:
        return float(ranked[: round(cut * len(ranked))].sum() / positives)

    return {
        "auc": float(np.trapezoid(tpr, fpr)),
        "ks": float(np.max(tpr - fpr)),
        "lift_10": capture(0.1) / 0.1 if rate else 0.0,
        "capture_10": capture(0.1),
        "lift_20": capture(0.2) / 0.2 if rate else 0.0,
        "capture_20": capture(0.2),
        "rows": len(ranked),
        "_roc": np.column_stack([fpr, tpr])[:: max(1, len(ranked) // 200)],
        "_gains": np.column_stack([frac, tpr])[:: max(1, len(ranked) // 200)],
    }


def _calibration(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[list[float]]:
    edges = np.quantile(scores, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append([float(scores[mask].mean()), float(labels[mask].mean()), int(mask.sum())])
    return out


def make_results(parties: list[str] | None = None, seed: int = 3) -> dict[str, Any]:
    """A results dictionary shaped like the one ``fedprop demo`` writes."""
    parties = list(parties or PARTIES)
    rng = np.random.default_rng(seed)
    fed_scores, pooled_labels = _scores(rng, 9043, 1.0)
    # The centralized model scores the same pooled test rows almost identically.
    central_logits = np.log(fed_scores / (1 - fed_scores)) + rng.normal(0.0, 0.05, len(fed_scores))
    pooled_scores = {
        "federated": (fed_scores, pooled_labels),
        "centralized": (1.0 / (1.0 + np.exp(-central_logits)), pooled_labels),
    }
    table: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}

    def row(model: str, trained_on: str, evaluated_on: str, m: Mapping[str, Any]) -> None:
        table.append(
            {
                "model": model,
                "trained_on": trained_on,
                "evaluated_on": evaluated_on,
                **{k: v for k, v in m.items() if not k.startswith("_")},
            }
        )

    for model, trained_on in (
        ("federated", "all banks (federated)"),
        ("centralized", "pooled data"),
    ):
        s, y = pooled_scores[model]
        m = _metrics(s, y)
        row(model, trained_on, "pooled test", m)
        curves[model] = {
            "roc": m["_roc"].tolist(),
            "gains": m["_gains"].tolist(),
            "calibration": _calibration(s, y),
        }
    for party in parties:
        row(
            "federated",
            "all banks (federated)",
            f"{party} test",
            _metrics(*_scores(rng, 2200, 1.0)),
        )
        row(f"local {party}", f"{party} alone", f"{party} test", _metrics(*_scores(rng, 2200, 0.8)))
        row(f"local {party}", f"{party} alone", "pooled test", _metrics(*_scores(rng, 9043, 0.8)))

    rounds = [
        {
            "round": r,
            "auc": table[0]["auc"] - 0.06 * np.exp(-r / 3) + 0.06 * np.exp(-20 / 3),
            "ks": 0.42 - 0.08 * np.exp(-r / 3),
            "log_loss": 0.29 + 0.08 * np.exp(-r / 4),
            "train_loss": 0.28 + 0.09 * np.exp(-r / 4),
            "seconds": 1.8 + 0.1 * (r % 3),
        }
        for r in range(1, 21)
    ]
    fed_auc, central_auc = table[0]["auc"], table[1]["auc"]
    return {
        "job": {
            "id": "bank-marketing-hfl",
            "model": "logreg",
            "rounds": 20,
            "aggregation": "plaintext",
            "parties": parties,
            "dataset": "bank-marketing",
        },
        "created": "2026-11-23T05:00:00+00:00",
        "rounds": [{k: float(v) if k != "round" else v for k, v in r.items()} for r in rounds],
        "table": table,
        "curves": curves,
        "checks": [
            {
                "name": "federated AUC within 0.005 of centralized (pooled test)",
                "value": abs(fed_auc - central_auc),
                "limit": 0.005,
                "passed": True,
            },
            {
                "name": "banks where federated >= local on the bank's own test rows",
                "value": 2,
                "limit": 3,
                "passed": False,
            },
        ],
        "timing": {"total_seconds": 95.2, "federation_seconds": 60.1},
        "notes": ["Centralized and local models are lab references."],
    }


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return make_results()


@pytest.fixture(scope="module")
def page(results: dict[str, Any]) -> str:
    return render_report_html(results)


# --- content ----------------------------------------------------------------------------------


def test_page_names_job_and_date(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "bank-marketing-hfl" in page
    assert "2026-11-23 05:00 UTC" in page
    for word in ("logreg", "plaintext", "bank-marketing", *PARTIES):
        assert word in page


def test_table_rows_and_number_formats(results: dict[str, Any], page: str) -> None:
    body = page.split('<table class="comparison">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr(?: class=\"federated\")?>(.*?)</tr>", body.split("<tbody>", 1)[1])
    assert len(rows) == len(results["table"])
    for expected, html_row in zip(results["table"], rows, strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", html_row)
        assert cells[0] == expected["model"]
        assert cells[2] == expected["evaluated_on"]
        assert cells[3] == f"{expected['rows']:,}"
        assert cells[4] == f"{expected['auc']:.4f}"
        assert cells[5] == f"{expected['ks']:.4f}"
        assert cells[6] == f"{expected['lift_10']:.2f}"
        assert cells[7] == f"{expected['capture_10'] * 100:.1f}%"
        assert cells[8] == f"{expected['lift_20']:.2f}"
        assert cells[9] == f"{expected['capture_20'] * 100:.1f}%"


def test_fixed_numbers_are_formatted() -> None:
    results = make_results()
    results["table"][0].update(auc=0.77123456, ks=0.4, lift_10=3.14159, capture_20=0.4567)
    page = render_report_html(results)
    for text in ("0.7712", "0.4000", "3.14", "45.7%"):
        assert text in page
    assert "0.77123456" not in page


def test_four_embedded_pngs(page: str) -> None:
    images = IMG_RE.findall(page)
    assert len(images) == 4
    for encoded in images:
        png = base64.b64decode(encoded, validate=True)
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        height, width = pixels.shape[:2]
        assert 500 <= width <= 1200
        assert 300 <= height <= 800


def test_self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page


def test_check_marks_match_verdicts(results: dict[str, Any], page: str) -> None:
    rows = re.findall(r'<tr class="check check-(pass|fail)">(.*?)</tr>', page)
    assert len(rows) == len(results["checks"])
    for check, (css, html_row) in zip(results["checks"], rows, strict=True):
        assert check["name"].replace("'", "&#x27;").replace(">", "&gt;") in html_row
        if check["passed"]:
            assert css == "pass" and "PASS" in html_row and "FAIL" not in html_row
        else:
            assert css == "fail" and "FAIL" in html_row and "PASS" not in html_row
    assert "1 of 2 quality checks failed." in page


def test_captions_use_federated_capture(results: dict[str, Any], page: str) -> None:
    fed = results["table"][0]
    assert f"targeting the top 20% reaches {fed['capture_20'] * 100:.1f}%" in page
    assert "no bank&#x27;s own metrics were disclosed" in page


def test_round_caption_follows_the_gap() -> None:
    results = make_results()
    results["table"][1]["auc"] = results["rounds"][-1]["auc"] + 0.0123
    page = render_report_html(results)
    assert "ends 0.0123 below it" in page
    assert "a gap of 0.0123" in page
    results["table"][1]["auc"] = results["rounds"][-1]["auc"] - 0.001
    page = render_report_html(results)
    assert "ends 0.0010 above it" in page
    assert "loses next to nothing" in page


def test_timing_and_notes(page: str) -> None:
    assert "Total run time" in page and "1 min 35 s" in page
    assert "Federated training" in page and "1 min 00 s" in page
    assert "Centralized and local models are lab references." in page


def test_party_name_is_escaped() -> None:
    evil = "<script>alert('x')</script>"
    page = render_report_html(make_results([evil, "bank-b"]))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_optional_keys_may_be_missing() -> None:
    results = make_results()
    del results["timing"], results["notes"]
    for r in results["rounds"]:
        del r["ks"], r["seconds"], r["train_loss"]
    page = render_report_html(results)
    assert 'id="timing"' not in page
    assert 'id="notes"' not in page
    assert len(IMG_RE.findall(page)) == 4


def test_empty_curves_and_rounds_still_render() -> None:
    results = make_results()
    results["rounds"] = []
    results["curves"] = {}
    assert len(IMG_RE.findall(render_report_html(results))) == 4


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("job",), "results: missing required key 'job'"),
        (("job", "id"), "results['job']: missing required key 'id'"),
        (("table",), "results: missing required key 'table'"),
        (("table", 3, "auc"), "results['table'][3]: missing required key 'auc'"),
        (("checks", 1, "passed"), "results['checks'][1]: missing required key 'passed'"),
        (("rounds", 0, "log_loss"), "results['rounds'][0]: missing required key 'log_loss'"),
        (("curves", "federated", "gains"), "results['curves']['federated']: missing required key"),
        (("created",), "results: missing required key 'created'"),
    ],
)
def test_missing_required_key(path: tuple[Any, ...], message: str) -> None:
    results = make_results()
    target: Any = results
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    with pytest.raises(ReportDataError, match=re.escape(message)) as info:
        render_report_html(results)
    assert isinstance(info.value, ValueError)


def test_malformed_value_is_named() -> None:
    results = make_results()
    results["table"][0]["auc"] = "high"
    with pytest.raises(
        ValueError, match=re.escape("results['table'][0]['auc']: expected a number")
    ):
        render_report_html(results)
    results = make_results()
    results["checks"][0]["passed"] = "yes"
    with pytest.raises(ValueError, match=re.escape("results['checks'][0]['passed']")):
        render_report_html(results)


def test_plot_functions_reject_bad_points() -> None:
    with pytest.raises(ReportDataError, match=r"curves\['m'\]\['roc'\]"):
        roc_png({"m": {"roc": [[0.1], [0.2]]}})
    with pytest.raises(ReportDataError, match="missing required key 'gains'"):
        gains_png({"m": {"roc": []}})
    with pytest.raises(ReportDataError, match=r"rounds\[0\]: missing required key 'auc'"):
        round_curve_png([{"round": 1, "log_loss": 0.3}])
    # Calibration points without counts are still drawn.
    assert calibration_png({"m": {"calibration": [[0.1, 0.12], [0.3, 0.25]]}}).startswith(
        PNG_SIGNATURE
    )


# --- writing ----------------------------------------------------------------------------------


def test_write_report_is_atomic(results: dict[str, Any], tmp_path: Path) -> None:
    out_dir = tmp_path / "out" / "nested"
    path = write_report(results, out_dir)
    assert path == out_dir / "report.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.html"]
    # Overwriting replaces the file and leaves no temporary file behind either.
    path.write_text("old", encoding="utf-8")
    assert write_report(results, out_dir) == path
    assert path.read_text(encoding="utf-8") != "old"
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.html"]


def test_write_report_with_bad_results_writes_nothing(tmp_path: Path) -> None:
    results = copy.deepcopy(make_results())
    del results["checks"]
    with pytest.raises(ReportDataError, match="'checks'"):
        write_report(results, tmp_path)
    assert list(tmp_path.iterdir()) == []
