"""Federated analytics queries, in process with real 2048-bit Paillier, from the attacker's side.

Exactness: with the test-only noiseless source, answers equal a pandas groupby on the pooled
rows. Privacy: a differencing attack (two queries that differ by one customer) meets noise
of the stated scale and a likelihood ratio within e^epsilon, then the budget runs out;
forbidden columns, small cohorts, a budget overrun are refused before a row is read; small
cells never leave; noise comes from the CSPRNG and is drawn once per release.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedprop.crypto.identity import Manifest, NodeIdentity, generate_identity
from fedprop.crypto.paillier import PrivateKey, generate_keypair
from fedprop.data.loader import load_party
from fedprop.errors import FedpropError, JobFailedError, SpecError
from fedprop.privacy import noise as noise_module
from fedprop.privacy.ledger import BudgetExceededError, BudgetLedger
from fedprop.privacy.noise import NoiseSource, discrete_laplace_variance
from fedprop.privacy.policy import NodePolicy, PolicyRefusedError, PolicyRule, parse_policy
from fedprop.protocols import analytics
from fedprop.protocols.analytics import (
    QueryCoordinator,
    QueryNode,
    QueryNodeSettings,
    QuerySpec,
    ReleaseRefusedError,
    SignedAnswer,
    answer_frame,
    band_labels,
    calibrate,
    local_aggregates,
    query_spend,
    release_cells,
    run_query_in_process,
)
from fedprop.protocols.secure_sum import PaillierScheme, PlaintextScheme, SignedSum
from fedprop.spec import JobSpec

BANKS = ("bank-a", "bank-b", "bank-c", "bank-d")
AGE_CUTS = (30, 45, 60)


# --- a four-bank federation with policies, ledgers and a query key -------------------------


@dataclass(frozen=True)
class World:
    identities: Mapping[str, NodeIdentity]
    manifest: Manifest
    coordinator: str
    key: PrivateKey
    policy: NodePolicy
    dataset: str


def policy_text(coordinator: str) -> str:
    return f"""
[federations.pilot]
coordinators = ["{coordinator}"]

[jobs]
types = ["hfl-train", "query"]
aggregation = ["paillier"]

[release]
min-cohort = 10

[dp]
period = "30d"
epsilon = 3.0
delta = 1e-6
max-query-epsilon = 1.0
max-query-delta = 1e-7

[datasets.bank-marketing]
features = ["age", "job", "contact", "campaign"]
group-by = ["age", "contact", "job", "marital"]
targets = ["y", "campaign", "marital"]
forbidden = ["cid", "duration", "balance"]
"""


@pytest.fixture(scope="module")
def world(spec: JobSpec) -> World:
    identities = {bank: generate_identity(bank) for bank in BANKS}
    coordinator = generate_identity("coordinator")
    manifest = Manifest("pilot", tuple(i.public for i in identities.values()), coordinator.public)
    fingerprint = coordinator.public.fingerprint()
    return World(
        identities=identities,
        manifest=manifest,
        coordinator=fingerprint,
        key=generate_keypair(2048),
        policy=parse_policy(policy_text(fingerprint), "policy.toml"),
        dataset=spec.text[spec.text.index("[dataset]") :],
    )


@pytest.fixture(scope="module")
def frames(party_dirs: Mapping[str, Path], spec: JobSpec) -> dict[str, pd.DataFrame]:
    """Each bank's customers (its train and test rows)."""
    out = {}
    for bank, folder in party_dirs.items():
        data = load_party(folder, spec.schema)
        out[bank] = pd.concat([data.train, data.test], ignore_index=True)
    return out


def make_nodes(
    world: World,
    frames: Mapping[str, pd.DataFrame],
    ledgers: Path,
    noise: NoiseSource | None = None,
) -> dict[str, QueryNode]:
    source = noise or NoiseSource()
    assert world.policy.dp is not None
    return {
        bank: QueryNode(
            frames[bank],
            QueryNodeSettings(
                world.identities[bank],
                world.manifest,
                world.policy,
                BudgetLedger(ledgers / f"{bank}.jsonl", world.policy.dp),
                source,
            ),
        )
        for bank in BANKS
    }


def schemes(world: World) -> dict[str, PaillierScheme]:
    return {bank: PaillierScheme(world.key, len(BANKS)) for bank in BANKS}


