"""The job in Flower's Simulation Engine: real ServerApp, ClientApps and messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedprop.apps.simulation import simulate
from fedprop.data.loader import load_party
from fedprop.errors import JobFailedError
from fedprop.models.baselines import train_on
from fedprop.protocols.hfl import HflNode, InProcessTransport, run_hfl
from fedprop.spec import JobSpec

pytestmark = pytest.mark.simulation


def test_flower_run_meets_the_quality_bar_and_equals_the_protocol_model(
    spec: JobSpec, party_dirs: dict[str, Path]
) -> None:
    rounds_seen: list[int] = []
    flower = simulate(spec, party_dirs, progress=lambda r: rounds_seen.append(r.round))

    nodes = {p: HflNode(spec, load_party(party_dirs[p], spec.schema)) for p in spec.parties}
    direct = run_hfl(spec, InProcessTransport(nodes))
    parties = [n.data for n in nodes.values()]
    pooled_test = pd.concat([p.test for p in parties], ignore_index=True)
    central = train_on(spec, [p.train for p in parties]).metrics(
        pooled_test, spec.evaluate.histogram_bins
    )

    assert rounds_seen == list(range(1, spec.train.rounds + 1))
    # Same protocol code on both paths: Flower must deliver it without changing a value.
    np.testing.assert_allclose(flower.weights, direct.weights, rtol=1e-6, atol=1e-9)
    # The coordinator's federated evaluation is within the bar of the pooled model.
    assert abs(flower.final.auc - central.auc) <= 0.005
    assert flower.final.positives + flower.final.negatives == len(pooled_test)


def test_a_node_with_bad_data_fails_the_job_naming_party_and_file(
    spec: JobSpec, party_dirs: dict[str, Path], tmp_path: Path
) -> None:
    dirs = {p: tmp_path / p for p in spec.parties}
    for party, folder in dirs.items():
        shutil.copytree(party_dirs[party], folder)
    train = dirs["bank-b"] / "train.csv"
    lines = train.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("month")] = "smarch"
    train.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")

    with pytest.raises(JobFailedError) as info:
        simulate(spec.with_overrides({"train": {"rounds": 1}}), dirs)
    message = str(info.value)
    assert "bank-b" in message
    assert "train.csv" in message and "month" in message and "smarch" in message
