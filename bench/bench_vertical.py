"""The whole vertical job (``vfl-train``, then ``vfl-score``) in process, on default credit
(or, with ``--layout bank-marketing``, on bank-full split by columns).

FATE's vertical default-credit split written with ``prepare_vertical("default-credit")``
(the bank keeps all 30,000 customers with the label and 13 columns; the partner loses a
seeded 5-10% of them and holds 10 columns; every party's rows in its own order), the
shipped job spec (``configs/default-credit-vfl.toml``: 2048-bit Paillier, batches of
2,000) with ``--epochs`` epochs and no early stop. Every message goes to a node rebuilt
from its folders (data, state, model), as a SuperNode's fresh ClientApp process would; all
parties share this process and one pool of worker processes for the Paillier work.

Reports, in one run:

- seconds of the channel handshake and the PSI (the coordinator learns the intersection
  size), seconds per epoch, hops (coordinator request-reply exchanges) per epoch, bytes
  through the coordinator (total and per epoch), and where the nodes' time goes per step;
- the test AUC the guest released for the held-out aligned rows, against scikit-learn's
  LogisticRegression (``max_iter=3000``) on the joined columns of the same rows and on
  the guest's columns alone;
- the same job in plaintext mode (the baseline): time per epoch and its AUC;
- a ``vfl-score`` run of the trained model over the bank's customers the partner holds;
- what a fresh process per message adds: building the Paillier encryption table of the
  job's key, which every message that encrypts pays once in a new process.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_vertical.py --source ../shared/data \\
        --output bench/results/vertical.md

The JSON figures go next to the Markdown (``vertical.json``).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from bench_audit import machine
from fedprop.crypto.identity import Manifest, NodeIdentity, generate_identity
from fedprop.crypto.paillier import _FixedBase, encrypt_batch, generate_keypair
from fedprop.data.vertical import prepare_vertical
from fedprop.protocols.vertical import (
    InProcessTransport,
    NodeJobState,
    Reply,
    Request,
    ScoreSpec,
    VerticalNode,
    VerticalResult,
    VerticalSettings,
    VerticalSpec,
    VStep,
    run_vertical,
    run_vertical_score,
)

COMMAND = (
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 .venv/bin/python "
    "bench/bench_vertical.py --source ../shared/data --output bench/results/vertical.md"
)
COMMAND_BANK = (
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 .venv/bin/python "
    "bench/bench_vertical.py --source ../shared/data --layout bank-marketing "
    "--output bench/results/vertical_bank.md"
)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: The shipped spec of each example federation (``--layout``), and how its data is described.
LAYOUTS = {
    "default-credit": "FATE's vertical default-credit split",
    "bank-marketing": "UCI bank-full split by columns (bank: 8 columns and the label; "
    "partner: 7 campaign columns; customer id = row)",
}
GUEST, HOST = "bank", "partner"


class Bench:
    """The two parties' folders and identities, a timed transport that keeps copies of
    the aligned matrices (for the scikit-learn comparison only)."""

    def __init__(
        self, root: Path, source: Path, executor: Executor | None, workers: int, layout: str
    ) -> None:
        self.root = root
        self.layout = layout
        started = time.perf_counter()
        self.summaries = prepare_vertical(layout, source, root / "data", seed=1)
        self.prepare_seconds = time.perf_counter() - started
        self.identities: dict[str, NodeIdentity] = {p: generate_identity(p) for p in (GUEST, HOST)}
        self.manifest = Manifest("bench", tuple(i.public for i in self.identities.values()))
        self.executor = executor
        self.workers = workers
        self.node_seconds: dict[str, float] = defaultdict(float)
        self.arrays: dict[tuple[str, str], np.ndarray] = {}

    def settings(self, party: str) -> VerticalSettings:
        return VerticalSettings(
            identity=self.identities[party],
            manifest=self.manifest,
            data_dir=self.root / "data" / party,
            state_dir=self.root / "state" / party,
            model_dir=self.root / "models" / party,
            output_dir=self.root / "out" / party,
            allow_plaintext=True,
            executor=self.executor,
            workers=self.workers,
        )

    def transport(self, job: str) -> InProcessTransport:
        def builder(party: str) -> Callable[[], VerticalNode]:
            return lambda: VerticalNode(self.settings(party))

        def observe(step: VStep, party: str, request: Request, reply: Reply | None) -> None:
            state = NodeJobState(self.root / "state" / party, job)
            for name in ("x-train", "x-test", "y-train", "y-test"):
                if (job, f"{party}/{name}") not in self.arrays and state.has(name):
                    self.arrays[(job, f"{party}/{name}")] = np.load(io.BytesIO(state.get(name)))

        transport = InProcessTransport({p: builder(p) for p in self.identities}, observe)
        original = transport.broadcast

        def timed(
            step: VStep, request: Request, to: Sequence[str] | None = None
        ) -> Mapping[str, Reply]:
            started = time.perf_counter()
            try:
                return original(step, request, to)
            finally:
                self.node_seconds[step.value] += time.perf_counter() - started

        transport.broadcast = timed  # type: ignore[method-assign]
        return transport

    def array(self, job: str, party: str, name: str) -> np.ndarray:
        return self.arrays[(job, f"{party}/{name}")]


def spec_text(layout: str, job: str, mode: str, epochs: int) -> str:
    text = (CONFIGS / f"{layout}-vfl.toml").read_text(encoding="utf-8")
    replacements = {
        f'id = "{layout}-vfl"': f'id = "{job}"',
        'aggregation = "paillier"': f'aggregation = "{mode}"',
        "max-epochs = 5": f"max-epochs = {epochs}",
        "tolerance = 0.0001": "tolerance = 0.0",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def baselines(bench: Bench, job: str) -> dict[str, float]:
    """scikit-learn on the same training and held-out rows: joined columns, guest alone."""

    def fit(columns: Sequence[str]) -> float:
        x = {
            p: np.hstack([bench.array(job, c, f"x-{p}") for c in columns])
            for p in ("train", "test")
        }
        model = LogisticRegression(max_iter=3000).fit(
            x["train"], bench.array(job, GUEST, "y-train")
        )
        return float(
            roc_auc_score(bench.array(job, GUEST, "y-test"), model.decision_function(x["test"]))
        )

    return {"sklearn_joined": fit([GUEST, HOST]), "sklearn_guest_alone": fit([GUEST])}


def train(bench: Bench, job: str, mode: str, epochs: int) -> tuple[VerticalResult, dict[str, Any]]:
    bench.node_seconds.clear()
    spec = VerticalSpec.from_toml(spec_text(bench.layout, job, mode, epochs))
    result = run_vertical(
        spec,
        bench.transport(job),
        bench.manifest,
        progress=lambda e: print(
            f"  {mode} epoch {e.epoch}: {e.seconds:.1f} s, loss {e.loss:.6f}, {e.hops} hops",
            flush=True,
        ),
    )
    figures = {
        "intersection": result.intersection,
        "train_rows": result.train_rows,
        "test_rows": result.test_rows,
        "setup_seconds": result.setup_seconds,
        "psi_seconds": result.psi_seconds,
        "seconds": result.seconds,
        "hops": result.hops,
        "hops_by_step": dict(result.hops_by_step),
        "bytes": result.bytes,
        "epochs": [
            {
                "epoch": e.epoch,
                "loss": e.loss,
                "seconds": e.seconds,
                "batches": e.batches,
                "hops": e.hops,
                "bytes": e.bytes,
            }
            for e in result.epochs
        ],
        "metrics": dict(result.metrics),
        "node_seconds": dict(bench.node_seconds),
        **baselines(bench, job),
    }
    return result, figures


def score(bench: Bench, model: str) -> dict[str, Any]:
    text = f"""
