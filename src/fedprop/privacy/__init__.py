"""Privacy controls that run on each node, against the node's own policy.

- :mod:`fedprop.privacy.policy`: the node policy file (federations and coordinator keys it
  accepts, columns per dataset, job types, aggregation modes, key sizes, cohort size k, the
  differential-privacy budget, model release), parsed and checked, and :func:`decide`, the
  one decision every incoming job or query passes before any data is read.
- :mod:`fedprop.privacy.ledger`: the budget ledger, an append-only file of every privacy
  spend per coordinator key, composed with a maintained accountant, checked before any
  query is computed.
- :mod:`fedprop.privacy.noise`: exact discrete Laplace and Gaussian noise drawn from the OS
  CSPRNG, and its calibration.
"""

from fedprop.privacy.ledger import (
    BudgetDecision,
    BudgetExceededError,
    BudgetLedger,
    BudgetTotal,
    LedgerEntry,
    LedgerError,
    Mechanism,
    MechanismKind,
    Spend,
    Spent,
    SummaryRow,
    pld_available,
)
from fedprop.privacy.noise import (
    NoiseError,
    NoiseSource,
    discrete_laplace_variance,
    gaussian_sigma2,
    laplace_scale,
)
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
    training_request,
)

__all__ = [
    "CHECK_ORDER",
    "MAX_PERIOD_DAYS",
    "MIN_COHORT_SIZE",
    "BudgetDecision",
    "BudgetExceededError",
    "BudgetLedger",
    "BudgetTotal",
    "DatasetPolicy",
    "Decision",
    "DpBudget",
    "FederationPolicy",
    "JobKind",
    "JobRequest",
    "LedgerEntry",
    "LedgerError",
    "Mechanism",
    "MechanismKind",
    "NodePolicy",
    "NoiseError",
    "NoiseSource",
    "PolicyError",
    "PolicyRefusedError",
    "PolicyRule",
    "Spend",
    "Spent",
    "SummaryRow",
    "decide",
    "discrete_laplace_variance",
    "effective_k",
    "gaussian_sigma2",
    "laplace_scale",
    "load_policy",
    "parse_policy",
    "pld_available",
    "training_request",
]
