"""The `fedprop` command, run as a user runs it: a separate process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedprop.cli import main
from fedprop.crypto.identity import Manifest, NodePublicKeys, load_identity
from synthetic import write_bank_full

SPEC = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"
VFL_SPEC = SPEC.with_name("bank-marketing-vfl.toml")
BANKS = ("bank-a", "bank-b", "bank-c", "bank-d")


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
    assert results["audit"]["errors"] == [] and results["audit"]["entries"] > 0

    # An auditor checks every party's privacy log offline, then finds one altered byte.
    federation = tmp_path / "federation"
    logs = [str(federation / "audit" / f"{p}.log") for p in (*BANKS, "coordinator")]
    manifest = str(federation / "manifest.json")
    verified = fedprop("audit", "verify", *logs, "--manifest", manifest, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("audit OK: 5 logs, 0 errors")
    report = fedprop(
        "audit", "report", *logs, "--manifest", manifest, "--out", str(tmp_path / "audit"),
        cwd=tmp_path,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "bank-c" in (tmp_path / "audit" / "audit-report.html").read_text()
    log = federation / "audit" / "bank-c.log"
    lines = log.read_bytes().splitlines(keepends=True)
    seq = next(i for i, line in enumerate(lines) if b'"sha256":"' in line and i >= 5)
    line = lines[seq]
    at = line.index(b'"sha256":"') + 10
    lines[seq] = line[:at] + (b"0" if line[at : at + 1] != b"0" else b"1") + line[at + 1 :]
    log.write_bytes(b"".join(lines))
    tampered = fedprop("audit", "verify", *logs, "--manifest", manifest, cwd=tmp_path)
    assert tampered.returncode == 1
    assert tampered.stdout.startswith("audit FAILED")
    assert f"error: bank-c seq {seq}:" in tampered.stdout


@pytest.mark.simulation
def test_vertical_demo_then_scoring_end_to_end(tmp_path: Path) -> None:
    write_bank_full(tmp_path / "bank-full.csv", rows=3_000, seed=5)
    spec = tmp_path / "vfl.toml"
    spec.write_text(VFL_SPEC.read_text().replace("max-epochs = 5", "max-epochs = 2"))
    done = fedprop(
        "demo", "--vertical", "--spec", str(spec), "--source", str(tmp_path), "--out", "run",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Released by the bank (held-out rows): AUC" in done.stdout
    assert "every party's logs verify" in done.stdout
    results = sorted((tmp_path / "run" / "results").glob("*/result.json"))
    [training] = [r for r in results if "-score-" not in r.parent.name]  # and the score job's
    assert len(results) == 2
    trained = json.loads(training.read_text())
    assert trained["intersection"] == 3_000 and len(trained["epochs"]) == 2
    assert 0.5 < trained["metrics"]["auc"] <= 1.0
    # The bank scores its customers again later, with the model the parties kept.
    again = fedprop("score", trained["job"], "--root", "run", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    lists = sorted((tmp_path / "run" / "jobs" / "out" / "bank").glob("*.csv"))
    assert len(lists) == 2  # the demo's and this one
    ranked = pd.read_csv(lists[-1])
    assert list(ranked.columns) == ["id", "score", "rank", "decile"] and len(ranked) == 3_000
    assert not (tmp_path / "run" / "jobs" / "out" / "partner").exists()
    unknown = fedprop("score", "no-such-model", "--root", "run", cwd=tmp_path)
    assert unknown.returncode == 2 and "keeps model 'no-such-model'" in unknown.stderr


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


# --- node identities and the federation manifest ---------------------------------------------


def test_node_keygen_writes_owner_only_keys_and_refuses_to_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "keys" / "bank-a"
    done = fedprop("node", "keygen", "--name", "bank-a", "--out", str(folder), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("signing.pem", "sealing.pem", "public.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    public = NodePublicKeys.from_json((folder / "public.json").read_text())
    assert public.name == "bank-a"
    assert public.fingerprint() in done.stdout
    before = (folder / "signing.pem").read_bytes()
    again = fedprop("node", "keygen", "--name", "bank-a", "--out", str(folder), cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"fedprop: error: {folder}: holds an identity; refusing to overwrite it"
    ]
    assert (folder / "signing.pem").read_bytes() == before


def _keygen(tmp_path: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        assert main(["node", "keygen", "--name", name, "--out", str(tmp_path / name)]) == 0
        paths.append(tmp_path / name / "public.json")
    return paths


def test_federation_manifest_lists_every_node_and_a_node_can_pin_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publics = _keygen(tmp_path, "bank-a", "bank-b", "bank-c", "coordinator")
    out = tmp_path / "manifest.json"
    args = ["federation", "manifest", "--name", "pilot", "--out", str(out)]
    code = main([*args, *map(str, publics[:3]), "--coordinator", str(publics[3])])
    assert code == 0
    manifest = Manifest.from_json(out.read_text())
    assert [n.name for n in manifest.nodes] == ["bank-a", "bank-b", "bank-c"]
    assert manifest.coordinator is not None and manifest.coordinator.name == "coordinator"
    assert manifest.fingerprint() in capsys.readouterr().out
    identity = load_identity(tmp_path / "bank-b")
    assert manifest.node("bank-b") == identity.public
    # An existing manifest is not replaced unless asked.
    assert main([*args, *map(str, publics[:3])]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert Manifest.from_json(out.read_text()) == manifest
    assert main([*args, "--overwrite", *map(str, publics[:2])]) == 0
    assert len(Manifest.from_json(out.read_text()).nodes) == 2


def test_federation_manifest_refuses_copied_or_tampered_public_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _keygen(tmp_path, "bank-a", "bank-b")
    out = tmp_path / "manifest.json"
    args = ["federation", "manifest", "--name", "pilot", "--out", str(out)]
    # The same keys under another name: one party could speak for another.
    copied = json.loads(a.read_text())
    copied["name"] = "bank-z"
    del copied["fingerprint"]
    (tmp_path / "copied.json").write_text(json.dumps(copied))
    assert main([*args, str(a), str(tmp_path / "copied.json")]) == 2
    assert "share a public key" in capsys.readouterr().err
    # A key edited after the fingerprint was taken.
    tampered = json.loads(b.read_text())
    tampered["signing"] = json.loads(a.read_text())["signing"]
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    assert main([*args, str(a), str(tmp_path / "tampered.json")]) == 2
    err = capsys.readouterr().err
    assert "tampered.json" in err and "fingerprint of 'bank-b' does not match" in err
    assert main([*args, str(a), str(tmp_path / "absent.json")]) == 2
    assert "absent.json: cannot read" in capsys.readouterr().err
    assert not out.exists()