def coordinator_scheme(world: World) -> PaillierScheme:
    return PaillierScheme(world.key.public, len(BANKS))


MEASURES = """
[[query.measures]]
kind = "count"

[[query.measures]]
kind = "rate"
column = "y"
"""


def query_text(
    world: World,
    query_id: str = "uptake",
    *,
    measures: str = MEASURES,
    group_by: str = '[{column = "age", bands = [30, 45, 60]}, "contact"]',
    filters: str = "",
    epsilon: float = 1.0,
    k: int = 10,
    extra: str = "",
) -> str:
    return f"""
[query]
id = "{query_id}"
parties = ["bank-a", "bank-b", "bank-c", "bank-d"]
epsilon = {epsilon}
delta = 1e-7
k = {k}
group-by = {group_by}
{extra}
{measures}
{filters}
{world.dataset}
"""


def run(world: World, nodes: Mapping[str, QueryNode], text: str) -> analytics.QueryRun:
    return run_query_in_process(
        text, world.coordinator, nodes, schemes(world), coordinator_scheme(world), world.manifest
    )


def pooled_totals(query: QuerySpec, frames: Mapping[str, pd.DataFrame]) -> np.ndarray:
    """What the releasing node holds after opening the sum."""
    return np.sum([local_aggregates(query, f) for f in frames.values()], axis=0)


@pytest.fixture
def no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any node computes aggregates."""

    def forbidden(*args: object) -> None:
        raise AssertionError("a node read its data for a query it should have refused")

    monkeypatch.setattr(analytics, "local_aggregates", forbidden)


# --- the bar: exact answers with noise off -------------------------------------------------


def test_noiseless_answers_equal_a_pandas_groupby_on_the_pooled_rows(
    world: World, frames: Mapping[str, pd.DataFrame], tmp_path: Path
) -> None:
    measures = (
        MEASURES
        + """
[[query.measures]]
kind = "mean"
column = "campaign"
clip = [0, 1000]

