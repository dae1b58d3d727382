"""A partner institution's process: Flower's SuperNode running fedprop's ClientApp.

A node holds two kinds of keys, both made by ``fedprop node keygen`` in its key folder:
fedprop's identity keys (they sign and open what fedprop's protocols exchange) and
Flower's node-authentication key pair (:data:`NODE_AUTH_KEY`, :data:`NODE_AUTH_PUBLIC`;
the SuperLink admits only nodes whose public key the coordinator registered). The
SuperNode dials the coordinator over TLS, trusting only ``--root-certificates``.

:func:`check_launch` runs every check of ``fedprop node check`` plus the
authentication key and the local port, and :func:`start_node` starts nothing unless
all pass.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedprop.apps.client_app import NodeConfig
from fedprop.crypto.params import IDENTITY_FILE_MODE, NODE_AUTH_CURVE
from fedprop.deploy.coordinator import flower_env, port_in_use
from fedprop.errors import FedpropError
from fedprop.node_check import Check, check_node, failures
from fedprop.spec import JobSpec

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_RUNTIME_PORT",
    "NODE_AUTH_KEY",
    "NODE_AUTH_PUBLIC",
    "NodeLaunch",
    "check_launch",
    "make_node_auth_key",
    "node_config_arg",
    "start_node",
    "supernode_command",
]

#: Flower's node-authentication private key in a node's key folder (OpenSSH format).
NODE_AUTH_KEY: Final = "node-auth.key"
#: Its public half, which the coordinator registers (``fedprop coordinator register``).
NODE_AUTH_PUBLIC: Final = "node-auth.pub"
#: Seconds a stopping SuperNode gets to leave the SuperLink cleanly before it is told again.
STOP_GRACE_SECONDS: Final = 10.0
#: First and longest pause before starting a SuperNode that exited with an error again.
RESTART_MIN_DELAY_SECONDS: Final = 1.0
RESTART_MAX_DELAY_SECONDS: Final = 30.0
#: Seconds a SuperNode waits between two pulls when it has nothing to do, and between two
#: checks for its ClientApp's reply (Flower's own: 3 s and 0.5 s); see
#: :mod:`fedprop.deploy.supernode`.
DEFAULT_POLL_INTERVAL: Final = 0.25
#: Local port of the SuperNode's Runtime API (its ClientApp processes talk to it).
DEFAULT_RUNTIME_PORT: Final = 9094


def make_node_auth_key(folder: Path) -> Path:
    """Write a new node-authentication key pair into ``folder``; return the public file.

    The private key is owner-only; existing files are never overwritten.
    """
    key = ec.generate_private_key(NODE_AUTH_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    for name, data, mode in (
        (NODE_AUTH_KEY, private, IDENTITY_FILE_MODE),
        (NODE_AUTH_PUBLIC, public + b"\n", 0o644),
    ):
        path = folder / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise FedpropError(f"{path} exists; refusing to overwrite it") from None
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    return folder / NODE_AUTH_PUBLIC


@dataclass(frozen=True)
class NodeLaunch:
    """Everything a SuperNode is started with."""

    node_config: Mapping[str, object]
    superlink: str
    root_certificates: Path
    flwr_home: Path
    runtime_port: int = DEFAULT_RUNTIME_PORT
    poll_interval: float = DEFAULT_POLL_INTERVAL

    @property
    def auth_key(self) -> Path:
        """Flower's node-authentication key, in the node's key folder."""
        return Path(str(self.node_config.get("key-dir", ""))) / NODE_AUTH_KEY


def _check_auth_key(path: Path) -> Check:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        return Check("node auth key", False, f"{path}: {exc.strerror} (run `fedprop node keygen`)")
    except (ValueError, TypeError) as exc:
        return Check("node auth key", False, f"{path}: not an OpenSSH private key: {exc}")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return Check("node auth key", False, f"{path}: not an elliptic-curve key")
    if path.stat().st_mode & 0o077:
        return Check("node auth key", False, f"{path}: readable by others; run chmod 600")
    return Check("node auth key", True, f"{path}: {key.curve.name}")


def check_launch(launch: NodeLaunch, spec: JobSpec | None = None) -> list[Check]:
    """Every check of ``fedprop node check``, the node's auth key, and its local port."""
    checks = check_node(
        launch.node_config,
        spec,
        superlink=launch.superlink,
        root_certificates=launch.root_certificates,
    )
    checks.append(_check_auth_key(launch.auth_key))
    busy = port_in_use("127.0.0.1", launch.runtime_port)
    detail = f"127.0.0.1:{launch.runtime_port} " + ("already in use" if busy else "free")
    checks.append(Check("runtime port", not busy, detail))
    return checks


def node_config_arg(config: Mapping[str, object]) -> str:
    """``config`` as the SuperNode's ``--node-config`` string (TOML values).

    Strings become TOML literal strings (``'...'``, no escapes), or basic strings if
    they hold a single quote; Flower's parser accepts no value holding both quotes.
    """

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        text = str(v)
        if "'" not in text:
            return f"'{text}'"
        if '"' not in text:
            return '"' + text.replace("\\", "\\\\") + '"'
        raise FedpropError(f"node config value {text!r} holds both quote characters")

    return " ".join(f"{key}={value(v)}" for key, v in config.items())


def supernode_command(launch: NodeLaunch) -> list[str]:
    """The SuperNode's command line (Flower's SuperNode with fedprop's poll interval)."""
    return [
        sys.executable,
        "-m",
        "fedprop.deploy.supernode",
        "--poll-interval",
        str(launch.poll_interval),
        "--superlink",
        launch.superlink,
        "--root-certificates",
        str(launch.root_certificates),
        "--auth-supernode-private-key",
        str(launch.auth_key),
        "--port",
        str(launch.runtime_port),
        "--node-config",
        node_config_arg(launch.node_config),
    ]


def start_node(launch: NodeLaunch, spec: JobSpec | None = None) -> int:
    """Check ``launch``, then run the SuperNode until it is stopped; return its exit code.

    Nothing starts if a check fails. After that the node keeps running as a bank's
    service should: when the SuperNode exits with an error (Flower's SuperNode gives up
    after a few tries when the SuperLink is away, and a node must outlive a
    coordinator's restart), it is started again after a pause that doubles up to
    :data:`RESTART_MAX_DELAY_SECONDS`. SIGTERM or SIGINT stop it: the SuperNode, in the
    same process group, receives them too; if it is still running
    :data:`STOP_GRACE_SECONDS` later, it is sent SIGTERM itself.
    """
    NodeConfig.from_mapping(launch.node_config)
    problem = failures(check_launch(launch, spec))
    if problem is not None:
        raise FedpropError(f"the node cannot start: {problem}")
    command = supernode_command(launch)
    launch.flwr_home.mkdir(parents=True, exist_ok=True)
    env = flower_env(launch.flwr_home)
    stop_requested: list[float] = []

    def stop(signum: int, frame: object) -> None:
        stop_requested.append(time.monotonic())

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    delay = RESTART_MIN_DELAY_SECONDS
    while True:
        child = subprocess.Popen(command, env=env)
        while (code := child.poll()) is None:
            if stop_requested and time.monotonic() - stop_requested[0] > STOP_GRACE_SECONDS:
                child.terminate()
            time.sleep(0.2)
        if stop_requested or code == 0:
            return code
        print(
            f"the SuperNode exited with code {code} (coordinator at {launch.superlink} "
            f"unreachable?); starting it again in {delay:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not stop_requested:
            time.sleep(0.2)
        if stop_requested:
            return code
        delay = min(2 * delay, RESTART_MAX_DELAY_SECONDS)
