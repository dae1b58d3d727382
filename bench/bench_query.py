"""Federated analytics query: exactness, error at epsilon = 1, and wall time with 2048-bit Paillier.

On the real four-bank split of bank-full (``fedprop.data.split``; each bank's customers are
its train and test rows), one 12-cell query: term-deposit take-up rate (and count) by 4 age
bands x 3 contact channels, epsilon 1, delta 1e-7, k 10. The protocol runs in this process
(every node called in turn, no messaging; the Flower wiring is not measured here), with a
real 2048-bit query key made and sealed to the four banks as the key ceremony does.

Reports, in one run:

(a) exactness: with the test-only noiseless source, the answer's counts and rates against a
    pandas groupby on the pooled rows (the bar: equal, exactly);
(b) error at epsilon = 1: the opened sums released again ``--repetitions`` times with fresh
    noise (what ``release_cells`` does at the releasing node; the protocol itself releases
    a query once), the median relative error of count and rate over cells with at least
    100 customers (the bar: under 5%), and a per-cell table;
(c) wall time of the whole query end to end (key ceremony included) and of its parts, over
    ``--runs`` queries with noise (the bar: under 10 s on 2 cores). The nodes run one after
    the other here; at separate institutions their steps would overlap.

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_query.py --source ../shared/data/bank-full.csv \\
        --output bench/results/query.md

The JSON figures go next to the Markdown (``query.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from bench_audit import machine
from fedprop.crypto.identity import Manifest, generate_identity
from fedprop.data.loader import load_party
from fedprop.data.split import split_bank_marketing
from fedprop.privacy.ledger import BudgetLedger, pld_available
from fedprop.privacy.noise import NoiseSource
from fedprop.privacy.policy import parse_policy
from fedprop.protocols.analytics import (
    QueryCoordinator,
    QueryNode,
    QueryNodeSettings,
    QuerySpec,
    band_labels,
    calibrate,
    release_cells,
    run_query_in_process,
)
from fedprop.protocols.keys import make_bundle
from fedprop.protocols.secure_sum import PaillierScheme, SignedSum
from fedprop.spec import JobSpec

COMMAND = (
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 .venv/bin/python bench/bench_query.py "
    "--source ../shared/data/bank-full.csv --output bench/results/query.md"
)
SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"
BANKS = ("bank-a", "bank-b", "bank-c", "bank-d")
AGE_CUTS = (30, 40, 50)
CONTACTS = ("cellular", "telephone", "unknown")
EPSILON = 1.0
MIN_CUSTOMERS = 100


def policy_text(coordinator: str) -> str:
    return f"""
[federations.bench]
coordinators = ["{coordinator}"]
[jobs]
types = ["query"]
aggregation = ["paillier"]
[release]
min-cohort = 10
[dp]
period = "30d"
epsilon = 100.0
delta = 1e-4
max-query-epsilon = 1.0
max-query-delta = 1e-7
[datasets.bank-marketing]
group-by = ["age", "contact"]
targets = ["y"]
forbidden = ["cid"]
"""


def query_text(query_id: str, dataset: str) -> str:
    bands = ", ".join(str(c) for c in AGE_CUTS)
    return f"""
[query]
id = "{query_id}"
parties = {json.dumps(list(BANKS))}
epsilon = {EPSILON}
delta = 1e-7
k = 10
group-by = [{{column = "age", bands = [{bands}]}}, "contact"]

[[query.measures]]
kind = "count"

[[query.measures]]
kind = "rate"
column = "y"

