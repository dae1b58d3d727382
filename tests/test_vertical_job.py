"""The whole vertical job (``vfl-train``, ``vfl-score``) in process, nodes rebuilt from disk.

Every message goes to a node built afresh from its settings (data, state and model folders
on disk), so nothing survives in memory between two messages, as in a deployed SuperNode.
The privacy tests take an attacker's side: they collect what a role actually held (every
request and reply through the coordinator and its arbiter; a party's state folder over the
whole run, what it opened from its channels, its model folder) and look for what it must
not have, byte for byte. The ground truth comes from replaying the same training in
plaintext with :func:`fedprop.protocols.vfl.train_in_process` on the aligned rows: the
protocol computes the same integers in both modes, so the replay's partial scores,
residuals and gradients are the real ones (checked: the replay's weights equal the model
parts the parties kept, bit for bit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedprop.crypto.channel import Channel
from fedprop.crypto.identity import Manifest, NodeIdentity, generate_identity
from fedprop.data.vertical import (
    BANK_GUEST_COLUMNS,
    BANK_HOST_COLUMNS,
    CREDIT_GUEST_FILE,
    CREDIT_HOST_FILE,
    VERTICAL_FILE,
    prepare_vertical,
    read_vertical_party,
)
from fedprop.errors import DataValidationError, FedpropError, JobFailedError, SpecError
from fedprop.models.metrics import ScoreHistogram, global_metrics
from fedprop.protocols import psi
from fedprop.protocols.vertical import (
    COORDINATOR,
    METRIC_BINS,
    REPLIES,
    REQUESTS,
    AbortRequest,
    Envelope,
    HelloRequest,
    InProcessTransport,
    ModelPart,
    NodeJobState,
    RelayRequest,
    Reply,
    Request,
    ScoreSpec,
    VerticalCoordinator,
    VerticalNode,
    VerticalResult,
    VerticalSettings,
    VerticalSpec,
    VerticalStateError,
    VStep,
    pack_envelopes,
    parse_vertical,
    run_vertical,
    run_vertical_score,
    unpack_envelopes,
)
from fedprop.protocols.vfl import (
    CipherMode,
    GuestResidual,
    Hop,
    HostForward,
    MaskedGradient,
    OpenedGradient,
    VflRun,
    _encode_features,
    train_in_process,
)
from synthetic import GUEST, HOST, label_patterns, spec_text, write_bank_full, write_parties

HOST_2 = "telco"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Customers of the default-credit sample in the quality test (about 1,100 held out).
ROWS = 6000


@dataclass
class Federation:
    """Parties with identities, and each party's folders under ``root``."""

    root: Path
    identities: dict[str, NodeIdentity]
    manifest: Manifest
    allow_plaintext: dict[str, bool] = field(default_factory=dict)

    def settings(self, party: str) -> VerticalSettings:
        return VerticalSettings(
            identity=self.identities[party],
            manifest=self.manifest,
            data_dir=self.root / "data" / party,
            state_dir=self.root / "state" / party,
            model_dir=self.root / "models" / party,
            output_dir=self.root / "out" / party,
            allow_plaintext=self.allow_plaintext.get(party, True),
        )

    def state_files(self, party: str) -> list[Path]:
        folder = self.root / "state" / party
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def federation(root: Path, hosts: Sequence[str] = (HOST,), rows: int = 520) -> Federation:
    write_parties(root / "data", hosts, rows)
    identities = {p: generate_identity(p) for p in (GUEST, *hosts)}
    manifest = Manifest("test-fed", tuple(i.public for i in identities.values()))
    return Federation(root, identities, manifest)


Mutate = Callable[[VStep, str, Request], Request]


class Recording(InProcessTransport):
    """A fresh node per message, and a record of everything: messages, node builds, each
    party's state files after every message it handled; optionally changes requests."""

    def __init__(self, fed: Federation, mutate: Mutate | None = None) -> None:
        self.fed = fed
        self.mutate = mutate
        self.builds: Counter[str] = Counter()
        self.messages: list[tuple[VStep, str, Request, Reply | None]] = []
        self.snapshots: dict[str, list[dict[str, bytes]]] = {p: [] for p in fed.identities}

        def builder(party: str) -> Callable[[], VerticalNode]:
            def build() -> VerticalNode:
                self.builds[party] += 1
                return VerticalNode(fed.settings(party))

            return build

        super().__init__({p: builder(p) for p in fed.identities}, self.record)

    def record(self, step: VStep, party: str, request: Request, reply: Reply | None) -> None:
        self.messages.append((step, party, request, reply))
        state = NodeJobState(self.fed.root / "state" / party, parse_vertical(request.spec).id)
        self.snapshots[party].append({name: state.get(name) for name in state.names()})

    def broadcast(
        self, step: VStep, request: Request, to: Sequence[str] | None = None
    ) -> Mapping[str, Reply]:
        replies: dict[str, Reply] = {}
        for party in to if to is not None else list(self.builders):
            changed = request if self.mutate is None else self.mutate(step, party, request)
            replies.update(super().broadcast(step, changed, [party]))
        return replies

    def first(self, party: str, name: str) -> bytes:
        """The first saved content of a party's state file ``name``."""
        return next(s[name] for s in self.snapshots[party] if name in s)


