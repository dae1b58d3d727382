"""An end-to-end encrypted, authenticated channel between two parties, relayed by the coordinator.

In a vertical job the guest and each host exchange encrypted partial predictions and
residuals through the coordinator. This channel lets them do so without the coordinator
being able to read, alter, replay, reorder or redirect a single message.

Handshake (one round, both sides run the same code; ``A`` and ``B`` are the two node
names, ``lo``/``hi`` the smaller/larger of them):

- each side makes a fresh ephemeral X25519 key pair ``(e, E)`` and sends a
  :class:`ChannelOffer`: ``federation, job_id, sender, recipient, E`` and its Ed25519
  signature (:func:`fedprop.crypto.identity.sign`) over
  ``CHANNEL_SIGNATURE_LABEL || frames(federation, job_id, sender, recipient, E)``;
  the order of the names (who offers to whom) is the signer's role;
- each side checks the peer's offer against the peer's signing key in the pinned
  :class:`~fedprop.crypto.identity.Manifest` (and that it names this federation, this
  job, the peer as sender and itself as recipient), then computes
  ``ee = X25519(e_self, E_peer)`` and ``ss = X25519(sealing_self, sealing_peer)`` (the
  static-static secret of the two manifest sealing keys);
- ``transcript = frames(CHANNEL_TRANSCRIPT_LABEL, federation, job_id, lo, hi, E_lo, E_hi,
  sealing_lo, sealing_hi)``; the key of direction ``s -> r`` is
  ``HKDF-SHA256(ikm = ee || ss, salt = transcript,
  info = CHANNEL_HKDF_INFO_LABEL || frames(s, r))``, 32 bytes (AES-256-GCM);
- the ephemeral private key is dropped as soon as the keys are derived.

Messages (:meth:`Channel.seal`, :meth:`Channel.open`): each direction has its own
counter ``i``, starting at 0. Message ``i`` is ``b"fpc\\x01" || i (8 bytes, big-endian) ||
AES-256-GCM(key_s->r, nonce = i as 96-bit big-endian, payload, ad)`` with
``ad = frames(CHANNEL_AD_LABEL, federation, job_id, s, r, i, topic)``; ``topic`` is the
caller's label of the protocol step (say ``"epoch-3/batch-17/residuals"``), never sent:
the receiver supplies the topic it expects. The receiver accepts only its next expected
counter, and builds the nonce and associated data from its own state, not from the wire.

Security argument. The handshake is signed ephemeral Diffie-Hellman, as in SIGMA
(Krawczyk, CRYPTO 2003) and TLS 1.3 with signature authentication: each ephemeral key is
signed together with both names and the job, and both names, the job and both ephemeral
keys go into the key derivation, which rules out unknown-key-share and misbinding
attacks. Only the holders of ``e_A`` and ``e_B`` know ``ee`` (X25519 CDH), so the keys are
fresh for every handshake, even when a job id is reused or one side were to reuse its
ephemeral key, and an AES key and nonce pair never repeats; they are forward secret (once
both ephemeral keys are gone, stealing the long-term keys does not recover them). Mixing
in ``ss`` means that impersonating a party needs its sealing key as well as its signing
key. AES-256-GCM with counter nonces gives confidentiality and integrity of each message
(NIST SP 800-38D); binding the sender, recipient, counter and topic into the associated
data, and accepting only the next counter, makes every replayed, reordered, reflected
(sent back to its author), cross-job, cross-step, truncated or altered message fail to
open. The limits on messages and bytes per direction (params) keep AES-GCM inside its
usage bounds.

What the relaying coordinator learns: both names, the job, that a channel was set up,
and for each message its direction, its exact payload size (there is no padding), its
counter and its timing. It learns nothing of the payloads or the topics, and cannot
compute the keys (it holds no private key of either party).

Failures. Every rejection raises :class:`ChannelError` and changes nothing: a rejected
message does not advance the counter and does not close the channel, so a message
injected by the relay cannot desynchronize or tear down an honest channel (the relay can
stall a job anyway, by dropping messages). What a rejection means for the job is the
caller's decision; a protocol should abort rather than wait for a retry.

Limits. A one-round handshake has no key confirmation: a replayed old offer (or an offer
from a handshake the peer abandoned) is accepted by :meth:`PendingChannel.complete`, but
the channel it yields shares no key with anyone, so the first message either way fails to
open. The channel cannot see messages dropped at the end of a stream: the protocol must
know how many messages a step carries (:attr:`Channel.received` helps). A party whose
signing and sealing keys are stolen before a handshake can be impersonated in it. Python
cannot wipe memory: keys leave memory when the channel (or :meth:`Channel.close`) drops
them and the garbage collector reclaims them. A :class:`Channel` is safe to share between
threads but refuses to be copied or pickled: two copies would reuse nonces.

Saved state (for a node that runs every message in a fresh process): :meth:`Channel.export_state`
and :meth:`Channel.restore` carry the two direction keys and counters, and
:meth:`PendingChannel.export_state` / :meth:`PendingChannel.restore` a handshake in progress
(its ephemeral private key), as bytes the node keeps in its own per-job state folder (owner
only). A saved state *is* the channel: restoring one copy twice and sealing with both would
reuse nonces. So a channel with a journal (:meth:`Channel.set_journal`) writes its advanced
state through the journal *before* :meth:`Channel.seal` encrypts and returns a message
(write-ahead): a node that crashes after a message left, without saving anything else,
restores a counter past every counter it used. A counter persisted but never used is only
skipped (the peer then refuses the next message: the job stops, nothing leaks). Opening
journals too, so a restored channel refuses every message it had already accepted.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn, SupportsIndex, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedprop.crypto.identity import (
    Manifest,
    ManifestError,
    NodeIdentity,
    NodePublicKeys,
    SignatureError,
    sign,
    verify,
)
from fedprop.crypto.params import (
    CHANNEL_AD_LABEL,
    CHANNEL_AEAD_KEY_BYTES,
    CHANNEL_AEAD_NONCE_BYTES,
    CHANNEL_HKDF_HASH,
    CHANNEL_HKDF_INFO_LABEL,
    CHANNEL_MAX_BYTES,
    CHANNEL_MAX_MESSAGES,
    CHANNEL_MAX_PAYLOAD_BYTES,
    CHANNEL_PENDING_STATE_LABEL,
    CHANNEL_SIGNATURE_LABEL,
    CHANNEL_STATE_LABEL,
    CHANNEL_TRANSCRIPT_LABEL,
)
from fedprop.errors import FedpropError
from fedprop.framing import FramingError, join_frames, split_frames

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelOffer",
    "PendingChannel",
    "start_channel",
]

_OFFER_MAGIC: Final = b"fedprop-channel-offer-v1"
_OFFER_FRAMES: Final = 7
_MAX_OFFER_BYTES: Final = 4096
_KEY_BYTES: Final = 32  # raw X25519 public key
_SIGNATURE_BYTES: Final = 64  # Ed25519
_MAX_JOB_ID_BYTES: Final = 256
_MAX_TOPIC_BYTES: Final = 256
_MESSAGE_MAGIC: Final = b"fpc\x01"
_COUNTER: Final = struct.Struct(">Q")
_HEADER_BYTES: Final = len(_MESSAGE_MAGIC) + _COUNTER.size
_TAG_BYTES: Final = 16  # AES-GCM

_Bytes: TypeAlias = bytes | bytearray | memoryview

#: What a channel calls with its exported state whenever a counter advances (write-ahead).
Journal: TypeAlias = Callable[[bytes], None]


class ChannelError(FedpropError):
    """A channel offer or message that is malformed, not authentic, or not the one expected."""


def _check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > limit:
        raise ChannelError(f"{what} must be a non-empty string of at most {limit} bytes")
    return value


def _node(manifest: Manifest, name: str) -> NodePublicKeys:
    try:
        return manifest.node(name)
    except ManifestError as exc:
        raise ChannelError(str(exc)) from None


def _no_copy(what: object) -> NoReturn:
    raise TypeError(
        f"a {type(what).__name__} cannot be copied or pickled: two copies would reuse nonces"
    )


def _offer_message(
    federation: str, job_id: str, sender: str, recipient: str, ephemeral: bytes
) -> bytes:
    """What a party signs over its offer; the order of the names is the signer's role."""
    names = (federation, job_id, sender, recipient)
    return CHANNEL_SIGNATURE_LABEL + join_frames([*(n.encode("utf-8") for n in names), ephemeral])


