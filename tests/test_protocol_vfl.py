"""Vertical logistic regression (hetero LR) run in-process: the maths, the cipher modes, and
its privacy from each role's side.

The plaintext cipher runs the same algorithm on the same encoded integers, so a plaintext
run is the ground truth of an encrypted one: its messages carry in clear the partial scores,
residuals and gradients that the encrypted messages must hide. Attacker-side tests take
everything a role received (bytes) and try to recover what it must not hold.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import gmpy2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedprop.crypto.paillier import (
    CiphertextError,
    PrivateKey,
    PublicKey,
    add_encryptions,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    decrypt,
    decrypt_many,
    encrypt,
    encrypt_batch,
    generate_keypair,
    multi_exponentiate,
    pack_ciphertexts,
    scale_ciphertext,
)
from fedprop.crypto.params import VFL_MIN_BATCH_ROWS
from fedprop.errors import FedpropError
from fedprop.protocols.vfl import (
    ARBITER,
    CipherMode,
    EncryptedLoss,
    GuestResidual,
    Hop,
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
    VflMessageError,
    VflProtocolError,
    VflRun,
    batch_plan,
    score_in_process,
    train_in_process,
)

ROWS = 600
CONFIG = VflConfig(batch_size=200, max_epochs=2, learning_rate=0.5, cipher=CipherMode.PAILLIER)
PLAIN = VflConfig(batch_size=200, max_epochs=2, learning_rate=0.5, cipher=CipherMode.PLAINTEXT)


@dataclass(frozen=True)
class Data:
    guest: np.ndarray
    labels: np.ndarray
    hosts: dict[str, np.ndarray]


def make_data(rows: int = ROWS, hosts: tuple[int, ...] = (4,), seed: int = 1) -> Data:
    """Standardized columns at the guest and each host; labels from a logistic model that
    uses every party's columns (the hosts' most)."""
    rng = np.random.default_rng(seed)
    guest = rng.normal(size=(rows, 3))
    parts = {f"host-{k}": rng.normal(size=(rows, m)) for k, m in enumerate(hosts, start=1)}
    logit = guest @ [0.6, -0.4, 0.2] - 0.8
    for x in parts.values():
        logit = logit + x @ rng.choice([-1.2, -0.6, 0.6, 1.2], x.shape[1])
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return Data(guest, labels, parts)


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    """The arbiter's 2048-bit key, once for the module."""
    return generate_keypair(2048)


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


def recorded(data: Data, config: VflConfig, key: PrivateKey | None) -> tuple[VflRun, list[Hop]]:
    hops: list[Hop] = []
    run = train_in_process(
        data.guest, data.labels, data.hosts, config, key=key, observe=hops.append
    )
    return run, hops


@pytest.fixture(scope="module")
def plain_run(data: Data) -> tuple[VflRun, list[Hop]]:
    return recorded(data, PLAIN, None)


@pytest.fixture(scope="module")
def paillier_run(data: Data, key: PrivateKey) -> tuple[VflRun, list[Hop]]:
    return recorded(data, CONFIG, key)


def reference(
    data: Data, config: VflConfig
) -> tuple[list[float], np.ndarray, float, list[np.ndarray]]:
    """The same mini-batch SGD on the Taylor loss in float64, all columns in one place: the
    losses of each epoch, and the final guest weights, intercept and host weights."""

    def encode(x: np.ndarray) -> np.ndarray:
        scale = 2.0**config.feature_bits
        result: np.ndarray = np.rint(np.clip(x, -config.feature_clip, config.feature_clip) * scale)
        return result / scale

    guest, hosts = encode(data.guest), [encode(x) for x in data.hosts.values()]
    wg, b, wh = np.zeros(guest.shape[1]), 0.0, [np.zeros(x.shape[1]) for x in hosts]
    y = 2.0 * data.labels - 1
    losses = []
    for epoch in range(1, config.max_epochs + 1):
        total, rate = 0.0, config.rate(epoch)
        for rows in batch_plan(len(y), config, epoch):
            u = guest[rows] @ wg + b + sum(x[rows] @ w for x, w in zip(hosts, wh, strict=True))
            d = u / 4 - y[rows] / 2
            total += float(np.sum(np.log(2) - y[rows] * u / 2 + u * u / 8))
            n = len(rows)
            wg = wg - rate * (guest[rows].T @ d / n + config.l2 * wg)
            b -= rate * float(d.mean())
            wh = [
                w - rate * (x[rows].T @ d / n + config.l2 * w)
                for x, w in zip(hosts, wh, strict=True)
            ]
        penalty = config.l2 / 2 * (wg @ wg + sum(w @ w for w in wh))
        losses.append(float(total / len(y) + penalty))
    return losses, wg, b, wh


