"""Vertical training and joint scoring in Flower's Simulation Engine, from the attacker's
side: the real ServerApp (coordinator and arbiter), one ClientApp per party behind its
audit and policy gate, every message a Flower record, every party's privacy log."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Message

from fedprop.apps.audit import log_path, verify_logs
from fedprop.apps.client_app import NodeConfig
from fedprop.apps.records import from_record
from fedprop.apps.server_app import CoordinatorConfig, GridTransport
from fedprop.apps.simulation import simulate_vertical
from fedprop.crypto.identity import Manifest
from fedprop.data.vertical import VERTICAL_FILE
from fedprop.errors import JobFailedError
from fedprop.federation import local_federation
from fedprop.protocols.steps import REPLIES, REQUESTS
from fedprop.protocols.vertical import (
    ModelPart,
    ScoreResult,
    VerticalResult,
    parse_vertical,
)
from synthetic import GUEST, HOST, label_patterns, spec_text, write_parties

pytestmark = pytest.mark.simulation

SCORE_TEXT = f"""
[job]
id = "synth-score"
type = "vfl-score"
guest = "{GUEST}"
hosts = ["{HOST}"]
model = "synth-vfl"
min-intersection = 300
"""


def policy_text(manifest: Manifest, *, types: Sequence[str], features: Sequence[str]) -> str:
    """A party's policy: vertical jobs from the pinned coordinator, on its own dataset."""
    assert manifest.coordinator is not None
    return f"""
[federations.{manifest.federation}]
coordinators = ["{manifest.coordinator.fingerprint()}"]

[jobs]
types = {json.dumps(list(types))}
aggregation = ["paillier"]
min-key-bits = 2048

[release]
min-cohort = 10
model = false

[datasets.{GUEST}-customers]
features = ["x1", "x2", "x3", "segment"]
targets = ["y"]

[datasets.{HOST}-customers]
features = {json.dumps(list(features))}
"""


@dataclasses.dataclass
class Setup:
    root: Path
    nodes: dict[str, NodeConfig]
    manifest: Manifest
    coordinator: CoordinatorConfig

    @property
    def audit(self) -> Path:
        """The folder of every party's privacy log."""
        return self.coordinator.audit_dir

    def entries(self, party: str) -> list[dict[str, Any]]:
        path = log_path(self.audit, party)
        return [json.loads(line) for line in path.read_text().splitlines()]

    def kinds(self, party: str) -> list[str]:
        return [e["kind"] for e in self.entries(party)]

    def state_files(self, party: str) -> list[Path]:
        state = self.nodes[party].state_dir
        assert state is not None
        return [p for p in state.rglob("*") if p.is_file()] if state.exists() else []

    def policy(self, party: str, **kwargs: Any) -> None:
        """Give ``party`` a policy (a new file: other setups may share the old one)."""
        text = policy_text(self.manifest, **kwargs)
        path = self.root / f"{party}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.toml"
        path.write_text(text)
        self.nodes[party] = dataclasses.replace(self.nodes[party], policy=path)


def make_setup(tmp_path: Path) -> Setup:
    """A bank (guest) and a partner (host) with their own data, keys, state, model and
    output folders; both allow vertical training and scoring on their datasets."""
    write_parties(tmp_path / "data")
    federation = local_federation(tmp_path / "fed", "vertical-test", [GUEST, HOST])
    nodes = federation.node_configs(
        {p: tmp_path / "data" / p for p in (GUEST, HOST)}, jobs_dir=tmp_path / "jobs"
    )
    setup = Setup(tmp_path, nodes, federation.manifest(), federation.coordinator())
    for party in (GUEST, HOST):
        setup.policy(party, types=["vfl-train", "score"], features=["h1", "h2", "h3", "tenure"])
    return setup


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path)


def run(setup: Setup, text: str) -> VerticalResult | ScoreResult:
    return simulate_vertical(parse_vertical(text), setup.nodes, setup.manifest, setup.coordinator)


@contextlib.contextmanager
def coordinator_held() -> Iterator[list[object]]:
    """Every request the coordinator pushed and every reply it pulled, decoded (the
    ServerApp runs in this process in the Simulation Engine)."""
    seen: list[object] = []
    original = GridTransport._send_and_receive

    def recording(self: GridTransport, messages: list[Message], label: str) -> dict[int, Message]:
        for m in messages:
            seen.append(from_record(REQUESTS[m.metadata.message_type], m.content))
        replies = original(self, messages, label)
        for m in replies.values():
            if not m.has_error():
                seen.append(from_record(REPLIES[m.metadata.message_type], m.content))
        return replies

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GridTransport, "_send_and_receive", recording)
        yield seen


