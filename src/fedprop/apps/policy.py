"""The node's policy gate: a ClientApp mod every incoming message passes through.

Before any step handler runs (so before any data is read), :func:`policy_mod` checks the
request against what the node itself decided, from its own files only:

- a query must carry the coordinator's signature over its exact text, by the coordinator
  key of the node's pinned manifest (a forged or altered query is refused), and the node
  must have a privacy policy (without one it answers no query);
- the node's policy (:func:`fedprop.privacy.policy.decide`) must allow the job or query:
  federation, coordinator key, job type, aggregation, key size, dataset, every column in
  the role it is used, cohort size, epsilon and delta, model release. For a vertical job
  the columns are the node's own (:func:`fedprop.protocols.vertical.policy_request`).

A refusal goes back to the coordinator as an error naming the rule, and the node's audit
(the mod around this one) logs it as ``job-refused``. Nothing the coordinator sends can
switch a check off: the policy path comes from the node's own configuration. Budgets are
checked next, by the query's node role against its ledger, also before a row is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedprop.apps.records import error_reply, from_record
from fedprop.crypto.identity import Manifest
from fedprop.errors import FedpropError
from fedprop.privacy.policy import decide, load_policy, training_request
from fedprop.protocols.analytics import QuerySpec, QueryStep, query_signer
from fedprop.protocols.hfl import Step
from fedprop.protocols.steps import REQUESTS, VERTICAL_KINDS, job_of
from fedprop.protocols.vertical import VStep, parse_vertical, policy_request
from fedprop.spec import JobSpec

__all__ = ["POLICY_ERROR_CODE", "PolicyPaths", "check_request", "policy_mod"]

#: Flower error code of a message the node's policy gate refused.
POLICY_ERROR_CODE = 4003

_QUERY_STEPS = frozenset(s.value for s in QueryStep)

#: ``(party, pinned manifest, policy file or None, model folder or None)`` of the node
#: answering a message.
PolicyPaths = Callable[[Context], tuple[str, Path, Path | None, Path | None]]


def check_request(
    message_type: str,
    request: object,
    manifest: Manifest,
    policy: Path | None,
    *,
    party: str = "",
    model_dir: Path | None = None,
) -> None:
    """Raise :class:`~fedprop.errors.FedpropError` (naming the rule) unless the node
    ``party`` with ``manifest``, ``policy`` and its kept model parts (``model_dir``) may
    carry out ``request``."""
    if message_type in (Step.ABORT, VStep.ABORT):
        return  # stopping a job reads nothing and releases nothing
    text = getattr(request, "spec", None)
    ref = job_of(text) if isinstance(text, str) else None
    if not isinstance(text, str) or ref is None:
        raise FedpropError("the request names no job or query; refused")
    if message_type in _QUERY_STEPS:
        coordinator = query_signer(manifest, text, getattr(request, "signature", b""))
        if policy is None:
            raise FedpropError(
                "this node has no privacy policy (node config 'policy'), so it answers no query"
            )
        query = QuerySpec.from_toml(text, "received query")
        decide(
            load_policy(policy), query.to_request(manifest.federation, coordinator)
        ).raise_if_refused()
        return
    if policy is None:
        return
    if ref.kind in VERTICAL_KINDS:
        vertical = parse_vertical(text)
        asked = policy_request(vertical, party, manifest, model_dir)
    else:
        asked = training_request(JobSpec.from_toml(text, "received job spec"), manifest)
    decide(load_policy(policy), asked).raise_if_refused()


def policy_mod(paths: PolicyPaths, error_code: int = POLICY_ERROR_CODE) -> Mod:
    """A ClientApp mod refusing every message the node's policy does not allow."""

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        party = "?"
        try:
            party, manifest_path, policy, model_dir = paths(context)
            message_type = message.metadata.message_type
            if message_type not in REQUESTS:
                raise FedpropError(f"no fedprop step travels as '{message_type}'; refused")
            request: object = from_record(REQUESTS[message_type], message.content)
            try:
                manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise FedpropError(f"{manifest_path}: cannot read the manifest: {exc}") from None
            check_request(message_type, request, manifest, policy, party=party, model_dir=model_dir)
        except FedpropError as exc:
            return error_reply(message, error_code, party, str(exc))
        return call_next(message, context)

    return mod
