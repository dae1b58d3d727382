"""A federation on one machine: every party's identity keys and the manifest listing them.

For the demo, tests and pilots: under one root folder, ``keys/<party>`` for each
node and ``keys/coordinator``, ``manifest.json``, and ``audit/`` for every party's
privacy log. In production each institution runs ``fedprop node keygen`` on its
own machine and sends only ``public.json`` to whoever assembles the manifest
(``fedprop federation manifest``); no private key ever leaves its owner, and each
party keeps its log on its own disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedprop.apps.client_app import NodeConfig
from fedprop.apps.server_app import CoordinatorConfig
from fedprop.crypto.identity import (
    Manifest,
    NodePublicKeys,
    generate_identity,
    load_identity,
    save_identity,
)

__all__ = ["LocalFederation", "local_federation"]

MANIFEST_FILE = "manifest.json"
#: Name of the coordinator's identity in a local federation.
COORDINATOR_NAME = "coordinator"


@dataclass(frozen=True)
class LocalFederation:
    """Where the parties' keys and the manifest are."""

    manifest_path: Path
    key_dirs: Mapping[str, Path]
    coordinator_key_dir: Path
    audit_dir: Path

    def manifest(self) -> Manifest:
        """The federation manifest."""
        return Manifest.from_json(self.manifest_path.read_text(encoding="utf-8"))

    def node_configs(
        self,
        data_dirs: Mapping[str, Path],
        *,
        allow_plaintext: bool = False,
        allow_model_release: bool = False,
        policies: Mapping[str, Path] | None = None,
        jobs_dir: Path | None = None,
    ) -> dict[str, NodeConfig]:
        """Each party's node configuration (``policies``: each party's policy file;
        ``jobs_dir``: for vertical jobs, ``state/``, ``models/`` and ``out/`` folders with
        one folder per party)."""

        def under(kind: str, party: str) -> Path | None:
            return None if jobs_dir is None else (Path(jobs_dir) / kind / party).resolve()

        return {
            party: NodeConfig(
                party=party,
                data_dir=Path(data_dirs[party]).resolve(),
                key_dir=key_dir.resolve(),
                manifest=self.manifest_path.resolve(),
                audit_dir=self.audit_dir.resolve(),
                allow_plaintext=allow_plaintext,
                allow_model_release=allow_model_release,
                policy=None if policies is None else Path(policies[party]).resolve(),
                state_dir=under("state", party),
                model_dir=under("models", party),
                output_dir=under("out", party),
            )
            for party, key_dir in self.key_dirs.items()
        }

    def coordinator(self) -> CoordinatorConfig:
        """Where the coordinator's keys and log are."""
        return CoordinatorConfig(self.coordinator_key_dir.resolve(), self.audit_dir.resolve())


def local_federation(root: Path, name: str, parties: Sequence[str]) -> LocalFederation:
    """Create (or reuse) keys for ``parties`` under ``root`` and the manifest listing them."""
    key_dirs = {party: root / "keys" / party for party in parties}
    coordinator_dir = root / "keys" / COORDINATOR_NAME

    def identity_in(folder: Path, name: str) -> NodePublicKeys:
        if not folder.exists():
            save_identity(generate_identity(name), folder)
        return load_identity(folder).public

    public = tuple(identity_in(folder, party) for party, folder in key_dirs.items())
    coordinator = identity_in(coordinator_dir, COORDINATOR_NAME)
    manifest_path = root / MANIFEST_FILE
    manifest = Manifest(federation=name, nodes=public, coordinator=coordinator)
    if not manifest_path.exists() or Manifest.from_json(manifest_path.read_text()) != manifest:
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(manifest.to_json(), encoding="utf-8")
        tmp.replace(manifest_path)
    return LocalFederation(manifest_path, key_dirs, coordinator_dir, root / "audit")
