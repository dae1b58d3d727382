"""Vertical (hetero) logistic regression after Hardy et al. 2017: the protocol, one class per role.

Same customers, different columns. The rows of every party are already aligned (entity
alignment by PSI, :mod:`fedprop.protocols.psi`): row ``i`` is the same customer everywhere.

Roles:

- the **guest** (:class:`VflGuest`) holds the labels ``y``, its own columns ``X_A``, its
  weights ``w_A`` and the intercept;
- each **host** (:class:`VflHost`, one or more) holds its columns ``X_h`` and weights ``w_h``;
- the **arbiter** (:class:`VflArbiter`, run by the coordinator) holds the job's Paillier key
  pair, opens masked gradients and the summed loss, and decides when to stop.

Model and loss (Hardy et al.): labels ``y`` in {-1, +1}; the score is
``u = u_A + sum_h u_h`` with ``u_A = X_A w_A + b`` and ``u_h = X_h w_h``. The logistic loss is
replaced by its second-order Taylor expansion at 0, ``log 2 - y u / 2 + u^2 / 8``, whose
derivative in ``u`` is the residual ``d = u / 4 - y / 2``, linear in every party's score; a
party's gradient is ``X_p^T d / rows + l2 * w_p``. Since ``y^2 = 1`` the loss of a row is also
``log 2 - 1/2 + 2 d^2``, and ``sum_i d_i^2 = sum_p sum_i d_i u_p,i / 4 - sum_i d_i y_i / 2``:
every party can compute its share of the summed loss from its own gradient, so the loss costs
no extra multiplication of ciphertexts and works for any number of hosts (a host sending
``[[sum_i u_h,i^2]]``, the usual form, leaves out the cross terms between several hosts).

Fixed point (identical in both cipher modes): features are clipped to
``[-feature_clip, feature_clip]`` and rounded to ``feature_bits`` fractional bits
(``X = round(x * 2^fx)``); scores are clipped to ``[-score_clip, score_clip]`` and rounded to
``score_bits`` fractional bits (``U = round(u * 2^fs)``). Every party's weights stay in
float64, in its own memory. All arithmetic on encoded values is exact integer arithmetic, so
the encrypted run and the plaintext run (:attr:`CipherMode.PLAINTEXT`) compute the same
numbers, bit for bit; the only error is the encoding's.

One mini-batch (rows ``B``, the same for all parties: a seeded shuffle, :func:`batch_plan`;
``[[.]]`` is Paillier encryption under the arbiter's key):

1. each host -> guest, :class:`HostForward`: ``[[U_h,i]]`` for every row of the batch, fresh
   encryptions (the only per-row encryption a host makes);
2. guest -> hosts, :class:`GuestResidual`: ``[[D_i]] = prod_h [[U_h,i]] * Enc(M_i)`` with
   ``M_i = U_A,i - 2^(fs+1) y_i``, so ``D_i = 4 d_i 2^fs``. ``Enc(M_i)`` is a *fresh*
   encryption: had the guest added ``M_i`` as a plaintext (``c * (1 + M_i n)``), a host would
   divide ``[[D_i]]`` by its own ``[[U_h,i]]`` (one host) and read ``1 + M_i n``: the guest's
   scores and labels in clear. With fresh randomness the host cannot strip it.
   Guest -> arbiter at the same time, :class:`MaskedGradient`;
3. each party computes its encrypted gradient ``[[G_j]] = prod_i [[D_i]]^(X_ij)`` for every
   column ``j`` with one multi-exponentiation (:func:`~fedprop.crypto.paillier.multi_exponentiate`,
   small signed exponents: the encoded features), packs the columns into as few ciphertexts
   as fit (signed slots, wide enough for the sum over the batch), adds a fresh encryption of
   a uniform mask ``r`` modulo ``n`` to each, and sends them to the arbiter
   (:class:`MaskedGradient`); the guest's columns are its features and the intercept;
4. arbiter -> party, :class:`OpenedGradient`: the decrypted ``G + r mod n``; the party
   subtracts ``r``, decodes the slots and takes its gradient step.

At the end of an epoch each host sends the guest its loss share encrypted
(:class:`LossShare`), the guest adds its own (part of which, ``-2^(fs+1) sum_i D_i y_i``, it
only ever holds encrypted: a column ``-y`` of its multi-exponentiation) and sends the
arbiter one ciphertext (:class:`EncryptedLoss`); the arbiter decrypts the epoch's mean loss
and stops when it changed by less than ``tolerance`` (or after ``max_epochs``).

Round trips through the coordinator (every message goes through it; guest-host messages
ride an end-to-end encrypted channel it cannot read): per batch three (hosts: opened
gradient of the previous batch in, forward out; guest: forwards in, residuals and masked
gradient out; hosts: residuals in, masked gradient out), per epoch two more for the loss.
Large batches keep them few: 24,000 rows in batches of 2,000 take 38 round trips per epoch.

Security argument (semi-honest parties; no collusion of the arbiter with a party):

- the arbiter receives only masked gradients and the loss ciphertext. A masked gradient
  decrypts to ``G + r mod n`` with ``r`` uniform modulo ``n`` and fresh for every ciphertext:
  uniformly distributed whatever ``G`` is (a one-time pad over ``Z_n``). The loss is a sum
  over all parties and rows. It learns the summed loss of each epoch, the sizes of messages,
  nothing about labels, scores, residuals or any party's gradient. It opens each party's
  gradient of a batch once, with the number of ciphertexts the layout fixes;
- a host receives ``[[D_i]]`` (fresh Paillier ciphertexts: IND-CPA under the decisional
  composite residuosity assumption, and DJN's short-exponent assumption for the
  randomness) and its own opened gradient. It holds no private key and no plaintext
  residual; it learns its gradient ``X_h^T d`` per batch (``columns`` linear equations in
  the batch's residuals: see ``VFL_MIN_BATCH_ROWS``), as in Hardy et al. and FATE;
- the guest receives the hosts' ``[[U_h,i]]`` and loss shares (ciphertexts) and its own
  opened gradient ``X_A^T d`` and ``sum_i d_i``, from which it learns ``X_A^T u_H`` and
  ``sum_i u_H,i`` per batch (``u_H = sum_h u_h``): linear equations in the hosts' summed
  scores, never a host's feature or weight;
- prediction: each host sends the guest its partial scores ``u_h`` of the rows to score
  (:class:`PartialScores`, in clear, as FATE does); the guest adds its own and holds the
  scores. It learns one number per row and host, the host's share of that row's score:
  neither the host's columns nor its weights, but what the model needs to rank the row.

Limits: a malicious party could ask the arbiter to decrypt a ciphertext that is not its
gradient (one per batch: the arbiter refuses a second opening) and the guest could send
different residuals to different hosts; detecting that would take zero-knowledge proofs,
which this semi-honest protocol does not have. An arbiter colluding with a host learns the
residuals (the host's ``[[D_i]]`` under the arbiter's key), hence the labels; an arbiter
colluding with the guest learns the hosts' partial scores. State these limits to parties.

In :attr:`CipherMode.PLAINTEXT` (the baseline for quality and speed, as FATE's plaintext
cipher) the same steps carry the encoded integers in clear and nothing is masked: every
role reads everything it receives.

Roles are pure: no I/O, no clocks, no global state. :func:`train_in_process` wires them
together in one process for tests and benchmarks and counts the messages. A node that runs
every message in a fresh process saves a party between messages with ``export_state`` and
loads it into a party rebuilt from the same columns, labels, settings and key with
``restore_state`` (weights, intercept, position in the protocol, the masks of a gradient
awaiting its opening, the guest's encrypted loss part): secret, keep it owner-only.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from fedprop.crypto.paillier import (
    PaillierError,
    PrivateKey,
    PublicKey,
    add_ciphertexts,
    add_encryptions,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    decrypt_many,
    encrypt,
    encrypt_batch,
    generate_keypair,
    multi_exponentiate,
    pack_ciphertexts,
    scale_ciphertext,
)
from fedprop.crypto.params import (
    ALLOWED_PAILLIER_BITS,
    DEFAULT_PAILLIER_BITS,
    VFL_MESSAGE_LABEL,
    VFL_MIN_BATCH_ROWS,
    VFL_STATE_LABEL,
)
from fedprop.errors import FedpropError
from fedprop.framing import FramingError, join_frames, split_frames

__all__ = [
    "ARBITER",
    "CipherMode",
    "EncryptedLoss",
    "EpochRecord",
    "EpochResult",
    "GuestResidual",
    "Hop",
    "HostForward",
    "LossShare",
    "MaskedGradient",
    "OpenedGradient",
    "PartialScores",
    "VflArbiter",
    "VflConfig",
    "VflConfigError",
    "VflError",
    "VflGuest",
    "VflHost",
    "VflMessageError",
    "VflProtocolError",
    "VflRun",
    "batch_plan",
    "score_in_process",
    "train_in_process",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class VflError(FedpropError):
    """Base class of the vertical-training errors."""


class VflConfigError(VflError):
    """A training configuration or party input that the protocol cannot use."""


class VflMessageError(VflError):
    """Message bytes that are malformed (garbage, truncated, another protocol's)."""


class VflProtocolError(VflError):
    """A well-formed message that does not fit: wrong step, epoch, batch, party or size."""


class CipherMode(StrEnum):
    """How values travel: Paillier ciphertexts, or the same encoded integers in clear."""

    PAILLIER = "paillier"
    PLAINTEXT = "plaintext"


# --- configuration -------------------------------------------------------------------------


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VflConfigError(f"{what} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise VflConfigError(f"{what} must be finite, got {value}")
    return number


def _integer(value: object, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise VflConfigError(f"{what} must be an integer, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f"at least {low}"
        raise VflConfigError(f"{what} must be {bound}, got {value}")
    return value


@dataclass(frozen=True)
class VflConfig:
    """Training settings every role of a job shares (validated: :class:`VflConfigError`).

    ``learning_rate`` of epoch ``e`` is ``learning_rate / (1 + lr_decay * (e - 1))``;
    ``l2`` weighs ``l2 / 2 * |w|^2`` (never the intercept); training stops when the mean
    loss changed by less than ``tolerance`` from one epoch to the next, or after
    ``max_epochs``. ``seed`` fixes the order of rows in batches, nothing else (every random
    value of the protocol comes from the OS CSPRNG). Features are expected standardized:
    values beyond ``feature_clip`` are clipped (winsorized), which also bounds the slots.
    """

    learning_rate: float = 1.0
    lr_decay: float = 1.0
    batch_size: int = 2000
    l2: float = 0.0
    max_epochs: int = 10
    tolerance: float = 1e-4
    feature_clip: float = 4.0
    feature_bits: int = 12
    score_clip: float = 32.0
    score_bits: int = 16
    key_bits: int = DEFAULT_PAILLIER_BITS
    cipher: CipherMode = CipherMode.PAILLIER
    seed: int = 0

    def __post_init__(self) -> None:
        if _number(self.learning_rate, "learning_rate") <= 0:
            raise VflConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("lr_decay", "l2", "tolerance"):
            if _number(getattr(self, name), name) < 0:
                raise VflConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        _integer(self.batch_size, "batch_size", VFL_MIN_BATCH_ROWS, 2**24)
        _integer(self.max_epochs, "max_epochs", 1, 100_000)
        _integer(self.feature_bits, "feature_bits", 0, 24)
        _integer(self.score_bits, "score_bits", 4, 32)
        _integer(self.seed, "seed", 0)
        if not 0 < _number(self.feature_clip, "feature_clip") <= 2**16:
            raise VflConfigError(f"feature_clip must be in (0, 65536], got {self.feature_clip}")
        if not 0 < _number(self.score_clip, "score_clip") <= 2**16:
            raise VflConfigError(f"score_clip must be in (0, 65536], got {self.score_clip}")
        if self.key_bits not in ALLOWED_PAILLIER_BITS:
            allowed = ", ".join(str(b) for b in ALLOWED_PAILLIER_BITS)
            raise VflConfigError(f"key_bits must be one of {allowed}, got {self.key_bits}")
        try:
            object.__setattr__(self, "cipher", CipherMode(self.cipher))
        except ValueError:
            modes = ", ".join(m.value for m in CipherMode)
            raise VflConfigError(f"cipher must be one of {modes}, got {self.cipher!r}") from None

    def rate(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (1-based)."""
        return self.learning_rate / (1.0 + self.lr_decay * (epoch - 1))

    @property
    def feature_limit(self) -> int:
        """Largest encoded feature magnitude, ``round(feature_clip * 2^feature_bits)``."""
        return max(1, round(math.ldexp(self.feature_clip, self.feature_bits)))

    @property
    def score_limit(self) -> int:
        """Largest encoded score magnitude, ``round(score_clip * 2^score_bits)``."""
        return max(1, round(math.ldexp(self.score_clip, self.score_bits)))

    @property
    def loss_scale(self) -> int:
        """Loss units per unit of loss: ``2 d^2 = D^2 / (8 * 2^(2 score_bits))``."""
        return 8 << (2 * self.score_bits)


def batch_plan(rows: int, config: VflConfig, epoch: int) -> tuple[IntArray, ...]:
    """The row indices of each batch of ``epoch``: a shuffle seeded by ``(seed, epoch)``, cut
    into ``max(1, rows // batch_size)`` batches of equal size (within one row), so that no
    batch is smaller than ``batch_size`` unless all rows are. Every party derives the same
    plan; it is not secret."""
    rows = _integer(rows, "rows", VFL_MIN_BATCH_ROWS)
    epoch = _integer(epoch, "epoch", 1)
    order = np.random.default_rng([config.seed, epoch]).permutation(rows)
    count = max(1, rows // config.batch_size)
    return tuple(np.sort(part).astype(np.int64) for part in np.array_split(order, count))


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value


# --- fixed point -----------------------------------------------------------------------------


def _matrix(values: npt.ArrayLike, what: str, rows: int | None = None) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VflConfigError(f"{what} are not numbers: {exc}") from None
    if array.ndim != 2 or array.shape[1] < 1:
        raise VflConfigError(f"{what} must be a (rows, columns) matrix, got shape {array.shape}")
    if rows is not None and array.shape[0] != rows:
        raise VflConfigError(f"{what} have {array.shape[0]} rows, expected {rows}")
    if not np.isfinite(array).all():
        raise VflConfigError(f"{what} hold NaN or infinite values")
    return array


def _encode_features(x: FloatArray, config: VflConfig) -> IntArray:
    clipped = np.clip(x, -config.feature_clip, config.feature_clip)
    return np.rint(np.ldexp(clipped, config.feature_bits)).astype(np.int64)


def _quantized(encoded: IntArray, config: VflConfig) -> FloatArray:
    return np.ldexp(encoded.astype(np.float64), -config.feature_bits)


def _encode_scores(u: FloatArray, config: VflConfig) -> IntArray:
    limit = config.score_limit
    return np.clip(np.rint(np.ldexp(u, config.score_bits)), -limit, limit).astype(np.int64)


@dataclass(frozen=True)
class _Layout:
    """How a party's gradient columns sit in packed plaintexts."""

    columns: int
    slot_bits: int
    per_ciphertext: int

    @property
    def ciphertexts(self) -> int:
        return -(-self.columns // self.per_ciphertext)

    def groups(self) -> list[range]:
        step = self.per_ciphertext
        return [range(k, min(k + step, self.columns)) for k in range(0, self.columns, step)]


def _layout(config: VflConfig, columns: int, batch_rows: int, hosts: int) -> _Layout:
    """Slots wide enough for ``sum_i D_i X_ij`` over ``batch_rows`` rows, plus a sign bit.

    ``|D_i| <= hosts * S + S + 2^(fs+1)`` (``S`` the score limit), ``|X_ij| <=`` the feature
    limit (or 1: intercept). Packed values stay below ``2^(key_bits-3) < n / 2``, so a
    signed packed value never wraps modulo ``n``.
    """
    residual = (hosts + 1) * config.score_limit + (2 << config.score_bits)
    largest = batch_rows * residual * max(config.feature_limit, 1)
    slot_bits = largest.bit_length() + 1
    per = (config.key_bits - 3) // slot_bits
    if per < 1:
        raise VflConfigError(
            f"a gradient slot needs {slot_bits} bits, more than a {config.key_bits}-bit "
            "plaintext holds: lower batch_size, feature_bits or score_bits"
        )
    return _Layout(columns, slot_bits, per)


def _unpack_signed(value: int, count: int, slot_bits: int) -> list[int]:
    """The ``count`` signed slots of ``value = sum_j v_j 2^(j slot_bits)``, ``|v_j| < 2^(w-1)``."""
    full, half = 1 << slot_bits, 1 << (slot_bits - 1)
    out = []
    for _ in range(count):
        slot = value & (full - 1)
        if slot >= half:
            slot -= full
        out.append(slot)
        value = (value - slot) >> slot_bits
    if value != 0:
        raise VflProtocolError("an opened gradient does not decode: wrong mask or corrupted")
    return out


# --- integer vectors in bytes ------------------------------------------------------------------

_INTS_HEADER = struct.Struct(">4sBIH")  # magic, version, count, width in bytes
_INTS_MAGIC = b"FPIV"
_INTS_VERSION = 1


def _ints_to_bytes(values: Sequence[int]) -> bytes:
    width = max(((abs(v).bit_length() + 8) // 8 for v in values), default=1)
    head = _INTS_HEADER.pack(_INTS_MAGIC, _INTS_VERSION, len(values), width)
    return head + b"".join(v.to_bytes(width, "big", signed=True) for v in values)


def _ints_from_bytes(blob: bytes, count: int, what: str) -> list[int]:
    if len(blob) < _INTS_HEADER.size:
        raise VflMessageError(f"{what}: integer vector is truncated")
    magic, version, n, width = _INTS_HEADER.unpack_from(blob)
    if magic != _INTS_MAGIC or version != _INTS_VERSION:
        raise VflMessageError(f"{what}: not an integer vector of this version")
    if n != count:
        raise VflProtocolError(f"{what}: {n} values, expected {count}")
    if width < 1 or len(blob) != _INTS_HEADER.size + n * width:
        raise VflMessageError(f"{what}: integer vector of {len(blob)} bytes is malformed")
    view = memoryview(blob)[_INTS_HEADER.size :]
    return [int.from_bytes(view[i * width : (i + 1) * width], "big", signed=True) for i in range(n)]


# --- the cipher: Paillier, or the same integers in clear -----------------------------------------


class _Cipher(Protocol):
    def encrypt(self, values: Sequence[int]) -> list[int]: ...
    def add_fresh(self, items: Sequence[int], values: Sequence[int]) -> list[int]: ...
    def add(self, lists: Sequence[Sequence[int]]) -> list[int]: ...
    def columns(self, items: Sequence[int], exponents: IntArray) -> list[int]: ...
    def pack(self, items: Sequence[int], slot_bits: int) -> int: ...
    def scale(self, item: int, factor: int) -> int: ...
    def mask(self, item: int) -> tuple[int, int]: ...
    def unmask(self, opened: int, mask: int) -> int: ...
    def dump(self, items: Sequence[int]) -> bytes: ...
    def load(self, blob: bytes, count: int, what: str) -> list[int]: ...


@dataclass(frozen=True)
class _PaillierCipher:
    public: PublicKey
    executor: Executor | None
    workers: int

    def encrypt(self, values: Sequence[int]) -> list[int]:
        n = self.public.n
        return encrypt_batch(self.public, [v % n for v in values], self.executor, 2 * self.workers)

    def add_fresh(self, items: Sequence[int], values: Sequence[int]) -> list[int]:
        n = self.public.n
        plaintexts = [v % n for v in values]
        return add_encryptions(self.public, items, plaintexts, self.executor, 2 * self.workers)

    def add(self, lists: Sequence[Sequence[int]]) -> list[int]:
        return list(lists[0]) if len(lists) == 1 else add_ciphertexts(self.public, lists)

    def columns(self, items: Sequence[int], exponents: IntArray) -> list[int]:
        return multi_exponentiate(self.public, items, exponents, self.executor, self.workers)

    def pack(self, items: Sequence[int], slot_bits: int) -> int:
        return pack_ciphertexts(self.public, items, slot_bits)

    def scale(self, item: int, factor: int) -> int:
        return scale_ciphertext(self.public, item, factor)

    def mask(self, item: int) -> tuple[int, int]:
        r = secrets.randbelow(self.public.n)
        return add_ciphertexts(self.public, [[item], [encrypt(self.public, r)]])[0], r

    def unmask(self, opened: int, mask: int) -> int:
        n = self.public.n
        value = (opened - mask) % n
        return value - n if value > n // 2 else value

    def dump(self, items: Sequence[int]) -> bytes:
        return ciphertexts_to_bytes(self.public, items)

    def load(self, blob: bytes, count: int, what: str) -> list[int]:
        try:
            values = ciphertexts_from_bytes(self.public, blob)
        except PaillierError as exc:
            raise VflProtocolError(f"{what}: {exc}") from None
        if len(values) != count:
            raise VflProtocolError(f"{what}: {len(values)} ciphertexts, expected {count}")
        return values


@dataclass(frozen=True)
class _PlainCipher:
    def encrypt(self, values: Sequence[int]) -> list[int]:
        return [int(v) for v in values]

    def add_fresh(self, items: Sequence[int], values: Sequence[int]) -> list[int]:
        return [a + int(b) for a, b in zip(items, values, strict=True)]

    def add(self, lists: Sequence[Sequence[int]]) -> list[int]:
        return [sum(column) for column in zip(*lists, strict=True)]

    def columns(self, items: Sequence[int], exponents: IntArray) -> list[int]:
        bound = max((abs(v) for v in items), default=0) * int(np.abs(exponents).max(initial=0))
        if bound * max(len(items), 1) < 2**62:
            totals = np.asarray(items, dtype=np.int64) @ exponents
            return [int(v) for v in totals]
        objects = np.asarray(items, dtype=object)
        return [int(objects @ exponents[:, j].astype(object)) for j in range(exponents.shape[1])]

    def pack(self, items: Sequence[int], slot_bits: int) -> int:
        return sum(v << (j * slot_bits) for j, v in enumerate(items))

    def scale(self, item: int, factor: int) -> int:
        return item * factor

    def mask(self, item: int) -> tuple[int, int]:
        return item, 0

    def unmask(self, opened: int, mask: int) -> int:
        return opened - mask

    def dump(self, items: Sequence[int]) -> bytes:
        return _ints_to_bytes(items)

    def load(self, blob: bytes, count: int, what: str) -> list[int]:
        return _ints_from_bytes(blob, count, what)


def _cipher(
    config: VflConfig, public_key: PublicKey | None, executor: Executor | None, workers: int
) -> _Cipher:
    workers = _integer(workers, "workers", 1, 1024)
    if config.cipher is CipherMode.PLAINTEXT:
        if public_key is not None:
            raise VflConfigError("the plaintext cipher takes no public key")
        return _PlainCipher()
    if not isinstance(public_key, PublicKey):
        raise VflConfigError("the paillier cipher needs the arbiter's PublicKey")
    if public_key.bits != config.key_bits:
        raise VflConfigError(
            f"the arbiter's key has {public_key.bits} bits, the job says {config.key_bits}"
        )
    return _PaillierCipher(public_key, executor, workers)


# --- messages ------------------------------------------------------------------------------------

_M = TypeVar("_M", bound="_Message")
_U32 = struct.Struct(">I")
_MAX_NAME_BYTES = 128


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > _MAX_NAME_BYTES:
        raise VflMessageError(f"{what} must be a non-empty name of at most 128 bytes")
    return value


def _check_count(value: object, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**32:
        raise VflMessageError(f"{what} must be an integer in [{low}, 2**32), got {value!r}")
    return value


def _check_payload(value: object) -> bytes:
    if not isinstance(value, bytes) or not value:
        raise VflMessageError("a message payload must be non-empty bytes")
    return value


class _Message:
    """Shared bytes layout: frames ``label, kind, party, epoch, batch, payload``."""

    KIND: ClassVar[bytes]
    party: str
    epoch: int
    payload: bytes

    @property
    def _batch_field(self) -> int:
        return 0

    def to_bytes(self) -> bytes:
        """Canonical bytes (length-prefixed frames)."""
        fields = [self.party.encode(), _U32.pack(self.epoch), _U32.pack(self._batch_field)]
        return join_frames([VFL_MESSAGE_LABEL, self.KIND, *fields, self.payload])

    @classmethod
    def _parse(cls, data: bytes) -> tuple[str, int, int, bytes]:
        what = f"vfl {cls.__name__}"
        if not isinstance(data, bytes | bytearray | memoryview):
            raise VflMessageError(f"{what} must be bytes, not {type(data).__name__}")
        try:
            frames = split_frames(bytes(data), what)
        except FramingError as exc:
            raise VflMessageError(str(exc)) from None
        if len(frames) != 6:
            raise VflMessageError(f"{what}: {len(frames)} frames, expected 6")
        label, kind, party, epoch, batch, payload = frames
        if label != VFL_MESSAGE_LABEL:
            raise VflMessageError(f"{what}: not a vertical-training message of this version")
        if kind != cls.KIND:
            raise VflMessageError(f"{what}: a {kind[:32]!r} message")
        if len(epoch) != 4 or len(batch) != 4:
            raise VflMessageError(f"{what}: malformed epoch or batch field")
        try:
            name = party.decode()
        except UnicodeDecodeError:
            raise VflMessageError(f"{what}: the party name is not UTF-8") from None
        return name, _U32.unpack(epoch)[0], _U32.unpack(batch)[0], payload


@dataclass(frozen=True)
class _BatchMessage(_Message):
    """A message about one batch of an epoch, carrying a payload of ciphertexts."""

    party: str
    epoch: int
    batch: int
    payload: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.party, "party")
        _check_count(self.epoch, "epoch", 1)
        _check_count(self.batch, "batch", 0)
        _check_payload(self.payload)

    @property
    def _batch_field(self) -> int:
        return self.batch

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse :meth:`to_bytes` output; :class:`VflMessageError` if malformed."""
        party, epoch, batch, payload = cls._parse(data)
        return cls(party, epoch, batch, payload)


@dataclass(frozen=True)
class HostForward(_BatchMessage):
    """Host -> guest: ``[[U_h,i]]``, the host's encrypted partial scores of one batch."""

    KIND: ClassVar[bytes] = b"host-forward"


@dataclass(frozen=True)
class GuestResidual(_BatchMessage):
    """Guest -> every host: ``[[D_i]]``, fresh encryptions of ``4 d_i 2^fs`` of one batch."""

    KIND: ClassVar[bytes] = b"guest-residual"


@dataclass(frozen=True)
class MaskedGradient(_BatchMessage):
    """Party -> arbiter: the party's packed gradient of one batch, each ciphertext masked
    with a fresh uniform value modulo ``n``."""

    KIND: ClassVar[bytes] = b"masked-gradient"


@dataclass(frozen=True)
class OpenedGradient(_BatchMessage):
    """Arbiter -> party: the decrypted masked gradient (``G + r mod n``) of one batch."""

    KIND: ClassVar[bytes] = b"opened-gradient"


@dataclass(frozen=True)
class LossShare(_Message):
    """Host -> guest: the host's share of the epoch's summed loss, one ciphertext."""

    KIND: ClassVar[bytes] = b"loss-share"
    party: str
    epoch: int
    payload: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.party, "party")
        _check_count(self.epoch, "epoch", 1)
        _check_payload(self.payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> LossShare:
        """Parse :meth:`to_bytes` output; :class:`VflMessageError` if malformed."""
        party, epoch, batch, payload = cls._parse(data)
        if batch != 0:
            raise VflMessageError("vfl LossShare: malformed batch field")
        return cls(party, epoch, payload)


@dataclass(frozen=True)
class EncryptedLoss(_Message):
    """Guest -> arbiter: the summed loss of an epoch over ``rows`` rows, one ciphertext."""

    KIND: ClassVar[bytes] = b"encrypted-loss"
    party: str
    epoch: int
    rows: int
    payload: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.party, "party")
        _check_count(self.epoch, "epoch", 1)
        _check_count(self.rows, "rows", 1)
        _check_payload(self.payload)

    @property
    def _batch_field(self) -> int:
        return self.rows

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedLoss:
        """Parse :meth:`to_bytes` output; :class:`VflMessageError` if malformed."""
        party, epoch, rows, payload = cls._parse(data)
        return cls(party, epoch, rows, payload)


@dataclass(frozen=True)
class PartialScores:
    """Host -> guest, for scoring: ``u_h = X_h w_h`` of the rows to score, in clear."""

    KIND: ClassVar[bytes] = b"partial-scores"
    party: str
    values: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.party, "party")
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 1 or not np.isfinite(values).all():
            raise VflMessageError("partial scores must be a 1-D vector of finite numbers")
        object.__setattr__(self, "values", values)

    def to_bytes(self) -> bytes:
        """Canonical bytes: frames ``label, kind, party, float64 big-endian values``."""
        payload = self.values.astype(">f8").tobytes()
        return join_frames([VFL_MESSAGE_LABEL, self.KIND, self.party.encode(), payload])

    @classmethod
    def from_bytes(cls, data: bytes) -> PartialScores:
        """Parse :meth:`to_bytes` output; :class:`VflMessageError` if malformed."""
        what = "vfl PartialScores"
        if not isinstance(data, bytes | bytearray | memoryview):
            raise VflMessageError(f"{what} must be bytes, not {type(data).__name__}")
        try:
            frames = split_frames(bytes(data), what)
        except FramingError as exc:
            raise VflMessageError(str(exc)) from None
        if len(frames) != 4 or frames[0] != VFL_MESSAGE_LABEL or frames[1] != cls.KIND:
            raise VflMessageError(f"{what}: not a partial-scores message of this version")
        if len(frames[3]) % 8:
            raise VflMessageError(f"{what}: {len(frames[3])} bytes of values")
        try:
            party = frames[2].decode()
        except UnicodeDecodeError:
            raise VflMessageError(f"{what}: the party name is not UTF-8") from None
        return cls(party, np.frombuffer(frames[3], dtype=">f8").astype(np.float64))


# --- roles ---------------------------------------------------------------------------------------


class _Party:
    """What the guest and the hosts share: encoded features, weights, the step order."""

    def __init__(
        self,
        name: str,
        features: npt.ArrayLike,
        config: VflConfig,
        public_key: PublicKey | None,
        hosts: int,
        executor: Executor | None,
        workers: int,
    ) -> None:
        if not isinstance(config, VflConfig):
            raise VflConfigError("config must be a VflConfig")
        self.name = _check_name(name, "party name")
        self.config = config
        self._cipher = _cipher(config, public_key, executor, workers)
        x = _matrix(features, f"features of '{name}'")
        self._encoded = _encode_features(x, config)
        self._x = _quantized(self._encoded, config)
        self.rows, self.columns = int(x.shape[0]), int(x.shape[1])
        self._hosts = _integer(hosts, "hosts", 1, 1024)
        self._weights = np.zeros(self.columns)
        self._epoch, self._batch, self._step = 1, 0, "forward"
        self._plan = batch_plan(self.rows, config, 1)
        smallest = min(len(b) for b in self._plan)
        if smallest <= self.gradient_columns:
            raise VflConfigError(
                f"'{name}' has {self.gradient_columns} gradient columns but batches of "
                f"{smallest} rows: a batch must have more rows than a party has columns"
            )
        _layout(config, self.gradient_columns, max(len(b) for b in self._plan), self._hosts)
        self._masks: list[int] = []
        self._extra: list[int] = []
        self._loss_units = 0.0

    @property
    def gradient_columns(self) -> int:
        """Values in this party's gradient (its columns; the guest adds the intercept)."""
        return self.columns

    @property
    def weights(self) -> FloatArray:
        """A copy of this party's weights (one per column)."""
        return self._weights.copy()

    @property
    def position(self) -> tuple[str, int, int]:
        """The step this party expects next (``forward``, ``gradient``, ``update`` or
        ``loss``), with its epoch and batch."""
        return self._step, self._epoch, self._batch

    def _binding(self) -> bytes:
        """What a saved state belongs to: role, name, shape, host count and settings."""
        what = f"{type(self).__name__}/{self.name}/{self.rows}/{self.columns}/{self._hosts}"
        digest = hashlib.sha256(f"{what}/{self.config!r}".encode())
        digest.update(np.ascontiguousarray(self._encoded, dtype=">i8").tobytes())
        return digest.digest()

    def _state_fields(self) -> dict[str, object]:
        return {
            "epoch": self._epoch,
            "batch": self._batch,
            "step": self._step,
            "weights": [float(w).hex() for w in self._weights],
            "masks": [str(m) for m in self._masks],
            "extra": [str(e) for e in self._extra],
            "loss_units": float(self._loss_units).hex(),
        }

    def _load_fields(self, fields: Mapping[str, object]) -> None:
        epoch, batch, step = fields["epoch"], fields["batch"], fields["step"]
        if not isinstance(epoch, int) or not isinstance(batch, int) or epoch < 1 or batch < 0:
            raise VflProtocolError(f"'{self.name}': saved state: bad epoch or batch")
        if step not in ("forward", "gradient", "update", "loss"):
            raise VflProtocolError(f"'{self.name}': saved state: unknown step {step!r}")
        weights = [float.fromhex(str(w)) for w in _list(fields["weights"])]
        if len(weights) != self.columns:
            raise VflProtocolError(f"'{self.name}': saved state holds {len(weights)} weights")
        self._epoch, self._batch, self._step = epoch, batch, str(step)
        self._plan = batch_plan(self.rows, self.config, epoch)
        if batch > len(self._plan):
            raise VflProtocolError(f"'{self.name}': saved state: batch {batch} out of range")
        self._weights = np.array(weights, dtype=np.float64)
        self._masks = [int(str(m)) for m in _list(fields["masks"])]
        self._extra = [int(str(e)) for e in _list(fields["extra"])]
        self._loss_units = float.fromhex(str(fields["loss_units"]))

    def export_state(self) -> bytes:
        """Everything this party holds between two messages, as bytes (weights, position,
        pending masks; the guest's intercept and encrypted loss part). Secret: owner-only."""
        body = json.dumps(self._state_fields(), sort_keys=True).encode()
        return join_frames([VFL_STATE_LABEL, self._binding(), body])

    def restore_state(self, state: bytes) -> None:
        """Load :meth:`export_state` bytes into this party, freshly built from the same
        columns (and labels), settings and key; :class:`VflProtocolError` if they differ
        or the bytes are malformed."""
        try:
            frames = split_frames(bytes(state), "saved vfl party")
        except (FramingError, TypeError):
            raise VflMessageError(f"'{self.name}': saved state is malformed") from None
        if len(frames) != 3 or frames[0] != VFL_STATE_LABEL:
            raise VflMessageError(f"'{self.name}': not a saved party of this version")
        if frames[1] != self._binding():
            raise VflProtocolError(
                f"'{self.name}': the saved state belongs to another party, data or settings"
            )
        try:
            fields = json.loads(frames[2])
            if not isinstance(fields, dict):
                raise ValueError("not an object")
            self._load_fields(fields)
        except (ValueError, KeyError, TypeError) as exc:
            raise VflMessageError(f"'{self.name}': saved state is malformed: {exc}") from None

    def _expect(self, step: str, epoch: int, batch: int | None = None) -> None:
        if step != self._step:
            raise VflProtocolError(
                f"'{self.name}': got a {step} step while waiting for {self._step}"
            )
        if epoch != self._epoch or (batch is not None and batch != self._batch):
            got = f"epoch {epoch}" + ("" if batch is None else f" batch {batch}")
            raise VflProtocolError(
                f"'{self.name}': got {got}, expected epoch {self._epoch} batch {self._batch}"
            )

    def _layout(self) -> _Layout:
        rows = len(self._plan[self._batch])
        return _layout(self.config, self.gradient_columns, rows, self._hosts)

    def _masked_gradient(self, residuals: Sequence[int], exponents: IntArray) -> bytes:
        """Pack ``[[sum_i D_i X_ij]]`` for the gradient columns, mask each ciphertext."""
        layout = self._layout()
        columns = self._cipher.columns(residuals, exponents)
        extra = columns[self.gradient_columns :]
        packed = [
            self._cipher.pack([columns[j] for j in group], layout.slot_bits)
            for group in layout.groups()
        ]
        masked, masks = zip(*(self._cipher.mask(c) for c in packed), strict=True)
        self._masks = list(masks)
        self._extra = extra
        return self._cipher.dump(list(masked))

    def _open(self, opened: OpenedGradient) -> tuple[list[int], int]:
        """The decoded integer gradient ``sum_i D_i X_ij`` and the batch's row count."""
        if not isinstance(opened, OpenedGradient):
            raise VflProtocolError(f"'{self.name}': expected an OpenedGradient")
        if opened.party != self.name:
            raise VflProtocolError(f"'{self.name}': got the opened gradient of '{opened.party}'")
        self._expect("update", opened.epoch, opened.batch)
        layout = self._layout()
        values = _ints_from_bytes(opened.payload, len(self._masks), "opened gradient")
        gradient: list[int] = []
        for value, mask, group in zip(values, self._masks, layout.groups(), strict=True):
            gradient.extend(
                _unpack_signed(self._cipher.unmask(value, mask), len(group), layout.slot_bits)
            )
        self._masks = []
        return gradient, len(self._plan[self._batch])

    def _next_batch(self) -> None:
        self._batch += 1
        self._step = "loss" if self._batch == len(self._plan) else "forward"

    def _next_epoch(self) -> None:
        self._epoch += 1
        self._batch = 0
        self._loss_units = 0.0
        self._plan = batch_plan(self.rows, self.config, self._epoch)
        self._step = "forward"

    def _l2_units(self) -> float:
        """``rows * l2 / 2 * |w|^2`` in loss units (the mean loss adds ``l2 / 2 |w|^2``)."""
        penalty = 0.5 * self.config.l2 * float(self._weights @ self._weights)
        return self.rows * penalty * self.config.loss_scale

    def _scores_of(self, features: npt.ArrayLike) -> FloatArray:
        x = _matrix(features, f"features to score at '{self.name}'")
        if x.shape[1] != self.columns:
            raise VflConfigError(
                f"'{self.name}' scores rows of {self.columns} columns, got {x.shape[1]}"
            )
        result: FloatArray = (
            _quantized(_encode_features(x, self.config), self.config) @ self._weights
        )
        return result

    def _gradient_scale(self) -> float:
        """``sum_i d_i x_ij = G_j * 2^-(fs + fx) / 4`` for the encoded gradient ``G``."""
        return math.ldexp(0.25, -(self.config.score_bits + self.config.feature_bits))


class VflHost(_Party):
    """A host: its columns and weights; it never holds a label, a residual or the key.

    ``hosts`` is the number of hosts in the job (it sizes the gradient slots). Heavy steps
    run on ``executor`` (a process pool the caller keeps for the job) in ``workers`` parts.
    """

    def __init__(
        self,
        name: str,
        features: npt.ArrayLike,
        config: VflConfig,
        public_key: PublicKey | None,
        *,
        hosts: int = 1,
        executor: Executor | None = None,
        workers: int = 2,
    ) -> None:
        super().__init__(name, features, config, public_key, hosts, executor, workers)

    def forward(self, epoch: int, batch: int) -> HostForward:
        """Step 1: ``[[U_h,i]]`` of the batch's rows with the current weights."""
        self._expect("forward", epoch, batch)
        rows = self._plan[batch]
        scores = _encode_scores(self._x[rows] @ self._weights, self.config)
        payload = self._cipher.dump(self._cipher.encrypt(scores.tolist()))
        self._step = "gradient"
        return HostForward(self.name, epoch, batch, payload)

    def gradient(self, residual: GuestResidual) -> MaskedGradient:
        """Step 3: the masked encrypted gradient from the guest's ``[[D_i]]``."""
        if not isinstance(residual, GuestResidual):
            raise VflProtocolError(f"'{self.name}': expected a GuestResidual")
        self._expect("gradient", residual.epoch, residual.batch)
        rows = self._plan[self._batch]
        values = self._cipher.load(residual.payload, len(rows), "guest residual")
        payload = self._masked_gradient(values, self._encoded[rows])
        self._step = "update"
        return MaskedGradient(self.name, residual.epoch, residual.batch, payload)

    def update(self, opened: OpenedGradient) -> None:
        """Step 4: unmask, decode and take the gradient step; keep this batch's loss share
        ``sum_i D_i U_h,i ~ 2^(fs-fx) w . G``."""
        gradient, rows = self._open(opened)
        encoded = np.array(gradient, dtype=np.float64)
        shift = self.config.score_bits - self.config.feature_bits
        self._loss_units += math.ldexp(float(self._weights @ encoded), shift)
        step = encoded * self._gradient_scale() / rows + self.config.l2 * self._weights
        self._weights = self._weights - self.config.rate(self._epoch) * step
        self._next_batch()

    def loss_share(self, epoch: int) -> LossShare:
        """End of epoch: this host's loss share, encrypted for the guest to add."""
        self._expect("loss", epoch)
        total = round(self._loss_units + self._l2_units())
        payload = self._cipher.dump(self._cipher.encrypt([total]))
        self._next_epoch()
        return LossShare(self.name, epoch, payload)

    def partial_scores(self, features: npt.ArrayLike) -> PartialScores:
        """Scoring: ``u_h = X_h w_h`` of the rows to score (in the guest's row order)."""
        return PartialScores(self.name, self._scores_of(features))


class VflGuest(_Party):
    """The guest: labels, its columns, its weights and the intercept.

    ``hosts`` names the job's hosts; labels are 0/1. Heavy steps run on ``executor`` (a
    process pool the caller keeps for the job) in ``workers`` parts.
    """

    def __init__(
        self,
        name: str,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        config: VflConfig,
        public_key: PublicKey | None,
        hosts: Sequence[str],
        *,
        executor: Executor | None = None,
        workers: int = 2,
    ) -> None:
        names = tuple(_check_name(h, "host name") for h in hosts)
        if not names or len(set(names)) != len(names) or name in names:
            raise VflConfigError("hosts must be distinct names, at least one, not the guest's")
        super().__init__(name, features, config, public_key, len(names), executor, workers)
        self.hosts = names
        y = np.asarray(labels)
        if y.shape != (self.rows,) or not np.isin(y, (0, 1)).all():
            raise VflConfigError(f"labels must be {self.rows} values, each 0 or 1")
        self._signs = np.where(y.astype(bool), 1, -1).astype(np.int64)
        self._intercept = 0.0
        self._loss_cipher: int | None = None

    @property
    def gradient_columns(self) -> int:
        """The guest's columns and the intercept."""
        return self.columns + 1

    @property
    def intercept(self) -> float:
        """The model's intercept (held by the guest)."""
        return self._intercept

    def _binding(self) -> bytes:
        signs = np.ascontiguousarray(self._signs, dtype=">i8").tobytes()
        return hashlib.sha256(super()._binding() + signs).digest()

    def _state_fields(self) -> dict[str, object]:
        fields = super()._state_fields()
        fields["intercept"] = float(self._intercept).hex()
        fields["loss_cipher"] = None if self._loss_cipher is None else str(self._loss_cipher)
        return fields

    def _load_fields(self, fields: Mapping[str, object]) -> None:
        super()._load_fields(fields)
        self._intercept = float.fromhex(str(fields["intercept"]))
        cipher = fields["loss_cipher"]
        self._loss_cipher = None if cipher is None else int(str(cipher))

    def residuals(self, forwards: Sequence[HostForward]) -> tuple[GuestResidual, MaskedGradient]:
        """Step 2: ``[[D_i]]`` for the hosts and the guest's own masked gradient."""
        if not forwards or not all(isinstance(f, HostForward) for f in forwards):
            raise VflProtocolError(f"'{self.name}': expected a HostForward from every host")
        epoch, batch = forwards[0].epoch, forwards[0].batch
        self._expect("forward", epoch, batch)
        by_host = {f.party: f for f in forwards}
        if sorted(by_host) != sorted(self.hosts) or len(forwards) != len(self.hosts):
            raise VflProtocolError(
                f"'{self.name}': forwards from {', '.join(sorted(f.party for f in forwards))}, "
                f"expected one from each of {', '.join(self.hosts)}"
            )
        if any((f.epoch, f.batch) != (epoch, batch) for f in forwards):
            raise VflProtocolError(f"'{self.name}': forwards of different batches")
        rows = self._plan[batch]
        summed = self._cipher.add(
            [
                self._cipher.load(by_host[h].payload, len(rows), f"forward of '{h}'")
                for h in self.hosts
            ]
        )
        own = _encode_scores(self._x[rows] @ self._weights + self._intercept, self.config)
        signs = self._signs[rows]
        residual = self._cipher.add_fresh(
            summed, (own - (signs << (self.config.score_bits + 1))).tolist()
        )
        exponents = np.column_stack([self._encoded[rows], np.ones(len(rows), np.int64), -signs])
        payload = self._masked_gradient(residual, exponents)
        # sum_i D_i (-y_i), kept encrypted: the label part of this batch's loss share.
        label_part = self._cipher.scale(self._extra[0], 1 << (self.config.score_bits + 1))
        if self._loss_cipher is None:
            self._loss_cipher = label_part
        else:
            self._loss_cipher = self._cipher.add([[self._loss_cipher], [label_part]])[0]
        self._step = "update"
        return (
            GuestResidual(self.name, epoch, batch, self._cipher.dump(residual)),
            MaskedGradient(self.name, epoch, batch, payload),
        )

    def update(self, opened: OpenedGradient) -> None:
        """Step 4: unmask, decode, take the gradient step (intercept without L2)."""
        gradient, rows = self._open(opened)
        encoded = np.array(gradient[:-1], dtype=np.float64)
        residual_sum = float(gradient[-1])  # sum_i D_i
        # This batch's share sum_i D_i U_A,i ~ 2^(fs-fx) w . G + 2^fs b sum_i D_i.
        shift = self.config.score_bits - self.config.feature_bits
        self._loss_units += math.ldexp(float(self._weights @ encoded), shift)
        self._loss_units += math.ldexp(self._intercept * residual_sum, self.config.score_bits)
        step = encoded * self._gradient_scale() / rows + self.config.l2 * self._weights
        rate = self.config.rate(self._epoch)
        self._weights = self._weights - rate * step
        self._intercept -= rate * residual_sum * math.ldexp(0.25, -self.config.score_bits) / rows
        self._next_batch()

    def loss(self, shares: Sequence[LossShare]) -> EncryptedLoss:
        """End of epoch: every host's share and the guest's, in one ciphertext for the arbiter."""
        if not all(isinstance(s, LossShare) for s in shares):
            raise VflProtocolError(f"'{self.name}': expected a LossShare from every host")
        epoch = self._epoch
        self._expect("loss", epoch)
        by_host = {s.party: s for s in shares}
        if sorted(by_host) != sorted(self.hosts) or len(shares) != len(self.hosts):
            raise VflProtocolError(f"'{self.name}': expected one loss share from each host")
        if any(s.epoch != epoch for s in shares):
            raise VflProtocolError(f"'{self.name}': loss shares of another epoch")
        constant = self.rows * (math.log(2.0) - 0.5) * self.config.loss_scale
        own = round(self._loss_units + constant + self._l2_units())
        assert self._loss_cipher is not None  # every epoch has at least one batch
        mine = self._cipher.add_fresh([self._loss_cipher], [own])
        hosts = [
            self._cipher.load(by_host[h].payload, 1, f"loss share of '{h}'") for h in self.hosts
        ]
        total = self._cipher.add([mine, *hosts])
        self._loss_cipher = None
        self._next_epoch()
        return EncryptedLoss(self.name, epoch, self.rows, self._cipher.dump(total))

    def score(self, features: npt.ArrayLike, host_scores: Sequence[PartialScores]) -> FloatArray:
        """Joint scoring: probabilities from the guest's scores, the intercept and every
        host's partial scores of the same rows."""
        own = self._scores_of(features) + self._intercept
        by_host = {s.party: s for s in host_scores}
        if sorted(by_host) != sorted(self.hosts) or len(host_scores) != len(self.hosts):
            raise VflProtocolError(f"'{self.name}': expected partial scores from every host")
        for s in host_scores:
            if s.values.shape != own.shape:
                raise VflProtocolError(
                    f"'{self.name}': '{s.party}' scored {s.values.size} rows, not {own.size}"
                )
            own = own + s.values
        result: FloatArray = 1.0 / (1.0 + np.exp(-own))
        return result


@dataclass(frozen=True)
class EpochResult:
    """What the arbiter learned from an epoch: its mean (Taylor) loss, and whether to stop."""

    epoch: int
    loss: float
    stop: bool


class VflArbiter:
    """The arbiter (the coordinator's side): the job's Paillier key pair.

    It opens each party's masked gradient once per batch and the summed loss once per
    epoch, and decides when to stop. ``columns`` gives every party's number of feature
    columns (public: the job spec lists them); ``rows`` is the size of the aligned set.
    In plaintext mode it holds no key.
    """

    def __init__(
        self,
        config: VflConfig,
        rows: int,
        columns: Mapping[str, int],
        guest: str,
        *,
        key: PrivateKey | None = None,
    ) -> None:
        if not isinstance(config, VflConfig):
            raise VflConfigError("config must be a VflConfig")
        self.config = config
        self.rows = _integer(rows, "rows", VFL_MIN_BATCH_ROWS)
        if guest not in columns or len(columns) < 2:
            raise VflConfigError("columns must name the guest and at least one host")
        self._columns = {
            _check_name(p, "party"): _integer(c, f"columns of '{p}'", 1) for p, c in columns.items()
        }
        self.guest = guest
        self._key: PrivateKey | None = None
        if config.cipher is CipherMode.PAILLIER:
            self._key = key if key is not None else generate_keypair(config.key_bits)
            if not isinstance(self._key, PrivateKey) or self._key.bits != config.key_bits:
                raise VflConfigError(f"the arbiter needs a {config.key_bits}-bit PrivateKey")
            self._cipher: _Cipher = _PaillierCipher(self._key.public, None, 1)
        elif key is not None:
            raise VflConfigError("the plaintext cipher takes no key")
        else:
            self._cipher = _PlainCipher()
        self._epoch = 1
        self._plan = batch_plan(self.rows, config, 1)
        self._opened: set[tuple[str, int]] = set()
        self._stopped = False
        self._results: list[EpochResult] = []

    @property
    def results(self) -> tuple[EpochResult, ...]:
        """What each closed epoch gave: its mean loss and the stopping decision."""
        return tuple(self._results)

    @property
    def public_key(self) -> PublicKey | None:
        """The job's public key, for every party (``None`` in plaintext mode)."""
        return None if self._key is None else self._key.public

    def _decrypt(self, values: Sequence[int]) -> list[int]:
        if self._key is None:
            return list(values)
        return decrypt_many(self._key, values, workers=1)

    def open(self, masked: MaskedGradient) -> OpenedGradient:
        """Decrypt one party's masked gradient of one batch (once, with the expected count)."""
        if not isinstance(masked, MaskedGradient):
            raise VflProtocolError("arbiter: expected a MaskedGradient")
        if self._stopped:
            raise VflProtocolError("arbiter: training is over")
        party = masked.party
        if party not in self._columns:
            raise VflProtocolError(f"arbiter: '{party}' is not a party of this job")
        if masked.epoch != self._epoch or masked.batch >= len(self._plan):
            raise VflProtocolError(
                f"arbiter: '{party}' sent epoch {masked.epoch} batch {masked.batch}; the "
                f"current epoch is {self._epoch} with {len(self._plan)} batches"
            )
        if (party, masked.batch) in self._opened:
            raise VflProtocolError(
                f"arbiter: the gradient of '{party}' for epoch {masked.epoch} batch "
                f"{masked.batch} was already opened"
            )
        gradient_columns = self._columns[party] + (1 if party == self.guest else 0)
        layout = _layout(
            self.config, gradient_columns, len(self._plan[masked.batch]), len(self._columns) - 1
        )
        values = self._cipher.load(masked.payload, layout.ciphertexts, f"gradient of '{party}'")
        self._opened.add((party, masked.batch))
        opened = self._decrypt(values)
        return OpenedGradient(party, masked.epoch, masked.batch, _ints_to_bytes(opened))

    def close_epoch(self, loss: EncryptedLoss) -> EpochResult:
        """Decrypt the epoch's summed loss; decide whether training stops."""
        if not isinstance(loss, EncryptedLoss):
            raise VflProtocolError("arbiter: expected an EncryptedLoss")
        if self._stopped:
            raise VflProtocolError("arbiter: training is over")
        if loss.party != self.guest or loss.epoch != self._epoch or loss.rows != self.rows:
            raise VflProtocolError(
                f"arbiter: a loss from '{loss.party}' for epoch {loss.epoch} over {loss.rows} "
                f"rows; expected the guest's for epoch {self._epoch} over {self.rows}"
            )
        expected = {(p, b) for p in self._columns for b in range(len(self._plan))}
        if self._opened != expected:
            raise VflProtocolError(f"arbiter: epoch {self._epoch} has gradients left to open")
        (value,) = self._decrypt(self._cipher.load(loss.payload, 1, "summed loss"))
        if self._key is not None:
            n = self._key.public.n
            value = value - n if value > n // 2 else value
        mean = value / self.config.loss_scale / self.rows
        previous = self._results[-1].loss if self._results else None
        stop = self._epoch >= self.config.max_epochs or (
            previous is not None and abs(previous - mean) < self.config.tolerance
        )
        result = EpochResult(self._epoch, mean, stop)
        self._results.append(result)
        self._stopped = stop
        self._epoch += 1
        self._opened = set()
        self._plan = batch_plan(self.rows, self.config, self._epoch)
        return result


# --- in-process driver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One message delivered from one role to another, as bytes."""

    epoch: int
    sender: str
    recipient: str
    kind: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of an in-process run: the arbiter's loss, wall time and traffic.

    ``round_trips`` counts the request-reply exchanges of a coordinator that relays every
    message (three per batch, two for the loss); ``messages`` and ``bytes`` count deliveries
    (a residual sent to two hosts counts twice); ``step_seconds`` splits the wall time.
    """

    epoch: int
    loss: float
    seconds: float
    batches: int
    round_trips: int
    messages: int
    bytes: int
    bytes_by_kind: Mapping[str, int]
    messages_by_kind: Mapping[str, int]
    step_seconds: Mapping[str, float]


@dataclass(frozen=True)
class VflRun:
    """The roles after training, and what each epoch cost."""

    guest: VflGuest
    hosts: Mapping[str, VflHost]
    arbiter: VflArbiter
    epochs: tuple[EpochRecord, ...]

    @property
    def stopped_early(self) -> bool:
        """Whether the loss criterion stopped training before ``max_epochs``."""
        return len(self.epochs) < self.guest.config.max_epochs


#: The name :func:`train_in_process` gives the arbiter in :class:`Hop` records.
ARBITER = "arbiter"

_Msg = TypeVar(
    "_Msg", HostForward, GuestResidual, MaskedGradient, OpenedGradient, LossShare, EncryptedLoss
)


class _Tally:
    """Delivers messages through bytes and counts them; times the steps of one epoch."""

    def __init__(self, epoch: int, observe: Callable[[Hop], None] | None) -> None:
        self.epoch = epoch
        self.observe = observe
        self.seconds: dict[str, float] = {}
        self.messages: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def deliver(self, message: _Msg, sender: str, recipient: str) -> _Msg:
        with self.step("bytes"):
            data = message.to_bytes()
            parsed = type(message).from_bytes(data)
        kind = type(message).__name__
        self.messages[kind] = self.messages.get(kind, 0) + 1
        self.bytes[kind] = self.bytes.get(kind, 0) + len(data)
        if self.observe is not None:
            self.observe(Hop(self.epoch, sender, recipient, kind, data))
        return parsed

    def record(self, result: EpochResult, batches: int, seconds: float) -> EpochRecord:
        return EpochRecord(
            epoch=self.epoch,
            loss=result.loss,
            seconds=seconds,
            batches=batches,
            round_trips=3 * batches + 2,
            messages=sum(self.messages.values()),
            bytes=sum(self.bytes.values()),
            bytes_by_kind=dict(self.bytes),
            messages_by_kind=dict(self.messages),
            step_seconds=dict(self.seconds),
        )


def train_in_process(
    guest_features: npt.ArrayLike,
    labels: npt.ArrayLike,
    host_features: Mapping[str, npt.ArrayLike],
    config: VflConfig,
    *,
    key: PrivateKey | None = None,
    executor: Executor | None = None,
    workers: int = 2,
    observe: Callable[[Hop], None] | None = None,
    guest: str = "guest",
) -> VflRun:
    """Train with every role in this process: for tests and benchmarks, not isolation.

    Every message goes through ``to_bytes`` and ``from_bytes``; ``observe`` sees each one
    (sender, recipient, bytes). ``key`` is the arbiter's (a fresh one by default);
    ``executor`` (a process pool) and ``workers`` speed up the parties' heavy steps.
    """
    hosts = list(host_features)
    guest_x = _matrix(guest_features, "guest features")
    arbiter = VflArbiter(
        config,
        guest_x.shape[0],
        {guest: guest_x.shape[1], **{h: _matrix(x, h).shape[1] for h, x in host_features.items()}},
        guest,
        key=key,
    )
    public = arbiter.public_key
    parties = {
        h: VflHost(h, x, config, public, hosts=len(hosts), executor=executor, workers=workers)
        for h, x in host_features.items()
    }
    g = VflGuest(guest, guest_x, labels, config, public, hosts, executor=executor, workers=workers)
    records: list[EpochRecord] = []
    for epoch in range(1, config.max_epochs + 1):
        started = time.perf_counter()
        tally = _Tally(epoch, observe)
        plan = batch_plan(g.rows, config, epoch)
        for batch in range(len(plan)):
            forwards = []
            for h in hosts:
                with tally.step("host forward"):
                    forward = parties[h].forward(epoch, batch)
                forwards.append(tally.deliver(forward, h, guest))
            with tally.step("guest residuals"):
                residual, masked = g.residuals(forwards)
            with tally.step("arbiter open"):
                opened = arbiter.open(tally.deliver(masked, guest, ARBITER))
            with tally.step("guest update"):
                g.update(tally.deliver(opened, ARBITER, guest))
            for h in hosts:
                received = tally.deliver(residual, guest, h)
                with tally.step("host gradient"):
                    mine = parties[h].gradient(received)
                with tally.step("arbiter open"):
                    back = arbiter.open(tally.deliver(mine, h, ARBITER))
                with tally.step("host update"):
                    parties[h].update(tally.deliver(back, ARBITER, h))
        shares = []
        for h in hosts:
            with tally.step("loss"):
                share = parties[h].loss_share(epoch)
            shares.append(tally.deliver(share, h, guest))
        with tally.step("loss"):
            total = g.loss(shares)
            result = arbiter.close_epoch(tally.deliver(total, guest, ARBITER))
        records.append(tally.record(result, len(plan), time.perf_counter() - started))
        if result.stop:
            break
    return VflRun(g, parties, arbiter, tuple(records))


def score_in_process(
    run: VflRun, guest_features: npt.ArrayLike, host_features: Mapping[str, npt.ArrayLike]
) -> FloatArray:
    """Joint scoring in this process: each host's partial scores (through bytes) and the
    guest's probabilities."""
    scores = [
        PartialScores.from_bytes(run.hosts[h].partial_scores(x).to_bytes())
        for h, x in host_features.items()
    ]
    return run.guest.score(guest_features, scores)
