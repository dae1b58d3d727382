"""Job specs: what the data team asks the federation to do, in TOML.

A job spec names the job type, the parties, the dataset schema every party's
files must match, the model, and the training and evaluation settings. The
coordinator sends the spec's exact text with every request, and each node
parses and checks it itself: the node never trusts the coordinator's reading.

Keys are kebab-case, as in Flower's run config. Unknown keys are errors, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedprop.crypto.params import ALLOWED_PAILLIER_BITS, DEFAULT_PAILLIER_BITS
from fedprop.data.schema import Schema
from fedprop.errors import SpecError
from fedprop.tables import check_keys as _check_keys
from fedprop.tables import get as _get
from fedprop.tables import table as _table

__all__ = [
    "DP_OPTIMIZERS",
    "MIN_PARTIES_FOR_SECURE_SUM",
    "Aggregation",
    "ClassWeighting",
    "DpTrainConfig",
    "EvalConfig",
    "JobSpec",
    "JobType",
    "ModelConfig",
    "ModelKind",
    "OptimizerKind",
    "TrainConfig",
]


class JobType(StrEnum):
    """The kinds of job a federation runs."""

    HFL_TRAIN = "hfl-train"


class Aggregation(StrEnum):
    """How parties' vectors are summed at the coordinator."""

    #: Packed Paillier ciphertexts under a job key the coordinator does not hold.
    PAILLIER = "paillier"
    #: In the clear: a baseline, only where every node's policy allows it.
    PLAINTEXT = "plaintext"


#: With fewer parties, an exact sum tells each party the others' values.
MIN_PARTIES_FOR_SECURE_SUM = 3


class ModelKind(StrEnum):
    """Model families available for propensity models."""

    LOGREG = "logreg"
    MLP = "mlp"


class OptimizerKind(StrEnum):
    """Local optimizers."""

    SGD = "sgd"
    ADAM = "adam"


#: Local optimizers DP training runs with (Opacus' DPOptimizer wraps either: both only read
#: the clipped, noised gradient).
DP_OPTIMIZERS = frozenset({OptimizerKind.SGD, OptimizerKind.ADAM})


class ClassWeighting(StrEnum):
    """How the loss weighs the rare positive class."""

    NONE = "none"
    BALANCED = "balanced"


@dataclass(frozen=True)
class ModelConfig:
    """Model architecture."""

    kind: ModelKind = ModelKind.LOGREG
    hidden: tuple[int, ...] = (32, 16)


