"""The node's Flower ClientApp: turns Flower messages into protocol steps.

A node answers only for its own party, reads only its own data folder, and
parses the job spec it receives itself. It trusts only its own files: its
identity keys and the federation manifest it pinned. Errors a user can fix (a
bad file, a bad spec, a job it is not part of, a refused release) go back to
the coordinator as a Flower ``Error`` whose reason names the party and the
problem.

The SuperNode's ``--node-config`` tells the node who and where it is:

| key | meaning |
|---|---|
| ``party`` | its name in job specs and in the manifest |
| ``data-dir`` | folder with ``train.csv`` and ``test.csv`` |
| ``key-dir`` | its identity keys (``fedprop node keygen``) |
| ``manifest`` | the federation manifest it pinned |
| ``audit-dir`` | folder of its privacy log (:mod:`fedprop.apps.audit`) |
| ``allow-plaintext`` | accept ``plaintext`` aggregation (default false) |
| ``allow-model-release`` | release the final model to the coordinator (default false) |
| ``policy`` | the node's privacy policy (TOML); without one it answers no query |
| ``ledger`` | its budget ledger (default ``<audit-dir>/<party>.budget.jsonl``) |
| ``state-dir`` | vertical jobs: per-job state between messages (secrets; owner-only) |
| ``model-dir`` | vertical jobs: the model parts this node keeps |
| ``output-dir`` | vertical scoring at the guest: the ranked target lists it writes |

A vertical job reads ``data.csv`` in ``data-dir``; a node without ``state-dir`` and
``model-dir`` refuses vertical jobs.

Every message passes the node's audit (:mod:`fedprop.apps.audit`), then its policy gate
(:mod:`fedprop.apps.policy`), before a step handler runs.

In the Simulation Engine, a locator maps each virtual node's
``partition-id`` to one of these configurations instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedprop.apps.audit import audit_mod, note_event
from fedprop.apps.policy import policy_mod
from fedprop.apps.records import error_reply, from_record, to_record
from fedprop.audit import EventKind, budget_detail, key_ceremony_detail, release_detail
from fedprop.crypto.identity import Manifest, load_identity
from fedprop.crypto.params import VFL_MIN_TEST_ROWS
from fedprop.data.loader import load_party
from fedprop.data.schema import Schema
from fedprop.errors import FedpropError
from fedprop.privacy.dpsgd import dp_training_spend
from fedprop.privacy.ledger import BudgetDecision, BudgetLedger
from fedprop.privacy.policy import load_policy
from fedprop.protocols.analytics import (
    QueryNode,
    QueryNodeAdapter,
    QueryNodeSettings,
    QueryReleaseRequest,
    QueryRequest,
    QuerySpec,
    QueryStep,
)
from fedprop.protocols.hfl import HflNode, NodeSettings, Step
from fedprop.protocols.messages import AbortReply
from fedprop.protocols.steps import REQUESTS
from fedprop.protocols.vertical import (
    AlignedReply,
    HelloRequest,
    MetricsReply,
    ScoredReply,
    VerticalNode,
    VerticalSettings,
    VStep,
)
from fedprop.spec import JobSpec

__all__ = [
    "ERROR_CODE",
    "NodeConfig",
    "SimulationLocator",
    "app",
    "build_client_app",
    "node_config_locator",
]

#: Flower error code for a request the node refused or could not carry out.
ERROR_CODE = 4001

_VERTICAL_STEPS = frozenset(s.value for s in VStep)


@dataclass(frozen=True)
class NodeConfig:
    """Who this node is, where its data and keys are, and what it allows."""

    party: str
    data_dir: Path
    key_dir: Path
    manifest: Path
    audit_dir: Path
    allow_plaintext: bool = False
    allow_model_release: bool = False
    policy: Path | None = None
    ledger: Path | None = None
    state_dir: Path | None = None
    model_dir: Path | None = None
    output_dir: Path | None = None

    @property
    def ledger_path(self) -> Path:
        """The node's budget ledger (``ledger``, or its default in the audit folder)."""
        return self.ledger or self.audit_dir / f"{self.party}.budget.jsonl"

    @classmethod
    def from_mapping(cls, config: Mapping[str, object]) -> NodeConfig:
        """Read a SuperNode's node config; raise naming a missing or mistyped key."""

        def text(key: str) -> str:
            if key not in config:
                raise FedpropError(f"node config lacks '{key}' (set it with --node-config)")
            return str(config[key])

        def path(key: str) -> Path | None:
            return Path(str(config[key])) if key in config else None

        def flag(key: str) -> bool:
            value = config.get(key, False)
            if not isinstance(value, bool):
                raise FedpropError(f"node config '{key}' must be true or false, got {value!r}")
            return value

        return cls(
            party=text("party"),
            data_dir=Path(text("data-dir")),
            key_dir=Path(text("key-dir")),
            manifest=Path(text("manifest")),
            audit_dir=Path(text("audit-dir")),
            allow_plaintext=flag("allow-plaintext"),
            allow_model_release=flag("allow-model-release"),
            policy=path("policy"),
            ledger=path("ledger"),
            state_dir=path("state-dir"),
            model_dir=path("model-dir"),
            output_dir=path("output-dir"),
        )

    def settings(self) -> NodeSettings:
        """Load this node's identity and pinned manifest."""
        identity = load_identity(self.key_dir)
        if identity.name != self.party:
            raise FedpropError(
                f"keys in {self.key_dir} belong to '{identity.name}', not '{self.party}'"
            )
        try:
            manifest = Manifest.from_json(self.manifest.read_text(encoding="utf-8"))
        except OSError as exc:
            raise FedpropError(f"{self.manifest}: cannot read the manifest: {exc}") from None
        return NodeSettings(identity, manifest, self.allow_plaintext, self.allow_model_release)

    def vertical_settings(self) -> VerticalSettings:
        """This node's settings for vertical jobs; refuses without state and model folders."""
        if self.state_dir is None or self.model_dir is None:
            raise FedpropError(
                "this node takes no vertical job: its node config sets no 'state-dir' "
                "and 'model-dir'"
            )
        base = self.settings()
        return VerticalSettings(
            identity=base.identity,
            manifest=base.manifest,
            data_dir=self.data_dir,
            state_dir=self.state_dir,
            model_dir=self.model_dir,
            output_dir=self.output_dir,
            allow_plaintext=self.allow_plaintext,
        )