def auc(run: VflRun, data: Data) -> float:
    return float(roc_auc_score(data.labels, score_in_process(run, data.guest, data.hosts)))


# --- the maths and the two cipher modes ---------------------------------------------------------


def test_plaintext_run_is_the_taylor_sgd_of_hardy_et_al(
    data: Data, plain_run: tuple[VflRun, list[Hop]]
) -> None:
    run, _ = plain_run
    losses, wg, b, (wh,) = reference(data, PLAIN)
    # Only the scores' fixed point (2^-16) separates the protocol from float64.
    assert [e.loss for e in run.epochs] == pytest.approx(losses, abs=1e-5)
    assert run.guest.weights == pytest.approx(wg, abs=1e-5)
    assert run.guest.intercept == pytest.approx(b, abs=1e-5)
    assert run.hosts["host-1"].weights == pytest.approx(wh, abs=1e-5)
    assert losses[1] < losses[0]


def test_encrypted_run_equals_the_plaintext_run(
    data: Data, plain_run: tuple[VflRun, list[Hop]], paillier_run: tuple[VflRun, list[Hop]]
) -> None:
    plain, encrypted = plain_run[0], paillier_run[0]
    # Same encoded integers in both modes: the results agree bit for bit.
    assert [e.loss for e in encrypted.epochs] == [e.loss for e in plain.epochs]
    assert np.array_equal(encrypted.guest.weights, plain.guest.weights)
    assert encrypted.guest.intercept == plain.guest.intercept
    assert np.array_equal(encrypted.hosts["host-1"].weights, plain.hosts["host-1"].weights)
    assert auc(encrypted, data) == auc(plain, data) > 0.8
    guest_only = roc_auc_score(data.labels, data.guest @ plain.guest.weights)
    assert auc(encrypted, data) > guest_only + 0.05


def test_two_hosts_train_the_joint_model(key: PrivateKey) -> None:
    data = make_data(hosts=(3, 2), seed=2)
    one_epoch = VflConfig(batch_size=200, max_epochs=1, learning_rate=0.5)
    encrypted = train_in_process(data.guest, data.labels, data.hosts, one_epoch, key=key)
    _, wg, b, (w1, w2) = reference(data, one_epoch)
    assert encrypted.guest.weights == pytest.approx(wg, abs=1e-5)
    assert encrypted.guest.intercept == pytest.approx(b, abs=1e-5)
    assert encrypted.hosts["host-1"].weights == pytest.approx(w1, abs=1e-5)
    assert encrypted.hosts["host-2"].weights == pytest.approx(w2, abs=1e-5)
    record = encrypted.epochs[0]
    assert record.batches == 3 and record.round_trips == 3 * 3 + 2
    # Per batch: 2 forwards, 2 residual deliveries, 3 masked and 3 opened gradients;
    # per epoch 2 loss shares and 1 encrypted loss.
    assert record.messages == 3 * (2 + 2 + 3 + 3) + 3
    plain = train_in_process(
        data.guest,
        data.labels,
        data.hosts,
        dataclasses.replace(one_epoch, cipher=CipherMode.PLAINTEXT),
    )
    assert np.array_equal(plain.hosts["host-2"].weights, encrypted.hosts["host-2"].weights)


def test_l2_shrinks_the_weights_and_enters_the_loss(data: Data) -> None:
    strong = VflConfig(
        batch_size=200, max_epochs=3, learning_rate=0.5, l2=0.5, cipher=CipherMode.PLAINTEXT
    )
    free = VflConfig(batch_size=200, max_epochs=3, learning_rate=0.5, cipher=CipherMode.PLAINTEXT)
    shrunk = train_in_process(data.guest, data.labels, data.hosts, strong)
    loose = train_in_process(data.guest, data.labels, data.hosts, free)

    def norm(run: VflRun) -> float:
        return float(np.linalg.norm(np.r_[run.guest.weights, run.hosts["host-1"].weights]))

    assert norm(shrunk) < 0.7 * norm(loose)
    losses, _, _, (wh,) = reference(data, strong)
    assert [e.loss for e in shrunk.epochs] == pytest.approx(losses, abs=1e-5)
    assert shrunk.hosts["host-1"].weights == pytest.approx(wh, abs=1e-5)


