"""Private set intersection (ECDH-PSI): entity alignment of a vertical job.

The guest (the party with the labels) and each host (a partner with other columns of the same
customers) find the customers they share without showing each other anyone else. Messages go
through the coordinator, which learns the sizes of the sets and of the result, nothing more.

Identifiers are normalized first (:func:`normalize_id`: surrounding whitespace trimmed, Unicode
NFC, and case-folded when the job says so); a party whose list holds the same identifier twice
after that is refused, with the count of repeats (never the identifiers: errors go back to the
coordinator).

Protocol, for the guest G (ids ``X``) and one host H (ids ``Y``); ``*`` is X25519 scalar
multiplication, ``a`` and ``b`` fresh random scalars (G draws a new one for every host, H one
per job), ``Hc`` a hash onto Curve25519 bound to the job (:func:`hash_to_curve`):

1. G -> H: :class:`BlindedIds` ``a * Hc(x)`` for every ``x`` in ``X``, in a random order.
   At the same time H -> G: :class:`BlindedIds` ``b * Hc(y)`` for every ``y`` in ``Y``, in a
   random order (it depends on nothing G sends, so both are computed in parallel).
2. H -> G: :class:`DoubleBlinded` ``b * (a * Hc(x))``, in the order received. Meanwhile G
   computes ``a * (b * Hc(y))`` for H's list. X25519 with clamped scalars commutes
   (``a * (b * P) = b * (a * P)``: both are the x-coordinate of ``ab P``), so ``x`` is in
   ``Y`` exactly when its double-blinded value is among G's ``a * (b * Hc(y))``.
3. With every host done, G takes the identifiers found at every host, puts them in a
   uniformly random order (drawn from the OS CSPRNG), and sends each host an
   :class:`Alignment`: the positions, in H's shuffled list of step 1, of those identifiers,
   in that order. Every party ends with the same ordered list (:class:`PsiResult`); an
   intersection below the job's minimum is refused by the guest and by every host.

Hashing onto the curve: ``SHA-512(label || job id || id || counter)``, first 32 bytes, top
bit cleared, read as a little-endian u-coordinate (RFC 7748); the first counter whose value
is a point of Curve25519 itself (not of its quadratic twist; a Legendre symbol, about two
tries on average) is taken. Raw hashes land on the twist half the time, and since scalar
multiplication keeps a point on its curve, every blinded value would reveal whether its
identifier hashes to the curve or to the twist: a public bit per identifier, which would
let a peer test guesses about the whole set. Every value received before it is multiplied by
a party's secret is checked the same way (canonical, on the curve, not repeated), and an
all-zero result (a point of small order, which X25519 refuses) is an error, not a value.

Security (semi-honest parties, as in Meadows 1986, Huberman, Franklin and Hogg 1999, and the
ECDH-PSI of Google's Private Join and Compute): X25519 scalars are multiples of the cofactor
8, so ``a * Hc(x)`` depends only on ``8 Hc(x)``, which for ``Hc`` a random oracle onto the
curve is a random oracle onto its prime-order subgroup (about 2**252 elements). There
``(8 Hc(x), a * Hc(x), b * Hc(x), ab * Hc(x))`` cannot be told from random under the
decisional Diffie-Hellman assumption on Curve25519 (about 128-bit security), which is what
hides every identifier outside the intersection. Points of small order are cleared the same
way, so a peer learns nothing about a scalar from them; and Curve25519 is twist-secure (its
twist has a prime subgroup of about 2**253 elements), so even a value off the curve that
slipped past a check would not leak the scalar it is multiplied by.

What each role learns:

- the guest: ``X ∩ Y`` for every host (unavoidable in a two-party PSI), each host's set size,
  and nothing about a host identifier outside ``X`` (to test a guess ``z`` it would need
  ``b * Hc(z)``, which only H can compute);
- a host: the final intersection (the identifiers found at every host, which may be smaller
  than its own intersection with the guest) and the guest's set size; the guest's list is
  pseudo-random points, so nothing about a guest identifier outside the result;
- the coordinator: the size of every message, so the set sizes and the size of the result.
  Under DDH it cannot match any values; a coordinator colluding with a party learns that
  party's view.

Limits: the argument is for semi-honest parties. A malicious guest could put guessed
identifiers in its list and learn which of them a host holds (``max_ids`` bounds how many),
or send a host a different list of positions; the job's minimum guards the later training,
not what a party can probe. Messages carry no authentication of their own: relay them over
the authenticated end-to-end channel between the two parties (:mod:`fedprop.crypto.channel`).
Scalars live in memory for one job only; nothing here is logged. A node that runs every
message in a fresh process saves a role between messages with ``export_state`` and rebuilds it
with ``restore`` (the secret scalars, the shuffles and what was sent or received so far, bound
to the job's settings and to a digest of the party's identifiers); the saved bytes are as
secret as the scalars: keep them owner-only and delete them when the alignment is done.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, NoReturn, SupportsIndex

import gmpy2
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedprop.crypto.params import (
    PSI_HASH_LABEL,
    PSI_HASH_TRIES,
    PSI_MAX_IDS,
    PSI_MESSAGE_LABEL,
    PSI_STATE_LABEL,
)
from fedprop.errors import FedpropError
from fedprop.framing import FramingError, join_frames, split_frames

__all__ = [
    "POINT_BYTES",
    "Alignment",
    "BlindedIds",
    "DoubleBlinded",
    "PsiConfig",
    "PsiError",
    "PsiGuest",
    "PsiHost",
    "PsiResult",
    "PsiRole",
    "hash_to_curve",
    "normalize_id",
]

#: Bytes of one curve point (an X25519 u-coordinate) in a message.
POINT_BYTES = 32

_P = gmpy2.mpz(2**255 - 19)  # the field prime of Curve25519
_A = gmpy2.mpz(486662)  # the Montgomery coefficient: v^2 = u^3 + A u^2 + u
_U255 = (1 << 255) - 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_POSITION = np.dtype(">u4")
_COUNTERS = tuple(bytes([i]) for i in range(PSI_HASH_TRIES))
_MAX_NAME_BYTES = 256


class PsiError(FedpropError):
    """Entity alignment failed: bad input ids, a malformed message, or too small a result."""


class PsiRole(StrEnum):
    """Who sent a :class:`BlindedIds` message."""

    GUEST = "guest"
    HOST = "host"


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > _MAX_NAME_BYTES:
        raise PsiError(f"psi: {what} must be a non-empty string of at most {_MAX_NAME_BYTES} bytes")
    return value


@dataclass(frozen=True)
class PsiConfig:
    """What both sides of one alignment must agree on (from the job spec).

    ``job_id`` domain-separates the hash, so points of one job are unrelated to those of any
    other; ``min_intersection`` is the smallest result the job accepts; ``case_fold`` makes
    ``"ABC"`` and ``"abc"`` the same identifier; ``max_ids`` bounds the ids a party brings
    and the values it accepts in one message.
    """

    job_id: str
    min_intersection: int
    case_fold: bool = False
    max_ids: int = PSI_MAX_IDS

    def __post_init__(self) -> None:
        _check_name(self.job_id, "the job id")
        if not _is_int(self.min_intersection) or self.min_intersection < 0:
            raise PsiError(
                f"psi: min_intersection must be a non-negative integer, "
                f"not {self.min_intersection!r}"
            )
        if not isinstance(self.case_fold, bool):
            raise PsiError(f"psi: case_fold must be true or false, not {self.case_fold!r}")
        if not _is_int(self.max_ids) or not 1 <= self.max_ids <= PSI_MAX_IDS:
            raise PsiError(f"psi: max_ids must be an integer from 1 to {PSI_MAX_IDS}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PsiResult:
    """A party's outcome: the aligned ids, in the order every party shares, and its own rows.

    ``ids`` are normalized identifiers, identical (same values, same order) at every party;
    ``rows[k]`` is the index in this party's own input list of ``ids[k]``.
    """

    ids: tuple[str, ...]
    rows: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"PsiResult({len(self.ids)} aligned ids)"


# --- normalization and hashing ------------------------------------------------------------


def normalize_id(raw: str, *, case_fold: bool) -> str:
    """``raw`` trimmed of surrounding whitespace, in Unicode NFC, case-folded if asked."""
    if not isinstance(raw, str):
        raise PsiError(f"psi: an identifier is a {type(raw).__name__}, not a string")
    text = unicodedata.normalize("NFC", raw.strip())
    if case_fold:
        text = unicodedata.normalize("NFC", text.casefold())
    return text


def _normalize_all(ids: Sequence[str], config: PsiConfig, who: str) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise PsiError(f"psi: the {who}'s identifiers must be a list of strings, not one string")
    if len(ids) > config.max_ids:
        raise PsiError(f"psi: the {who} has {len(ids)} identifiers, more than {config.max_ids}")
    case_fold = config.case_fold
    normalized = [normalize_id(raw, case_fold=case_fold) for raw in ids]
    empty = normalized.count("")
    if empty:
        raise PsiError(f"psi: {empty} of the {who}'s identifiers are empty after trimming")
    repeats = len(normalized) - len(set(normalized))
    if repeats:
        how = "trimming and case folding" if case_fold else "trimming"
        raise PsiError(
            f"psi: the {who}'s list holds {repeats} duplicate identifiers after {how}; "
            "each customer must appear once"
        )
    return normalized


def _check_enough(count: int, config: PsiConfig, whose: str) -> None:
    """Refuse early a list that cannot reach the job's minimum intersection."""
    if count < config.min_intersection:
        raise PsiError(
            f"psi: {whose} {count} identifiers, fewer than the job's minimum intersection "
            f"of {config.min_intersection}"
        )


