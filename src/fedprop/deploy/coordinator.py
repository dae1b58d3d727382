"""The coordinator's processes: Flower's SuperLink, node registration, job submission.

:class:`CoordinatorSetup` says where everything is: the TLS certificates (``ca.crt``,
``server.crt``, ``server.key``, as ``fedprop certs`` writes them or as the bank's PKI
issues them) and a state folder that holds the SuperLink's database (``state.db``, so
a restarted SuperLink keeps its runs and registered nodes), its log file, and the
``flwr`` CLI's home with one connection named :data:`CONNECTION_NAME`.

The SuperLink always runs with TLS, ``--enable-supernode-auth`` (only registered
node keys may connect) and runtime dependency installation off (the ServerApp runs
with the packages installed here, never with what a job asks to download).
:func:`check_coordinator` finds what would stop it, before anything starts.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from fedprop._offline import OFFLINE_ENV
from fedprop.certs import CA_CERT, SERVER_CERT, SERVER_KEY
from fedprop.errors import FedpropError, JobFailedError
from fedprop.files import write_text_atomic
from fedprop.node_check import Check, failures

__all__ = [
    "CONNECTION_NAME",
    "DEFAULT_PORT",
    "CoordinatorSetup",
    "RunOutcome",
    "check_coordinator",
    "flower_env",
    "node_statuses",
    "register_node",
    "start_coordinator",
    "submit_job",
    "superlink_command",
    "write_connection",
]

#: Name of the ``flwr`` CLI connection to this coordinator's SuperLink.
CONNECTION_NAME: Final = "fedprop"
#: The SuperLink's port (Fleet, Control and Runtime APIs share it in Flower 1.41).
DEFAULT_PORT: Final = 9093
#: Seconds between two polls of the SuperLink's ServerApp scheduler (Flower's default
#: is 1 s, added to the start of every run).
SUPEREXEC_TASK_POLL_SECONDS: Final = 0.1
#: Seconds between two checks of a submitted run's status.
RUN_STATUS_POLL_SECONDS: Final = 1.0


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of a Flower process or CLI call started by fedprop.

    This interpreter's scripts first on ``PATH`` (the SuperLink and SuperNode start
    ``flower-superexec`` and the apps from it), Flower's home, and telemetry and update
    checks off.
    """
    scripts = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(SUPEREXEC_TASK_POLL_SECONDS),
        **OFFLINE_ENV,
    }


def port_in_use(host: str, port: int) -> bool:
    """Whether something on this machine already listens on ``host:port``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class CoordinatorSetup:
    """Where the coordinator's certificates and state are, and where it listens."""

    certs: Path
    state: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    @property
    def address(self) -> str:
        """``host:port`` as nodes and the ``flwr`` CLI dial it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        """The ``flwr`` CLI's home (its connection file, installed apps)."""
        return self.state / "flwr"

    @property
    def database(self) -> Path:
        """The SuperLink's state database."""
        return self.state / "state.db"

    @property
    def log_file(self) -> Path:
        """The SuperLink's own log."""
        return self.state / "superlink.log"


def _check_certificates(setup: CoordinatorSetup) -> Check:
    paths = [setup.certs / name for name in (CA_CERT, SERVER_CERT, SERVER_KEY)]
    try:
        ca, server = (x509.load_pem_x509_certificate(p.read_bytes()) for p in paths[:2])
        key = serialization.load_pem_private_key(paths[2].read_bytes(), password=None)
    except OSError as exc:
        return Check("certificates", False, f"{exc.filename}: {exc.strerror}")
    except (ValueError, TypeError) as exc:
        return Check("certificates", False, f"{setup.certs}: not a PEM certificate or key: {exc}")
    problems: list[str] = []
    if key.public_key() != server.public_key():
        problems.append(f"{SERVER_KEY} is not the key of {SERVER_CERT}")
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        problems.append(f"{SERVER_CERT} is not signed by {CA_CERT}")
    now = datetime.datetime.now(datetime.UTC)
    if not server.not_valid_before_utc <= now <= server.not_valid_after_utc:
        problems.append(f"{SERVER_CERT} is not valid now (until {server.not_valid_after_utc:%F})")
    try:
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    try:
        covered = ipaddress.ip_address(setup.host) in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        covered = setup.host in names.get_values_for_type(x509.DNSName)
    if not covered:
        problems.append(f"{SERVER_CERT} does not name {setup.host} (nodes would refuse it)")
    if problems:
        return Check("certificates", False, f"{setup.certs}: " + "; ".join(problems))
    return Check(
        "certificates", True, f"{setup.certs}: valid until {server.not_valid_after_utc:%F}"
    )


def check_coordinator(setup: CoordinatorSetup) -> list[Check]:
    """Everything that would stop the SuperLink, found before it starts."""
    checks = [_check_certificates(setup)]
    try:
        setup.state.mkdir(parents=True, exist_ok=True)
        writable = os.access(setup.state, os.W_OK)
    except OSError as exc:
        writable = False
        detail = f"{setup.state}: {exc.strerror}"
    else:
        detail = f"{setup.state}: {'writable' if writable else 'not writable'}"
    checks.append(Check("state folder", writable, detail))
    busy = port_in_use(setup.host, setup.port)
    where = f"{setup.address}: " + ("already in use" if busy else "free")
    checks.append(Check("port", not busy, where))
    return checks