def test_training_stops_early_when_the_loss_settles(data: Data) -> None:
    settle = VflConfig(batch_size=200, max_epochs=20, tolerance=0.02, cipher=CipherMode.PLAINTEXT)
    run = train_in_process(data.guest, data.labels, data.hosts, settle)
    assert run.stopped_early and 2 <= len(run.epochs) < 20
    losses = [e.loss for e in run.epochs]
    assert (
        abs(losses[-2] - losses[-1]) < 0.02 <= abs(losses[-3] - losses[-2])
        if len(losses) > 2
        else True
    )
    assert run.arbiter.results[-1].stop and not any(r.stop for r in run.arbiter.results[:-1])
    full = train_in_process(
        data.guest,
        data.labels,
        data.hosts,
        VflConfig(batch_size=200, max_epochs=4, tolerance=0.0, cipher=CipherMode.PLAINTEXT),
    )
    assert not full.stopped_early and len(full.epochs) == 4
    # Every role refuses to go on once the arbiter has stopped.
    with pytest.raises(VflProtocolError, match="over"):
        run.arbiter.open(MaskedGradient("guest", len(losses) + 1, 0, b"x"))


# --- what the arbiter holds ----------------------------------------------------------------------


def received_by(hops: list[Hop], role: str) -> list[Hop]:
    return [h for h in hops if h.recipient == role]


def parse(
    hop: Hop,
) -> HostForward | GuestResidual | MaskedGradient | OpenedGradient | LossShare | EncryptedLoss:
    kinds = {
        c.__name__: c
        for c in (
            HostForward,
            GuestResidual,
            MaskedGradient,
            OpenedGradient,
            LossShare,
            EncryptedLoss,
        )
    }
    message: (
        HostForward | GuestResidual | MaskedGradient | OpenedGradient | LossShare | EncryptedLoss
    )
    message = kinds[hop.kind].from_bytes(hop.data)
    return message


def ints_of(payload: bytes) -> list[int]:
    """The integers of a plaintext-mode payload (the ground truth of the encrypted one)."""
    count, width = int.from_bytes(payload[5:9], "big"), int.from_bytes(payload[9:11], "big")
    body = payload[11:]
    return [
        int.from_bytes(body[i * width : (i + 1) * width], "big", signed=True) for i in range(count)
    ]


def truth(plain_hops: list[Hop], n: int) -> dict[str, set[int]]:
    """Every secret value of the plaintext run, reduced modulo ``n`` as a plaintext would be."""
    found: dict[str, set[int]] = {"scores": set(), "residuals": set(), "gradients": set()}
    for hop in plain_hops:
        message = parse(hop)
        if isinstance(message, HostForward):
            found["scores"].update(v % n for v in ints_of(message.payload))
        elif isinstance(message, GuestResidual):
            found["residuals"].update(v % n for v in ints_of(message.payload))
        elif isinstance(message, MaskedGradient):  # in clear: the packed gradient itself
            found["gradients"].update(v % n for v in ints_of(message.payload))
    return found