def hash_to_curve(job_id: str, ids: Iterable[str]) -> list[bytes]:
    """The Curve25519 point (32-byte u-coordinate) each normalized id hashes to in this job.

    Public (no secret): a party's points are only ever sent multiplied by its secret scalar.
    """
    job = _check_name(job_id, "the job id").encode("utf-8")
    base = hashlib.sha512(PSI_HASH_LABEL + _U32.pack(len(job)) + job)
    mpz, jacobi, p, a = gmpy2.mpz, gmpy2.jacobi, _P, _A
    points: list[bytes] = []
    append = points.append
    for ident in ids:
        raw = ident.encode("utf-8")
        prefix = base.copy()
        prefix.update(_U32.pack(len(raw)) + raw)
        for counter in _COUNTERS:
            attempt = prefix.copy()
            attempt.update(counter)
            u = int.from_bytes(attempt.digest()[:POINT_BYTES], "little") & _U255
            x = mpz(u)
            if x < p and jacobi(((x + a) * x + 1) * x % p, p) == 1:
                append(u.to_bytes(POINT_BYTES, "little"))
                break
        else:  # pragma: no cover - probability 2**-PSI_HASH_TRIES per id
            raise PsiError("psi: an identifier found no curve point; retry with another job id")
    return points


# --- curve operations ---------------------------------------------------------------------


