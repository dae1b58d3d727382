"""The node's Flower ClientApp: turns Flower messages into protocol steps.

A node answers only for its own party, reads only its own data folder, and
parses the job spec it receives itself. Errors a user can fix (a bad file, a
bad spec, a job it is not part of) go back to the coordinator as a Flower
``Error`` whose reason names the party and the problem.

Where the node's data is comes from the SuperNode's node config:
``party`` (its name in job specs) and ``data-dir`` (its folder with
``train.csv`` and ``test.csv``). In the Simulation Engine, a locator maps each
virtual node's ``partition-id`` to a party instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedprop.apps.records import from_record, to_record
from fedprop.data.loader import load_party
from fedprop.errors import FedpropError
from fedprop.protocols.hfl import HflNode, ModelRequest, Request, StatsRequest, Step
from fedprop.spec import JobSpec

__all__ = [
    "ERROR_CODE",
    "PartyLocation",
    "SimulationLocator",
    "app",
    "build_client_app",
    "node_config_locator",
]

#: Flower error code for a request the node refused or could not carry out.
ERROR_CODE = 4001

#: Request type of each protocol step.
REQUESTS: dict[Step, type[StatsRequest] | type[ModelRequest]] = {
    Step.STATS: StatsRequest,
    Step.TRAIN: ModelRequest,
    Step.EVALUATE: ModelRequest,
}


@dataclass(frozen=True)
class PartyLocation:
    """Who this node is and where its data lives."""

    party: str
    data_dir: Path


Locator = Callable[[Context], PartyLocation]


def node_config_locator(context: Context) -> PartyLocation:
    """Read ``party`` and ``data-dir`` from the SuperNode's ``--node-config``."""
    config = context.node_config
    try:
        party, data_dir = config["party"], config["data-dir"]
    except KeyError as exc:
        raise FedpropError(
            f"node config lacks {exc.args[0]!r} (set it with --node-config)"
        ) from None
    return PartyLocation(str(party), Path(str(data_dir)))


@dataclass(frozen=True)
class SimulationLocator:
    """Maps a simulated node's ``partition-id`` to a party and its folder."""

    parties: tuple[PartyLocation, ...]

    def __call__(self, context: Context) -> PartyLocation:
        """The party simulated by this virtual node."""
        index = int(context.node_config["partition-id"])
        return self.parties[index]


@lru_cache(maxsize=8)
def _node(spec_text: str, party: str, data_dir: Path) -> HflNode:
    """A node for this job, kept between messages so data is read and encoded once."""
    spec = JobSpec.from_toml(spec_text, "received job spec")
    data = dataclasses.replace(load_party(data_dir, spec.schema), name=party)
    return HflNode(spec, data)


def _answer(locate: Locator, message: Message, context: Context) -> Message:
    step = Step(message.metadata.message_type)
    party = "?"
    try:
        location = locate(context)
        party = location.party
        request: Request = from_record(REQUESTS[step], message.content)
        node = _node(request.spec, location.party, location.data_dir.resolve())
        return Message(to_record(node.handle(step, request)), reply_to=message)
    except FedpropError as exc:
        return Message(Error(code=ERROR_CODE, reason=f"{party}: {exc}"), reply_to=message)


def build_client_app(locate: Locator = node_config_locator) -> ClientApp:
    """A ClientApp that answers fedprop's protocol steps for the party ``locate`` names."""
    client_app = ClientApp()

    @client_app.query("stats")
    def stats(message: Message, context: Context) -> Message:
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