@dataclasses.dataclass
class Trained:
    setup: Setup
    result: VerticalResult
    held: list[object]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One paillier training job through Flower, and all the coordinator held."""
    setup = make_setup(tmp_path_factory.mktemp("vertical-flower"))
    with coordinator_held() as held:
        result = run(setup, spec_text(mode="paillier", epochs=2, batch=200))
    assert isinstance(result, VerticalResult)
    return Trained(setup, result, held)


def as_bytes(messages: list[object]) -> bytes:
    parts = []
    for message in messages:
        for f in dataclasses.fields(message):  # type: ignore[arg-type]
            value = getattr(message, f.name)
            parts.append(value if isinstance(value, bytes) else repr(value).encode())
    return b"\x00".join(parts)


def test_training_through_flower_keeps_labels_and_ids_from_the_coordinator(
    trained: Trained,
) -> None:
    setup, result, held = trained.setup, trained.result, trained.held
    guest = pd.read_csv(setup.root / "data" / GUEST / VERTICAL_FILE)
    host = pd.read_csv(setup.root / "data" / HOST / VERTICAL_FILE)
    assert result.intersection == len(set(guest["id"]) & set(host["id"]))
    assert result.metrics["auc"] > 0.75  # the synthetic signal is strong in both parties
    assert len(result.epochs) == 2 and result.hops == sum(result.hops_by_step.values())
    # What the coordinator held: every request and reply of the Flower run.
    view = as_bytes(held)
    assert len(held) > 2 * result.hops
    assert (
        b"CUST-" not in view
        and b"CUST-" in (setup.root / "data" / HOST / VERTICAL_FILE).read_bytes()
    )
    labels = (guest["y"] == "yes").to_numpy(np.int64)
    assert not any(p in view for p in label_patterns(labels))
    # Each party kept its part; no job state (no secret) is left behind.
    for party in (GUEST, HOST):
        model_dir = setup.nodes[party].model_dir
        assert model_dir is not None
        part = ModelPart.load(model_dir, "synth-vfl", party)
        assert part.dataset == f"{party}-customers"
        assert setup.state_files(party) == []
        assert part.weights.tobytes() not in view
    # Every party logged the key ceremony; only the guest released (the intersection size
    # and the metrics); every log verifies, cross-checked with the coordinator's.
    for party in (GUEST, HOST):
        assert setup.kinds(party).count("key-ceremony") == 1
    releases = [e["detail"]["what"] for e in setup.entries(GUEST) if e["kind"] == "release"]
    assert len(releases) == 2 and releases[0].startswith("intersection size")
    assert "release" not in setup.kinds(HOST)
    verified = verify_logs(setup.manifest, sorted(setup.audit.glob("*.log")))
    assert verified.ok, verified.errors


def test_scoring_through_flower_writes_the_target_list_at_the_guest_only(
    trained: Trained,
) -> None:
    setup = trained.setup
    result = run(setup, SCORE_TEXT)

    assert isinstance(result, ScoreResult)
    out = setup.nodes[GUEST].output_dir
    assert out is not None
    ranked = pd.read_csv(out / "synth-score.csv")
    assert len(ranked) == result.rows == result.intersection
    assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    assert ranked["score"].is_monotonic_decreasing
    host_out = setup.nodes[HOST].output_dir
    assert host_out is None or not host_out.exists()
    verified = verify_logs(setup.manifest, sorted(setup.audit.glob("*.log")))
    assert verified.ok, verified.errors


def test_a_host_whose_policy_refuses_a_column_stops_the_job_before_any_state(
    setup: Setup,
) -> None:
    setup.policy(HOST, types=["vfl-train"], features=["h1", "h2", "h3"])  # not 'tenure'

    with pytest.raises(JobFailedError) as info:
        run(setup, spec_text(mode="paillier"))

    assert "feature-column" in str(info.value) and "tenure" in str(info.value)
    refused = [e for e in setup.entries(HOST) if e["kind"] == "job-refused"]
    assert refused and "tenure" in refused[0]["detail"]["rule"]
    assert "job-accepted" not in setup.kinds(HOST)
    for party in (GUEST, HOST):  # the guest's started job was aborted and cleared
        assert setup.state_files(party) == []


def test_scoring_is_refused_by_a_policy_without_the_score_job_type(trained: Trained) -> None:
    setup = dataclasses.replace(trained.setup, nodes=dict(trained.setup.nodes))
    setup.policy(GUEST, types=["vfl-train"], features=["h1", "h2", "h3", "tenure"])
    text = SCORE_TEXT.replace('id = "synth-score"', 'id = "synth-score-refused"')

    with pytest.raises(JobFailedError, match="job-type"):
        run(setup, text)

    out = setup.nodes[GUEST].output_dir
    assert out is not None and not (out / "synth-score-refused.csv").exists()


def test_a_node_without_state_and_model_folders_refuses_vertical_jobs(setup: Setup) -> None:
    setup.nodes[HOST] = dataclasses.replace(setup.nodes[HOST], state_dir=None, model_dir=None)

    with pytest.raises(JobFailedError, match="state-dir"):
        run(setup, spec_text(mode="paillier"))
