"""What privacy logging costs a demo run: the same demo with every party's log on and off.

Runs the demo (``fedprop demo``: the four-bank federation in Flower's Simulation Engine,
the lab baselines, the report) alternately with logging on and off in one process; the
machine is shared, so runs are interleaved and medians compared. Reports the demo's wall
time and the federated job's both ways, the overhead, and the verification of the logs
the "on" runs wrote.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_audit_overhead.py --source ../shared/data/bank-full.csv
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from fedprop.demo import DemoConfig, run_demo

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/bank-full.csv"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/audit_overhead.json"))
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    last_audit: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for mode in ("on", "off"):
                cfg = DemoConfig(
                    spec_path=SPEC,
                    source=args.source,
                    data_dir=Path(tmp) / "parties",
                    out_dir=Path(tmp) / f"run-{mode}-{i}",
                    privacy_logs=mode == "on",
                )
                results = run_demo(cfg, Console(file=io.StringIO()))
                runs[mode].append(
                    {
                        "demo": results["timing"]["total_seconds"],
                        "job": results["timing"]["federation_seconds"],
                    }
                )
                if mode == "on":
                    last_audit = results["audit"]
                print(f"logging {mode}: {json.dumps(runs[mode][-1])}", flush=True)

    def median(mode: str, what: str) -> float:
        return statistics.median(r[what] for r in runs[mode])

    row: dict[str, Any] = {
        "repeats": args.repeats,
        "runs": runs,
        "demo_on": median("on", "demo"),
        "demo_off": median("off", "demo"),
        "job_on": median("on", "job"),
        "job_off": median("off", "job"),
        "audit_after_last_run": last_audit,
    }
    row["demo_overhead"] = row["demo_on"] / row["demo_off"] - 1
    row["job_overhead"] = row["job_on"] / row["job_off"] - 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=1))
    print(
        f"\ndemo run: {row['demo_on']:.2f} s with logging, {row['demo_off']:.2f} s without "
        f"({row['demo_overhead']:+.1%}); federated job alone: {row['job_on']:.2f} s vs "
        f"{row['job_off']:.2f} s ({row['job_overhead']:+.1%}). Logs after {args.repeats} "
        f"logged runs: {last_audit['entries']} entries, verified in "
        f"{last_audit['verify_seconds']:.2f} s, {len(last_audit['errors'])} errors."
    )


if __name__ == "__main__":
    main()
