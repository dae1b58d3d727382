"""Shared test fixtures, all generated in code."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprop.apps.client_app import NodeConfig
from fedprop.data.split import split_bank_marketing
from fedprop.federation import LocalFederation, local_federation
from fedprop.spec import JobSpec
from synthetic import write_bank_full

# --- shared fixtures: a synthetic four-bank federation --------------------------------------

SPEC_FILE = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"


@pytest.fixture(scope="session")
def spec() -> JobSpec:
    """The shipped bank-marketing job spec."""
    return JobSpec.load(SPEC_FILE)


@pytest.fixture(scope="session")
def party_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four bank folders split from a synthetic bank-full file by the real split code."""
    root = tmp_path_factory.mktemp("federation")
    source = write_bank_full(root / "bank-full.csv", rows=16_000, seed=7)
    summaries = split_bank_marketing(source, root / "parties")
    return {s.party: s.folder for s in summaries}


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory, spec: JobSpec) -> LocalFederation:
    """Identity keys for the four banks and the manifest that lists them."""
    return local_federation(tmp_path_factory.mktemp("federation-keys"), "test", spec.parties)


@pytest.fixture(scope="session")
def node_configs(federation: LocalFederation, party_dirs: dict[str, Path]) -> dict[str, NodeConfig]:
    """Each bank's node configuration (plaintext and model release allowed, for tests)."""
    return federation.node_configs(party_dirs, allow_plaintext=True, allow_model_release=True)
