"""What privacy logging costs a demo run: the same demo with every party's log on and off.

Runs the demo (``fedprop demo``: the four-bank federation in Flower's Simulation Engine,
the lab baselines, the report, and with logging on the verification of every log)
alternately with logging on and off in one process. Every run starts from a fresh
federation folder, as a first ``fedprop demo`` does (the banks' data is split once, and
copied in before the clock starts), so the logs of earlier runs never weigh on a later
one. One run of each mode first warms the process up and is not counted. The machine is
shared, so the two modes alternate which goes first in each pair, and the medians and
the median of the pairs' ratios are compared. Reports the demo's
wall time and the federated job's both ways, the overhead, and the verification of the
last run's logs.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_audit_overhead.py --source ../shared/data/bank-full.csv
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from bench_audit import machine
from fedprop.demo import DemoConfig, ensure_split, run_demo
from fedprop.spec import JobSpec

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"
COMMAND = (
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 .venv/bin/python "
    "bench/bench_audit_overhead.py --source ../shared/data/bank-full.csv"
)
#: The bar: logging may cost at most this fraction of a demo run's wall time.
BAR = 0.05
MODES = ("on", "off")


def _run(source: Path, template: Path, run_dir: Path, logging_on: bool) -> dict[str, Any]:
    """One demo run in a fresh folder (data copied in first); its timings and audit."""
    shutil.copytree(template, run_dir / "parties")
    cfg = DemoConfig(
        spec_path=SPEC,
        source=source,
        data_dir=run_dir / "parties",
        out_dir=run_dir / "out",
        privacy_logs=logging_on,
    )
    load = os.getloadavg()[0]
    results = run_demo(cfg, Console(file=io.StringIO()))
    shutil.rmtree(run_dir)
    return {
        "demo": results["timing"]["total_seconds"],
        "job": results["timing"]["federation_seconds"],
        # Rounds 2 to R: the steady state (round 1 also pays each worker's first training).
        "rounds": sum(r["seconds"] for r in results["rounds"][1:]),
        "load_before": load,
        "audit": results["audit"],
    }


def _markdown(row: dict[str, Any]) -> str:
    m = row["machine"]
    lines = [
        "# What privacy logging costs a demo run",
        "",
        f"Command: `{row['command']}`",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram']}, Python {m['python']}, "
        f"{m['platform']}; shared with other work (1-minute load average before each run "
        "in the JSON).",
        "",
        f"`fedprop demo` on bank-full (4 banks, 20 rounds, Paillier), {row['repeats']} runs "
        "with every party logging and as many without, in pairs that alternate which runs "
        "first, after one uncounted warm-up run of each; each run in a fresh federation "
        "folder.",
        "",
        "| | logging on | logging off | overhead |",
        "|---|---:|---:|---:|",
        f"| demo run (median s) | {row['demo_on']:.2f} | {row['demo_off']:.2f} | "
        f"{row['demo_overhead']:+.1%} |",
        f"| federated job alone (median s) | {row['job_on']:.2f} | {row['job_off']:.2f} | "
        f"{row['job_overhead']:+.1%} |",
        f"| rounds 2 to 20 (median s) | {row['rounds_on']:.2f} | {row['rounds_off']:.2f} | "
        f"{row['rounds_overhead']:+.1%} |",
        "",
        f"Median of the {row['repeats']} pairs' ratios: demo {row['demo_pair_overhead']:+.1%}, "
        f"job {row['job_pair_overhead']:+.1%}, rounds {row['rounds_pair_overhead']:+.1%}; "
        "pairs' demo overheads from "
        f"{min(row['demo_pair_overheads']):+.1%} to {max(row['demo_pair_overheads']):+.1%}.",
        f"Bar: at most {BAR:.0%} of a demo run's wall time: "
        f"{'met' if row['demo_overhead'] <= BAR else 'not met'}.",
        "",
        f"The last logged run's logs: {row['audit']['entries']} entries, verified in "
        f"{row['audit']['verify_seconds']:.2f} s, {len(row['audit']['errors'])} findings.",
        "",
        "| pair | first | demo on (s) | demo off (s) | job on (s) | job off (s) "
        "| rounds on (s) | rounds off (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (on, off) in enumerate(zip(row["runs"]["on"], row["runs"]["off"], strict=True)):
        first = MODES[i % 2]
        lines.append(
            f"| {i + 1} | {first} | {on['demo']:.2f} | {off['demo']:.2f} | "
            f"{on['job']:.2f} | {off['job']:.2f} | {on['rounds']:.2f} | {off['rounds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/bank-full.csv"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results/audit_overhead"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    parties = JobSpec.load(SPEC).parties
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "split"
        ensure_split(args.source, template, parties, Console(file=io.StringIO()))
        for mode in MODES:  # warm-up: the process's first runs pay one-time imports
            _run(args.source, template, Path(tmp) / f"warm-up-{mode}", mode == "on")
        for i in range(args.repeats):
            order = MODES if i % 2 == 0 else MODES[::-1]
            for mode in order:
                run = _run(args.source, template, Path(tmp) / f"run-{i}-{mode}", mode == "on")
                runs[mode].append(run)
                shown = {k: round(v, 2) for k, v in run.items() if k != "audit"}
                print(f"pair {i + 1}, logging {mode}: {json.dumps(shown)}", flush=True)

    def median(mode: str, what: str) -> float:
        return float(statistics.median(r[what] for r in runs[mode]))

    def pair_overheads(what: str) -> list[float]:
        return [on[what] / off[what] - 1 for on, off in zip(runs["on"], runs["off"], strict=True)]

    row: dict[str, Any] = {
        "command": COMMAND,
        "machine": machine(),
        "repeats": args.repeats,
        "runs": {m: [{k: v for k, v in r.items() if k != "audit"} for r in runs[m]] for m in MODES},
        "audit": {k: v for k, v in runs["on"][-1]["audit"].items() if k != "logs"},
    }
    for what in ("demo", "job", "rounds"):
        row[f"{what}_on"], row[f"{what}_off"] = median("on", what), median("off", what)
        row[f"{what}_overhead"] = row[f"{what}_on"] / row[f"{what}_off"] - 1
        row[f"{what}_pair_overheads"] = pair_overheads(what)
        row[f"{what}_pair_overhead"] = statistics.median(row[f"{what}_pair_overheads"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(row, indent=1) + "\n")
    report = _markdown(row)
    args.out.with_suffix(".md").write_text(report)
    print("\n" + report)


if __name__ == "__main__":
    main()