@dataclass(frozen=True)
class DpTrainConfig:
    """Record-level differentially private training (DP-SGD) at every node: the ``[dp]`` table.

    Each step of local training takes a Poisson sample of the node's training rows (each
    row in with probability ``batch-size / rows``), clips each row's gradient to L2 norm
    ``max-grad-norm`` and adds Gaussian noise of standard deviation
    ``noise-multiplier * max-grad-norm`` to their sum (:mod:`fedprop.privacy.dpsgd`).

    ``epsilon`` is what the job asks each node to spend at ``delta`` (add-or-remove-one
    record of that node), for the whole job: every round and local epoch. The spec states
    the noise and the target, and each node checks, with its own row count, that the noise
    achieves the target before it trains; a node whose rows are too few for it refuses the
    job (:func:`fedprop.privacy.dpsgd.dp_training_spend`). The noise is stated rather than
    computed from the target so that the mechanism is written in the spec every party and
    auditor reads, identical at every node and independent of the accountant's numerical
    search; the accountant is only asked the epsilon of a given mechanism, which is
    exactly reproducible. The table is top level, next to ``[train]``, because job specs
    are rewritten with one level of tables (``JobSpec.with_overrides``).
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float


@dataclass(frozen=True)
class TrainConfig:
    """Federated and local training settings (``dp``: DP-SGD, or None for plain training)."""

    rounds: int = 20
    local_epochs: int = 1
    batch_size: int = 128
    learning_rate: float = 0.01
    optimizer: OptimizerKind = OptimizerKind.ADAM
    weight_decay: float = 0.0
    class_weighting: ClassWeighting = ClassWeighting.NONE
    seed: int = 42
    dp: DpTrainConfig | None = None


@dataclass(frozen=True)
class EvalConfig:
    """Federated evaluation settings."""

    histogram_bins: int = 1000


@dataclass(frozen=True)
class JobSpec:
    """A parsed, checked job spec. ``text`` is the exact TOML it came from."""

    id: str
    type: JobType
    aggregation: Aggregation
    parties: tuple[str, ...]
    key_holder: str
    key_bits: int
    release_model: bool
    dataset: str
    schema: Schema
    model: ModelConfig
    train: TrainConfig
    evaluate: EvalConfig
    text: str

    @classmethod
    def from_toml(cls, text: str, source: str = "<job spec>") -> JobSpec:
        """Parse and check a job spec; raise :class:`SpecError` naming the problem."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{source}: not valid TOML: {exc}") from exc
        try:
            return _parse(doc, text)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> JobSpec:
        """Read and parse a job spec file."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError(f"{path}: job spec not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{path}: cannot read job spec: {exc}") from None
        return cls.from_toml(text, str(path))

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> JobSpec:
        """Return the spec with keys replaced, as ``{"train": {"rounds": 5}}``.

        The spec text is regenerated, so nodes receive exactly what runs.
        """
        doc = tomllib.loads(self.text)
        for table, values in overrides.items():
            doc.setdefault(table, {}).update(values)
        return JobSpec.from_toml(_dump_toml(doc), f"{self.id} (with overrides)")


# --- parsing -----------------------------------------------------------------------------------


def _enum(table: Mapping[str, Any], name: str, key: str, enum: type[StrEnum], default: Any) -> Any:
    raw = _get(table, name, key, str, default)
    try:
        return enum(raw)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise SpecError(f"[{name}] {key}: '{raw}' is not one of: {allowed}") from None


def _positive(name: str, key: str, value: float) -> None:
    if value <= 0:
        raise SpecError(f"[{name}] {key}: must be positive, got {value}")


def _dp_config(doc: Mapping[str, Any]) -> DpTrainConfig | None:
    """The ``[dp]`` table, or None if the spec has none. Every key is required."""
    if doc.get("dp") is None:
        return None
    d = _table(doc, "dp")
    _check_keys(d, "dp", {"epsilon", "delta", "noise-multiplier", "max-grad-norm"})
    values = {key: _get(d, "dp", key, float, None) for key in sorted(d)}
    for key in ("epsilon", "delta", "noise-multiplier", "max-grad-norm"):
        if key not in values:
            raise SpecError(f"[dp]: missing key '{key}'")
        if not math.isfinite(values[key]):
            raise SpecError(f"[dp] {key}: must be a finite number, got {values[key]}")
    for key in ("epsilon", "noise-multiplier", "max-grad-norm"):
        if values[key] <= 0:
            raise SpecError(f"[dp] {key}: must be above 0, got {values[key]}")
    if not 0 < values["delta"] < 1:
        raise SpecError(f"[dp] delta: must be above 0 and below 1, got {values['delta']}")
    return DpTrainConfig(
        epsilon=values["epsilon"],
        delta=values["delta"],
        noise_multiplier=values["noise-multiplier"],
        max_grad_norm=values["max-grad-norm"],
    )


def _parse(doc: Mapping[str, Any], text: str) -> JobSpec:
    _check_keys(doc, "top level", {"job", "dataset", "model", "train", "dp", "evaluate"})
    job = _table(doc, "job")
    _check_keys(
        job,
        "job",
        {"id", "type", "aggregation", "parties", "key-holder", "key-bits", "release-model"},
    )
    job_id = _get(job, "job", "id", str, None)
    if not job_id or not all(c.isalnum() or c in "-_." for c in job_id):
        raise SpecError(f"[job] id: '{job_id}' must be non-empty letters, digits, '-', '_', '.'")
    parties = _get(job, "job", "parties", list, None)
    if not parties or not all(isinstance(p, str) and p for p in parties):
        raise SpecError("[job] parties: must be a non-empty list of party names")
    if len(set(parties)) != len(parties):
        raise SpecError("[job] parties: duplicate party name")

    aggregation = _enum(job, "job", "aggregation", Aggregation, Aggregation.PAILLIER.value)
    if aggregation is Aggregation.PAILLIER and len(parties) < MIN_PARTIES_FOR_SECURE_SUM:
        raise SpecError(
            f"[job] parties: a paillier job needs at least {MIN_PARTIES_FOR_SECURE_SUM} parties; "
            f"with {len(parties)}, the exact sum reveals the other party's values to each party, "
            "and differential-privacy noise that would hide them is not configured"
        )
    key_holder = _get(job, "job", "key-holder", str, parties[0])
    if key_holder not in parties:
        raise SpecError(f"[job] key-holder: '{key_holder}' is not one of the parties")
    key_bits = _get(job, "job", "key-bits", int, DEFAULT_PAILLIER_BITS)
    if key_bits not in ALLOWED_PAILLIER_BITS:
        allowed = ", ".join(str(b) for b in ALLOWED_PAILLIER_BITS)
        raise SpecError(f"[job] key-bits: {key_bits} is not allowed (allowed: {allowed})")
    release_model = _get(job, "job", "release-model", bool, False)

    dataset_table = _table(doc, "dataset")
    dataset_name = _get(dataset_table, "dataset", "name", str, None)
    schema = Schema.from_dict(dataset_table)

    model_table = _table(doc, "model", required=False)
    _check_keys(model_table, "model", {"kind", "hidden"})
    hidden_raw = _get(model_table, "model", "hidden", list, [32, 16])
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden_raw):
        raise SpecError("[model] hidden: must be a list of positive integers")
    model = ModelConfig(
        kind=_enum(model_table, "model", "kind", ModelKind, ModelKind.LOGREG.value),
        hidden=tuple(hidden_raw),
    )

    t = _table(doc, "train", required=False)
    defaults = TrainConfig()
    _check_keys(
        t,
        "train",
        {
            "rounds",
            "local-epochs",
            "batch-size",
            "learning-rate",
            "optimizer",
            "weight-decay",
            "class-weighting",
            "seed",
        },
    )
    train = TrainConfig(
        rounds=_get(t, "train", "rounds", int, defaults.rounds),
        local_epochs=_get(t, "train", "local-epochs", int, defaults.local_epochs),
        batch_size=_get(t, "train", "batch-size", int, defaults.batch_size),
        learning_rate=_get(t, "train", "learning-rate", float, defaults.learning_rate),
        optimizer=_enum(t, "train", "optimizer", OptimizerKind, defaults.optimizer.value),
        weight_decay=_get(t, "train", "weight-decay", float, defaults.weight_decay),
        class_weighting=_enum(
            t, "train", "class-weighting", ClassWeighting, defaults.class_weighting.value
        ),
        seed=_get(t, "train", "seed", int, defaults.seed),
        dp=_dp_config(doc),
    )
    for key, value in (
        ("rounds", train.rounds),
        ("local-epochs", train.local_epochs),
        ("batch-size", train.batch_size),
        ("learning-rate", train.learning_rate),
    ):
        _positive("train", key, value)
    if train.weight_decay < 0:
        raise SpecError("[train] weight-decay: must not be negative")
    if train.dp is not None and train.optimizer not in DP_OPTIMIZERS:
        allowed = ", ".join(sorted(o.value for o in DP_OPTIMIZERS))
        raise SpecError(
            f"[train] optimizer: DP training ([dp]) runs with {allowed}, "
            f"not '{train.optimizer.value}'"
        )

    e = _table(doc, "evaluate", required=False)
    _check_keys(e, "evaluate", {"histogram-bins"})
    bins = _get(e, "evaluate", "histogram-bins", int, EvalConfig().histogram_bins)
    if not 10 <= bins <= 100_000:
        raise SpecError(f"[evaluate] histogram-bins: must be between 10 and 100000, got {bins}")

    return JobSpec(
        id=job_id,
        type=_enum(job, "job", "type", JobType, None),
        aggregation=aggregation,
        parties=tuple(parties),
        key_holder=key_holder,
        key_bits=key_bits,
        release_model=release_model,
        dataset=dataset_name,
        schema=schema,
        model=model,
        train=train,
        evaluate=EvalConfig(histogram_bins=bins),
        text=text,
    )


def _dump_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_dump_value(v) for v in value) + "]"
    raise SpecError(f"cannot write {value!r} to TOML")


def _dump_toml(doc: Mapping[str, Any]) -> str:
    """Write the subset of TOML that job specs use (tables, arrays of tables, scalars)."""
    lines: list[str] = []
    for name, table in doc.items():
        scalars = {k: v for k, v in table.items() if not _is_table_array(v)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_dump_value(v)}" for k, v in scalars.items())
        lines.append("")
        for key, value in table.items():
            if _is_table_array(value):
                for item in value:
                    lines.append(f"[[{name}.{key}]]")
                    lines.extend(f"{k} = {_dump_value(v)}" for k, v in item.items())
                    lines.append("")
    return "\n".join(lines)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)
