"""Cost of encrypted aggregation: round wall time and bytes, paillier vs plaintext.

Runs the demo's job on the four-bank split in both aggregation modes, one
after the other in the same process (compare ratios: the machine is shared),
for the shipped logistic regression and for an MLP of about 100,000
parameters, on two engines:

- ``simulation``: Flower's Simulation Engine, as the demo runs (messages,
  two worker processes for four nodes);
- ``in-process``: the protocol alone, every node called in turn in this
  process (no messaging, one core): the pure compute cost of a round.

Reports the median round wall time (rounds 2 to R - 1: round 1 includes
start-up and key set-up, and the last round also scores its model on its own
step), the paillier/plaintext ratio, bytes each node sent to the coordinator
per round, and the final AUCs; each round's wall time is in the JSON.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_hfl_rounds.py --source ../shared/data/bank-full.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedprop.apps.client_app import NodeConfig
from fedprop.apps.simulation import simulate
from fedprop.data.encoding import encoded_feature_names
from fedprop.data.loader import load_party
from fedprop.data.split import split_bank_marketing
from fedprop.federation import LocalFederation, local_federation
from fedprop.models.nets import build_model, parameter_count
from fedprop.protocols.hfl import HflNode, HflResult, InProcessTransport, run_hfl
from fedprop.spec import JobSpec

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"

MODELS: dict[str, dict[str, Any]] = {
    "logreg": {"kind": "logreg"},
    "mlp ~100k parameters": {"kind": "mlp", "hidden": [1024, 40]},
}


def run_simulation(spec: JobSpec, nodes: dict[str, NodeConfig], fed: LocalFederation) -> HflResult:
    """The job in Flower's Simulation Engine, as the demo runs it (every party logging)."""
    return simulate(spec, nodes, fed.manifest(), fed.coordinator())


def run_in_process(spec: JobSpec, nodes: dict[str, NodeConfig], fed: LocalFederation) -> HflResult:
    """The job over :class:`InProcessTransport`: each node's data loaded in this process."""
    parties = {
        c.party: HflNode(
            spec,
            dataclasses.replace(load_party(c.data_dir, spec.schema), name=c.party),
            c.settings(),
        )
        for c in nodes.values()
    }
    return run_hfl(spec, InProcessTransport(parties), fed.manifest())


ENGINES = {"simulation": run_simulation, "in-process": run_in_process}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/bank-full.csv"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", choices=sorted(MODELS), action="append", help="default: all")
    parser.add_argument("--out", type=Path, default=Path("bench/results/hfl_rounds.json"))
    args = parser.parse_args()
    base = JobSpec.load(SPEC)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {s.party: s.folder for s in split_bank_marketing(args.source, Path(tmp) / "parties")}
        fed = local_federation(Path(tmp) / "federation", "bench", base.parties)
        nodes = fed.node_configs(dirs, allow_plaintext=True, allow_model_release=True)
        for model_name in args.model or MODELS:
            model = MODELS[model_name]
            for engine, run in ENGINES.items():
                for mode in ("plaintext", "paillier"):
                    spec = base.with_overrides(
                        {
                            "model": model,
                            "job": {"aggregation": mode},
                            "train": {"rounds": args.rounds},
                        }
                    )
                    n_features = len(encoded_feature_names(spec.schema))
                    params = parameter_count(build_model(spec.model, n_features, 0))
                    result = run(spec, nodes, fed)
                    # Round 1 includes start-up and key set-up; the last round also
                    # scores its model on its own step and releases its metrics.
                    later = result.rounds[1:-1] or result.rounds
                    row = {
                        "model": model_name,
                        "parameters": params,
                        "engine": engine,
                        "mode": mode,
                        "median_round_seconds": statistics.median(r.seconds for r in later),
                        "bytes_per_node_per_round": statistics.median(
                            b for r in later for b in r.bytes_from.values()
                        ),
                        "auc": result.final.auc,
                        "round_seconds": [r.seconds for r in result.rounds],
                        "job_seconds": result.seconds,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print()
    print(
        "| model | parameters | engine | mode | median round (s) | ratio | "
        "bytes / node / round | AUC |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        plain = next(
            r
            for r in rows
            if (r["model"], r["engine"], r["mode"]) == (row["model"], row["engine"], "plaintext")
        )
        ratio = row["median_round_seconds"] / plain["median_round_seconds"]
        print(
            f"| {row['model']} | {row['parameters']:,} | {row['engine']} | {row['mode']} | "
            f"{row['median_round_seconds']:.2f} | {ratio:.2f} | "
            f"{row['bytes_per_node_per_round']:,.0f} | {row['auc']:.4f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
