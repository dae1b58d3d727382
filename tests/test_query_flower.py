"""Queries and DP training in Flower's Simulation Engine, from the attacker's side: real
ServerApp, ClientApps, policy gate, ledgers and privacy logs."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from fedprop.apps.audit import log_path, verify_logs
from fedprop.apps.client_app import NodeConfig
from fedprop.apps.policy import check_request
from fedprop.apps.server_app import CoordinatorConfig
from fedprop.apps.simulation import simulate, simulate_query
from fedprop.ask import demo_policy, run_local_query
from fedprop.crypto.identity import Manifest, generate_identity, load_identity, save_identity
from fedprop.data.loader import load_party
from fedprop.errors import FedpropError, JobFailedError
from fedprop.federation import LocalFederation
from fedprop.protocols.analytics import QueryRequest, QuerySpec, QueryStep, sign_query
from fedprop.spec import JobSpec
from synthetic import write_bank_full

pytestmark = pytest.mark.simulation

QUERY_FILE = Path(__file__).resolve().parents[1] / "configs" / "query-take-up.toml"
BASE_ID = 'id = "take-up-by-contact-education"'


def _query(query_id: str, **replace: str) -> str:
    text = QUERY_FILE.read_text().replace(BASE_ID, f'id = "{query_id}"')
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


@dataclasses.dataclass
class Setup:
    nodes: dict[str, NodeConfig]
    manifest: Manifest
    coordinator: CoordinatorConfig
    audit: Path

    def entries(self, party: str) -> list[dict[str, Any]]:
        path = log_path(self.audit, party)
        return [json.loads(line) for line in path.read_text().splitlines()]

    def ledger_lines(self, party: str) -> list[str]:
        path = self.nodes[party].ledger_path
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def setup(
    federation: LocalFederation, node_configs: dict[str, NodeConfig], tmp_path: Path
) -> Setup:
    """The four banks with the demo policy (budget 3.0, at most 1.0 per query), fresh logs
    and ledgers in ``tmp_path``."""
    manifest = federation.manifest()
    assert manifest.coordinator is not None
    policy = tmp_path / "policy.toml"
    policy.write_text(demo_policy(manifest.federation, manifest.coordinator.fingerprint()))
    audit = tmp_path / "audit"
    nodes = {
        p: dataclasses.replace(c, policy=policy, audit_dir=audit) for p, c in node_configs.items()
    }
    coordinator = CoordinatorConfig(federation.coordinator_key_dir, audit)
    return Setup(nodes, manifest, coordinator, audit)


def test_a_query_answers_near_pandas_with_noise_spends_budget_and_every_log_verifies(
    setup: Setup, party_dirs: dict[str, Path]
) -> None:
    text = _query("q-answer")
    query = QuerySpec.from_toml(text)
    outcome = simulate_query(text, setup.nodes, setup.manifest, setup.coordinator)

    frames = [load_party(party_dirs[p], query.schema) for p in query.parties]
    pooled = pd.concat([f for d in frames for f in (d.train, d.test)], ignore_index=True)
    exact = pooled.groupby(["contact", "education"], observed=True)["y"].agg(["size", "mean"])
    answer = outcome.answer
    assert answer.noised and len(answer.cells) == 12
    differs = 0
    for cell in answer.cells:
        size, rate = exact.loc[tuple(cell.group)]
        if size < query.k:
            continue
        assert not cell.suppressed and cell.count is not None
        # Discrete Laplace of scale b: beyond 15 b has probability e^-15 per cell.
        assert abs(cell.count - size) <= 15 * cell.count_noise_b
        differs += cell.count != size
        measure = next(m for m in cell.measures if m.name == "rate(y)")
        assert isinstance(measure.value, float) and measure.noise_b is not None
        if size >= 100:
            # rate = (positives + e1) / (count + e2) with |e1|, |e2| <= 15 b as above.
            worst = 15 * (measure.noise_b + rate * cell.count_noise_b)
            assert abs(measure.value - rate) <= worst / (size - 15 * cell.count_noise_b)
    assert differs > 0, "every released count equals the exact count: no noise was added"

    # Every node spent the query's epsilon (composed) and logged it; the releaser logged
    # the release; the logs verify, cross-checked between all parties.
    for party in query.parties:
        kinds = [e["kind"] for e in setup.entries(party)]
        spends = [e for e in setup.entries(party) if e["kind"] == "budget-spend"]
        assert len(spends) == 1 and 0 < spends[0]["detail"]["epsilon"] <= query.epsilon + 1e-9
        assert len(setup.ledger_lines(party)) == 1 + (party == query.releaser)
        assert ("release" in kinds) == (party == query.releaser)
    result = verify_logs(setup.manifest, sorted(setup.audit.glob("*.log")))
    assert result.ok, result.errors


def test_a_forged_query_is_refused_by_every_node_before_anything_is_computed(
    setup: Setup, tmp_path: Path
) -> None:
    # A coordinator key the nodes never pinned signs the query (a rogue SuperLink
    # operator); it names itself the coordinator in its own copy of the manifest.
    forger = generate_identity("coordinator")
    save_identity(forger, tmp_path / "forger")
    forged = dataclasses.replace(setup.manifest, coordinator=forger.public)
    coordinator = CoordinatorConfig(tmp_path / "forger", tmp_path / "forger-audit")

    with pytest.raises(JobFailedError) as info:
        simulate_query(_query("q-forged"), setup.nodes, forged, coordinator)

    # Its checkpoints already give it away (the audit refuses them before the query's
    # own signature is checked); either way nothing is computed and each node logs why.
    assert "not with the pinned key" in str(info.value)
    for party in setup.nodes:
        assert setup.ledger_lines(party) == []  # nothing spent, so nothing computed
        refused = [e for e in setup.entries(party) if e["kind"] == "job-refused"]
        assert refused and "pinned key" in refused[0]["detail"]["rule"]
        assert not [e for e in setup.entries(party) if e["kind"] == "job-accepted"]


def test_the_policy_gate_refuses_a_query_altered_after_the_coordinator_signed_it(
    setup: Setup, federation: LocalFederation
) -> None:
    coordinator = load_identity(federation.coordinator_key_dir)
    text = _query("q-signed")
    signature = sign_query(coordinator, text)
    node = setup.nodes["bank-a"]
    step = QueryStep.CONTRIBUTE.value
    check_request(step, QueryRequest(text, signature, b""), setup.manifest, node.policy)
    altered = text.replace("k = 10 ", "k = 2 ")
    with pytest.raises(FedpropError, match="not signed by the coordinator"):
        check_request(step, QueryRequest(altered, signature, b""), setup.manifest, node.policy)
    with pytest.raises(FedpropError, match="no privacy policy"):
        check_request(step, QueryRequest(text, signature, b""), setup.manifest, None)


def test_a_group_by_outside_the_policy_is_refused_naming_the_rule(setup: Setup) -> None:
    # "age" may be a feature but never a group-by key in the demo policy: bands of age
    # would let the coordinator single out small cohorts.
    text = _query(
        "q-age", **{'group-by = ["contact", "education"]': 'group-by = ["age", "contact"]'}
    )
    with pytest.raises(JobFailedError) as info:
        simulate_query(text, setup.nodes, setup.manifest, setup.coordinator)

    assert "group-by-column" in str(info.value) and "age" in str(info.value)
    for party in setup.nodes:
        assert setup.ledger_lines(party) == []
        refused = [e for e in setup.entries(party) if e["kind"] == "job-refused"]
        assert refused and "group-by-column" in refused[0]["detail"]["rule"]


def test_the_budget_runs_out_and_a_replayed_query_is_refused(setup: Setup) -> None:
    # The demo budget is 3.0 per coordinator; each of these queries asks for 1.0.
    asked = {"epsilon = 0.5 ": "epsilon = 1.0 "}
    for n in range(3):
        simulate_query(_query(f"q-{n}", **asked), setup.nodes, setup.manifest, setup.coordinator)

    with pytest.raises(JobFailedError, match="already run"):
        simulate_query(_query("q-0", **asked), setup.nodes, setup.manifest, setup.coordinator)
    with pytest.raises(JobFailedError, match="privacy budget"):
        simulate_query(_query("q-3", **asked), setup.nodes, setup.manifest, setup.coordinator)

    for party, node in setup.nodes.items():
        spends = [json.loads(line) for line in setup.ledger_lines(party)]
        assert sum(s["kind"] == "spend" for s in spends) == 3
        refusals = [e for e in setup.entries(party) if e["kind"] == "job-refused"]
        assert len(refusals) == 2, node.party


def test_fedprop_query_prints_the_answer_and_writes_csv_and_json(tmp_path: Path) -> None:
    source = write_bank_full(tmp_path / "bank-full.csv", rows=6_000, seed=3)
    screen = io.StringIO()
    run = run_local_query(
        QUERY_FILE, source, tmp_path / "data" / "parties", tmp_path / "answer",
        Console(file=screen, width=140),
    )  # fmt: skip

    table = pd.read_csv(run.csv_path)
    assert len(table) == 12 and {"contact", "education", "count", "rate(y)"} <= set(table)
    assert json.loads(run.json_path.read_text())["query"] == run.outcome.answer.query_id
    printed = screen.getvalue()
    assert "take-up-by-contact-education" in printed and "count b" in printed
    # Each node wrote its policy, ledger and log beside the local federation.
    federation = tmp_path / "data" / "federation"
    assert len(list((federation / "policies").glob("*.toml"))) == 4
    assert len(list((federation / "audit").glob("*.budget.jsonl"))) == 4


def test_a_dp_training_job_spends_from_the_same_ledger_before_its_first_update(
    setup: Setup, spec: JobSpec
) -> None:
    dp = {"epsilon": 2.0, "delta": 1e-7, "noise-multiplier": 1.5, "max-grad-norm": 1.0}
    job = spec.with_overrides({"train": {"rounds": 2}, "dp": dp})
    simulate(job, setup.nodes, setup.manifest, setup.coordinator)

    for party in setup.nodes:
        lines = [json.loads(line) for line in setup.ledger_lines(party)]
        assert [line["kind"] for line in lines] == ["spend"]
        assert 0 < lines[0]["epsilon"] <= dp["epsilon"]
        spends = [e for e in setup.entries(party) if e["kind"] == "budget-spend"]
        assert len(spends) == 1 and spends[0]["step"].startswith("train round 1")
    assert verify_logs(setup.manifest, sorted(setup.audit.glob("*.log"))).ok

    # The same job again would spend twice on the same id: refused before training.
    with pytest.raises(JobFailedError, match="already run"):
        simulate(job, setup.nodes, setup.manifest, setup.coordinator)