def test_arbiter_sees_only_masked_gradients_and_the_summed_loss(
    key: PrivateKey,
    data: Data,
    plain_run: tuple[VflRun, list[Hop]],
    paillier_run: tuple[VflRun, list[Hop]],
) -> None:
    run, hops = paillier_run
    n = key.public.n
    secrets_ = truth(plain_run[1], n)
    assert all(len(v) > 50 for k, v in secrets_.items() if k != "gradients")
    view = received_by(hops, ARBITER)
    assert {h.kind for h in view} == {"MaskedGradient", "EncryptedLoss"}
    # Decrypt everything the arbiter received, as a curious arbiter would.
    opened = []
    for hop in view:
        opened += decrypt_many(
            key, ciphertexts_from_bytes(key.public, parse(hop).payload), workers=1
        )
    batches = sum(e.batches for e in run.epochs)
    assert len(opened) == 2 * batches + len(run.epochs)  # one per party per batch, one loss
    assert len(opened) < ROWS / 10  # far too few values to hold a per-row vector
    for what in ("scores", "residuals", "gradients"):
        assert not secrets_[what] & set(opened), what
    labels = data.labels.astype(np.uint8)
    raw = b"".join(h.data for h in view)
    for encoding in (
        labels.tobytes(),
        np.packbits(labels).tobytes(),
        labels.astype(">i8").tobytes(),
    ):
        assert encoding[:32] not in raw
    # The masked values are uniform modulo n: their top bits are not the gradients' zeros.
    gradient_bits = max(v if v < n // 2 else n - v for v in secrets_["gradients"]).bit_length()
    assert gradient_bits < 1900 and max(opened).bit_length() > 2000


def test_the_same_check_finds_the_gradients_in_plaintext_mode(
    plain_run: tuple[VflRun, list[Hop]], key: PrivateKey
) -> None:
    """The attacker-side check is real: with the plaintext cipher the arbiter reads every
    party's gradient of every batch."""
    secrets_ = truth(plain_run[1], key.public.n)
    view = [parse(h) for h in received_by(plain_run[1], ARBITER) if h.kind == "MaskedGradient"]
    seen = {v % key.public.n for m in view for v in ints_of(m.payload)}
    assert secrets_["gradients"] <= seen


# --- what a host holds ----------------------------------------------------------------------------


def holds(obj: object, kind: type, seen: set[int] | None = None) -> bool:
    """Whether ``obj`` or anything reachable from its attributes is a ``kind``."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, kind):
        return True
    children: list[object] = []
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    elif hasattr(obj, "__dataclass_fields__"):
        children = [getattr(obj, f) for f in obj.__dataclass_fields__]
    return any(holds(child, kind, seen) for child in children)


def test_host_receives_residuals_it_cannot_decrypt(
    key: PrivateKey, plain_run: tuple[VflRun, list[Hop]], paillier_run: tuple[VflRun, list[Hop]]
) -> None:
    run, hops = paillier_run
    n = key.public.n
    host = run.hosts["host-1"]
    assert not holds(host, PrivateKey) and holds(host, PublicKey)
    view = received_by(hops, "host-1")
    assert {h.kind for h in view} == {"GuestResidual", "OpenedGradient"}
    residual_hops = [h for h in view if h.kind == "GuestResidual"]
    plain_residuals = [h for h in received_by(plain_run[1], "host-1") if h.kind == "GuestResidual"]
    assert len(residual_hops) == len(plain_residuals) == sum(e.batches for e in run.epochs)
    for hop in residual_hops:
        cts = ciphertexts_from_bytes(key.public, parse(hop).payload)
        # They are not plaintexts: none is 1 + m*n for a small m.
        assert all((c - 1) % n != 0 for c in cts)
    # With the arbiter's key (which the host does not have) they are the residuals.
    first = ciphertexts_from_bytes(key.public, parse(residual_hops[0]).payload)
    assert decrypt_many(key, first, workers=1) == [
        v % n for v in ints_of(parse(plain_residuals[0]).payload)
    ]
    # Opened gradients are masked: uniform modulo n, not the packed gradient.
    gradients = truth(plain_run[1], n)["gradients"]
    opened = [v for h in view if h.kind == "OpenedGradient" for v in ints_of(parse(h).payload)]
    assert not gradients & set(opened)


def test_host_cannot_strip_its_own_randomness_from_the_residuals(
    key: PrivateKey, paillier_run: tuple[VflRun, list[Hop]], plain_run: tuple[VflRun, list[Hop]]
) -> None:
    """A curious host divides each residual by its own forward ciphertext. Had the guest added
    its part as a plaintext (``c * (1 + M n)``), the quotient would be ``1 + M n``: the
    guest's scores minus twice the labels, in clear. The guest's fresh encryption prevents it."""
    _, hops = paillier_run
    n, nsquare = key.public.n, key.public.n**2
    forward = parse(next(h for h in hops if h.kind == "HostForward"))
    residual = parse(next(h for h in hops if h.kind == "GuestResidual"))
    assert isinstance(forward, HostForward) and isinstance(residual, GuestResidual)
    assert (forward.epoch, forward.batch) == (residual.epoch, residual.batch)
    own = ciphertexts_from_bytes(key.public, forward.payload)
    received = ciphertexts_from_bytes(key.public, residual.payload)
    quotients = [
        r * int(gmpy2.invert(c, nsquare)) % nsquare for r, c in zip(received, own, strict=True)
    ]
    assert not any((q - 1) % n == 0 for q in quotients)
    # The attack works on a residual formed without fresh randomness (the control).
    plain = next(h for h in plain_run[1] if h.kind == "GuestResidual")
    guest_part = [
        (d - u) % n
        for d, u in zip(
            ints_of(parse(plain).payload),
            ints_of(parse(next(h for h in plain_run[1] if h.kind == "HostForward")).payload),
            strict=True,
        )
    ]
    careless = [c * (1 + m * n) % nsquare for c, m in zip(own, guest_part, strict=True)]
    leaked = [
        (r * int(gmpy2.invert(c, nsquare)) % nsquare - 1) // n
        for r, c in zip(careless, own, strict=True)
    ]
    assert leaked == guest_part


# --- what the guest holds -------------------------------------------------------------------------


def test_guest_never_holds_host_features_or_weights(
    key: PrivateKey, data: Data, paillier_run: tuple[VflRun, list[Hop]]
) -> None:
    run, hops = paillier_run
    host = run.hosts["host-1"]
    view = received_by(hops, "guest")
    assert {h.kind for h in view} == {"HostForward", "OpenedGradient", "LossShare"}
    raw = b"".join(h.data for h in view)
    features = data.hosts["host-1"]
    for value in [*host.weights, *features[:50].ravel()]:
        for order in (">f8", "<f8"):
            assert np.array([value], dtype=order).tobytes() not in raw
    encoded = np.rint(np.clip(features, -4, 4) * 2.0**CONFIG.feature_bits).astype(np.int64)
    # What the forwards hold (readable only with the arbiter's key) are scores, not features.
    first = parse(next(h for h in view if h.kind == "HostForward"))
    assert isinstance(first, HostForward)
    decrypted = decrypt_many(key, ciphertexts_from_bytes(key.public, first.payload), workers=1)
    rows = batch_plan(ROWS, CONFIG, 1)[0]
    n = key.public.n
    for column in encoded[rows].T:
        assert decrypted != [int(v) % n for v in column]
    assert decrypted == [0] * len(rows)  # epoch 1, batch 0: the host's weights start at zero
    # The guest object holds its own columns only.
    assert not holds(run.guest, PrivateKey)
    arrays = [v for v in vars(run.guest).values() if isinstance(v, np.ndarray)]
    assert all(a.shape[-1] != features.shape[1] or not np.allclose(a, features) for a in arrays)
    assert not any(np.array_equal(a, host.weights) for a in arrays)


def test_scoring_is_joint_at_the_guest(data: Data, plain_run: tuple[VflRun, list[Hop]]) -> None:
    run, _ = plain_run
    host = run.hosts["host-1"]
    scores = host.partial_scores(data.hosts["host-1"][:10])
    again = PartialScores.from_bytes(scores.to_bytes())
    assert np.array_equal(again.values, scores.values)
    probabilities = run.guest.score(data.guest[:10], [again])
    u = data.guest[:10] @ run.guest.weights + run.guest.intercept + scores.values
    assert probabilities == pytest.approx(1 / (1 + np.exp(-u)), abs=1e-3)
    with pytest.raises(VflProtocolError, match="every host"):
        run.guest.score(data.guest[:10], [])
    with pytest.raises(VflProtocolError, match="rows"):
        run.guest.score(data.guest[:9], [again])


# --- tampering, replay, wrong keys, bad input ---------------------------------------------

MESSAGES = [
    HostForward("host-1", 1, 0, b"p"),
    GuestResidual("guest", 1, 0, b"p"),
    MaskedGradient("guest", 1, 0, b"p"),
    OpenedGradient("guest", 1, 0, b"p"),
    LossShare("host-1", 1, b"p"),
    EncryptedLoss("guest", 1, 600, b"p"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip_and_refuse_garbage(message: HostForward) -> None:
    cls = type(message)
    data = message.to_bytes()
    assert cls.from_bytes(data) == message
    for bad in (
        b"",
        b"garbage",
        data[:-1],
        data + b"x",
        data.replace(b"fedprop-vfl-v1", b"fedprop-vfl-v9"),
    ):
        with pytest.raises(VflMessageError):
            cls.from_bytes(bad)
    other = MESSAGES[(MESSAGES.index(message) + 1) % len(MESSAGES)]
    with pytest.raises(FedpropError):
        cls.from_bytes(other.to_bytes())
    with pytest.raises(VflMessageError):
        PartialScores.from_bytes(data)


def test_message_fields_are_checked() -> None:
    with pytest.raises(VflMessageError):
        HostForward("", 1, 0, b"p")
    with pytest.raises(VflMessageError):
        HostForward("h", 0, 0, b"p")
    with pytest.raises(VflMessageError):
        HostForward("h", 1, -1, b"p")
    with pytest.raises(VflMessageError):
        HostForward("h", 1, 0, b"")
    with pytest.raises(VflMessageError):
        PartialScores("h", np.array([np.nan]))


def roles(
    data: Data, config: VflConfig, key: PrivateKey | None
) -> tuple[VflArbiter, VflGuest, VflHost]:
    arbiter = VflArbiter(config, ROWS, {"guest": 3, "host-1": 4}, "guest", key=key)
    guest = VflGuest("guest", data.guest, data.labels, config, arbiter.public_key, ["host-1"])
    host = VflHost("host-1", data.hosts["host-1"], config, arbiter.public_key)
    return arbiter, guest, host


def test_steps_out_of_order_or_replayed_are_refused(data: Data, key: PrivateKey) -> None:
    arbiter, guest, host = roles(data, PLAIN, None)
    with pytest.raises(VflProtocolError, match="epoch 1 batch 0"):
        host.forward(1, 1)
    forward = host.forward(1, 0)
    with pytest.raises(VflProtocolError, match="waiting for gradient"):
        host.forward(1, 0)
    residual, masked = guest.residuals([forward])
    with pytest.raises(VflProtocolError):
        guest.residuals([forward])
    opened = arbiter.open(masked)
    with pytest.raises(VflProtocolError, match="already opened"):
        arbiter.open(masked)  # a replayed gradient is not decrypted twice
    with pytest.raises(VflProtocolError, match="of 'guest'"):
        host.update(opened)
    guest.update(opened)
    with pytest.raises(VflProtocolError):
        guest.update(opened)
    host_masked = host.gradient(residual)
    with pytest.raises(VflProtocolError, match="not a party"):
        arbiter.open(MaskedGradient("mallory", 1, 0, host_masked.payload))
    with pytest.raises(VflProtocolError, match="epoch 2"):
        arbiter.open(MaskedGradient("host-1", 2, 0, host_masked.payload))
    with pytest.raises(VflProtocolError, match="expected 1"):
        arbiter.open(MaskedGradient("host-1", 1, 0, forward.payload))  # 200 values
    with pytest.raises(VflProtocolError, match="left to open"):
        arbiter.close_epoch(EncryptedLoss("guest", 1, ROWS, b"p"))


def test_ciphertexts_under_another_key_are_refused(data: Data, key: PrivateKey) -> None:
    _, guest, _ = roles(data, CONFIG, key)
    stranger = VflHost("host-1", data.hosts["host-1"], CONFIG, generate_keypair(2048).public)
    with pytest.raises(VflProtocolError, match="not this job's key"):
        guest.residuals([stranger.forward(1, 0)])


def test_a_tampered_opened_gradient_does_not_decode(data: Data, key: PrivateKey) -> None:
    arbiter, guest, host = roles(data, CONFIG, key)
    _, masked = guest.residuals([host.forward(1, 0)])
    opened = arbiter.open(masked)
    payload = bytearray(opened.payload)
    payload[-40] ^= 0x01
    with pytest.raises(VflProtocolError, match="does not decode"):
        guest.update(OpenedGradient("guest", 1, 0, bytes(payload)))


def test_bad_configuration_and_input_are_refused(data: Data, key: PrivateKey) -> None:
    with pytest.raises(VflConfigError, match="batch_size"):
        VflConfig(batch_size=VFL_MIN_BATCH_ROWS - 1)
    with pytest.raises(VflConfigError, match="cipher"):
        VflConfig(cipher="rot13")  # type: ignore[arg-type]
    with pytest.raises(VflConfigError, match="learning_rate"):
        VflConfig(learning_rate=0.0)
    with pytest.raises(VflConfigError, match="more rows than a party has columns"):
        VflHost("h", np.zeros((ROWS, 250)), PLAIN, None)
    with pytest.raises(VflConfigError, match="0 or 1"):
        VflGuest("guest", data.guest, data.labels * 2, PLAIN, None, ["h"])
    with pytest.raises(VflConfigError, match="NaN"):
        VflHost("h", np.full((ROWS, 2), np.nan), PLAIN, None)
    with pytest.raises(VflConfigError, match="no public key"):
        VflHost("h", data.hosts["host-1"], PLAIN, key.public)
    with pytest.raises(VflConfigError, match="PublicKey"):
        VflHost("h", data.hosts["host-1"], CONFIG, None)
    with pytest.raises(VflConfigError, match="distinct"):
        VflGuest("guest", data.guest, data.labels, PLAIN, None, ["guest"])


def test_batches_are_seeded_shuffles_of_at_least_batch_size_rows() -> None:
    config = VflConfig(batch_size=150)
    plan = batch_plan(1000, config, 1)
    assert len(plan) == 6 and min(len(b) for b in plan) >= 150
    assert sorted(np.concatenate(plan).tolist()) == list(range(1000))
    assert all(np.array_equal(a, b) for a, b in zip(plan, batch_plan(1000, config, 1), strict=True))
    assert not np.array_equal(plan[0], batch_plan(1000, config, 2)[0])


# --- the Paillier helpers the protocol relies on ------------------------------------------


def naive(key: PrivateKey, values: list[int], exponents: np.ndarray) -> list[int]:
    n = key.public.n
    return [
        sum(v * int(e) for v, e in zip(values, exponents[:, j], strict=True)) % n
        for j in range(exponents.shape[1])
    ]


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as executor:
        yield executor


@pytest.mark.parametrize("parallel", [False, True], ids=["in-process", "pool"])
def test_multi_exponentiation_and_batch_encryption(
    key: PrivateKey, pool: ProcessPoolExecutor, parallel: bool
) -> None:
    executor = pool if parallel else None
    rng = np.random.default_rng(3)
    values = [int(v) for v in rng.integers(-(2**40), 2**40, 60)]
    ciphertexts = encrypt_batch(key.public, [v % key.public.n for v in values], executor)
    assert decrypt_many(key, ciphertexts) == [v % key.public.n for v in values]
    exponents = np.column_stack(
        [
            rng.integers(-(2**15), 2**15, 60),  # signed
            rng.integers(0, 2, 60),  # 0/1
            np.zeros(60, dtype=np.int64),  # nothing
            np.full(60, -1),  # all negative
            rng.integers(-(2**40), 2**40, 60),  # wide
            rng.choice([-3000, 5, 4096, 2**20], 60),  # few distinct values, far apart
        ]
    )
    columns = multi_exponentiate(key.public, ciphertexts, exponents, executor)
    assert decrypt_many(key, columns) == naive(key, values, exponents)
    fresh = add_encryptions(key.public, ciphertexts, [5] * 60, executor)
    assert decrypt_many(key, fresh) == [(v + 5) % key.public.n for v in values]
    assert not set(fresh) & set(ciphertexts)


def test_packing_and_scaling_ciphertexts(key: PrivateKey) -> None:
    n = key.public.n
    cts = [encrypt(key, v % n) for v in (3, -4, 5)]
    assert decrypt(key, pack_ciphertexts(key.public, cts, 16)) == (3 - (4 << 16) + (5 << 32)) % n
    assert decrypt(key, scale_ciphertext(key.public, cts[1], -7)) == 28
    with pytest.raises(ValueError, match="rows"):
        multi_exponentiate(key.public, cts, np.ones((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        multi_exponentiate(key.public, cts, np.ones((3, 1)))
    with pytest.raises(FedpropError, match="out of range"):
        multi_exponentiate(key.public, [0, *cts[1:]], np.ones((3, 1), dtype=np.int64))


def test_ciphertext_bytes_of_batch_encryptions_round_trip_and_refuse_forgeries(
    key: PrivateKey,
) -> None:
    n = key.public.n
    cts = encrypt_batch(key.public, [1, 2, 3])
    blob = ciphertexts_to_bytes(key.public, cts)
    assert ciphertexts_from_bytes(key.public, blob) == cts
    with pytest.raises(CiphertextError, match="not this job's key"):
        ciphertexts_from_bytes(generate_keypair(2048).public, blob)
    with pytest.raises(CiphertextError, match="truncated"):
        ciphertexts_from_bytes(key.public, blob[:-1])
    # A multiple of a prime factor is no ciphertext (and only the key holder can make one).
    width = key.public.ciphertext_bytes
    forged = blob[:-width] + (key.p * 12345).to_bytes(width, "big")
    with pytest.raises(CiphertextError, match="ciphertext 2 is not a unit"):
        ciphertexts_from_bytes(key.public, forged)
    with pytest.raises(CiphertextError, match="out of range"):
        ciphertexts_to_bytes(key.public, [n * n])


# --- saved state: a node that runs every message in a fresh process -----------------------


def test_parties_rebuilt_from_saved_state_for_every_step_train_the_same_model(
    data: Data, key: PrivateKey, paillier_run: tuple[VflRun, list[Hop]]
) -> None:
    """Every step runs on a party rebuilt from its columns, settings, key and saved state;
    the result is the in-memory run's, bit for bit (masks survive between steps)."""
    arbiter = VflArbiter(CONFIG, ROWS, {"guest": 3, "host-1": 4}, "guest", key=key)
    public = arbiter.public_key
    saved = {"guest": b"", "host": b""}

    def guest() -> VflGuest:
        role = VflGuest("guest", data.guest, data.labels, CONFIG, public, ["host-1"])
        if saved["guest"]:
            role.restore_state(saved["guest"])
        return role

    def host() -> VflHost:
        role = VflHost("host-1", data.hosts["host-1"], CONFIG, public)
        if saved["host"]:
            role.restore_state(saved["host"])
        return role

    for epoch in range(1, CONFIG.max_epochs + 1):
        for batch in range(len(batch_plan(ROWS, CONFIG, epoch))):
            h = host()
            forward = h.forward(epoch, batch)
            saved["host"] = h.export_state()
            g = guest()
            residual, masked = g.residuals([forward])
            saved["guest"] = g.export_state()
            g = guest()
            g.update(arbiter.open(masked))
            saved["guest"] = g.export_state()
            h = host()
            masked_h = h.gradient(residual)
            saved["host"] = h.export_state()
            h = host()
            h.update(arbiter.open(masked_h))
            saved["host"] = h.export_state()
        h = host()
        share = h.loss_share(epoch)
        saved["host"] = h.export_state()
        g = guest()
        arbiter.close_epoch(g.loss([share]))
        saved["guest"] = g.export_state()
    reference_run = paillier_run[0]
    assert [r.loss for r in arbiter.results] == [e.loss for e in reference_run.epochs]
    assert np.array_equal(guest().weights, reference_run.guest.weights)
    assert guest().intercept == reference_run.guest.intercept
    assert np.array_equal(host().weights, reference_run.hosts["host-1"].weights)
    assert host().position == ("forward", CONFIG.max_epochs + 1, 0)


def test_saved_state_is_bound_to_the_party_data_and_settings(data: Data) -> None:
    host = VflHost("host-1", data.hosts["host-1"], PLAIN, None)
    host.forward(1, 0)
    saved = host.export_state()
    again = VflHost("host-1", data.hosts["host-1"], PLAIN, None)
    again.restore_state(saved)
    assert again.position == ("gradient", 1, 0)
    with pytest.raises(VflProtocolError, match="another party, data or settings"):
        VflHost("host-1", data.hosts["host-1"] + 1.0, PLAIN, None).restore_state(saved)
    with pytest.raises(VflProtocolError, match="another party, data or settings"):
        VflHost("host-2", data.hosts["host-1"], PLAIN, None).restore_state(saved)
    other = dataclasses.replace(PLAIN, learning_rate=0.25)
    with pytest.raises(VflProtocolError, match="another party, data or settings"):
        VflHost("host-1", data.hosts["host-1"], other, None).restore_state(saved)
    with pytest.raises(VflProtocolError, match="another party, data or settings"):
        VflGuest("host-1", data.guest, data.labels, PLAIN, None, ["h"]).restore_state(saved)
    for bad in (b"", saved[:-2], b"x" * 40):
        with pytest.raises(VflMessageError, match="saved"):
            VflHost("host-1", data.hosts["host-1"], PLAIN, None).restore_state(bad)
