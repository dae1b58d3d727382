"""Job spec parsing: the shipped spec loads, and every malformed spec is refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprop.errors import SpecError
from fedprop.spec import Aggregation, JobSpec, JobType, ModelKind, OptimizerKind

SPEC_PATH = Path(__file__).resolve().parents[1] / "configs" / "bank-marketing-hfl.toml"


@pytest.fixture(scope="module")
def spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


def test_shipped_spec_loads(spec_text: str) -> None:
    spec = JobSpec.from_toml(spec_text)
    assert spec.type is JobType.HFL_TRAIN
    assert spec.aggregation is Aggregation.PAILLIER
    assert spec.key_bits == 2048 and spec.key_holder == "bank-a"
    assert spec.parties == ("bank-a", "bank-b", "bank-c", "bank-d")
    assert spec.model.kind is ModelKind.LOGREG
    assert spec.train.optimizer is OptimizerKind.ADAM
    assert "duration" not in spec.schema.feature_names
    assert spec.schema.label == "y"
    assert spec.text == spec_text


def test_overrides_regenerate_the_text(spec_text: str) -> None:
    spec = JobSpec.from_toml(spec_text)
    changed = spec.with_overrides({"train": {"rounds": 3}, "model": {"kind": "mlp"}})
    assert changed.train.rounds == 3
    assert changed.model.kind is ModelKind.MLP
    # The regenerated text is itself a valid spec that parses to the same thing.
    assert JobSpec.from_toml(changed.text) == changed
    assert changed.schema == spec.schema


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("rounds = 20", "rounds = 0", "rounds: must be positive"),
        ("rounds = 20", 'rounds = "20"', "rounds: expected int"),
        ('optimizer = "adam"', 'optimizer = "lbfgs"', "'lbfgs' is not one of: sgd, adam"),
        ('kind = "logreg"', 'kind = "forest"', "'forest' is not one of"),
        ('type = "hfl-train"', 'type = "mining"', "'mining' is not one of"),
        ("seed = 42", "seed = 42\nepochs = 3", "unknown key(s) epochs"),
        ('parties = ["bank-a"', 'parties = ["bank-b"', "duplicate party name"),
        ("histogram-bins = 1000", "histogram-bins = 5", "histogram-bins: must be between"),
        ('id = "bank-marketing-hfl"', 'id = "bad id!"', "[job] id"),
    ],
)
def test_bad_specs_are_refused_with_the_key_named(
    spec_text: str, old: str, new: str, message: str
) -> None:
    assert old in spec_text
    with pytest.raises(SpecError) as info:
        JobSpec.from_toml(spec_text.replace(old, new, 1), "job.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("job.toml: ")


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid TOML"):
        JobSpec.from_toml("[job\nid=", "x.toml")
    with pytest.raises(SpecError, match="job spec not found"):
        JobSpec.load(tmp_path / "absent.toml")


def test_missing_job_table(spec_text: str) -> None:
    without_job = spec_text.replace("[job]", "[jobs]", 1)
    with pytest.raises(SpecError, match="unknown key"):
        JobSpec.from_toml(without_job)


def test_paillier_with_two_parties_is_refused_naming_the_reason(spec_text: str) -> None:
    two = spec_text.replace(
        'parties = ["bank-a", "bank-b", "bank-c", "bank-d"]', 'parties = ["bank-a", "bank-b"]'
    )
    with pytest.raises(SpecError, match=r"at least 3 parties.*differential-privacy"):
        JobSpec.from_toml(two)


def test_weak_key_sizes_are_refused(spec_text: str) -> None:
    with pytest.raises(SpecError, match="key-bits: 1024 is not allowed"):
        JobSpec.from_toml(spec_text.replace("key-bits = 2048", "key-bits = 1024"))
