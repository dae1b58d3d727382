"""``fedprop demo``: four banks train one term-deposit model, and we check it was worth it.

The demo plays every role on one machine. The federation itself runs in
Flower's Simulation Engine, where each bank's node reads only its own folder.
Then, as a lab exercise that no real coordinator could do, it also trains the
same model centrally on the pooled rows and each bank's model alone, and
compares all of them on the same test rows. It writes ``results.json`` and an
HTML report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedprop.apps.audit import log_path, verify_logs
from fedprop.apps.simulation import simulate
from fedprop.data.encoding import local_stats
from fedprop.data.loader import PartyData, load_party
from fedprop.data.split import split_bank_marketing
from fedprop.errors import FedpropError
from fedprop.federation import COORDINATOR_NAME, LocalFederation, local_federation
from fedprop.files import write_text_atomic
from fedprop.models.baselines import TrainedModel, federated_model, train_on
from fedprop.models.metrics import GlobalMetrics, ScoreHistogram, gains_points, roc_points
from fedprop.protocols.hfl import HflResult, RoundRecord
from fedprop.report import write_report
from fedprop.spec import Aggregation, JobSpec

__all__ = ["AUC_TOLERANCE", "MIN_BANKS_BEATING_LOCAL", "DemoConfig", "ensure_split", "run_demo"]

#: Quality bar: federated AUC within this distance of the centralized model's.
AUC_TOLERANCE = 0.005
#: Quality bar: banks whose own test rows the federated model scores at least as well as
#: their local model does.
MIN_BANKS_BEATING_LOCAL = 3
#: The coordinator's metrics, read from the released histogram sums, must match the
#: released model scored on the pooled test rows up to fixed-point rounding.
HISTOGRAM_AGREEMENT = 1e-6


@dataclass(frozen=True)
class DemoConfig:
    """Where the demo reads and writes, and what it changes in the job spec."""

    spec_path: Path
    source: Path
    data_dir: Path
    out_dir: Path
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Every party logs its messages; ``False`` only to measure what logging costs.
    privacy_logs: bool = True


def ensure_split(
    source: Path, data_dir: Path, parties: Sequence[str], console: Console
) -> dict[str, Path]:
    """Each bank's data folder under ``data_dir``, split from ``source`` unless there."""
    dirs = {party: data_dir / party for party in parties}
    if all((d / "train.csv").is_file() and (d / "test.csv").is_file() for d in dirs.values()):
        console.print(f"Party data: [bold]{data_dir}[/] (already split)")
        return dirs
    console.print(f"Splitting [bold]{source}[/] into {len(dirs)} banks under {data_dir}")
    for s in split_bank_marketing(source, data_dir, overwrite=True):
        console.print(
            f"  {s.party}: {s.train_rows} train / {s.test_rows} test rows, "
            f"{s.train_positive_rate:.1%} positive"
        )
    return dirs


def _run_federation(
    spec: JobSpec, cfg: DemoConfig, dirs: Mapping[str, Path], console: Console
) -> tuple[HflResult, LocalFederation]:
    federation = local_federation(cfg.data_dir.parent / "federation", "demo", spec.parties)
    nodes = federation.node_configs(
        dirs,
        allow_plaintext=spec.aggregation is Aggregation.PLAINTEXT,
        allow_model_release=True,
    )
    columns = (
        TextColumn("[bold]federated rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("rounds", total=spec.train.rounds, status="starting nodes")

        def on_round(record: RoundRecord) -> None:
            progress.update(
                task,
                advance=1,
                status=f"AUC {record.metrics.auc:.4f}  log loss {record.metrics.log_loss:.4f}",
            )

        coordinator = federation.coordinator() if cfg.privacy_logs else None
        result = simulate(spec, nodes, federation.manifest(), coordinator, progress=on_round)
    return result, federation


def _row(model: str, trained_on: str, evaluated_on: str, m: GlobalMetrics) -> dict[str, Any]:
    return {
        "model": model,
        "trained_on": trained_on,
        "evaluated_on": evaluated_on,
        "auc": m.auc,
        "ks": m.ks,
        "lift_10": m.lift_10,
        "capture_10": m.capture_10,
        "lift_20": m.lift_20,
        "capture_20": m.capture_20,
        "rows": m.positives + m.negatives,
    }


def _curves(m: GlobalMetrics, model: TrainedModel, test: pd.DataFrame, bins: int) -> dict[str, Any]:
    histogram = ScoreHistogram.from_scores(model.scores(test), model.encoder.labels(test), bins)
    return {
        "roc": roc_points(histogram).tolist(),
        "gains": gains_points(histogram).tolist(),
        "calibration": [[c.mean_score, c.observed_rate, c.count] for c in m.calibration],
    }


def _compare(
    spec: JobSpec, parties: Sequence[PartyData], result: HflResult, console: Console
) -> dict[str, Any]:
    bins = spec.evaluate.histogram_bins
    pooled_test = pd.concat([p.test for p in parties], ignore_index=True)
    if result.weights is None:
        raise FedpropError(
            f"job '{spec.id}' did not release its model; the comparison needs release-model = true"
        )
    stats = np.sum(np.stack([local_stats(p.train, spec.schema) for p in parties]), axis=0)
    federated = federated_model(spec, stats, result.weights)
    with console.status("Training the centralized and local reference models"):
        central = train_on(spec, [p.train for p in parties])
        local = {p.name: train_on(spec, [p.train]) for p in parties}

    fed_pooled = federated.metrics(pooled_test, bins)
    central_pooled = central.metrics(pooled_test, bins)
    table = [
        _row("federated", "all banks (federated)", "pooled test", fed_pooled),
        _row("centralized", "pooled data", "pooled test", central_pooled),
    ]
    wins = 0
    for p in parties:
        fed_own = federated.metrics(p.test, bins)
        local_own = local[p.name].metrics(p.test, bins)
        wins += fed_own.auc >= local_own.auc
        table += [
            _row("federated", "all banks (federated)", f"{p.name} test", fed_own),
            _row(f"local {p.name}", f"{p.name} alone", f"{p.name} test", local_own),
            _row(
                f"local {p.name}",
                f"{p.name} alone",
                "pooled test",
                local[p.name].metrics(pooled_test, bins),
            ),
        ]
    gap = abs(fed_pooled.auc - central_pooled.auc)
    checks = [
        {
            "name": f"federated AUC within {AUC_TOLERANCE} of centralized (pooled test)",
            "value": gap,
            "limit": AUC_TOLERANCE,
            "passed": gap <= AUC_TOLERANCE,
        },
        {
            "name": "banks where federated >= local on the bank's own test rows",
            "value": wins,
            "limit": MIN_BANKS_BEATING_LOCAL,
            "passed": wins >= MIN_BANKS_BEATING_LOCAL,
        },
        {
            "name": "federated AUC from summed histograms equals the pooled-score AUC",
            "value": abs(result.final.auc - fed_pooled.auc),
            "limit": HISTOGRAM_AGREEMENT,
            "passed": abs(result.final.auc - fed_pooled.auc) <= HISTOGRAM_AGREEMENT,
        },
    ]
    curves = {
        "federated": _curves(fed_pooled, federated, pooled_test, bins),
        "centralized": _curves(central_pooled, central, pooled_test, bins),
    }
    return {"table": table, "checks": checks, "curves": curves}


def _audit(federation: LocalFederation) -> dict[str, Any]:
    """Verify every party's privacy log, as an auditor would."""
    manifest = federation.manifest()
    names = [*(n.name for n in manifest.nodes), COORDINATOR_NAME]
    paths = [log_path(federation.audit_dir, name) for name in names]
    started = time.perf_counter()
    verdict = verify_logs(manifest, paths)
    return {
        "logs": [str(p) for p in paths],
        "entries": sum(r.entries for r in verdict.logs),
        "errors": [str(f) for f in verdict.errors],
        "warnings": len(verdict.warnings),
        "verify_seconds": time.perf_counter() - started,
        "check": {
            "name": "findings when every party's privacy log is verified",
            "value": len(verdict.errors),
            "limit": 0,
            "passed": verdict.ok,
        },
    }


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=2), mode=0o600)


