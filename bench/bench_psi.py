"""Entity alignment (ECDH-PSI) speed: a guest and a host in two processes, end to end.

For each size, the guest and one host run in two separate OS processes at the same time (the
two cores of this machine), each with its own list of ``n`` customer ids, about 90% of them
shared. Every message crosses between the processes as bytes (``to_bytes``/``from_bytes``
included in the time), as it would through the coordinator. The clock starts when both
processes hold their raw id lists and stops when both hold the aligned list; normalization
(trim, case folding), hashing onto the curve, the four scalar multiplications per id, the
checks of received points, matching and the final alignment are all inside it. Each process
checks its result against the expected intersection, and both must end with the same ordered
list (compared by digest).

The ceiling: each id costs four X25519 multiplications in all (two per party), so with two
cores the best end-to-end rate is half the single-core multiplication rate, which is measured
first in the same run.

    .venv/bin/python bench/bench_psi.py --output bench/results/psi.md

writes ``psi.md`` and ``psi.json`` (same stem as ``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from importlib import metadata
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedprop.protocols.psi import (
    Alignment,
    BlindedIds,
    DoubleBlinded,
    PsiConfig,
    PsiGuest,
    PsiHost,
    PsiResult,
    hash_to_curve,
)

SIZES = (10_000, 30_000, 100_000, 300_000, 1_000_000)
OVERLAP = 0.9
BAR_IDS_PER_SECOND = 10_000
BAR_SIZE = 100_000
JOB_ID = "bench-psi"
HOST = "partner"
TIMEOUT = 3600.0


def guest_ids(n: int) -> list[str]:
    """Ids 0 .. n-1, upper case with stray spaces (the job folds case)."""
    return [f" CUST-{i:010d}" if i % 7 == 0 else f"CUST-{i:010d}" for i in range(n)]


def host_ids(n: int, overlap: int) -> list[str]:
    """Ids n-overlap .. 2n-overlap-1 in lower case, shuffled."""
    ids = [f"cust-{i:010d}" for i in range(n - overlap, 2 * n - overlap)]
    random.Random(n).shuffle(ids)
    return ids


def digest(result: PsiResult) -> str:
    return hashlib.sha256("\n".join(result.ids).encode()).hexdigest()


def run_guest(n: int, overlap: int, barrier: Barrier, inbox: Any, outbox: Any, report: Any) -> None:
    """The guest process: step 1 out, both host messages in, the alignment out."""
    ids = guest_ids(n)
    config = PsiConfig(JOB_ID, min_intersection=1, case_fold=True)
    barrier.wait()
    started, cpu = time.monotonic(), time.process_time()
    guest = PsiGuest(config, ids, [HOST])
    hashed = time.monotonic()
    to_host = guest.blinded_for(HOST).to_bytes()
    outbox.put(to_host)
    blinded = time.monotonic()
    guest.receive_host_ids(BlindedIds.from_bytes(inbox.get(timeout=TIMEOUT)))
    second = time.monotonic()
    guest.receive_double_blinded(DoubleBlinded.from_bytes(inbox.get(timeout=TIMEOUT)))
    matched = time.monotonic()
    result, alignments = guest.finish()
    alignment = alignments[HOST].to_bytes()
    outbox.put(alignment)
    done = time.monotonic()
    report.put(
        {
            "role": "guest",
            "started": started,
            "done": done,
            "cpu_seconds": time.process_time() - cpu,
            "hash_seconds": hashed - started,
            "blind_seconds": blinded - hashed,
            "second_seconds": second - blinded,
            "last_seconds": done - matched,
            "waited_seconds": matched - second,
            "bytes_sent": len(to_host) + len(alignment),
            "aligned": len(result),
            "digest": digest(result),
            "correct": set(result.ids) == {i.strip().casefold() for i in ids[n - overlap :]},
        }
    )


def run_host(n: int, overlap: int, barrier: Barrier, inbox: Any, outbox: Any, report: Any) -> None:
    """The host process: its blinded ids out at once, the guest's doubled, the result in."""
    ids = host_ids(n, overlap)
    config = PsiConfig(JOB_ID, min_intersection=1, case_fold=True)
    barrier.wait()
    started, cpu = time.monotonic(), time.process_time()
    host = PsiHost(config, ids, HOST)
    to_guest = host.blinded().to_bytes()
    outbox.put(to_guest)
    blinded = time.monotonic()
    received = BlindedIds.from_bytes(inbox.get(timeout=TIMEOUT))
    got = time.monotonic()
    answer = host.double_blind(received).to_bytes()
    outbox.put(answer)
    doubled = time.monotonic()
    result = host.finish(Alignment.from_bytes(inbox.get(timeout=TIMEOUT)))
    done = time.monotonic()
    expected = {f"cust-{i:010d}" for i in range(n - overlap, n)}
    report.put(
        {
            "role": "host",
            "started": started,
            "done": done,
            "cpu_seconds": time.process_time() - cpu,
            "blind_seconds": blinded - started,
            "waited_seconds": got - blinded,
            "second_seconds": doubled - got,
            "bytes_sent": len(to_guest) + len(answer),
            "aligned": len(result),
            "digest": digest(result),
            "correct": set(result.ids) == expected,
        }
    )