def superlink_command(setup: CoordinatorSetup) -> list[str]:
    """The ``flower-superlink`` command line for ``setup``."""
    return [
        "flower-superlink",
        "--ssl-ca-certfile",
        str(setup.certs / CA_CERT),
        "--ssl-certfile",
        str(setup.certs / SERVER_CERT),
        "--ssl-keyfile",
        str(setup.certs / SERVER_KEY),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
        str(setup.database),
        "--log-file",
        str(setup.log_file),
        "--host",
        setup.host,
        "--port",
        str(setup.port),
    ]


def write_connection(setup: CoordinatorSetup) -> Path:
    """Write the ``flwr`` CLI's connection to this SuperLink; return the file."""
    setup.flwr_home.mkdir(parents=True, exist_ok=True)
    path = setup.flwr_home / "config.toml"
    text = (
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f"[superlink.{CONNECTION_NAME}]\n"
        f"address = {json.dumps(setup.address)}\n"
        f"root-certificates = {json.dumps(str((setup.certs / CA_CERT).resolve()))}\n"
    )
    write_text_atomic(path, text, mode=0o600)
    return path


def start_coordinator(setup: CoordinatorSetup) -> NoReturn:
    """Check ``setup``, write the CLI connection, and become the SuperLink process."""
    problem = failures(check_coordinator(setup))
    if problem is not None:
        raise FedpropError(f"the coordinator cannot start: {problem}")
    write_connection(setup)
    command = superlink_command(setup)
    env = flower_env(setup.flwr_home)
    os.execvpe(command[0], command, env)


def _flwr(flwr_home: Path, *args: str, timeout: float = 120.0) -> dict[str, object]:
    """Run a ``flwr`` CLI command with the connection in ``flwr_home``; its JSON answer."""
    done = subprocess.run(
        ["flwr", *args, "--format", "json"],
        env=flower_env(flwr_home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        answer = json.loads(done.stdout[done.stdout.find("{") :])
    except ValueError:
        answer = {}
    if done.returncode != 0 or not isinstance(answer, dict) or not answer.get("success"):
        said = answer.get("error-message") if isinstance(answer, dict) else None
        printed = (done.stderr or done.stdout).strip().splitlines()
        detail = " ".join(str(said).split()) if said else (printed[-1] if printed else "no output")
        raise FedpropError(f"flwr {' '.join(args[:2])}: {detail}")
    return answer


def register_node(flwr_home: Path, public_key: Path, name: str) -> int:
    """Register a node's Flower authentication key with the SuperLink whose connection
    ``flwr_home`` holds (:func:`write_connection`); return its node id."""
    answer = _flwr(
        flwr_home, "supernode", "register", str(public_key), CONNECTION_NAME, "--name", name
    )
    return int(str(answer["node-id"]))


def node_statuses(flwr_home: Path) -> dict[int, tuple[str, float | None]]:
    """Each registered node's status at the SuperLink (``registered``, ``online``, ...)
    and when it last came online (seconds since the epoch; ``None`` if never)."""
    nodes = _flwr(flwr_home, "supernode", "ls", CONNECTION_NAME)["nodes"]
    if not isinstance(nodes, list):
        raise FedpropError("flwr supernode ls: unexpected answer")

    def since(text: object) -> float | None:
        try:
            when = datetime.datetime.strptime(str(text), "%Y-%m-%d %H:%M:%SZ")
        except ValueError:
            return None
        return when.replace(tzinfo=datetime.UTC).timestamp()

    return {
        int(node["node-id"]): (str(node["status"]), since(node.get("online-at"))) for node in nodes
    }


@dataclass(frozen=True)
class RunOutcome:
    """How a submitted run ended, as the SuperLink reports it."""

    run_id: int
    status: str
    details: str
    seconds: float

    @property
    def completed(self) -> bool:
        """Whether the ServerApp finished without an error."""
        return self.status == "finished:completed"


def submit_job(
    flwr_home: Path,
    app_dir: Path,
    run_config: Mapping[str, str],
    *,
    timeout: float,
) -> RunOutcome:
    """Submit the fedprop app in ``app_dir`` as a run; wait (up to ``timeout`` s) until
    it ends. :class:`JobFailedError` if it does not end in time (the run is stopped)."""
    overrides = " ".join(f"{key}={json.dumps(value)}" for key, value in run_config.items())
    started = time.monotonic()
    answer = _flwr(flwr_home, "run", str(app_dir), CONNECTION_NAME, "--run-config", overrides)
    run_id = int(str(answer["run-id"]))
    deadline = started + timeout
    while time.monotonic() < deadline:
        runs = _flwr(flwr_home, "ls", CONNECTION_NAME, "--run-id", str(run_id))["runs"]
        run = runs[0] if isinstance(runs, list) and runs else {}
        status = str(run.get("status", ""))
        if status.startswith("finished"):
            details = str(run.get("status-details", ""))
            return RunOutcome(run_id, status, details, time.monotonic() - started)
        time.sleep(RUN_STATUS_POLL_SECONDS)
    _flwr(flwr_home, "stop", str(run_id), CONNECTION_NAME)
    raise JobFailedError(f"run {run_id} did not finish within {timeout:.0f} s; stopped it")
