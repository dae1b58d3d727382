"""Secure sums: how a vector leaves a node, is added up, and is opened again.

Every vector a node sends (training statistics, model updates, score
histograms) goes through a :class:`SumScheme`:

- ``seal`` at the node turns the vector into an opaque payload;
- ``add`` at the coordinator combines the payloads of all parties, using only
  public information;
- ``open`` at a node turns the combined payload back into the sum.

``paillier`` (the default): the payload is packed Paillier ciphertexts under
the job key. The coordinator holds only the public key, so it can add but not
read. ``plaintext``: the payload is the vector itself, a baseline.

Each payload travels as a :class:`Contribution` signed by its node
(Ed25519, keys from the federation manifest). A node asked to open a sum
checks that it is exactly the sum of one signed contribution from every party
of the job, for this job, step and round; so the coordinator cannot get a
single party's ciphertext decrypted by passing it off as an aggregate, and
cannot swap, replay or drop a contribution unnoticed.

What each role learns (paillier): the coordinator, ciphertexts and the sums
nodes release to it (metrics; the final model where released); each node, the
sums. Limit: a node colluding with the coordinator holds the job key and could
decrypt any party's contribution; threshold decryption removes this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from fedprop.crypto.identity import Manifest, NodeIdentity, sign, verify
from fedprop.crypto.packing import PackingSpec, pack, unpack_sum
from fedprop.crypto.paillier import (
    PrivateKey,
    PublicKey,
    add_ciphertexts,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    decrypt_many,
    encrypt_many,
)
from fedprop.errors import FedpropError
from fedprop.framing import join_frames, split_frames

__all__ = [
    "FIXED_POINT_CLIP",
    "FIXED_POINT_FRAC_BITS",
    "MAX_COUNT",
    "AggregateError",
    "Contribution",
    "PaillierScheme",
    "PlaintextScheme",
    "SignedSum",
    "SumScheme",
    "VectorKind",
    "check_aggregate",
    "check_contributions",
    "release_digest",
    "sign_contribution",
]

#: Largest magnitude any summed value may have; larger values are refused, not clipped,
#: because counts and statistics must be exact. (2**40 ~ 1.1e12, far above any count,
#: sum of squares or example-weighted parameter a bank's data produces.)
FIXED_POINT_CLIP = float(2**40)
#: Fractional bits of the fixed-point encoding: a summed value's error is at most
#: parties * 2**-21, below 1e-6 for up to a few parties.
FIXED_POINT_FRAC_BITS = 20
#: Largest count one party may contribute in a count slot (rows in a histogram bin). Counts
#: are packed as exact integers in 29-bit slots (4 parties), 70 per ciphertext at 2048 bits,
#: against 31 values per ciphertext for fixed-point reals.
MAX_COUNT = 2**24

_CONTRIBUTION_CONTEXT = b"fedprop-contribution-v1"


class VectorKind(StrEnum):
    """What a summed vector holds (bound into every signature)."""

    STATS = "stats"
    UPDATE = "update"
    HISTOGRAM = "histogram"


class AggregateError(FedpropError):
    """A sum or contribution is not what it claims to be."""


@dataclass(frozen=True)
class Contribution:
    """One party's sealed vector and its signature."""

    party: str
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedSum:
    """An aggregate with the signed contributions it was made from, as relayed to nodes."""

    aggregate: bytes
    contributions: tuple[Contribution, ...]

    def to_bytes(self) -> bytes:
        """Canonical bytes."""
        parts = [f for c in self.contributions for f in (c.party.encode(), c.payload, c.signature)]
        return join_frames([self.aggregate, *parts])

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedSum:
        """Parse; raise :class:`AggregateError` if malformed."""
        try:
            frames = split_frames(data, "signed sum")
        except FedpropError as exc:
            raise AggregateError(str(exc)) from None
        if not frames or (len(frames) - 1) % 3:
            raise AggregateError("signed sum is malformed")
        contributions = tuple(
            Contribution(frames[i].decode(), frames[i + 1], frames[i + 2])
            for i in range(1, len(frames), 3)
        )
        return cls(frames[0], contributions)