[job]
id = "{model}-score"
type = "vfl-score"
guest = "{GUEST}"
hosts = ["{HOST}"]
model = "{model}"
min-intersection = 1000
"""
    result = run_vertical_score(
        ScoreSpec.from_toml(text), bench.transport(f"{model}-score"), bench.manifest
    )
    listed = (bench.root / "out" / GUEST / f"{model}-score.csv").read_text().count("\n") - 1
    return {
        "rows": result.rows,
        "intersection": result.intersection,
        "seconds": result.seconds,
        "hops": result.hops,
        "bytes": result.bytes,
        "target_list_rows": listed,
    }


def report(r: dict[str, Any]) -> str:
    m, p, s = r["machine"], r["paillier"], r["plaintext"]
    steady = p["epochs"][1:] or p["epochs"]
    per_epoch = float(np.median([e["seconds"] for e in p["epochs"]]))
    plain_epoch = float(np.median([e["seconds"] for e in s["epochs"]]))
    lines = [
        f"# Vertical job end to end (vfl-train, vfl-score), {r['layout']}, in process",
        "",
        f"Measured {r['date']} with:",
        "",
        "```bash",
        r["command"],
        "```",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram']} RAM; {m['platform']}. "
        f"Python {m['python']}. Load average (1 min) {r['load_before']:.2f} before, "
        f"{r['load_after']:.2f} after: the machine is shared.",
        "",
        f"Data: {LAYOUTS[r['layout']]} via `prepare_vertical` (seed 1): bank "
        f"{r['rows'][GUEST]:,} customers, partner {r['rows'][HOST]:,}; each party's rows "
        f"in its own order. Job: `configs/{r['layout']}-vfl.toml`, "
        f"{r['epochs']} epochs, no early stop, 2048-bit Paillier; {r['workers']} worker processes "
        "shared by both parties. Every message runs on a node rebuilt from its folders.",
        "",
        "## Speed and traffic (paillier)",
        "",
        f"- Handshake + PSI: **{p['psi_seconds']:.1f} s** (intersection {p['intersection']:,}: "
        f"{p['train_rows']:,} training rows, {p['test_rows']:,} held out); arbiter key "
        f"generation {p['setup_seconds']:.2f} s.",
        f"- **{per_epoch:.1f} s per epoch** (median; plaintext: {plain_epoch:.2f} s).",
        f"- Hops per epoch: **{steady[0]['hops']}** for {steady[0]['batches']} batches (three "
        f"per batch; the first epoch also counts the two hops that close it: "
        f"{p['epochs'][0]['hops']}). Whole job: {p['hops']} hops.",
        f"- Bytes through the coordinator: {p['bytes'] / 1e6:.1f} MB in all, "
        f"{float(np.median([e['bytes'] for e in p['epochs']])) / 1e6:.1f} MB per epoch "
        f"(plaintext: {s['bytes'] / 1e6:.1f} MB in all).",
        f"- Whole job: {p['seconds']:.1f} s.",
        "",
        "| epoch | seconds | loss | batches | hops | MB through the coordinator |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {e['epoch']} | {e['seconds']:.1f} | {e['loss']:.6f} | {e['batches']} | "
            f"{e['hops']} | {e['bytes'] / 1e6:.2f} |"
            for e in p["epochs"]
        ),
        "",
        "Node time by step (all parties, whole job, paillier):",
        "",
        "| step | hops | seconds |",
        "|---|---:|---:|",
        *(
            f"| `{step}` | {p['hops_by_step'].get(step, 0)} | {sec:.2f} |"
            for step, sec in sorted(p["node_seconds"].items(), key=lambda kv: -kv[1])
        ),
        "",
        f"A fresh process per message (a deployed SuperNode) also builds the encryption table "
        f"of the job's key before its first encryption: {r['table_seconds']:.2f} s, once in each "
        f"message that encrypts (per batch: a host's forward and masked gradient, the guest's "
        f"residuals): about {r['table_seconds'] * 3 * steady[0]['batches']:.1f} s per epoch "
        "here, spread over the parties. The bench's worker pool lives for the whole run and "
        f"keeps its tables; starting {r['workers']} worker processes and building their tables "
        f"took {r['pool_seconds']:.2f} s, which a node running each message in a fresh process "
        "would pay per message that uses a pool (or it encrypts in one process).",
        "",
        "## Quality (AUC of the held-out aligned rows)",
        "",
        "Each run aligns anew (a fresh random order), so each has its own held-out rows; the "
        "scikit-learn models (LogisticRegression, max_iter 3000) are trained on the same "
        "training rows and scored on the same held-out rows as the run in their line.",
        "",
        "| run | vertical (released by the guest) | scikit-learn, joined columns | "
        "scikit-learn, guest's columns alone | vertical - joined | vertical - guest alone |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {x['metrics']['auc']:.4f} | {x['sklearn_joined']:.4f} | "
            f"{x['sklearn_guest_alone']:.4f} | {x['metrics']['auc'] - x['sklearn_joined']:+.4f} | "
            f"{x['metrics']['auc'] - x['sklearn_guest_alone']:+.4f} |"
            for name, x in (("paillier", p), ("plaintext", s))
        ),
        "",
        f"Also released (paillier): KS {p['metrics']['ks']:.4f}, lift at 10% "
        f"{p['metrics']['lift_10']:.2f}, at 20% {p['metrics']['lift_20']:.2f}.",
        "",
        "## Joint scoring (vfl-score)",
        "",
        f"{r['score']['rows']:,} customers scored (handshake, PSI and partial scores) in "
        f"{r['score']['seconds']:.1f} s, {r['score']['hops']} hops, "
        f"{r['score']['bytes'] / 1e6:.1f} MB through the coordinator; the target list at the "
        f"bank has {r['score']['target_list_rows']:,} rows. The coordinator learned the two "
        "counts.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--layout", choices=list(LAYOUTS), default="default-credit")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", type=Path, help="write Markdown here and JSON beside it")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    key = generate_keypair(2048)
    started = time.perf_counter()
    _FixedBase.of(key.public.n)
    table_seconds = time.perf_counter() - started
    context = multiprocessing.get_context("forkserver")
    with (
        tempfile.TemporaryDirectory() as tmp,
        ProcessPoolExecutor(args.workers, mp_context=context) as executor,
    ):
        started = time.perf_counter()
        encrypt_batch(key.public, [1] * 4 * args.workers, executor, 2 * args.workers)  # start
        pool_seconds = time.perf_counter() - started
        bench = Bench(Path(tmp), args.source, executor, args.workers, args.layout)
        print("paillier", flush=True)
        _, paillier = train(bench, "credit-paillier", "paillier", args.epochs)
        print("plaintext", flush=True)
        _, plaintext = train(bench, "credit-plaintext", "plaintext", args.epochs)
        print("score", flush=True)
        scored = score(bench, "credit-paillier")
        results: dict[str, Any] = {
            "date": datetime.date.today().isoformat(),
            "command": COMMAND if args.layout == "default-credit" else COMMAND_BANK,
            "layout": args.layout,
            "machine": machine(),
            "epochs": args.epochs,
            "workers": args.workers,
            "rows": {s.party: s.rows for s in bench.summaries},
            "prepare_seconds": bench.prepare_seconds,
            "table_seconds": table_seconds,
            "pool_seconds": pool_seconds,
            "paillier": paillier,
            "plaintext": plaintext,
            "score": scored,
            "load_before": load_before,
        }
    results["load_after"] = os.getloadavg()[0]
    text = report(results)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(f"wrote {args.output} and {args.output.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
