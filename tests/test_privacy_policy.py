"""The node policy: malformed files are refused naming the key, and decide() refuses what the
policy does not allow, naming the first rule that refuses, whatever the request says."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from fedprop.crypto.identity import generate_identity
from fedprop.data.split import BANK_FULL_COLUMNS, ID_COLUMN
from fedprop.errors import FedpropError
from fedprop.privacy import (
    CHECK_ORDER,
    DatasetPolicy,
    Decision,
    DpBudget,
    FederationPolicy,
    JobKind,
    JobRequest,
    NodePolicy,
    PolicyError,
    PolicyRefusedError,
    PolicyRule,
    decide,
    effective_k,
    load_policy,
    parse_policy,
)
from fedprop.spec import Aggregation, JobSpec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "node" / "policy.example.toml"
SHIPPED_SPEC = ROOT / "configs" / "bank-marketing-hfl.toml"

COORDINATOR = "a" * 64
OTHER_COORDINATOR = "b" * 64

BASE = f"""
[federations.pilot]
coordinators = ["{COORDINATOR}"]

[federations.retail]
coordinators = ["{OTHER_COORDINATOR}"]

[jobs]
types = ["hfl-train", "query"]
aggregation = ["paillier"]
min-key-bits = 2048

[release]
min-cohort = 10
model = false

[dp]
period = "30d"
epsilon = 2.0
delta = 1e-6
max-query-epsilon = 0.5
max-query-delta = 1e-7

