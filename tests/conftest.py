"""Shared test fixtures, all generated in code."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprop.data.split import split_bank_marketing
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
