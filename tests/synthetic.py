"""Synthetic bank-marketing data with a learnable signal, generated in code for tests.

Rows follow bank-full.csv's format (``;``-separated, quoted strings, 17 columns
including the leaky ``duration``) so that tests exercise the real split and
loading code without the public file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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