[[query.measures]]
kind = "histogram"
column = "marital"
"""
    )
    text = query_text(world, measures=measures)
    nodes = make_nodes(world, frames, tmp_path, NoiseSource(testing_only_no_noise=True))
    answer = run(world, nodes, text).answer
    assert not answer.noised and answer.threshold == answer.k == 10

    pooled = pd.concat(frames.values(), ignore_index=True)
    pooled["band"] = pd.cut(
        pooled["age"],
        [-math.inf, *AGE_CUTS, math.inf],
        right=False,
        labels=list(band_labels(AGE_CUTS)),
    )
    pooled["contact"] = pd.Categorical(pooled["contact"], ["cellular", "telephone", "unknown"])
    grouped = pooled.groupby(["band", "contact"], observed=False)
    expected = grouped.agg(count=("y", "size"), rate=("y", "mean"), mean=("campaign", "mean"))
    marital = pd.crosstab([pooled["band"], pooled["contact"]], pooled["marital"])

    frame = answer_frame(answer)
    assert len(frame) == 12 and not frame["suppressed"].any()
    assert list(zip(frame["age"], frame["contact"], strict=True)) == list(expected.index)
    assert frame["count"].tolist() == expected["count"].tolist()
    assert frame["rate(y)"].tolist() == expected["rate"].tolist()  # exactly, not approximately
    assert frame["mean(campaign)"].tolist() == expected["mean"].tolist()
    for category in ("divorced", "married", "single"):
        assert frame[f"histogram(marital)[{category}]"].tolist() == marital[category].tolist()
    assert (frame["rate(y) noise_b"] == 0).all()


def test_a_nodes_vector_covers_the_full_grid_in_a_fixed_order(
    world: World, frames: Mapping[str, pd.DataFrame]
) -> None:
    query = QuerySpec.from_toml(query_text(world))
    frame = frames["bank-d"]
    full = local_aggregates(query, frame)
    assert full.shape == (query.vector_length,) == (24,)
    # a node whose customers all sit in one cell sends a vector just as long
    young = frame[(frame["age"] < 30) & (frame["contact"] == "cellular")]
    one_cell = local_aggregates(query, young)
    assert one_cell.shape == full.shape
    assert np.count_nonzero(one_cell[:12]) == 1 and one_cell[0] == len(young)
    # and the vector does not depend on the order of the rows
    shuffled = frame.sample(frac=1.0, random_state=3)
    assert np.array_equal(local_aggregates(query, shuffled), full)


# --- the differencing attack ---------------------------------------------------------------


def test_a_differencing_attack_meets_noise_of_the_stated_scale_then_the_budget_runs_out(
    world: World, frames: Mapping[str, pd.DataFrame], tmp_path: Path
) -> None:
    """Two queries whose rows differ by exactly one customer (the only one aged 95): the
    difference of their answers is dominated by noise of the stated scale, the attacker's
    best test on an answer gains at most e^epsilon, and averaging is cut off by the budget."""
    target = frames["bank-b"].iloc[[0]].assign(age=95)
    data = dict(frames)
    data["bank-b"] = pd.concat([frames["bank-b"], target], ignore_index=True)
    everyone = query_text(world, "all", group_by="[]", filters=FILTER.format(bound="at-least = 18"))
    without = query_text(
        world, "all-but-one", group_by="[]", filters=FILTER.format(bound="below = 95")
    )
    q_with, q_without = QuerySpec.from_toml(everyone), QuerySpec.from_toml(without)
    with_target, without_target = pooled_totals(q_with, data), pooled_totals(q_without, data)
    assert with_target[0] - without_target[0] == 1  # the two queries differ by one customer

    # the releasing node's answers, many times over (each a fresh release)
    draws = 1500
    scale = calibrate(q_with).scales[0]
    assert scale == 2  # epsilon 1 over two noised vectors (count, positives): 0.5 each
    noise = NoiseSource()
    a = np.array(
        [release_cells(q_with, with_target, k=10, noise=noise).cells[0].count for _ in range(draws)]
    )
    b = np.array(
        [
            release_cells(q_without, without_target, k=10, noise=noise).cells[0].count
            for _ in range(draws)
        ]
    )
    difference = a - b
    sd = math.sqrt(2 * discrete_laplace_variance(scale))  # about 4 customers, not 1
    assert abs(difference.mean() - 1) < 6 * sd / math.sqrt(draws)
    assert 0.75 < difference.std() / sd < 1.25
    assert np.mean(a == with_target[0]) < 0.35  # the exact count is rarely what is released
    # the best test "answer >= the count with the customer" succeeds at most e^0.5 times
    # more often with the customer than without (0.5: the count's share of epsilon 1)
    hit_with = np.mean(a >= with_target[0])
    hit_without = np.mean(b >= with_target[0])
    assert hit_with / hit_without < math.exp(0.5) * 1.25

    # through the protocol, the attacker gets three such answers (epsilon 3), not a fourth
    nodes = make_nodes(world, data, tmp_path)
    for text in (
        everyone,
        without,
        query_text(world, "all-again", group_by="[]", filters=FILTER.format(bound="at-least = 18")),
    ):
        answer = run(world, nodes, text).answer
        assert answer.cells[0].count_noise_b == 2.0  # the noise scale is stated with the value
    fourth = query_text(
        world, "all-but-one-again", group_by="[]", filters=FILTER.format(bound="below = 95")
    )
    for node in nodes.values():
        with pytest.raises(BudgetExceededError):
            node.contribute(fourth, world.coordinator, schemes(world)[node.name])


FILTER = """
[[query.filters]]
column = "age"
{bound}
"""


# --- refusals before any row is read -------------------------------------------------------


def refused_everywhere(world: World, nodes: Mapping[str, QueryNode], text: str) -> FedpropError:
    errors = []
    for node in nodes.values():
        with pytest.raises(FedpropError) as caught:
            node.contribute(text, world.coordinator, schemes(world)[node.name])
        errors.append(caught.value)
        assert node.settings.ledger.entries() == ()  # nothing spent
    return errors[0]


def test_a_query_on_a_forbidden_column_is_refused(
    world: World, frames: Mapping[str, pd.DataFrame], tmp_path: Path, no_reads: None
) -> None:
    measures = '[[query.measures]]\nkind = "mean"\ncolumn = "balance"\nclip = [-1000, 1000]\n'
    error = refused_everywhere(
        world, make_nodes(world, frames, tmp_path), query_text(world, measures=measures)
    )
    assert isinstance(error, PolicyRefusedError)
    assert error.decision.rule is PolicyRule.FORBIDDEN_COLUMN


def test_the_row_id_column_cannot_even_be_named(world: World) -> None:
    filters = '[[query.filters]]\ncolumn = "cid"\nequals = "17"\n'
    with pytest.raises(SpecError, match="row id column"):
        QuerySpec.from_toml(query_text(world, filters=filters))


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"k": 5}, PolicyRule.COHORT_SIZE),  # a smaller cohort than the policy's k = 10
        ({"group_by": '["education"]'}, PolicyRule.GROUP_BY_COLUMN),
        ({"epsilon": 2.0}, PolicyRule.QUERY_EPSILON),  # more than the per-query maximum
    ],
)
def test_queries_the_policy_does_not_allow_are_refused(
    world: World,
    frames: Mapping[str, pd.DataFrame],
    tmp_path: Path,
    no_reads: None,
    changes: dict[str, object],
    rule: PolicyRule,
) -> None:
    text = query_text(world, **changes)  # type: ignore[arg-type]
    error = refused_everywhere(world, make_nodes(world, frames, tmp_path), text)
    assert isinstance(error, PolicyRefusedError) and error.decision.rule is rule


def test_an_unknown_coordinator_is_refused(
    world: World, frames: Mapping[str, pd.DataFrame], tmp_path: Path, no_reads: None
) -> None:
    nodes = make_nodes(world, frames, tmp_path)
    with pytest.raises(PolicyRefusedError) as caught:
        nodes["bank-a"].contribute(query_text(world), "e" * 64, schemes(world)["bank-a"])
    assert caught.value.decision.rule is PolicyRule.COORDINATOR


def test_a_group_by_that_would_single_customers_out_is_refused(world: World) -> None:
    """Raw numbers as groups (an age, an amount) isolate people: a numeric group-by needs
    bands, and a grid too fine to be useful is refused."""
    raw = query_text(world, group_by='["campaign"]')
    with pytest.raises(SpecError, match="needs bands"):
        QuerySpec.from_toml(raw)
    ages = ", ".join(str(a) for a in range(18, 98))
    fine = f'[{{column = "age", bands = [{ages}]}}, "job", "month"]'  # 11,664 cells
    with pytest.raises(SpecError, match="cells"):
        QuerySpec.from_toml(query_text(world, group_by=fine))


def test_a_budget_overrun_is_refused_before_anything_is_computed(
    world: World,
    frames: Mapping[str, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = make_nodes(world, frames, tmp_path)
    for i in range(3):
        run(world, nodes, query_text(world, f"q{i}"))
    sizes = {b: n.settings.ledger.path.stat().st_size for b, n in nodes.items()}
    monkeypatch.setattr(analytics, "local_aggregates", _forbidden)
    for node in nodes.values():
        with pytest.raises(BudgetExceededError, match="budget is epsilon 3"):
            node.contribute(query_text(world, "q3"), world.coordinator, schemes(world)[node.name])
    assert {b: n.settings.ledger.path.stat().st_size for b, n in nodes.items()} == sizes


def _forbidden(*args: object) -> None:
    raise AssertionError("a node read its data for a query it should have refused")


# --- what leaves: small cells never, noise once, from the CSPRNG ----------------------------


def test_cells_under_k_are_suppressed_and_never_leave(
    world: World, frames: Mapping[str, pd.DataFrame], tmp_path: Path
) -> None:
    # 108 cells: the telephone ones (about 45 customers) are under k = 100, the cellular
    # ones (about 270) clear it even with the noise margin
    group_by = '["job", "marital", "contact"]'
    for noise in (NoiseSource(testing_only_no_noise=True), NoiseSource()):
        nodes = make_nodes(world, frames, tmp_path / str(noise.enabled), noise)
        text = query_text(world, "jobs", group_by=group_by, k=100)
        result = run(world, nodes, text)
        query = QuerySpec.from_toml(text)
        exact = pooled_totals(query, frames)[: query.cells]
        answer = result.answer
        small = [c for c, n in zip(answer.cells, exact, strict=True) if n < 100]
        assert small and all(c.suppressed and c.count is None and not c.measures for c in small)
        released = [c for c in answer.cells if not c.suppressed]
        assert released and all(
            c.count is not None and c.count >= answer.threshold for c in released
        )
        if noise.enabled:
            assert answer.threshold > 100  # the noised count must clear a margin above k
        frame = answer_frame(answer)
        assert frame.loc[frame["suppressed"], "count"].isna().all()
        assert frame.loc[frame["suppressed"], "rate(y)"].isna().all()


def test_noise_is_drawn_once_per_value_from_the_csprng(
    world: World,
    frames: Mapping[str, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = make_nodes(world, frames, tmp_path)
    calls: list[int] = []
    draws: list[int] = []
    real_randbelow = secrets.randbelow
    real_laplace = NoiseSource.discrete_laplace

    def counting_randbelow(n: int) -> int:
        calls.append(n)
        return real_randbelow(n)

    def spying_laplace(self: NoiseSource, scale: Fraction, size: int) -> list[int]:
        draws.append(size)
        return real_laplace(self, scale, size)

    monkeypatch.setattr(noise_module.secrets, "randbelow", counting_randbelow)
    monkeypatch.setattr(NoiseSource, "discrete_laplace", spying_laplace)
    text = query_text(world)
    c = QueryCoordinator(text, world.manifest, coordinator_scheme(world))
    total = c.collect(
        [n.contribute(text, world.coordinator, schemes(world)[b]) for b, n in nodes.items()]
    )
    assert draws == [] and calls == []  # contributing draws no noise
    answer = c.accept(
        nodes["bank-a"].release(text, world.coordinator, schemes(world)["bank-a"], total)
    )
    assert answer.noised
    assert draws == [12, 12]  # one draw per cell of each noised vector, once
    assert len(calls) >= 48  # every draw read the OS CSPRNG
    # asking the releaser again (to average two noisings away) is refused, as is asking
    # another node, and no noise is drawn for either
    with pytest.raises(ReleaseRefusedError, match="released once"):
        nodes["bank-a"].release(text, world.coordinator, schemes(world)["bank-a"], total)
    with pytest.raises(ReleaseRefusedError, match="not the releaser"):
        nodes["bank-b"].release(text, world.coordinator, schemes(world)["bank-b"], total)
    assert draws == [12, 12]


# --- a cheating coordinator ----------------------------------------------------------------


def test_the_releaser_refuses_a_sum_that_is_not_every_partys(
    world: World, frames: Mapping[str, pd.DataFrame], tmp_path: Path
) -> None:
    """The coordinator passes one bank's contribution off as the sum, to get that bank's
    cells released; the releaser checks the sum against every signed contribution."""
    nodes = make_nodes(world, frames, tmp_path)
    text = query_text(world)
    contributions = [
        n.contribute(text, world.coordinator, schemes(world)[b]) for b, n in nodes.items()
    ]
    honest = SignedSum.from_bytes(
        QueryCoordinator(text, world.manifest, coordinator_scheme(world)).collect(contributions)
    )
    forged = SignedSum(contributions[1].payload, honest.contributions).to_bytes()
    with pytest.raises(ReleaseRefusedError, match="not the sum"):
        nodes["bank-a"].release(text, world.coordinator, schemes(world)["bank-a"], forged)
    # a query text changed after the contributions (a smaller k, another filter) is refused
    changed = text.replace("k = 10", "k = 11")
    with pytest.raises(ReleaseRefusedError, match="as sent"):
        nodes["bank-a"].release(
            changed, world.coordinator, schemes(world)["bank-a"], honest.to_bytes()
        )
    assert not nodes["bank-a"].settings.ledger.released(world.coordinator, "uptake")


def test_the_coordinator_accepts_only_the_releasers_signed_answer(
    world: World, frames: Mapping[str, pd.DataFrame], tmp_path: Path
) -> None:
    nodes = make_nodes(world, frames, tmp_path)
    text = query_text(world)
    c = QueryCoordinator(text, world.manifest, coordinator_scheme(world))
    total = c.collect(
        [n.contribute(text, world.coordinator, schemes(world)[b]) for b, n in nodes.items()]
    )
    reply = nodes["bank-a"].release(text, world.coordinator, schemes(world)["bank-a"], total)
    answer = c.accept(SignedAnswer.from_bytes(reply.to_bytes()))
    assert answer.query_id == "uptake" and answer.releaser == "bank-a"
    inflated = reply.answer.replace('"k":10', '"k":1000')
    with pytest.raises(JobFailedError, match="does not verify"):
        c.accept(dataclasses.replace(reply, answer=inflated))
    with pytest.raises(JobFailedError, match="not the releaser"):
        c.accept(dataclasses.replace(reply, party="bank-b"))


def test_a_node_refuses_a_sum_scheme_other_than_the_querys(
    world: World, frames: Mapping[str, pd.DataFrame], tmp_path: Path, no_reads: None
) -> None:
    """A paillier query sealed in the clear would show the node's cells to the coordinator."""
    nodes = make_nodes(world, frames, tmp_path)
    with pytest.raises(FedpropError, match="paillier"):
        nodes["bank-a"].contribute(query_text(world), world.coordinator, PlaintextScheme())
    with pytest.raises(FedpropError, match="parties"):
        nodes["bank-a"].contribute(
            query_text(world), world.coordinator, PaillierScheme(world.key, 7)
        )
    assert nodes["bank-a"].settings.ledger.entries() == ()


