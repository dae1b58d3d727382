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

In the Simulation Engine, a locator maps each virtual node's
``partition-id`` to one of these configurations instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedprop.apps.audit import audit_mod
from fedprop.apps.records import error_reply, from_record, to_record
from fedprop.crypto.identity import Manifest, load_identity
from fedprop.data.loader import load_party
from fedprop.errors import FedpropError
from fedprop.privacy.policy import decide, load_policy, training_request
from fedprop.protocols.hfl import (
    REQUESTS,
    AbortReply,
    HflNode,
    NodeSettings,
    Request,
    Step,
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

    @classmethod
    def from_mapping(cls, config: Mapping[str, object]) -> NodeConfig:
        """Read a SuperNode's node config; raise naming a missing or mistyped key."""

        def text(key: str) -> str:
            if key not in config:
                raise FedpropError(f"node config lacks '{key}' (set it with --node-config)")
            return str(config[key])

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
            policy=Path(str(config["policy"])) if "policy" in config else None,
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
    if config.policy is not None:
        # The node's own policy decides, before any data is read.
        decide(
            load_policy(config.policy), training_request(spec, settings.manifest)
        ).raise_if_refused()
    data = dataclasses.replace(load_party(config.data_dir, spec.schema), name=config.party)
    return HflNode(spec, data, settings)


def _answer(locate: Locator, message: Message, context: Context) -> Message:
    step = Step(message.metadata.message_type)
    party = "?"
    try:
        config = locate(context)
        party = config.party
        request: Request = from_record(REQUESTS[step], message.content)
        if step is Step.ABORT:
            _node.cache_clear()
            return Message(to_record(AbortReply(config.party)), reply_to=message)
        node = _node(request.spec, config)
        return Message(to_record(node.handle(step, request)), reply_to=message)
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

    client_app = ClientApp(mods=[audit_mod(paths)] if audit else [])

    @client_app.query("keys")
    def keys(message: Message, context: Context) -> Message:
        return _answer(locate, message, context)

    @client_app.query("stats")
    def stats(message: Message, context: Context) -> Message:
        return _answer(locate, message, context)

    @client_app.query("release")
    def release(message: Message, context: Context) -> Message:
        return _answer(locate, message, context)

    @client_app.query("abort")
    def abort(message: Message, context: Context) -> Message:
        return _answer(locate, message, context)

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        return _answer(locate, message, context)

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return _answer(locate, message, context)

    return client_app


#: The ClientApp a deployed SuperNode loads (``[tool.flwr.app.components]``).
app = build_client_app()
