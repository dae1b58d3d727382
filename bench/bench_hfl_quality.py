"""Federated vs centralized vs local quality on the four-bank split, over several splits.

One bank's test rows number 1,000 to 3,000, so one split's AUC differences of a
few thousandths are noise. This benchmark repeats the comparison over several
train/test split seeds and reports, per bank, the mean and spread of
(federated AUC - local AUC) on the bank's own test rows, and per split how many
banks the federated model matched or beat, for each model variant.

It runs the protocol in one process (``InProcessTransport``), in ``plaintext``
mode: the same node and coordinator code the Flower apps run, without the
Simulation Engine's start-up or the encryption (``tests/test_simulation.py``
checks that a Flower run gives the same model, ``tests/test_protocol_hfl.py``
that ``paillier`` does).

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_hfl_quality.py --source ../shared/data/bank-full.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedprop.data.encoding import local_stats
from fedprop.data.loader import load_party
from fedprop.data.split import split_bank_marketing
from fedprop.federation import LocalFederation, local_federation
from fedprop.models.baselines import federated_model, train_on
from fedprop.protocols.hfl import HflNode, InProcessTransport, run_hfl
from fedprop.spec import JobSpec

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"

VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "logreg": {},
    "logreg, balanced": {"train": {"class-weighting": "balanced"}},
    "mlp": {"model": {"kind": "mlp"}},
}


def without_age_bands(spec: JobSpec) -> JobSpec:
    """The spec with age as a single linear feature (the variant before bands)."""
    text = spec.text.replace("bands = [25, 30, 40, 50, 60]", "", 1)
    return JobSpec.from_toml(text, "without age bands")


def compare(spec: JobSpec, dirs: dict[str, Path], fed_keys: LocalFederation) -> dict[str, Any]:
    configs = fed_keys.node_configs(dirs, allow_plaintext=True, allow_model_release=True)
    nodes = {
        p: HflNode(
            spec,
            dataclasses.replace(load_party(dirs[p], spec.schema), name=p),
            configs[p].settings(),
        )
        for p in spec.parties
    }
    started = time.perf_counter()
    result = run_hfl(spec, InProcessTransport(nodes), fed_keys.manifest())
    seconds = time.perf_counter() - started
    assert result.weights is not None  # the spec releases the model, every node allows it
    parties = [n.data for n in nodes.values()]
    bins = spec.evaluate.histogram_bins
    stats = np.sum([local_stats(p.train, spec.schema) for p in parties], axis=0)
    fed = federated_model(spec, stats, result.weights)
    pooled = pd.concat([p.test for p in parties], ignore_index=True)
    central = train_on(spec, [p.train for p in parties]).metrics(pooled, bins).auc
    own = {
        p.name: (fed.metrics(p.test, bins).auc, train_on(spec, [p.train]).metrics(p.test, bins).auc)
        for p in parties
    }
    return {"fed": result.final.auc, "central": central, "own": own, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/bank-full.csv"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=Path("bench/results/hfl_quality.json"))
    args = parser.parse_args()
    base = JobSpec.load(SPEC).with_overrides({"job": {"aggregation": "plaintext"}})
    specs = {name: base.with_overrides(ov) for name, ov in VARIANTS.items()}
    specs["logreg, linear age"] = without_age_bands(base)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}
    with tempfile.TemporaryDirectory() as tmp:
        fed_keys = local_federation(Path(tmp) / "federation", "quality", base.parties)
        for seed in args.seeds:
            summaries = split_bank_marketing(args.source, Path(tmp) / str(seed), seed=seed)
            dirs = {s.party: s.folder for s in summaries}
            for name, spec in specs.items():
                r = compare(spec, dirs, fed_keys)
                runs[name].append(r)
                wins = sum(f >= loc for f, loc in r["own"].values())
                print(
                    f"seed {seed} {name:20s} fed {r['fed']:.4f} central {r['central']:.4f} "
                    f"gap {r['fed'] - r['central']:+.4f} wins {wins}/4 ({r['seconds']:.1f} s)",
                    flush=True,
                )
    print()
    print(
        "| variant | fed AUC | central AUC | max abs gap | banks won per split | "
        + " | ".join(f"{p} fed-local (mean ± sd)" for p in base.parties)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(base.parties))
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        diffs = {p: [r["own"][p][0] - r["own"][p][1] for r in rs] for p in base.parties}
        wins = [sum(f >= loc for f, loc in r["own"].values()) for r in rs]
        gap = max(abs(r["fed"] - r["central"]) for r in rs)
        cells = [
            f"{statistics.mean(d):+.4f} ± {statistics.stdev(d) if len(d) > 1 else 0:.4f}"
            for d in diffs.values()
        ]
        print(
            f"| {name} | {statistics.mean(r['fed'] for r in rs):.4f} | "
            f"{statistics.mean(r['central'] for r in rs):.4f} | {gap:.4f} | "
            f"{', '.join(map(str, wins))} | " + " | ".join(cells) + " |"
        )
        summary[name] = {"runs": rs, "wins": wins, "max_gap": gap}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": platform.platform(), "seeds": args.seeds, "variants": summary},
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