def one_run(n: int, overlap_share: float) -> dict[str, Any]:
    """Guest and host in two spawned processes; the figures of one alignment."""
    overlap = round(n * overlap_share)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    to_host, to_guest, reports = ctx.Queue(), ctx.Queue(), ctx.Queue()
    processes = [
        ctx.Process(target=run_guest, args=(n, overlap, barrier, to_guest, to_host, reports)),
        ctx.Process(target=run_host, args=(n, overlap, barrier, to_host, to_guest, reports)),
    ]
    for process in processes:
        process.start()
    try:
        by_role = {r["role"]: r for r in (reports.get(timeout=TIMEOUT) for _ in processes)}
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    guest, host = by_role["guest"], by_role["host"]
    if not (guest["correct"] and host["correct"] and guest["digest"] == host["digest"]):
        raise SystemExit(f"n={n}: wrong or differing results: {guest} {host}")
    if guest["aligned"] != overlap:
        raise SystemExit(f"n={n}: {guest['aligned']} aligned, expected {overlap}")
    seconds = max(guest["done"], host["done"]) - min(guest["started"], host["started"])
    return {
        "ids_per_side": n,
        "aligned": overlap,
        "seconds": seconds,
        "ids_per_second": n / seconds,
        "ids_per_cpu_second": n / max(guest["cpu_seconds"], host["cpu_seconds"]),
        "guest": {k: v for k, v in guest.items() if k not in ("started", "done", "role")},
        "host": {k: v for k, v in host.items() if k not in ("started", "done", "role")},
        "bytes_per_id": (guest["bytes_sent"] + host["bytes_sent"]) / n,
    }


def multiplication_rate(count: int = 20_000) -> float:
    """X25519 scalar multiplications per second on one core, as the protocol calls them."""
    points = hash_to_curve(JOB_ID, [str(i) for i in range(count)])
    key = X25519PrivateKey.generate()
    exchange, load = key.exchange, X25519PublicKey.from_public_bytes
    started = time.perf_counter()
    for p in points:
        exchange(load(p))
    return count / (time.perf_counter() - started)


