"""Record-level DP-SGD in the four-bank horizontal job: federated test AUC and wall time.

On the real four-bank split of bank-full (``fedprop.data.split``), the shipped job spec
(``configs/bank-marketing-hfl.toml``: 20 rounds, 1 local epoch, batch 128, Adam 0.01,
2048-bit Paillier aggregation) runs in this process (``InProcessTransport``: the node and
coordinator code the Flower apps run, every node called in turn), for the logistic
regression and the (32, 16) MLP, without DP and with a ``[dp]`` table at each target
epsilon (per node, whole job, at ``--delta``), clipping norm ``--clip``.

For each target the noise multiplier is the smallest that keeps every bank within it
(``noise_multiplier_for`` on the bank with the fewest training rows, whose sampling
probability ``batch / rows`` is the largest); each bank's own spend
(``dp_training_spend``, the ledger's PLD epsilon) is recorded. DP runs draw their noise and
samples from the OS CSPRNG and cannot be replayed, so each is repeated ``--repeats`` times;
the run without DP is deterministic and runs once.

Reported: the federated test AUC the coordinator reads from the released histograms of
the last round (all four banks' test rows), and the job's wall time.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_dpsgd.py --source ../shared/data/bank-full.csv \\
        --output bench/results/dpsgd.md

The JSON figures go next to the Markdown (``dpsgd.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import opacus
import torch

from bench_audit import machine
from fedprop.data.loader import PartyData, load_party
from fedprop.data.split import split_bank_marketing
from fedprop.federation import LocalFederation, local_federation
from fedprop.privacy.dpsgd import (
    dp_training_spend,
    noise_multiplier_for,
    sample_rate,
    steps_per_epoch,
)
from fedprop.protocols.hfl import HflNode, InProcessTransport, run_hfl
from fedprop.spec import JobSpec

COMMAND = (
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 .venv/bin/python bench/bench_dpsgd.py "
    "--source ../shared/data/bank-full.csv --output bench/results/dpsgd.md"
)
SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"
MODELS: dict[str, dict[str, Any]] = {
    "logreg": {"kind": "logreg"},
    "mlp (32, 16)": {"kind": "mlp", "hidden": [32, 16]},
}
#: The noise multiplier is written in the spec to 1 / SIGMA_DIGITS.
SIGMA_DIGITS = 10_000
#: Stands for any coordinator key in the spends (the bench records nothing in a ledger).
COORDINATOR = "0" * 64


def run_job(
    spec: JobSpec, data: dict[str, PartyData], fed: LocalFederation, dirs: dict[str, Path]
) -> dict[str, float]:
    configs = fed.node_configs(dirs, allow_model_release=True)
    nodes = {p: HflNode(spec, data[p], configs[p].settings()) for p in spec.parties}
    started = time.perf_counter()
    result = run_hfl(spec, InProcessTransport(nodes), fed.manifest())
    return {"auc": result.final.auc, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/bank-full.csv"))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), action="append", help="default: all")
    parser.add_argument("--output", type=Path, default=Path("bench/results/dpsgd.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    base = JobSpec.load(SPEC)
    cfg = base.train
    results: dict[str, Any] = {
        "measured": datetime.date.today().isoformat(),
        "command": COMMAND,
        "machine": machine(),
        "versions": {
            "torch": torch.__version__,
            "opacus": opacus.__version__,
            "dp-accounting": importlib.metadata.version("dp-accounting"),
        },
        "spec": {
            "rounds": cfg.rounds,
            "local_epochs": cfg.local_epochs,
            "batch_size": cfg.batch_size,
            "learning_rate": cfg.learning_rate,
            "optimizer": cfg.optimizer.value,
            "aggregation": base.aggregation.value,
            "key_bits": base.key_bits,
        },
        "delta": args.delta,
        "clip": args.clip,
        "repeats": args.repeats,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {s.party: s.folder for s in split_bank_marketing(args.source, Path(tmp) / "p")}
        fed = local_federation(Path(tmp) / "federation", "bench", base.parties)
        data = {
            p: dataclasses.replace(load_party(dirs[p], base.schema), name=p) for p in base.parties
        }
        rows = {p: len(d.train) for p, d in data.items()}
        results["train_rows"] = rows
        results["test_rows"] = {p: len(d.test) for p, d in data.items()}
        fewest = min(rows.values())
        steps = cfg.rounds * cfg.local_epochs * steps_per_epoch(cfg.batch_size, fewest)
        levels = []
        for epsilon in args.epsilons:
            t0 = time.perf_counter()
            sigma = noise_multiplier_for(
                epsilon, args.delta, sample_rate(cfg.batch_size, fewest), steps
            )
            dp = {
                "epsilon": epsilon,
                "delta": args.delta,
                # rounded up: a smaller multiplier would overshoot the target
                "noise-multiplier": math.ceil(sigma * SIGMA_DIGITS) / SIGMA_DIGITS,
                "max-grad-norm": args.clip,
            }
            spec = base.with_overrides({"dp": dp})
            spends = {p: dp_training_spend(spec, COORDINATOR, n).epsilon for p, n in rows.items()}
            levels.append(
                {
                    "target_epsilon": epsilon,
                    "noise_multiplier": dp["noise-multiplier"],
                    "bank_epsilons": spends,
                    "bank_steps": {
                        p: cfg.rounds * cfg.local_epochs * steps_per_epoch(cfg.batch_size, n)
                        for p, n in rows.items()
                    },
                    "bank_sample_rates": {
                        p: sample_rate(cfg.batch_size, n) for p, n in rows.items()
                    },
                    "calibration_seconds": time.perf_counter() - t0,
                }
            )
            print(json.dumps(levels[-1]), flush=True)
        results["levels"] = levels
        for model_name in args.model or MODELS:
            model = {"model": MODELS[model_name]}
            plain = run_job(base.with_overrides(model), data, fed, dirs)
            row = {"model": model_name, "target_epsilon": None, **plain}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            for level in levels:
                dp = {
                    "epsilon": level["target_epsilon"],
                    "delta": args.delta,
                    "noise-multiplier": level["noise_multiplier"],
                    "max-grad-norm": args.clip,
                }
                spec = base.with_overrides({**model, "dp": dp})
                for repeat in range(args.repeats):
                    row = {
                        "model": model_name,
                        "target_epsilon": level["target_epsilon"],
                        "repeat": repeat,
                        **run_job(spec, data, fed, dirs),
                    }
                    results["runs"].append(row)
                    print(json.dumps(row), flush=True)
    results["bench_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.output.write_text(report(results))
    print(report(results))


def report(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["spec"]
    lines = [
        "# DP-SGD in the four-bank horizontal job (in process)",
        "",
        f"Measured {r['measured']} with:",
        "",
        "```bash",
        r["command"],
        "```",
        "",
        f"Machine: {m['nproc']} cores (`nproc`), {m['cpu']}, {m['ram']} RAM; {m['platform']}.",
        f"Python {m['python']}, torch {r['versions']['torch']}, opacus {r['versions']['opacus']}, "
        f"dp-accounting {r['versions']['dp-accounting']}. The machine is shared: compare wall "
        "times measured in this one run.",
        "",
        "Data: bank-full split into 4 banks by job group; training rows "
        + ", ".join(f"{p} {n:,}" for p, n in r["train_rows"].items())
        + "; test rows "
        + ", ".join(f"{p} {n:,}" for p, n in r["test_rows"].items())
        + ".",
        f"Job: the shipped spec ({s['rounds']} rounds, {s['local_epochs']} local epoch, batch "
        f"{s['batch_size']}, {s['optimizer']} {s['learning_rate']}, {s['aggregation']} "
        f"{s['key_bits']}-bit), the protocol run in this process, nodes one after the other.",
        f"DP: target epsilon per node for the whole job at delta {r['delta']:g}, clipping norm "
        f"{r['clip']:g}; the noise multiplier is the smallest that keeps the bank with the "
        "fewest rows (the largest sampling probability) within the target; the others spend "
        "less. Epsilons are the ledger's (dp-accounting PLD, Poisson-subsampled Gaussian).",
        "",
        "## Noise per target",
        "",
        "| target epsilon | noise multiplier | "
        + " | ".join(f"{p} epsilon (q, steps)" for p in r["train_rows"])
        + " |",
        "|---:|---:|" + "---:|" * len(r["train_rows"]),
    ]
    for level in r["levels"]:
        cells = [
            f"{level['bank_epsilons'][p]:.3f} ({level['bank_sample_rates'][p]:.4f}, "
            f"{level['bank_steps'][p]})"
            for p in r["train_rows"]
        ]
        lines.append(
            f"| {level['target_epsilon']:g} | {level['noise_multiplier']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        f"## Federated test AUC and job wall time ({r['repeats']} runs per DP setting)",
        "",
        "| model | DP | AUC (mean) | AUC (runs) | AUC change vs no DP | job wall time (s, mean) "
        "| time vs no DP |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    models = list(dict.fromkeys(row["model"] for row in r["runs"]))
    for model in models:
        rows = [row for row in r["runs"] if row["model"] == model]
        plain = next(row for row in rows if row["target_epsilon"] is None)
        targets = list(dict.fromkeys(row["target_epsilon"] for row in rows))
        for target in targets:
            group = [row for row in rows if row["target_epsilon"] == target]
            auc = statistics.mean(row["auc"] for row in group)
            seconds = statistics.mean(row["seconds"] for row in group)
            label = "none" if target is None else f"epsilon {target:g}"
            lines.append(
                f"| {model} | {label} | {auc:.4f} | "
                + ", ".join(f"{row['auc']:.4f}" for row in group)
                + f" | {auc - plain['auc']:+.4f} | {seconds:.1f} | "
                f"{seconds / plain['seconds']:.2f} |"
            )
    lines += [
        "",
        "Notes on method: AUC is the coordinator's, from the summed score histograms of all "
        "four banks' test rows after the last round. DP runs use the spec's learning rate, "
        "batch size and rounds unchanged and one clipping norm, with no tuning for DP. The "
        "wall time of a DP job includes Opacus' per-row gradients, the clipping, and the "
        "CSPRNG draws for the Poisson samples and the noise (and, in the first DP job, "
        "Opacus' import); Paillier aggregation is the same with and without DP.",
        "",
        f"Whole benchmark: {r['bench_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