def _print_summary(results: Mapping[str, Any], console: Console) -> None:
    table = Table(title=f"Test AUC and lift — {results['job']['id']} ({results['job']['model']})")
    for name in ("model", "evaluated on", "AUC", "KS", "lift@10", "capt@10", "capt@20"):
        left = name in ("model", "evaluated on")
        table.add_column(name, justify="left" if left else "right", no_wrap=True)
    for r in results["table"]:
        table.add_row(
            r["model"],
            r["evaluated_on"],
            f"{r['auc']:.4f}",
            f"{r['ks']:.4f}",
            f"{r['lift_10']:.2f}",
            f"{r['capture_10']:.1%}",
            f"{r['capture_20']:.1%}",
        )
    console.print(table)
    for c in results["checks"]:
        mark = "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]"
        console.print(f"{mark} {c['name']}: {c['value']:.4g} (limit {c['limit']:.4g})")


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the demo end to end; return the results written to ``results.json``."""
    console = console or Console()
    started = time.perf_counter()
    spec = JobSpec.load(cfg.spec_path)
    if cfg.overrides:
        spec = spec.with_overrides(cfg.overrides)
    dirs = ensure_split(cfg.source, cfg.data_dir, spec.parties, console)
    parties = [
        PartyData(name, d.train, d.test)
        for name, d in ((n, load_party(dirs[n], spec.schema)) for n in spec.parties)
    ]
    fed_started = time.perf_counter()
    result, federation = _run_federation(spec, cfg, dirs, console)
    fed_seconds = time.perf_counter() - fed_started
    comparison = _compare(spec, parties, result, console)
    audit = _audit(federation) if cfg.privacy_logs else {}
    if audit:
        comparison["checks"].append(audit.pop("check"))
    results: dict[str, Any] = {
        "job": {
            "id": spec.id,
            "model": spec.model.kind.value,
            "rounds": spec.train.rounds,
            "aggregation": spec.aggregation.value,
            "parties": list(spec.parties),
            "dataset": spec.dataset,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": [
            {
                "round": r.round,
                "auc": r.metrics.auc,
                "ks": r.metrics.ks,
                "log_loss": r.metrics.log_loss,
                "seconds": r.seconds,
                "bytes_from_parties": dict(r.bytes_from),
            }
            for r in result.rounds
        ],
        "final_metrics": result.final.to_dict(),
        **comparison,
        "audit": audit,
        "timing": {
            "federation_seconds": fed_seconds,
            "total_seconds": time.perf_counter() - started,
        },
        "notes": [
            "Centralized and local models are trained on the same rows, encoder, model "
            "and number of passes over the data as the federation.",
        ],
    }
    _write_json(cfg.out_dir / "results.json", results)
    report = write_report(results, cfg.out_dir)
    _print_summary(results, console)
    if audit:
        audit_dir = Path(audit["logs"][0]).parent
        console.print(
            f"Privacy logs: {audit_dir} ({audit['entries']} entries, verified in "
            f"{audit['verify_seconds']:.2f} s; check them yourself with fedprop audit "
            f"verify {audit_dir}/*.log --manifest {audit_dir.parent}/manifest.json)"
        )
    console.print(f"Results: {cfg.out_dir / 'results.json'}\nReport:  {report}")
    console.print(f"Total time: {results['timing']['total_seconds']:.1f} s")
    return results