# --- the spec --------------------------------------------------------------------------------


def test_the_spec_becomes_the_policy_request(world: World) -> None:
    filters = '[[query.filters]]\ncolumn = "marital"\nin = ["married", "single"]\n'
    measures = MEASURES + '[[query.measures]]\nkind = "sum"\ncolumn = "campaign"\nclip = [0, 50]\n'
    query = QuerySpec.from_toml(query_text(world, filters=filters, measures=measures))
    request = query.to_request("pilot", world.coordinator)
    assert request.job_type == "query" and request.aggregation == "paillier"
    assert request.group_by_columns == ("age", "contact")
    assert request.filter_columns == ("marital",)
    assert request.target_columns == ("y", "campaign")
    assert (request.dp_epsilon, request.dp_delta, request.k, request.key_bits) == (
        1.0,
        1e-7,
        10,
        2048,
    )
    assert request.model_release is False
    spend = query_spend(query, world.coordinator)
    assert spend.epsilon == 1.0 and spend.extra_delta == 1e-7
    assert [m.sensitivity for m in spend.mechanisms] == [1, 1, 50]  # count, positives, sum
    assert sum(m.pure_epsilon or 0 for m in spend.mechanisms) <= 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"extra": "testing-only-no-noise = true"}, "unknown key"),
        ({"extra": "noise = false"}, "unknown key"),
        ({"measures": '[[query.measures]]\nkind = "sum"\ncolumn = "campaign"\n'}, "clip"),
        ({"measures": '[[query.measures]]\nkind = "rate"\ncolumn = "age"\n'}, "numeric"),
        ({"measures": '[[query.measures]]\nkind = "median"\ncolumn = "age"\n'}, "not one of"),
        ({"measures": MEASURES + MEASURES}, "asked twice"),
        ({"group_by": '["y"]'}, "label"),
        ({"group_by": '["contact", "contact"]'}, "twice"),
        ({"group_by": '["nope"]'}, "not a column"),
        ({"filters": '[[query.filters]]\ncolumn = "contact"\nequals = "fax"\n'}, "not a category"),
        ({"filters": '[[query.filters]]\ncolumn = "age"\nat-least = 60\nbelow = 30\n'}, "at-least"),
        ({"k": 1}, "k"),
    ],
)
def test_malformed_queries_are_refused_with_a_clear_error(
    world: World, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        QuerySpec.from_toml(query_text(world, **changes))  # type: ignore[arg-type]


def test_delta_and_k_are_required(world: World) -> None:
    text = query_text(world)
    with pytest.raises(SpecError, match="delta"):
        QuerySpec.from_toml(text.replace("delta = 1e-7", "delta = 0.0"))
    with pytest.raises(SpecError, match="k: missing"):
        QuerySpec.from_toml(text.replace("k = 10\n", ""))
    with pytest.raises(SpecError, match="at least 3 parties"):
        QuerySpec.from_toml(text.replace('"bank-c", "bank-d"', ""))


def test_answers_round_trip_and_state_their_noise(
    world: World, frames: Mapping[str, pd.DataFrame]
) -> None:
    query = QuerySpec.from_toml(query_text(world))
    answer = release_cells(query, pooled_totals(query, frames), k=10, noise=NoiseSource())
    assert type(answer).from_json(answer.to_json()) == answer
    cell = answer.cells[0]
    rate = next(m for m in cell.measures if m.name == "rate(y)")
    assert cell.count_noise_b == rate.noise_b == 2.0
    assert 0 < rate.std_error < 0.05
    frame = answer_frame(answer)
    assert frame.attrs["epsilon"] == 1.0 and frame.attrs["noised"] is True
    assert {"count noise_b", "rate(y) noise_b", "rate(y) std_error"} <= set(frame.columns)