@contextlib.contextmanager
def channel_spy() -> Iterator[dict[str, list[tuple[str, bytes]]]]:
    """Every payload each party opened from its channels: what it received, in clear."""
    seen: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    original = Channel.open

    def spy(self: Channel, topic: str, data: bytes) -> bytes:
        payload = original(self, topic, data)
        assert self._keys is not None
        seen[self._keys.name].append((topic, payload))
        return payload

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Channel, "open", spy)
        yield seen


@dataclass
class JobRun:
    """A finished job and everything recorded about it."""

    fed: Federation
    spec: VerticalSpec
    transport: Recording
    coordinator: VerticalCoordinator
    result: VerticalResult
    opened: dict[str, list[tuple[str, bytes]]]

    def array(self, party: str, name: str) -> np.ndarray:
        """A party's state array as it first saved it (its aligned rows, say)."""
        loaded: np.ndarray = np.load(io.BytesIO(self.transport.first(party, name)))
        return loaded

    def model(self, party: str) -> ModelPart:
        return ModelPart.load(self.fed.root / "models" / party, self.spec.id, party)


def run_job(fed: Federation, text: str, mutate: Mutate | None = None) -> JobRun:
    spec = VerticalSpec.from_toml(text)
    transport = Recording(fed, mutate)
    with channel_spy() as opened:
        coordinator = VerticalCoordinator(spec, fed.manifest, transport, keep_transcript=True)
        result = coordinator.train()
    return JobRun(fed, spec, transport, coordinator, result, dict(opened))


def replay(run: JobRun) -> tuple[VflRun, list[Hop]]:
    """The same training in plaintext, in memory, on the aligned rows the parties saved."""
    config = dataclasses.replace(run.spec.train, cipher=CipherMode.PLAINTEXT)
    hops: list[Hop] = []
    trained = train_in_process(
        run.array(GUEST, "x-train"),
        run.array(GUEST, "y-train"),
        {h: run.array(h, "x-train") for h in run.spec.hosts},
        config,
        guest=GUEST,
        observe=hops.append,
    )
    return trained, hops


def field_bytes(message: object) -> list[bytes]:
    out = []
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        out.append(value if isinstance(value, bytes) else repr(value).encode())
    return out


def coordinator_view(run: JobRun) -> bytes:
    """Everything the coordinator held: every request and reply, its arbiter's results."""
    parts: list[bytes] = []
    for _, request, replies in run.coordinator.transcript:
        parts += field_bytes(request)
        for reply in replies.values():
            parts += field_bytes(reply)
    assert run.coordinator.arbiter is not None
    parts += [repr(r).encode() for r in run.coordinator.arbiter.results]
    return b"\x00".join(parts)


def party_view(run: JobRun, party: str) -> bytes:
    """Everything a party held: its state files over the run, what it opened from its
    channels, the requests it received, its model folder."""
    parts = [b for snap in run.transport.snapshots[party] for b in snap.values()]
    parts += [payload for _, payload in run.opened.get(party, [])]
    parts += [
        b for _, p, request, _ in run.transport.messages if p == party for b in field_bytes(request)
    ]
    parts += [p.read_bytes() for p in (run.fed.root / "models" / party).rglob("*") if p.is_file()]
    return b"\x00".join(parts)


def ints_of(payload: bytes) -> list[int]:
    """The integers of a plaintext-mode vfl payload (the ground truth of an encrypted one)."""
    count, width = int.from_bytes(payload[5:9], "big"), int.from_bytes(payload[9:11], "big")
    body = payload[11:]
    return [
        int.from_bytes(body[i * width : (i + 1) * width], "big", signed=True) for i in range(count)
    ]


def relayed(run: JobRun) -> list[Envelope]:
    """Every envelope that went through the coordinator, in both directions."""
    out = []
    for _, request, replies in run.coordinator.transcript:
        for message in (request, *replies.values()):
            data = getattr(message, "envelopes", None)
            if data is not None:
                out += unpack_envelopes(data)
    return out


