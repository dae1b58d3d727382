"""What privacy logging costs a demo run: the same job with every party's log on and off.

Runs the demo's job (four banks, the shipped spec, paillier) in Flower's Simulation
Engine, alternating logging on and off in one process (the machine is shared, so the
runs are interleaved and the medians compared), and verifies the logs written by the
"on" runs. Reports the job's wall time both ways and the overhead.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_audit_overhead.py --source ../shared/data/bank-full.csv
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fedprop.apps.audit import log_path, verify_logs
from fedprop.apps.simulation import simulate
from fedprop.data.split import split_bank_marketing
from fedprop.federation import COORDINATOR_NAME, local_federation
from fedprop.spec import JobSpec

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/bank-full.csv"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/audit_overhead.json"))
    args = parser.parse_args()
    spec = JobSpec.load(SPEC)
    times: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {s.party: s.folder for s in split_bank_marketing(args.source, Path(tmp) / "parties")}
        fed = local_federation(Path(tmp) / "federation", "bench", spec.parties)
        nodes = fed.node_configs(dirs, allow_model_release=True)
        manifest = fed.manifest()
        for _ in range(args.repeats):
            for mode in ("on", "off"):
                started = time.perf_counter()
                simulate(spec, nodes, manifest, fed.coordinator() if mode == "on" else None)
                times[mode].append(time.perf_counter() - started)
                print(f"logging {mode}: {times[mode][-1]:.2f} s", flush=True)
        names = [*spec.parties, COORDINATOR_NAME]
        started = time.perf_counter()
        verdict = verify_logs(manifest, [log_path(fed.audit_dir, n) for n in names])
        verify_seconds = time.perf_counter() - started
        entries = sum(r.entries for r in verdict.logs)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    row: dict[str, Any] = {
        "rounds": spec.train.rounds,
        "runs": times,
        "median_on_seconds": on,
        "median_off_seconds": off,
        "overhead": on / off - 1,
        "log_entries_after_runs": entries,
        "verify_seconds": verify_seconds,
        "verified": verdict.ok,
    }
    print(json.dumps(row, indent=1))
    print(
        f"\nlogging overhead: {row['overhead']:+.1%} of the job's wall time "
        f"(median {on:.2f} s on, {off:.2f} s off); {len(names)} logs, {entries} entries "
        f"after {args.repeats} jobs, verified in {verify_seconds:.2f} s: "
        f"{'OK' if verdict.ok else 'FAILED'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
