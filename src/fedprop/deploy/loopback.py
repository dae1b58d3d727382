"""A whole deployment on one machine's loopback: real processes, TLS, node authentication.

:class:`LoopbackDeployment` does on 127.0.0.1 what a pilot does across institutions:
pilot certificates, every party's keys and the manifest, ``fedprop coordinator start``
(the SuperLink), ``fedprop coordinator register`` for each node's key, ``fedprop node
start`` for each node (the SuperNodes), and ``fedprop coordinator submit`` for a job.
Each process runs in its own process group with its output in ``<root>/logs``; every
wait is bounded, and leaving the ``with`` block stops them all. Tests and benchmarks
use it, and so can an operator rehearsing a pilot.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from fedprop.apps.server_app import RESULT_FILE
from fedprop.certs import CA_CERT, make_pilot_certs
from fedprop.deploy.coordinator import (
    CoordinatorSetup,
    RunOutcome,
    flower_env,
    node_statuses,
    register_node,
    submit_job,
)
from fedprop.deploy.node import (
    DEFAULT_POLL_INTERVAL,
    NODE_AUTH_PUBLIC,
    make_node_auth_key,
    node_config_arg,
)
from fedprop.errors import FedpropError
from fedprop.federation import LocalFederation, local_federation

__all__ = ["LoopbackDeployment", "free_port"]

#: Seconds a process gets to come up (the SuperLink listening, a node online).
START_TIMEOUT_SECONDS: Final = 90.0
#: The fedprop app (its ``pyproject.toml`` names the ServerApp and ClientApp) when
#: fedprop runs from its source checkout.
SOURCE_CHECKOUT: Final = Path(__file__).resolve().parents[3]
#: What a SuperNode prints when it is back with a restarted SuperLink: it reconnected, or
#: (started again by ``fedprop node start``) it was given its node id.
REJOINED: Final = (b"Connection successful", b"SuperNode ID")
#: Seconds a process gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_SECONDS: Final = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _fedprop(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "fedprop"), *args]


class LoopbackDeployment:
    """A SuperLink and one SuperNode per party, as separate processes on 127.0.0.1."""

    def __init__(
        self,
        root: Path,
        parties: Sequence[str],
        data_dirs: Mapping[str, Path],
        *,
        federation: str = "loopback",
        allow_model_release: bool = True,
        app_dir: Path = SOURCE_CHECKOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if not (Path(app_dir) / "pyproject.toml").is_file():
            raise FedpropError(f"{app_dir}: not the fedprop app (no pyproject.toml)")
        self.app_dir = Path(app_dir)
        self.poll_interval = poll_interval
        self.root = Path(root).resolve()
        self.parties = tuple(parties)
        self.data_dirs = {p: Path(d).resolve() for p, d in data_dirs.items()}
        self.federation_name = federation
        self.allow_model_release = allow_model_release
        self.setup = CoordinatorSetup(
            certs=self.root / "certs", state=self.root / "coordinator", port=free_port()
        )
        self.logs = self.root / "logs"
        self.node_ids: dict[str, int] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._fed: LocalFederation | None = None

    # --- set-up -------------------------------------------------------------------------

    @property
    def federation(self) -> LocalFederation:
        """The parties' keys, the manifest and the log folder."""
        if self._fed is None:
            raise FedpropError("the deployment has not been prepared")
        return self._fed

    def prepare(self) -> None:
        """Certificates, identity and node-authentication keys, the manifest."""
        self.logs.mkdir(parents=True, exist_ok=True)
        if not self.setup.certs.exists():
            make_pilot_certs(self.setup.certs, ["127.0.0.1"], days=1)
        self._fed = local_federation(self.root / "federation", self.federation_name, self.parties)
        for folder in self._fed.key_dirs.values():
            if not (folder / NODE_AUTH_PUBLIC).exists():
                make_node_auth_key(folder)

    def node_config(self, party: str, **overrides: object) -> dict[str, object]:
        """The ``--node-config`` of ``party``'s SuperNode; ``overrides`` replace entries
        (``data_dir=...`` replaces ``data-dir``)."""
        config = self.federation.node_configs(
            self.data_dirs, allow_model_release=self.allow_model_release
        )[party]
        return {
            "party": party,
            "data-dir": str(config.data_dir),
            "key-dir": str(config.key_dir),
            "manifest": str(config.manifest),
            "audit-dir": str(config.audit_dir),
            "allow-model-release": config.allow_model_release,
            **{key.replace("_", "-"): str(value) for key, value in overrides.items()},
        }

    # --- processes ----------------------------------------------------------------------

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        if name in self.processes and self.processes[name].poll() is None:
            raise FedpropError(f"{name} is already running")
        """Start ``command`` as process ``name`` in its own process group, output in
        ``logs/<name>.log``."""
        with open(self.logs / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=flower_env(self.root / "flwr" / name),
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def _wait(self, what: str, ready: Any, process: subprocess.Popen[bytes]) -> float:
        started = time.monotonic()
        while time.monotonic() - started < START_TIMEOUT_SECONDS:
            if process.poll() is not None:
                raise FedpropError(f"{what} exited with code {process.returncode}")
            if ready():
                return time.monotonic() - started
            time.sleep(0.1)
        raise FedpropError(f"{what} was not ready within {START_TIMEOUT_SECONDS:.0f} s")

    def start_coordinator(self) -> float:
        """Start the SuperLink; return the seconds until it accepted TLS connections."""
        s = self.setup
        command = _fedprop("coordinator", "start", "--certs", str(s.certs), "--state", str(s.state))
        process = self.spawn("coordinator", [*command, "--port", str(s.port)])

        def listening() -> bool:
            try:
                socket.create_connection((s.host, s.port), timeout=1).close()
            except OSError:
                return False
            return True

        return self._wait("the SuperLink", listening, process)

    def register(self, party: str) -> int:
        """Register ``party``'s node-authentication key with the SuperLink."""
        public = self.federation.key_dirs[party] / NODE_AUTH_PUBLIC
        self.node_ids[party] = register_node(self.setup.flwr_home, public, party)
        return self.node_ids[party]

    def node_command(self, party: str, **overrides: object) -> list[str]:
        """The ``fedprop node start`` command of ``party`` (see :meth:`node_config`)."""
        config = self.node_config(party, **overrides)
        return _fedprop(
            "node",
            "start",
            "--node-config",
            node_config_arg(config),
            "--superlink",
            self.setup.address,
            "--root-certificates",
            str(self.setup.certs / CA_CERT),
            "--flwr-home",
            str(self.root / "flwr" / party),
            "--runtime-port",
            str(free_port()),
            "--poll-interval",
            str(self.poll_interval),
        )

    def start_node(self, party: str, *, wait: bool = True, **overrides: object) -> float:
        """Start ``party``'s SuperNode; return the seconds until the SuperLink saw it
        online (0 without ``wait``)."""
        started = time.time()
        self.spawn(party, self.node_command(party, **overrides))
        return self.wait_online(party, since=started) if wait else 0.0

    def wait_online(self, party: str, *, since: float) -> float:
        """Wait until the SuperLink sees ``party``'s registered node come online at
        ``since`` (a ``time.time()``) or later; return the seconds waited."""
        node_id = self.node_ids[party]

        def online() -> bool:
            status, online_at = node_statuses(self.setup.flwr_home).get(node_id, ("", None))
            # The SuperLink's times have whole seconds.
            return status == "online" and online_at is not None and online_at >= int(since)

        return self._wait(f"node {party}", online, self.processes[party])

    def restart_coordinator(self) -> float:
        """Stop the SuperLink and start it again on the same state; wait until every
        running node is back (it reconnected, or it was started again and came online);
        return the seconds from the stop."""
        started = time.monotonic()
        offsets = {p: (self.logs / f"{p}.log").stat().st_size for p in self.parties}
        self.stop("coordinator")
        self.start_coordinator()
        for party in self.parties:

            def back(p: str = party) -> bool:
                with open(self.logs / f"{p}.log", "rb") as log:
                    log.seek(offsets[p])
                    said = log.read()
                return (
                    any(mark in said for mark in REJOINED)
                    and node_statuses(self.setup.flwr_home).get(self.node_ids[p], ("", None))[0]
                    == "online"
                )

            self._wait(f"node {party}", back, self.processes[party])
        return time.monotonic() - started

    def stop(self, name: str, *, kill: bool = False) -> None:
        """Stop one process (its whole process group): SIGTERM, or SIGKILL with ``kill``."""
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except ProcessLookupError:
            pass

    def start(self) -> LoopbackDeployment:
        """Prepare, start the SuperLink, register and start every node."""
        self.prepare()
        self.start_coordinator()
        for party in self.parties:
            self.register(party)
        started = time.time()
        for party in self.parties:
            self.start_node(party, wait=False)
        for party in self.parties:
            self.wait_online(party, since=started)
        return self

    def submit(
        self, job: Path, *, timeout: float, name: str = "job", step_timeout: float | None = None
    ) -> tuple[RunOutcome, Any]:
        """Run ``job`` on the deployment; its outcome and, if it completed, its result.
        ``step_timeout`` bounds the wait for every node's reply to one step."""
        results = self.root / "results" / name
        fed = self.federation
        run_config = {
            "job-spec": str(Path(job).resolve()),
            "manifest": str(fed.manifest_path.resolve()),
            "coordinator-key-dir": str(fed.coordinator_key_dir.resolve()),
            "audit-dir": str(fed.audit_dir.resolve()),
            "results-dir": str(results),
        }
        if step_timeout is not None:
            run_config["step-timeout"] = str(step_timeout)
        outcome = submit_job(self.setup.flwr_home, self.app_dir, run_config, timeout=timeout)
        result = None
        if outcome.completed:
            result = json.loads((results / RESULT_FILE).read_text(encoding="utf-8"))
        return outcome, result

    def close(self) -> None:
        """Stop every process, nodes first."""
        for name in [*self.parties, "coordinator"]:
            self.stop(name)

    def __enter__(self) -> LoopbackDeployment:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