# --- module fixtures: one plaintext and one paillier job ----------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> JobRun:
    return run_job(federation(tmp_path_factory.mktemp("plain")), spec_text())


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> JobRun:
    return run_job(federation(tmp_path_factory.mktemp("paillier")), spec_text(mode="paillier"))


@pytest.fixture(scope="module")
def encrypted_replay(encrypted: JobRun) -> tuple[VflRun, list[Hop]]:
    return replay(encrypted)


# --- the job -------------------------------------------------------------------------------


def test_shipped_configs_parse() -> None:
    for name in ("default-credit-vfl.toml", "bank-marketing-vfl.toml"):
        spec = VerticalSpec.load(CONFIGS / name)
        assert spec.guest == GUEST and spec.hosts == (HOST,)
        assert spec.train.cipher is CipherMode.PAILLIER and spec.key_bits >= 2048
        assert all(len(p.features) > 0 for p in spec.parties.values())
    credit = VerticalSpec.load(CONFIGS / "default-credit-vfl.toml")
    assert [len(credit.parties[p].features) for p in (GUEST, HOST)] == [13, 10]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("key-bits = 2048", "key-bits = 1024"), r"\[job\] key-bits"),
        (("batch-size = 150", "batch-size = 10"), r"\[train\] batch-size"),
        (("batch-size = 150", "batch-sise = 150"), r"\[train\]: unknown key\(s\) batch-sise"),
        (('aggregation = "plaintext"', 'aggregation = "rot13"'), r"\[job\] aggregation"),
        (("test-fraction = 0.25", "test-fraction = 0.9"), r"\[evaluate\] test-fraction"),
        (("[parties.partner]", "[parties.eve]"), r"\[parties.eve\]: not the guest or a host"),
        (('kind = "integer"', 'kind = "complex"'), r"\[parties.partner\] column 'tenure'"),
        (('hosts = ["partner"]', 'hosts = ["bank"]'), r"\[job\] hosts"),
        (('id = "synth-vfl"', 'id = "../escape"'), r"\[job\] id"),
    ],
)
def test_bad_specs_are_refused_naming_the_key(change: tuple[str, str], problem: str) -> None:
    text = spec_text()
    assert change[0] in text
    with pytest.raises(SpecError, match=problem):
        VerticalSpec.from_toml(text.replace(*change, 1))


def test_a_host_table_may_not_name_a_label() -> None:
    text = spec_text().replace(
        '[parties.partner]\nid-column = "id"', '[parties.partner]\nid-column = "id"\nlabel = "y"'
    )
    with pytest.raises(SpecError, match=r"\[parties.partner\]: unknown key\(s\) label"):
        VerticalSpec.from_toml(text)


def test_the_job_runs_on_nodes_rebuilt_for_every_message(plain: JobRun) -> None:
    result, transport = plain.result, plain.transport
    # One node built per message: no role lives from one message to the next.
    per_party = Counter(party for _, party, _, _ in transport.messages)
    assert transport.builds == per_party
    batches = [e.batches for e in result.epochs]
    assert len(result.epochs) == 2 and batches == [2, 2]
    # Three hops per batch; the first epoch also carries the two hops that close it.
    assert [e.hops for e in result.epochs] == [3 * batches[0] + 2, 3 * batches[1]]
    assert result.hops_by_step[VStep.FORWARD.value] == sum(batches) + 1
    assert result.hops == 4 + 3 * sum(batches) + 2 + 2  # setup, batches, closing, finish
    assert (
        440 < result.intersection < 500
        and result.train_rows + result.test_rows == result.intersection
    )
    assert set(result.metrics) == {"auc", "ks", "lift_10", "lift_20"}
    assert result.metrics["auc"] > 0.7 and result.epochs[1].loss < result.epochs[0].loss
    # The job's state is gone everywhere; each party kept its model part.
    assert not any(plain.fed.state_files(p) for p in (GUEST, HOST))
    assert plain.model(GUEST).intercept != 0.0 and len(plain.model(GUEST).weights) == 6
    assert len(plain.model(HOST).weights) == 5 and plain.model(HOST).intercept == 0.0


def test_every_message_travels_as_a_flower_record(plain: JobRun) -> None:
    from fedprop.apps.records import from_record, to_record

    seen = set()
    for step, _, request, reply in plain.transport.messages:
        assert step.value.split(".")[0] in ("train", "evaluate", "query")
        assert isinstance(request, REQUESTS[step]) and isinstance(reply, REPLIES[step])
        for message in (request, reply):
            assert from_record(type(message), to_record(message)) == message
        seen.add(step)
    assert VStep.EVALUATE in seen and VStep.GRADIENT in seen