# --- the handshake ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelOffer:
    """One side's signed ephemeral X25519 key for a channel with one peer, for one job."""

    federation: str
    job_id: str
    sender: str
    recipient: str
    ephemeral: bytes
    signature: bytes

    def __post_init__(self) -> None:
        for what in ("federation", "job_id", "sender", "recipient"):
            _check_text(getattr(self, what), what, _MAX_JOB_ID_BYTES)
        if not isinstance(self.ephemeral, bytes) or len(self.ephemeral) != _KEY_BYTES:
            raise ChannelError(f"channel offer key must be {_KEY_BYTES} raw bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != _SIGNATURE_BYTES:
            raise ChannelError(f"channel offer signature must be {_SIGNATURE_BYTES} bytes")

    def to_bytes(self) -> bytes:
        """Canonical bytes: every field, length-prefixed."""
        fields = (self.federation, self.job_id, self.sender, self.recipient)
        return join_frames(
            [_OFFER_MAGIC, *(f.encode("utf-8") for f in fields), self.ephemeral, self.signature]
        )

    @classmethod
    def from_bytes(cls, data: _Bytes) -> ChannelOffer:
        """Parse :meth:`to_bytes` output; :class:`ChannelError` if malformed."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("a channel offer must be bytes")
        data = bytes(data)
        try:
            if len(data) > _MAX_OFFER_BYTES:
                raise FramingError("too long")
            frames = split_frames(data, "channel offer")
        except FramingError:
            raise ChannelError("not a fedprop channel offer (malformed or truncated)") from None
        if len(frames) != _OFFER_FRAMES or frames[0] != _OFFER_MAGIC:
            raise ChannelError("not a fedprop channel offer (malformed or truncated)")
        try:
            federation, job_id, sender, recipient = (f.decode("utf-8") for f in frames[1:5])
        except UnicodeDecodeError:
            raise ChannelError("channel offer has malformed names") from None
        return cls(federation, job_id, sender, recipient, frames[5], frames[6])


class PendingChannel:
    """One side of a handshake in progress: complete it with the peer's :class:`ChannelOffer`.

    Single use: :meth:`complete` succeeds once, after which the ephemeral key is gone.
    Made by :func:`start_channel`; thread-safe; cannot be copied or pickled.
    """

    __slots__ = ("_ephemeral", "_identity", "_job_id", "_lock", "_manifest", "_offer", "_peer")

    def __init__(
        self,
        identity: NodeIdentity,
        manifest: Manifest,
        job_id: str,
        peer: NodePublicKeys,
        ephemeral: X25519PrivateKey,
        offer: ChannelOffer,
    ) -> None:
        self._identity = identity
        self._manifest = manifest
        self._job_id = job_id
        self._peer = peer
        self._ephemeral: X25519PrivateKey | None = ephemeral
        self._offer = offer
        self._lock = threading.Lock()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        _no_copy(self)

    def __repr__(self) -> str:
        return (
            f"PendingChannel({self._identity.name!r} -> {self._peer.name!r}, job {self._job_id!r})"
        )

    @property
    def offer(self) -> ChannelOffer:
        """This side's offer, to send to the peer (also returned by :func:`start_channel`)."""
        return self._offer

    def export_state(self) -> bytes:
        """This handshake in progress as bytes (its ephemeral *private* key: keep it secret,
        owner-only, and delete it once :meth:`complete` succeeded).

        :class:`ChannelError` if the handshake is already complete.
        """
        with self._lock:
            if self._ephemeral is None:
                raise ChannelError("a completed handshake has no state to save")
            raw = self._ephemeral.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            return join_frames([CHANNEL_PENDING_STATE_LABEL, raw, self._offer.to_bytes()])

    @classmethod
    def restore(cls, identity: NodeIdentity, manifest: Manifest, state: _Bytes) -> PendingChannel:
        """The handshake :meth:`export_state` saved, for ``identity`` in ``manifest``.

        :class:`ChannelError` if ``state`` is malformed or was saved by another node, for
        another federation, or with an offer that its key does not match.
        """
        if not isinstance(identity, NodeIdentity) or not isinstance(manifest, Manifest):
            raise TypeError("identity must be a NodeIdentity and manifest a Manifest")
        try:
            frames = split_frames(bytes(state), "saved handshake")
        except (FramingError, TypeError):
            raise ChannelError("not a saved channel handshake (malformed)") from None
        if len(frames) != 3 or frames[0] != CHANNEL_PENDING_STATE_LABEL:
            raise ChannelError("not a saved channel handshake of this version")
        offer = ChannelOffer.from_bytes(frames[2])
        if offer.sender != identity.name or offer.federation != manifest.federation:
            raise ChannelError(
                f"the saved handshake belongs to '{offer.sender}' in federation "
                f"'{offer.federation}', not to '{identity.name}' in '{manifest.federation}'"
            )
        if _node(manifest, identity.name) != identity.public:
            raise ChannelError(f"the keys of '{identity.name}' are not the manifest's")
        try:
            ephemeral = X25519PrivateKey.from_private_bytes(frames[1])
        except ValueError:
            raise ChannelError("the saved handshake holds no usable key") from None
        public = ephemeral.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        if public != offer.ephemeral:
            raise ChannelError("the saved handshake's key does not match its offer")
        peer = _node(manifest, offer.recipient)
        return cls(identity, manifest, offer.job_id, peer, ephemeral, offer)

    def complete(self, peer_offer: ChannelOffer) -> Channel:
        """Check the peer's offer and derive the channel keys.

        :class:`ChannelError` if the offer is for another federation, job, sender or
        recipient, is not signed by the peer's key in the manifest, or carries an unusable
        key; or if this handshake was already completed. A rejected offer leaves the
        handshake pending.
        """
        if not isinstance(peer_offer, ChannelOffer):
            raise TypeError("peer_offer must be a ChannelOffer (parse bytes with from_bytes)")
        with self._lock:
            return self._complete(peer_offer)

    def _complete(self, peer_offer: ChannelOffer) -> Channel:
        me, peer, job_id = self._identity.name, self._peer.name, self._job_id
        federation = self._manifest.federation
        if self._ephemeral is None:
            raise ChannelError(
                f"the handshake of '{me}' with '{peer}' for job '{job_id}' is already complete"
            )
        if peer_offer.federation != federation:
            raise ChannelError(
                f"channel offer is for federation '{peer_offer.federation}', not '{federation}'"
            )
        if peer_offer.job_id != job_id:
            raise ChannelError(f"channel offer is for job '{peer_offer.job_id}', not '{job_id}'")
        if peer_offer.sender != peer:
            raise ChannelError(f"channel offer comes from '{peer_offer.sender}', not '{peer}'")
        if peer_offer.recipient != me:
            raise ChannelError(f"channel offer is for '{peer_offer.recipient}', not '{me}'")
        try:
            signed = _offer_message(federation, job_id, peer, me, peer_offer.ephemeral)
            verify(self._peer, signed, peer_offer.signature)
        except SignatureError:
            raise ChannelError(
                f"channel offer is not signed by the key of '{peer}' in the manifest"
            ) from None
        if peer_offer.ephemeral == self._offer.ephemeral:
            raise ChannelError("channel offer reflects this side's own key")
        try:
            ee = self._ephemeral.exchange(X25519PublicKey.from_public_bytes(peer_offer.ephemeral))
            ss = self._identity.sealing.exchange(self._peer.sealing_key())
        except ValueError:
            raise ChannelError(f"channel offer of '{peer}' carries an unusable key") from None
        offers = {me: self._offer, peer: peer_offer}
        keys = {me: self._identity.public.sealing, peer: self._peer.sealing}
        lo, hi = sorted((me, peer))
        transcript = join_frames(
            [
                CHANNEL_TRANSCRIPT_LABEL,
                federation.encode("utf-8"),
                job_id.encode("utf-8"),
                lo.encode("utf-8"),
                hi.encode("utf-8"),
                offers[lo].ephemeral,
                offers[hi].ephemeral,
                keys[lo],
                keys[hi],
            ]
        )
        send_key = _direction_secret(ee + ss, transcript, me, peer)
        receive_key = _direction_secret(ee + ss, transcript, peer, me)
        self._ephemeral = None  # forward secrecy, and no second channel with the same keys
        return Channel(_Keys.of(federation, job_id, me, peer, send_key, receive_key))


def _direction_secret(ikm: bytes, transcript: bytes, sender: str, recipient: str) -> bytes:
    info = CHANNEL_HKDF_INFO_LABEL + join_frames([sender.encode(), recipient.encode()])
    return HKDF(
        algorithm=CHANNEL_HKDF_HASH(),
        length=CHANNEL_AEAD_KEY_BYTES,
        salt=transcript,
        info=info,
    ).derive(ikm)


def _direction_key(ikm: bytes, transcript: bytes, sender: str, recipient: str) -> AESGCM:
    return AESGCM(_direction_secret(ikm, transcript, sender, recipient))


def start_channel(
    identity: NodeIdentity, manifest: Manifest, *, job_id: str, peer: str
) -> tuple[PendingChannel, ChannelOffer]:
    """Start a handshake of ``identity`` with node ``peer`` for ``job_id``.

    Send the returned offer to the peer (through the coordinator) and complete the
    pending channel with the peer's offer. Both parties must be nodes of ``manifest``,
    and ``identity``'s keys must be the ones it lists. A fresh ephemeral key every call.
    """
    if not isinstance(identity, NodeIdentity) or not isinstance(manifest, Manifest):
        raise TypeError("identity must be a NodeIdentity and manifest a Manifest")
    job_id = _check_text(job_id, "job id", _MAX_JOB_ID_BYTES)
    if not isinstance(peer, str):
        raise TypeError("peer must be a node name")
    if peer == identity.name:
        raise ChannelError(f"'{peer}' cannot open a channel to itself")
    if _node(manifest, identity.name) != identity.public:
        raise ChannelError(
            f"the keys of '{identity.name}' are not the ones the manifest of federation "
            f"'{manifest.federation}' lists"
        )
    peer_keys = _node(manifest, peer)
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    federation = manifest.federation
    signature = sign(identity, _offer_message(federation, job_id, identity.name, peer, public))
    offer = ChannelOffer(federation, job_id, identity.name, peer, public, signature)
    return PendingChannel(identity, manifest, job_id, peer_keys, ephemeral, offer), offer


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Keys:
    federation: str
    job_id: str
    name: str
    peer: str
    send_raw: bytes = field(repr=False)
    receive_raw: bytes = field(repr=False)
    send: AESGCM = field(repr=False)
    receive: AESGCM = field(repr=False)

    @classmethod
    def of(
        cls, federation: str, job_id: str, name: str, peer: str, send: bytes, receive: bytes
    ) -> _Keys:
        return cls(federation, job_id, name, peer, send, receive, AESGCM(send), AESGCM(receive))


class Channel:
    """An established channel: :meth:`seal` messages to the peer, :meth:`open` theirs.

    Made by :meth:`PendingChannel.complete`. Thread-safe; cannot be copied or pickled.
    """

    __slots__ = (
        "_journal",
        "_keys",
        "_lock",
        "_received",
        "_received_bytes",
        "_sent",
        "_sent_bytes",
    )

    def __init__(self, keys: _Keys) -> None:
        if not isinstance(keys, _Keys):
            raise TypeError("a Channel is made by PendingChannel.complete")
        self._keys: _Keys | None = keys
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0
        self._sent_bytes = 0
        self._received_bytes = 0
        self._journal: Journal | None = None

    def set_journal(self, journal: Journal | None) -> None:
        """Call ``journal`` with :meth:`export_state` bytes each time a counter advances:
        in :meth:`seal` before the message is encrypted and returned (write-ahead), in
        :meth:`open` before the payload is returned. If the journal raises, the call
        raises and no message comes out (a counter it may have skipped is never reused)."""
        if journal is not None and not callable(journal):
            raise TypeError("journal must be callable")
        with self._lock:
            self._journal = journal

    def _state(self, keys: _Keys) -> bytes:
        numbers = (self._sent, self._received, self._sent_bytes, self._received_bytes)
        names = (keys.federation, keys.job_id, keys.name, keys.peer)
        return join_frames(
            [
                CHANNEL_STATE_LABEL,
                *(n.encode("utf-8") for n in names),
                keys.send_raw,
                keys.receive_raw,
                *(_COUNTER.pack(v) for v in numbers),
            ]
        )

    def export_state(self) -> bytes:
        """This channel as bytes: both direction keys and every counter. Secret (keep it
        owner-only), and single-use in spirit: sealing from two restored copies of one state
        would reuse nonces (see the module's notes on saved state)."""
        with self._lock:
            return self._state(self._live())

    @classmethod
    def restore(
        cls,
        state: _Bytes,
        *,
        job_id: str,
        name: str,
        peer: str,
        journal: Journal | None = None,
    ) -> Channel:
        """The channel :meth:`export_state` saved; :class:`ChannelError` if ``state`` is
        malformed or is not the channel of ``name`` with ``peer`` for ``job_id``."""
        try:
            frames = split_frames(bytes(state), "saved channel")
        except (FramingError, TypeError):
            raise ChannelError("not a saved channel (malformed)") from None
        if len(frames) != 11 or frames[0] != CHANNEL_STATE_LABEL:
            raise ChannelError("not a saved channel of this version")
        try:
            federation, saved_job, me, other = (f.decode("utf-8") for f in frames[1:5])
        except UnicodeDecodeError:
            raise ChannelError("the saved channel has malformed names") from None
        if (saved_job, me, other) != (job_id, name, peer):
            raise ChannelError(
                f"the saved channel is '{me}' -> '{other}' for job '{saved_job}', not "
                f"'{name}' -> '{peer}' for job '{job_id}'"
            )
        send, receive = frames[5], frames[6]
        if len(send) != CHANNEL_AEAD_KEY_BYTES or len(receive) != CHANNEL_AEAD_KEY_BYTES:
            raise ChannelError("the saved channel's keys are malformed")
        if any(len(f) != _COUNTER.size for f in frames[7:]):
            raise ChannelError("the saved channel's counters are malformed")
        sent, received, sent_bytes, received_bytes = (_COUNTER.unpack(f)[0] for f in frames[7:])
        channel = cls(_Keys.of(federation, job_id, name, peer, send, receive))
        channel._sent, channel._received = sent, received
        channel._sent_bytes, channel._received_bytes = sent_bytes, received_bytes
        channel._journal = journal
        return channel

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        _no_copy(self)

    def __repr__(self) -> str:
        state = "closed" if self._keys is None else f"sent {self._sent}, received {self._received}"
        return f"Channel({state})"

    @property
    def sent(self) -> int:
        """Messages sealed so far (the counter of the next one)."""
        return self._sent

    @property
    def received(self) -> int:
        """Messages opened so far (the counter expected next)."""
        return self._received

    def _live(self) -> _Keys:
        if self._keys is None:
            raise ChannelError("the channel is closed")
        return self._keys

    def close(self) -> None:
        """Drop the keys; every later :meth:`seal` or :meth:`open` raises ChannelError."""
        with self._lock:
            self._keys = None

    def seal(self, topic: str, payload: _Bytes) -> bytes:
        """Encrypt ``payload`` for the peer, bound to the protocol step ``topic``.

        :class:`ChannelError` if the payload is too large, or if this direction has
        carried its limit of messages or bytes (open a new channel).
        """
        topic = _check_text(topic, "topic", _MAX_TOPIC_BYTES)
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError("payload must be bytes")
        size = memoryview(payload).nbytes
        if size > CHANNEL_MAX_PAYLOAD_BYTES:
            raise ChannelError(
                f"payload of {size} bytes exceeds the limit of {CHANNEL_MAX_PAYLOAD_BYTES}"
            )
        with self._lock:
            keys = self._live()
            counter = self._sent
            if counter >= CHANNEL_MAX_MESSAGES or self._sent_bytes + size > CHANNEL_MAX_BYTES:
                raise ChannelError(
                    f"the channel to '{keys.peer}' has carried its limit of "
                    f"{CHANNEL_MAX_MESSAGES} messages or {CHANNEL_MAX_BYTES} bytes; "
                    "open a new channel"
                )
            self._sent = counter + 1
            self._sent_bytes += size
            if self._journal is not None:
                # Write-ahead: the advanced counter is saved before a message with it exists.
                self._journal(self._state(keys))
            ad = _associated_data(keys, keys.name, keys.peer, counter, topic)
            ciphertext = keys.send.encrypt(_nonce(counter), payload, ad)
        return _MESSAGE_MAGIC + _COUNTER.pack(counter) + ciphertext

    def open(self, topic: str, data: _Bytes) -> bytes:
        """The payload of the peer's next message, if it was sealed for ``topic``.

        :class:`ChannelError` for anything but the peer's next message, intact, for this
        job, this direction and this topic; the channel is then left unchanged.
        """
        topic = _check_text(topic, "topic", _MAX_TOPIC_BYTES)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("a channel message must be bytes")
        view = memoryview(data).cast("B")
        if not _HEADER_BYTES + _TAG_BYTES <= len(view) <= (
            _HEADER_BYTES + CHANNEL_MAX_PAYLOAD_BYTES + _TAG_BYTES
        ) or bytes(view[: len(_MESSAGE_MAGIC)]) != bytes(_MESSAGE_MAGIC):
            raise ChannelError("not a fedprop channel message (malformed or truncated)")
        (counter,) = _COUNTER.unpack_from(view, len(_MESSAGE_MAGIC))
        with self._lock:
            keys = self._live()
            expected = self._received
            if counter < expected:
                raise ChannelError(
                    f"message {counter} from '{keys.peer}' was already received "
                    f"(replayed); expected message {expected}"
                )
            if counter > expected:
                raise ChannelError(
                    f"expected message {expected} from '{keys.peer}', got {counter} "
                    "(a message was dropped or reordered)"
                )
            if self._received_bytes + len(view) - _HEADER_BYTES - _TAG_BYTES > CHANNEL_MAX_BYTES:
                raise ChannelError(
                    f"the channel from '{keys.peer}' has carried its limit of "
                    f"{CHANNEL_MAX_BYTES} bytes"
                )
            # The nonce and associated data come from this side's state, not from the wire.
            ad = _associated_data(keys, keys.peer, keys.name, expected, topic)
            try:
                payload = keys.receive.decrypt(_nonce(expected), view[_HEADER_BYTES:], ad)
            except InvalidTag:
                raise ChannelError(
                    f"message {counter} from '{keys.peer}' does not open: altered, for another "
                    "topic, job or direction, or from another handshake"
                ) from None
            self._received = expected + 1
            self._received_bytes += len(payload)
            if self._journal is not None:
                self._journal(self._state(keys))
        return payload


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(CHANNEL_AEAD_NONCE_BYTES, "big")


def _associated_data(keys: _Keys, sender: str, recipient: str, counter: int, topic: str) -> bytes:
    fields = (keys.federation, keys.job_id, sender, recipient)
    return join_frames(
        [
            CHANNEL_AD_LABEL,
            *(f.encode("utf-8") for f in fields),
            _COUNTER.pack(counter),
            topic.encode("utf-8"),
        ]
    )
