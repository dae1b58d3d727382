"""The job-key ceremony: one node makes the job's Paillier key and seals it to every party.

The spec's ``key-holder`` node generates a job-scoped key pair, seals the
private key to each party's X25519 key from the federation manifest
(itself included, so that no node keeps state between messages), and signs
the bundle. The coordinator relays the bundle with every request and keeps
only the public key. Each node checks, before using the key, that the bundle
is for this job, was signed by the holder the spec names, and has the key size
the spec asks for (never under the minimum); the coordinator checks the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fedprop.crypto.identity import (
    Manifest,
    NodeIdentity,
    NodePublicKeys,
    SealedBlob,
    open_sealed,
    seal,
    sign,
    verify,
)
from fedprop.crypto.paillier import PrivateKey, PublicKey, generate_keypair
from fedprop.crypto.params import MIN_PAILLIER_BITS
from fedprop.errors import FedpropError
from fedprop.framing import join_frames, split_frames

__all__ = ["KeyBundle", "KeyBundleError", "KeyedJob", "make_bundle"]

_CONTEXT = b"fedprop-job-key-bundle-v1"


class KeyedJob(Protocol):
    """What a job key is made for: a training spec, or a query's key scope.

    ``id`` binds the bundle and every sealed copy; it must never be the id of another
    job (queries use their ``query:<id>:<digest>`` contribution id).
    """

    @property
    def id(self) -> str: ...
    @property
    def key_holder(self) -> str: ...
    @property
    def key_bits(self) -> int: ...
    @property
    def parties(self) -> tuple[str, ...]: ...


class KeyBundleError(FedpropError):
    """A key bundle is malformed, not for this job, or not signed by its holder."""


@dataclass(frozen=True)
class KeyBundle:
    """The job's public key and its private key sealed to each party, signed by the holder."""

    job_id: str
    holder: str
    public_key: bytes
    sealed: tuple[tuple[str, bytes], ...]
    signature: bytes

    def _signed_part(self) -> bytes:
        parties = [f for name, blob in self.sealed for f in (name.encode(), blob)]
        return join_frames(
            [_CONTEXT, self.job_id.encode(), self.holder.encode(), self.public_key, *parties]
        )

    def to_bytes(self) -> bytes:
        """Canonical bytes: the signed part and the signature."""
        return join_frames([self._signed_part(), self.signature])

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyBundle:
        """Parse a bundle; raise :class:`KeyBundleError` if malformed."""
        try:
            signed, signature = split_frames(data, "key bundle")
            frames = split_frames(signed, "key bundle")
        except (FedpropError, ValueError):
            raise KeyBundleError("key bundle is malformed") from None
        if len(frames) < 4 or frames[0] != _CONTEXT or (len(frames) - 4) % 2:
            raise KeyBundleError("key bundle is malformed")
        sealed = tuple((frames[i].decode(), frames[i + 1]) for i in range(4, len(frames), 2))
        return cls(frames[1].decode(), frames[2].decode(), frames[3], sealed, signature)

    def public(self, spec: KeyedJob, manifest: Manifest) -> PublicKey:
        """The job's public key, after checking the bundle against the spec and manifest."""
        if self.job_id != spec.id:
            raise KeyBundleError(f"key bundle is for job '{self.job_id}', not '{spec.id}'")
        if self.holder != spec.key_holder:
            raise KeyBundleError(
                f"key bundle was made by '{self.holder}', the job names '{spec.key_holder}'"
            )
        try:
            verify(_keys_of(manifest, self.holder), self._signed_part(), self.signature)
        except FedpropError:
            raise KeyBundleError(
                f"key bundle signature of '{self.holder}' does not verify"
            ) from None
        public = PublicKey.from_bytes(self.public_key)
        if public.bits < max(spec.key_bits, MIN_PAILLIER_BITS):
            raise KeyBundleError(
                f"job key has {public.bits} bits; at least {max(spec.key_bits, MIN_PAILLIER_BITS)} "
                "are required"
            )
        if sorted(name for name, _ in self.sealed) != sorted(spec.parties):
            raise KeyBundleError("key bundle is not sealed to exactly the job's parties")
        return public

    def private(self, spec: KeyedJob, manifest: Manifest, identity: NodeIdentity) -> PrivateKey:
        """This node's copy of the job's private key (checks as :meth:`public`, then opens)."""
        public = self.public(spec, manifest)
        blob = dict(self.sealed).get(identity.name)
        if blob is None:
            raise KeyBundleError(f"key bundle holds no key for '{identity.name}'")
        secret = open_sealed(
            SealedBlob.from_bytes(blob),
            identity,
            job_id=spec.id,
            sender=_keys_of(manifest, self.holder),
        )
        private = PrivateKey.from_bytes(secret)
        if private.public != public:
            raise KeyBundleError("sealed private key does not match the bundle's public key")
        return private


def _keys_of(manifest: Manifest, name: str) -> NodePublicKeys:
    for node in manifest.nodes:
        if node.name == name:
            return node
    raise KeyBundleError(f"'{name}' is not in the federation manifest")


def make_bundle(spec: KeyedJob, manifest: Manifest, identity: NodeIdentity) -> KeyBundle:
    """Generate the job key (at the key holder) and seal it to every party."""
    if identity.name != spec.key_holder:
        raise KeyBundleError(
            f"'{identity.name}' is not the key holder of job '{spec.id}' ({spec.key_holder})"
        )
    private = generate_keypair(spec.key_bits)
    secret = private.to_bytes()
    sealed = tuple(
        (party, seal(secret, _keys_of(manifest, party), job_id=spec.id, sender=identity).to_bytes())
        for party in spec.parties
    )
    unsigned = KeyBundle(spec.id, identity.name, private.public.to_bytes(), sealed, b"")
    return KeyBundle(
        spec.id, identity.name, unsigned.public_key, sealed, sign(identity, unsigned._signed_part())
    )
