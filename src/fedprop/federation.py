"""A federation on one machine: every party's identity keys and the manifest listing them.

For the demo, tests and pilots. In production each institution runs
``fedprop node keygen`` on its own machine and sends only ``public.json`` to
whoever assembles the manifest; no private key ever leaves its node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedprop.apps.client_app import NodeConfig
from fedprop.crypto.identity import Manifest, generate_identity, load_identity, save_identity

__all__ = ["LocalFederation", "local_federation"]

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class LocalFederation:
    """Where the parties' keys and the manifest are."""

    manifest_path: Path
    key_dirs: Mapping[str, Path]

    def manifest(self) -> Manifest:
        """The federation manifest."""
        return Manifest.from_json(self.manifest_path.read_text(encoding="utf-8"))

    def node_configs(
        self,
        data_dirs: Mapping[str, Path],
        *,
        allow_plaintext: bool = False,
        allow_model_release: bool = False,
    ) -> dict[str, NodeConfig]:
        """Each party's node configuration."""
        return {
            party: NodeConfig(
                party=party,
                data_dir=Path(data_dirs[party]).resolve(),
                key_dir=key_dir.resolve(),
                manifest=self.manifest_path.resolve(),
                allow_plaintext=allow_plaintext,
                allow_model_release=allow_model_release,
            )
            for party, key_dir in self.key_dirs.items()
        }


def local_federation(root: Path, name: str, parties: Sequence[str]) -> LocalFederation:
    """Create (or reuse) keys for ``parties`` under ``root`` and the manifest listing them."""
    key_dirs = {party: root / "keys" / party for party in parties}
    public = []
    for party, folder in key_dirs.items():
        identity = load_identity(folder) if folder.exists() else None
        if identity is None:
            identity = generate_identity(party)
            save_identity(identity, folder)
        public.append(identity.public)
    manifest_path = root / MANIFEST_FILE
    manifest = Manifest(federation=name, nodes=tuple(public), coordinator=None)
    if not manifest_path.exists() or Manifest.from_json(manifest_path.read_text()) != manifest:
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(manifest.to_json(), encoding="utf-8")
        tmp.replace(manifest_path)
    return LocalFederation(manifest_path, key_dirs)
