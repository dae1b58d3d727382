"""A 12-cell query end to end through Flower: what the data team waits for.

On the real four-bank split of bank-full, ``configs/query-take-up.toml`` (take-up rate and
count by 3 contact channels x 4 education levels, epsilon 0.5, 2048-bit Paillier) runs
``--runs`` times in Flower's Simulation Engine, each time with a fresh query id and fresh
node ledgers and logs: the coordinator signs the query, every node's policy gate and
budget ledger admit it, the key holder makes and seals the query key, the nodes encrypt
their cells, the coordinator adds them, the releaser opens, suppresses and noises. Each
run reports:

- ``coordinator seconds``: from the ServerApp's first message to the accepted answer;
- ``simulation seconds``: the whole ``simulate_query`` call, starting and stopping the
  Simulation Engine (Ray) and its four virtual nodes included;
- ``cli seconds`` (once, ``--cli``): ``fedprop query`` as a user types it, from process
  start (Python and library imports included) to the printed table.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_query_flower.py --source ../shared/data/bank-full.csv \\
        --output bench/results/query_flower.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_audit import machine
from fedprop.apps.server_app import CoordinatorConfig
from fedprop.apps.simulation import simulate_query
from fedprop.ask import demo_policy
from fedprop.data.split import split_bank_marketing
from fedprop.federation import local_federation

ROOT = Path(__file__).resolve().parents[1]
QUERY = ROOT / "configs" / "query-take-up.toml"
BASE_ID = 'id = "take-up-by-contact-education"'
COMMAND = (
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 .venv/bin/python "
    "bench/bench_query_flower.py --source ../shared/data/bank-full.csv "
    "--output bench/results/query_flower.md"
)


def run(source: Path, runs: int, cli: bool) -> dict[str, Any]:
    text = QUERY.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = {s.party: s.folder for s in split_bank_marketing(source, root / "parties")}
        federation = local_federation(root / "federation", "bench", tuple(dirs))
        manifest = federation.manifest()
        assert manifest.coordinator is not None
        policy = root / "policy.toml"
        policy.write_text(demo_policy("bench", manifest.coordinator.fingerprint()))
        rows = []
        for n in range(runs):
            audit = root / f"audit-{n}"
            nodes = {
                p: dataclasses.replace(c, audit_dir=audit)
                for p, c in federation.node_configs(
                    dirs, policies=dict.fromkeys(dirs, policy)
                ).items()
            }
            coordinator = CoordinatorConfig(federation.coordinator_key_dir, audit)
            asked = text.replace(BASE_ID, f'id = "bench-{n}"')
            t0 = time.perf_counter()
            outcome = simulate_query(asked, nodes, manifest, coordinator)
            rows.append(
                {
                    "run": n + 1,
                    "coordinator_seconds": outcome.seconds,
                    "simulation_seconds": time.perf_counter() - t0,
                    "cells": len(outcome.answer.cells),
                    "suppressed": sum(c.suppressed for c in outcome.answer.cells),
                    "bytes_to_coordinator": outcome.bytes_received,
                }
            )
            print(rows[-1], flush=True)
        cli_seconds = None
        if cli:
            env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
            fedprop = Path(sys.executable).with_name("fedprop")
            t0 = time.perf_counter()
            subprocess.run(
                [str(fedprop), "query", str(QUERY), "--source", str(source),
                 "--data", str(root / "cli" / "parties"), "--out", str(root / "cli" / "answer")],
                check=True, env=env, cwd=ROOT, capture_output=True,
            )  # fmt: skip
            cli_seconds = time.perf_counter() - t0
    return {"runs": rows, "cli_seconds_first_run": cli_seconds}


def report(results: dict[str, Any]) -> str:
    rows = results["runs"]
    coord = statistics.median(r["coordinator_seconds"] for r in rows)
    sim = statistics.median(r["simulation_seconds"] for r in rows)
    lines = [
        "# A 12-cell query end to end through Flower",
        "",
        f"Command: `{COMMAND}`",
        "",
        f"Machine: {results['machine']}; recorded {results['date']}.",
        "",
        "| run | coordinator s | simulation s (Ray start incl.) | cells | suppressed | bytes in |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['run']} | {r['coordinator_seconds']:.2f} | {r['simulation_seconds']:.2f} | "
            f"{r['cells']} | {r['suppressed']} | {r['bytes_to_coordinator']:,} |"
            for r in rows
        ),
        "",
        f"Median: {coord:.2f} s from the coordinator's first message to the accepted answer; "
        f"{sim:.2f} s for the whole Simulation Engine run (bar: under 10 s).",
    ]
    if results["cli_seconds_first_run"] is not None:
        lines.append(
            f"`fedprop query` from process start, splitting the data first: "
            f"{results['cli_seconds_first_run']:.1f} s."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="bank-full.csv")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-cli", dest="cli", action="store_false")
    parser.add_argument("--output", type=Path, default=Path("bench/results/query_flower.md"))
    args = parser.parse_args()
    results = run(args.source, args.runs, args.cli)
    results["machine"] = machine()
    results["date"] = datetime.date.today().isoformat()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(results), encoding="utf-8")
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))


if __name__ == "__main__":
    main()
