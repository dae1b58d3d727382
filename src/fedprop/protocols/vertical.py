"""Vertical training (``vfl-train``) and joint scoring (``vfl-score``) as message-driven roles.

Same customers, different columns: the guest (the bank) holds the labels and some columns;
each host (a partner) holds other columns of the same customers. The coordinator drives
the job one request at a time (:class:`Transport`), relays what the parties send each
other, and is the arbiter of Hardy et al. (it holds the job's Paillier key).

**A node keeps nothing in memory between messages.** A deployed SuperNode runs every
message in a fresh process, so :class:`VerticalNode` rebuilds its role for every message
from the job text in the request, its own data file, identity and pinned manifest, and a
per-job state folder on its own disk (:class:`NodeJobState`: owner-only files, written
atomically, checked by a digest, removed when the job ends). The secrets kept there
between two messages are the channel keys and counters, the PSI scalar and shuffle, the
party's weights and the masks of a gradient waiting to be opened. A channel writes its
counter to the folder *before* a message sealed with it leaves (write-ahead), so a node
that crashes never reuses a nonce, and a restored channel refuses every message it had
already accepted. A step delivered twice finds the state moved on and is refused: a job
whose node crashed mid-step fails (and is aborted) rather than repeating the step. The
coordinator runs in one process (the ServerApp) and keeps memory.

Steps of ``vfl-train`` (each a Flower message type; "hop" = one request-reply exchange
between the coordinator and the parties it addresses):

1. ``train.vfl_hello`` (every party): check the job against the node's settings, pin the
   arbiter's public key, start a channel handshake with each peer (signed ephemeral
   X25519, :mod:`fedprop.crypto.channel`); reply the offers.
2. ``train.vfl_psi`` (every party): complete the channels; the guest sends each host its
   blinded ids, each host sends the guest its own (ECDH PSI, :mod:`fedprop.protocols.psi`),
   sealed in the channel.
3. ``train.vfl_psi_match`` (hosts): double-blind the guest's list.
4. ``train.vfl_psi_align`` (guest): match, fix the shared random order, send each host its
   alignment; the coordinator learns the intersection size (and, from the sizes of the
   sealed messages, each party's number of ids), no id and no blinded value. Every
   party then splits the aligned rows into training rows and held-out rows with a seeded
   shuffle all of them derive from ``[evaluate] seed`` (the order itself is random, drawn
   by the guest), and standardizes its own numeric columns with the statistics of its own
   training rows (each party holds every row of its columns, so local statistics are the
   statistics of the training set), one-hot encoding its categorical columns.
5. Hardy hetero logistic regression (:mod:`fedprop.protocols.vfl`), per mini-batch three
   hops: ``train.vfl_forward`` (hosts: apply the previous batch's opened gradient, send
   the encrypted partial scores of this batch), ``train.vfl_residual`` (guest: apply its
   opened gradient, send the encrypted residuals to the hosts and its masked gradient to
   the arbiter), ``train.vfl_gradient`` (hosts: masked gradient to the arbiter). The
   arbiter opens masked gradients between hops, at the coordinator. That is the minimum
   for this protocol: a batch's partial scores depend on the previous batch's update,
   which needs the arbiter's opening. Everything else rides along: the alignment with the
   first forward, the openings with the next request, each epoch's loss shares and
   encrypted loss with the first hops of the next epoch (so an epoch costs
   ``3 * batches`` hops and no more), and when the loss stops early the next epoch's
   first hops were computed ahead and are dropped. Fewer, larger batches mean fewer hops:
   default credit's 22,262 training rows in batches of 2,000 are 11 batches, 33 hops an
   epoch (``bench/bench_vertical.py``).
6. ``train.vfl_finish`` (hosts): keep the model part, send the guest the partial scores
   of the held-out rows; ``evaluate.vfl_metrics`` (guest): keep its part, compute AUC,
   KS and lift of the held-out rows, and release only those numbers.

Guest-host payloads ride the channel: the coordinator relays ciphertexts it cannot read
(it sees sizes and timing). ``query.vfl_abort`` tells every node to drop the job's state.

After the job each party keeps its own part of the model in its model folder
(``<model folder>/<job id>/model.json``: its columns, its encoder, its weights; the
guest's adds the intercept), for a later scoring job.

``vfl-score`` (steps ``query.vfl_score_*``): the same handshake and PSI over the guest's
current customers (run again rather than reusing the training alignment: customers come
and go between training and a campaign, the training job keeps no id list after it ends,
and each party checks the job's minimum intersection on today's data), then hosts send the
guest partial scores ``X_h w_h`` of the aligned customers over the channel and the guest
writes the ranked target list (``id, score, rank, decile``) into its own output folder. The
coordinator learns the intersection size and the number of rows scored (and, from message
sizes, each party's number of ids).

What each role learns (paillier; semi-honest parties, no collusion of the coordinator with
a party; see :mod:`fedprop.protocols.vfl` and :mod:`fedprop.protocols.psi` for the
arguments):

- the coordinator: the intersection size, sizes and timing of every message, the masked
  gradients (uniform modulo ``n``), each epoch's summed loss, and the released metrics
  (AUC, KS, lift at 10% and 20% of the held-out rows). No id, label, partial score,
  residual or unmasked gradient;
- the guest: the intersection, its own gradient, the hosts' encrypted partial scores and
  loss shares, and the hosts' partial scores of the held-out rows (and of the scored
  rows, when scoring): one number per row and host, never a host's columns or weights;
- a host: the intersection, its encrypted residuals and its own gradient per batch
  (linear equations in the batch's residuals, at least ``VFL_MIN_BATCH_ROWS`` rows).

Limits: in ``plaintext`` mode (a baseline every node must allow) the arbiter opens
unmasked gradients and sees them; a coordinator colluding with a host learns the
residuals, hence the labels; a malicious party is out of scope (no zero-knowledge
proofs). A node's state folder holds the job's secrets between messages: protecting the
disk is the operator's job (as for its identity keys). A job id runs once per node: a
node refuses to start a job whose state or model part it already has. Metrics are
released over at least ``VFL_MIN_TEST_ROWS`` held-out rows. Each host keeps its model part
when it sends its held-out scores, before the guest has evaluated: if the guest then fails,
the hosts' parts of that job stay (and the guest has none, so no scoring job can use it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedprop.crypto.channel import Channel, ChannelOffer, PendingChannel, start_channel
from fedprop.crypto.identity import Manifest, NodeIdentity, check_parties
from fedprop.crypto.paillier import PrivateKey, PublicKey, generate_keypair
from fedprop.crypto.params import (
    ALLOWED_PAILLIER_BITS,
    JOB_STATE_DIR_MODE,
    JOB_STATE_FILE_LABEL,
    JOB_STATE_FILE_MODE,
    MIN_PAILLIER_BITS,
    VFL_MIN_BATCH_ROWS,
    VFL_MIN_TEST_ROWS,
)
from fedprop.data.encoding import FeatureEncoder, encoded_feature_names, local_stats
from fedprop.data.schema import Column, Schema
from fedprop.data.vertical import VERTICAL_FILE, read_vertical_party
from fedprop.errors import FedpropError, JobFailedError, SpecError
from fedprop.files import write_text_atomic
from fedprop.framing import FramingError, join_frames, split_frames
from fedprop.models.metrics import ScoreHistogram, global_metrics
from fedprop.privacy.policy import JobKind, JobRequest
from fedprop.protocols.messages import AbortReply, AbortRequest
from fedprop.protocols.psi import (
    Alignment,
    BlindedIds,
    DoubleBlinded,
    PsiConfig,
    PsiGuest,
    PsiHost,
)
from fedprop.protocols.vfl import (
    CipherMode,
    EncryptedLoss,
    GuestResidual,
    HostForward,
    LossShare,
    MaskedGradient,
    OpenedGradient,
    PartialScores,
    VflArbiter,
    VflConfig,
    VflConfigError,
    VflGuest,
    VflHost,
    _encode_features,
    _quantized,
    batch_plan,
)
from fedprop.spec import Aggregation
from fedprop.tables import check_keys as _keys
from fedprop.tables import get as _get
from fedprop.tables import table as _table

__all__ = [
    "COORDINATOR",
    "METRIC_BINS",
    "REPLIES",
    "REQUESTS",
    "AbortReply",
    "AbortRequest",
    "AlignedReply",
    "Envelope",
    "EpochStats",
    "HelloRequest",
    "InProcessTransport",
    "MetricsReply",
    "ModelPart",
    "NodeJobState",
    "PartySpec",
    "RelayReply",
    "RelayRequest",
    "ScoreResult",
    "ScoreSpec",
    "ScoredReply",
    "Transport",
    "VStep",
    "VerticalCoordinator",
    "VerticalError",
    "VerticalJobType",
    "VerticalNode",
    "VerticalResult",
    "VerticalSettings",
    "VerticalSpec",
    "VerticalStateError",
    "pack_envelopes",
    "parse_vertical",
    "policy_request",
    "run_vertical",
    "run_vertical_score",
    "split_positions",
    "unpack_envelopes",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
T = TypeVar("T")

#: Sender or recipient name of what goes to or comes from the coordinator (the arbiter);
#: party names never start with ``@``.
COORDINATOR = "@coordinator"
#: Score bins of the guest's held-out histogram: the AUC it releases is within
#: ``auc_bin_error_bound`` (tiny at this resolution) of the exact AUC of the scores.
METRIC_BINS = 10_000

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_STATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_ENVELOPE_LABEL = b"fedprop-vertical-envelopes-v1"
_MODEL_FORMAT = "fedprop-vfl-model-v1"
_MODEL_FILE = "model.json"
_HOST_LABEL = "\x00label"  # a host's schema needs a label name; no column carries it


class VerticalError(FedpropError):
    """A vertical job step that a node or the coordinator cannot carry out."""


class VerticalStateError(VerticalError):
    """A node's per-job state is missing, corrupt, or does not fit the request."""


