"""The checks ``fedprop coordinator start`` and ``fedprop node start`` run before starting
anything, and the pieces they hand to Flower (no process is started here)."""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedprop.certs import SERVER_KEY, make_pilot_certs
from fedprop.cli import main
from fedprop.deploy import (
    NODE_AUTH_KEY,
    NODE_AUTH_PUBLIC,
    CoordinatorSetup,
    NodeLaunch,
    check_coordinator,
    check_launch,
    make_node_auth_key,
    superlink_command,
)
from fedprop.deploy.node import node_config_arg
from fedprop.deploy.supernode import PollClock, shorten_idle_polls
from fedprop.federation import LocalFederation


@pytest.fixture()
def certs(tmp_path: Path) -> Path:
    return make_pilot_certs(tmp_path / "certs", ["127.0.0.1", "coordinator.test"]).folder


def _failed(checks: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {c.name: c.detail for c in checks if not c.ok}


def test_a_sound_coordinator_setup_passes_and_runs_with_tls_and_node_auth(
    certs: Path, tmp_path: Path
) -> None:
    setup = CoordinatorSetup(certs=certs, state=tmp_path / "state", port=_free_port())
    assert _failed(check_coordinator(setup)) == {}
    command = superlink_command(setup)
    assert "--enable-supernode-auth" in command
    assert "--disable-runtime-dependency-installation" in command
    assert "--insecure" not in command
    assert command[command.index("--database") + 1] == str(setup.state / "state.db")


def test_coordinator_checks_name_each_problem(certs: Path, tmp_path: Path) -> None:
    other = make_pilot_certs(tmp_path / "other", ["127.0.0.1"]).folder
    (certs / SERVER_KEY).write_bytes((other / SERVER_KEY).read_bytes())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        setup = CoordinatorSetup(certs=certs, state=tmp_path / "state", port=port)
        failed = _failed(check_coordinator(setup))
    assert "server.key is not the key of server.crt" in failed["certificates"]
    assert "already in use" in failed["port"]
    # A certificate that does not name the address nodes dial.
    setup = CoordinatorSetup(certs=other, state=tmp_path / "s2", host="10.9.8.7", port=port)
    assert "does not name 10.9.8.7" in _failed(check_coordinator(setup))["certificates"]
    # Missing files.
    setup = CoordinatorSetup(certs=tmp_path / "none", state=tmp_path / "s3", port=_free_port())
    assert "No such file" in _failed(check_coordinator(setup))["certificates"]


def test_coordinator_start_refuses_a_bad_setup_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["coordinator", "start", "--certs", str(tmp_path / "x"), "--state", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "the coordinator cannot start" in err and "certificates" in err


def test_node_auth_keys_are_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    public = make_node_auth_key(tmp_path)
    assert public == tmp_path / NODE_AUTH_PUBLIC
    assert stat.S_IMODE((tmp_path / NODE_AUTH_KEY).stat().st_mode) == 0o600
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    before = (tmp_path / NODE_AUTH_KEY).read_bytes()
    with pytest.raises(Exception, match="refusing to overwrite"):
        make_node_auth_key(tmp_path)
    assert (tmp_path / NODE_AUTH_KEY).read_bytes() == before


def test_node_launch_checks_keys_port_and_coordinator(
    federation: LocalFederation, party_dirs: dict[str, Path], certs: Path, tmp_path: Path
) -> None:
    config = federation.node_configs(party_dirs)["bank-a"]
    node_config = {
        "party": "bank-a",
        "data-dir": str(config.data_dir),
        "key-dir": str(config.key_dir),
        "manifest": str(config.manifest),
        "audit-dir": str(tmp_path / "audit"),
    }
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        launch = NodeLaunch(
            node_config=node_config,
            superlink=f"127.0.0.1:{_free_port()}",
            root_certificates=certs / "ca.crt",
            flwr_home=tmp_path / "flwr",
            runtime_port=busy.getsockname()[1],
        )
        failed = _failed(check_launch(launch))
    # The session's key folder has no node-auth key; nothing listens at the SuperLink.
    assert "run `fedprop node keygen`" in failed["node auth key"]
    assert "already in use" in failed["runtime port"]
    assert "cannot connect" in failed["coordinator"]
    assert {"identity keys", "manifest"}.isdisjoint(failed)


def test_the_node_config_string_reaches_flower_unchanged() -> None:
    config = {"party": "bank-a", "data-dir": '/srv/a "b"\\c', "allow-plaintext": True, "k": 3}
    assert parse_config_args([node_config_arg(config)]) == config
    quoted = {"data-dir": "/srv/o'brien \\x"}
    assert parse_config_args([node_config_arg(quoted)]) == quoted


def test_the_poll_clock_caps_sleeps_and_passes_everything_else() -> None:
    clock = PollClock(0.05)
    started = time.monotonic()
    clock.sleep(3)
    assert time.monotonic() - started < 1.0
    assert clock.monotonic is time.monotonic
    with pytest.raises(ValueError, match="at least"):
        shorten_idle_polls(0.0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
