"""A vertical job on a real deployment: a SuperLink and the bank's and the partner's
SuperNodes as separate processes on loopback (TLS, node authentication), where every
message runs in a fresh ClientApp process, so each node rebuilds its role from its own
state folder for every step."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from fedprop.apps.audit import log_path, verify_logs
from fedprop.deploy.loopback import LoopbackDeployment
from synthetic import GUEST, HOST, spec_text, write_parties

pytestmark = pytest.mark.deployment

#: Seconds a job may take here (2 cores shared by three processes and their ClientApps).
JOB_TIMEOUT = 600.0


def test_vertical_training_and_scoring_on_real_processes(tmp_path: Path) -> None:
    write_parties(tmp_path / "data")
    parties = (GUEST, HOST)
    train = tmp_path / "train.toml"
    train.write_text(spec_text(mode="paillier", epochs=1, batch=200))
    score = tmp_path / "score.toml"
    score.write_text(
        f'[job]\nid = "synth-score"\ntype = "vfl-score"\nguest = "{GUEST}"\n'
        f'hosts = ["{HOST}"]\nmodel = "synth-vfl"\nmin-intersection = 300\n'
    )
    jobs = tmp_path / "jobs"
    deployment = LoopbackDeployment(
        tmp_path / "loopback", parties, {p: tmp_path / "data" / p for p in parties}
    )
    try:
        deployment.prepare()
        deployment.start_coordinator()
        for party in parties:
            deployment.register(party)
        started = time.time()
        for party in parties:
            deployment.start_node(
                party,
                wait=False,
                state_dir=jobs / "state" / party,
                model_dir=jobs / "models" / party,
                output_dir=jobs / "out" / party,
            )
        for party in parties:
            deployment.wait_online(party, since=started)

        outcome, trained = deployment.submit(train, timeout=JOB_TIMEOUT, name="train")
        assert outcome.completed, outcome
        assert trained["intersection"] > 300 and trained["metrics"]["auc"] > 0.75
        assert trained["hops"] == sum(trained["hops_by_step"].values())
        outcome, scored = deployment.submit(score, timeout=JOB_TIMEOUT, name="score")
        assert outcome.completed, outcome
    finally:
        deployment.close()

    assert scored["rows"] == scored["intersection"] == trained["intersection"]
    ranked = pd.read_csv(jobs / "out" / GUEST / "synth-score.csv")
    assert len(ranked) == scored["rows"] and ranked["score"].is_monotonic_decreasing
    for party in parties:  # each kept its part; no job state is left
        assert (jobs / "models" / party / "synth-vfl" / "model.json").is_file()
        assert not [p for p in (jobs / "state" / party).rglob("*") if p.is_file()]
    fed = deployment.federation
    logs = [log_path(fed.audit_dir, p) for p in [*parties, "coordinator"]]
    verified = verify_logs(fed.manifest(), logs)
    assert verified.ok, verified.errors
