"""The job in Flower's Simulation Engine: real ServerApp, ClientApps and messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fedprop.apps.simulation import simulate
from fedprop.data.loader import load_party
from fedprop.errors import JobFailedError
from fedprop.protocols.hfl import HflNode, InProcessTransport, run_hfl
from fedprop.spec import JobSpec

pytestmark = pytest.mark.simulation


def test_flower_run_gives_the_protocol_model_and_quality(
    spec: JobSpec, party_dirs: dict[str, Path]
) -> None:
    small = spec.with_overrides({"train": {"rounds": 4}})
    rounds_seen: list[int] = []
    flower = simulate(small, party_dirs, progress=lambda r: rounds_seen.append(r.round))

    nodes = {p: HflNode(small, load_party(party_dirs[p], small.schema)) for p in small.parties}
    direct = run_hfl(small, InProcessTransport(nodes))

    assert rounds_seen == [1, 2, 3, 4]
    # Same protocol code on both paths: Flower must deliver it without changing a value.
    np.testing.assert_allclose(flower.weights, direct.weights, rtol=1e-6, atol=1e-9)
    assert flower.final.auc == pytest.approx(direct.final.auc, abs=1e-6)
    assert flower.final.auc > 0.6


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
