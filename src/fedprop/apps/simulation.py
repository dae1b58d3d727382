"""Run a job in Flower's Simulation Engine: every party on this machine.

Each party is a virtual SuperNode whose ClientApp reads only its own folder;
the coordinator's ServerApp runs in this process. Flower's telemetry and
update check are off (importing fedprop forces them off).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedprop.apps.client_app import NodeConfig, SimulationLocator, build_client_app
from fedprop.apps.server_app import CoordinatorConfig, build_server_app
from fedprop.crypto.identity import Manifest
from fedprop.errors import JobFailedError
from fedprop.protocols.analytics import QueryOutcome, QuerySpec
from fedprop.protocols.hfl import HflResult, ProgressFn
from fedprop.protocols.vertical import ProgressFn as EpochFn
from fedprop.protocols.vertical import ScoreResult, ScoreSpec, VerticalResult, VerticalSpec
from fedprop.spec import JobSpec

__all__ = ["SIMULATION_CPUS_PER_NODE", "simulate", "simulate_query", "simulate_vertical"]

#: CPU share of each virtual node; 1 lets two parties train at once on two cores.
SIMULATION_CPUS_PER_NODE = 1


class _DropDeprecation(logging.Filter):
    """Hide Flower's notice that the Python simulation entry point is deprecated."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage()


def _run(server_app: ServerApp, client_app: ClientApp, parties: int, quiet: bool) -> None:
    """One run of the Simulation Engine with ``parties`` virtual nodes."""
    # Ray otherwise warns at every start that it will stop overriding device variables.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    deprecation = _DropDeprecation()
    flwr_logger.addFilter(deprecation)
    if quiet:
        flwr_logger.setLevel(logging.WARNING)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=parties,
            backend_config={
                "client_resources": {"num_cpus": SIMULATION_CPUS_PER_NODE, "num_gpus": 0.0},
                "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
            },
        )
    finally:
        flwr_logger.removeFilter(deprecation)
        flwr_logger.setLevel(level)


def _locator(parties: Sequence[str], nodes: Mapping[str, NodeConfig]) -> SimulationLocator:
    missing = [p for p in parties if p not in nodes]
    if missing:
        raise JobFailedError(f"no node configured for: {', '.join(missing)}")
    return SimulationLocator(tuple(nodes[p] for p in parties))


def simulate(
    spec: JobSpec,
    nodes: Mapping[str, NodeConfig],
    manifest: Manifest,
    coordinator: CoordinatorConfig | None,
    *,
    progress: ProgressFn | None = None,
    quiet: bool = True,
) -> HflResult:
    """Run ``spec`` with one virtual node per party; return what the coordinator holds.

    Every party logs what it sends and receives (``coordinator`` says where the
    coordinator's keys and log are); ``coordinator=None`` runs without any privacy
    log, only to measure what logging costs.
    """
    locator = _locator(spec.parties, nodes)
    results: list[HflResult] = []
    audit = coordinator is not None
    server_app = build_server_app(
        spec,
        manifest,
        coordinator=coordinator,
        progress=progress,
        on_result=results.append,
        audit=audit,
    )
    _run(server_app, build_client_app(locator, audit=audit), len(spec.parties), quiet)
    if not results:
        raise JobFailedError(f"job '{spec.id}' ended without a result")
    return results[0]


def simulate_query(
    query_text: str,
    nodes: Mapping[str, NodeConfig],
    manifest: Manifest,
    coordinator: CoordinatorConfig,
    *,
    quiet: bool = True,
) -> QueryOutcome:
    """Run one query with one virtual node per party; return the answer the coordinator
    holds. Every party logs what it sends and receives."""
    query = QuerySpec.from_toml(query_text, "query")
    locator = _locator(query.parties, nodes)
    outcomes: list[QueryOutcome] = []
    server_app = build_server_app(
        manifest=manifest, query=query_text, coordinator=coordinator, on_answer=outcomes.append
    )
    _run(server_app, build_client_app(locator), len(query.parties), quiet)
    if not outcomes:
        raise JobFailedError(f"query '{query.id}' ended without an answer")
    return outcomes[0]


def simulate_vertical(
    spec: VerticalSpec | ScoreSpec,
    nodes: Mapping[str, NodeConfig],
    manifest: Manifest,
    coordinator: CoordinatorConfig,
    *,
    on_epoch: EpochFn | None = None,
    quiet: bool = True,
) -> VerticalResult | ScoreResult:
    """Run a vertical job (training or joint scoring) with one virtual node per party (the
    guest, then the hosts); return what the coordinator holds. Every party logs what it
    sends and receives."""
    locator = _locator(spec.members, nodes)
    results: list[VerticalResult | ScoreResult] = []
    server_app = build_server_app(
        spec, manifest, coordinator=coordinator, on_epoch=on_epoch, on_vertical=results.append
    )
    _run(server_app, build_client_app(locator), len(spec.members), quiet)
    if not results:
        raise JobFailedError(f"job '{spec.id}' ended without a result")
    return results[0]
