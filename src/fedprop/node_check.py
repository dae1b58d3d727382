"""``fedprop node check``: what is wrong with a node's set-up, found without starting it.

Each check reads what the node would read when it starts, in the order a node needs
them, and says what it found: the node config (the same string the SuperNode gets
with ``--node-config``), the identity keys, the pinned manifest, the privacy log,
the party's data against a job spec, and, if given, the coordinator's address with
its TLS certificate. Nothing is written or started.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedprop.apps.audit import log_origin, log_path
from fedprop.apps.client_app import NodeConfig
from fedprop.audit import verify_log
from fedprop.crypto.identity import Manifest, NodeIdentity, load_identity
from fedprop.data.loader import load_party
from fedprop.errors import FedpropError
from fedprop.privacy.policy import load_policy
from fedprop.spec import JobSpec

__all__ = ["CONNECT_TIMEOUT_SECONDS", "Check", "check_node", "failures"]

#: How long to wait for the coordinator to accept a connection.
CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Check:
    """One check: what was checked, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


def _identity(config: NodeConfig) -> tuple[Check, NodeIdentity | None]:
    try:
        identity = load_identity(config.key_dir)
    except FedpropError as exc:
        return Check("identity keys", False, str(exc)), None
    if identity.name != config.party:
        detail = f"{config.key_dir} holds the keys of '{identity.name}', not '{config.party}'"
        return Check("identity keys", False, detail), None
    detail = f"{config.key_dir}, fingerprint {identity.public.fingerprint()}"
    return Check("identity keys", True, detail), identity


def _manifest(config: NodeConfig, identity: NodeIdentity | None) -> tuple[Check, Manifest | None]:
    try:
        manifest = Manifest.from_json(config.manifest.read_text(encoding="utf-8"))
        listed = manifest.node(config.party)
    except OSError as exc:
        return Check("manifest", False, f"{config.manifest}: cannot read: {exc.strerror}"), None
    except FedpropError as exc:
        return Check("manifest", False, f"{config.manifest}: {exc}"), None
    if identity is not None and listed != identity.public:
        detail = f"the manifest lists other keys for '{config.party}' than those in the key folder"
        return Check("manifest", False, detail), manifest
    detail = f"federation '{manifest.federation}', fingerprint {manifest.fingerprint()}"
    return Check("manifest", True, detail), manifest


def _audit_log(config: NodeConfig, identity: NodeIdentity | None, manifest: Manifest) -> Check:
    path = log_path(config.audit_dir, config.party)
    if not path.exists():
        folder = next(p for p in (config.audit_dir, *config.audit_dir.parents) if p.exists())
        if not folder.is_dir() or not _writable(folder):
            return Check("privacy log", False, f"{folder} is not a folder this user can write")
        return Check("privacy log", True, f"{path} will be created at the first message")
    if identity is None:
        return Check("privacy log", False, f"{path} cannot be checked without the node's keys")
    origin = log_origin(manifest.federation, config.party)
    report = verify_log(path, config.party, identity.signing.public_key(), origin)
    detail = f"{path}: {report.entries} entries, {len(report.errors)} errors"
    if report.errors:
        detail += f" (first: {report.errors[0]})"
    return Check("privacy log", report.ok, detail)


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _data(config: NodeConfig, spec: JobSpec) -> Check:
    try:
        data = load_party(config.data_dir, spec.schema)
    except FedpropError as exc:
        return Check("data", False, str(exc))
    detail = f"{len(data.train)} train and {len(data.test)} test rows match job '{spec.id}'"
    return Check("data", True, detail)


def _policy(path: Path) -> Check:
    try:
        policy = load_policy(path)
    except FedpropError as exc:
        return Check("policy", False, str(exc))
    return Check("policy", True, f"{path}: " + policy.summary().splitlines()[0])


def _coordinator(address: str, root_certificates: Path | None) -> Check:
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit():
        return Check("coordinator", False, f"'{address}' is not host:port")
    try:
        with socket.create_connection((host, int(port_text)), CONNECT_TIMEOUT_SECONDS) as raw:
            if root_certificates is None:
                return Check("coordinator", True, f"{address} accepts connections (no TLS check)")
            context = ssl.create_default_context(cafile=str(root_certificates))
            with context.wrap_socket(raw, server_hostname=host) as tls:
                return Check(
                    "coordinator", True, f"{address}: {tls.version()}, certificate trusted"
                )
    except ssl.SSLCertVerificationError as exc:
        detail = f"{address}: the coordinator's certificate is not trusted: {exc.verify_message}"
        return Check("coordinator", False, detail)
    except (OSError, ssl.SSLError) as exc:
        return Check("coordinator", False, f"{address}: cannot connect: {exc}")


def failures(checks: Sequence[Check]) -> str | None:
    """The failed checks in one line, or None if all passed."""
    bad = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    return "; ".join(bad) if bad else None


def check_node(
    node_config: Mapping[str, object],
    spec: JobSpec | None,
    *,
    superlink: str | None = None,
    root_certificates: Path | None = None,
) -> list[Check]:
    """Every check of a node's set-up, in order; later checks that depend on a failed one
    are skipped."""
    try:
        config = NodeConfig.from_mapping(node_config)
    except FedpropError as exc:
        return [Check("node config", False, str(exc))]
    checks = [Check("node config", True, f"party '{config.party}'")]
    identity_check, identity = _identity(config)
    manifest_check, manifest = _manifest(config, identity)
    checks += [identity_check, manifest_check]
    if manifest is not None:
        checks.append(_audit_log(config, identity, manifest))
    if config.policy is not None:
        checks.append(_policy(config.policy))
    if spec is not None:
        checks.append(_data(config, spec))
    if superlink is not None:
        checks.append(_coordinator(superlink, root_certificates))
    return checks