{dataset}
"""


class Federation:
    """Four banks, their identities, policies and ledgers, in this process."""

    def __init__(self, frames: dict[str, pd.DataFrame], folder: Path) -> None:
        self.identities = {b: generate_identity(b) for b in BANKS}
        coordinator = generate_identity("coordinator")
        self.manifest = Manifest(
            "bench", tuple(i.public for i in self.identities.values()), coordinator.public
        )
        self.coordinator = coordinator.public.fingerprint()
        self.policy = parse_policy(policy_text(self.coordinator), "bench-policy.toml")
        assert self.policy.dp is not None
        self.frames = frames
        self.folder = folder

    def nodes(self, noise: NoiseSource) -> dict[str, QueryNode]:
        assert self.policy.dp is not None
        return {
            b: QueryNode(
                self.frames[b],
                QueryNodeSettings(
                    self.identities[b],
                    self.manifest,
                    self.policy,
                    BudgetLedger(self.folder / f"{b}.jsonl", self.policy.dp),
                    noise,
                ),
            )
            for b in BANKS
        }

    def keys(self, query: QuerySpec) -> tuple[dict[str, PaillierScheme], PaillierScheme, float]:
        """The query key ceremony (make, seal to every bank, open at each) and its seconds.

        ``make_bundle`` is typed for training jobs; a query has every field it reads (id,
        key holder, key bits, parties)."""
        started = time.perf_counter()
        as_job = cast(JobSpec, query)
        bundle = make_bundle(as_job, self.manifest, self.identities[query.key_holder])
        schemes = {
            b: PaillierScheme(bundle.private(as_job, self.manifest, self.identities[b]), len(BANKS))
            for b in BANKS
        }
        public = PaillierScheme(bundle.public(as_job, self.manifest), len(BANKS))
        return schemes, public, time.perf_counter() - started


def pandas_reference(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    pooled = pd.concat(frames.values(), ignore_index=True)
    pooled["band"] = pd.cut(
        pooled["age"],
        [-math.inf, *AGE_CUTS, math.inf],
        right=False,
        labels=list(band_labels(AGE_CUTS)),
    )
    pooled["contact"] = pd.Categorical(pooled["contact"], list(CONTACTS))
    return pooled.groupby(["band", "contact"], observed=False).agg(
        count=("y", "size"), rate=("y", "mean")
    )


def exactness(fed: Federation, dataset: str) -> tuple[dict[str, Any], np.ndarray, QuerySpec]:
    """Noise off, through the protocol; also returns the opened sums for the error study."""
    text = query_text("uptake-exact", dataset)
    query = QuerySpec.from_toml(text)
    schemes, public, _ = fed.keys(query)
    nodes = fed.nodes(NoiseSource(testing_only_no_noise=True))
    c = QueryCoordinator(text, fed.manifest, public)
    total = c.collect([nodes[b].contribute(text, fed.coordinator, schemes[b]) for b in BANKS])
    releaser = query.releaser
    answer = c.accept(nodes[releaser].release(text, fed.coordinator, schemes[releaser], total))
    # the opened sums, as the releasing node holds them (opened again here for the study)
    opened = schemes[releaser].open(
        SignedSum.from_bytes(total).aggregate,
        query.vector_length,
        len(BANKS),
        query.count_values,
    )
    reference = pandas_reference(fed.frames)
    counts = [cell.count for cell in answer.cells]
    rates = [next(m.value for m in cell.measures if m.name == "rate(y)") for cell in answer.cells]
    groups = [tuple(cell.group) for cell in answer.cells]
    result = {
        "cells": len(answer.cells),
        "suppressed": sum(cell.suppressed for cell in answer.cells),
        "groups_match": groups == [tuple(str(g) for g in i) for i in reference.index],
        "counts_equal": counts == reference["count"].tolist(),
        "rates_equal": rates == reference["rate"].tolist(),
        "max_abs_rate_difference": float(
            np.max(np.abs(np.asarray(rates, dtype=float) - reference["rate"].to_numpy()))
        ),
    }
    return result, opened, query


def error_study(query: QuerySpec, opened: np.ndarray, repetitions: int) -> dict[str, Any]:
    cells = query.cells
    counts = opened[:cells].astype(int)
    positives = opened[cells : 2 * cells].astype(int)
    count_errors: list[list[float]] = [[] for _ in range(cells)]
    rate_errors: list[list[float]] = [[] for _ in range(cells)]
    rates: list[list[float]] = [[] for _ in range(cells)]
    suppressed = [0] * cells
    std_errors: list[list[float]] = [[] for _ in range(cells)]
    started = time.perf_counter()
    for _ in range(repetitions):
        answer = release_cells(query, opened, k=query.k, noise=NoiseSource())
        for i, cell in enumerate(answer.cells):
            if cell.suppressed or cell.count is None:
                suppressed[i] += 1
                continue
            rate = next(m for m in cell.measures if m.name == "rate(y)")
            assert isinstance(rate.value, float)
            true_rate = positives[i] / counts[i]
            count_errors[i].append(abs(cell.count - counts[i]) / counts[i])
            rate_errors[i].append(abs(rate.value - true_rate) / true_rate)
            rates[i].append(rate.value)
            std_errors[i].append(rate.std_error)
    seconds = time.perf_counter() - started
    big = [i for i in range(cells) if counts[i] >= MIN_CUSTOMERS]
    calibration = calibrate(query)
    rows = []
    for i, group in enumerate(query.cell_groups()):
        rows.append(
            {
                "age": group[0],
                "contact": group[1],
                "customers": int(counts[i]),
                "take_up": positives[i] / counts[i],
                "median_rel_error_count": statistics.median(count_errors[i]),
                "median_rel_error_rate": statistics.median(rate_errors[i]),
                "sd_noised_rate": statistics.pstdev(rates[i]),
                "mean_stated_std_error": statistics.fmean(std_errors[i]),
                "suppressed": suppressed[i],
            }
        )
    return {
        "repetitions": repetitions,
        "epsilon": query.epsilon,
        "noise_b": [float(s) for s in calibration.scales],
        "threshold": calibration.threshold(query.k),
        "cells_with_100": len(big),
        "median_rel_error_count": statistics.median(e for i in big for e in count_errors[i]),
        "median_rel_error_rate": statistics.median(e for i in big for e in rate_errors[i]),
        "release_seconds_median": seconds / repetitions,
        "cells": rows,
    }


def timing(fed: Federation, dataset: str, runs: int) -> dict[str, Any]:
    ends, parts_seen, bytes_seen = [], [], []
    for r in range(runs):
        text = query_text(f"uptake-{r}", dataset)
        started = time.perf_counter()
        query = QuerySpec.from_toml(text)
        schemes, public, key_seconds = fed.keys(query)
        result = run_query_in_process(
            text, fed.coordinator, fed.nodes(NoiseSource()), schemes, public, fed.manifest
        )
        ends.append(time.perf_counter() - started)
        parts: dict[str, float] = {"keys (make, seal to 4, open at each)": key_seconds}
        for step in ("admit", "aggregates", "seal", "sign", "record"):
            parts[f"contribute: {step} (4 nodes)"] = sum(
                result.node_seconds[b][step] for b in BANKS
            )
        parts["coordinator: check and add"] = result.coordinator_seconds["collect"]
        releaser = result.node_seconds[query.releaser]
        for step in ("admit", "check", "open", "noise", "record", "sign"):
            parts[f"release: {step}"] = releaser[f"release.{step}"]
        parts["coordinator: verify answer"] = result.coordinator_seconds["accept"]
        parts_seen.append(parts)
        bytes_seen.append(result.bytes_to_coordinator)
    median_parts = {k: statistics.median(p[k] for p in parts_seen) for k in parts_seen[0]}
    return {
        "runs": runs,
        "end_to_end_seconds": ends,
        "end_to_end_median": statistics.median(ends),
        "end_to_end_max": max(ends),
        "parts_median": median_parts,
        "bytes_to_coordinator": bytes_seen[0],
    }


def report(results: dict[str, Any]) -> str:
    e, s, t, m = results["exactness"], results["error"], results["timing"], results["machine"]
    lines = [
        "# Federated analytics query (4 banks, 2048-bit Paillier, in process)",
        "",
        f"Measured {results['date']} with:",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        f"Machine: {m['nproc']} cores (`nproc`), {m['cpu']}, {m['ram']} RAM; {m['platform']}.",
        f"Python {m['python']}; composition of the ledger: {results['ledger_method']}.",
        "",
        f"Data: bank-full split into 4 banks by job group ({results['rows']:,} customers: "
        "each bank's train and test rows). Query: count and take-up rate (`y`) by age band "
        f"({', '.join(band_labels(AGE_CUTS))}) x contact ({', '.join(CONTACTS)}) = 12 cells, "
        f"epsilon {EPSILON:g} (0.5 for the counts, 0.5 for the positives), delta 1e-7, k 10.",
        "",
        "## (a) Exactness with noise off (test-only source)",
        "",
        f"- cells: {e['cells']}, suppressed: {e['suppressed']}",
        f"- groups in the pandas order: {e['groups_match']}",
        f"- counts equal to `groupby(...).size()`: **{e['counts_equal']}**",
        f"- rates equal to `groupby(...)['y'].mean()` (exactly, ==): **{e['rates_equal']}** "
        f"(largest difference {e['max_abs_rate_difference']:.1e})",
        "",
        f"## (b) Error at epsilon = {EPSILON:g}, {s['repetitions']} releases of the opened sums",
        "",
        f"Discrete Laplace scale b = {s['noise_b'][0]:g} customers on each count and each "
        f"positives count; a cell is released if its exact count >= 10 and its noised count "
        f">= {s['threshold']}.",
        "",
        f"**Median relative error over the {s['cells_with_100']} cells with at least "
        f"{MIN_CUSTOMERS} customers: count {100 * s['median_rel_error_count']:.3f}%, "
        f"rate {100 * s['median_rel_error_rate']:.2f}%** (bar: under 5%).",
        "",
        "| age | contact | customers | take-up | median rel. error count | median rel. error "
        "rate | sd of noised rate | mean stated std error | suppressed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["cells"]:
        lines.append(
            f"| {r['age']} | {r['contact']} | {r['customers']:,} | {r['take_up']:.4f} | "
            f"{100 * r['median_rel_error_count']:.3f}% | {100 * r['median_rel_error_rate']:.2f}% | "
            f"{r['sd_noised_rate']:.5f} | {r['mean_stated_std_error']:.5f} | {r['suppressed']} |"
        )
    lines += [
        "",
        f"One release (suppression and noise for 12 cells): "
        f"{1000 * s['release_seconds_median']:.2f} ms.",
        "",
        f"## (c) Wall time, {t['runs']} queries with noise",
        "",
        f"**End to end: median {t['end_to_end_median']:.2f} s, max {t['end_to_end_max']:.2f} s** "
        "(bar: under 10 s on 2 cores); parse, key ceremony, 4 contributions, the "
        "coordinator's sum, the release and the coordinator's check of the answer, every "
        "node in turn in this process. Bytes the coordinator received (contributions and "
        f"the answer): {t['bytes_to_coordinator']:,}.",
        "",
        "| part | median seconds |",
        "|---|---:|",
    ]
    for name, seconds in t["parts_median"].items():
        lines.append(f"| {name} | {seconds:.4f} |")
    lines += [
        "",
        "`record` is the budget ledger's durable append (fsync); `admit` parses the query and "
        "runs the policy and the budget check (composition with dp-accounting's PLD "
        "accountant). The first query of a process also pays for importing dp-accounting "
        f"(scipy): {results['first_admit_seconds']:.2f} s, not counted above.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/bank-full.csv"))
    parser.add_argument("--output", type=Path, default=Path("bench/results/query.md"))
    parser.add_argument("--repetitions", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    spec = JobSpec.load(SPEC)
    dataset = spec.text[spec.text.index("[dataset]") :]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        summaries = split_bank_marketing(args.source, root / "parties")
        frames = {}
        for s in summaries:
            data = load_party(s.folder, spec.schema)
            frames[s.party] = pd.concat([data.train, data.test], ignore_index=True)
        fed = Federation(frames, root / "ledgers")
        started = time.perf_counter()
        warm = fed.nodes(NoiseSource())["bank-a"]
        warm.admit(query_text("warm-up", dataset), fed.coordinator)  # imports dp-accounting
        first_admit = time.perf_counter() - started
        exact, opened, query = exactness(fed, dataset)
        print(f"exactness: {exact}", file=sys.stderr)
        error = error_study(query, opened, args.repetitions)
        print(
            f"median relative error: count {error['median_rel_error_count']:.4%}, "
            f"rate {error['median_rel_error_rate']:.4%}",
            file=sys.stderr,
        )
        timed = timing(fed, dataset, args.runs)
        print(f"end to end: {timed['end_to_end_seconds']}", file=sys.stderr)
    results = {
        "date": datetime.date.today().isoformat(),
        "command": COMMAND,
        "machine": machine(),
        "ledger_method": "pld (dp-accounting)" if pld_available() else "basic composition",
        "rows": sum(len(f) for f in frames.values()),
        "first_admit_seconds": first_admit,
        "exactness": exact,
        "error": error,
        "timing": timed,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(results), encoding="utf-8")
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))


if __name__ == "__main__":
    main()