def test_state_files_are_owner_only_and_the_store_reports_problems(tmp_path: Path) -> None:
    state = NodeJobState(tmp_path / "state", "job-1")
    with pytest.raises(VerticalStateError, match="no state of job 'job-1'"):
        state.get("channel-partner")
    state.create()
    with pytest.raises(VerticalStateError, match="already has state"):
        NodeJobState(tmp_path / "state", "job-1").create()
    state.put("secret", b"scalar")
    state.put_array("weights", np.arange(3.0))
    assert state.get("secret") == b"scalar" and state.get_array("weights").tolist() == [0, 1, 2]
    assert stat.S_IMODE(os.stat(state.folder).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in state.folder.iterdir())
    with pytest.raises(VerticalStateError, match="'vfl' of job 'job-1' is missing"):
        state.get("vfl")
    path = state.folder / "secret"
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(VerticalStateError, match="'secret' of job 'job-1' is corrupt"):
        state.get("secret")
    with pytest.raises(VerticalStateError, match="cannot name"):
        state.put("../escape", b"")
    with pytest.raises(VerticalStateError, match="cannot name"):
        NodeJobState(tmp_path, "../escape")
    state.clear()
    assert not state.folder.exists()


def test_two_hosts_train_one_joint_model(tmp_path: Path) -> None:
    fed = federation(tmp_path, hosts=(HOST, HOST_2))
    run = run_job(fed, spec_text(hosts=(HOST, HOST_2), minimum=250))
    assert run.result.metrics["auc"] > 0.65
    assert {len(run.model(p).weights) for p in (HOST, HOST_2)} == {5}
    # The alignment holds the customers found at every host.
    assert run.result.intersection < 480
    assert not any(fed.state_files(p) for p in fed.identities)


def test_training_stops_early_and_drops_the_work_done_ahead(tmp_path: Path) -> None:
    run = run_job(federation(tmp_path), spec_text(epochs=30, tolerance=0.01))
    assert run.result.stopped_early and len(run.result.epochs) < 30
    assert not any(run.fed.state_files(p) for p in (GUEST, HOST))
    trained, _ = replay(run)
    assert len(trained.epochs) == len(run.result.epochs)
    assert np.array_equal(trained.guest.weights, run.model(GUEST).weights)
    assert np.array_equal(trained.hosts[HOST].weights, run.model(HOST).weights)


