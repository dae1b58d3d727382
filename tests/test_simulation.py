"""Jobs in Flower's Simulation Engine: real ServerApp, ClientApps and messages."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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
    spec: JobSpec, node_configs: dict[str, NodeConfig], manifest: Manifest
) -> None:
    plain = spec.with_overrides({"job": {"aggregation": "plaintext"}})
    rounds_seen: list[int] = []
    flower = simulate(plain, node_configs, manifest, progress=lambda r: rounds_seen.append(r.round))

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
    spec: JobSpec, node_configs: dict[str, NodeConfig], manifest: Manifest
) -> None:
    short = {"train": {"rounds": 2}, "evaluate": {"histogram-bins": 200}}
    secure = simulate(spec.with_overrides(short), node_configs, manifest)
    plain = simulate(
        spec.with_overrides({**short, "job": {"aggregation": "plaintext"}}), node_configs, manifest
    )
    assert secure.weights is not None and plain.weights is not None
    np.testing.assert_allclose(secure.weights, plain.weights, atol=1e-5)
    assert abs(secure.final.auc - plain.final.auc) <= 0.001
    # Ciphertexts are larger than the plain floats they carry.
    assert sum(secure.rounds[0].bytes_from.values()) > sum(plain.rounds[0].bytes_from.values())


def test_a_node_with_bad_data_fails_the_job_naming_party_and_file(
    spec: JobSpec, node_configs: dict[str, NodeConfig], manifest: Manifest, tmp_path: Path
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
        simulate(spec.with_overrides({"train": {"rounds": 1}}), configs, manifest)
    message = str(info.value)
    assert "bank-b" in message
    assert "train.csv" in message and "month" in message and "smarch" in message
