"""`fedprop node check`: every problem of a node's set-up named, nothing started."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedprop.apps.audit import open_party_log
from fedprop.apps.client_app import NodeConfig
from fedprop.audit import EventKind
from fedprop.certs import make_pilot_certs
from fedprop.cli import main
from fedprop.crypto.identity import Manifest, load_identity
from fedprop.node_check import check_node
from fedprop.spec import JobSpec


def config_string(cfg: NodeConfig, **changes: Path | str) -> str:
    values = {
        "party": cfg.party,
        "data-dir": cfg.data_dir,
        "key-dir": cfg.key_dir,
        "manifest": cfg.manifest,
        "audit-dir": cfg.audit_dir,
        **changes,
    }
    return " ".join(f'{k}="{v}"' for k, v in values.items())


def parsed(text: str) -> dict[str, object]:
    return parse_config_args([text])


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS listener on loopback with a pilot certificate; yields (address, CA file)."""
    certs = make_pilot_certs(tmp_path / "certs", ["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}", certs.ca_cert
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_a_good_node_passes_every_check(
    spec: JobSpec,
    node_configs: dict[str, NodeConfig],
    tmp_path: Path,
    tls_server: tuple[str, Path],
) -> None:
    address, ca = tls_server
    cfg = node_configs["bank-a"]
    text = config_string(cfg, **{"audit-dir": tmp_path / "audit"})
    checks = check_node(parsed(text), spec, superlink=address, root_certificates=ca)
    assert [c.name for c in checks] == [
        "node config", "identity keys", "manifest", "privacy log", "data", "coordinator",
    ]  # fmt: skip
    assert all(c.ok for c in checks), checks
    assert not (tmp_path / "audit").exists()  # nothing written


def test_each_problem_is_named(
    spec: JobSpec,
    node_configs: dict[str, NodeConfig],
    tmp_path: Path,
    tls_server: tuple[str, Path],
) -> None:
    address, _ = tls_server
    cfg = node_configs["bank-b"]
    data = tmp_path / "bank-b"
    shutil.copytree(cfg.data_dir, data)
    (data / "test.csv").write_text("")
    other_ca = make_pilot_certs(tmp_path / "other", ["127.0.0.1"]).ca_cert
    text = config_string(
        cfg, **{"data-dir": data, "key-dir": node_configs["bank-c"].key_dir, "audit-dir": tmp_path}
    )
    found = check_node(parsed(text), spec, superlink=address, root_certificates=other_ca)
    checks = {c.name: c for c in found}
    assert not checks["identity keys"].ok and "keys of 'bank-c'" in checks["identity keys"].detail
    assert not checks["data"].ok and "test.csv" in checks["data"].detail
    assert not checks["coordinator"].ok and "not trusted" in checks["coordinator"].detail
    assert checks["manifest"].ok and checks["privacy log"].ok

    missing = config_string(cfg, manifest=tmp_path / "absent.json")
    (manifest_check,) = [c for c in check_node(parsed(missing), spec) if c.name == "manifest"]
    assert not manifest_check.ok and "absent.json: cannot read" in manifest_check.detail

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    closed_checks = check_node(parsed(text), spec, superlink=closed)
    (reach,) = [c for c in closed_checks if c.name == "coordinator"]
    assert not reach.ok and "cannot connect" in reach.detail

    (config_check,) = check_node(parsed('party="bank-b"'), spec)
    assert not config_check.ok and "lacks 'data-dir'" in config_check.detail


def test_a_tampered_privacy_log_fails_the_check(
    spec: JobSpec, node_configs: dict[str, NodeConfig], tmp_path: Path
) -> None:
    cfg = node_configs["bank-d"]
    manifest = Manifest.from_json(cfg.manifest.read_text())
    with open_party_log(tmp_path, load_identity(cfg.key_dir), manifest.federation) as log:
        log.append(EventKind.ERROR, detail={"rule": "step-failed"})
        path = log.path
    text = config_string(cfg, **{"audit-dir": tmp_path})
    (ok,) = [c for c in check_node(parsed(text), spec) if c.name == "privacy log"]
    assert ok.ok and "1 entries, 0 errors" in ok.detail
    path.write_bytes(path.read_bytes().replace(b"step-failed", b"step-passed"))
    (bad,) = [c for c in check_node(parsed(text), spec) if c.name == "privacy log"]
    assert not bad.ok and "1 errors" in bad.detail


def test_fedprop_node_check_command(
    node_configs: dict[str, NodeConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = node_configs["bank-a"]
    good = config_string(cfg, **{"audit-dir": tmp_path / "audit"})
    assert main(["node", "check", "--node-config", good]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "ok   node config: party 'bank-a'"
    bad = config_string(cfg, **{"key-dir": tmp_path / "nothing"})
    assert main(["node", "check", "--node-config", bad]) == 1
    assert "FAIL identity keys" in capsys.readouterr().out