def release_digest(job_id: str, kind: VectorKind, round_: int, values: np.ndarray) -> bytes:
    """What a node signs when it releases a sum: the job, the sum's kind and round, the values."""
    payload = np.asarray(values, dtype="<f8").tobytes()
    return _digest(job_id, kind, round_, "release", payload)


def _digest(job_id: str, kind: VectorKind, round_: int, party: str, payload: bytes) -> bytes:
    parts = [_CONTRIBUTION_CONTEXT, job_id.encode(), kind.value.encode(), str(round_).encode()]
    parts += [party.encode(), hashlib.sha256(payload).digest()]
    return b"\x00".join(hashlib.sha256(p).digest() for p in parts)


def sign_contribution(
    identity: NodeIdentity, job_id: str, kind: VectorKind, round_: int, payload: bytes
) -> Contribution:
    """Sign ``payload`` as this node's contribution to one sum."""
    signature = sign(identity, _digest(job_id, kind, round_, identity.name, payload))
    return Contribution(identity.name, payload, signature)


class SumScheme(Protocol):
    """Seal, add and open vectors for one job.

    ``counts`` says how many leading values of a vector are counts: integers in
    ``[0, MAX_COUNT]``, summed exactly. The rest are real numbers.
    """

    def seal(self, vector: np.ndarray, counts: int = 0) -> bytes:
        """A node's payload for ``vector``."""
        ...

    def add(self, payloads: Sequence[bytes]) -> bytes:
        """The payload of the sum (public information only)."""
        ...

    def open(self, payload: bytes, length: int, summands: int, counts: int = 0) -> np.ndarray:
        """The sum of ``summands`` vectors of ``length`` values."""
        ...


