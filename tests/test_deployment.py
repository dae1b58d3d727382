"""A real deployment on loopback: a SuperLink and four SuperNodes as separate processes,
with TLS and node authentication, run through a job and through faults.

The tests share one deployment (starting it takes a while) and run in file order:
each leaves it with every node online again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedprop.apps.audit import log_path, verify_logs
from fedprop.apps.client_app import NodeConfig
from fedprop.apps.simulation import simulate
from fedprop.certs import make_pilot_certs
from fedprop.deploy import NODE_AUTH_KEY, NODE_AUTH_PUBLIC, make_node_auth_key
from fedprop.deploy.coordinator import flower_env, node_statuses
from fedprop.deploy.loopback import LoopbackDeployment, free_port
from fedprop.deploy.node import node_config_arg
from fedprop.federation import LocalFederation
from fedprop.spec import JobSpec

pytestmark = pytest.mark.deployment

#: A short version of the shipped job: the same model and protocol, fewer rounds.
SHORT = {"train": {"rounds": 3}, "evaluate": {"histogram-bins": 200}}
#: Seconds a job may take here (2 cores shared by five processes and their ClientApps).
JOB_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def short_spec(spec: JobSpec, tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, Path]:
    short = spec.with_overrides(SHORT)
    path = tmp_path_factory.mktemp("jobs") / "job.toml"
    path.write_text(short.text, encoding="utf-8")
    return short, path


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, spec: JobSpec, party_dirs: dict[str, Path]
) -> Iterator[LoopbackDeployment]:
    with LoopbackDeployment(
        tmp_path_factory.mktemp("loopback"), spec.parties, party_dirs
    ) as running:
        yield running
    assert all(p.poll() is not None for p in running.processes.values()), "a process outlived"


def _fedprop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "fedprop"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_the_job_completes_on_real_processes_and_matches_the_simulation(
    deployment: LoopbackDeployment,
    short_spec: tuple[JobSpec, Path],
    node_configs: dict[str, NodeConfig],
    federation: LocalFederation,
) -> None:
    spec, path = short_spec
    outcome, result = deployment.submit(path, timeout=JOB_TIMEOUT)
    assert outcome.completed, outcome
    simulated = simulate(spec, node_configs, federation.manifest(), federation.coordinator())
    assert abs(result["final"]["auc"] - simulated.final.auc) <= 0.005
    # The same protocol on the same data: Flower's transport changes no value.
    assert simulated.weights is not None
    np.testing.assert_allclose(result["weights"], simulated.weights, rtol=1e-6, atol=1e-9)
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]
    # Every party's privacy log verifies, and the logs agree with each other.
    fed = deployment.federation
    logs = [log_path(fed.audit_dir, p) for p in [*spec.parties, "coordinator"]]
    assert verify_logs(fed.manifest(), logs).ok


def test_a_node_trusting_another_ca_does_not_start(
    deployment: LoopbackDeployment, tmp_path: Path
) -> None:
    other = make_pilot_certs(tmp_path / "other-ca", ["127.0.0.1"], days=1)
    config = deployment.node_config("bank-a")
    done = _fedprop(
        "node",
        "start",
        "--node-config",
        node_config_arg(config),
        "--superlink",
        deployment.setup.address,
        "--root-certificates",
        str(other.ca_cert),
        "--flwr-home",
        str(tmp_path / "flwr"),
        "--runtime-port",
        str(free_port()),
        env=flower_env(tmp_path / "flwr"),
    )
    assert done.returncode == 2
    assert "certificate is not trusted" in done.stderr
    assert not (tmp_path / "flwr").exists(), "nothing may be started or written"


def test_a_node_with_an_unregistered_key_is_refused_by_the_superlink(
    deployment: LoopbackDeployment, tmp_path: Path
) -> None:
    # bank-a's identity, but a node-authentication key the coordinator never registered.
    keys = tmp_path / "keys"
    shutil.copytree(deployment.federation.key_dirs["bank-a"], keys)
    for name in (NODE_AUTH_KEY, NODE_AUTH_PUBLIC):
        (keys / name).unlink()
    make_node_auth_key(keys)
    before = node_statuses(deployment.setup.flwr_home)
    intruder = deployment.spawn("intruder", deployment.node_command("bank-a", key_dir=keys))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and intruder.poll() is None:
            time.sleep(0.5)
        # The SuperLink knows no new node, and the intruder never got a node id.
        assert node_statuses(deployment.setup.flwr_home).keys() == before.keys()
        log = (deployment.logs / "intruder.log").read_text(encoding="utf-8")
        assert "SuperNode ID" not in log
    finally:
        deployment.stop("intruder", kill=True)


def test_a_node_with_bad_data_refuses_the_job_and_the_job_fails_naming_it(
    deployment: LoopbackDeployment,
    short_spec: tuple[JobSpec, Path],
    party_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    broken = tmp_path / "bank-d"
    shutil.copytree(party_dirs["bank-d"], broken)
    train = pd.read_csv(broken / "train.csv")
    train.drop(columns=["balance"]).to_csv(broken / "train.csv", index=False)
    deployment.stop("bank-d")
    deployment.start_node("bank-d", data_dir=broken)
    try:
        outcome, result = deployment.submit(short_spec[1], timeout=JOB_TIMEOUT, name="bad")
        assert not outcome.completed and result is None
        assert "bank-d" in outcome.details and "balance" in outcome.details
        # The other nodes were told, on their own logs, that the job stopped at bank-d.
        for party in ("bank-a", "bank-b", "bank-c"):
            log = log_path(deployment.federation.audit_dir, party).read_text(encoding="utf-8")
            assert '"rule":"job-aborted"' in log and "failed at bank-d" in log, party
    finally:
        # The node restarts with its own data and rejoins under the same identity.
        deployment.stop("bank-d")
        deployment.start_node("bank-d")


def test_a_node_killed_mid_round_fails_the_job_naming_it(
    deployment: LoopbackDeployment, short_spec: tuple[JobSpec, Path]
) -> None:
    path = short_spec[1]
    node_log = log_path(deployment.federation.audit_dir, "bank-c")
    entries_before = len(node_log.read_text(encoding="utf-8").splitlines())

    def kill_when_training_starts() -> None:
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            lines = node_log.read_text(encoding="utf-8").splitlines()[entries_before:]
            if any('"step":"train round 1"' in line for line in lines):
                deployment.stop("bank-c", kill=True)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_training_starts, daemon=True)
    killer.start()
    try:
        outcome, result = deployment.submit(
            path, timeout=JOB_TIMEOUT, name="killed", step_timeout=30.0
        )
        killer.join(timeout=5)
        assert not outcome.completed and result is None
        assert "bank-c" in outcome.details
        # The logs still verify: the coordinator records bank-c's silence as an error,
        # not as a reply bank-c never sent.
        fed = deployment.federation
        logs = [log_path(fed.audit_dir, p) for p in [*deployment.parties, "coordinator"]]
        audit = verify_logs(fed.manifest(), logs)
        assert audit.ok, audit.errors
    finally:
        deployment.stop("bank-c")
        deployment.start_node("bank-c")


def test_a_restarted_coordinator_keeps_its_history_and_nodes_rejoin(
    deployment: LoopbackDeployment, short_spec: tuple[JobSpec, Path]
) -> None:
    env = flower_env(deployment.setup.flwr_home)
    runs_before = subprocess.run(
        ["flwr", "ls", "fedprop", "--format", "json"], env=env, capture_output=True, text=True
    )
    before = {r["run-id"] for r in json.loads(runs_before.stdout)["runs"]}
    assert before, "earlier runs exist"
    deployment.restart_coordinator()
    runs_after = subprocess.run(
        ["flwr", "ls", "fedprop", "--format", "json"], env=env, capture_output=True, text=True
    )
    assert before <= {r["run-id"] for r in json.loads(runs_after.stdout)["runs"]}
    one_round = short_spec[0].with_overrides({"train": {"rounds": 1}})
    path = deployment.root / "one-round.toml"
    path.write_text(one_round.text, encoding="utf-8")
    outcome, result = deployment.submit(path, timeout=JOB_TIMEOUT, name="after-restart")
    assert outcome.completed, outcome
    assert result["rounds"][0]["round"] == 1