def _split_points(blob: bytes) -> list[bytes]:
    return [blob[i : i + POINT_BYTES] for i in range(0, len(blob), POINT_BYTES)]


def _check_points(points: list[bytes], what: str) -> None:
    """Refuse values that are not canonical points of Curve25519 (not its twist), or repeat."""
    mpz, jacobi, p, a = gmpy2.mpz, gmpy2.jacobi, _P, _A
    for k, point in enumerate(points):
        x = mpz(int.from_bytes(point, "little"))
        if not (x < p and jacobi(((x + a) * x + 1) * x % p, p) == 1):
            raise PsiError(f"psi: {what}: value {k} is not a point of Curve25519")
    _check_distinct(points, what)


def _check_distinct(values: list[bytes], what: str) -> None:
    repeats = len(values) - len(set(values))
    if repeats:
        raise PsiError(f"psi: {what}: {repeats} repeated values")


def _multiply(key: X25519PrivateKey, points: Iterable[bytes]) -> list[bytes]:
    """Each point times the key's (clamped) scalar: X25519's ``exchange`` with it as peer."""
    exchange = key.exchange
    load = X25519PublicKey.from_public_bytes
    try:
        return [exchange(load(point)) for point in points]
    except ValueError:
        # cryptography refuses an all-zero output: the input was a point of small order.
        raise PsiError("psi: a value is a point of small order (all-zero product)") from None


def _random_order(n: int) -> list[int]:
    """A uniformly random permutation of ``range(n)``: sort by 64-bit keys from the OS CSPRNG."""
    if n == 0:
        return []
    keys = np.frombuffer(secrets.token_bytes(8 * n), dtype=np.uint64)
    order: list[int] = np.argsort(keys, kind="stable").tolist()
    return order


# --- saved state ----------------------------------------------------------------------------


def _scalar_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _scalar_of(raw: bytes) -> X25519PrivateKey:
    try:
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise PsiError("psi: saved state: the secret scalar is malformed") from None


def _binding(config: PsiConfig, ids: Sequence[str], role: bytes, name: str) -> bytes:
    """What a saved state belongs to: the settings, the role and a digest of the ids."""
    digest = hashlib.sha256()
    for ident in ids:
        raw = ident.encode("utf-8")
        digest.update(_U32.pack(len(raw)) + raw)
    settings = f"{config.min_intersection}/{int(config.case_fold)}/{config.max_ids}"
    fields = [config.job_id.encode(), settings.encode(), role, name.encode(), digest.digest()]
    return hashlib.sha256(join_frames(fields)).digest()


def _order_bytes(order: Sequence[int]) -> bytes:
    return np.asarray(order, dtype=_POSITION).tobytes()


def _order_of(blob: bytes, n: int) -> list[int]:
    if len(blob) != n * _POSITION.itemsize:
        raise PsiError("psi: saved state: the shuffle does not fit the identifiers")
    order: list[int] = np.frombuffer(blob, dtype=_POSITION).astype(np.int64).tolist()
    if sorted(order) != list(range(n)):
        raise PsiError("psi: saved state: the shuffle is not a permutation")
    return order


