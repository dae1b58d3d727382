"""Cost of encrypted aggregation: round wall time and bytes, paillier vs plaintext.

Runs the demo's job in Flower's Simulation Engine on the four-bank split, in
both aggregation modes, one after the other in the same process (compare the
ratio: the machine is shared), for the shipped logistic regression and for an
MLP of about 100,000 parameters. Reports the median round wall time (rounds 2
onwards; round 1 includes start-up), the ratio, bytes each node sent per
round, and the final AUCs.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_hfl_rounds.py --source ../shared/data/bank-full.csv
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedprop.apps.simulation import simulate
from fedprop.data.encoding import encoded_feature_names
from fedprop.data.split import split_bank_marketing
from fedprop.federation import local_federation
from fedprop.models.nets import build_model, parameter_count
from fedprop.spec import JobSpec

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"

MODELS: dict[str, dict[str, Any]] = {
    "logreg": {"kind": "logreg"},
    "mlp ~100k parameters": {"kind": "mlp", "hidden": [768, 48]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/bank-full.csv"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/hfl_rounds.json"))
    args = parser.parse_args()
    base = JobSpec.load(SPEC)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {s.party: s.folder for s in split_bank_marketing(args.source, Path(tmp) / "parties")}
        fed = local_federation(Path(tmp) / "federation", "bench", base.parties)
        nodes = fed.node_configs(dirs, allow_plaintext=True, allow_model_release=True)
        for model_name, model in MODELS.items():
            for mode in ("plaintext", "paillier"):
                spec = base.with_overrides(
                    {"model": model, "job": {"aggregation": mode}, "train": {"rounds": args.rounds}}
                )
                n_features = len(encoded_feature_names(spec.schema))
                params = parameter_count(build_model(spec.model, n_features, 0))
                result = simulate(spec, nodes, fed.manifest())
                later = result.rounds[1:] or result.rounds
                row = {
                    "model": model_name,
                    "parameters": params,
                    "mode": mode,
                    "median_round_seconds": statistics.median(r.seconds for r in later),
                    "bytes_per_node_per_round": statistics.median(
                        b for r in later for b in r.bytes_from.values()
                    ),
                    "auc": result.final.auc,
                    "job_seconds": result.seconds,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| model | parameters | mode | median round (s) | ratio | bytes / node / round | AUC |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        plain = next(r for r in rows if r["model"] == row["model"] and r["mode"] == "plaintext")
        ratio = row["median_round_seconds"] / plain["median_round_seconds"]
        print(
            f"| {row['model']} | {row['parameters']:,} | {row['mode']} | "
            f"{row['median_round_seconds']:.2f} | {ratio:.2f} | "
            f"{row['bytes_per_node_per_round']:,.0f} | {row['auc']:.4f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