def _checked_vector(vector: np.ndarray, counts: int) -> np.ndarray:
    values = np.asarray(vector, dtype=np.float64)
    if values.ndim != 1:
        raise AggregateError(f"expected a 1-D vector, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise AggregateError("vector contains NaN or infinity")
    if not 0 <= counts <= values.size:
        raise AggregateError(f"{counts} counts declared in a vector of {values.size} values")
    head = values[:counts]
    if np.any(head != np.rint(head)) or np.any(head < 0) or np.any(head > MAX_COUNT):
        raise AggregateError(f"counts must be whole numbers in [0, {MAX_COUNT}]")
    if values.size and float(np.max(np.abs(values))) > FIXED_POINT_CLIP:
        raise AggregateError(
            f"a value of magnitude {float(np.max(np.abs(values))):.3g} exceeds the "
            f"encodable range {FIXED_POINT_CLIP:.3g}"
        )
    return values


class PlaintextScheme:
    """Vectors in the clear, as float64 bytes (the baseline)."""

    def seal(self, vector: np.ndarray, counts: int = 0) -> bytes:
        """The vector's bytes."""
        return _checked_vector(vector, counts).astype("<f8").tobytes()

    def add(self, payloads: Sequence[bytes]) -> bytes:
        """Element-wise sum."""
        vectors = [self._vector(p) for p in payloads]
        if len({v.size for v in vectors}) != 1:
            raise AggregateError("contributions have different lengths")
        total: np.ndarray = np.sum(np.stack(vectors), axis=0)
        return total.astype("<f8").tobytes()

    def open(self, payload: bytes, length: int, summands: int, counts: int = 0) -> np.ndarray:
        """The vector; ``summands`` and ``counts`` are not needed in the clear."""
        vector = self._vector(payload)
        if vector.size != length:
            raise AggregateError(f"sum has {vector.size} values, expected {length}")
        return vector

    @staticmethod
    def _vector(payload: bytes) -> np.ndarray:
        if len(payload) % 8:
            raise AggregateError("plaintext payload is not a float64 vector")
        return np.frombuffer(payload, dtype="<f8").astype(np.float64)


class PaillierScheme:
    """Packed Paillier: many fixed-point values, or exact counts, per ciphertext.

    Nodes pass the private key (they decrypt); the coordinator passes only the
    public key and can only ``add``. A vector's counts and its reals are packed
    separately (counts first), each with its own :class:`PackingSpec`.
    """

    def __init__(self, key: PublicKey | PrivateKey, parties: int) -> None:
        self.key = key
        self.public = key.public if isinstance(key, PrivateKey) else key
        self.reals = PackingSpec.for_job(
            self.public.bits, parties, FIXED_POINT_CLIP, FIXED_POINT_FRAC_BITS
        )
        self.counts = PackingSpec.for_job(self.public.bits, parties, MAX_COUNT, frac_bits=0)

    def ciphertexts_for(self, length: int, counts: int = 0) -> int:
        """Ciphertexts in a payload of ``length`` values, the first ``counts`` of them counts."""
        return self.counts.ciphertexts_for(counts) + self.reals.ciphertexts_for(length - counts)

    def seal(self, vector: np.ndarray, counts: int = 0) -> bytes:
        """Encrypt the packed vector (values beyond the clip, or bad counts, are refused)."""
        values = _checked_vector(vector, counts)
        plaintexts = pack(self.counts, values[:counts]) + pack(self.reals, values[counts:])
        return ciphertexts_to_bytes(self.public, encrypt_many(self.key, plaintexts))

    def add(self, payloads: Sequence[bytes]) -> bytes:
        """Multiply ciphertexts: the encryption of the sum."""
        try:
            lists = [ciphertexts_from_bytes(self.public, p) for p in payloads]
        except FedpropError as exc:
            raise AggregateError(f"contribution refused: {exc}") from None
        return ciphertexts_to_bytes(self.public, add_ciphertexts(self.public, lists))

    def open(self, payload: bytes, length: int, summands: int, counts: int = 0) -> np.ndarray:
        """Decrypt and unpack a sum of ``summands`` vectors."""
        if not isinstance(self.key, PrivateKey):
            raise AggregateError("opening a sum needs the job's private key")
        ciphertexts = ciphertexts_from_bytes(self.public, payload)
        expected = self.ciphertexts_for(length, counts)
        if len(ciphertexts) != expected:
            raise AggregateError(
                f"sum has {len(ciphertexts)} ciphertexts, {length} values need {expected}"
            )
        plaintexts = decrypt_many(self.key, ciphertexts)
        split = self.counts.ciphertexts_for(counts)
        head = unpack_sum(self.counts, plaintexts[:split], counts, summands)
        tail = unpack_sum(self.reals, plaintexts[split:], length - counts, summands)
        return np.concatenate([head, tail])


def check_contributions(
    contributions: Sequence[Contribution],
    *,
    manifest: Manifest,
    parties: Sequence[str],
    job_id: str,
    kind: VectorKind,
    round_: int,
) -> list[Contribution]:
    """Refuse ``contributions`` unless they are one validly signed contribution per party,
    for this job, kind and round; return them in ``parties`` order."""
    by_party: Mapping[str, Contribution] = {c.party: c for c in contributions}
    if len(by_party) != len(contributions):
        raise AggregateError(f"{kind} round {round_}: a party contributed twice")
    if set(by_party) != set(parties):
        missing = ", ".join(sorted(set(parties) - set(by_party))) or "none"
        extra = ", ".join(sorted(set(by_party) - set(parties))) or "none"
        raise AggregateError(
            f"{kind} round {round_}: contributions do not match the job's parties "
            f"(missing: {missing}; unexpected: {extra})"
        )
    keys = {node.name: node for node in manifest.nodes}
    for party in parties:
        c = by_party[party]
        if party not in keys:
            raise AggregateError(f"party '{party}' is not in the federation manifest")
        try:
            verify(keys[party], _digest(job_id, kind, round_, party, c.payload), c.signature)
        except FedpropError:
            raise AggregateError(
                f"{kind} round {round_}: contribution of '{party}' has a bad signature"
            ) from None
    return [by_party[p] for p in parties]


def check_aggregate(
    scheme: SumScheme,
    aggregate: bytes,
    contributions: Sequence[Contribution],
    *,
    manifest: Manifest,
    parties: Sequence[str],
    job_id: str,
    kind: VectorKind,
    round_: int,
) -> None:
    """Refuse ``aggregate`` unless it is the sum of one valid contribution per party.

    Run by every node before it opens a sum.
    """
    ordered = check_contributions(
        contributions, manifest=manifest, parties=parties, job_id=job_id, kind=kind, round_=round_
    )
    if scheme.add([c.payload for c in ordered]) != aggregate:
        raise AggregateError(
            f"{kind} round {round_}: the aggregate is not the sum of the parties' contributions"
        )