def _optional(blob: bytes | None) -> bytes:
    return b"\x00" if blob is None else b"\x01" + blob


def _read_optional(frame: bytes) -> bytes | None:
    if frame[:1] == b"\x00" and len(frame) == 1:
        return None
    if frame[:1] != b"\x01":
        raise PsiError("psi: saved state is malformed")
    return frame[1:]


def _state_frames(state: bytes, role: bytes, count: int | None) -> list[bytes]:
    if not isinstance(state, bytes):
        raise PsiError("psi: saved state must be bytes")
    try:
        frames = split_frames(state, "psi: saved state")
    except FramingError:
        raise PsiError("psi: saved state is malformed") from None
    if len(frames) < 3 or frames[0] != PSI_STATE_LABEL or frames[1] != role:
        raise PsiError(f"psi: not a saved {role.decode()} state of this version")
    if count is not None and len(frames) != count:
        raise PsiError("psi: saved state is malformed")
    return frames


# --- messages -----------------------------------------------------------------------------


def _encode(kind: bytes, job_id: str, host: str, count: int, payload: bytes) -> bytes:
    frames = [PSI_MESSAGE_LABEL, kind, job_id.encode(), host.encode(), _U64.pack(count), payload]
    return join_frames(frames)


def _decode(
    data: bytes, kinds: tuple[bytes, ...], item_bytes: int, what: str
) -> tuple[bytes, str, str, bytes]:
    """``(kind, job_id, host, payload)`` of a message; :class:`PsiError` if malformed."""
    if not isinstance(data, bytes):
        raise PsiError(f"psi: {what} must be bytes, not {type(data).__name__}")
    try:
        frames = split_frames(data, f"psi: {what}")
    except FramingError as exc:
        raise PsiError(str(exc)) from None
    if len(frames) != 6:
        raise PsiError(f"psi: {what}: {len(frames)} frames, expected 6")
    label, kind, job, host, count, payload = frames
    if label != PSI_MESSAGE_LABEL:
        raise PsiError(f"psi: {what}: not a PSI message of this version")
    if kind not in kinds:
        raise PsiError(f"psi: {what}: a {kind[:32]!r} message")
    if len(count) != _U64.size:
        raise PsiError(f"psi: {what}: the count field has {len(count)} bytes, expected 8")
    (n,) = _U64.unpack(count)
    if n > PSI_MAX_IDS:
        raise PsiError(f"psi: {what}: {n} values, more than {PSI_MAX_IDS}")
    if len(payload) != n * item_bytes:
        raise PsiError(
            f"psi: {what}: {len(payload)} bytes of values, expected {n} x {item_bytes} bytes"
        )
    try:
        return kind, job.decode("utf-8"), host.decode("utf-8"), payload
    except UnicodeDecodeError:
        raise PsiError(f"psi: {what}: the job id or host name is not UTF-8") from None


def _check_blob(job_id: str, host: str, blob: bytes, item_bytes: int, what: str) -> None:
    _check_name(job_id, f"{what}: the job id")
    _check_name(host, f"{what}: the host name")
    if not isinstance(blob, bytes) or len(blob) % item_bytes:
        raise PsiError(f"psi: {what}: the values must be bytes, a multiple of {item_bytes}")
    if len(blob) // item_bytes > PSI_MAX_IDS:
        raise PsiError(f"psi: {what}: more than {PSI_MAX_IDS} values")


@dataclass(frozen=True)
class BlindedIds:
    """One party's ids hashed onto the curve and multiplied by its secret, in a random order.

    ``host`` names the host of the pair (the recipient when the guest sends it); ``points``
    is ``count`` 32-byte u-coordinates, concatenated.
    """

    job_id: str
    host: str
    sender: PsiRole
    points: bytes

    _KINDS: ClassVar[dict[PsiRole, bytes]] = {
        PsiRole.GUEST: b"guest-blinded-ids",
        PsiRole.HOST: b"host-blinded-ids",
    }

    def __post_init__(self) -> None:
        if not isinstance(self.sender, PsiRole):
            raise PsiError(f"psi: blinded ids: unknown sender {self.sender!r}")
        _check_blob(self.job_id, self.host, self.points, POINT_BYTES, "blinded ids")

    @property
    def count(self) -> int:
        """Number of blinded ids."""
        return len(self.points) // POINT_BYTES

    def to_bytes(self) -> bytes:
        """Length-prefixed frames: label, kind, job id, host, count, points."""
        kind = self._KINDS[self.sender]
        return _encode(kind, self.job_id, self.host, self.count, self.points)

    @classmethod
    def from_bytes(cls, data: bytes) -> BlindedIds:
        """Parse; :class:`PsiError` if malformed."""
        kinds = tuple(cls._KINDS.values())
        kind, job_id, host, payload = _decode(data, kinds, POINT_BYTES, "blinded ids")
        sender = next(role for role, k in cls._KINDS.items() if k == kind)
        return cls(job_id, host, sender, payload)

    def __repr__(self) -> str:
        return f"BlindedIds({self.sender} of {self.host!r}, job {self.job_id!r}, {self.count})"