[datasets.bank]
features = ["age", "job", "marital", "balance", "housing"]
group-by = ["job", "marital"]
targets = ["y"]
forbidden = ["cid", "duration"]
"""


@pytest.fixture(scope="module")
def policy() -> NodePolicy:
    return parse_policy(BASE, "bank.toml")


def query(**changes: object) -> JobRequest:
    """A query the base policy allows, with ``changes``."""
    request = JobRequest(
        federation="pilot",
        coordinator=COORDINATOR,
        job_type="query",
        aggregation="paillier",
        dataset="bank",
        feature_columns=(),
        group_by_columns=("job",),
        target_columns=("y",),
        filter_columns=("marital",),
        key_bits=2048,
        model_release=False,
        dp_epsilon=0.3,
        dp_delta=1e-8,
        k=None,
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def training(**changes: object) -> JobRequest:
    """A horizontal training job the base policy allows, with ``changes``."""
    request = query(
        job_type="hfl-train",
        feature_columns=("age", "job", "marital", "balance", "housing"),
        group_by_columns=(),
        filter_columns=(),
        dp_epsilon=None,
        dp_delta=None,
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


# --- parsing -------------------------------------------------------------------------------


def test_base_policy_parses(policy: NodePolicy) -> None:
    assert [f.name for f in policy.federations] == ["pilot", "retail"]
    assert policy.job_types == (JobKind.HFL_TRAIN, JobKind.QUERY)
    assert policy.aggregations == (Aggregation.PAILLIER,)
    assert (policy.min_key_bits, policy.min_cohort, policy.model_release) == (2048, 10, False)
    assert policy.dp == DpBudget(30, 2.0, 1e-6, 0.5, 1e-7)
    assert policy.dp.period.days == 30
    bank = policy.dataset("bank")
    assert bank is not None and bank.group_by == ("job", "marital")
    assert policy.dataset("credit") is None
    assert policy.digest is not None and len(policy.digest) == 64


def test_defaults_are_the_restrictive_values() -> None:
    text = BASE.replace('aggregation = ["paillier"]\n', "").replace("min-key-bits = 2048\n", "")
    text = text.replace("model = false\n", "")
    policy = parse_policy(text)
    assert policy.aggregations == (Aggregation.PAILLIER,)
    assert policy.min_key_bits == 2048
    assert policy.model_release is False


def test_policy_is_frozen(policy: NodePolicy) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.min_cohort = 1  # type: ignore[misc]
    bank = policy.dataset("bank")
    assert bank is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        bank.forbidden = ()  # type: ignore[misc]
    assert isinstance(bank.features, tuple)


def test_digest_follows_the_text_but_not_equality(policy: NodePolicy) -> None:
    other = parse_policy(BASE + "\n# a comment\n")
    assert other.digest != policy.digest
    assert other == policy


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # unknown keys: a typo never falls back to a default
        ("[jobs]", "[job]\n[jobs]", "job: unknown key (expected one of: datasets, dp, "),
        ("min-key-bits = 2048", "min-keybits = 2048", "jobs.min-keybits: unknown key"),
        ("targets = ", "target = ", "datasets.bank.target: unknown key"),
        ("max-query-delta", "max-query-dleta", "dp.max-query-dleta: unknown key"),
        ('coordinators = ["a', 'coordinator = ["a', "federations.pilot.coordinator: unknown"),
        # wrong types
        ("min-cohort = 10", 'min-cohort = "10"', "release.min-cohort: expected an integer"),
        ("min-cohort = 10", "min-cohort = true", "release.min-cohort: expected an integer"),
        ("min-cohort = 10", "min-cohort = 10.0", "release.min-cohort: expected an integer"),
        ("model = false", 'model = "no"', "release.model: expected true or false"),
        ("epsilon = 2.0", 'epsilon = "2"', "dp.epsilon: expected a number"),
        ('"balance", "housing"]', '7, "housing"]', "datasets.bank.features[3]: expected a column"),
        ('targets = ["y"]', 'targets = "y"', "datasets.bank.targets: expected a list"),
        ('types = ["hfl-train", "query"]', 'types = "query"', "jobs.types: expected a list"),
        ("[datasets.bank]", "[datasets]\nbank = 3\n[datasets.x]", "datasets.bank: expected a"),
        # missing keys and tables
        ("min-cohort = 10\n", "", "release.min-cohort: missing"),
        ("max-query-delta = 1e-7\n", "", "dp.max-query-delta: missing"),
        ("[jobs]\n", "[x]\n", "x: unknown key"),
        # empty lists where not allowed
        (f'coordinators = ["{COORDINATOR}"]', "coordinators = []", "federations.pilot.coordin"),
        ('types = ["hfl-train", "query"]', "types = []", "jobs.types: must list at least one"),
        ('aggregation = ["paillier"]', "aggregation = []", "jobs.aggregation: must list at le"),
        # a column both allowed and forbidden, duplicates, bad column names
        ('forbidden = ["cid"', 'forbidden = ["balance", "cid"', "datasets.bank.features[3]: 'b"),
        ('targets = ["y"]', 'targets = ["y", "cid"]', "datasets.bank.targets[1]: 'cid' is also"),
        ('group-by = ["job", "marital"]', 'group-by = ["job", "job"]', "group-by[1]: 'job' is li"),
        ('targets = ["y"]', 'targets = [" y"]', "datasets.bank.targets[0]: ' y' is not a column"),
        ('targets = ["y"]', 'targets = [""]', "datasets.bank.targets[0]: '' is not a column"),
        ('targets = ["y"]', 'targets = ["y\\tz"]', "datasets.bank.targets[0]: 'y\\tz' is not a"),
        # k, epsilon, delta, per-query maxima
        ("min-cohort = 10", "min-cohort = 1", "release.min-cohort: must be an integer of at le"),
        ("min-cohort = 10", "min-cohort = -5", "release.min-cohort: must be an integer of at le"),
        ("epsilon = 2.0", "epsilon = 0.0", "dp.epsilon: must be a finite number above 0"),
        ("epsilon = 2.0", "epsilon = -1", "dp.epsilon: must be a finite number above 0"),
        ("epsilon = 2.0", "epsilon = nan", "dp.epsilon: must be a finite number above 0"),
        ("epsilon = 2.0", "epsilon = inf", "dp.epsilon: must be a finite number above 0"),
        ("epsilon = 2.0", f"epsilon = {10**400}", "dp.epsilon: must be a finite number above 0"),
        ("delta = 1e-6", "delta = 0", "dp.max-query-delta: 1e-07 is more than the period"),
        ("max-query-epsilon = 0.5", "max-query-epsilon = nan", "dp.max-query-epsilon: must be"),
        ("delta = 1e-6", "delta = 1.0", "dp.delta: must be a number in [0, 1)"),
        ("delta = 1e-6", "delta = -1e-9", "dp.delta: must be a number in [0, 1)"),
        ("delta = 1e-6", "delta = nan", "dp.delta: must be a number in [0, 1)"),
        ("max-query-epsilon = 0.5", "max-query-epsilon = 5", "dp.max-query-epsilon: 5.0 is more"),
        ("max-query-delta = 1e-7", "max-query-delta = 1e-5", "dp.max-query-delta: 1e-05 is more"),
        # key sizes
        ("min-key-bits = 2048", "min-key-bits = 1024", "jobs.min-key-bits: must be an integer of"),
        ("min-key-bits = 2048", "min-key-bits = 4096", "jobs.min-key-bits: 4096 is above every"),
        # closed lists
        ('"hfl-train", "query"]', '"hfl-train", "training"]', "jobs.types[1]: 'training' is not"),
        ('"hfl-train", "query"]', '"query", "query"]', "jobs.types[1]: 'query' is listed twice"),
        ('aggregation = ["paillier"]', 'aggregation = ["secagg"]', "jobs.aggregation[0]: 'secag"),
        # periods
        ('period = "30d"', 'period = "30"', "dp.period: '30' is not a period"),
        ('period = "30d"', 'period = "1m"', "dp.period: '1m' is not a period"),
        ('period = "30d"', 'period = "0d"', "dp.period: '0d' is not a period"),
        ('period = "30d"', 'period = "30 d"', "dp.period: '30 d' is not a period"),
        ('period = "30d"', "period = 30", "dp.period: 30 is not a period"),
        ('period = "30d"', 'period = "9999d"', "dp.period: must be 1 to 3660 days"),
        # coordinator keys as manifest fingerprints
        (f'["{COORDINATOR}"]', f'["{"A" * 64}"]', "federations.pilot.coordinators[0]: 'AAAA"),
        (f'["{COORDINATOR}"]', f'["{"a" * 63}"]', "coordinators[0]: 'aaaa"),
        (f'["{COORDINATOR}"]', f'["{"g" * 64}"]', "is not a key fingerprint"),
        (f'["{COORDINATOR}"]', f'["{COORDINATOR}", "{COORDINATOR}"]', "coordinators[1]: 'aaa"),
        # names
        ("[datasets.bank]", '[datasets."bank data"]', "datasets.\"bank data\": 'bank data' is no"),
        ("[federations.pilot]", '[federations."-x"]', "federations.-x: '-x' is not a valid name"),
        # a dataset that allows nothing; a query without a privacy budget
        ('targets = ["y"]', "targets = []", "datasets.bank: allows no column"),
        ("[dp]", "[dp-not]", "dp-not: unknown key"),
    ],
)
def test_bad_policies_are_refused_naming_file_and_key(old: str, new: str, message: str) -> None:
    assert old in BASE, old
    text = BASE.replace(old, new, 1)
    if "allows no column" in message:
        text = text.replace('features = ["age", "job", "marital", "balance", "housing"]', "")
        text = text.replace('group-by = ["job", "marital"]', "")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "bank.toml")
    error = str(caught.value)
    assert error.startswith("bank.toml: "), error
    assert message in error, error
    assert "\n" not in error
    assert isinstance(caught.value, FedpropError)


def test_query_needs_a_privacy_budget() -> None:
    start, end = BASE.index("[dp]"), BASE.index("[datasets.bank]")
    without_dp = BASE[:start] + BASE[end:]
    with pytest.raises(PolicyError, match=r"jobs.types: 'query' needs a \[dp\] table"):
        parse_policy(without_dp)
    with pytest.raises(PolicyError, match=r"dp: expected a table, got 1"):
        parse_policy("dp = 1\n" + without_dp)
    training_only = without_dp.replace('types = ["hfl-train", "query"]', 'types = ["hfl-train"]')
    assert parse_policy(training_only).dp is None


def test_missing_tables_and_empty_federations_are_refused() -> None:
    with pytest.raises(PolicyError, match=r"bank.toml: release: missing"):
        parse_policy(BASE.replace("[release]\nmin-cohort = 10\nmodel = false\n", ""), "bank.toml")
    no_federations = BASE.split("[jobs]")[1]
    with pytest.raises(PolicyError, match=r"federations: missing"):
        parse_policy("[jobs]" + no_federations)
    with pytest.raises(PolicyError, match=r"federations: must list at least one federation"):
        parse_policy("federations = {}\n[jobs]" + no_federations)
    with pytest.raises(PolicyError, match=r"datasets: must list at least one dataset"):
        parse_policy("datasets = {}\n" + BASE.split("[datasets.bank]")[0])


def test_invalid_toml_is_refused_naming_the_file() -> None:
    with pytest.raises(PolicyError, match=r"^bank.toml: not valid TOML"):
        parse_policy("[jobs\n", "bank.toml")


def test_load_policy_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "policy.toml"
    with pytest.raises(PolicyError, match=r"policy.toml: policy file not found"):
        load_policy(missing)
    missing.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(PolicyError, match=r"policy.toml: cannot read policy file"):
        load_policy(missing)
    missing.write_text(BASE.replace("min-cohort = 10", "min-cohort = 1"), encoding="utf-8")
    with pytest.raises(PolicyError, match=r"policy.toml: release.min-cohort"):
        load_policy(missing)


def test_hostile_names_stay_on_one_short_line() -> None:
    text = BASE.replace("[datasets.bank]", '[datasets."bank\\nInjected: ' + "x" * 500 + '"]')
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "bank.toml")
    error = str(caught.value)
    assert "\n" not in error and len(error) < 400, error


def test_dataclasses_check_the_same_invariants_in_code(policy: NodePolicy) -> None:
    with pytest.raises(PolicyError, match=r"dp.epsilon"):
        DpBudget(30, math.nan, 0.0, 0.1, 0.0)
    with pytest.raises(PolicyError, match=r"dp.max-query-epsilon"):
        DpBudget(30, 1.0, 0.0, 2.0, 0.0)
    with pytest.raises(PolicyError, match=r"release.min-cohort"):
        dataclasses.replace(policy, min_cohort=1)
    with pytest.raises(PolicyError, match=r"release.min-cohort"):
        dataclasses.replace(policy, min_cohort=True)
    with pytest.raises(PolicyError, match=r"jobs.types"):
        dataclasses.replace(policy, job_types=("query",))  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=r"datasets.bank.features"):
        DatasetPolicy("bank", ["age"], (), (), ())  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=r"is also listed in datasets.bank.forbidden"):
        DatasetPolicy("bank", ("age",), (), (), ("age",))
    with pytest.raises(PolicyError, match=r"federations.pilot.coordinators"):
        FederationPolicy("pilot", ())


def test_a_real_manifest_fingerprint_is_accepted() -> None:
    fingerprint = generate_identity("coordinator").public.fingerprint()
    policy = parse_policy(BASE.replace(COORDINATOR, fingerprint))
    assert decide(policy, query(coordinator=fingerprint)).allowed
    assert decide(policy, query(coordinator=fingerprint.upper())).rule is PolicyRule.COORDINATOR


# --- decisions -----------------------------------------------------------------------------


def test_allowed_requests_are_allowed(policy: NodePolicy) -> None:
    for request in (query(), training(), query(k=25), query(dp_delta=None), query(dp_epsilon=0.5)):
        decision = decide(policy, request)
        assert decision.allowed and decision.rule is None, decision
        decision.raise_if_refused()


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"federation": "other"}, PolicyRule.FEDERATION),
        ({"federation": None}, PolicyRule.FEDERATION),
        ({"coordinator": "c" * 64}, PolicyRule.COORDINATOR),
        # a coordinator pinned in another federation is not pinned in this one
        ({"coordinator": OTHER_COORDINATOR}, PolicyRule.COORDINATOR),
        ({"job_type": "vfl-train"}, PolicyRule.JOB_TYPE),
        ({"job_type": "mining"}, PolicyRule.JOB_TYPE),
        ({"job_type": "query "}, PolicyRule.JOB_TYPE),
        ({"job_type": None}, PolicyRule.JOB_TYPE),
        ({"aggregation": "plaintext"}, PolicyRule.AGGREGATION),
        ({"aggregation": "secagg"}, PolicyRule.AGGREGATION),
        ({"aggregation": None}, PolicyRule.AGGREGATION),
        ({"key_bits": 1024}, PolicyRule.KEY_SIZE),
        ({"key_bits": 4096}, PolicyRule.KEY_SIZE),
        ({"key_bits": None}, PolicyRule.KEY_SIZE),
        ({"key_bits": 2048.0}, PolicyRule.KEY_SIZE),
        ({"dataset": "credit"}, PolicyRule.DATASET),
        ({"feature_columns": ("age", "cid")}, PolicyRule.FORBIDDEN_COLUMN),
        ({"filter_columns": ("duration",)}, PolicyRule.FORBIDDEN_COLUMN),
        ({"target_columns": ("cid",)}, PolicyRule.FORBIDDEN_COLUMN),
        ({"group_by_columns": ("cid",)}, PolicyRule.FORBIDDEN_COLUMN),
        ({"feature_columns": ("age", "pdays")}, PolicyRule.FEATURE_COLUMN),
        ({"feature_columns": (3,)}, PolicyRule.FEATURE_COLUMN),
        ({"group_by_columns": ("age",)}, PolicyRule.GROUP_BY_COLUMN),
        ({"group_by_columns": ("y",)}, PolicyRule.GROUP_BY_COLUMN),
        ({"filter_columns": ("balance",)}, PolicyRule.FILTER_COLUMN),
        ({"target_columns": ("balance",)}, PolicyRule.TARGET_COLUMN),
        ({"k": 9}, PolicyRule.COHORT_SIZE),
        ({"k": 0}, PolicyRule.COHORT_SIZE),
        ({"k": 12.5}, PolicyRule.COHORT_SIZE),
        ({"k": True}, PolicyRule.COHORT_SIZE),
        ({"dp_epsilon": 0.51}, PolicyRule.QUERY_EPSILON),
        ({"dp_epsilon": None}, PolicyRule.QUERY_EPSILON),
        ({"dp_epsilon": 0.0}, PolicyRule.QUERY_EPSILON),
        ({"dp_epsilon": -0.1}, PolicyRule.QUERY_EPSILON),
        ({"dp_epsilon": math.nan}, PolicyRule.QUERY_EPSILON),
        ({"dp_epsilon": math.inf}, PolicyRule.QUERY_EPSILON),
        ({"dp_epsilon": True}, PolicyRule.QUERY_EPSILON),
        ({"dp_epsilon": 10**400}, PolicyRule.QUERY_EPSILON),
        ({"dp_epsilon": "0.1"}, PolicyRule.QUERY_EPSILON),
        ({"dp_delta": 2e-7}, PolicyRule.QUERY_DELTA),
        ({"dp_delta": -1e-9}, PolicyRule.QUERY_DELTA),
        ({"dp_delta": math.nan}, PolicyRule.QUERY_DELTA),
        ({"dp_delta": 10**400}, PolicyRule.QUERY_DELTA),
        ({"model_release": True}, PolicyRule.MODEL_RELEASE),
        ({"model_release": "no"}, PolicyRule.MODEL_RELEASE),  # anything but False asks
    ],
)
def test_each_rule_refuses(
    policy: NodePolicy, changes: dict[str, object], rule: PolicyRule
) -> None:
    decision = decide(policy, query(**changes))
    assert not decision.allowed
    assert decision.rule is rule, decision
    assert decision.reason and "\n" not in decision.reason
    with pytest.raises(PolicyRefusedError, match=f"rule '{rule.value}'") as caught:
        decision.raise_if_refused()
    assert caught.value.decision is decision


def test_key_size_below_the_policy_minimum(policy: NodePolicy) -> None:
    strict = dataclasses.replace(policy, min_key_bits=3072)
    assert decide(strict, query(key_bits=2048)).rule is PolicyRule.KEY_SIZE
    assert decide(strict, query(key_bits=3072)).allowed


def test_jobs_that_aggregate_nothing_need_no_mode_or_key(policy: NodePolicy) -> None:
    psi = dataclasses.replace(policy, job_types=(*policy.job_types, JobKind.PSI))
    request = query(job_type="psi", aggregation=None, key_bits=None, dp_epsilon=None, dp_delta=None)
    assert decide(psi, request).allowed
    assert decide(policy, request).rule is PolicyRule.JOB_TYPE


def test_no_budget_means_nothing_may_spend_one(policy: NodePolicy) -> None:
    training_only = dataclasses.replace(policy, job_types=(JobKind.HFL_TRAIN,), dp=None)
    assert decide(training_only, training()).allowed
    assert decide(training_only, training(dp_epsilon=0.1)).rule is PolicyRule.QUERY_EPSILON
    assert decide(training_only, training(dp_delta=0.0)).rule is PolicyRule.QUERY_DELTA


def test_model_release_follows_the_policy(policy: NodePolicy) -> None:
    releasing = dataclasses.replace(policy, model_release=True)
    assert decide(releasing, training(model_release=True)).allowed
    assert decide(policy, training(model_release=True)).rule is PolicyRule.MODEL_RELEASE


def test_k_is_a_floor_the_request_can_only_raise(policy: NodePolicy) -> None:
    assert effective_k(policy, query()) == 10
    assert effective_k(policy, query(k=10)) == 10
    assert effective_k(policy, query(k=40)) == 40
    assert effective_k(policy, query(k=3)) == 10  # and decide refuses it
    assert effective_k(policy, query(k=True)) == 10
    assert decide(policy, query(k=3)).rule is PolicyRule.COHORT_SIZE


# Each rule broken on its own, in a way that composes with the others (column breaks append).
def _append(name: str, column: str) -> Callable[[JobRequest], JobRequest]:
    return lambda r: dataclasses.replace(r, **{name: (*getattr(r, name), column)})  # type: ignore[arg-type]


def _set(**changes: object) -> Callable[[JobRequest], JobRequest]:
    return lambda r: dataclasses.replace(r, **changes)  # type: ignore[arg-type]


BREAKS: dict[PolicyRule, Callable[[JobRequest], JobRequest]] = {
    PolicyRule.FEDERATION: _set(federation="other"),
    PolicyRule.COORDINATOR: _set(coordinator="c" * 64),
    PolicyRule.JOB_TYPE: _set(job_type="mining"),
    PolicyRule.AGGREGATION: _set(aggregation="plaintext"),
    PolicyRule.KEY_SIZE: _set(key_bits=1024),
    PolicyRule.DATASET: _set(dataset="credit"),
    PolicyRule.FORBIDDEN_COLUMN: _append("feature_columns", "cid"),
    PolicyRule.FEATURE_COLUMN: _append("feature_columns", "pdays"),
    PolicyRule.GROUP_BY_COLUMN: _append("group_by_columns", "age"),
    PolicyRule.FILTER_COLUMN: _append("filter_columns", "age"),
    PolicyRule.TARGET_COLUMN: _append("target_columns", "balance"),
    PolicyRule.COHORT_SIZE: _set(k=3),
    PolicyRule.QUERY_EPSILON: _set(dp_epsilon=0.9),
    PolicyRule.QUERY_DELTA: _set(dp_delta=1e-6),
    PolicyRule.MODEL_RELEASE: _set(model_release=True),
}


def test_check_order_is_the_documented_one() -> None:
    assert tuple(PolicyRule) == CHECK_ORDER
    assert set(BREAKS) == set(PolicyRule)


@pytest.mark.parametrize("index", range(len(CHECK_ORDER)))
def test_the_first_failing_rule_is_reported(policy: NodePolicy, index: int) -> None:
    rule = CHECK_ORDER[index]
    alone = BREAKS[rule](query())
    assert decide(policy, alone).rule is rule
    # Break this rule and every later one: this rule is still the one reported.
    request = query()
    for later in CHECK_ORDER[index:]:
        request = BREAKS[later](request)
    assert decide(policy, request).rule is rule
    # Break every later rule but not this one: a later rule is reported.
    request = query()
    for later in CHECK_ORDER[index + 1 :]:
        request = BREAKS[later](request)
    if index + 1 < len(CHECK_ORDER):
        assert decide(policy, request).rule is CHECK_ORDER[index + 1]
    else:
        assert decide(policy, request).allowed


def test_an_unknown_coordinator_learns_nothing_else(policy: NodePolicy) -> None:
    decision = decide(policy, query(coordinator="c" * 64, feature_columns=("cid",)))
    assert decision.rule is PolicyRule.COORDINATOR
    assert "cid" not in decision.reason and "bank" not in decision.reason


def test_reasons_are_one_short_line_whatever_the_request(policy: NodePolicy) -> None:
    hostile = "job\nACCEPTED all\r" + "x" * 10_000
    for changes in (
        {"federation": hostile},
        {"group_by_columns": (hostile,)},
        {"job_type": hostile},
        {"dataset": hostile},
    ):
        decision = decide(policy, query(**changes))
        assert not decision.allowed
        assert "\n" not in decision.reason and "\r" not in decision.reason
        assert len(decision.reason) < 300


def test_request_columns_are_frozen_and_never_a_bare_string() -> None:
    request = query(group_by_columns=["job"])
    assert request.group_by_columns == ("job",)
    with pytest.raises(TypeError, match=r"not a string"):
        query(target_columns="y")


def test_decision_names_a_rule_exactly_when_it_refuses() -> None:
    with pytest.raises(ValueError, match=r"exactly when it refuses"):
        Decision(allowed=True, rule=PolicyRule.DATASET, reason="x")
    with pytest.raises(ValueError, match=r"exactly when it refuses"):
        Decision(allowed=False, rule=None, reason="x")


# --- the shipped example -------------------------------------------------------------------


@pytest.fixture(scope="module")
def example() -> NodePolicy:
    return load_policy(EXAMPLE)


def test_example_loads_and_names_only_bank_marketing_columns(example: NodePolicy) -> None:
    assert [f.name for f in example.federations] == ["pilot"]
    bank = example.dataset("bank-marketing")
    assert bank is not None
    known = set(BANK_FULL_COLUMNS) | {ID_COLUMN}
    for columns in (bank.features, bank.group_by, bank.targets, bank.forbidden):
        assert set(columns) <= known
    assert set(bank.forbidden) == {ID_COLUMN, "duration"}
    summary = example.summary()
    assert "bank-marketing" in summary and "at least 10 customers" in summary


def _request_from_spec(spec: JobSpec, coordinator: str) -> JobRequest:
    return JobRequest(
        federation="pilot",
        coordinator=coordinator,
        job_type=spec.type,
        aggregation=spec.aggregation,
        dataset=spec.dataset,
        feature_columns=spec.schema.feature_names,
        group_by_columns=(),
        target_columns=(spec.schema.label,),
        filter_columns=(),
        key_bits=spec.key_bits,
        model_release=spec.release_model,
    )


def test_example_allows_the_shipped_training_job(example: NodePolicy) -> None:
    coordinator = example.federations[0].coordinators[0]
    spec = JobSpec.load(SHIPPED_SPEC)
    assert decide(example, _request_from_spec(spec, coordinator)).allowed
    plaintext = spec.with_overrides({"job": {"aggregation": "plaintext"}})
    decision = decide(example, _request_from_spec(plaintext, coordinator))
    assert decision.rule is PolicyRule.AGGREGATION
    assert "plaintext" in decision.reason


def test_example_decisions(example: NodePolicy) -> None:
    coordinator = example.federations[0].coordinators[0]
    conversion_by_job = JobRequest(
        federation="pilot",
        coordinator=coordinator,
        job_type=JobKind.QUERY,
        aggregation=Aggregation.PAILLIER,
        dataset="bank-marketing",
        feature_columns=(),
        group_by_columns=("job", "contact"),
        target_columns=("y",),
        filter_columns=("month",),
        key_bits=2048,
        model_release=False,
        dp_epsilon=0.25,
        dp_delta=0.0,
        k=20,
    )
    assert decide(example, conversion_by_job).allowed
    assert effective_k(example, conversion_by_job) == 20
    cases = {
        PolicyRule.GROUP_BY_COLUMN: {"group_by_columns": ("age",)},
        PolicyRule.TARGET_COLUMN: {"target_columns": ("balance",)},
        PolicyRule.FORBIDDEN_COLUMN: {"group_by_columns": ("cid",)},
        PolicyRule.FILTER_COLUMN: {"filter_columns": ("default",)},
        PolicyRule.COHORT_SIZE: {"k": 5},
        PolicyRule.QUERY_EPSILON: {"dp_epsilon": 1.0},
        PolicyRule.JOB_TYPE: {"job_type": "vfl-train"},
        PolicyRule.KEY_SIZE: {"key_bits": 1024},
        PolicyRule.FEDERATION: {"federation": "retail"},
    }
    for rule, changes in cases.items():
        changed = dataclasses.replace(conversion_by_job, **changes)  # type: ignore[arg-type]
        assert decide(example, changed).rule is rule, (rule, changes)
