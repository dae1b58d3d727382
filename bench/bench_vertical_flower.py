"""``fedprop demo --vertical`` through Flower, against the same job in one process.

For each shipped vertical job spec (bank-marketing and default-credit, as shipped: 2048-bit
Paillier, batches of 2,000, up to 5 epochs with the spec's early stop), in one run:

- the demo as a user runs it (``run_vertical_demo``): data prepared, every party's node in
  Flower's Simulation Engine behind its privacy log and policy gate, training, joint
  scoring of the bank's customers, every log verified; its wall time, seconds per epoch,
  hops and the AUC the bank released;
- the same training in this process with :class:`InProcessTransport` (each message to a
  node rebuilt from its folders, no log, no Flower, one process for the Paillier work as
  in a node): seconds per epoch, so the ratio shows what Flower, the logs and the policy
  gate add per epoch.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_vertical_flower.py --source ../shared/data \\
        --output bench/results/vertical_flower.md
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from bench_audit import machine
from fedprop.crypto.identity import load_identity
from fedprop.data.vertical import prepare_vertical
from fedprop.federation import local_federation
from fedprop.joint import DATA_SEED, run_vertical_demo
from fedprop.protocols.vertical import (
    InProcessTransport,
    VerticalNode,
    VerticalResult,
    VerticalSettings,
    VerticalSpec,
    run_vertical,
)

COMMAND = (
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 .venv/bin/python "
    "bench/bench_vertical_flower.py --source ../shared/data "
    "--output bench/results/vertical_flower.md"
)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPECS = {
    "bank-marketing": CONFIGS / "bank-marketing-vfl.toml",
    "default-credit": CONFIGS / "default-credit-vfl.toml",
}


def in_process(spec_path: Path, layout: str, source: Path, root: Path) -> VerticalResult:
    """The spec's training with every node rebuilt per message, in this process."""
    spec = VerticalSpec.load(spec_path)
    prepare_vertical(layout, source, root / "data", DATA_SEED)
    federation = local_federation(root / "federation", "bench", spec.members)
    manifest = federation.manifest()

    def builder(party: str) -> Callable[[], VerticalNode]:
        def build() -> VerticalNode:
            return VerticalNode(
                VerticalSettings(
                    identity=load_identity(federation.key_dirs[party]),
                    manifest=manifest,
                    data_dir=root / "data" / party,
                    state_dir=root / "state" / party,
                    model_dir=root / "models" / party,
                )
            )

        return build

    transport = InProcessTransport({p: builder(p) for p in spec.members})
    return run_vertical(spec, transport, manifest)


def per_epoch(result: VerticalResult) -> float:
    """Median seconds of the epochs after the first (which also closes alignment)."""
    later = [e.seconds for e in result.epochs[1:]] or [e.seconds for e in result.epochs]
    return statistics.median(later)


def run(layout: str, source: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        trained, scored = run_vertical_demo(
            SPECS[layout], source, Path(tmp) / "demo", Console(file=io.StringIO())
        )
        demo_seconds = time.perf_counter() - started
        flower = trained.result
        assert isinstance(flower, VerticalResult)
        local = in_process(SPECS[layout], layout, source, Path(tmp) / "local")
    return {
        "layout": layout,
        "demo_seconds": demo_seconds,
        "flower": {
            "seconds": flower.seconds,
            "psi_seconds": flower.psi_seconds,
            "epochs": len(flower.epochs),
            "per_epoch": per_epoch(flower),
            "hops": flower.hops,
            "hops_per_epoch": flower.epochs[-1].hops,
            "mb": flower.bytes / 1e6,
            "auc": flower.metrics["auc"],
            "intersection": flower.intersection,
            "score_seconds": scored.result.seconds,
        },
        "in_process": {
            "seconds": local.seconds,
            "epochs": len(local.epochs),
            "per_epoch": per_epoch(local),
            "auc": local.metrics["auc"],
        },
    }


def report(rows: list[dict[str, Any]], load: tuple[float, float]) -> str:
    m = machine()
    lines = [
        "# `fedprop demo --vertical` through Flower vs the same job in one process",
        "",
        f"Measured {datetime.date.today().isoformat()} with:",
        "",
        f"```bash\n{COMMAND}\n```",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram']} RAM; {m['platform']}. Python "
        f"{m['python']}. Load average (1 min) {load[0]:.2f} before, "
        f"{load[1]:.2f} after: the machine is shared.",
        "",
        "Shipped specs (2048-bit Paillier, batches of 2,000, up to 5 epochs, the spec's early "
        "stop). Flower: the demo as a user runs it (Simulation Engine, privacy logs, policy "
        "gate, a node rebuilt from disk for every message, joint scoring, logs verified). In "
        "process: the same training, nodes rebuilt per message, no Flower, no logs; one "
        "process does each party's Paillier work in both.",
        "",
        "| data | aligned | demo wall time | training (Flower) | s/epoch Flower | "
        "s/epoch in process | ratio | hops/epoch | MB relayed | epochs | AUC Flower | "
        "AUC in process | scoring |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, p = r["flower"], r["in_process"]
        lines.append(
            f"| {r['layout']} | {f['intersection']:,} | {r['demo_seconds']:.1f} s | "
            f"{f['seconds']:.1f} s | {f['per_epoch']:.1f} | {p['per_epoch']:.1f} | "
            f"{f['per_epoch'] / p['per_epoch']:.2f} | {f['hops_per_epoch']} | {f['mb']:.0f} | "
            f"{f['epochs']} | {f['auc']:.4f} | {p['auc']:.4f} | {f['score_seconds']:.1f} s |"
        )
    lines += [
        "",
        "Each run aligns anew (a fresh random order), so each has its own held-out rows: the "
        "two AUCs are of different held-out samples. Quality against scikit-learn on the "
        "joined columns is in `vertical.md`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data"))
    parser.add_argument("--layouts", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--output", type=Path, help="write Markdown here and JSON beside it")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    rows = []
    for layout in args.layouts:
        rows.append(run(layout, args.source))
        print(json.dumps(rows[-1]), flush=True)
    text = report(rows, (before, os.getloadavg()[0]))
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        args.output.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
