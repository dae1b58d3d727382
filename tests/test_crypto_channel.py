"""The guest-host channel, from the relaying coordinator's side: it reads nothing, and every
message it replays, reorders, reflects, redirects or alters is refused without harm."""

from __future__ import annotations

import copy
import os
import pickle

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedprop.crypto import channel as channel_module
from fedprop.crypto.channel import (
    Channel,
    ChannelError,
    ChannelOffer,
    PendingChannel,
    start_channel,
)
from fedprop.crypto.identity import Manifest, NodeIdentity, generate_identity, sign
from fedprop.crypto.params import CHANNEL_TRANSCRIPT_LABEL
from fedprop.errors import FedpropError
from fedprop.framing import join_frames

JOB = "vfl-2026-007"
GUEST, HOST, OTHER = "bank", "partner", "partner-2"
MARKER = b"residuals-of-customer-0042:"


@pytest.fixture(scope="module")
def nodes() -> dict[str, NodeIdentity]:
    return {name: generate_identity(name) for name in (GUEST, HOST, OTHER)}


@pytest.fixture(scope="module")
def coordinator() -> NodeIdentity:
    return generate_identity("coordinator")


@pytest.fixture(scope="module")
def manifest(nodes: dict[str, NodeIdentity], coordinator: NodeIdentity) -> Manifest:
    return Manifest("test-fed", tuple(n.public for n in nodes.values()), coordinator.public)


def _relay(offer: ChannelOffer) -> ChannelOffer:
    """What the coordinator does with an offer: carry its bytes."""
    return ChannelOffer.from_bytes(offer.to_bytes())


def _pair(
    nodes: dict[str, NodeIdentity],
    manifest: Manifest,
    job_id: str = JOB,
    a: str = GUEST,
    b: str = HOST,
) -> tuple[Channel, Channel]:
    pending_a, offer_a = start_channel(nodes[a], manifest, job_id=job_id, peer=b)
    pending_b, offer_b = start_channel(nodes[b], manifest, job_id=job_id, peer=a)
    return pending_a.complete(_relay(offer_b)), pending_b.complete(_relay(offer_a))


def _payload(n: int = 4096) -> bytes:
    return MARKER + os.urandom(n)


# --- what must work ---------------------------------------------------------------------


def test_roundtrip_in_both_directions(nodes: dict[str, NodeIdentity], manifest: Manifest) -> None:
    guest, host = _pair(nodes, manifest)
    for step in range(5):
        predictions = _payload()
        topic = f"epoch-0/batch-{step}/predictions"
        assert host.open(topic, guest.seal(topic, b"")) == b""
        assert host.open("p", guest.seal("p", predictions)) == predictions
        residuals = _payload()
        assert guest.open("r", host.seal("r", residuals)) == residuals
    extra = host.seal("r", b"x")  # the directions count independently
    assert guest.open("r", extra) == b"x"
    assert (guest.sent, guest.received, host.sent, host.received) == (10, 6, 6, 10)


