"""Pilot certificates: a real TLS handshake on loopback trusts them, and only them."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedprop.certs import CA_KEY, SERVER_KEY, make_pilot_certs
from fedprop.cli import main
from fedprop.errors import FedpropError


def _handshake(server_cert: Path, server_key: Path, ca: Path, server_name: str) -> str:
    """Serve TLS on 127.0.0.1 with the given certificate; connect trusting ``ca``.

    Returns the TLS version the client negotiated; raises ``ssl.SSLError`` if the client
    refuses the server.
    """
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_cert, server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            version = tls.version() or ""
            tls.sendall(b"x")
            return version
    finally:
        thread.join(timeout=10)
        listener.close()


def test_a_client_trusting_the_pilot_ca_completes_a_tls_handshake(tmp_path: Path) -> None:
    certs = make_pilot_certs(tmp_path / "certs", ["127.0.0.1", "localhost"], days=30)
    for name in ("127.0.0.1", "localhost"):
        assert _handshake(certs.server_cert, certs.server_key, certs.ca_cert, name).startswith(
            "TLS"
        )
    for key in (CA_KEY, SERVER_KEY):
        assert stat.S_IMODE((certs.folder / key).stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_client_refuses_another_ca_and_another_host_name(tmp_path: Path) -> None:
    certs = make_pilot_certs(tmp_path / "certs", ["127.0.0.1"])
    other = make_pilot_certs(tmp_path / "other", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(certs.server_cert, certs.server_key, other.ca_cert, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(certs.server_cert, certs.server_key, certs.ca_cert, "coordinator.example")


def test_bad_requests_are_refused_and_nothing_is_overwritten(tmp_path: Path) -> None:
    with pytest.raises(FedpropError, match="at least one host"):
        make_pilot_certs(tmp_path / "a", [])
    with pytest.raises(FedpropError, match="neither a host name nor an IP"):
        make_pilot_certs(tmp_path / "a", ["https://coordinator"])
    with pytest.raises(FedpropError, match="days must be between"):
        make_pilot_certs(tmp_path / "a", ["localhost"], days=4000)
    assert not (tmp_path / "a").exists()
    certs = make_pilot_certs(tmp_path / "a", ["localhost"])
    before = certs.server_key.read_bytes()
    with pytest.raises(FedpropError, match="refusing to overwrite"):
        make_pilot_certs(tmp_path / "a", ["localhost"])
    assert certs.server_key.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no staging folder left


def test_fedprop_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--host", "127.0.0.1"]) == 0
    assert "--ssl-certfile" in capsys.readouterr().out
    assert main(["certs", "--out", str(out), "--host", "127.0.0.1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_superlink_serves_tls_with_the_pilot_certificates(tmp_path: Path) -> None:
    certs = make_pilot_certs(tmp_path / "certs", ["127.0.0.1"])
    other = make_pilot_certs(tmp_path / "other", ["127.0.0.1"])
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
    }
    command = [
        str(bin_dir / "flower-superlink"),
        "--ssl-ca-certfile", str(certs.ca_cert),
        "--ssl-certfile", str(certs.server_cert),
        "--ssl-keyfile", str(certs.server_key),
        "--host", "127.0.0.1", "--port", str(port),
        "--database", ":flwr-in-memory:",
    ]  # fmt: skip
    superlink = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert superlink.poll() is None, "the SuperLink exited"
                assert time.monotonic() < deadline, "the SuperLink did not start within 60 s"
                time.sleep(0.2)
        ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert (tls.version() or "").startswith("TLS")
        wrong = ssl.create_default_context(cafile=str(other.ca_cert))
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            wrong.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            pass
    finally:
        os.killpg(superlink.pid, signal.SIGTERM)
        try:
            superlink.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(superlink.pid, signal.SIGKILL)
            superlink.wait(timeout=10)
