"""Round wall time of the demo job: simulation vs a real deployment on loopback.

Splits bank-full into the four banks, then, in one run (compare ratios; the machine
is shared):

- ``simulation``: the job in Flower's Simulation Engine, as ``fedprop demo`` runs it;
- ``deployment``: the same job on :class:`LoopbackDeployment`: a SuperLink and four
  SuperNodes as separate processes on 127.0.0.1, TLS and node authentication, the
  job submitted with ``fedprop coordinator submit``'s code path; once with
  fedprop's node poll interval (0.25 s) and once with the SuperNode polling every
  3 s as Flower's own loop does when idle.

Reports the median round wall time (rounds 2 onwards), the time from ``fedprop node
start`` to the node being online at the SuperLink (first start, and a restart), the
time the SuperLink takes to accept connections, and the final AUC of each run.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_deployment.py --source ../shared/data/bank-full.csv \\
        --rounds 5 --output bench/results/deployment
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_audit import machine
from fedprop.apps.simulation import simulate
from fedprop.data.split import split_bank_marketing
from fedprop.deploy.loopback import LoopbackDeployment
from fedprop.federation import local_federation
from fedprop.spec import JobSpec

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"


def median_round(seconds: list[float]) -> float:
    """Median round time, leaving out round 1 (start-up and key set-up) when possible."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def run_simulation(spec: JobSpec, dirs: dict[str, Path], root: Path) -> dict[str, Any]:
    fed = local_federation(root / "sim-federation", "bench", spec.parties)
    started = time.perf_counter()
    result = simulate(
        spec, fed.node_configs(dirs, allow_model_release=True), fed.manifest(), fed.coordinator()
    )
    return {
        "engine": "simulation",
        "wall_seconds": time.perf_counter() - started,
        "round_seconds": [r.seconds for r in result.rounds],
        "median_round_seconds": median_round([r.seconds for r in result.rounds]),
        "auc": result.final.auc,
    }


def run_deployment(
    spec: JobSpec, job: Path, dirs: dict[str, Path], root: Path, poll: float
) -> dict[str, Any]:
    deployment = LoopbackDeployment(root, spec.parties, dirs, poll_interval=poll)
    deployment.prepare()
    try:
        superlink_ready = deployment.start_coordinator()
        for party in spec.parties:
            deployment.register(party)
        node_ready = [deployment.start_node(party) for party in spec.parties]
        deployment.stop(spec.parties[-1])
        restart_ready = deployment.start_node(spec.parties[-1])
        outcome, result = deployment.submit(job, timeout=3600)
        if not outcome.completed:
            raise SystemExit(f"the deployed job failed: {outcome}")
    finally:
        deployment.close()
    rounds = [r["seconds"] for r in result["rounds"]]
    return {
        "engine": f"deployment (node poll {poll} s)",
        "wall_seconds": outcome.seconds,
        "round_seconds": rounds,
        "median_round_seconds": median_round(rounds),
        "auc": result["final"]["auc"],
        "superlink_ready_seconds": superlink_ready,
        "node_start_to_online_seconds": node_ready,
        "node_restart_to_online_seconds": restart_ready,
    }


def render(results: list[dict[str, Any]], args: argparse.Namespace, m: dict[str, str]) -> str:
    sim = results[0]["median_round_seconds"]
    lines = [
        "# Round wall time: simulation vs deployment on loopback",
        "",
        f"Command: `.venv/bin/python bench/bench_deployment.py --source {args.source} "
        f"--rounds {args.rounds} --output {args.output}`",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}. The job: "
        f"`configs/bank-marketing-hfl.toml` (logistic regression, paillier, privacy logs) "
        f"with {args.rounds} rounds on the four-bank split of bank-full.",
        "",
        "| engine | median round (s) | vs simulation | job wall (s) | final AUC |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['engine']} | {r['median_round_seconds']:.2f} | "
            f"{r['median_round_seconds'] / sim:.1f}x | {r['wall_seconds']:.1f} | "
            f"{r['auc']:.4f} |"
        )
    lines += ["", "| deployment | SuperLink ready (s) | node start to online (s) | restart (s) |"]
    lines.append("|---|---|---|---|")
    for r in results[1:]:
        starts = ", ".join(f"{s:.1f}" for s in r["node_start_to_online_seconds"])
        lines.append(
            f"| {r['engine']} | {r['superlink_ready_seconds']:.1f} | {starts} | "
            f"{r['node_restart_to_online_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="bank-full.csv")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, help="write <output>.md and <output>.json")
    parser.add_argument(
        "--polls", type=float, nargs="+", default=[0.25, 3.0], help="node poll intervals"
    )
    args = parser.parse_args()
    spec = JobSpec.load(SPEC).with_overrides({"train": {"rounds": args.rounds}})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = root / "job.toml"
        job.write_text(spec.text, encoding="utf-8")
        dirs = {s.party: s.folder for s in split_bank_marketing(args.source, root / "parties")}
        results = [run_simulation(spec, dirs, root)]
        print(json.dumps(results[-1]), flush=True)
        for poll in args.polls:
            results.append(run_deployment(spec, job, dirs, root / f"poll-{poll}", poll))
            print(json.dumps(results[-1]), flush=True)
    m = machine()
    text = render(results, args, m)
    print(text)
    if args.output:
        args.output.with_suffix(".md").write_text(text, encoding="utf-8")
        payload = {"machine": m, "rounds": args.rounds, "results": results}
        args.output.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
