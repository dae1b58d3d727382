"""Privacy audit log: verification time of a job's logs, scaling to 1,000,000 entries, appends.

Measures, in one run (the machine is shared and noisy, so compare ratios):

(a) a 4-bank, 20-round job: five logs (per round each node logs 6 messages, a budget spend
    and the coordinator's checkpoint it witnessed; the coordinator logs 24 messages and the
    4 node checkpoints it witnessed; every party signs a checkpoint every round), verified
    together with ``verify_federation`` (per-log checks and cross-checks), then the
    auditor's report built from the result; the bar is 5 seconds for the verification;
(b) one node's log at 1e3, 1e4, 1e5 and 1e6 entries (a checkpoint every 1,000 entries)
    verified with ``verify_log``: seconds, microseconds per entry and the ratio of that to
    the smallest log (flat means linear). The 1e6-entry log is written once with the fast
    path (appends in batches of 1,000, one fsync per batch, then a checkpoint); the smaller
    logs are its prefixes with the checkpoints that cover them, exactly the files the node
    had at those sizes;
(c) the cost of an append: fsync after every entry (what ``AuditLog.append`` does) against
    one fsync per batch of 100 or 1,000 entries (``AuditLog.batch``).

    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \\
        .venv/bin/python bench/bench_audit.py --output bench/results/audit.md

The files are written to a temporary folder (about 400 MB at 1e6 entries), removed at
the end; ``--workdir`` puts them elsewhere.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedprop.audit.checkpoint import parse_note
from fedprop.audit.crosscheck import PartyLog, verify_federation
from fedprop.audit.log import (
    AuditLog,
    EventKind,
    budget_detail,
    checkpoints_path_for,
    decision_detail,
    message_detail,
    read_checkpoints,
    release_detail,
)
from fedprop.audit.report import build_report, render_html
from fedprop.audit.verify import verify_log

COMMAND = (
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 "
    ".venv/bin/python bench/bench_audit.py --output bench/results/audit.md"
)
JOB = "bank-marketing-2026-q1"
RULE = "bank-marketing-v1"
BANKS = tuple(f"bank-{c}" for c in "abcd")
COORDINATOR = "coordinator"
ROUNDS = 20
# (instruction, reply, bytes of the instruction, bytes of the reply): 3 exchanges a round.
EXCHANGES = (
    ("fit-ins", "fit-res", 48_000, 56_000),
    ("sum-ins", "sum-res", 2_000, 260_000),
    ("evaluate-ins", "evaluate-res", 48_000, 1_200),
)
SIZES = (1_000, 10_000, 100_000, 1_000_000)
CHECKPOINT_EVERY = 1_000


def origin(party: str) -> str:
    return f"audit.example/{party}"


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- (a) a 4-bank, 20-round job -----------------------------------------------------------


def write_job(folder: Path) -> tuple[list[PartyLog], dict[str, Any]]:
    keys = {p: Ed25519PrivateKey.generate() for p in (COORDINATOR, *BANKS)}
    logs = {p: AuditLog.open(folder / f"{p}.log", p, k, origin(p)) for p, k in keys.items()}
    pub = {p: k.public_key() for p, k in keys.items()}
    coordinator = logs[COORDINATOR]
    rng = random.Random(7)
    for log in logs.values():
        log.append(EventKind.JOB_ACCEPTED, job=JOB, detail=decision_detail(RULE))
    for r in range(1, ROUNDS + 1):
        step = str(r)
        note = coordinator.checkpoint()
        replies: dict[str, str] = {}
        for bank in BANKS:
            node = logs[bank]
            with node.batch(), coordinator.batch():
                node.witness(note, COORDINATOR, pub[COORDINATOR], job=JOB, step=step)
                for ins, res, ins_bytes, res_bytes in EXCHANGES:
                    out, back = rng.randbytes(ins_bytes), rng.randbytes(res_bytes)
                    for log, kind, payload, other in (
                        (coordinator, EventKind.MESSAGE_SENT, out, bank),
                        (node, EventKind.MESSAGE_RECEIVED, out, COORDINATOR),
                    ):
                        detail = message_detail(payload, other, ins)
                        log.append(kind, job=JOB, step=step, detail=detail)
                    spend = budget_detail("customer-rows", 0.04, 1e-7, 1.0, 1e-5)
                    if ins == "fit-ins":
                        node.append(EventKind.BUDGET_SPEND, job=JOB, step=step, detail=spend)
                    for log, kind, other in (
                        (node, EventKind.MESSAGE_SENT, COORDINATOR),
                        (coordinator, EventKind.MESSAGE_RECEIVED, bank),
                    ):
                        detail = message_detail(back, other, res)
                        log.append(kind, job=JOB, step=step, detail=detail)
            replies[bank] = node.checkpoint()
        with coordinator.batch():
            for bank, reply in replies.items():
                coordinator.witness(reply, bank, pub[bank], job=JOB, step=step)
    coordinator.append(EventKind.RELEASE, job=JOB, detail=release_detail("global-model", RULE))
    for log in logs.values():
        log.close()
    party_logs = [PartyLog(p, folder / f"{p}.log", origin(p)) for p in keys]
    return party_logs, pub


def bench_job(folder: Path) -> dict[str, Any]:
    party_logs, keys = write_job(folder)
    result = verify_federation(party_logs, keys)
    if not result.ok or result.findings:
        raise SystemExit(f"the job's logs do not verify cleanly:\n{result.summary()}")
    verify = median_seconds(lambda: verify_federation(party_logs, keys), 5)
    report = median_seconds(lambda: render_html(build_report(result)), 5)
    per_party = {r.party: r.entries for r in result.logs}
    return {
        "parties": len(result.logs),
        "entries": sum(per_party.values()),
        "entries_per_party": per_party,
        "checkpoints": sum(r.checkpoints for r in result.logs),
        "bytes_on_disk": sum(
            p.path.stat().st_size + checkpoints_path_for(p.path).stat().st_size for p in party_logs
        ),
        "verify_seconds": verify,
        "report_seconds": report,
    }


# --- (b) one log, up to 1,000,000 entries -----------------------------------------------------


def write_big_log(path: Path, size: int, key: Ed25519PrivateKey) -> float:
    """A node's log of ``size`` entries shaped like (a); return the seconds it took."""
    coordinator = Ed25519PrivateKey.generate()
    coordinator_path = path.with_name("coordinator.log")
    with AuditLog.open(coordinator_path, COORDINATOR, coordinator, origin(COORDINATOR)) as c:
        c.append(EventKind.JOB_ACCEPTED, job=JOB, detail=decision_detail(RULE))
        coordinator_note = c.checkpoint()
    payloads = {
        kind: (random.Random(kind).randbytes(n), n)
        for ins, res, a, b in EXCHANGES
        for kind, n in ((ins, a), (res, b))
    }
    details = []
    for ins, res, _, _ in EXCHANGES:
        details.append(
            (EventKind.MESSAGE_RECEIVED, message_detail(payloads[ins][0], COORDINATOR, ins))
        )
        details.append((EventKind.MESSAGE_SENT, message_detail(payloads[res][0], COORDINATOR, res)))
    details.append((EventKind.BUDGET_SPEND, budget_detail("customer-rows", 1e-7, 0, 1.0, 1e-5)))
    started = time.perf_counter()
    with AuditLog.open(path, "bank-a", key, origin("bank-a")) as log:
        log.witness(coordinator_note, COORDINATOR, coordinator.public_key(), job=JOB)
        cycle = itertools.cycle(details)
        written = log.size
        while written < size:
            with log.batch():
                for _ in range(min(CHECKPOINT_EVERY - written % CHECKPOINT_EVERY, size - written)):
                    kind, detail = next(cycle)
                    log.append(kind, job=JOB, step=str(written // 8 + 1), detail=detail)
                    written += 1
            log.checkpoint()
    return time.perf_counter() - started


def write_prefix(source: Path, target: Path, size: int) -> None:
    """The first ``size`` entries of ``source`` and the checkpoints that cover no more."""
    with source.open("rb") as f, target.open("wb") as out:
        out.writelines(itertools.islice(f, size))
    notes = read_checkpoints(checkpoints_path_for(source)).notes
    kept = [n for n in notes if parse_note(n)[0].size <= size]
    checkpoints_path_for(target).write_text("".join(n + "\n" for n in kept))


def bench_scaling(folder: Path, sizes: list[int]) -> tuple[float, list[dict[str, Any]]]:
    key = Ed25519PrivateKey.generate()
    biggest = folder / f"bank-a-{sizes[-1]}.log"
    generated = write_big_log(biggest, sizes[-1], key)
    rows = []
    for size in sizes:
        path = biggest if size == sizes[-1] else folder / f"bank-a-{size}.log"
        if path != biggest:
            write_prefix(biggest, path, size)
        report = verify_log(path, "bank-a", key.public_key(), origin("bank-a"))
        if not report.ok or report.findings or report.entries != size:
            raise SystemExit(f"the {size}-entry log does not verify cleanly:\n{report.summary()}")
        repeats = 5 if size <= 10_000 else 3 if size <= 100_000 else 1
        seconds = median_seconds(
            functools.partial(verify_log, path, "bank-a", key.public_key(), origin("bank-a")),
            repeats,
        )
        rows.append(
            {
                "entries": size,
                "checkpoints": report.checkpoints,
                "megabytes": path.stat().st_size / 1e6,
                "repeats": repeats,
                "verify_seconds": seconds,
                "us_per_entry": seconds / size * 1e6,
            }
        )
    for row in rows:
        row["ratio"] = row["us_per_entry"] / rows[0]["us_per_entry"]
    return generated, rows


# --- (c) appending ----------------------------------------------------------------------------


def bench_appends(folder: Path) -> list[dict[str, Any]]:
    key = Ed25519PrivateKey.generate()
    detail = message_detail(b"x" * 1000, COORDINATOR, "fit-res")
    rows = []
    for mode, entries, batch in (
        ("fsync every entry", 500, 1),
        ("batch of 100", 5_000, 100),
        ("batch of 1,000", 20_000, 1_000),
    ):
        path = folder / f"append-{batch}.log"
        with AuditLog.open(path, "bank-a", key, origin("bank-a")) as log:
            started = time.perf_counter()
            for _ in range(entries // batch):
                with log.batch():
                    for _ in range(batch):
                        log.append(EventKind.MESSAGE_SENT, job=JOB, step="1", detail=detail)
            seconds = time.perf_counter() - started
        rows.append(
            {
                "mode": mode,
                "entries": entries,
                "fsyncs": entries // batch,
                "us_per_entry": seconds / entries * 1e6,
                "entries_per_second": entries / seconds,
            }
        )
    return rows


# --- output ---------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    m, job, appends = results["machine"], results["job"], results["appends"]
    lines = [
        "# Privacy audit log: verification and append cost",
        "",
        f"Measured {results['date']} with:",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        f"Machine: {m['nproc']} cores (`os.cpu_count()`), {m['cpu']} (`/proc/cpuinfo`), "
        f"{m['ram']} RAM; Python {m['python']}; {m['platform']}.",
        f"All figures come from one run ({results['total_seconds']:.0f} s, peak resident "
        f"memory {results['peak_rss_mb']:.0f} MB). The machine is shared: compare ratios, "
        "not absolute times.",
        "",
        f"## (a) A {len(BANKS)}-bank, {ROUNDS}-round job",
        "",
        "Five logs: per round each node logs 6 messages, a budget spend and the coordinator "
        "checkpoint it witnessed; the coordinator logs 24 messages and the 4 node checkpoints "
        "it witnessed; every party signs a checkpoint each round. `verify_federation` runs "
        "every per-log check and the cross-checks (each message matched against its "
        "counterparty's record, each witnessed checkpoint against the signer's log); the "
        "report is `build_report` + `render_html`. Median of 5 runs.",
        "",
        "| logs | entries | checkpoints | on disk | verify | report | bar |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {job['parties']} | {job['entries']:,} | {job['checkpoints']} | "
        f"{job['bytes_on_disk'] / 1e3:,.0f} kB | {job['verify_seconds'] * 1e3:,.0f} ms | "
        f"{job['report_seconds'] * 1e3:,.0f} ms | under 5 s: "
        f"{'met' if job['verify_seconds'] < 5 else 'NOT met'} |",
        "",
        "Entries per log: "
        + ", ".join(f"{p} {n:,}" for p, n in job["entries_per_party"].items())
        + ".",
        "",
        "## (b) One log as it grows",
        "",
        f"`verify_log` of one node's log, a checkpoint every {CHECKPOINT_EVERY:,} entries. "
        f"The {results['scaling'][-1]['entries']:,}-entry log was written with the fast "
        f"path (batches of {CHECKPOINT_EVERY:,} appends, one fsync each, then a checkpoint) in "
        f"{results['generate_seconds']:.0f} s; the smaller logs are its prefixes with the "
        "checkpoints that cover them.",
        "",
        f"| entries | log file | checkpoints | runs | verify | µs per entry | "
        f"vs {results['scaling'][0]['entries']:,} |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["scaling"]:
        lines.append(
            f"| {row['entries']:,} | {row['megabytes']:,.1f} MB | {row['checkpoints']:,} | "
            f"{row['repeats']} | {row['verify_seconds']:,.3f} s | {row['us_per_entry']:.1f} | "
            f"{row['ratio']:.2f}x |"
        )
    lines += [
        "",
        "## (c) Appending",
        "",
        "`AuditLog.append` of a message entry; `batch` defers the fsync to the end of the batch.",
        "",
        "| mode | entries | fsyncs | µs per entry | entries/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in appends:
        lines.append(
            f"| {row['mode']} | {row['entries']:,} | {row['fsyncs']:,} | "
            f"{row['us_per_entry']:,.1f} | {row['entries_per_second']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the markdown table here (and .json)")
    parser.add_argument("--workdir", type=Path, help="folder for the log files (default: temp)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="log sizes for (b), ascending"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        (folder / "job").mkdir()
        job = bench_job(folder / "job")
        print(f"(a) job verified in {job['verify_seconds']:.3f} s", file=sys.stderr)
        (folder / "appends").mkdir()
        appends = bench_appends(folder / "appends")
        (folder / "scaling").mkdir()
        generated, scaling = bench_scaling(folder / "scaling", sorted(args.sizes))
    results = {
        "date": datetime.date.today().isoformat(),
        "command": COMMAND,
        "machine": machine(),
        "job": job,
        "generate_seconds": generated,
        "scaling": scaling,
        "appends": appends,
        "total_seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    text = markdown(results)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