def test_the_empty_payload_and_a_large_one(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    assert host.open("t", guest.seal("t", b"")) == b""
    big = os.urandom(8 * 2**20)
    message = guest.seal("t", bytearray(big))
    assert len(message) == len(big) + 28  # 12-byte header, 16-byte tag: sizes are visible
    assert host.open("t", memoryview(message)) == big


def test_nonces_are_the_per_direction_counter(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    messages = [guest.seal("t", b"same payload") for _ in range(3)]
    assert [int.from_bytes(m[4:12], "big") for m in messages] == [0, 1, 2]
    assert len({m[12:] for m in messages}) == 3  # equal payloads, unequal ciphertexts
    assert int.from_bytes(host.seal("t", b"")[4:12], "big") == 0


# --- the relaying coordinator -----------------------------------------------------------


def test_the_coordinator_sees_no_plaintext_and_no_topic(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    pending_g, offer_g = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    pending_h, offer_h = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    relayed = [offer_g.to_bytes(), offer_h.to_bytes()]
    guest = pending_g.complete(ChannelOffer.from_bytes(relayed[1]))
    host = pending_h.complete(ChannelOffer.from_bytes(relayed[0]))
    payloads = [MARKER + bytes(4096), MARKER * 100, _payload()]
    topic = "epoch-9/secret-step-name"
    for payload in payloads:
        relayed.append(guest.seal(topic, payload))
        assert host.open(topic, relayed[-1]) == payload
        relayed.append(host.seal(topic, payload))
        assert guest.open(topic, relayed[-1]) == payload
    wire = b"".join(relayed)
    assert MARKER not in wire
    assert MARKER[:8] not in wire
    assert topic.encode() not in wire
    assert bytes(64) not in wire  # a zero payload does not show through


def test_the_coordinator_cannot_stand_in_for_a_party(
    nodes: dict[str, NodeIdentity], manifest: Manifest, coordinator: NodeIdentity
) -> None:
    # It is not a node: it cannot open a channel under its own name...
    with pytest.raises(ChannelError, match="not a node"):
        start_channel(coordinator, manifest, job_id=JOB, peer=HOST)
    # ...nor under a party's name with its own keys (man in the middle).
    fake_guest = NodeIdentity(GUEST, coordinator.signing, coordinator.sealing)
    with pytest.raises(ChannelError, match="not the ones the manifest"):
        start_channel(fake_guest, manifest, job_id=JOB, peer=HOST)
    pending_h, _ = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    mitm = generate_identity(GUEST)
    own = Manifest("test-fed", (mitm.public, nodes[HOST].public))  # a manifest it made up
    _, forged = start_channel(mitm, own, job_id=JOB, peer=HOST)
    with pytest.raises(ChannelError, match="not signed by the key of 'bank'"):
        pending_h.complete(forged)


def test_the_coordinator_cannot_swap_the_ephemeral_key(
    nodes: dict[str, NodeIdentity], manifest: Manifest, coordinator: NodeIdentity
) -> None:
    pending_h, _ = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    _, genuine = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    _, its_own = start_channel(nodes[OTHER], manifest, job_id=JOB, peer=GUEST)
    swapped = ChannelOffer(
        genuine.federation,
        genuine.job_id,
        genuine.sender,
        genuine.recipient,
        its_own.ephemeral,
        genuine.signature,
    )
    with pytest.raises(ChannelError, match="not signed"):
        pending_h.complete(swapped)


def test_stolen_long_term_keys_do_not_open_recorded_messages(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    """Forward secrecy: the relay records a channel, then steals both parties' long-term keys."""
    pending_g, offer_g = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    pending_h, offer_h = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    ephemeral_g = pending_g._ephemeral  # only to check the replica derivation below
    assert ephemeral_g is not None
    guest, host = pending_g.complete(offer_h), pending_h.complete(offer_g)
    assert pending_g._ephemeral is None  # complete() dropped it
    recorded = guest.seal("t", MARKER)
    assert host.open("t", recorded) == MARKER

    g, h = nodes[GUEST], nodes[HOST]
    transcript = join_frames(
        [
            *(CHANNEL_TRANSCRIPT_LABEL, b"test-fed", JOB.encode(), GUEST.encode(), HOST.encode()),
            *(offer_g.ephemeral, offer_h.ephemeral, g.public.sealing, h.public.sealing),
        ]
    )
    assert guest._keys is not None
    ad = channel_module._associated_data(guest._keys, GUEST, HOST, 0, "t")

    def opens(ikm: bytes) -> bool:
        key = channel_module._direction_key(ikm, transcript, GUEST, HOST)
        try:
            return key.decrypt(bytes(12), recorded[12:], ad) == MARKER
        except InvalidTag:
            return False

    static = g.sealing.exchange(h.public.sealing_key())
    ee = ephemeral_g.exchange(X25519PublicKey.from_public_bytes(offer_h.ephemeral))
    assert opens(ee + static)  # the replica is the real derivation...
    static_ephemeral = [
        g.sealing.exchange(X25519PublicKey.from_public_bytes(offer_h.ephemeral)),
        h.sealing.exchange(X25519PublicKey.from_public_bytes(offer_g.ephemeral)),
    ]
    thief = [static, *static_ephemeral, *(static + se for se in static_ephemeral)]
    assert not any(opens(ikm) for ikm in thief)  # ...and nothing a thief computes opens


# --- tampered, replayed, reordered and misdirected messages -------------------------------


def test_every_flipped_bit_is_refused(nodes: dict[str, NodeIdentity], manifest: Manifest) -> None:
    guest, host = _pair(nodes, manifest)
    message = guest.seal("t", b"partial predictions")
    for position in range(len(message)):
        for bit in (0x01, 0x80):
            tampered = bytearray(message)
            tampered[position] ^= bit
            with pytest.raises(ChannelError):
                host.open("t", bytes(tampered))
    assert host.received == 0
    assert host.open("t", message) == b"partial predictions"


def test_truncated_or_extended_messages_are_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    message = guest.seal("t", b"residuals")
    for length in range(len(message)):
        with pytest.raises(ChannelError):
            host.open("t", message[:length])
    for suffix in (b"\x00", message):
        with pytest.raises(ChannelError):
            host.open("t", message + suffix)
    assert host.open("t", message) == b"residuals"


def test_a_replayed_message_is_refused(nodes: dict[str, NodeIdentity], manifest: Manifest) -> None:
    guest, host = _pair(nodes, manifest)
    first = guest.seal("t", b"one")
    assert host.open("t", first) == b"one"
    with pytest.raises(ChannelError, match="already received"):
        host.open("t", first)
    assert host.open("t", guest.seal("t", b"two")) == b"two"
    with pytest.raises(ChannelError, match="replayed"):
        host.open("t", first)


def test_reordered_or_dropped_then_later_messages_are_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    first, second, third = (guest.seal("t", p) for p in (b"1", b"2", b"3"))
    with pytest.raises(ChannelError, match=r"expected message 0 .* got 1"):
        host.open("t", second)
    with pytest.raises(ChannelError, match="dropped or reordered"):
        host.open("t", third)
    assert [host.open("t", m) for m in (first, second, third)] == [b"1", b"2", b"3"]


def test_a_forged_counter_does_not_help(nodes: dict[str, NodeIdentity], manifest: Manifest) -> None:
    guest, host = _pair(nodes, manifest)
    first, second = guest.seal("t", b"1"), guest.seal("t", b"2")
    relabelled = second[:4] + (0).to_bytes(8, "big") + second[12:]  # message 1 posing as 0
    with pytest.raises(ChannelError, match="does not open"):
        host.open("t", relabelled)
    assert host.open("t", first) == b"1"
    assert host.open("t", second) == b"2"


def test_a_message_reflected_to_its_sender_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    to_host = guest.seal("t", b"for the host")
    with pytest.raises(ChannelError, match="does not open"):
        guest.open("t", to_host)  # counter 0 is what the guest expects from the host
    assert guest.received == 0
    assert guest.open("t", host.seal("t", b"for the guest")) == b"for the guest"
    assert host.open("t", to_host) == b"for the host"


def test_a_message_for_another_topic_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    message = guest.seal("epoch-1/batch-3/residuals", b"r")
    for wrong in ("epoch-1/batch-4/residuals", "epoch-1/batch-3/predictions", "x"):
        with pytest.raises(ChannelError, match="does not open"):
            host.open(wrong, message)
    assert host.open("epoch-1/batch-3/residuals", message) == b"r"


def test_a_message_of_another_job_or_pair_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    _, host_of_other_job = _pair(nodes, manifest, job_id="vfl-2026-008")
    _, other = _pair(nodes, manifest, b=OTHER)  # the other partner's channel with the bank
    message = guest.seal("t", b"for partner only")
    with pytest.raises(ChannelError, match="does not open"):
        host_of_other_job.open("t", message)
    with pytest.raises(ChannelError, match="does not open"):
        other.open("t", message)
    assert host.open("t", message) == b"for partner only"


def test_a_rejection_leaves_the_channel_unchanged(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    assert host.open("t", guest.seal("t", b"0")) == b"0"
    genuine = guest.seal("t", b"1")
    later = guest.seal("t", b"2")
    attacks = [
        b"",
        b"garbage",
        os.urandom(len(genuine)),
        genuine[:-1],
        genuine[:12] + bytes(len(genuine) - 12),
        later,
        host.seal("t", b"reflected"),
    ]
    for attack in attacks:
        with pytest.raises(ChannelError):
            host.open("t", attack)
    with pytest.raises(ChannelError):
        host.open("other topic", genuine)
    assert host.received == 1
    assert host.open("t", genuine) == b"1"
    assert host.open("t", later) == b"2"


# --- handshakes -------------------------------------------------------------------------


def test_offers_roundtrip_and_garbage_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    _, offer = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    assert ChannelOffer.from_bytes(offer.to_bytes()) == offer
    data = offer.to_bytes()
    for bad in (b"", b"\x00" * 10, data[:-1], data + b"\x00", os.urandom(5000)):
        with pytest.raises(ChannelError, match="not a fedprop channel offer"):
            ChannelOffer.from_bytes(bad)


def test_every_tampered_offer_byte_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    pending_h, _ = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    _, offer = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    data = offer.to_bytes()
    for position in range(len(data)):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises(ChannelError):
            pending_h.complete(ChannelOffer.from_bytes(bytes(tampered)))
    # Every rejection left the handshake pending: the genuine offer still completes it.
    assert isinstance(pending_h.complete(offer), Channel)


def test_an_offer_from_a_key_outside_the_manifest_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    pending_h, _ = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    impostor = generate_identity(GUEST)  # same name, keys the manifest does not list
    _, forged = start_channel(
        impostor, Manifest("test-fed", (impostor.public, nodes[HOST].public)), job_id=JOB, peer=HOST
    )
    with pytest.raises(ChannelError, match="not signed by the key of 'bank' in the manifest"):
        pending_h.complete(forged)


def test_an_offer_for_another_job_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    pending_h, _ = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    _, other_job = start_channel(nodes[GUEST], manifest, job_id="vfl-2026-008", peer=HOST)
    with pytest.raises(ChannelError, match="for job 'vfl-2026-008', not 'vfl-2026-007'"):
        pending_h.complete(other_job)
    relabelled = ChannelOffer(
        other_job.federation,
        JOB,
        other_job.sender,
        other_job.recipient,
        other_job.ephemeral,
        other_job.signature,
    )
    with pytest.raises(ChannelError, match="not signed"):
        pending_h.complete(relabelled)


def test_an_offer_for_another_peer_or_federation_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    pending_g, offer_g = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    _, to_other = start_channel(nodes[HOST], manifest, job_id=JOB, peer=OTHER)
    with pytest.raises(ChannelError, match="is for 'partner-2', not 'bank'"):
        pending_g.complete(to_other)  # the host's offer to partner-2, redirected
    _, from_other = start_channel(nodes[OTHER], manifest, job_id=JOB, peer=GUEST)
    with pytest.raises(ChannelError, match="comes from 'partner-2', not 'partner'"):
        pending_g.complete(from_other)  # another node's offer, passed off as the host's
    with pytest.raises(ChannelError, match="comes from 'bank'"):
        pending_g.complete(offer_g)  # its own offer, reflected
    redirected = ChannelOffer(
        to_other.federation, JOB, HOST, GUEST, to_other.ephemeral, to_other.signature
    )
    with pytest.raises(ChannelError, match="not signed"):
        pending_g.complete(redirected)
    other_fed = Manifest("other-fed", manifest.nodes, manifest.coordinator)
    _, foreign = start_channel(nodes[HOST], other_fed, job_id=JOB, peer=GUEST)
    with pytest.raises(ChannelError, match="federation 'other-fed', not 'test-fed'"):
        pending_g.complete(foreign)


def test_a_signed_low_order_key_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    pending_g, _ = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    zero = bytes(32)  # X25519 with it gives the all-zero secret
    message = channel_module._offer_message("test-fed", JOB, HOST, GUEST, zero)
    offer = ChannelOffer("test-fed", JOB, HOST, GUEST, zero, sign(nodes[HOST], message))
    with pytest.raises(ChannelError, match="unusable key"):
        pending_g.complete(offer)


def test_a_second_handshake_for_the_same_job_has_new_keys(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest_1, host_1 = _pair(nodes, manifest)
    guest_2, host_2 = _pair(nodes, manifest)
    old, new = guest_1.seal("t", b"same"), guest_2.seal("t", b"same")
    assert old[:12] == new[:12]  # same counter...
    assert old[12:] != new[12:]  # ...under another key
    with pytest.raises(ChannelError, match="does not open"):
        host_2.open("t", old)
    assert host_2.open("t", new) == b"same"
    assert host_1.open("t", old) == b"same"


def test_a_replayed_old_offer_yields_a_channel_nobody_shares(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    # Handshake 1 completes; the coordinator keeps the host's offer.
    pending_g1, offer_g1 = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    pending_h1, old_offer_h = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    pending_g1.complete(old_offer_h)
    pending_h1.complete(offer_g1)
    # Handshake 2: the coordinator hands the guest the old offer instead of the new one.
    pending_g2, offer_g2 = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    pending_h2, _ = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    guest = pending_g2.complete(old_offer_h)  # a one-round handshake cannot tell (see docs)
    host = pending_h2.complete(offer_g2)
    with pytest.raises(ChannelError, match="does not open"):
        host.open("t", guest.seal("t", b"to host"))
    with pytest.raises(ChannelError, match="does not open"):
        guest.open("t", host.seal("t", b"to guest"))


def test_a_handshake_completes_once(nodes: dict[str, NodeIdentity], manifest: Manifest) -> None:
    pending_g, offer_g = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    _, offer_h = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    assert pending_g.offer == offer_g
    pending_g.complete(offer_h)
    with pytest.raises(ChannelError, match="already complete"):
        pending_g.complete(offer_h)  # a second channel with the same keys would reuse nonces


def test_start_channel_refuses_bad_parties(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    with pytest.raises(ChannelError, match="'nobody' is not a node"):
        start_channel(nodes[GUEST], manifest, job_id=JOB, peer="nobody")
    with pytest.raises(ChannelError, match="to itself"):
        start_channel(nodes[GUEST], manifest, job_id=JOB, peer=GUEST)
    with pytest.raises(ChannelError, match="job id"):
        start_channel(nodes[GUEST], manifest, job_id="", peer=HOST)
    with pytest.raises(ChannelError, match="not the ones the manifest"):
        start_channel(generate_identity(GUEST), manifest, job_id=JOB, peer=HOST)


# --- misuse and limits ------------------------------------------------------------------


def test_channels_cannot_be_copied_or_pickled(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    pending, _ = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    guest, _ = _pair(nodes, manifest)
    objects: list[Channel | PendingChannel] = [pending, guest]
    for obj in objects:
        for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="reuse nonces"):
                duplicate(obj)


def test_a_closed_channel_refuses_everything(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    message = guest.seal("t", b"x")
    host.close()
    with pytest.raises(ChannelError, match="closed"):
        host.open("t", message)
    with pytest.raises(ChannelError, match="closed"):
        host.seal("t", b"y")


def test_bad_topics_and_payloads_are_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest, host = _pair(nodes, manifest)
    for topic in ("", "x" * 257):
        with pytest.raises(ChannelError, match="topic"):
            guest.seal(topic, b"p")
    with pytest.raises(TypeError):
        guest.seal("t", "not bytes")  # type: ignore[arg-type]
    monkeypatch.setattr(channel_module, "CHANNEL_MAX_PAYLOAD_BYTES", 1000)
    with pytest.raises(ChannelError, match="exceeds the limit of 1000"):
        guest.seal("t", bytes(1001))
    assert guest.sent == 0
    # A message larger than the limit is refused before decryption.
    monkeypatch.setattr(channel_module, "CHANNEL_MAX_PAYLOAD_BYTES", 2000)
    big = guest.seal("t", bytes(1500))
    monkeypatch.setattr(channel_module, "CHANNEL_MAX_PAYLOAD_BYTES", 1000)
    with pytest.raises(ChannelError, match="malformed"):
        host.open("t", big)


def test_sending_stops_at_the_message_limit(
    nodes: dict[str, NodeIdentity], manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel_module, "CHANNEL_MAX_MESSAGES", 3)
    guest, host = _pair(nodes, manifest)
    messages = [guest.seal("t", bytes([i])) for i in range(3)]
    with pytest.raises(ChannelError, match="open a new channel"):
        guest.seal("t", b"one too many")
    assert guest.sent == 3
    assert [host.open("t", m) for m in messages] == [b"\x00", b"\x01", b"\x02"]


def test_sending_stops_at_the_byte_limit(
    nodes: dict[str, NodeIdentity], manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel_module, "CHANNEL_MAX_BYTES", 100)
    guest, host = _pair(nodes, manifest)
    host.open("t", guest.seal("t", bytes(60)))
    with pytest.raises(ChannelError, match="open a new channel"):
        guest.seal("t", bytes(41))
    host.open("t", guest.seal("t", bytes(40)))
    assert guest.sent == host.received == 2


def test_channel_error_is_a_fedprop_error() -> None:
    assert issubclass(ChannelError, FedpropError)


# --- saved state: a node that runs every message in a fresh process -----------------------


def test_a_saved_handshake_completes_after_a_restart(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    pending_g, offer_g = start_channel(nodes[GUEST], manifest, job_id=JOB, peer=HOST)
    pending_h, offer_h = start_channel(nodes[HOST], manifest, job_id=JOB, peer=GUEST)
    saved = pending_g.export_state()
    del pending_g  # the process ends
    restored = PendingChannel.restore(nodes[GUEST], manifest, saved)
    guest, host = restored.complete(offer_h), pending_h.complete(offer_g)
    assert host.open("t", guest.seal("t", MARKER)) == MARKER
    with pytest.raises(ChannelError, match="completed handshake"):
        restored.export_state()
    with pytest.raises(ChannelError, match="belongs to"):
        PendingChannel.restore(nodes[HOST], manifest, saved)  # another node's handshake
    with pytest.raises(ChannelError, match="not a saved"):
        PendingChannel.restore(nodes[GUEST], manifest, saved[:-1])


def test_a_restored_channel_continues_both_directions(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    host.open("a", guest.seal("a", b"one"))
    guest.open("b", host.seal("b", b"two"))
    guest_again = Channel.restore(guest.export_state(), job_id=JOB, name=GUEST, peer=HOST)
    host_again = Channel.restore(host.export_state(), job_id=JOB, name=HOST, peer=GUEST)
    assert (guest_again.sent, guest_again.received) == (1, 1)
    assert host_again.open("c", guest_again.seal("c", b"three")) == b"three"
    assert guest_again.open("d", host_again.seal("d", b"four")) == b"four"
    with pytest.raises(ChannelError, match="is 'bank' -> 'partner'"):
        Channel.restore(guest.export_state(), job_id=JOB, name=HOST, peer=GUEST)
    with pytest.raises(ChannelError, match="for job"):
        Channel.restore(guest.export_state(), job_id="another-job", name=GUEST, peer=HOST)
    for bad in (b"", b"garbage", guest.export_state()[:-3]):
        with pytest.raises(ChannelError, match="saved channel"):
            Channel.restore(bad, job_id=JOB, name=GUEST, peer=HOST)


def test_the_counter_is_saved_before_a_sealed_message_exists(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    """Write-ahead: seal, "crash" without saving anything else, restore: no nonce reuse."""
    guest, host = _pair(nodes, manifest)
    disk: dict[str, bytes] = {"guest": guest.export_state()}
    before_seal = disk["guest"]

    saved_counters: list[int] = []

    def journal(blob: bytes) -> None:
        saved_counters.append(Channel.restore(blob, job_id=JOB, name=GUEST, peer=HOST).sent)
        disk["guest"] = blob

    guest.set_journal(journal)
    first = guest.seal("t", b"first")
    # Saved while sealing message 0, before it was returned: "the next counter is 1".
    assert saved_counters == [1]
    del guest  # the node crashes after the message left, before saving anything else
    restored = Channel.restore(disk["guest"], job_id=JOB, name=GUEST, peer=HOST)
    second = restored.seal("t", b"second")
    assert first[4:12] != second[4:12]  # different counters, so different nonces
    assert host.open("t", first) == b"first" and host.open("t", second) == b"second"
    # Without the journal a restart from the last save would seal again under nonce 0.
    stale = Channel.restore(before_seal, job_id=JOB, name=GUEST, peer=HOST)
    assert stale.seal("t", b"reused")[4:12] == first[4:12]


def test_a_failing_journal_lets_no_message_out(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)

    def broken(blob: bytes) -> None:
        raise OSError("disk full")

    guest.set_journal(broken)
    with pytest.raises(OSError, match="disk full"):
        guest.seal("t", b"never sent")
    guest.set_journal(None)
    message = guest.seal("t", b"next")  # counter 0 was skipped, never used
    assert message[4:12] == (1).to_bytes(8, "big")
    with pytest.raises(ChannelError, match="expected message 0"):
        host.open("t", message)  # the peer notices the gap: the job stops, nothing leaks


def test_a_restored_channel_refuses_what_it_already_accepted(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    guest, host = _pair(nodes, manifest)
    saved: list[bytes] = []
    host.set_journal(saved.append)
    message = guest.seal("t", b"residuals")
    assert host.open("t", message) == b"residuals"
    restored = Channel.restore(saved[-1], job_id=JOB, name=HOST, peer=GUEST)
    with pytest.raises(ChannelError, match="replayed"):
        restored.open("t", message)
