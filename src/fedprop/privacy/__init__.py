"""Privacy controls that run on each node, against the node's own policy.

- :mod:`fedprop.privacy.policy`: the node policy file (federations and coordinator keys it
  accepts, columns per dataset, job types, aggregation modes, key sizes, cohort size k, the
  differential-privacy budget, model release), parsed and checked, and :func:`decide`, the
  one decision every incoming job or query passes before any data is read.
"""

from fedprop.privacy.policy import (
    CHECK_ORDER,
    MAX_PERIOD_DAYS,
    MIN_COHORT_SIZE,
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

__all__ = [
    "CHECK_ORDER",
    "MAX_PERIOD_DAYS",
    "MIN_COHORT_SIZE",
    "DatasetPolicy",
    "Decision",
    "DpBudget",
    "FederationPolicy",
    "JobKind",
    "JobRequest",
    "NodePolicy",
    "PolicyError",
    "PolicyRefusedError",
    "PolicyRule",
    "decide",
    "effective_k",
    "load_policy",
    "parse_policy",
]