def test_encrypted_job_equals_its_plaintext_replay(
    encrypted: JobRun, encrypted_replay: tuple[VflRun, list[Hop]]
) -> None:
    trained, _ = encrypted_replay
    assert np.array_equal(trained.guest.weights, encrypted.model(GUEST).weights)
    assert trained.guest.intercept == encrypted.model(GUEST).intercept
    assert np.array_equal(trained.hosts[HOST].weights, encrypted.model(HOST).weights)
    assert [e.loss for e in trained.epochs] == [e.loss for e in encrypted.result.epochs]
    x_test = {p: encrypted.array(p, "x-test") for p in (GUEST, HOST)}
    scores = trained.guest.score(x_test[GUEST], [trained.hosts[HOST].partial_scores(x_test[HOST])])
    labels = encrypted.array(GUEST, "y-test")
    histogram = global_metrics(ScoreHistogram.from_scores(scores, labels, METRIC_BINS))
    released = encrypted.result.metrics
    assert released == {
        "auc": histogram.auc,
        "ks": histogram.ks,
        "lift_10": histogram.lift_10,
        "lift_20": histogram.lift_20,
    }
    assert released["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)


# --- the coordinator's view --------------------------------------------------------------


def test_the_coordinator_holds_no_label_id_score_residual_or_gradient(
    encrypted: JobRun, encrypted_replay: tuple[VflRun, list[Hop]]
) -> None:
    view = coordinator_view(encrypted)
    guest_view = party_view(encrypted, GUEST)
    labels = [encrypted.array(GUEST, "y-train"), encrypted.array(GUEST, "y-test")]
    for y in labels:
        patterns = label_patterns(y)
        assert not any(p in view for p in patterns)
        assert any(p in guest_view for p in patterns)  # the search finds them where they are
    # No customer id (all start with CUST-), in any message or reply.
    assert b"CUST-" not in view
    data = (encrypted.fed.root / "data" / GUEST / VERTICAL_FILE).read_bytes()
    assert b"CUST-" in data
    # Partial scores, residuals and gradients, as the plaintext replay computed them.
    trained, hops = encrypted_replay
    secrets = {
        kind: [h.data for h in hops if h.kind == kind]
        for kind in ("HostForward", "GuestResidual", "MaskedGradient")
    }
    for kind, messages in secrets.items():
        payloads = [
            MaskedGradient.from_bytes(m).payload
            if kind == "MaskedGradient"
            else (HostForward if kind == "HostForward" else GuestResidual).from_bytes(m).payload
            for m in messages
        ]
        assert payloads and not any(p in view for p in payloads), kind
    test_scores = trained.hosts[HOST].partial_scores(encrypted.array(HOST, "x-test")).values
    assert test_scores.astype(">f8").tobytes() not in view
    assert test_scores.astype(">f8").tobytes() in guest_view  # what the guest did receive
    # What the arbiter decrypted is the gradient plus a uniform mask: never the gradient.
    key = encrypted.coordinator.key
    assert key is not None
    n = key.public.n
    gradients = {
        v % n
        for m in secrets["MaskedGradient"]
        for v in ints_of(MaskedGradient.from_bytes(m).payload)
    }
    opened = [
        v
        for e in relayed(encrypted)
        if e.kind == "opened-gradient"
        for v in ints_of(OpenedGradient.from_bytes(e.data).payload)
    ]
    assert len(opened) == len(gradients) > 0
    assert not gradients & set(opened)
    assert min(opened) > n >> 64  # uniform modulo n, not small signed slots


def test_in_plaintext_mode_the_same_search_finds_the_gradients(plain: JobRun) -> None:
    """The baseline shows the arbiter its gradients (and the search would notice), while
    everything guest and hosts exchange still rides the channel."""
    view = coordinator_view(plain)
    _, hops = replay(plain)
    gradients = [
        MaskedGradient.from_bytes(h.data).payload for h in hops if h.kind == "MaskedGradient"
    ]
    assert all(g in view for g in gradients)
    forwards = [HostForward.from_bytes(h.data).payload for h in hops if h.kind == "HostForward"]
    residuals = [
        GuestResidual.from_bytes(h.data).payload for h in hops if h.kind == "GuestResidual"
    ]
    assert not any(p in view for p in forwards + residuals)
    assert not any(p in view for p in label_patterns(plain.array(GUEST, "y-train")))
    assert b"CUST-" not in view


def test_guest_host_payloads_reach_the_coordinator_only_as_channel_messages(
    encrypted: JobRun,
) -> None:
    between_parties = [e for e in relayed(encrypted) if COORDINATOR not in (e.sender, e.recipient)]
    kinds = Counter(e.kind for e in between_parties)
    assert {"offer", "psi-guest-blinded", "forward", "residual", "test-scores"} <= set(kinds)
    for e in between_parties:
        if e.kind != "offer":  # offers are signed public keys; everything else is sealed
            assert e.data[:4] == b"fpc\x01"


# --- the parties' views ------------------------------------------------------------------


def test_the_host_holds_no_label_and_no_plaintext_residual(
    encrypted: JobRun, encrypted_replay: tuple[VflRun, list[Hop]]
) -> None:
    host_view = party_view(encrypted, HOST)
    assert encrypted.transport.snapshots[HOST] and encrypted.opened[HOST]
    for y in (encrypted.array(GUEST, "y-train"), encrypted.array(GUEST, "y-test")):
        assert not any(p in host_view for p in label_patterns(y))
    _, hops = encrypted_replay
    residuals = [
        GuestResidual.from_bytes(h.data).payload for h in hops if h.kind == "GuestResidual"
    ]
    assert residuals and not any(r in host_view for r in residuals)
    # The residual floats d_i of a batch, in any byte order, are not there either.
    for payload in residuals:
        d = np.array(ints_of(payload), dtype=np.float64) / (4 * 2**encrypted.spec.train.score_bits)
        assert (
            d.astype("<f8").tobytes() not in host_view
            and d.astype(">f8").tobytes() not in host_view
        )
    # What it opened from the channel are Paillier ciphertexts, not the encoded integers.
    opened = [p for topic, p in encrypted.opened[HOST] if topic.startswith("vfl/residual/")]
    assert opened and all(GuestResidual.from_bytes(p).payload[:4] != b"FPIV" for p in opened)


def test_the_guest_holds_no_host_feature_or_weight(encrypted: JobRun) -> None:
    guest_view = party_view(encrypted, GUEST)
    host_view = party_view(encrypted, HOST)
    x = encrypted.array(HOST, "x-train")
    weights = encrypted.model(HOST).weights
    patterns = [x.tobytes(), np.asfortranarray(x).tobytes("F")]
    patterns += [np.ascontiguousarray(x[:, j]).tobytes() for j in range(x.shape[1])]
    patterns += [_encode_features(x, encrypted.spec.train).astype("<i8").tobytes()]
    patterns += [weights.astype("<f8").tobytes(), weights.astype(">f8").tobytes()]
    patterns += [float(w).hex().encode() for w in weights] + [
        repr(float(w)).encode() for w in weights
    ]
    assert not [p for p in patterns if p in guest_view]
    # The same search finds them at the host: its matrix as saved, its weights as kept.
    assert x.tobytes() in host_view
    assert all(float(w).hex().encode() in host_view for w in weights)
    raw = pd.read_csv(encrypted.fed.root / "data" / HOST / VERTICAL_FILE, dtype=str)
    assert not any(
        ",".join(raw["h1"].iloc[k : k + 4]).encode() in guest_view for k in range(0, 40, 4)
    )


# --- relayed frames the coordinator tampers with -----------------------------------------


def flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def rewrite(request: Request, change: Callable[[list[Envelope]], list[Envelope]]) -> Request:
    assert isinstance(request, RelayRequest)
    envelopes = change(unpack_envelopes(request.envelopes))
    return dataclasses.replace(request, envelopes=pack_envelopes(envelopes))


def tampered_job(tmp_path: Path, mutate: Mutate, party: str, problem: str) -> None:
    fed = federation(tmp_path)
    with pytest.raises(JobFailedError, match=problem) as failure:
        run_vertical(VerticalSpec.from_toml(spec_text()), Recording(fed, mutate), fed.manifest)
    assert f"'{party}'" in str(failure.value)
    # The coordinator aborted the job: no node keeps its secrets.
    assert not any(fed.state_files(p) for p in fed.identities)


def test_a_tampered_frame_fails_the_job_naming_the_party(tmp_path: Path) -> None:
    def mutate(step: VStep, party: str, request: Request) -> Request:
        if step is VStep.GRADIENT and isinstance(request, RelayRequest) and request.batch == 1:
            return rewrite(
                request,
                lambda es: [
                    dataclasses.replace(e, data=flip(e.data)) if e.kind == "residual" else e
                    for e in es
                ],
            )
        return request

    tampered_job(tmp_path, mutate, HOST, "does not open")


def test_a_replayed_frame_fails_the_job_naming_the_party(tmp_path: Path) -> None:
    earlier: dict[str, bytes] = {}

    def mutate(step: VStep, party: str, request: Request) -> Request:
        if step is not VStep.GRADIENT or not isinstance(request, RelayRequest):
            return request
        if request.batch == 0:
            earlier["residual"] = next(e.data for e in unpack_envelopes(request.envelopes))
            return request
        return rewrite(
            request, lambda es: [dataclasses.replace(e, data=earlier["residual"]) for e in es]
        )

    tampered_job(tmp_path, mutate, HOST, "replayed")


def test_reordered_frames_fail_the_job_naming_the_party(tmp_path: Path) -> None:
    def swap(envelopes: list[Envelope]) -> list[Envelope]:
        data = {e.kind: e.data for e in envelopes}
        other = {"psi-host-blinded": "psi-double-blinded", "psi-double-blinded": "psi-host-blinded"}
        return [dataclasses.replace(e, data=data[other[e.kind]]) for e in envelopes]

    def mutate(step: VStep, party: str, request: Request) -> Request:
        return rewrite(request, swap) if step is VStep.PSI_ALIGN else request

    tampered_job(tmp_path, mutate, GUEST, "dropped or reordered")


def test_a_dropped_frame_fails_the_job_naming_the_party(tmp_path: Path) -> None:
    def mutate(step: VStep, party: str, request: Request) -> Request:
        if step is VStep.RESIDUAL:
            return rewrite(request, lambda es: [e for e in es if e.kind != "forward"])
        return request

    tampered_job(tmp_path, mutate, GUEST, "expected a 'forward' from 'partner'")


def test_a_step_without_its_input_is_refused(tmp_path: Path) -> None:
    def mutate(step: VStep, party: str, request: Request) -> Request:
        if step is VStep.PSI_MATCH:
            return rewrite(request, lambda es: [])
        return request

    tampered_job(tmp_path, mutate, HOST, "expected a 'psi-guest-blinded'")


def test_requests_out_of_order_for_another_role_or_job_text_are_refused(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    text = spec_text()
    host = VerticalNode(fed.settings(HOST))
    host.handle(VStep.HELLO, HelloRequest(text, b""))
    empty = pack_envelopes([])
    with pytest.raises(VerticalStateError, match="at step 'hello'"):
        VerticalNode(fed.settings(HOST)).handle(VStep.GRADIENT, RelayRequest(text, 1, 0, empty))
    with pytest.raises(FedpropError, match="the guest's, and this node is a host"):
        VerticalNode(fed.settings(HOST)).handle(VStep.RESIDUAL, RelayRequest(text, 1, 0, empty))
    changed = text.replace("learning-rate = 0.5", "learning-rate = 0.25")
    with pytest.raises(VerticalStateError, match="differs from the one job 'synth-vfl' started"):
        VerticalNode(fed.settings(HOST)).handle(VStep.PSI, RelayRequest(changed, 0, 0, empty))
    with pytest.raises(FedpropError, match="not a step of job type"):
        VerticalNode(fed.settings(HOST)).handle(VStep.SCORE_PSI, RelayRequest(text, 0, 0, empty))
    with pytest.raises(VerticalStateError, match="already has state"):
        VerticalNode(fed.settings(HOST)).handle(VStep.HELLO, HelloRequest(text, b""))
    assert fed.state_files(HOST)
    VerticalNode(fed.settings(HOST)).handle(VStep.ABORT, AbortRequest(text, "stop"))
    assert not fed.state_files(HOST)


# --- what nodes refuse ---------------------------------------------------------------------


def test_a_node_refuses_plaintext_unless_it_allows_it(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    fed.allow_plaintext[HOST] = False
    with pytest.raises(JobFailedError, match=r"'partner'.*plaintext"):
        run_vertical(VerticalSpec.from_toml(spec_text()), Recording(fed), fed.manifest)
    assert not any(fed.state_files(p) for p in fed.identities)


def test_a_job_id_runs_once_per_node(plain: JobRun) -> None:
    with pytest.raises(JobFailedError, match="already holds a model part"):
        run_vertical(plain.spec, Recording(plain.fed), plain.fed.manifest)


def test_a_node_outside_the_job_or_the_manifest_is_refused(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    spec = VerticalSpec.from_toml(spec_text(hosts=(HOST, HOST_2)))
    with pytest.raises(FedpropError, match="telco"):
        run_vertical(spec, Recording(fed), fed.manifest)


# --- scoring ---------------------------------------------------------------------------------


def test_joint_scoring_writes_the_target_list_at_the_guest_only(plain: JobRun) -> None:
    text = f"""
[job]
id = "synth-score"
type = "vfl-score"
guest = "{GUEST}"
hosts = ["{HOST}"]
model = "{plain.spec.id}"
min-intersection = 300
"""
    transport = Recording(plain.fed)
    with channel_spy() as opened:
        coordinator = VerticalCoordinator(
            ScoreSpec.from_toml(text), plain.fed.manifest, transport, keep_transcript=True
        )
        result = coordinator.score()
    ranked = pd.read_csv(plain.fed.root / "out" / GUEST / "synth-score.csv", dtype={"id": str})
    assert list(ranked.columns) == ["id", "score", "rank", "decile"]
    assert len(ranked) == result.rows == result.intersection > 400
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert ranked["score"].is_monotonic_decreasing
    assert ranked["decile"].min() == 1 and ranked["decile"].max() == 10
    # The scores are the joint model's: the guest's part, the intercept and the host's part.
    parts = {
        p: ModelPart.load(plain.fed.root / "models" / p, plain.spec.id, p) for p in (GUEST, HOST)
    }
    frames = {
        p: read_vertical_party(
            plain.fed.root / "data" / p / VERTICAL_FILE, "id", parts[p].columns,
            ignore=("y",),
        ).set_index("id").loc[ranked["id"]]
        for p in (GUEST, HOST)
    }  # fmt: skip
    total = (
        sum(
            parts[p].partial_scores(parts[p].encoder().transform(frames[p]).astype(np.float64))
            for p in (GUEST, HOST)
        )
        + parts[GUEST].intercept
    )
    expected = 1 / (1 + np.exp(-total))
    assert np.abs(expected - ranked["score"].to_numpy()).max() < 1e-6
    # The coordinator learned two counts: no id, no score.
    view = b"".join(
        b
        for _, rq, rs in coordinator.transcript
        for m in (rq, *rs.values())
        for b in field_bytes(m)
    )
    assert b"CUST-" not in view
    assert not (plain.fed.root / "out" / HOST).exists()
    assert [t for t, _ in opened[GUEST]][-1] == "score/partial-scores"
    assert not any(plain.fed.state_files(p) for p in (GUEST, HOST))


def test_scoring_needs_the_model_part_at_every_party(plain: JobRun) -> None:
    text = f"""
[job]
id = "score-unknown"
type = "vfl-score"
guest = "{GUEST}"
hosts = ["{HOST}"]
model = "no-such-model"
min-intersection = 300
"""
    with pytest.raises(JobFailedError, match="has no part of model 'no-such-model'"):
        run_vertical_score(ScoreSpec.from_toml(text), Recording(plain.fed), plain.fed.manifest)


# --- quality on real data ------------------------------------------------------------------


def test_vertical_auc_matches_sklearn_on_the_joined_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sample of FATE's default-credit split: the released AUC of the held-out rows is
    within 0.01 of scikit-learn's logistic regression trained on the joined rows."""
    if not (SHARED / CREDIT_GUEST_FILE).is_file():
        pytest.skip(f"{SHARED} holds no default-credit files")
    # The aligned rows' order (drawn from the OS CSPRNG in a job) fixes which rows are
    # held out; a seeded order here makes the comparison the same split on every run.
    orders = np.random.default_rng(7)
    monkeypatch.setattr(psi, "_random_order", lambda n: orders.permutation(n).tolist())
    source = tmp_path / "source"
    source.mkdir()
    for name in (CREDIT_GUEST_FILE, CREDIT_HOST_FILE):
        lines = (SHARED / name).read_text().splitlines()[: ROWS + 1]
        (source / name).write_text("\n".join(lines) + "\n")
    summaries = prepare_vertical("default-credit", source, tmp_path / "data", seed=5)
    assert summaries[0].rows == ROWS and 0.9 * ROWS <= summaries[1].rows <= 0.95 * ROWS
    identities = {p: generate_identity(p) for p in (GUEST, HOST)}
    fed = Federation(
        tmp_path, identities, Manifest("credit", tuple(i.public for i in identities.values()))
    )
    text = (CONFIGS / "default-credit-vfl.toml").read_text()
    text = text.replace('aggregation = "paillier"', 'aggregation = "plaintext"')
    text = text.replace("batch-size = 2000", "batch-size = 500").replace(
        "max-epochs = 5", "max-epochs = 8"
    )
    run = run_job(fed, text)
    joined = {
        part: np.hstack([run.array(GUEST, f"x-{part}"), run.array(HOST, f"x-{part}")])
        for part in ("train", "test")
    }
    model = LogisticRegression(max_iter=3000).fit(joined["train"], run.array(GUEST, "y-train"))
    central = roc_auc_score(run.array(GUEST, "y-test"), model.decision_function(joined["test"]))
    assert abs(run.result.metrics["auc"] - central) <= 0.01, (run.result.metrics, central)
    guest_only = LogisticRegression(max_iter=3000).fit(
        run.array(GUEST, "x-train"), run.array(GUEST, "y-train")
    )
    alone = roc_auc_score(
        run.array(GUEST, "y-test"), guest_only.decision_function(run.array(GUEST, "x-test"))
    )
    assert run.result.metrics["auc"] > alone + 0.02


# --- data preparation ------------------------------------------------------------------------


def test_bank_marketing_is_split_by_columns_and_shuffled(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    write_bank_full(source / "bank-full.csv", rows=600, seed=2)
    summaries = prepare_vertical("bank-marketing", source, tmp_path / "out", seed=1)
    frames = {s.party: pd.read_csv(s.file, dtype=str, keep_default_na=False) for s in summaries}
    assert list(frames[GUEST].columns) == ["cid", *BANK_GUEST_COLUMNS]
    assert list(frames[HOST].columns) == ["cid", *BANK_HOST_COLUMNS]
    assert all("duration" not in f.columns for f in frames.values())
    assert sorted(frames[GUEST]["cid"], key=int) == [str(i) for i in range(600)]
    assert frames[GUEST]["cid"].tolist() != frames[HOST]["cid"].tolist()  # own orders
    original = pd.read_csv(source / "bank-full.csv", sep=";", dtype=str, keep_default_na=False)
    joined = (
        frames[GUEST]
        .merge(frames[HOST], on="cid")
        .set_index("cid")
        .loc[[str(i) for i in range(600)]]
    )
    kept = [c for c in original.columns if c != "duration"]
    assert joined[kept].reset_index(drop=True).equals(original[kept])
    spec = VerticalSpec.load(CONFIGS / "bank-marketing-vfl.toml")
    for party, frame_path in ((s.party, s.file) for s in summaries):
        p = spec.parties[party]
        label = (p.label, p.label_values) if p.label and p.label_values else None
        read_vertical_party(frame_path, p.id_column, p.columns, label)


def test_preparing_reports_missing_sources_and_columns(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="source file not found"):
        prepare_vertical("default-credit", tmp_path, tmp_path / "out", seed=0)
    (tmp_path / CREDIT_GUEST_FILE).write_text("id,y,x0\n1,0,0.5\n")
    (tmp_path / CREDIT_HOST_FILE).write_text("id,x0\n1,0.5\n")
    with pytest.raises(DataValidationError, match="column 'x1': missing from the header"):
        prepare_vertical("default-credit", tmp_path, tmp_path / "out", seed=0)
    with pytest.raises(FedpropError, match="unknown vertical layout"):
        prepare_vertical("credit", tmp_path, tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()