# --- job specs ------------------------------------------------------------------------------------


class VerticalJobType(StrEnum):
    """The vertical job types."""

    TRAIN = "vfl-train"
    SCORE = "vfl-score"


def _name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise SpecError(
            f"{what}: '{value}' is not a name of letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return value


@dataclass(frozen=True)
class PartySpec:
    """One party's columns in a vertical job: its id column, features and (guest) label."""

    name: str
    id_column: str
    columns: tuple[Column, ...]
    raw_columns: tuple[Mapping[str, Any], ...] = field(repr=False)
    label: str | None = None
    label_values: tuple[str, str] | None = None
    #: The party's dataset, by the name its privacy policy lists it under.
    dataset: str = ""

    @property
    def schema(self) -> Schema:
        """The party's columns as a dataset schema (a host's label is a placeholder)."""
        label = self.label if self.label is not None else _HOST_LABEL
        values = self.label_values if self.label_values is not None else ("0", "1")
        return Schema(label, values, self.columns, self.id_column)

    @property
    def features(self) -> tuple[str, ...]:
        """The encoded feature names, in matrix column order (known before any data)."""
        return encoded_feature_names(self.schema)

    @classmethod
    def parse(cls, name: str, table: Mapping[str, Any], guest: bool) -> PartySpec:
        """The ``[parties.<name>]`` table; :class:`SpecError` naming the key."""
        where = f"parties.{name}"
        allowed = {"id-column", "dataset", "columns", *(("label", "label-values") if guest else ())}
        _keys(table, where, allowed)
        id_column = _get(table, where, "id-column", str, None)
        dataset_name = _get(table, where, "dataset", str, "")
        raw = table.get("columns")
        if not isinstance(raw, list) or not raw or not all(isinstance(c, Mapping) for c in raw):
            raise SpecError(f"[{where}] columns: expected [[{where}.columns]] tables")
        label: str | None = None
        values: tuple[str, str] | None = None
        if guest:
            label = _get(table, where, "label", str, None)
            raw_values = _get(table, where, "label-values", list, None)
            if len(raw_values) != 2 or not all(isinstance(v, str) for v in raw_values):
                raise SpecError(
                    f"[{where}] label-values: expected two strings [negative, positive]"
                )
            values = (raw_values[0], raw_values[1])
        dataset = {
            "id-column": id_column,
            "label": label if label is not None else _HOST_LABEL,
            "label-values": list(values) if values is not None else ["0", "1"],
            "columns": raw,
        }
        try:
            schema = Schema.from_dict(dataset)
        except SpecError as exc:
            raise SpecError(str(exc).replace("[dataset]", f"[{where}]", 1)) from None
        raw_columns = tuple(dict(c) for c in raw)
        return cls(name, id_column, schema.columns, raw_columns, label, values, dataset_name)


_TRAIN_KEYS: Mapping[str, tuple[str, type]] = {
    "learning-rate": ("learning_rate", float),
    "lr-decay": ("lr_decay", float),
    "batch-size": ("batch_size", int),
    "l2": ("l2", float),
    "max-epochs": ("max_epochs", int),
    "tolerance": ("tolerance", float),
    "feature-clip": ("feature_clip", float),
    "feature-bits": ("feature_bits", int),
    "score-clip": ("score_clip", float),
    "score-bits": ("score_bits", int),
    "seed": ("seed", int),
}


def _job_head(doc: Mapping[str, Any], kind: VerticalJobType, extra: set[str]) -> dict[str, Any]:
    job = _table(doc, "job")
    _keys(job, "job", {"id", "type", "guest", "hosts", "min-intersection", *extra})
    job_type = _get(job, "job", "type", str, None)
    if job_type != kind.value:
        raise SpecError(f"[job] type: expected '{kind.value}', got '{job_type}'")
    job_id = _name(_get(job, "job", "id", str, None), "[job] id")
    guest = _name(_get(job, "job", "guest", str, None), "[job] guest")
    hosts = _get(job, "job", "hosts", list, None)
    if not hosts or not all(isinstance(h, str) for h in hosts):
        raise SpecError("[job] hosts: expected a non-empty list of party names")
    names = tuple(_name(h, "[job] hosts") for h in hosts)
    if len(set(names)) != len(names) or guest in names:
        raise SpecError("[job] hosts: names must be distinct and differ from the guest")
    minimum = _get(job, "job", "min-intersection", int, None)
    if minimum < 1:
        raise SpecError(f"[job] min-intersection: must be at least 1, got {minimum}")
    alignment = _table(doc, "alignment", required=False)
    _keys(alignment, "alignment", {"case-fold"})
    case_fold = _get(alignment, "alignment", "case-fold", bool, False)
    return {
        "job": job,
        "id": job_id,
        "guest": guest,
        "hosts": names,
        "min_intersection": minimum,
        "case_fold": case_fold,
    }


def _toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None


class _VerticalJob:
    """What both vertical job types share: their text and their parties."""

    text: str
    guest: str
    hosts: tuple[str, ...]

    @property
    def members(self) -> tuple[str, ...]:
        """The guest, then every host."""
        return (self.guest, *self.hosts)

    @property
    def digest(self) -> str:
        """SHA-256 of the job text: what a node checks every request against."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VerticalSpec(_VerticalJob):
    """A ``vfl-train`` job, parsed from its TOML text (see ``configs/*-vfl.toml``)."""

    text: str = field(repr=False)
    id: str
    guest: str
    hosts: tuple[str, ...]
    aggregation: Aggregation
    key_bits: int
    min_intersection: int
    case_fold: bool
    train: VflConfig
    test_fraction: float
    eval_seed: int
    parties: Mapping[str, PartySpec]

    @classmethod
    def from_toml(cls, text: str, source: str = "<job spec>") -> VerticalSpec:
        """Parse and check a ``vfl-train`` job; :class:`SpecError` naming the key."""
        doc = _toml(text, source)
        _keys(doc, "top level", {"job", "alignment", "train", "evaluate", "parties"})
        head = _job_head(doc, VerticalJobType.TRAIN, {"aggregation", "key-bits"})
        job = head["job"]
        raw_aggregation = _get(job, "job", "aggregation", str, "paillier")
        try:
            aggregation = Aggregation(raw_aggregation)
        except ValueError:
            raise SpecError(
                f"[job] aggregation: '{raw_aggregation}' is not one of: paillier, plaintext"
            ) from None
        key_bits = _get(job, "job", "key-bits", int, 2048)
        if key_bits < MIN_PAILLIER_BITS or key_bits not in ALLOWED_PAILLIER_BITS:
            allowed = ", ".join(str(b) for b in ALLOWED_PAILLIER_BITS)
            raise SpecError(f"[job] key-bits: must be one of {allowed}, got {key_bits}")
        train = _table(doc, "train", required=False)
        _keys(train, "train", _TRAIN_KEYS)
        knobs: dict[str, Any] = {}
        for key, (attribute, kind) in _TRAIN_KEYS.items():
            if key in train:
                knobs[attribute] = _get(train, "train", key, kind, None)
        cipher = (
            CipherMode.PAILLIER if aggregation is Aggregation.PAILLIER else CipherMode.PLAINTEXT
        )
        try:
            config = VflConfig(**knobs, key_bits=key_bits, cipher=cipher)
        except VflConfigError as exc:
            named = next((k for k, (a, _) in _TRAIN_KEYS.items() if str(exc).startswith(a)), None)
            raise SpecError(f"[train] {named}: {exc}" if named else f"[train]: {exc}") from None
        evaluate = _table(doc, "evaluate", required=False)
        _keys(evaluate, "evaluate", {"test-fraction", "seed"})
        fraction = _get(evaluate, "evaluate", "test-fraction", float, 0.2)
        if not 0.0 < fraction <= 0.5:
            raise SpecError(f"[evaluate] test-fraction: must be in (0, 0.5], got {fraction}")
        eval_seed = _get(evaluate, "evaluate", "seed", int, 0)
        if eval_seed < 0:
            raise SpecError(f"[evaluate] seed: must not be negative, got {eval_seed}")
        parties_table = _table(doc, "parties")
        members = (head["guest"], *head["hosts"])
        missing = [p for p in members if p not in parties_table]
        if missing:
            raise SpecError(f"missing table [parties.{missing[0]}]")
        extra = sorted(set(parties_table) - set(members))
        if extra:
            raise SpecError(f"[parties.{extra[0]}]: not the guest or a host of this job")
        parties = {
            p: PartySpec.parse(p, _table(parties_table, p), guest=p == head["guest"])
            for p in members
        }
        return cls(
            text=text,
            id=head["id"],
            guest=head["guest"],
            hosts=head["hosts"],
            aggregation=aggregation,
            key_bits=key_bits,
            min_intersection=head["min_intersection"],
            case_fold=head["case_fold"],
            train=config,
            test_fraction=fraction,
            eval_seed=eval_seed,
            parties=parties,
        )

    @classmethod
    def load(cls, path: Path) -> VerticalSpec:
        """Read and parse a ``vfl-train`` job file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
        return cls.from_toml(text, str(path))


@dataclass(frozen=True)
class ScoreSpec(_VerticalJob):
    """A ``vfl-score`` job: score the guest's customers that hosts also hold, with the
    model parts that training job ``model`` left at each party."""

    text: str = field(repr=False)
    id: str
    guest: str
    hosts: tuple[str, ...]
    model: str
    min_intersection: int
    case_fold: bool

    @classmethod
    def from_toml(cls, text: str, source: str = "<job spec>") -> ScoreSpec:
        """Parse and check a ``vfl-score`` job; :class:`SpecError` naming the key."""
        doc = _toml(text, source)
        _keys(doc, "top level", {"job", "alignment"})
        head = _job_head(doc, VerticalJobType.SCORE, {"model"})
        model = _name(_get(head["job"], "job", "model", str, None), "[job] model")
        return cls(
            text=text,
            id=head["id"],
            guest=head["guest"],
            hosts=head["hosts"],
            model=model,
            min_intersection=head["min_intersection"],
            case_fold=head["case_fold"],
        )


def parse_vertical(text: str) -> VerticalSpec | ScoreSpec:
    """The vertical job ``text`` describes (its ``[job] type`` picks the kind)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}") from None
    job = doc.get("job")
    kind = job.get("type") if isinstance(job, Mapping) else None
    if kind == VerticalJobType.TRAIN.value:
        return VerticalSpec.from_toml(text)
    if kind == VerticalJobType.SCORE.value:
        return ScoreSpec.from_toml(text)
    raise SpecError(f"[job] type: expected 'vfl-train' or 'vfl-score', got {kind!r}")


def policy_request(
    spec: VerticalSpec | ScoreSpec, party: str, manifest: Manifest, model_dir: Path | None
) -> JobRequest:
    """What a vertical job asks of ``party``'s node, for its policy
    (:func:`~fedprop.privacy.policy.decide`): the party's own dataset and columns in the
    role the job reads them (its features; the guest's label as the target). A scoring job
    reads the columns of the party's kept model part (``model_dir``), trained under the same
    policy. The id column serves alignment only (PSI), which the job type covers; no model
    is released to the coordinator. :class:`VerticalError` if ``party`` is not in the job or
    (scoring) holds no part of its model.
    """
    if party not in spec.members:
        raise VerticalError(f"'{party}': not a party of job '{spec.id}'")
    coordinator = manifest.coordinator.fingerprint() if manifest.coordinator else ""
    if isinstance(spec, VerticalSpec):
        own = spec.parties[party]
        paillier = spec.aggregation is Aggregation.PAILLIER
        job_type, aggregation = JobKind.VFL_TRAIN, spec.aggregation.value
        key_bits = spec.key_bits if paillier else None
        dataset, columns, label = own.dataset, own.columns, own.label
    else:
        if model_dir is None:
            raise VerticalError(f"'{party}': keeps no model parts (no model folder)")
        model = ModelPart.load(model_dir, spec.model, party)
        job_type, aggregation, key_bits = JobKind.SCORE, None, None
        dataset, columns, label = model.dataset, model.columns, None
    return JobRequest(
        federation=manifest.federation,
        coordinator=coordinator,
        job_type=job_type.value,
        aggregation=aggregation,
        dataset=dataset,
        feature_columns=tuple(c.name for c in columns),
        group_by_columns=(),
        target_columns=() if label is None else (label,),
        filter_columns=(),
        key_bits=key_bits,
        model_release=False,
    )


def split_positions(rows: int, fraction: float, seed: int) -> tuple[IntArray, IntArray]:
    """Positions (in the shared aligned order) of the training and the held-out rows.

    ``round(rows * fraction)`` held-out rows, picked by a shuffle seeded with ``seed`` and
    ``rows``: every party derives the same split without a message. Both sorted.
    """
    test = round(rows * fraction)
    order = np.random.default_rng([seed, rows]).permutation(rows)
    return np.sort(order[test:]).astype(np.int64), np.sort(order[:test]).astype(np.int64)


# --- a node's state between messages --------------------------------------------------------------


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a fsync'd temporary file renamed over it, owner-only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, JOB_STATE_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NodeJobState:
    """One job's state at one node: a folder ``<state dir>/<job id>`` of owner-only files.

    Every file is written atomically (temporary file, fsync, rename) and carries a SHA-256
    of its content, so a reader sees the old value or the new one, and a truncated or
    altered file is reported as corrupt rather than parsed. :meth:`clear` removes the
    folder when the job ends (or is aborted).
    """

    def __init__(self, root: Path, job_id: str) -> None:
        if not _NAME.fullmatch(job_id):
            raise VerticalStateError(f"'{job_id}' cannot name a job state folder")
        self.root = Path(root)
        self.job_id = job_id
        self.folder = self.root / job_id

    def __repr__(self) -> str:
        return f"NodeJobState({str(self.folder)!r})"

    def exists(self) -> bool:
        """Whether this job has state here."""
        return self.folder.is_dir()

    def create(self) -> None:
        """Make the (empty, owner-only) folder; :class:`VerticalStateError` if it exists."""
        self.root.mkdir(parents=True, exist_ok=True, mode=JOB_STATE_DIR_MODE)
        try:
            self.folder.mkdir(mode=JOB_STATE_DIR_MODE)
        except FileExistsError:
            raise VerticalStateError(
                f"job '{self.job_id}' already has state at this node: it started here before "
                "(abort it, or give the job a new id)"
            ) from None
        os.chmod(self.folder, JOB_STATE_DIR_MODE)

    def require(self) -> None:
        """:class:`VerticalStateError` unless this job has state here."""
        if not self.exists():
            raise VerticalStateError(
                f"no state of job '{self.job_id}' at this node: the job did not start here, "
                "or it already ended"
            )

    def _path(self, name: str) -> Path:
        if not _STATE_NAME.fullmatch(name):
            raise VerticalStateError(f"'{name}' cannot name a job state file")
        return self.folder / name

    def has(self, name: str) -> bool:
        """Whether the state file ``name`` exists."""
        return self._path(name).is_file()

    def put(self, name: str, data: bytes) -> None:
        """Write the state file ``name`` (atomically, owner-only)."""
        self.require()
        digest = hashlib.sha256(data).digest()
        _write_bytes_atomic(self._path(name), JOB_STATE_FILE_LABEL + digest + data)

    def get(self, name: str) -> bytes:
        """The content of state file ``name``; :class:`VerticalStateError` if it is missing
        or corrupt."""
        self.require()
        path = self._path(name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise VerticalStateError(
                f"state '{name}' of job '{self.job_id}' is missing at this node"
            ) from None
        head = len(JOB_STATE_FILE_LABEL)
        data = blob[head + 32 :]
        if (
            blob[:head] != JOB_STATE_FILE_LABEL
            or blob[head : head + 32] != hashlib.sha256(data).digest()
        ):
            raise VerticalStateError(f"state '{name}' of job '{self.job_id}' is corrupt")
        return data

    def delete(self, name: str) -> None:
        """Remove state file ``name`` if it exists."""
        self._path(name).unlink(missing_ok=True)

    def put_json(self, name: str, value: Mapping[str, Any]) -> None:
        """Write a JSON object."""
        self.put(name, json.dumps(value, sort_keys=True).encode("utf-8"))

    def get_json(self, name: str) -> dict[str, Any]:
        """Read a JSON object written by :meth:`put_json`."""
        try:
            value = json.loads(self.get(name))
        except ValueError:
            raise VerticalStateError(f"state '{name}' of job '{self.job_id}' is corrupt") from None
        if not isinstance(value, dict):
            raise VerticalStateError(f"state '{name}' of job '{self.job_id}' is corrupt")
        return value

    def put_array(self, name: str, array: npt.ArrayLike) -> None:
        """Write a numpy array (``.npy`` bytes, no pickles)."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        self.put(name, buffer.getvalue())

    def get_array(self, name: str) -> np.ndarray:
        """Read an array written by :meth:`put_array`."""
        try:
            array: np.ndarray = np.load(io.BytesIO(self.get(name)), allow_pickle=False)
        except ValueError:
            raise VerticalStateError(f"state '{name}' of job '{self.job_id}' is corrupt") from None
        return array

    def names(self) -> list[str]:
        """The state files present, sorted."""
        if not self.exists():
            return []
        return sorted(p.name for p in self.folder.iterdir() if not p.name.startswith("."))

    def clear(self) -> None:
        """Remove the job's whole state folder (at the job's end or abort)."""
        shutil.rmtree(self.folder, ignore_errors=True)


# --- messages -------------------------------------------------------------------------------------


class VStep(StrEnum):
    """Steps of the vertical jobs; the values are the Flower message types that carry them
    (Flower takes only Python identifiers after the category)."""

    HELLO = "train.vfl_hello"
    PSI = "train.vfl_psi"
    PSI_MATCH = "train.vfl_psi_match"
    PSI_ALIGN = "train.vfl_psi_align"
    FORWARD = "train.vfl_forward"
    RESIDUAL = "train.vfl_residual"
    GRADIENT = "train.vfl_gradient"
    FINISH = "train.vfl_finish"
    EVALUATE = "evaluate.vfl_metrics"
    SCORE_HELLO = "query.vfl_score_hello"
    SCORE_PSI = "query.vfl_score_psi"
    SCORE_MATCH = "query.vfl_score_match"
    SCORE_ALIGN = "query.vfl_score_align"
    SCORE_HOSTS = "query.vfl_score_hosts"
    SCORE_GUEST = "query.vfl_score_guest"
    ABORT = "query.vfl_abort"


@dataclass(frozen=True)
class Envelope:
    """One item relayed by the coordinator: from ``sender`` to ``recipient``.

    Between two parties ``data`` is a channel message (the coordinator cannot read it);
    to or from :data:`COORDINATOR` it is a protocol message for the arbiter. ``kind`` only
    routes: a party opens channel messages under the topic it expects itself.
    """

    sender: str
    recipient: str
    kind: str
    data: bytes = field(repr=False)


def pack_envelopes(envelopes: Sequence[Envelope]) -> bytes:
    """Envelopes as bytes (length-prefixed frames)."""
    frames = [_ENVELOPE_LABEL]
    for e in envelopes:
        frames += [e.sender.encode(), e.recipient.encode(), e.kind.encode(), e.data]
    return join_frames(frames)


def unpack_envelopes(data: bytes) -> list[Envelope]:
    """Parse :func:`pack_envelopes` bytes; :class:`VerticalError` if malformed."""
    try:
        frames = split_frames(bytes(data), "envelopes")
    except (FramingError, TypeError):
        raise VerticalError("relayed envelopes are malformed") from None
    if not frames or frames[0] != _ENVELOPE_LABEL or (len(frames) - 1) % 4:
        raise VerticalError("relayed envelopes are malformed")
    out = []
    try:
        for k in range(1, len(frames), 4):
            sender, recipient, kind = (f.decode("utf-8") for f in frames[k : k + 3])
            out.append(Envelope(sender, recipient, kind, frames[k + 3]))
    except UnicodeDecodeError:
        raise VerticalError("relayed envelopes carry malformed names") from None
    return out


@dataclass(frozen=True)
class HelloRequest:
    """Start the job: the spec and the arbiter's Paillier public key (empty in plaintext)."""

    spec: str
    key: bytes


@dataclass(frozen=True)
class RelayRequest:
    """A step with what the coordinator relays to the addressed parties.

    ``epoch`` and ``batch`` name the mini-batch to work on (0, 0: none); ``envelopes``
    (:func:`pack_envelopes`) are for the recipients of this request, each taking its own.
    """

    spec: str
    epoch: int
    batch: int
    envelopes: bytes


@dataclass(frozen=True)
class RelayReply:
    """What a party sends on: envelopes for its peers or for the coordinator."""

    party: str
    envelopes: bytes


@dataclass(frozen=True)
class AlignedReply:
    """The guest's end of PSI: the intersection size (the only PSI result the coordinator
    learns) and the alignments for the hosts."""

    party: str
    rows: int
    envelopes: bytes


@dataclass(frozen=True)
class MetricsReply:
    """The guest's release: metrics of the held-out rows, and how many there are."""

    party: str
    rows: int
    auc: float
    ks: float
    lift_10: float
    lift_20: float


@dataclass(frozen=True)
class ScoredReply:
    """The guest scored ``rows`` customers and wrote its target list (kept at the guest)."""

    party: str
    rows: int


Request = HelloRequest | RelayRequest | AbortRequest
Reply = RelayReply | AlignedReply | MetricsReply | ScoredReply | AbortReply

#: The request each step carries, and the reply it expects.
REQUESTS: Mapping[VStep, type[Request]] = {
    **{s: RelayRequest for s in VStep},
    VStep.HELLO: HelloRequest,
    VStep.SCORE_HELLO: HelloRequest,
    VStep.ABORT: AbortRequest,
}
REPLIES: Mapping[VStep, type[Reply]] = {
    **{s: RelayReply for s in VStep},
    VStep.PSI_ALIGN: AlignedReply,
    VStep.SCORE_ALIGN: AlignedReply,
    VStep.EVALUATE: MetricsReply,
    VStep.SCORE_GUEST: ScoredReply,
    VStep.ABORT: AbortReply,
}


def message_size(message: object) -> int:
    """Bytes of a message's fields as they travel (text and bytes; 8 per number)."""
    total = 0
    for f in dataclasses.fields(cast(Any, message)):
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            total += len(value)
        elif isinstance(value, str):
            total += len(value.encode("utf-8"))
        elif isinstance(value, np.ndarray):
            total += value.nbytes
        else:
            total += 8
    return total


# --- model parts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPart:
    """One party's part of a trained vertical model, as it keeps it in its model folder."""

    job: str
    party: str
    guest: str
    hosts: tuple[str, ...]
    id_column: str
    raw_columns: tuple[Mapping[str, Any], ...]
    label: str | None
    means: tuple[float, ...]
    stds: tuple[float, ...]
    weights: FloatArray
    intercept: float
    feature_clip: float
    feature_bits: int
    spec_digest: str
    dataset: str = ""

    @property
    def columns(self) -> tuple[Column, ...]:
        """The party's feature columns."""
        return self.schema.columns

    @property
    def schema(self) -> Schema:
        """The party's columns as a schema (a placeholder label)."""
        return Schema.from_dict(
            {
                "id-column": self.id_column,
                "label": _HOST_LABEL,
                "label-values": ["0", "1"],
                "columns": [dict(c) for c in self.raw_columns],
            }
        )

    def encoder(self) -> FeatureEncoder:
        """The party's feature encoder, as fitted on its training rows."""
        return FeatureEncoder(self.schema, self.means, self.stds, 1, 0)

    def partial_scores(self, features: FloatArray) -> FloatArray:
        """``X w`` with the fixed-point encoding the training used (no intercept)."""
        config = VflConfig(
            feature_clip=self.feature_clip,
            feature_bits=self.feature_bits,
            cipher=CipherMode.PLAINTEXT,
        )
        quantized = _quantized(_encode_features(np.asarray(features, np.float64), config), config)
        result: FloatArray = quantized @ self.weights
        return result

    def to_json(self) -> str:
        """Readable JSON; floats as exact hex strings."""
        doc = {
            "format": _MODEL_FORMAT,
            "job": self.job,
            "party": self.party,
            "guest": self.guest,
            "hosts": list(self.hosts),
            "id-column": self.id_column,
            "columns": [dict(c) for c in self.raw_columns],
            "label": self.label,
            "means": [float(v).hex() for v in self.means],
            "stds": [float(v).hex() for v in self.stds],
            "weights": [float(v).hex() for v in self.weights],
            "intercept": float(self.intercept).hex(),
            "feature-clip": self.feature_clip,
            "feature-bits": self.feature_bits,
            "spec-sha256": self.spec_digest,
            "dataset": self.dataset,
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, model_dir: Path, job: str, party: str) -> ModelPart:
        """This party's part of model ``job``; :class:`VerticalError` if absent or bad."""
        path = Path(model_dir) / job / _MODEL_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc["format"] != _MODEL_FORMAT or doc["party"] != party or doc["job"] != job:
                raise ValueError("not this party's part of this model")
            return cls(
                job=doc["job"],
                party=doc["party"],
                guest=doc["guest"],
                hosts=tuple(doc["hosts"]),
                id_column=doc["id-column"],
                raw_columns=tuple(doc["columns"]),
                label=doc["label"],
                means=tuple(float.fromhex(v) for v in doc["means"]),
                stds=tuple(float.fromhex(v) for v in doc["stds"]),
                weights=np.array([float.fromhex(v) for v in doc["weights"]], dtype=np.float64),
                intercept=float.fromhex(doc["intercept"]),
                feature_clip=float(doc["feature-clip"]),
                feature_bits=int(doc["feature-bits"]),
                spec_digest=doc["spec-sha256"],
                dataset=str(doc["dataset"]),
            )
        except FileNotFoundError:
            raise VerticalError(f"'{party}' has no part of model '{job}'") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise VerticalError(
                f"'{party}': its part of model '{job}' is unreadable: {exc}"
            ) from None

    def save(self, model_dir: Path) -> Path:
        """Write ``<model_dir>/<job>/model.json`` (owner-only)."""
        folder = Path(model_dir) / self.job
        folder.mkdir(parents=True, exist_ok=True, mode=JOB_STATE_DIR_MODE)
        path = folder / _MODEL_FILE
        write_text_atomic(path, self.to_json(), mode=JOB_STATE_FILE_MODE)
        return path


# --- the node -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerticalSettings:
    """What a node brings to a vertical job besides the request.

    ``data_dir`` holds its ``data.csv``; ``state_dir`` its per-job state folders;
    ``model_dir`` the model parts it keeps; ``output_dir`` the target lists it writes when
    scoring. ``executor`` and ``workers`` speed up the Paillier work (optional).
    """

    identity: NodeIdentity
    manifest: Manifest
    data_dir: Path
    state_dir: Path
    model_dir: Path
    output_dir: Path | None = None
    allow_plaintext: bool = False
    executor: Executor | None = None
    workers: int = 1


_TRAIN_STEPS = frozenset(
    {
        VStep.HELLO,
        VStep.PSI,
        VStep.PSI_MATCH,
        VStep.PSI_ALIGN,
        VStep.FORWARD,
        VStep.RESIDUAL,
        VStep.GRADIENT,
        VStep.FINISH,
        VStep.EVALUATE,
    }
)
_GUEST_STEPS = frozenset(
    {VStep.PSI_ALIGN, VStep.RESIDUAL, VStep.EVALUATE, VStep.SCORE_ALIGN, VStep.SCORE_GUEST}
)
_HOST_STEPS = frozenset(
    {
        VStep.PSI_MATCH,
        VStep.FORWARD,
        VStep.GRADIENT,
        VStep.FINISH,
        VStep.SCORE_MATCH,
        VStep.SCORE_HOSTS,
    }
)


def _topic_forward(epoch: int, batch: int) -> str:
    return f"vfl/forward/{epoch}/{batch}"


def _topic_residual(epoch: int, batch: int) -> str:
    return f"vfl/residual/{epoch}/{batch}"


def _fit_encoder(frame: pd.DataFrame, schema: Schema) -> FeatureEncoder:
    if schema.label not in frame.columns:
        frame = frame.assign(**{schema.label: np.zeros(len(frame), dtype=np.int64)})
    return FeatureEncoder.from_global_stats(schema, local_stats(frame, schema))


def _float64(matrix: np.ndarray) -> FloatArray:
    return np.asarray(matrix, dtype=np.float64)


class VerticalNode:
    """One party of vertical jobs, rebuilt for every message (:meth:`handle`).

    It holds nothing between messages: everything it needs again lives in its per-job
    state folder (:class:`NodeJobState`) and is re-read, checked and rewritten each time.
    """

    def __init__(self, settings: VerticalSettings) -> None:
        self.settings = settings
        self.name = settings.identity.name

    # -- plumbing --

    def _error(self, text: str) -> VerticalError:
        return VerticalError(f"'{self.name}': {text}")

    def _spec(self, text: str) -> VerticalSpec | ScoreSpec:
        spec = parse_vertical(text)
        if self.name not in spec.members:
            raise self._error(f"not a party of job '{spec.id}'")
        check_parties(self.settings.manifest, spec.members)
        return spec

    def _is_guest(self, spec: VerticalSpec | ScoreSpec) -> bool:
        return self.name == spec.guest

    def _peers(self, spec: VerticalSpec | ScoreSpec) -> tuple[str, ...]:
        return spec.hosts if self._is_guest(spec) else (spec.guest,)

    def _state(self, spec: VerticalSpec | ScoreSpec, phases: Iterable[str]) -> NodeJobState:
        state = NodeJobState(self.settings.state_dir, spec.id)
        state.require()
        job = state.get_json("job")
        if job.get("spec") != spec.digest:
            raise VerticalStateError(
                f"'{self.name}': the request's job text differs from the one job "
                f"'{spec.id}' started with"
            )
        allowed = tuple(phases)
        if job.get("phase") not in allowed:
            raise VerticalStateError(
                f"'{self.name}': job '{spec.id}' is at step '{job.get('phase')}', which "
                f"this request cannot follow"
            )
        return state

    def _phase(self, state: NodeJobState, phase: str) -> None:
        job = state.get_json("job")
        job["phase"] = phase
        state.put_json("job", job)

    def _channel(self, state: NodeJobState, spec: VerticalSpec | ScoreSpec, peer: str) -> Channel:
        name = f"channel-{peer}"

        def journal(blob: bytes) -> None:
            state.put(name, blob)

        return Channel.restore(
            state.get(name), job_id=spec.id, name=self.name, peer=peer, journal=journal
        )

    def _take(self, envelopes: Sequence[Envelope], sender: str, kind: str) -> bytes:
        for e in envelopes:
            if e.recipient == self.name and e.sender == sender and e.kind == kind:
                return e.data
        raise self._error(f"expected a '{kind}' from '{sender}' in this request")

    def _maybe(self, envelopes: Sequence[Envelope], sender: str, kind: str) -> bytes | None:
        found = [
            e.data
            for e in envelopes
            if e.recipient == self.name and e.sender == sender and e.kind == kind
        ]
        if len(found) > 1:
            raise self._error(f"got more than one '{kind}' from '{sender}'")
        return found[0] if found else None

    def _data_file(self) -> Path:
        return Path(self.settings.data_dir) / VERTICAL_FILE

    def _read(self, spec: VerticalSpec | ScoreSpec, state: NodeJobState | None) -> pd.DataFrame:
        """This party's rows, checked against the job (and, mid-job, against the file the
        job started with)."""
        path = self._data_file()
        if isinstance(spec, VerticalSpec):
            party = spec.parties[self.name]
            label = None
            if party.label is not None and party.label_values is not None:
                label = (party.label, party.label_values)
            frame = read_vertical_party(path, party.id_column, party.columns, label)
        else:
            model = ModelPart.load(self.settings.model_dir, spec.model, self.name)
            frame = read_vertical_party(
                path, model.id_column, model.columns, ignore=(model.label,) if model.label else ()
            )
        if state is not None:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if state.get_json("job").get("data") != digest:
                raise VerticalStateError(
                    f"'{self.name}': its data file changed since job '{spec.id}' started"
                )
        return frame

    def _ids(self, spec: VerticalSpec | ScoreSpec, frame: pd.DataFrame) -> list[str]:
        column = (
            spec.parties[self.name].id_column
            if isinstance(spec, VerticalSpec)
            else ModelPart.load(self.settings.model_dir, spec.model, self.name).id_column
        )
        return [str(v) for v in frame[column]]

    def _psi_config(self, spec: VerticalSpec | ScoreSpec) -> PsiConfig:
        return PsiConfig(spec.id, spec.min_intersection, spec.case_fold)

    def _key(self, spec: VerticalSpec, state: NodeJobState) -> PublicKey | None:
        blob = state.get("key")
        return None if not blob else PublicKey.from_bytes(blob)

    # -- steps --

    def hello(self, step: VStep, request: HelloRequest) -> RelayReply:
        """Check the job against this node's settings, pin the key, offer channels."""
        spec = self._spec(request.spec)
        if isinstance(spec, VerticalSpec):
            if spec.aggregation is Aggregation.PLAINTEXT and not self.settings.allow_plaintext:
                raise self._error(
                    f"refuses job '{spec.id}': aggregation 'plaintext' would show its "
                    "gradients to the coordinator, and this node does not allow it"
                )
            if spec.aggregation is Aggregation.PAILLIER:
                key = PublicKey.from_bytes(request.key)
                if key.bits != spec.key_bits or key.bits < MIN_PAILLIER_BITS:
                    raise self._error(
                        f"the arbiter's key has {key.bits} bits; job '{spec.id}' says "
                        f"{spec.key_bits} (at least {MIN_PAILLIER_BITS})"
                    )
            elif request.key:
                raise self._error("a plaintext job takes no key")
            if (Path(self.settings.model_dir) / spec.id).exists():
                raise self._error(f"already holds a model part of job '{spec.id}'")
        else:
            model = ModelPart.load(self.settings.model_dir, spec.model, self.name)
            if model.guest != spec.guest or model.hosts != spec.hosts:
                raise self._error(f"model '{spec.model}' was trained with other parties")
            if self._is_guest(spec) and self.settings.output_dir is None:
                raise self._error("has no output folder for target lists")
        self._read(spec, None)  # refuse a bad data file before anything starts
        state = NodeJobState(self.settings.state_dir, spec.id)
        state.create()
        digest = hashlib.sha256(self._data_file().read_bytes()).hexdigest()
        state.put_json("job", {"spec": spec.digest, "phase": "hello", "data": digest})
        state.put("key", request.key if isinstance(spec, VerticalSpec) else b"")
        out = []
        for peer in self._peers(spec):
            pending, offer = start_channel(
                self.settings.identity, self.settings.manifest, job_id=spec.id, peer=peer
            )
            state.put(f"pending-{peer}", pending.export_state())
            out.append(Envelope(self.name, peer, "offer", offer.to_bytes()))
        return RelayReply(self.name, pack_envelopes(out))

    def psi(self, step: VStep, request: RelayRequest) -> RelayReply:
        """Complete the channels and send the blinded ids, sealed."""
        spec = self._spec(request.spec)
        state = self._state(spec, ["hello"])
        envelopes = unpack_envelopes(request.envelopes)
        for peer in self._peers(spec):
            offer = ChannelOffer.from_bytes(self._take(envelopes, peer, "offer"))
            pending = PendingChannel.restore(
                self.settings.identity, self.settings.manifest, state.get(f"pending-{peer}")
            )
            state.put(f"channel-{peer}", pending.complete(offer).export_state())
            state.delete(f"pending-{peer}")
        ids = self._ids(spec, self._read(spec, state))
        config = self._psi_config(spec)
        out = []
        if self._is_guest(spec):
            guest = PsiGuest(config, ids, spec.hosts)
            blinded = {h: guest.blinded_for(h).to_bytes() for h in spec.hosts}
            state.put("psi", guest.export_state())
            for h in spec.hosts:
                sealed = self._channel(state, spec, h).seal("psi/guest-blinded", blinded[h])
                out.append(Envelope(self.name, h, "psi-guest-blinded", sealed))
        else:
            host = PsiHost(config, ids, self.name)
            mine = host.blinded().to_bytes()
            state.put("psi", host.export_state())
            sealed = self._channel(state, spec, spec.guest).seal("psi/host-blinded", mine)
            out.append(Envelope(self.name, spec.guest, "psi-host-blinded", sealed))
        self._phase(state, "psi")
        return RelayReply(self.name, pack_envelopes(out))

    def psi_match(self, step: VStep, request: RelayRequest) -> RelayReply:
        """Host: double-blind the guest's list."""
        spec = self._spec(request.spec)
        state = self._state(spec, ["psi"])
        channel = self._channel(state, spec, spec.guest)
        data = self._take(unpack_envelopes(request.envelopes), spec.guest, "psi-guest-blinded")
        theirs = BlindedIds.from_bytes(channel.open("psi/guest-blinded", data))
        ids = self._ids(spec, self._read(spec, state))
        host = PsiHost.restore(self._psi_config(spec), ids, self.name, state.get("psi"))
        answer = host.double_blind(theirs).to_bytes()
        state.put("psi", host.export_state())
        sealed = channel.seal("psi/double-blinded", answer)
        self._phase(state, "matched")
        envelope = Envelope(self.name, spec.guest, "psi-double-blinded", sealed)
        return RelayReply(self.name, pack_envelopes([envelope]))

    def psi_align(self, step: VStep, request: RelayRequest) -> AlignedReply:
        """Guest: match every host's answers, send the alignments, prepare its rows."""
        spec = self._spec(request.spec)
        state = self._state(spec, ["psi"])
        envelopes = unpack_envelopes(request.envelopes)
        frame = self._read(spec, state)
        guest = PsiGuest.restore(
            self._psi_config(spec), self._ids(spec, frame), spec.hosts, state.get("psi")
        )
        channels = {h: self._channel(state, spec, h) for h in spec.hosts}
        for h in spec.hosts:
            theirs = channels[h].open(
                "psi/host-blinded", self._take(envelopes, h, "psi-host-blinded")
            )
            guest.receive_host_ids(BlindedIds.from_bytes(theirs))
            double = channels[h].open(
                "psi/double-blinded", self._take(envelopes, h, "psi-double-blinded")
            )
            guest.receive_double_blinded(DoubleBlinded.from_bytes(double))
        result, alignments = guest.finish()
        rows = np.asarray(result.rows, dtype=np.int64)
        self._prepare(spec, state, frame, rows)
        state.delete("psi")  # the scalars are not needed any more
        out = []
        for h in spec.hosts:
            sealed = channels[h].seal("psi/alignment", alignments[h].to_bytes())
            out.append(Envelope(self.name, h, "psi-alignment", sealed))
        self._phase(state, "aligned")
        return AlignedReply(self.name, len(rows), pack_envelopes(out))

    def _prepare(
        self,
        spec: VerticalSpec | ScoreSpec,
        state: NodeJobState,
        frame: pd.DataFrame,
        rows: IntArray,
    ) -> None:
        """After PSI: this party's aligned rows, encoded (training) or their positions."""
        if not isinstance(spec, VerticalSpec):
            state.put_array("rows", rows)
            return
        train_pos, test_pos = split_positions(len(rows), spec.test_fraction, spec.eval_seed)
        if len(test_pos) < VFL_MIN_TEST_ROWS or len(train_pos) < VFL_MIN_BATCH_ROWS:
            raise self._error(
                f"{len(rows)} aligned rows give {len(train_pos)} training and {len(test_pos)} "
                f"held-out rows; the job needs at least {VFL_MIN_BATCH_ROWS} and "
                f"{VFL_MIN_TEST_ROWS}"
            )
        party = spec.parties[self.name]
        schema = party.schema
        train = frame.iloc[rows[train_pos]].reset_index(drop=True)
        test = frame.iloc[rows[test_pos]].reset_index(drop=True)
        encoder = _fit_encoder(train, schema)
        state.put_array("x-train", _float64(encoder.transform(train)))
        state.put_array("x-test", _float64(encoder.transform(test)))
        state.put_json("encoder", {"means": list(encoder.means), "stds": list(encoder.stds)})
        if party.label is not None:
            state.put_array("y-train", train[party.label].to_numpy(np.int64))
            state.put_array("y-test", test[party.label].to_numpy(np.int64))

    def _host_role(self, spec: VerticalSpec, state: NodeJobState) -> VflHost:
        host = VflHost(
            self.name,
            state.get_array("x-train"),
            spec.train,
            self._key(spec, state),
            hosts=len(spec.hosts),
            executor=self.settings.executor,
            workers=self.settings.workers,
        )
        if state.has("vfl"):
            host.restore_state(state.get("vfl"))
        return host

    def _guest_role(self, spec: VerticalSpec, state: NodeJobState) -> VflGuest:
        guest = VflGuest(
            self.name,
            state.get_array("x-train"),
            state.get_array("y-train"),
            spec.train,
            self._key(spec, state),
            spec.hosts,
            executor=self.settings.executor,
            workers=self.settings.workers,
        )
        if state.has("vfl"):
            guest.restore_state(state.get("vfl"))
        return guest

    def _finish_alignment(
        self, spec: VerticalSpec | ScoreSpec, state: NodeJobState, envelopes: Sequence[Envelope]
    ) -> None:
        """Host: turn the guest's alignment into this party's aligned rows."""
        channel = self._channel(state, spec, spec.guest)
        data = channel.open("psi/alignment", self._take(envelopes, spec.guest, "psi-alignment"))
        frame = self._read(spec, state)
        host = PsiHost.restore(
            self._psi_config(spec), self._ids(spec, frame), self.name, state.get("psi")
        )
        result = host.finish(Alignment.from_bytes(data))
        self._prepare(spec, state, frame, np.asarray(result.rows, dtype=np.int64))
        state.delete("psi")

    def _train_spec(self, request: RelayRequest) -> VerticalSpec:
        spec = self._spec(request.spec)
        if not isinstance(spec, VerticalSpec):
            raise self._error(f"job '{spec.id}' is not a training job")
        return spec

    def forward(self, step: VStep, request: RelayRequest) -> RelayReply:
        """Host: [alignment,] apply the opened gradient, [loss share,] partial scores."""
        spec = self._train_spec(request)
        state = self._state(spec, ["matched", "training"])
        envelopes = unpack_envelopes(request.envelopes)
        if state.get_json("job")["phase"] == "matched":
            self._finish_alignment(spec, state, envelopes)
            self._phase(state, "training")
        host = self._host_role(spec, state)
        opened = self._maybe(envelopes, COORDINATOR, "opened-gradient")
        if opened is not None:
            host.update(OpenedGradient.from_bytes(opened))
        channel = self._channel(state, spec, spec.guest)
        out = []
        step_name, epoch, _ = host.position
        if step_name == "loss":
            share = host.loss_share(epoch).to_bytes()
            state.put("vfl", host.export_state())
            sealed = channel.seal(f"vfl/loss/{epoch}", share)
            out.append(Envelope(self.name, spec.guest, "loss-share", sealed))
        if request.epoch > 0:
            forward = host.forward(request.epoch, request.batch).to_bytes()
            state.put("vfl", host.export_state())
            sealed = channel.seal(_topic_forward(request.epoch, request.batch), forward)
            out.append(Envelope(self.name, spec.guest, "forward", sealed))
        state.put("vfl", host.export_state())
        return RelayReply(self.name, pack_envelopes(out))

    def residual(self, step: VStep, request: RelayRequest) -> RelayReply:
        """Guest: apply its opened gradient, [the epoch's loss,] residuals and gradient."""
        spec = self._train_spec(request)
        state = self._state(spec, ["aligned", "training"])
        if state.get_json("job")["phase"] == "aligned":
            self._phase(state, "training")
        envelopes = unpack_envelopes(request.envelopes)
        guest = self._guest_role(spec, state)
        opened = self._maybe(envelopes, COORDINATOR, "opened-gradient")
        if opened is not None:
            guest.update(OpenedGradient.from_bytes(opened))
        channels = {h: self._channel(state, spec, h) for h in spec.hosts}
        out = []
        step_name, epoch, _ = guest.position
        if step_name == "loss":
            shares = [
                LossShare.from_bytes(
                    channels[h].open(f"vfl/loss/{epoch}", self._take(envelopes, h, "loss-share"))
                )
                for h in spec.hosts
            ]
            loss = guest.loss(shares)
            out.append(Envelope(self.name, COORDINATOR, "encrypted-loss", loss.to_bytes()))
        if request.epoch > 0:
            topic = _topic_forward(request.epoch, request.batch)
            forwards = [
                HostForward.from_bytes(channels[h].open(topic, self._take(envelopes, h, "forward")))
                for h in spec.hosts
            ]
            residual, masked = guest.residuals(forwards)
            state.put("vfl", guest.export_state())
            payload = residual.to_bytes()
            for h in spec.hosts:
                sealed = channels[h].seal(_topic_residual(request.epoch, request.batch), payload)
                out.append(Envelope(self.name, h, "residual", sealed))
            out.append(Envelope(self.name, COORDINATOR, "masked-gradient", masked.to_bytes()))
        state.put("vfl", guest.export_state())
        return RelayReply(self.name, pack_envelopes(out))

    def gradient(self, step: VStep, request: RelayRequest) -> RelayReply:
        """Host: its masked gradient of the batch, from the guest's encrypted residuals."""
        spec = self._train_spec(request)
        state = self._state(spec, ["training"])
        host = self._host_role(spec, state)
        channel = self._channel(state, spec, spec.guest)
        data = self._take(unpack_envelopes(request.envelopes), spec.guest, "residual")
        topic = _topic_residual(request.epoch, request.batch)
        masked = host.gradient(GuestResidual.from_bytes(channel.open(topic, data)))
        state.put("vfl", host.export_state())
        return RelayReply(
            self.name,
            pack_envelopes(
                [Envelope(self.name, COORDINATOR, "masked-gradient", masked.to_bytes())]
            ),
        )

    def _model_part(
        self, spec: VerticalSpec, state: NodeJobState, weights: FloatArray, intercept: float
    ) -> ModelPart:
        party = spec.parties[self.name]
        encoder = state.get_json("encoder")
        return ModelPart(
            job=spec.id,
            party=self.name,
            guest=spec.guest,
            hosts=spec.hosts,
            id_column=party.id_column,
            raw_columns=party.raw_columns,
            label=party.label,
            means=tuple(float(v) for v in encoder["means"]),
            stds=tuple(float(v) for v in encoder["stds"]),
            weights=weights,
            intercept=intercept,
            feature_clip=spec.train.feature_clip,
            feature_bits=spec.train.feature_bits,
            spec_digest=spec.digest,
            dataset=party.dataset,
        )

    def finish(self, step: VStep, request: RelayRequest) -> RelayReply:
        """Host: keep its model part; partial scores of the held-out rows to the guest."""
        spec = self._train_spec(request)
        state = self._state(spec, ["training"])
        host = self._host_role(spec, state)
        if host.position[0] not in ("forward", "gradient"):
            raise self._error("training did not end at an epoch's end")
        self._model_part(spec, state, host.weights, 0.0).save(self.settings.model_dir)
        scores = host.partial_scores(state.get_array("x-test")).to_bytes()
        sealed = self._channel(state, spec, spec.guest).seal("vfl/test-scores", scores)
        state.clear()
        return RelayReply(
            self.name, pack_envelopes([Envelope(self.name, spec.guest, "test-scores", sealed)])
        )

    def evaluate(self, step: VStep, request: RelayRequest) -> MetricsReply:
        """Guest: keep its model part; AUC, KS and lift of the held-out rows, released."""
        spec = self._train_spec(request)
        state = self._state(spec, ["training"])
        guest = self._guest_role(spec, state)
        envelopes = unpack_envelopes(request.envelopes)
        scores = [
            PartialScores.from_bytes(
                self._channel(state, spec, h).open(
                    "vfl/test-scores", self._take(envelopes, h, "test-scores")
                )
            )
            for h in spec.hosts
        ]
        probabilities = guest.score(state.get_array("x-test"), scores)
        labels = state.get_array("y-test")
        try:
            metrics = global_metrics(ScoreHistogram.from_scores(probabilities, labels, METRIC_BINS))
        except ValueError as exc:
            raise self._error(f"cannot evaluate the held-out rows: {exc}") from None
        self._model_part(spec, state, guest.weights, guest.intercept).save(self.settings.model_dir)
        state.clear()
        return MetricsReply(
            self.name, len(labels), metrics.auc, metrics.ks, metrics.lift_10, metrics.lift_20
        )

    def _score_spec(self, request: RelayRequest) -> ScoreSpec:
        spec = self._spec(request.spec)
        if not isinstance(spec, ScoreSpec):
            raise self._error(f"job '{spec.id}' is not a scoring job")
        return spec

    def _score_rows(
        self, spec: ScoreSpec, state: NodeJobState, rows: IntArray
    ) -> tuple[pd.DataFrame, FloatArray]:
        model = ModelPart.load(self.settings.model_dir, spec.model, self.name)
        frame = self._read(spec, state).iloc[rows].reset_index(drop=True)
        features = _float64(model.encoder().transform(frame))
        return frame, model.partial_scores(features) + model.intercept

    def score_hosts(self, step: VStep, request: RelayRequest) -> RelayReply:
        """Host: partial scores of the aligned customers to the guest, over the channel."""
        spec = self._score_spec(request)
        state = self._state(spec, ["matched"])
        self._finish_alignment(spec, state, unpack_envelopes(request.envelopes))
        _, scores = self._score_rows(spec, state, state.get_array("rows"))
        message = PartialScores(self.name, scores).to_bytes()
        sealed = self._channel(state, spec, spec.guest).seal("score/partial-scores", message)
        state.clear()
        return RelayReply(
            self.name, pack_envelopes([Envelope(self.name, spec.guest, "partial-scores", sealed)])
        )

    def score_guest(self, step: VStep, request: RelayRequest) -> ScoredReply:
        """Guest: joint scores of its aligned customers; the ranked target list, kept here."""
        spec = self._score_spec(request)
        state = self._state(spec, ["aligned"])
        envelopes = unpack_envelopes(request.envelopes)
        frame, total = self._score_rows(spec, state, state.get_array("rows"))
        for h in spec.hosts:
            data = self._channel(state, spec, h).open(
                "score/partial-scores", self._take(envelopes, h, "partial-scores")
            )
            part = PartialScores.from_bytes(data)
            if part.party != h or part.values.shape != total.shape:
                raise self._error(f"'{h}' sent partial scores that do not fit")
            total = total + part.values
        probabilities = 1.0 / (1.0 + np.exp(-total))
        model = ModelPart.load(self.settings.model_dir, spec.model, self.name)
        ids = frame[model.id_column].astype(str).to_numpy()
        order = np.lexsort((ids, -probabilities))
        n = len(order)
        ranked = pd.DataFrame(
            {
                "id": ids[order],
                "score": [f"{p:.6f}" for p in probabilities[order]],
                "rank": np.arange(1, n + 1),
                "decile": np.arange(n) * 10 // max(n, 1) + 1,
            }
        )
        assert self.settings.output_dir is not None  # checked at hello
        output = Path(self.settings.output_dir)
        output.mkdir(parents=True, exist_ok=True, mode=JOB_STATE_DIR_MODE)
        write_text_atomic(
            output / f"{spec.id}.csv",
            ranked.to_csv(index=False, lineterminator="\n"),
            mode=JOB_STATE_FILE_MODE,
        )
        state.clear()
        return ScoredReply(self.name, n)

    def abort(self, request: AbortRequest) -> AbortReply:
        """Drop the job's state (its secrets); a model part already kept stays."""
        try:
            spec = parse_vertical(request.spec)
        except SpecError:
            return AbortReply(self.name)
        NodeJobState(self.settings.state_dir, spec.id).clear()
        return AbortReply(self.name)

    def handle(self, step: VStep, request: Request) -> Reply:
        """Answer one request: the single entry point an adapter calls."""
        if step is VStep.ABORT and isinstance(request, AbortRequest):
            return self.abort(request)
        if isinstance(request, HelloRequest) and step in (VStep.HELLO, VStep.SCORE_HELLO):
            spec = self._spec(request.spec)
            self._check_step(spec, step)
            return self.hello(step, request)
        if not isinstance(request, RelayRequest):
            raise self._error(f"step '{step}' does not take a {type(request).__name__}")
        spec = self._spec(request.spec)
        self._check_step(spec, step)
        handlers: dict[VStep, Callable[[VStep, RelayRequest], Reply]] = {
            VStep.PSI: self.psi,
            VStep.SCORE_PSI: self.psi,
            VStep.PSI_MATCH: self.psi_match,
            VStep.SCORE_MATCH: self.psi_match,
            VStep.PSI_ALIGN: self.psi_align,
            VStep.SCORE_ALIGN: self.psi_align,
            VStep.FORWARD: self.forward,
            VStep.RESIDUAL: self.residual,
            VStep.GRADIENT: self.gradient,
            VStep.FINISH: self.finish,
            VStep.EVALUATE: self.evaluate,
            VStep.SCORE_HOSTS: self.score_hosts,
            VStep.SCORE_GUEST: self.score_guest,
        }
        if step not in handlers:
            raise self._error(f"step '{step}' does not take a RelayRequest")
        return handlers[step](step, request)

    def _check_step(self, spec: VerticalSpec | ScoreSpec, step: VStep) -> None:
        training = isinstance(spec, VerticalSpec)
        if (step in _TRAIN_STEPS) != training:
            raise self._error(f"step '{step}' is not a step of job type of '{spec.id}'")
        if step in _GUEST_STEPS and not self._is_guest(spec):
            raise self._error(f"step '{step}' is the guest's, and this node is a host")
        if step in _HOST_STEPS and self._is_guest(spec):
            raise self._error(f"step '{step}' is a host's, and this node is the guest")


# --- transport ------------------------------------------------------------------------------------


class Transport(Protocol):
    """Delivers one request to some of the job's parties and collects their replies.

    Implementations raise :class:`JobFailedError` naming the party when a node fails or
    does not answer; they never return a partial set.
    """

    def broadcast(
        self, step: VStep, request: Request, to: Sequence[str] | None = None
    ) -> Mapping[str, Reply]:
        """Send ``request`` for ``step`` to the parties ``to``; replies by party name."""
        ...


Observer = Callable[[VStep, str, Request, Reply | None], None]


class InProcessTransport:
    """Builds a fresh node for every message and calls it, in this process.

    ``builders`` make each party's :class:`VerticalNode` (from its settings: its data,
    state and model folders on disk), so no role survives from one message to the next,
    as in a deployed SuperNode. For tests and benchmarks: all parties share one process,
    so it isolates nothing. ``observe`` sees every request and reply (``None`` when the
    node failed).
    """

    def __init__(
        self,
        builders: Mapping[str, Callable[[], VerticalNode]],
        observe: Observer | None = None,
    ) -> None:
        self.builders = builders
        self.observe = observe

    def broadcast(
        self, step: VStep, request: Request, to: Sequence[str] | None = None
    ) -> Mapping[str, Reply]:
        """Hand ``request`` to a freshly built node of each party ``to``."""
        replies: dict[str, Reply] = {}
        for party in to if to is not None else list(self.builders):
            try:
                reply = self.builders[party]().handle(step, request)
            except FedpropError as exc:
                if self.observe is not None:
                    self.observe(step, party, request, None)
                raise JobFailedError(f"{step.value}: party '{party}' failed: {exc}") from None
            if self.observe is not None:
                self.observe(step, party, request, reply)
            replies[party] = reply
        return replies


# --- the coordinator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochStats:
    """One epoch as the coordinator saw it."""

    epoch: int
    loss: float
    seconds: float
    batches: int
    hops: int
    bytes: int


@dataclass(frozen=True)
class VerticalResult:
    """What the coordinator holds after a ``vfl-train`` job."""

    job: str
    intersection: int
    train_rows: int
    test_rows: int
    epochs: tuple[EpochStats, ...]
    stopped_early: bool
    metrics: Mapping[str, float]
    setup_seconds: float
    psi_seconds: float
    seconds: float
    hops: int
    hops_by_step: Mapping[str, int]
    bytes: int


@dataclass(frozen=True)
class ScoreResult:
    """What the coordinator holds after a ``vfl-score`` job: two counts."""

    job: str
    intersection: int
    rows: int
    seconds: float
    hops: int
    bytes: int


ProgressFn = Callable[[EpochStats], None]


class VerticalCoordinator:
    """The coordinator of a vertical job: relays envelopes and is the arbiter.

    It keeps everything it held in :attr:`transcript` (every request and reply) so tests
    can check it from an attacker's side, and its arbiter in :attr:`arbiter`.
    """

    def __init__(
        self,
        spec: VerticalSpec | ScoreSpec,
        manifest: Manifest,
        transport: Transport,
        *,
        progress: ProgressFn | None = None,
        keep_transcript: bool = False,
    ) -> None:
        check_parties(manifest, spec.members)
        self.spec = spec
        self.manifest = manifest
        self.transport = transport
        self.progress = progress
        self.keep_transcript = keep_transcript
        self.transcript: list[tuple[VStep, Request, Mapping[str, Reply]]] = []
        self.hops = 0
        self.hops_by_step: dict[str, int] = {}
        self.bytes = 0
        self.mail: dict[str, list[Envelope]] = {p: [] for p in spec.members}
        self.key: PrivateKey | None = None
        self.arbiter: VflArbiter | None = None

    def send(self, step: VStep, request: Request, to: Sequence[str]) -> Mapping[str, Reply]:
        """One hop: ``request`` to the parties ``to``; checks and counts the replies."""
        replies = self.transport.broadcast(step, request, to)
        if set(replies) != set(to):
            raise JobFailedError(
                f"{step.value}: replies from {', '.join(sorted(replies)) or 'nobody'}, "
                f"expected {', '.join(to)}"
            )
        self.hops += 1
        self.hops_by_step[step.value] = self.hops_by_step.get(step.value, 0) + 1
        self.bytes += message_size(request) * len(to)
        for party, reply in replies.items():
            if not isinstance(reply, REPLIES[step]):
                raise JobFailedError(f"{step.value}: '{party}' sent a {type(reply).__name__}")
            if getattr(reply, "party", party) != party:
                raise JobFailedError(f"{step.value}: '{party}' answered as another party")
            self.bytes += message_size(reply)
        if self.keep_transcript:
            self.transcript.append((step, request, dict(replies)))
        return replies

    def route(self, step: VStep, replies: Mapping[str, Reply]) -> list[Envelope]:
        """File each reply's envelopes for their recipients; return those for the arbiter."""
        mine = []
        for party, reply in replies.items():
            data = getattr(reply, "envelopes", None)
            if data is None:
                continue
            try:
                envelopes = unpack_envelopes(data)
            except VerticalError as exc:
                raise JobFailedError(f"{step.value}: '{party}': {exc}") from None
            for e in envelopes:
                if e.sender != party:
                    raise JobFailedError(
                        f"{step.value}: '{party}' sent an envelope as '{e.sender}'"
                    )
                if e.recipient == COORDINATOR:
                    mine.append(e)
                elif e.recipient in self.mail and e.recipient != party:
                    self.mail[e.recipient].append(e)
                else:
                    raise JobFailedError(
                        f"{step.value}: '{party}' addressed '{e.recipient}', not a peer"
                    )
        return mine

    def relay(
        self, step: VStep, to: Sequence[str], epoch: int = 0, batch: int = 0
    ) -> tuple[Mapping[str, Reply], list[Envelope]]:
        """Send the mail waiting for ``to`` with a step; route what comes back."""
        envelopes = [e for p in to for e in self.mail[p]]
        for p in to:
            self.mail[p] = []
        request = RelayRequest(self.spec.text, epoch, batch, pack_envelopes(envelopes))
        replies = self.send(step, request, to)
        return replies, self.route(step, replies)

    def abort(self, reason: str) -> None:
        """Best effort: tell every party to drop the job's state."""
        with contextlib.suppress(FedpropError):
            self.transport.broadcast(
                VStep.ABORT, AbortRequest(self.spec.text, reason), list(self.spec.members)
            )

    def align(self, hello: VStep, psi: VStep, match: VStep, align: VStep, key: bytes) -> int:
        """Handshake and PSI; the intersection size (the only result the coordinator gets)."""
        spec = self.spec
        members = list(spec.members)
        self.route(hello, self.send(hello, HelloRequest(spec.text, key), members))
        self.relay(psi, members)
        self.relay(match, list(spec.hosts))
        replies, _ = self.relay(align, [spec.guest])
        aligned = replies[spec.guest]
        assert isinstance(aligned, AlignedReply)
        return aligned.rows

    def _arbiter_open(self, envelope: Envelope) -> Envelope:
        assert self.arbiter is not None
        try:
            opened = self.arbiter.open(MaskedGradient.from_bytes(envelope.data))
        except FedpropError as exc:
            raise JobFailedError(f"arbiter: the gradient of '{envelope.sender}': {exc}") from None
        if opened.party != envelope.sender:
            raise JobFailedError(f"arbiter: '{envelope.sender}' sent another party's gradient")
        return Envelope(COORDINATOR, envelope.sender, "opened-gradient", opened.to_bytes())

    def train(self) -> VerticalResult:
        """Run the whole ``vfl-train`` job."""
        spec = self.spec
        assert isinstance(spec, VerticalSpec)
        config = spec.train
        started = time.perf_counter()
        key = b""
        if spec.aggregation is Aggregation.PAILLIER:
            self.key = generate_keypair(spec.key_bits)
            key = self.key.public.to_bytes()
        setup = time.perf_counter() - started
        intersection = self.align(VStep.HELLO, VStep.PSI, VStep.PSI_MATCH, VStep.PSI_ALIGN, key)
        psi_seconds = time.perf_counter() - started - setup
        train_pos, test_pos = split_positions(intersection, spec.test_fraction, spec.eval_seed)
        columns = {p: len(spec.parties[p].features) for p in spec.members}
        try:
            self.arbiter = VflArbiter(config, len(train_pos), columns, spec.guest, key=self.key)
        except FedpropError as exc:
            raise JobFailedError(f"arbiter: {exc}") from None
        hosts = list(spec.hosts)
        epochs: list[EpochStats] = []
        epoch, batch = 1, 0

        def batches(e: int) -> int:
            return len(batch_plan(len(train_pos), config, e))

        mark = (time.perf_counter(), self.hops, self.bytes)
        while True:
            ahead = (epoch, batch) if epoch <= config.max_epochs else (0, 0)
            self.relay(VStep.FORWARD, hosts, *ahead)
            _, to_arbiter = self.relay(VStep.RESIDUAL, [spec.guest], *ahead)
            losses = [e for e in to_arbiter if e.kind == "encrypted-loss"]
            masked = [e for e in to_arbiter if e.kind == "masked-gradient"]
            if len(losses) > 1 or len(masked) > (1 if ahead[0] else 0):
                raise JobFailedError(f"{VStep.RESIDUAL.value}: '{spec.guest}' sent too much")
            if losses:
                try:
                    result = self.arbiter.close_epoch(EncryptedLoss.from_bytes(losses[0].data))
                except FedpropError as exc:
                    raise JobFailedError(f"arbiter: the loss from '{spec.guest}': {exc}") from None
                now = time.perf_counter()
                stats = EpochStats(
                    epoch=result.epoch,
                    loss=result.loss,
                    seconds=now - mark[0],
                    batches=batches(result.epoch),
                    hops=self.hops - mark[1],
                    bytes=self.bytes - mark[2],
                )
                mark = (now, self.hops, self.bytes)
                epochs.append(stats)
                if self.progress is not None:
                    self.progress(stats)
                if result.stop:
                    break
            if not ahead[0] or not masked:
                raise JobFailedError("the arbiter did not stop after the last epoch")
            self.mail[spec.guest].append(self._arbiter_open(masked[0]))
            _, to_arbiter = self.relay(VStep.GRADIENT, hosts, epoch, batch)
            by_host = {e.sender: e for e in to_arbiter if e.kind == "masked-gradient"}
            if sorted(by_host) != sorted(hosts) or len(to_arbiter) != len(hosts):
                raise JobFailedError(f"{VStep.GRADIENT.value}: expected one gradient per host")
            for h in hosts:
                self.mail[h].append(self._arbiter_open(by_host[h]))
            batch += 1
            if batch == batches(epoch):
                epoch, batch = epoch + 1, 0
        for p in spec.members:
            self.mail[p] = []  # residuals computed ahead of a stop are never delivered
        self.relay(VStep.FINISH, hosts)
        replies, _ = self.relay(VStep.EVALUATE, [spec.guest])
        released = replies[spec.guest]
        assert isinstance(released, MetricsReply)
        metrics = {
            "auc": released.auc,
            "ks": released.ks,
            "lift_10": released.lift_10,
            "lift_20": released.lift_20,
        }
        return VerticalResult(
            job=spec.id,
            intersection=intersection,
            train_rows=len(train_pos),
            test_rows=len(test_pos),
            epochs=tuple(epochs),
            stopped_early=len(epochs) < config.max_epochs,
            metrics=metrics,
            setup_seconds=setup,
            psi_seconds=psi_seconds,
            seconds=time.perf_counter() - started,
            hops=self.hops,
            hops_by_step=dict(self.hops_by_step),
            bytes=self.bytes,
        )

    def score(self) -> ScoreResult:
        """Run the whole ``vfl-score`` job."""
        spec = self.spec
        assert isinstance(spec, ScoreSpec)
        started = time.perf_counter()
        intersection = self.align(
            VStep.SCORE_HELLO, VStep.SCORE_PSI, VStep.SCORE_MATCH, VStep.SCORE_ALIGN, b""
        )
        self.relay(VStep.SCORE_HOSTS, list(spec.hosts))
        replies, _ = self.relay(VStep.SCORE_GUEST, [spec.guest])
        scored = replies[spec.guest]
        assert isinstance(scored, ScoredReply)
        return ScoreResult(
            spec.id, intersection, scored.rows, time.perf_counter() - started, self.hops, self.bytes
        )


def _guarded(
    coordinator: VerticalCoordinator, run: Callable[[], T], abort: Callable[[str], None] | None
) -> T:
    try:
        return run()
    except FedpropError as exc:
        (abort or coordinator.abort)(str(exc))
        if isinstance(exc, JobFailedError):
            raise
        raise JobFailedError(f"job '{coordinator.spec.id}': {exc}") from None


def run_vertical(
    spec: VerticalSpec,
    transport: Transport,
    manifest: Manifest,
    *,
    progress: ProgressFn | None = None,
    abort: Callable[[str], None] | None = None,
) -> VerticalResult:
    """Run a whole ``vfl-train`` job over ``transport``; what the coordinator holds.

    On any failure every party is told to drop the job's state (by ``abort(reason)`` if
    given, else by a ``query.vfl_abort`` to every party), and :class:`JobFailedError` names
    the step and the party.
    """
    coordinator = VerticalCoordinator(spec, manifest, transport, progress=progress)
    return _guarded(coordinator, coordinator.train, abort)


def run_vertical_score(
    spec: ScoreSpec,
    transport: Transport,
    manifest: Manifest,
    *,
    abort: Callable[[str], None] | None = None,
) -> ScoreResult:
    """Run a whole ``vfl-score`` job over ``transport``; the coordinator learns two counts
    (failures as in :func:`run_vertical`)."""
    coordinator = VerticalCoordinator(spec, manifest, transport)
    return _guarded(coordinator, coordinator.score, abort)
