"""Certificates for a pilot federation: a private CA and the coordinator's server certificate.

For tests and pilots only. A production federation uses certificates from the bank's own
PKI (the coordinator's TLS certificate issued by the bank's CA, the CA certificate given
to every partner node out of band); nothing in fedprop depends on where they come from.

:func:`make_pilot_certs` writes, into a new folder:

- ``ca.crt`` / ``ca.key``: a self-signed CA (ECDSA P-256, ``CA:TRUE``, path length 0,
  may sign certificates only). ``ca.crt`` goes to every node (the SuperNode's
  ``--root-certificates``); ``ca.key`` should then be moved offline.
- ``server.crt`` / ``server.key``: the coordinator's certificate, signed by that CA, for
  the host names and IP addresses given (subject alternative names; gRPC checks them),
  for TLS server authentication only. Flower's SuperLink takes them with
  ``--ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile server.key``.

Private keys are PKCS#8 PEM files readable by their owner only (0600), like the node's
identity keys. The folder is written beside its final place and renamed into it, so a
failure leaves no half-made set; an existing folder is never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedprop.crypto.params import IDENTITY_DIR_MODE, IDENTITY_FILE_MODE
from fedprop.errors import FedpropError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "MAX_PILOT_DAYS",
    "SERVER_CERT",
    "SERVER_KEY",
    "PilotCerts",
    "make_pilot_certs",
]

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
SERVER_CERT: Final = "server.crt"
SERVER_KEY: Final = "server.key"
#: Longest validity a pilot certificate may have: pilots end, and a short life limits what a
#: leaked pilot key is worth.
MAX_PILOT_DAYS: Final = 397
#: Curve of every pilot key: P-256 (128-bit security), supported by gRPC and every TLS stack.
PILOT_CURVE: Final = ec.SECP256R1
#: Signature hash of every pilot certificate.
PILOT_HASH: Final = hashes.SHA256


@dataclass(frozen=True)
class PilotCerts:
    """Where the files of a pilot certificate set are."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate every node trusts."""
        return self.folder / CA_CERT

    @property
    def server_cert(self) -> Path:
        """The coordinator's certificate."""
        return self.folder / SERVER_CERT

    @property
    def server_key(self) -> Path:
        """The coordinator's private key."""
        return self.folder / SERVER_KEY


def _subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            raise FedpropError("an empty host name was given")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if any(c.isspace() or c in "/:@" for c in host):
                raise FedpropError(f"'{host}' is neither a host name nor an IP address") from None
            names.append(x509.DNSName(host))
    return names


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, IDENTITY_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_pilot_certs(
    folder: Path, hosts: list[str], *, days: int = 90, organization: str = "fedprop pilot"
) -> PilotCerts:
    """Create a CA and a server certificate for ``hosts`` in the new ``folder``.

    :class:`FedpropError` if ``folder`` exists, no host is given, a host is malformed, or
    ``days`` is not between 1 and :data:`MAX_PILOT_DAYS`.
    """
    folder = Path(folder)
    if folder.exists():
        raise FedpropError(f"{folder} exists; refusing to overwrite certificates")
    if not hosts:
        raise FedpropError("name at least one host or IP address the coordinator is reached at")
    if not 1 <= days <= MAX_PILOT_DAYS:
        raise FedpropError(f"days must be between 1 and {MAX_PILOT_DAYS}, got {days}")
    names = _subject_names(hosts)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(PILOT_CURVE())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, PILOT_HASH())
    )

    server_key = ec.generate_private_key(PILOT_CURVE())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                    x509.NameAttribute(NameOID.COMMON_NAME, hosts[0].strip()),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, PILOT_HASH())
    )

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.chmod(staging, IDENTITY_DIR_MODE)
        pem = serialization.Encoding.PEM
        (staging / CA_CERT).write_bytes(ca_cert.public_bytes(pem))
        (staging / SERVER_CERT).write_bytes(server_cert.public_bytes(pem))
        _write_key(staging / CA_KEY, ca_key)
        _write_key(staging / SERVER_KEY, server_key)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PilotCerts(folder)