def machine() -> dict[str, str]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown"
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "cryptography": metadata.version("cryptography"),
        "gmpy2": metadata.version("gmpy2"),
        "numpy": metadata.version("numpy"),
        "platform": platform.platform(),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def report(payload: dict[str, Any]) -> str:
    info, rate, runs = payload["machine"], payload["x25519_per_second"], payload["runs"]
    ceiling = rate / 2
    lines = [
        "# Entity alignment (ECDH-PSI) speed",
        "",
        f"Measured {payload['date']} with:",
        "",
        "```bash",
        payload["command"],
        "```",
        "",
        f"Machine: {info['cores']} cores, {info['cpu']} (`lscpu` model name); "
        f"{info['platform']}; load average at start {info['load_average_at_start']}.",
        f"Versions: Python {info['python']}, cryptography {info['cryptography']}, "
        f"gmpy2 {info['gmpy2']}, numpy {info['numpy']}.",
        "The machine is shared and noisy: compare with the multiplication rate measured in "
        "the same run.",
        "",
        f"Guest and one host in two processes at once, {round(OVERLAP * 100)}% of the ids "
        "shared, case folding on, every message passed between the processes as bytes. "
        "Time: from both processes holding their raw lists to both holding the aligned list.",
        "",
        f"One X25519 multiplication on one core: {rate:,.0f}/s. Each id costs four in all, "
        f"two per party, so two cores give at most {ceiling:,.0f} ids/s.",
        "",
        "| ids per side | aligned | seconds | ids/s | of ceiling | CPU s guest, host | "
        "ids per CPU s | guest: hash, blind, 2nd, wait | host: blind, wait, 2nd | "
        "bytes sent per id |",
        "|---:|---:|---:|---:|---:|---|---:|---|---|---:|",
    ]
    for r in runs:
        g, h = r["guest"], r["host"]
        lines.append(
            f"| {r['ids_per_side']:,} | {r['aligned']:,} | {r['seconds']:.2f} | "
            f"{r['ids_per_second']:,.0f} | {r['ids_per_second'] / ceiling:.0%} | "
            f"{g['cpu_seconds']:.2f}, {h['cpu_seconds']:.2f} | {r['ids_per_cpu_second']:,.0f} | "
            f"{g['hash_seconds']:.2f}, {g['blind_seconds']:.2f}, {g['second_seconds']:.2f}, "
            f"{g['waited_seconds']:.2f} | {h['blind_seconds']:.2f}, {h['waited_seconds']:.2f}, "
            f"{h['second_seconds']:.2f} | {r['bytes_per_id']:.1f} |"
        )
    at_bar = [r for r in runs if r["ids_per_side"] == BAR_SIZE]
    if at_bar:
        measured = at_bar[0]["ids_per_second"]
        verdict = "met" if measured >= BAR_IDS_PER_SECOND else "NOT met"
        lines += [
            "",
            f"Bar: at least {BAR_IDS_PER_SECOND:,} ids/s at {BAR_SIZE:,} ids per side: "
            f"{measured:,.0f} ids/s, {verdict}.",
        ]
    lines += [
        "",
        "Columns: 'CPU s' is the CPU time of each process over the run, and 'ids per CPU s' "
        "the ids per side divided by the larger of the two: the rate the run would reach "
        "with both cores to itself. Guest 'hash' is normalizing and hashing its ids onto "
        "the curve, 'blind' its first multiplication (step 1), '2nd' multiplying the host's "
        "blinded ids (checks included), 'wait' the time until the host's double-blinded ids "
        "arrived; host 'blind' is normalizing, hashing and its first multiplication, 'wait' "
        "until the guest's ids arrived, '2nd' checking and multiplying them. The host sends "
        "its own blinded ids before it receives anything, so the second multiplications of "
        "both parties overlap. Bytes: both directions, 32 per id in each of three messages "
        "of n values, plus 4 per aligned id and the headers.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", type=Path, help="write <output>.md and <output>.json")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="ids per side, one run each"
    )
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/bench_psi.py", *sys.argv[1:]])
    info = machine()
    rate = multiplication_rate()
    print(f"X25519: {rate:,.0f} multiplications/s on one core", flush=True)
    runs = []
    for n in args.sizes:
        runs.append(one_run(n, OVERLAP))
        r = runs[-1]
        print(
            f"{n:>9,} ids per side: {r['seconds']:.2f} s, {r['ids_per_second']:,.0f} ids/s",
            flush=True,
        )
    payload = {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": info,
        "x25519_per_second": rate,
        "overlap": OVERLAP,
        "runs": runs,
    }
    text = report(payload)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".md").write_text(text, encoding="utf-8")
        args.output.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.output.with_suffix('.md')} and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
