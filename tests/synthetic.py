"""Synthetic data with a learnable signal, generated in code for tests.

Bank-marketing rows follow bank-full.csv's format (``;``-separated, quoted strings, 17
columns including the leaky ``duration``) so that tests exercise the real split and
loading code without the public file. Vertical parties (:func:`write_parties`) hold
different columns of overlapping customers, with a job spec to match (:func:`spec_text`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedprop.data.vertical import VERTICAL_FILE

JOBS = (
    "admin.", "blue-collar", "entrepreneur", "housemaid", "management", "retired",
    "self-employed", "services", "student", "technician", "unemployed", "unknown",
)  # fmt: skip
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
COLUMNS = (
    "age", "job", "marital", "education", "default", "balance", "housing", "loan", "contact",
    "day", "month", "duration", "campaign", "pdays", "previous", "poutcome", "y",
)  # fmt: skip


def bank_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """A bank-full-like frame whose label depends on a few columns (about 12% positive)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows)
    job = rng.choice(JOBS, rows)
    contact = rng.choice(("cellular", "telephone", "unknown"), rows, p=(0.6, 0.1, 0.3))
    month = rng.choice(MONTHS, rows)
    balance = rng.lognormal(6, 1.5, rows).astype(int) * rng.choice((1, -1), rows, p=(0.9, 0.1))
    campaign = rng.integers(1, 10, rows)
    contacted = rng.random(rows) < 0.2
    pdays = np.where(contacted, rng.integers(1, 400, rows), -1)
    previous = np.where(contacted, rng.integers(1, 6, rows), 0)
    poutcome = np.where(contacted, rng.choice(("failure", "other", "success"), rows), "unknown")
    housing = rng.choice(("no", "yes"), rows)
    logit = (
        -1.9
        + 1.2 * (poutcome == "success")
        + 0.8 * np.isin(month, ("mar", "sep", "oct", "dec"))
        - 0.7 * (contact == "unknown")
        - 0.5 * (housing == "yes")
        - 0.12 * (campaign - 1)
        + 0.015 * (age - 40) * (age > 60)
        + 0.5 * np.isin(job, ("student", "retired"))
    )
    y = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "age": age,
            "job": job,
            "marital": rng.choice(("divorced", "married", "single"), rows),
            "education": rng.choice(("primary", "secondary", "tertiary", "unknown"), rows),
            "default": rng.choice(("no", "yes"), rows, p=(0.98, 0.02)),
            "balance": balance,
            "housing": housing,
            "loan": rng.choice(("no", "yes"), rows, p=(0.85, 0.15)),
            "contact": contact,
            "day": rng.integers(1, 32, rows),
            "month": month,
            "duration": rng.integers(0, 1000, rows),
            "campaign": campaign,
            "pdays": pdays,
            "previous": previous,
            "poutcome": poutcome,
            "y": np.where(y, "yes", "no"),
        },
        columns=list(COLUMNS),
    )


def write_bank_full(path: Path, rows: int, seed: int = 0) -> Path:
    """Write a synthetic file in bank-full.csv's format and return its path."""
    bank_frame(rows, seed).to_csv(path, sep=";", index=False, quoting=2)  # QUOTE_NONNUMERIC
    return path


# --- vertical parties ----------------------------------------------------------------------

GUEST, HOST = "bank", "partner"


def write_parties(
    root: Path, hosts: Sequence[str] = (HOST,), rows: int = 520, seed: int = 3
) -> None:
    """``root/<party>/data.csv``: ids ``CUST-...``, the guest with the label, each host
    missing a different 8% of the customers; every party's rows in its own order."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"CUST-{i:06d}" for i in range(rows)])
    x = rng.normal(size=(rows, 3))
    segment = rng.choice(["retail", "premium", "private"], rows)
    logit = x @ [0.8, -0.6, 0.5] + np.where(segment == "private", 0.8, 0.0) - 0.4
    host_frames = {}
    for k, host in enumerate(hosts):
        h = rng.normal(size=(rows, 3))
        tenure = np.where(rng.random(rows) < 0.1, -1, rng.integers(0, 40, rows))
        logit = logit + h @ ([1.4, -1.1, 0.9] if k == 0 else [0.6, 0.6, -0.6])
        logit = logit + np.where(tenure == -1, 0.5, tenure / 40.0)
        keep = rng.random(rows) >= 0.08
        host_frames[host] = pd.DataFrame(
            {"id": ids, "h1": h[:, 0], "h2": h[:, 1], "h3": h[:, 2], "tenure": tenure}
        )[keep]
    y = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    guest = pd.DataFrame(
        {"id": ids, "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "segment": segment, "y": y}
    )
    for party, frame in {GUEST: guest, **host_frames}.items():
        (root / party).mkdir(parents=True)
        shuffled = frame.sample(frac=1.0, random_state=int(rng.integers(1 << 30)))
        shuffled.to_csv(root / party / VERTICAL_FILE, index=False, float_format="%.6f")


def spec_text(
    *,
    job: str = "synth-vfl",
    mode: str = "plaintext",
    hosts: Sequence[str] = (HOST,),
    epochs: int = 2,
    batch: int = 150,
    tolerance: float = 0.0,
    minimum: int = 300,
) -> str:
    """A ``vfl-train`` job over :func:`write_parties`' columns; each party's dataset is
    named ``<party>-customers``."""
    host_tables = "".join(
        f"""
[parties.{h}]
id-column = "id"
dataset = "{h}-customers"
[[parties.{h}.columns]]
name = "h1"
kind = "float"
[[parties.{h}.columns]]
name = "h2"
kind = "float"
[[parties.{h}.columns]]
name = "h3"
kind = "float"
[[parties.{h}.columns]]
name = "tenure"
kind = "integer"
sentinel = -1
"""
        for h in hosts
    )
    return f"""
[job]
id = "{job}"
type = "vfl-train"
guest = "{GUEST}"
hosts = {json.dumps(list(hosts))}
aggregation = "{mode}"
key-bits = 2048
min-intersection = {minimum}

[train]
learning-rate = 0.5
batch-size = {batch}
max-epochs = {epochs}
tolerance = {tolerance}

[evaluate]
test-fraction = 0.25
seed = 11

[parties.{GUEST}]
id-column = "id"
dataset = "{GUEST}-customers"
label = "y"
label-values = ["no", "yes"]
[[parties.{GUEST}.columns]]
name = "x1"
kind = "float"
[[parties.{GUEST}.columns]]
name = "x2"
kind = "float"
[[parties.{GUEST}.columns]]
name = "x3"
kind = "float"
[[parties.{GUEST}.columns]]
name = "segment"
kind = "categorical"
vocabulary = ["retail", "premium", "private"]
{host_tables}"""


def label_patterns(labels: np.ndarray) -> list[bytes]:
    """A label vector in every encoding a careless implementation might send or store."""
    y = np.asarray(labels).astype(np.int64)
    text = [str(v) for v in y]
    return [
        y.astype(np.uint8).tobytes(),
        y.astype("<i8").tobytes(),
        y.astype(">i8").tobytes(),
        y.astype("<f8").tobytes(),
        y.astype(">f8").tobytes(),
        np.where(y == 1, 1, -1).astype(np.int8).tobytes(),
        np.where(y == 1, 1, -1).astype("<i8").tobytes(),
        ",".join(text).encode(),
        "".join(text).encode(),
        json.dumps(y.tolist()).encode(),
        "".join(text[:64]).encode(),
    ]
