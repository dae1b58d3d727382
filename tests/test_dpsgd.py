"""DP-SGD inside a node: the ``[dp]`` spec table, the job's spend and its accounting, noise
that is there and cannot be replayed, and per-row clipping seen from the attacker's side.

Attacker-side tests compare the model updates two neighbouring datasets produce, which is
what a coordinator (or another bank) could compare across jobs: one row replaced by an
outlier must move the update by at most what the clipping norm allows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant
from torch import nn

from fedprop import spec as spec_module
from fedprop.apps.client_app import NodeConfig
from fedprop.data.loader import load_party
from fedprop.errors import SpecError
from fedprop.models.nets import build_model, to_vector
from fedprop.models.train import train_epochs
from fedprop.privacy.dpsgd import (
    DpTrainingError,
    DpTrainReport,
    dp_training_spend,
    noise_multiplier_for,
    sample_rate,
    steps_per_epoch,
    train_epochs_dp,
    training_epsilon,
)
from fedprop.privacy.ledger import (
    BudgetExceededError,
    BudgetLedger,
    LedgerError,
    Mechanism,
    MechanismKind,
    Spend,
)
from fedprop.privacy.policy import DpBudget
from fedprop.protocols import hfl
from fedprop.protocols.hfl import HflNode, InProcessTransport, run_hfl
from fedprop.spec import DpTrainConfig, JobSpec, ModelConfig, ModelKind, TrainConfig

COORDINATOR = "c" * 64
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DP = {"epsilon": 3.0, "delta": 1e-5, "noise-multiplier": 1.0, "max-grad-norm": 1.0}
#: dp-accounting's PLD discretization, the ledger's.
PLD_INTERVAL = 1e-4


def with_dp(spec: JobSpec, **changes: Any) -> JobSpec:
    return spec.with_overrides({"dp": {**DP, **changes}})


def dp_config(**changes: Any) -> TrainConfig:
    """Local training settings with DP: plain SGD-with-momentum, as in the spec."""
    dp = DpTrainConfig(epsilon=100.0, delta=1e-5, noise_multiplier=1.0, max_grad_norm=1.0)
    return dataclasses.replace(
        TrainConfig(optimizer=spec_module.OptimizerKind.SGD, dp=dp), **changes
    )


def rows(n: int, features: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 1).astype(np.float64)
    return x, y


def trained(
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    model: ModelConfig = ModelConfig(),  # noqa: B008 - frozen dataclass
    dp: bool = True,
    epochs: int = 1,
) -> np.ndarray:
    net = build_model(model, x.shape[1], seed=3)
    train: Callable[..., Any] = train_epochs_dp if dp else train_epochs
    train(net, x, y, config, epochs=epochs, pos_weight=1.0, seed=11)
    return to_vector(net)


# --- the [dp] table ---------------------------------------------------------------------------


def test_a_dp_table_is_parsed_and_survives_overrides(spec: JobSpec) -> None:
    assert spec.train.dp is None
    dp = with_dp(spec)
    assert dp.train.dp == DpTrainConfig(
        epsilon=3.0, delta=1e-5, noise_multiplier=1.0, max_grad_norm=1.0
    )
    # the spec is rewritten for overrides (as `fedprop run --rounds` does): [dp] stays
    again = dp.with_overrides({"train": {"rounds": 3}})
    assert (again.train.rounds, again.train.dp) == (3, dp.train.dp)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise-multiplier": 0.0}, "[dp] noise-multiplier: must be above 0"),
        ({"noise-multiplier": -1.0}, "[dp] noise-multiplier: must be above 0"),
        ({"max-grad-norm": 0.0}, "[dp] max-grad-norm: must be above 0"),
        ({"epsilon": 0.0}, "[dp] epsilon: must be above 0"),
        ({"delta": 0.0}, "[dp] delta: must be above 0 and below 1"),
        ({"delta": 1.0}, "[dp] delta: must be above 0 and below 1"),
        ({"epsilon": math.inf}, "[dp] epsilon: must be a finite number"),
        ({"noise-multiplier": math.nan}, "[dp] noise-multiplier: must be a finite number"),
        ({"max-grad-norm": "1"}, "[dp] max-grad-norm: expected float"),
        ({"delta": True}, "[dp] delta: expected float"),
        ({"noise": 1.0}, "[dp]: unknown key(s) noise"),
    ],
)
def test_bad_dp_values_are_refused_naming_the_key(
    spec: JobSpec, changes: dict[str, Any], message: str
) -> None:
    text = (
        spec.text
        + "\n[dp]\n"
        + "".join(f"{key} = {_toml(value)}\n" for key, value in {**DP, **changes}.items())
    )
    with pytest.raises(SpecError, match=_escaped(message)):
        JobSpec.from_toml(text)


@pytest.mark.parametrize("missing", sorted(DP))
def test_every_dp_key_is_required(spec: JobSpec, missing: str) -> None:
    text = (
        spec.text
        + "\n[dp]\n"
        + "".join(f"{key} = {value}\n" for key, value in DP.items() if key != missing)
    )
    with pytest.raises(SpecError, match=_escaped(f"[dp]: missing key '{missing}'")):
        JobSpec.from_toml(text)


def test_dp_must_be_a_table(spec: JobSpec) -> None:
    with pytest.raises(SpecError, match=_escaped("[dp] must be a table")):
        JobSpec.from_toml("dp = 3\n" + spec.text)


def test_dp_training_refuses_an_optimizer_opacus_cannot_wrap(
    spec: JobSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spec_module, "DP_OPTIMIZERS", frozenset({spec_module.OptimizerKind.SGD}))
    with pytest.raises(SpecError, match=r"\[train\] optimizer: DP training .* not 'adam'"):
        with_dp(spec)
    assert with_dp(spec.with_overrides({"train": {"optimizer": "sgd"}})).train.dp is not None


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf"
    return repr(value)


def _escaped(message: str) -> str:
    return "".join("\\" + c if c in "[]().*+?{}^$|\\" else c for c in message)


# --- the job's spend --------------------------------------------------------------------------


def _dp_accounting_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting used directly, as its documentation shows, for the same event."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def test_the_spend_is_the_whole_jobs_and_matches_dp_accounting(spec: JobSpec) -> None:
    job = with_dp(spec, epsilon=8.0).with_overrides({"train": {"rounds": 5, "local-epochs": 2}})
    spend = dp_training_spend(job, COORDINATOR, 3_000)
    q, steps = 128 / 3_000, 5 * 2 * math.ceil(3_000 / 128)
    assert spend.mechanisms == (
        Mechanism(MechanismKind.SUBSAMPLED_GAUSSIAN, 1.0, count=steps, sampling=q),
    )
    expected = _dp_accounting_epsilon(1.0, q, steps, 1e-5)
    assert spend.epsilon == pytest.approx(expected, rel=1e-12)
    assert spend.epsilon == training_epsilon(job, 3_000)
    # an independent accountant (Renyi DP) is looser, never tighter
    rdp = RdpAccountant()
    rdp.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.0)), steps
        )
    )
    assert expected <= rdp.get_epsilon(1e-5) <= 1.25 * expected
    assert (spend.delta, spend.extra_delta, spend.what) == (1e-5, 0.0, "train")
    assert spend.query_id == job.id
    assert spend.digest == hashlib.sha256(job.text.encode()).hexdigest()
    assert dp_training_spend(job, COORDINATOR, 3_000, query_id="job-7").query_id == "job-7"


def test_the_spend_counts_every_step_a_node_takes(spec: JobSpec) -> None:
    job = with_dp(spec, epsilon=50.0).with_overrides(
        {"train": {"rounds": 3, "local-epochs": 2, "batch-size": 64}}
    )
    x, y = rows(300)
    reports = []
    for _ in range(job.train.rounds):
        net = build_model(job.model, x.shape[1], 0)
        reports.append(
            train_epochs_dp(
                net, x, y, job.train, epochs=job.train.local_epochs, pos_weight=1.0, seed=0
            )
        )
    (mechanism,) = dp_training_spend(job, COORDINATOR, 300).mechanisms
    assert sum(r.steps for r in reports) == mechanism.count == 3 * 2 * 5
    assert {r.sample_rate for r in reports} == {mechanism.sampling} == {64 / 300}
    assert reports[0].mechanisms[0].count * 3 == mechanism.count
    assert all(r.noise_multiplier == 1.0 and r.max_grad_norm == 1.0 for r in reports)
    # Poisson sampling: batches vary, about q * rows rows a step on average
    sampled = sum(r.sampled_rows for r in reports)
    assert 0.8 * 300 * 6 < sampled < 1.2 * 300 * 6


def test_a_node_with_too_few_rows_for_the_stated_noise_refuses_the_job(spec: JobSpec) -> None:
    job = with_dp(spec, epsilon=1.0)
    assert training_epsilon(job, 1_000) > 1.0
    with pytest.raises(SpecError, match=r"\[dp\] epsilon: noise-multiplier 1 .* raise") as err:
        dp_training_spend(job, COORDINATOR, 1_000)
    assert "1000" not in str(err.value) and "1,000" not in str(err.value)  # rows stay private
    sigma = noise_multiplier_for(
        1.0, 1e-5, sample_rate(128, 1_000), 20 * steps_per_epoch(128, 1_000)
    )
    enough = with_dp(spec, epsilon=1.0, **{"noise-multiplier": sigma})
    assert dp_training_spend(enough, COORDINATOR, 1_000).epsilon <= 1.0
    close = with_dp(spec, epsilon=1.0, **{"noise-multiplier": sigma * 0.99})
    with pytest.raises(SpecError):
        dp_training_spend(close, COORDINATOR, 1_000)
    with pytest.raises(SpecError, match="does not ask for DP training"):
        dp_training_spend(spec, COORDINATOR, 1_000)


# --- the ledger -------------------------------------------------------------------------------


def test_the_ledger_composes_a_training_spend_and_refuses_one_over_the_budget(
    spec: JobSpec, tmp_path: Path
) -> None:
    job = with_dp(spec, epsilon=8.0)
    spend = dp_training_spend(job, COORDINATOR, 3_000)
    budget = DpBudget(30, 1.2 * spend.epsilon, 1e-5, spend.epsilon, 1e-5)
    ledger = BudgetLedger(tmp_path / "budget.jsonl", budget)
    entry = ledger.record(spend, at=START)
    # alone, the spend's PLD epsilon (dp-accounting's for the event) is what the ledger counts
    assert entry.cumulative is not None
    assert entry.cumulative.epsilon == pytest.approx(spend.epsilon, rel=1e-9)
    # a second job of the same size does not fit: the node refuses before it trains
    second = dp_training_spend(job, COORDINATOR, 3_000, query_id="second-job")
    decision = ledger.check(second, at=START)
    assert not decision.allowed and "would bring" in decision.reason
    # composed with PLDs (tighter than the sum of the two epsilons), still over the budget
    assert decision.after.method == "pld"
    assert 1.2 * spend.epsilon < decision.after.epsilon < 2 * spend.epsilon
    with pytest.raises(BudgetExceededError):
        ledger.record(second, at=START)
    assert len(ledger.entries()) == 1
    # the line reads back, mechanism and sampling probability included
    (read,) = ledger.entries()
    assert read.spend == spend


def test_a_training_spend_understating_its_epsilon_is_refused(
    spec: JobSpec, tmp_path: Path
) -> None:
    spend = dp_training_spend(with_dp(spec, epsilon=8.0), COORDINATOR, 3_000)
    ledger = BudgetLedger(tmp_path / "budget.jsonl", DpBudget(30, 100.0, 1e-5, 100.0, 1e-5))
    cheap = dataclasses.replace(spend, epsilon=spend.epsilon / 2)
    decision = ledger.check(cheap, at=START)
    assert not decision.allowed and "noise mechanisms alone spend" in decision.reason
    # basic composition, which sums stated epsilons, is then never fed an understated one
    basic = BudgetLedger(tmp_path / "basic.jsonl", ledger.budget, use_pld=False)
    assert not basic.check(cheap, at=START).allowed
    assert basic.check(spend, at=START).allowed


def test_ledger_lines_of_other_mechanisms_keep_their_format(tmp_path: Path) -> None:
    laplace = Mechanism(MechanismKind.DISCRETE_LAPLACE, 2.0)
    assert laplace.to_dict() == {
        "kind": "discrete-laplace",
        "parameter": 2.0,
        "sensitivity": 1,
        "count": 1,
    }
    assert Mechanism.from_dict(laplace.to_dict()) == laplace
    sampled = Mechanism(MechanismKind.SUBSAMPLED_GAUSSIAN, 1.2, count=40, sampling=0.25)
    assert Mechanism.from_dict(json.loads(json.dumps(sampled.to_dict()))) == sampled
    bad: list[Mapping[str, object]] = [
        {**laplace.to_dict(), "sampling": 0.5},
        {k: v for k, v in sampled.to_dict().items() if k != "sampling"},
        {**sampled.to_dict(), "sampling": 0.0},
        {**sampled.to_dict(), "sampling": 1.5},
    ]
    for data in bad:
        with pytest.raises(LedgerError):
            Mechanism.from_dict(data)
    with pytest.raises(LedgerError, match="not subsampled"):
        Mechanism(MechanismKind.GAUSSIAN, 1.0, sampling=0.5)
    # a training spend's mechanisms are not pure: the stated epsilon is what basic sums
    Spend(
        coordinator=COORDINATOR,
        query_id="j",
        epsilon=0.1,
        delta=1e-5,
        mechanisms=(sampled,),
    )


# --- training: noise is there, cannot be replayed, and clipping bounds a row ----------------


def test_a_dp_run_differs_from_a_plain_run_and_is_not_reproducible() -> None:
    x, y = rows(400)
    config = dp_config(batch_size=32, learning_rate=0.05)
    plain = [trained(x, y, config, dp=False) for _ in range(2)]
    np.testing.assert_array_equal(plain[0], plain[1])  # plain training is seeded
    dp_runs = []
    for _ in range(2):
        torch.manual_seed(0)  # the same torch seed and state before each run
        state = torch.get_rng_state()
        dp_runs.append(trained(x, y, config))
        assert torch.equal(torch.get_rng_state(), state)  # no draw from torch's generators
    assert not np.array_equal(dp_runs[0], dp_runs[1])
    assert not np.allclose(dp_runs[0], plain[0], atol=1e-3)


def test_the_noise_has_the_stated_standard_deviation() -> None:
    """With every row in every step (q = 1) the clipped sum is the same in two runs from the
    same model, so the runs differ by the noise alone: lr / B * (n1 - n2), each n of
    standard deviation sigma * C per parameter."""
    x, y = rows(32, features=20)
    sigma, clip, lr = 2.0, 0.5, 0.1
    dp = DpTrainConfig(epsilon=100.0, delta=1e-5, noise_multiplier=sigma, max_grad_norm=clip)
    config = dp_config(batch_size=32, learning_rate=lr, dp=dp)
    mlp = ModelConfig(ModelKind.MLP, (64, 32))
    first, second = (trained(x, y, config, model=mlp) for _ in range(2))
    difference = first - second
    expected = lr / 32 * sigma * clip * math.sqrt(2)
    assert difference.size > 3_000
    assert abs(difference.mean()) < 0.1 * expected
    assert difference.std() == pytest.approx(expected, rel=0.08)


def test_one_outlier_row_moves_the_update_by_at_most_the_clipping_norm() -> None:
    """The attacker's view: two datasets that differ in one row, one step from the same
    model. Without DP an outlier row drags the update anywhere; with DP its clipped gradient
    moves it by at most 2 * C * lr / B (replacing a row: remove one, add one)."""
    x, y = rows(64)
    outlier, outlier_y = x.copy(), y.copy()
    outlier[0] = 1e4
    start_model = build_model(ModelConfig(), x.shape[1], seed=3)
    with torch.no_grad():
        logit = float(start_model(torch.tensor(outlier[:1], dtype=torch.float32)).item())
    outlier_y[0] = 0.0 if logit > 0 else 1.0  # labelled against the model: a huge gradient
    clip, lr, batch = 1.0, 0.1, 64
    dp = DpTrainConfig(epsilon=100.0, delta=1e-5, noise_multiplier=1e-6, max_grad_norm=clip)
    config = dp_config(batch_size=batch, learning_rate=lr, dp=dp)  # q = 1: one step
    start = to_vector(start_model)
    plain = np.linalg.norm(
        trained(x, y, config, dp=False) - trained(outlier, outlier_y, config, dp=False)
    )
    private = np.linalg.norm(trained(x, y, config) - trained(outlier, outlier_y, config))
    bound = 2 * clip * lr / batch
    noise = 4 * lr / batch * 1e-6 * clip * math.sqrt(2 * start.size)  # far below the bound
    assert private <= bound + noise
    assert private > 0.1 * bound  # the row did count, clipped
    assert plain > 100 * bound


def test_models_opacus_cannot_clip_are_refused() -> None:
    x, y = rows(50)
    net = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(DpTrainingError, match="Opacus cannot clip"):
        train_epochs_dp(net, x, y, dp_config(), epochs=1, pos_weight=1.0, seed=0)
    for model in (ModelConfig(ModelKind.LOGREG), ModelConfig(ModelKind.MLP, (32, 16))):
        assert np.isfinite(trained(x, y, dp_config(batch_size=16), model=model)).all()


# --- the protocol -----------------------------------------------------------------------------


def test_hfl_nodes_train_with_dp_sgd_when_the_spec_asks(
    spec: JobSpec, node_configs: Mapping[str, NodeConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[DpTrainReport] = []

    def recording(*args: Any, **kwargs: Any) -> DpTrainReport:
        report = train_epochs_dp(*args, **kwargs)
        calls.append(report)
        return report

    monkeypatch.setattr(hfl, "train_epochs_dp", recording)
    job = with_dp(spec, epsilon=50.0).with_overrides(
        {
            "job": {"aggregation": "plaintext"},
            "train": {"rounds": 2},
            "evaluate": {"histogram-bins": 200},
        }
    )
    nodes = {
        party: HflNode(
            job,
            dataclasses.replace(load_party(cfg.data_dir, job.schema), name=party),
            cfg.settings(),
        )
        for party, cfg in node_configs.items()
    }
    result = run_hfl(job, InProcessTransport(nodes), node_configs["bank-a"].settings().manifest)
    assert len(calls) == 2 * len(job.parties)
    assert 0.5 < result.final.auc < 1.0
    for party, node in nodes.items():
        n_rows = len(node.data.train)
        spend = dp_training_spend(job, COORDINATOR, n_rows)
        mine = [r for r in calls if r.rows == n_rows]
        assert sum(r.steps for r in mine) == spend.mechanisms[0].count, party