Locator = Callable[[Context], NodeConfig]


def node_config_locator(context: Context) -> NodeConfig:
    """Read the node's configuration from the SuperNode's ``--node-config``."""
    return NodeConfig.from_mapping(dict(context.node_config))


@dataclass(frozen=True)
class SimulationLocator:
    """Maps a simulated node's ``partition-id`` to a node configuration."""

    nodes: tuple[NodeConfig, ...]

    def __call__(self, context: Context) -> NodeConfig:
        """The configuration of the party this virtual node plays."""
        return self.nodes[int(context.node_config["partition-id"])]


@lru_cache(maxsize=8)
def _node(spec_text: str, config: NodeConfig) -> HflNode:
    """A node for this job, kept between messages so data is read and encoded once."""
    spec = JobSpec.from_toml(spec_text, "received job spec")
    settings = config.settings()
    data = dataclasses.replace(load_party(config.data_dir, spec.schema), name=config.party)
    return HflNode(spec, data, settings)


def _note_spend(decision: BudgetDecision) -> None:
    """Have the node's log record a spend: the ledger's composed increment, the limits, and
    the window the ledger checked it in (its budget renews over a rolling period, so an
    auditor sums the spends of that window, not of the whole log)."""
    note_event(
        EventKind.BUDGET_SPEND,
        budget_detail(
            f"coordinator {decision.coordinator}",
            max(decision.after.epsilon - decision.before.epsilon, 0.0),
            max(decision.after.delta - decision.before.delta, 0.0),
            decision.limit_epsilon,
            decision.limit_delta,
            window=(decision.window_start, decision.at),
        ),
    )


def _query_adapter(config: NodeConfig) -> QueryNodeAdapter:
    """This node's query role: policy and ledger from its own files; its rows (train and
    test together) read only once a query was admitted."""
    if config.policy is None:
        raise FedpropError("this node has no privacy policy, so it answers no query")
    settings = config.settings()
    policy = load_policy(config.policy)
    if policy.dp is None:
        raise FedpropError(f"{config.policy}: no [dp] budget, so no query may spend one")

    def rows(schema: Schema) -> pd.DataFrame:
        data = load_party(config.data_dir, schema)
        return pd.concat([data.train, data.test], ignore_index=True)

    ledger = BudgetLedger(config.ledger_path, policy.dp)
    return QueryNodeAdapter(
        QueryNode(rows, QueryNodeSettings(settings.identity, settings.manifest, policy, ledger))
    )


def _answer_query(
    config: NodeConfig, step: QueryStep, request: QueryRequest | QueryReleaseRequest
) -> object:
    """Answer a query step; report the budget spend or the release to the node's log."""
    adapter = _query_adapter(config)
    reply = adapter.handle(step, request)
    node = adapter.node
    if step is QueryStep.CONTRIBUTE and node.last_spend is not None:
        _note_spend(node.last_spend)
    if step is QueryStep.RELEASE:
        query = QuerySpec.from_toml(request.spec, "query")
        what = f"noised answer of query {query.id}, {query.cells} cell(s)"
        rule = f"cells of at least k customers; epsilon {query.epsilon}, delta {query.delta}"
        note_event(EventKind.RELEASE, release_detail(what, rule))
    return reply


