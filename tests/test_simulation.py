"""Jobs in Flower's Simulation Engine: real ServerApp, ClientApps and messages."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedprop.apps.audit import log_path, verify_logs
from fedprop.apps.client_app import NodeConfig
from fedprop.apps.simulation import simulate
from fedprop.crypto.identity import Manifest
from fedprop.data.loader import load_party
from fedprop.errors import JobFailedError
from fedprop.federation import LocalFederation
from fedprop.models.baselines import train_on
from fedprop.protocols.hfl import HflNode, InProcessTransport, run_hfl
from fedprop.spec import JobSpec

pytestmark = pytest.mark.simulation


@pytest.fixture(scope="module")
def manifest(federation: LocalFederation) -> Manifest:
    return federation.manifest()


def test_flower_run_meets_the_quality_bar_and_equals_the_protocol_model(
    spec: JobSpec,
    node_configs: dict[str, NodeConfig],
    manifest: Manifest,
    federation: LocalFederation,
) -> None:
    plain = spec.with_overrides({"job": {"aggregation": "plaintext"}})
    rounds_seen: list[int] = []
    flower = simulate(
        plain,
        node_configs,
        manifest,
        federation.coordinator(),
        progress=lambda r: rounds_seen.append(r.round),
    )

    nodes = {
        p: HflNode(plain, load_party(c.data_dir, plain.schema), c.settings())
        for p, c in node_configs.items()
    }
    direct = run_hfl(plain, InProcessTransport(nodes), manifest)
    parties = [n.data for n in nodes.values()]
    pooled_test = pd.concat([p.test for p in parties], ignore_index=True)
    central = train_on(plain, [p.train for p in parties]).metrics(
        pooled_test, plain.evaluate.histogram_bins
    )

    assert rounds_seen == list(range(1, plain.train.rounds + 1))
    assert flower.weights is not None and direct.weights is not None
    # Same protocol code on both paths: Flower must deliver it without changing a value.
    np.testing.assert_allclose(flower.weights, direct.weights, rtol=1e-6, atol=1e-9)
    # The coordinator's federated evaluation is within the bar of the pooled model.
    assert abs(flower.final.auc - central.auc) <= 0.005
    assert flower.final.positives + flower.final.negatives == len(pooled_test)


def test_flower_paillier_run_gives_the_plaintext_model(
    spec: JobSpec,
    node_configs: dict[str, NodeConfig],
    manifest: Manifest,
    federation: LocalFederation,
) -> None:
    short = {"train": {"rounds": 2}, "evaluate": {"histogram-bins": 200}}
    coordinator = federation.coordinator()
    secure = simulate(spec.with_overrides(short), node_configs, manifest, coordinator)
    plain = simulate(
        spec.with_overrides({**short, "job": {"aggregation": "plaintext"}}),
        node_configs,
        manifest,
        coordinator,
    )
    assert secure.weights is not None and plain.weights is not None
    np.testing.assert_allclose(secure.weights, plain.weights, atol=1e-5)
    assert abs(secure.final.auc - plain.final.auc) <= 0.001
    # Ciphertexts are larger than the plain floats they carry.
    assert sum(secure.rounds[0].bytes_from.values()) > sum(plain.rounds[0].bytes_from.values())


def test_a_node_with_bad_data_fails_the_job_naming_party_and_file(
    spec: JobSpec,
    node_configs: dict[str, NodeConfig],
    manifest: Manifest,
    federation: LocalFederation,
    tmp_path: Path,
) -> None:
    configs = {}
    for party, cfg in node_configs.items():
        shutil.copytree(cfg.data_dir, tmp_path / party)
        configs[party] = dataclasses.replace(cfg, data_dir=tmp_path / party)
    train = tmp_path / "bank-b" / "train.csv"
    lines = train.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("month")] = "smarch"
    train.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")

    with pytest.raises(JobFailedError) as info:
        simulate(
            spec.with_overrides({"train": {"rounds": 1}}),
            configs,
            manifest,
            federation.coordinator(),
        )
    message = str(info.value)
    assert "bank-b" in message
    assert "train.csv" in message and "month" in message and "smarch" in message
    # The refusal is on bank-b's privacy log, with the reason it gave.
    refusals = [
        e
        for e in _entries(federation, "bank-b")
        if e["kind"] == "job-refused" and "smarch" in e["detail"]["rule"]
    ]
    assert refusals, "bank-b's log does not record the refusal"
    # The other nodes are told the job stopped, and where, but not bank-b's reason.
    for party in ("bank-a", "bank-c", "bank-d"):
        aborts = [
            e["detail"]["message"]
            for e in _entries(federation, party)
            if e["kind"] == "error" and e["detail"]["rule"] == "job-aborted"
        ]
        assert aborts and "bank-b" in aborts[-1], party
        assert "smarch" not in aborts[-1] and "train.csv" not in aborts[-1]


def _entries(federation: LocalFederation, party: str) -> list[dict[str, Any]]:
    path = log_path(federation.audit_dir, party)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_party_logged_every_message_and_the_logs_verify(
    spec: JobSpec,
    node_configs: dict[str, NodeConfig],
    manifest: Manifest,
    federation: LocalFederation,
) -> None:
    job = spec.with_overrides(
        {"job": {"id": "audited-job"}, "train": {"rounds": 2}, "evaluate": {"histogram-bins": 50}}
    )
    simulate(job, node_configs, manifest, federation.coordinator())
    names = [*job.parties, "coordinator"]
    verdict = verify_logs(manifest, [log_path(federation.audit_dir, n) for n in names])
    assert verdict.ok, verdict.summary()
    coordinator = [e for e in _entries(federation, "coordinator") if e["job"] == "audited-job"]
    sent = [e for e in coordinator if e["kind"] == "message-sent"]
    received = [e for e in coordinator if e["kind"] == "message-received"]
    # keys, stats, then train and one release per round, the last model's evaluate, and
    # the model release.
    steps = 4 + 4 + 2 * (4 + 1) + 4 + 4
    assert len(sent) == len(received) == steps
    witnessed = {e["detail"]["signer"] for e in coordinator if e["kind"] == "checkpoint-witnessed"}
    assert witnessed == set(job.parties)
    for party in job.parties:
        own = [e for e in _entries(federation, party) if e["job"] == "audited-job"]
        kinds = [e["kind"] for e in own]
        assert kinds.count("message-received") == kinds.count("message-sent")
        assert "job-accepted" in kinds and "checkpoint-witnessed" in kinds
        assert kinds.index("job-accepted") < kinds.index("release")
        # The log holds digests and sizes of messages, never their content.
        assert all("payload" not in e["detail"] for e in own)
    holder = [e["kind"] for e in _entries(federation, job.key_holder)]
    assert "key-ceremony" in holder


def _policy_for(federation: LocalFederation, example: str, **replace: str) -> str:
    manifest = federation.manifest()
    assert manifest.coordinator is not None
    text = example.replace("[federations.pilot]", f"[federations.{manifest.federation}]")
    text = re.sub(r'"[0-9a-f]{64}"', f'"{manifest.coordinator.fingerprint()}"', text)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_a_node_policy_refuses_a_job_before_reading_data_and_logs_the_rule(
    spec: JobSpec,
    node_configs: dict[str, NodeConfig],
    manifest: Manifest,
    federation: LocalFederation,
    tmp_path: Path,
) -> None:
    example = (Path(__file__).resolve().parents[1] / "node" / "policy.example.toml").read_text()
    allowing = tmp_path / "allowing.toml"
    allowing.write_text(_policy_for(federation, example))
    # bank-c's policy never lets "balance" be a feature; its data folder does not even
    # exist, so a refusal after reading data would be a different error.
    refusing = tmp_path / "refusing.toml"
    refusing.write_text(_policy_for(federation, example, **{'"default", "balance",': '"default",'}))
    configs = {p: dataclasses.replace(c, policy=allowing) for p, c in node_configs.items()}
    configs["bank-c"] = dataclasses.replace(
        configs["bank-c"], policy=refusing, data_dir=tmp_path / "no-such-folder"
    )
    with pytest.raises(JobFailedError) as info:
        simulate(
            spec.with_overrides({"train": {"rounds": 1}}),
            configs,
            manifest,
            federation.coordinator(),
        )
    message = str(info.value)
    assert "bank-c" in message and "feature-column" in message and "balance" in message
    refusals = [e for e in _entries(federation, "bank-c") if e["kind"] == "job-refused"]
    assert refusals and "feature-column" in refusals[-1]["detail"]["rule"]
