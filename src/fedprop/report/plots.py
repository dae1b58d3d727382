"""The report's charts, each drawn on its own figure and returned as PNG bytes.

Every function builds a fresh :class:`matplotlib.figure.Figure` (no pyplot, no
global style changes), draws one chart in the report's common style and
returns the encoded PNG. The inputs are the plain lists found in
``results.json``:

* :func:`round_curve_png` takes ``results["rounds"]``: one mapping per
  federated round with ``round``, ``auc`` and ``log_loss`` (and optionally
  ``train_loss``);
* :func:`roc_png`, :func:`gains_png` and :func:`calibration_png` take
  ``results["curves"]``: per model name, a mapping with ``roc`` points
  ``[fpr, tpr]``, ``gains`` points ``[fraction contacted, fraction of positives
  captured]`` and ``calibration`` points ``[mean score, observed rate, count]``.

Malformed input raises :class:`ReportDataError` naming the offending entry.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from fedprop.errors import FedpropError

__all__ = [
    "CUTOFFS",
    "DPI",
    "FIGSIZE",
    "ReportDataError",
    "calibration_png",
    "gains_png",
    "model_color",
    "roc_png",
    "round_curve_png",
]

#: Figure size in inches (width, height).
FIGSIZE = (7.0, 4.5)
#: Resolution of the PNGs, in dots per inch.
DPI = 110
#: Targeting cut-offs marked on the gains chart: the top 10% and 20% of customers.
CUTOFFS = (0.10, 0.20)

_FIXED_COLORS = {"federated": "#1f6fb4", "centralized": "#d1495b"}
_OTHER_COLORS = (
    "#2a9d5b",
    "#8e6cc0",
    "#e08a1e",
    "#8c564b",
    "#d45fb0",
    "#5f6b73",
    "#a8a21b",
    "#1fa7b8",
)
_REFERENCE_COLOR = "#8a8f98"

FloatArray = npt.NDArray[np.float64]


class ReportDataError(FedpropError, ValueError):
    """The results given to the report are missing a required key or hold a malformed value."""


# --- shared helpers ---------------------------------------------------------------------------


def model_color(name: str, others: Sequence[str] = ()) -> str:
    """The colour used for model ``name`` in every chart.

    ``federated`` and ``centralized`` always get the same colours; any other model takes
    the next colour of a fixed palette by its position in ``others``.
    """
    if name in _FIXED_COLORS:
        return _FIXED_COLORS[name]
    rest = [n for n in others if n not in _FIXED_COLORS]
    index = rest.index(name) if name in rest else 0
    return _OTHER_COLORS[index % len(_OTHER_COLORS)]


def _label(text: str) -> str:
    """Text safe for a matplotlib label: a ``$`` must not start mathtext."""
    return text.replace("$", r"\$")


def _new_figure() -> Figure:
    return Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")


def _style(ax: Axes) -> None:
    ax.grid(True, color="#d0d4da", linewidth=0.7, alpha=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=9)


def _title(ax: Axes, text: str) -> None:
    ax.set_title(text, fontsize=11, loc="left", fontweight="bold")


def _no_data(ax: Axes, message: str) -> None:
    ax.text(
        0.5,
        0.5,
        message,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color=_REFERENCE_COLOR,
        fontsize=10,
    )


def _to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportDataError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _curve_entry(curves: Mapping[str, Any], model: str) -> Mapping[str, Any]:
    entry = curves[model]
    if not isinstance(entry, Mapping):
        raise ReportDataError(
            f"curves['{model}']: expected a mapping of curves, got {type(entry).__name__}"
        )
    return entry


def _points(curves: Mapping[str, Any], model: str, key: str, columns: int) -> FloatArray:
    """The ``key`` points of ``model`` as an ``(n, columns)`` float array."""
    entry = _curve_entry(curves, model)
    if key not in entry:
        raise ReportDataError(f"curves['{model}']: missing required key '{key}'")
    where = f"curves['{model}']['{key}']"
    raw = entry[key]
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ReportDataError(f"{where}: expected a list of points, got {type(raw).__name__}")
    if len(raw) == 0:
        return np.empty((0, columns), dtype=np.float64)
    try:
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ReportDataError(f"{where}: expected a list of numeric points") from exc
    if array.ndim != 2 or array.shape[1] < columns:
        raise ReportDataError(f"{where}: expected points with at least {columns} numbers each")
    return array[:, :columns]


def _models(curves: Mapping[str, Any]) -> list[str]:
    if not isinstance(curves, Mapping):
        raise ReportDataError(f"curves: expected a mapping, got {type(curves).__name__}")
    return [str(name) for name in curves]


def _legend(ax: Axes, outside: bool = False) -> None:
    if not ax.get_legend_handles_labels()[0]:
        return
    if outside:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8.5, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)


def _percent_axes(ax: Axes, *, x: bool = True, y: bool = True) -> None:
    if x:
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    if y:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))


# --- training rounds --------------------------------------------------------------------------


def _round_series(rounds: Sequence[Mapping[str, Any]], key: str, *, required: bool) -> FloatArray:
    values: list[float] = []
    for i, entry in enumerate(rounds):
        if not isinstance(entry, Mapping):
            raise ReportDataError(f"rounds[{i}]: expected a mapping, got {type(entry).__name__}")
        if key not in entry or entry[key] is None:
            if required:
                raise ReportDataError(f"rounds[{i}]: missing required key '{key}'")
            values.append(math.nan)
            continue
        values.append(_number(entry[key], f"rounds[{i}]['{key}']"))
    return np.asarray(values, dtype=np.float64)


def round_curve_png(
    rounds: Sequence[Mapping[str, Any]], centralized_auc: float | None = None
) -> bytes:
    """AUC per federated round (top panel) and loss per round (bottom panel), as PNG.

    ``centralized_auc``, when given, is drawn as a dashed horizontal reference line: the
    AUC the same model reaches when trained on the pooled data.
    """
    if not isinstance(rounds, Sequence) or isinstance(rounds, str):
        raise ReportDataError(f"rounds: expected a list, got {type(rounds).__name__}")
    x = _round_series(rounds, "round", required=True)
    auc = _round_series(rounds, "auc", required=True)
    log_loss = _round_series(rounds, "log_loss", required=True)
    train_loss = _round_series(rounds, "train_loss", required=False)

    fig = _new_figure()
    ax_auc, ax_loss = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    for ax in (ax_auc, ax_loss):
        _style(ax)
    _title(ax_auc, "Federated training: test AUC and loss per round")
    color = _FIXED_COLORS["federated"]
    if len(x) == 0:
        _no_data(ax_auc, "no rounds recorded")
    else:
        ax_auc.plot(x, auc, marker="o", markersize=3.5, color=color, label="federated model")
        last = len(auc) - 1
        if math.isfinite(auc[last]):
            ax_auc.annotate(
                f"{auc[last]:.4f}",
                (x[last], auc[last]),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
                color=color,
            )
        ax_loss.plot(x, log_loss, marker="o", markersize=3.5, color=color, label="test log loss")
        if np.isfinite(train_loss).any():
            ax_loss.plot(
                x,
                train_loss,
                marker="s",
                markersize=3,
                linestyle="--",
                color="#e08a1e",
                label="training loss",
            )
    if centralized_auc is not None and math.isfinite(centralized_auc):
        ax_auc.axhline(
            centralized_auc,
            linestyle="--",
            linewidth=1.2,
            color=_FIXED_COLORS["centralized"],
            label=f"centralized model ({centralized_auc:.4f})",
        )
    ax_auc.set_ylabel("Test AUC\n(0.5 = random)", fontsize=9)
    ax_loss.set_ylabel("Log loss\n(nats per row)", fontsize=9)
    ax_loss.set_xlabel("Federated round (count)", fontsize=9)
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_auc, ax_loss):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8.5, framealpha=0.9)
    return _to_png(fig)


# --- ranking charts ---------------------------------------------------------------------------


def _sorted_by_x(points: FloatArray) -> FloatArray:
    finite = points[np.isfinite(points).all(axis=1)]
    order = np.argsort(finite[:, 0], kind="stable")
    return finite[order]


def _with_origin(points: FloatArray) -> FloatArray:
    if len(points) == 0 or points[0, 0] > 0.0 or points[0, 1] > 0.0:
        return np.vstack([np.zeros((1, points.shape[1])), points])
    return points


def _area(points: FloatArray) -> float:
    if len(points) < 2:
        return math.nan
    return float(np.trapezoid(points[:, 1], points[:, 0]))


def roc_png(curves: Mapping[str, Mapping[str, Any]]) -> bytes:
    """ROC curve of each model (true against false positive rate), with the random diagonal."""
    models = _models(curves)
    fig = _new_figure()
    ax = fig.subplots()
    _style(ax)
    _title(ax, "ROC curve (pooled test rows)")
    ax.plot([0, 1], [0, 1], linestyle=":", color=_REFERENCE_COLOR, label="random (AUC 0.5)")
    drawn = 0
    for name in models:
        points = _sorted_by_x(_points(curves, name, "roc", 2))
        if len(points) == 0:
            continue
        points = _with_origin(points)
        area = _area(points)
        label = f"{name} (AUC {area:.4f})" if math.isfinite(area) else name
        ax.plot(
            points[:, 0],
            points[:, 1],
            color=model_color(name, models),
            linewidth=1.8,
            label=_label(label),
        )
        drawn += 1
    if drawn == 0:
        _no_data(ax, "no ROC points recorded")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    _percent_axes(ax)
    ax.set_xlabel("False positive rate (% of non-subscribers flagged)", fontsize=9)
    ax.set_ylabel("True positive rate\n(% of subscribers flagged)", fontsize=9)
    _legend(ax, outside=True)
    return _to_png(fig)


def gains_png(curves: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Cumulative gains of each model, the random baseline and the 10% and 20% cut-offs.

    A point ``(f, c)`` reads: contacting the top ``f`` of customers by score reaches ``c``
    of all subscribers.
    """
    models = _models(curves)
    fig = _new_figure()
    ax = fig.subplots()
    _style(ax)
    _title(ax, "Cumulative gains (pooled test rows)")
    ax.plot([0, 1], [0, 1], linestyle=":", color=_REFERENCE_COLOR, label="random targeting")
    for cutoff in CUTOFFS:
        ax.axvline(cutoff, color="#5f6b73", linestyle="--", linewidth=0.9)
        ax.text(
            cutoff,
            1.0,
            f" top {cutoff:.0%}",
            fontsize=8,
            color="#5f6b73",
            ha="left",
            va="top",
        )
    drawn: list[tuple[str, FloatArray]] = []
    for name in models:
        points = _sorted_by_x(_points(curves, name, "gains", 2))
        if len(points) == 0:
            continue
        points = _with_origin(points)
        ax.plot(
            points[:, 0],
            points[:, 1],
            color=model_color(name, models),
            linewidth=1.8,
            label=_label(name),
        )
        drawn.append((name, points))
    if not drawn:
        _no_data(ax, "no gains points recorded")
    else:
        # Mark where each cut-off meets the curves; label the values of the first model drawn
        # (the federated one when present) so that the chart stays readable.
        labelled = next((d for d in drawn if d[0] == "federated"), drawn[0])[0]
        for name, points in drawn:
            for cutoff in CUTOFFS:
                captured = float(np.interp(cutoff, points[:, 0], points[:, 1]))
                ax.plot(
                    [cutoff], [captured], marker="o", markersize=5, color=model_color(name, models)
                )
                if name == labelled:
                    ax.annotate(
                        f"{captured:.0%}",
                        (cutoff, captured),
                        textcoords="offset points",
                        xytext=(6, -12),
                        fontsize=8.5,
                        fontweight="bold",
                        color=model_color(name, models),
                    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    _percent_axes(ax)
    ax.set_xlabel("Customers contacted, highest scores first (% of all customers)", fontsize=9)
    ax.set_ylabel("Subscribers reached\n(% of all subscribers)", fontsize=9)
    _legend(ax)
    return _to_png(fig)


def calibration_png(curves: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Mean predicted probability against observed subscription rate per score group.

    Markers are sized by the number of customers in the group; the diagonal is perfect
    calibration.
    """
    models = _models(curves)
    series: list[tuple[str, FloatArray]] = []
    for name in models:
        entry = _curve_entry(curves, name)
        raw = entry.get("calibration")
        has_counts = (
            isinstance(raw, Sequence)
            and len(raw) > 0
            and all(isinstance(p, Sequence) and len(p) >= 3 for p in raw)
        )
        points = _points(curves, name, "calibration", 3 if has_counts else 2)
        if not has_counts:
            points = np.column_stack([points, np.ones(len(points))])
        points = _sorted_by_x(points)
        points = points[points[:, 2] > 0]
        if len(points):
            series.append((name, points))

    fig = _new_figure()
    ax = fig.subplots()
    _style(ax)
    _title(ax, "Calibration (pooled test rows)")
    top = max([0.05, *(float(p[:, :2].max()) for _, p in series)]) * 1.08
    top = min(top, 1.0)
    ax.plot([0, top], [0, top], linestyle=":", color=_REFERENCE_COLOR, label="perfect calibration")
    largest = max([1.0, *(float(p[:, 2].max()) for _, p in series)])
    for name, points in series:
        color = model_color(name, models)
        ax.plot(
            points[:, 0],
            points[:, 1],
            color=color,
            linewidth=1.4,
            marker="o",
            markersize=3,
            label=_label(name),
        )
        ax.scatter(
            points[:, 0],
            points[:, 1],
            s=12 + 150 * points[:, 2] / largest,
            color=color,
            alpha=0.35,
            edgecolors="none",
        )
    if not series:
        _no_data(ax, "no calibration points recorded")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    _percent_axes(ax)
    ax.set_xlabel("Mean predicted probability (%)", fontsize=9)
    ax.set_ylabel("Observed subscription rate (%)", fontsize=9)
    _legend(ax, outside=True)
    return _to_png(fig)