@dataclass(frozen=True)
class DoubleBlinded:
    """The host's secret times each of the guest's blinded ids, in the order the guest sent."""

    job_id: str
    host: str
    points: bytes

    _KIND: ClassVar[bytes] = b"double-blinded-ids"

    def __post_init__(self) -> None:
        _check_blob(self.job_id, self.host, self.points, POINT_BYTES, "double-blinded ids")

    @property
    def count(self) -> int:
        """Number of double-blinded ids."""
        return len(self.points) // POINT_BYTES

    def to_bytes(self) -> bytes:
        """Length-prefixed frames: label, kind, job id, host, count, points."""
        return _encode(self._KIND, self.job_id, self.host, self.count, self.points)

    @classmethod
    def from_bytes(cls, data: bytes) -> DoubleBlinded:
        """Parse; :class:`PsiError` if malformed."""
        _, job_id, host, payload = _decode(data, (cls._KIND,), POINT_BYTES, "double-blinded ids")
        return cls(job_id, host, payload)

    def __repr__(self) -> str:
        return f"DoubleBlinded(from {self.host!r}, job {self.job_id!r}, {self.count})"


@dataclass(frozen=True)
class Alignment:
    """The guest's answer to one host: positions in the host's blinded list, in the final order."""

    job_id: str
    host: str
    positions: tuple[int, ...]

    _KIND: ClassVar[bytes] = b"alignment"

    def __post_init__(self) -> None:
        _check_name(self.job_id, "alignment: the job id")
        _check_name(self.host, "alignment: the host name")
        if not isinstance(self.positions, tuple) or not all(map(_is_int, self.positions)):
            raise PsiError("psi: alignment: positions must be a tuple of integers")
        if len(self.positions) > PSI_MAX_IDS:
            raise PsiError(f"psi: alignment: more than {PSI_MAX_IDS} positions")
        if self.positions and not (min(self.positions) >= 0 and max(self.positions) < 2**32):
            raise PsiError("psi: alignment: a position is outside 0 .. 2**32 - 1")

    def to_bytes(self) -> bytes:
        """Length-prefixed frames: label, kind, job id, host, count, 4-byte positions."""
        payload = np.asarray(self.positions, dtype=_POSITION).tobytes()
        return _encode(self._KIND, self.job_id, self.host, len(self.positions), payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> Alignment:
        """Parse; :class:`PsiError` if malformed."""
        _, job_id, host, payload = _decode(data, (cls._KIND,), _POSITION.itemsize, "alignment")
        positions = tuple(np.frombuffer(payload, dtype=_POSITION).tolist())
        return cls(job_id, host, positions)

    def __repr__(self) -> str:
        return f"Alignment(to {self.host!r}, job {self.job_id!r}, {len(self.positions)})"


# --- roles --------------------------------------------------------------------------------


def _no_pickle(what: object) -> NoReturn:
    raise TypeError(f"a {type(what).__name__} holds secret scalars and cannot be pickled")


class _Pair:
    """The guest's state for one host."""

    __slots__ = ("double", "host_points", "key", "matches", "order", "sent")

    def __init__(self, n: int) -> None:
        self.key = X25519PrivateKey.generate()
        self.order = _random_order(n)  # the guest row sent at each position
        self.sent: BlindedIds | None = None
        self.host_points: dict[bytes, int] | None = None  # a * (b * Hc(y_j)) -> j
        self.double: list[bytes] | None = None  # b * (a * Hc(x)), in the order sent
        self.matches: dict[int, int] | None = None  # guest row -> host position


class PsiGuest:
    """The guest's side of the alignment with one or more hosts; no I/O.

    For every host: send :meth:`blinded_for`, pass the host's :class:`BlindedIds` to
    :meth:`receive_host_ids` and its :class:`DoubleBlinded` to :meth:`receive_double_blinded`
    (either order); when every host is done, :meth:`finish` gives the result and one
    :class:`Alignment` per host.
    """

    __slots__ = ("_config", "_ids", "_outcome", "_pairs", "_points")

    def __init__(self, config: PsiConfig, ids: Sequence[str], hosts: Sequence[str]) -> None:
        if not isinstance(config, PsiConfig):
            raise PsiError("psi: config must be a PsiConfig")
        names = [_check_name(h, "a host name") for h in hosts]
        if not names:
            raise PsiError("psi: the guest needs at least one host")
        if len(set(names)) != len(names):
            raise PsiError("psi: a host is named twice")
        self._config = config
        self._ids = _normalize_all(ids, config, "guest")
        _check_enough(len(self._ids), config, "the guest has")
        self._points = hash_to_curve(config.job_id, self._ids)
        self._pairs = {name: _Pair(len(self._ids)) for name in names}
        self._outcome: tuple[PsiResult, dict[str, Alignment]] | None = None

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        _no_pickle(self)

    def __repr__(self) -> str:
        return f"PsiGuest(job {self._config.job_id!r}, {len(self._ids)} ids, {len(self._pairs)})"

    def export_state(self) -> bytes:
        """Everything this guest holds between two messages, as bytes: each host's secret
        scalar and shuffle, what was sent and what was received. Secret: keep it owner-only.

        :class:`PsiError` once :meth:`finish` ran (keep its result instead).
        """
        if self._outcome is not None:
            raise PsiError("psi: a finished alignment has no state to save; keep its result")
        frames = [
            PSI_STATE_LABEL,
            b"guest",
            _binding(self._config, self._ids, b"guest", ",".join(self._pairs)),
        ]
        for host, pair in self._pairs.items():
            host_points = (
                None
                if pair.host_points is None
                else b"".join(p for p, _ in sorted(pair.host_points.items(), key=lambda i: i[1]))
            )
            matches = None
            if pair.matches is not None:
                rows = list(pair.matches)
                found = [pair.matches[r] for r in rows]
                matches = _order_bytes(rows) + _order_bytes(found)
            frames += [
                host.encode("utf-8"),
                _scalar_bytes(pair.key),
                _order_bytes(pair.order),
                _optional(None if pair.sent is None else pair.sent.points),
                _optional(host_points),
                _optional(None if pair.double is None else b"".join(pair.double)),
                _optional(matches),
            ]
        return join_frames(frames)

    @classmethod
    def restore(
        cls, config: PsiConfig, ids: Sequence[str], hosts: Sequence[str], state: bytes
    ) -> PsiGuest:
        """The guest :meth:`export_state` saved, for the same settings, ids and hosts.

        :class:`PsiError` if ``state`` is malformed or belongs to other settings or ids.
        """
        guest = cls(config, ids, hosts)
        per_host = 7
        frames = _state_frames(state, b"guest", 3 + per_host * len(guest._pairs))
        if frames[2] != _binding(config, guest._ids, b"guest", ",".join(guest._pairs)):
            raise PsiError("psi: the saved state belongs to other settings, ids or hosts")
        n = len(guest._ids)
        for k, host in enumerate(guest._pairs):
            name, key, order, sent, host_points, double, matches = frames[
                3 + per_host * k : 3 + per_host * (k + 1)
            ]
            if name != host.encode("utf-8"):
                raise PsiError("psi: the saved state lists other hosts")
            pair = guest._pairs[host]
            pair.key = _scalar_of(key)
            pair.order = _order_of(order, n)
            points = _read_optional(sent)
            if points is not None:
                pair.sent = BlindedIds(config.job_id, host, PsiRole.GUEST, points)
                if pair.sent.count != n:
                    raise PsiError("psi: saved state: the sent list does not fit the ids")
            table = _read_optional(host_points)
            if table is not None:
                split = _split_points(table)
                pair.host_points = dict(zip(split, range(len(split)), strict=True))
            doubled = _read_optional(double)
            pair.double = None if doubled is None else _split_points(doubled)
            found = _read_optional(matches)
            if found is not None:
                half = len(found) // 2
                rows = np.frombuffer(found[:half], dtype=_POSITION).tolist()
                positions = np.frombuffer(found[half:], dtype=_POSITION).tolist()
                pair.matches = dict(zip(rows, positions, strict=True))
        return guest

    def _pair(self, host: str, what: str) -> _Pair:
        pair = self._pairs.get(host)
        if pair is None:
            raise PsiError(f"psi: {what} from {host!r}, which is not a host of this alignment")
        return pair

    def _check_job(self, job_id: str, what: str) -> None:
        if job_id != self._config.job_id:
            raise PsiError(f"psi: {what} of job {job_id!r}, expected {self._config.job_id!r}")

    def blinded_for(self, host: str) -> BlindedIds:
        """Step 1: this party's ids blinded with the scalar kept for ``host``, shuffled."""
        pair = self._pair(host, "blinded ids")
        if pair.sent is None:
            points = self._points
            blinded = _multiply(pair.key, [points[row] for row in pair.order])
            pair.sent = BlindedIds(self._config.job_id, host, PsiRole.GUEST, b"".join(blinded))
        return pair.sent

    def receive_host_ids(self, message: BlindedIds) -> None:
        """Step 2: multiply a host's blinded ids by the guest's scalar for that host."""
        if not isinstance(message, BlindedIds):
            raise PsiError("psi: expected a host's BlindedIds")
        self._check_job(message.job_id, "blinded ids")
        if message.sender is not PsiRole.HOST:
            raise PsiError("psi: blinded ids sent by the guest cannot come from a host")
        pair = self._pair(message.host, "blinded ids")
        if pair.host_points is not None:
            raise PsiError(f"psi: blinded ids from {message.host!r} received twice")
        if message.count > self._config.max_ids:
            raise PsiError(
                f"psi: {message.host!r} sent {message.count} ids, more than {self._config.max_ids}"
            )
        _check_enough(message.count, self._config, f"{message.host!r} sent")
        points = _split_points(message.points)
        _check_points(points, f"blinded ids from {message.host!r}")
        product = _multiply(pair.key, points)
        _check_distinct(product, f"blinded ids from {message.host!r}")
        pair.host_points = dict(zip(product, range(len(product)), strict=True))
        self._match(pair)

    def receive_double_blinded(self, message: DoubleBlinded) -> None:
        """Step 2: a host's scalar times the guest's blinded ids."""
        if not isinstance(message, DoubleBlinded):
            raise PsiError("psi: expected a DoubleBlinded message")
        self._check_job(message.job_id, "double-blinded ids")
        pair = self._pair(message.host, "double-blinded ids")
        if pair.sent is None:
            raise PsiError(f"psi: double-blinded ids from {message.host!r}, who was sent nothing")
        if pair.double is not None:
            raise PsiError(f"psi: double-blinded ids from {message.host!r} received twice")
        if message.count != pair.sent.count:
            raise PsiError(
                f"psi: {message.host!r} returned {message.count} double-blinded ids "
                f"for {pair.sent.count} sent"
            )
        double = _split_points(message.points)
        _check_distinct(double, f"double-blinded ids from {message.host!r}")
        pair.double = double
        self._match(pair)

    @staticmethod
    def _match(pair: _Pair) -> None:
        if pair.host_points is None or pair.double is None:
            return
        found = map(pair.host_points.get, pair.double)
        pair.matches = {row: j for row, j in zip(pair.order, found, strict=True) if j is not None}
        pair.host_points = {}  # free the lookup table; the match is all that is needed

    def finish(self) -> tuple[PsiResult, dict[str, Alignment]]:
        """Step 3: the ids found at every host, in a random order, and each host's answer.

        Raises :class:`PsiError` if a host has not answered yet, or if the result is smaller
        than the job's minimum (then no host gets anything). Calling it again returns the
        same outcome.
        """
        if self._outcome is not None:
            return self._outcome
        waiting = sorted(host for host, pair in self._pairs.items() if pair.matches is None)
        if waiting:
            raise PsiError(f"psi: no complete answer yet from {', '.join(map(repr, waiting))}")
        matches = {h: pair.matches for h, pair in self._pairs.items() if pair.matches is not None}
        smallest: dict[int, int] = min(matches.values(), key=len)
        common = set(smallest)
        for host_matches in matches.values():
            common.intersection_update(host_matches)
        if len(common) < self._config.min_intersection:
            raise PsiError(
                f"psi: the intersection has {len(common)} identifiers, fewer than the job's "
                f"minimum of {self._config.min_intersection}"
            )
        candidates = sorted(common)
        rows = tuple(candidates[k] for k in _random_order(len(candidates)))
        result = PsiResult(tuple(self._ids[row] for row in rows), rows)
        alignments = {
            host: Alignment(self._config.job_id, host, tuple(found[row] for row in rows))
            for host, found in matches.items()
        }
        self._outcome = (result, alignments)
        return self._outcome


class PsiHost:
    """A host's side of the alignment with the guest; no I/O.

    Send :meth:`blinded` (it needs nothing from the guest), answer the guest's
    :class:`BlindedIds` with :meth:`double_blind`, and turn the guest's :class:`Alignment`
    into the result with :meth:`finish`.
    """

    __slots__ = ("_config", "_doubled", "_ids", "_key", "_name", "_order", "_result", "_sent")

    def __init__(self, config: PsiConfig, ids: Sequence[str], name: str) -> None:
        if not isinstance(config, PsiConfig):
            raise PsiError("psi: config must be a PsiConfig")
        self._name = _check_name(name, "the host name")
        self._config = config
        self._ids = _normalize_all(ids, config, "host")
        _check_enough(len(self._ids), config, "the host has")
        self._key = X25519PrivateKey.generate()
        self._order = _random_order(len(self._ids))  # the host row sent at each position
        self._sent: BlindedIds | None = None
        self._doubled = False
        self._result: PsiResult | None = None

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        _no_pickle(self)

    def __repr__(self) -> str:
        return f"PsiHost({self._name!r}, job {self._config.job_id!r}, {len(self._ids)} ids)"

    def export_state(self) -> bytes:
        """Everything this host holds between two messages, as bytes: its secret scalar,
        its shuffle, the list it sent and whether it answered. Secret: keep it owner-only.

        :class:`PsiError` once :meth:`finish` ran (keep its result instead).
        """
        if self._result is not None:
            raise PsiError("psi: a finished alignment has no state to save; keep its result")
        return join_frames(
            [
                PSI_STATE_LABEL,
                b"host",
                _binding(self._config, self._ids, b"host", self._name),
                _scalar_bytes(self._key),
                _order_bytes(self._order),
                _optional(None if self._sent is None else self._sent.points),
                b"\x01" if self._doubled else b"\x00",
            ]
        )

    @classmethod
    def restore(cls, config: PsiConfig, ids: Sequence[str], name: str, state: bytes) -> PsiHost:
        """The host :meth:`export_state` saved, for the same settings, ids and name.

        :class:`PsiError` if ``state`` is malformed or belongs to other settings or ids.
        """
        host = cls(config, ids, name)
        frames = _state_frames(state, b"host", 7)
        if frames[2] != _binding(config, host._ids, b"host", host._name):
            raise PsiError("psi: the saved state belongs to other settings, ids or name")
        host._key = _scalar_of(frames[3])
        host._order = _order_of(frames[4], len(host._ids))
        points = _read_optional(frames[5])
        if points is not None:
            host._sent = BlindedIds(config.job_id, host._name, PsiRole.HOST, points)
            if host._sent.count != len(host._ids):
                raise PsiError("psi: saved state: the sent list does not fit the ids")
        if frames[6] not in (b"\x00", b"\x01"):
            raise PsiError("psi: saved state is malformed")
        host._doubled = frames[6] == b"\x01"
        return host

    def _check(self, job_id: str, host: str, what: str) -> None:
        if job_id != self._config.job_id:
            raise PsiError(f"psi: {what} of job {job_id!r}, expected {self._config.job_id!r}")
        if host != self._name:
            raise PsiError(f"psi: {what} meant for {host!r}, not {self._name!r}")

    def blinded(self) -> BlindedIds:
        """Step 1: this host's ids hashed, blinded with its scalar, shuffled."""
        if self._sent is None:
            ids = self._ids
            points = hash_to_curve(self._config.job_id, [ids[row] for row in self._order])
            blob = b"".join(_multiply(self._key, points))
            self._sent = BlindedIds(self._config.job_id, self._name, PsiRole.HOST, blob)
        return self._sent

    def double_blind(self, message: BlindedIds) -> DoubleBlinded:
        """Step 2: the host's scalar times each of the guest's blinded ids, same order."""
        if not isinstance(message, BlindedIds):
            raise PsiError("psi: expected the guest's BlindedIds")
        self._check(message.job_id, message.host, "blinded ids")
        if message.sender is not PsiRole.GUEST:
            raise PsiError("psi: blinded ids sent by a host cannot come from the guest")
        if self._doubled:
            raise PsiError("psi: the guest's blinded ids were already answered")
        if message.count > self._config.max_ids:
            raise PsiError(
                f"psi: the guest sent {message.count} ids, more than {self._config.max_ids}"
            )
        _check_enough(message.count, self._config, "the guest sent")
        points = _split_points(message.points)
        _check_points(points, "the guest's blinded ids")
        blob = b"".join(_multiply(self._key, points))
        self._doubled = True
        return DoubleBlinded(self._config.job_id, self._name, blob)

    def finish(self, message: Alignment) -> PsiResult:
        """Step 3: the aligned ids, in the guest's order, from the guest's positions."""
        if not isinstance(message, Alignment):
            raise PsiError("psi: expected an Alignment")
        self._check(message.job_id, message.host, "alignment")
        if self._result is not None:
            raise PsiError("psi: the alignment was already received")
        if self._sent is None or not self._doubled:
            raise PsiError("psi: an alignment before this host's blinded ids were exchanged")
        positions = message.positions
        if len(positions) < self._config.min_intersection:
            raise PsiError(
                f"psi: the intersection has {len(positions)} identifiers, fewer than the job's "
                f"minimum of {self._config.min_intersection}"
            )
        if positions and max(positions) >= self._sent.count:
            raise PsiError(
                f"psi: alignment: position {max(positions)} is outside the "
                f"{self._sent.count} ids this host sent"
            )
        if len(set(positions)) != len(positions):
            raise PsiError("psi: alignment: a position is repeated")
        order = self._order
        rows = tuple(order[j] for j in positions)
        self._result = PsiResult(tuple(self._ids[row] for row in rows), rows)
        return self._result
