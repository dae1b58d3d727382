"""Vertical logistic regression (hetero LR, Hardy et al. 2017): epoch time and quality,
Paillier vs the plaintext cipher.

Default credit, FATE's vertical split (guest: label and 13 columns; host: 10 columns),
joined on ``id`` (PSI stands in), 24,000 training and 6,000 test rows (stratified, seed 0),
2048-bit arbiter key, every role in this process and a pool of worker processes. Reports:

- seconds per epoch in both cipher modes and their ratio; CPU seconds of this process and
  of the workers (the machine is shared: CPU time is what the protocol itself costs);
- where the time goes (each protocol step) and the unit costs behind it (one encryption,
  one fresh addition, one row and column of the multi-exponentiation);
- round trips, messages and bytes per epoch, by message kind;
- test AUC: encrypted, plaintext, scikit-learn's LogisticRegression on the joined columns
  (raw, and clipped as the protocol clips them), the exact optimum of the Taylor loss on
  the same columns, and the guest's columns alone;
- the same quality comparison on bank-full split vertically (bank: age, job, marital,
  education, default, balance, housing, loan, y; partner: contact, day, month, campaign,
  pdays, previous, poutcome; ``duration`` dropped; each party one-hot encodes and
  standardizes its own columns on its training rows).

    .venv/bin/python bench/bench_vfl.py --output bench/results/vfl.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from fedprop.crypto.paillier import (
    PrivateKey,
    add_encryptions,
    encrypt_batch,
    generate_keypair,
    multi_exponentiate,
)
from fedprop.protocols.vfl import CipherMode, VflConfig, VflRun, score_in_process, train_in_process

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COMMAND = ".venv/bin/python bench/bench_vfl.py --output bench/results/vfl.md"
BITS = 2048
TEST_ROWS = 6000
BANK_PARTY = ["age", "job", "marital", "education", "default", "balance", "housing", "loan"]
PARTNER = ["contact", "day", "month", "campaign", "pdays", "previous", "poutcome"]


# --- data --------------------------------------------------------------------------------------


def default_credit(guest: Path, host: Path) -> dict[str, np.ndarray]:
    """The two FATE files joined on id, split 24,000 / 6,000 (stratified, seed 0)."""
    g = pd.read_csv(guest)
    h = pd.read_csv(host)
    guest_cols = [f"guest.{c}" for c in g.columns if c not in ("id", "y")]
    host_cols = [f"host.{c}" for c in h.columns if c != "id"]
    g = g.rename(columns={c[6:]: c for c in guest_cols})
    h = h.rename(columns={c[5:]: c for c in host_cols})
    joined = g.merge(h, on="id", validate="one_to_one")
    y = joined["y"].to_numpy(np.int64)
    train, test = train_test_split(
        np.arange(len(joined)), test_size=TEST_ROWS, stratify=y, random_state=0
    )
    xg = joined[guest_cols].to_numpy(np.float64)
    xh = joined[host_cols].to_numpy(np.float64)
    return {
        "guest_train": xg[train],
        "guest_test": xg[test],
        "host_train": xh[train],
        "host_test": xh[test],
        "y_train": y[train],
        "y_test": y[test],
    }


def encode_party(frame: pd.DataFrame, train: np.ndarray) -> np.ndarray:
    """One party's own encoding: categoricals one-hot, then every column (indicators too)
    standardized on the party's training rows; means and deviations never leave the party.
    Standardized indicators keep gradient descent well conditioned (the protocol clips
    what lies beyond 4 deviations, a rare category's indicator among them)."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    categorical = [c for c in frame.columns if c not in numeric]
    x = pd.concat(
        [
            frame[numeric].astype(np.float64),
            pd.get_dummies(frame[categorical].astype(str), dtype=np.float64),
        ],
        axis=1,
    )
    mean, std = x.iloc[train].mean(), x.iloc[train].std(ddof=0).replace(0.0, 1.0)
    return ((x - mean) / std).to_numpy()


def bank_full(path: Path) -> dict[str, np.ndarray]:
    """bank-full split vertically; the row index is the id; 80/20 stratified, seed 0."""
    frame = pd.read_csv(path, sep=";")
    y = (frame["y"] == "yes").to_numpy(np.int64)
    train, test = train_test_split(np.arange(len(frame)), test_size=0.2, stratify=y, random_state=0)
    bank = encode_party(frame[BANK_PARTY], train)
    partner = encode_party(frame[PARTNER], train)
    return {
        "guest_train": bank[train],
        "guest_test": bank[test],
        "host_train": partner[train],
        "host_test": partner[test],
        "y_train": y[train],
        "y_test": y[test],
    }


# --- references --------------------------------------------------------------------------------


def references(d: Mapping[str, np.ndarray], clip: float) -> dict[str, float]:
    """Central baselines on the same split."""

    def lr_auc(train: np.ndarray, test: np.ndarray) -> float:
        model = LogisticRegression(max_iter=3000).fit(train, d["y_train"])
        return float(roc_auc_score(d["y_test"], model.decision_function(test)))

    joined_train = np.hstack([d["guest_train"], d["host_train"]])
    joined_test = np.hstack([d["guest_test"], d["host_test"]])
    clipped_train = np.clip(joined_train, -clip, clip)
    clipped_test = np.clip(joined_test, -clip, clip)
    # The Taylor loss is least squares on 2y: its exact optimum on the clipped columns.
    design = np.column_stack([np.ones(len(clipped_train)), clipped_train])
    beta = np.linalg.lstsq(design, 2.0 * (2 * d["y_train"] - 1), rcond=None)[0]
    taylor = roc_auc_score(
        d["y_test"], np.column_stack([np.ones(len(clipped_test)), clipped_test]) @ beta
    )
    return {
        "sklearn_joined": lr_auc(joined_train, joined_test),
        "sklearn_joined_clipped": lr_auc(clipped_train, clipped_test),
        "taylor_optimum_clipped": float(taylor),
        "sklearn_guest_only": lr_auc(d["guest_train"], d["guest_test"]),
    }


# --- measuring -----------------------------------------------------------------------------------


def worker_pids(executor: Executor) -> list[int]:
    processes = getattr(executor, "_processes", None) or {}
    return list(processes)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the given processes (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def timed_run(
    d: Mapping[str, np.ndarray],
    config: VflConfig,
    key: PrivateKey | None,
    executor: Executor | None,
    workers: int,
) -> tuple[VflRun, dict[str, Any]]:
    pids = worker_pids(executor) if executor is not None else []
    main0, work0, wall0 = time.process_time(), cpu_seconds(pids), time.perf_counter()
    run = train_in_process(
        d["guest_train"],
        d["y_train"],
        {"host": d["host_train"]},
        config,
        key=key,
        executor=executor,
        workers=workers,
    )
    wall = time.perf_counter() - wall0
    main_cpu, work_cpu = time.process_time() - main0, cpu_seconds(pids) - work0
    probabilities = score_in_process(run, d["guest_test"], {"host": d["host_test"]})
    epochs = [asdict(e) for e in run.epochs]
    for e in epochs:
        e["bytes_by_kind"] = dict(e["bytes_by_kind"])
        e["messages_by_kind"] = dict(e["messages_by_kind"])
        e["step_seconds"] = dict(e["step_seconds"])
    return run, {
        "mode": config.cipher.value,
        "epochs": epochs,
        "seconds": wall,
        "main_cpu_seconds": main_cpu,
        "worker_cpu_seconds": work_cpu,
        "auc": float(roc_auc_score(d["y_test"], probabilities)),
        "losses": [e.loss for e in run.epochs],
    }


def unit_costs(key: PrivateKey, executor: Executor, workers: int) -> dict[str, float]:
    """Per-item costs of the heavy steps, at 2,000 rows (one batch)."""
    rows = 2000
    rng = np.random.default_rng(0)
    n = key.public.n
    values = [int(v) % n for v in rng.integers(-(2**22), 2**22, rows)]
    exponents = rng.integers(-(2**14), 2**14, (rows, 10))

    def per(run: Callable[[], object], items: int) -> float:
        started = time.perf_counter()
        run()
        return (time.perf_counter() - started) / items

    encrypt_batch(key.public, values[:50])  # this process's table
    cts = encrypt_batch(key.public, values, executor, 2 * workers)
    return {
        "encrypt_ms_1": 1e3 * per(lambda: encrypt_batch(key.public, values[:400]), 400),
        "encrypt_ms_pool": 1e3
        * per(lambda: encrypt_batch(key.public, values, executor, 2 * workers), rows),
        "add_fresh_ms_pool": 1e3
        * per(lambda: add_encryptions(key.public, cts, values, executor, 2 * workers), rows),
        "multiexp_us_per_row_column_1": 1e6
        * per(lambda: multi_exponentiate(key.public, cts, exponents), rows * 10),
        "multiexp_us_per_row_column_pool": 1e6
        * per(lambda: multi_exponentiate(key.public, cts, exponents, executor, workers), rows * 10),
    }


def machine() -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown"
    return {
        "cpu": model,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "gmpy2": metadata.version("gmpy2"),
        "numpy": metadata.version("numpy"),
        "scikit-learn": metadata.version("scikit-learn"),
        "platform": platform.platform(),
    }


# --- report ---------------------------------------------------------------------------------


def epoch_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| cipher | epoch | seconds | loss | round trips | messages | MB sent |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        for e in r["epochs"]:
            lines.append(
                f"| {r['mode']} | {e['epoch']} | {e['seconds']:.2f} | {e['loss']:.6f} | "
                f"{e['round_trips']} | {e['messages']} | {e['bytes'] / 1e6:.2f} |"
            )
    return lines


def report(results: dict[str, Any]) -> str:
    credit = results["default_credit"]
    plain, enc = credit["plaintext"], credit["paillier"]
    enc_epoch = statistics.median(e["seconds"] for e in enc["epochs"])
    plain_epoch = statistics.median(e["seconds"] for e in plain["epochs"])
    first = enc["epochs"][0]
    steps = first["step_seconds"]
    info, units, ref = results["machine"], results["unit_costs"], credit["references"]
    cfg = results["config"]
    cpu_per_epoch = (enc["main_cpu_seconds"] + enc["worker_cpu_seconds"]) / len(enc["epochs"])
    lines = [
        "# Vertical logistic regression (hetero LR): Paillier vs plaintext",
        "",
        f"Measured {results['date']} with:",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"Machine: {info['nproc']} cores, {info['cpu']}; {info['platform']}. Python "
        f"{info['python']}, gmpy2 {info['gmpy2']}, numpy {info['numpy']}, scikit-learn "
        f"{info['scikit-learn']}. Load average (1 min) {results['load_before']:.2f} before, "
        f"{results['load_after']:.2f} after: the machine is shared, CPU seconds say what the "
        "protocol itself costs.",
        "",
        f"Default credit (FATE vertical split): guest {credit['shape']['guest']} columns and the "
        f"label, host {credit['shape']['host']} columns; {credit['shape']['train']:,} training "
        f"rows, {credit['shape']['test']:,} test rows (stratified, seed 0). {BITS}-bit key "
        f"(generated in {results['keygen_seconds']:.2f} s); {results['workers']} worker "
        f"processes, started and warmed up (their encryption tables built) in "
        f"{results['pool_seconds']:.2f} s before the first epoch. Settings: batch "
        f"{cfg['batch_size']}, learning rate {cfg['learning_rate']} / (1 + {cfg['lr_decay']} "
        f"(epoch - 1)), L2 {cfg['l2']}, features clipped at +-{cfg['feature_clip']} with "
        f"{cfg['feature_bits']} fractional bits, scores with {cfg['score_bits']}.",
        "",
        "## Speed",
        "",
        f"**One encrypted epoch: {first['seconds']:.1f} s** (median over "
        f"{len(enc['epochs'])} epochs {enc_epoch:.1f} s; bar: 30 s). Plaintext cipher, same "
        f"algorithm: {plain_epoch:.3f} s per epoch; ratio {enc_epoch / plain_epoch:,.0f}x. "
        f"CPU per encrypted epoch: {cpu_per_epoch:.1f} s (this process "
        f"{enc['main_cpu_seconds'] / len(enc['epochs']):.1f} s, workers "
        f"{enc['worker_cpu_seconds'] / len(enc['epochs']):.1f} s), so "
        f"{cpu_per_epoch / int(info['nproc'] or 1):.1f} s of wall time on "
        f"{info['nproc']} idle cores.",
        "",
        *epoch_table([plain, enc]),
        *(
            [
                "",
                "bank-full (same settings; "
                f"{results['bank_full']['shape']['train']:,} training rows, "
                f"{results['bank_full']['shape']['guest']} + "
                f"{results['bank_full']['shape']['host']} columns):",
                "",
                *epoch_table([results["bank_full"]["plaintext"], results["bank_full"]["paillier"]]),
            ]
            if "bank_full" in results
            else []
        ),
        "",
        "Where the time of encrypted epoch 1 goes (wall seconds per protocol step):",
        "",
        "| step | seconds | what |",
        "|---|---:|---|",
    ]
    what = {
        "host forward": "encode scores, encrypt one ciphertext per row",
        "guest residuals": "read forwards, fresh Enc(M_i) per row, multi-exponentiation "
        "(features, intercept, -y), pack, mask",
        "host gradient": "read residuals, multi-exponentiation (features), pack, mask",
        "arbiter open": "decrypt one or two masked ciphertexts per party and batch",
        "guest update": "unmask, decode, step",
        "host update": "unmask, decode, step",
        "loss": "loss shares, encrypted sum, decryption",
        "bytes": "message framing (to_bytes, from_bytes)",
    }
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {step} | {seconds:.2f} | {what.get(step, '')} |")
    lines += [
        "",
        "Unit costs (2,000 rows, this run):",
        "",
        f"- encryption: {units['encrypt_ms_1']:.3f} ms per ciphertext in one process, "
        f"{units['encrypt_ms_pool']:.3f} ms with the pool; fresh addition "
        f"(`c * Enc(m)`): {units['add_fresh_ms_pool']:.3f} ms with the pool;",
        f"- multi-exponentiation (bucket method, 15-bit signed exponents): "
        f"{units['multiexp_us_per_row_column_1']:.1f} us per row and column in one process, "
        f"{units['multiexp_us_per_row_column_pool']:.1f} us with the pool (a separate "
        f"exponentiation per row and column would cost about 110 us).",
        "",
        f"Per epoch the parties make {2 * credit['shape']['train']:,} encryptions (one per row "
        "at the host, one fresh addition per row at the guest: without it the host could "
        "strip its own randomness from the residuals and read the guest's part) and "
        f"{credit['shape']['train']:,} x "
        f"({credit['shape']['guest'] + 2} + {credit['shape']['host']}) multi-exponentiation "
        "terms; decryptions are a handful per batch.",
        "",
        "## Messages per epoch",
        "",
        "| message | from -> to | per epoch | bytes each |",
        "|---|---|---:|---:|",
    ]
    routes = {
        "HostForward": "host -> guest",
        "GuestResidual": "guest -> host",
        "MaskedGradient": "party -> arbiter",
        "OpenedGradient": "arbiter -> party",
        "LossShare": "host -> guest",
        "EncryptedLoss": "guest -> arbiter",
    }
    for kind, count in first["messages_by_kind"].items():
        size = first["bytes_by_kind"][kind] / count
        lines.append(f"| {kind} | {routes.get(kind, '')} | {count} | {size:,.0f} |")
    lines += [
        "",
        f"{first['batches']} batches: {first['round_trips']} round trips through the "
        "coordinator per epoch (three per batch: hosts, guest, hosts; two for the loss), "
        f"{first['messages']} messages, {first['bytes'] / 1e6:.1f} MB. Host-guest messages "
        "ride the end-to-end channel (framing not counted here).",
        "",
        "## Quality (test AUC)",
        "",
        "| data | encrypted | plaintext | sklearn LR joined | sklearn LR joined, clipped | "
        "Taylor optimum, clipped | sklearn LR guest only |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("default_credit", "default credit"), ("bank_full", "bank-full")):
        if name not in results:
            continue
        block = results[name]
        r = block["references"]
        bc = block["config"]
        lines.append(
            f"| {label} ({len(block['paillier']['epochs'])} epochs, batch {bc['batch_size']}, "
            f"decay {bc['lr_decay']}) | "
            f"{block['paillier']['auc']:.4f} | {block['plaintext']['auc']:.4f} | "
            f"{r['sklearn_joined']:.4f} | {r['sklearn_joined_clipped']:.4f} | "
            f"{r['taylor_optimum_clipped']:.4f} | {r['sklearn_guest_only']:.4f} |"
        )
    lines += [
        "",
        f"Encrypted minus sklearn joined (default credit): "
        f"{enc['auc'] - ref['sklearn_joined']:+.4f} (bar: within 0.005). Largest weight "
        f"difference encrypted vs plaintext: {credit['max_weight_difference']:.1e} (same "
        "encoded integers in both modes).",
        "",
    ]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def compare(
    d: dict[str, np.ndarray],
    config: VflConfig,
    key: PrivateKey,
    executor: Executor,
    workers: int,
) -> dict[str, Any]:
    plain_run, plain = timed_run(d, replace(config, cipher=CipherMode.PLAINTEXT), None, None, 1)
    print(f"  plaintext: {plain['seconds']:.2f} s, AUC {plain['auc']:.4f}", flush=True)
    enc_run, enc = timed_run(d, config, key, executor, workers)
    print(
        f"  paillier: {[round(e['seconds'], 1) for e in enc['epochs']]} s per epoch, "
        f"AUC {enc['auc']:.4f}",
        flush=True,
    )
    difference = max(
        float(np.abs(enc_run.guest.weights - plain_run.guest.weights).max()),
        abs(enc_run.guest.intercept - plain_run.guest.intercept),
        float(np.abs(enc_run.hosts["host"].weights - plain_run.hosts["host"].weights).max()),
    )
    return {
        "shape": {
            "guest": d["guest_train"].shape[1],
            "host": d["host_train"].shape[1],
            "train": len(d["y_train"]),
            "test": len(d["y_test"]),
        },
        "plaintext": plain,
        "paillier": enc,
        "references": references(d, config.feature_clip),
        "max_weight_difference": difference,
        "config": {"batch_size": config.batch_size, "lr_decay": config.lr_decay},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--guest", type=Path, default=DATA / "default_credit_hetero_guest.csv")
    parser.add_argument("--host", type=Path, default=DATA / "default_credit_hetero_host.csv")
    parser.add_argument("--bank", type=Path, default=DATA / "bank-full.csv")
    parser.add_argument("--no-bank", action="store_true", help="skip the bank-full run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bank-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", type=Path, help="write Markdown here and JSON beside it")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    config = VflConfig(batch_size=args.batch_size, max_epochs=args.epochs, tolerance=0.0)
    started = time.perf_counter()
    key = generate_keypair(BITS)
    keygen = time.perf_counter() - started

    started = time.perf_counter()
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(args.workers, mp_context=context) as executor:
        # Start every worker and build its encryption table (once per key and process).
        encrypt_batch(key.public, [1] * 8 * args.workers, executor, 2 * args.workers)
        pool_seconds = time.perf_counter() - started
        results: dict[str, Any] = {
            "date": datetime.date.today().isoformat(),
            "command": COMMAND,
            "machine": machine(),
            "config": {
                k: (v.value if isinstance(v, CipherMode) else v) for k, v in asdict(config).items()
            },
            "workers": args.workers,
            "keygen_seconds": keygen,
            "pool_seconds": pool_seconds,
            "load_before": load_before,
        }
        print("default credit", flush=True)
        credit = default_credit(args.guest, args.host)
        results["default_credit"] = compare(credit, config, key, executor, args.workers)
        results["unit_costs"] = unit_costs(key, executor, args.workers)
        if not args.no_bank and args.bank.exists():
            print("bank-full", flush=True)
            bank_config = replace(config, max_epochs=args.bank_epochs)
            results["bank_full"] = compare(
                bank_full(args.bank), bank_config, key, executor, args.workers
            )
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
