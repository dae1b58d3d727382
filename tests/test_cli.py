"""The `fedprop` command, run as a user runs it: a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import write_bank_full

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"


def fedprop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "fedprop.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.simulation
def test_demo_end_to_end(tmp_path: Path) -> None:
    source = write_bank_full(tmp_path / "bank-full.csv", rows=8_000, seed=3)
    out = tmp_path / "run"
    done = fedprop(
        "demo", "--spec", str(SPEC), "--source", str(source), "--data", str(tmp_path / "parties"),
        "--out", str(out), "--rounds", "3", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    results = json.loads((out / "results.json").read_text())
    # Exit code 0 exactly when every quality check passed.
    assert (done.returncode == 0) == all(c["passed"] for c in results["checks"])
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    models = {(r["model"], r["evaluated_on"]) for r in results["table"]}
    assert ("federated", "pooled test") in models and ("centralized", "pooled test") in models
    assert {f"local bank-{b}" for b in "abcd"} <= {m for m, _ in models}
    assert '<img src="data:image/png;base64,' in (out / "report.html").read_text()
    assert "federated rounds" in done.stdout
    # A second run reuses the split instead of redoing it.
    again = fedprop(
        "demo", "--spec", str(SPEC), "--source", str(tmp_path / "absent.csv"),
        "--data", str(tmp_path / "parties"), "--out", str(out), "--rounds", "1", cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode in (0, 1), again.stderr
    assert "already split" in again.stdout


def test_a_missing_source_is_one_clear_line(tmp_path: Path) -> None:
    done = fedprop("data", "split", "--source", "nowhere.csv", "--out", "parties", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedprop: error: ")
    assert "nowhere.csv" in lines[0]
    assert not (tmp_path / "parties").exists()


def test_a_bad_spec_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "job.toml"
    bad.write_text(SPEC.read_text().replace("rounds = 20", "rounds = -1"))
    done = fedprop("demo", "--spec", str(bad), "--out", "run", cwd=tmp_path)
    assert done.returncode == 2
    assert "rounds: must be positive" in done.stderr
    assert not (tmp_path / "run").exists()