def _spend_on_training(config: NodeConfig, node: HflNode, round_: int) -> None:
    """A DP training job spends its whole (epsilon, delta) from the coordinator's budget
    before this node's first update leaves (round 1); later rounds need that spend."""
    if config.policy is None:
        raise FedpropError("this node has no privacy policy, so no job may spend its budget")
    policy = load_policy(config.policy)
    if policy.dp is None:
        raise FedpropError(f"{config.policy}: no [dp] budget, so no job may spend one")
    manifest = node.settings.manifest
    coordinator = manifest.coordinator.fingerprint() if manifest.coordinator else ""
    ledger = BudgetLedger(config.ledger_path, policy.dp)
    spend = dp_training_spend(node.spec, coordinator, len(node.data.train))
    if round_ > 1:
        if ledger.spend_of(coordinator, node.spec.id) is None:
            raise FedpropError(f"job '{node.spec.id}' has no recorded budget spend here")
        return
    decision = ledger.check(spend)
    decision.raise_if_refused()
    ledger.record(spend, at=decision.at)  # durable before the first update leaves
    _note_spend(decision)


def _answer_vertical(config: NodeConfig, step: VStep, request: Any) -> object:
    """Answer a vertical step with a node rebuilt from disk; report to the node's log the
    keys it pinned and offered and every number it released to the coordinator."""
    reply = VerticalNode(config.vertical_settings()).handle(step, request)
    if isinstance(request, HelloRequest):
        offers = getattr(reply, "envelopes", b"")
        note_event(
            EventKind.KEY_CEREMONY,
            key_ceremony_detail("arbiter-key-pinned-channel-keys-offered", request.key + offers),
        )
    released = _vertical_release(reply)
    if released is not None:
        note_event(EventKind.RELEASE, release_detail(*released))
    return reply


def _vertical_release(reply: object) -> tuple[str, str] | None:
    """What a vertical reply releases to the coordinator, and the rule; None if nothing."""
    if isinstance(reply, AlignedReply):
        return f"intersection size ({reply.rows})", "alignment: the size only, no id"
    if isinstance(reply, MetricsReply):
        return (
            f"AUC, KS, lift at 10% and 20% of {reply.rows} held-out rows",
            f"metrics only, over at least {VFL_MIN_TEST_ROWS} held-out rows",
        )
    if isinstance(reply, ScoredReply):
        return f"number of customers scored ({reply.rows})", "the target list stays here"
    return None


def _answer(locate: Locator, message: Message, context: Context) -> Message:
    message_type = message.metadata.message_type
    party = "?"
    try:
        config = locate(context)
        party = config.party
        request: Any = from_record(REQUESTS[message_type], message.content)
        if message_type == Step.ABORT:
            _node.cache_clear()
            return Message(to_record(AbortReply(config.party)), reply_to=message)
        if message_type in _VERTICAL_STEPS:
            reply = _answer_vertical(config, VStep(message_type), request)
        elif isinstance(request, QueryRequest | QueryReleaseRequest):
            reply = _answer_query(config, QueryStep(message_type), request)
        else:
            node = _node(request.spec, config)
            if message_type == Step.TRAIN and node.spec.train.dp is not None:
                _spend_on_training(config, node, request.round)
            reply = node.handle(Step(message_type), request)
        return Message(to_record(reply), reply_to=message)
    except FedpropError as exc:
        return error_reply(message, ERROR_CODE, party, str(exc))


def build_client_app(locate: Locator = node_config_locator, *, audit: bool = True) -> ClientApp:
    """A ClientApp that answers fedprop's protocol steps for the party ``locate`` names.

    Every message passes through the node's privacy log (:func:`audit_mod`);
    ``audit=False`` exists only to measure what logging costs.
    """

    def paths(context: Context) -> tuple[str, Path, Path, Path]:
        config = locate(context)
        return config.party, config.audit_dir, config.key_dir, config.manifest

    def policy_paths(context: Context) -> tuple[str, Path, Path | None, Path | None]:
        config = locate(context)
        return config.party, config.manifest, config.policy, config.model_dir

    gate = policy_mod(policy_paths)
    client_app = ClientApp(mods=[audit_mod(paths), gate] if audit else [gate])

    def answer(message: Message, context: Context) -> Message:
        return _answer(locate, message, context)

    # One handler for every step: the message type says which; unknown types never reach it.
    for message_type in REQUESTS:
        category, _, action = message_type.partition(".")
        register = getattr(client_app, category)
        if action:
            register(action)(answer)
        else:
            register()(answer)

    return client_app


#: The ClientApp a deployed SuperNode loads (``[tool.flwr.app.components]``).
app = build_client_app()
