"""Entity alignment by ECDH-PSI: correctness, message checks, and what each role can see."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import random
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import gmpy2
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedprop.crypto.params import PSI_HASH_LABEL, PSI_MESSAGE_LABEL
from fedprop.errors import FedpropError
from fedprop.framing import join_frames
from fedprop.protocols.psi import (
    POINT_BYTES,
    Alignment,
    BlindedIds,
    DoubleBlinded,
    PsiConfig,
    PsiError,
    PsiGuest,
    PsiHost,
    PsiResult,
    PsiRole,
    hash_to_curve,
    normalize_id,
)

JOB = "vfl-job-7"
P = 2**255 - 19
#: Points of order 4 and 8 on Curve25519 (u = 1 and the two order-8 u-coordinates): they pass
#: the on-curve check, and X25519 maps them to the all-zero output.
SMALL_ORDER = (
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
)


def config(**changes: object) -> PsiConfig:
    values: dict[str, object] = {"job_id": JOB, "min_intersection": 1} | changes
    return PsiConfig(**values)  # type: ignore[arg-type]


def customer_ids(start: int, stop: int, prefix: str = "CUST") -> list[str]:
    return [f"{prefix}-{i:07d}" for i in range(start, stop)]


@dataclass
class Run:
    """A whole alignment with every message passed as bytes, as the coordinator relays them."""

    guest: PsiResult
    hosts: dict[str, PsiResult]
    relayed: list[tuple[str, str, bytes]] = field(default_factory=list)

    def seen_by(self, party: str) -> list[bytes]:
        return [data for _, to, data in self.relayed if to == party]

    def all_bytes(self) -> bytes:
        return b"".join(data for _, _, data in self.relayed)


def run(cfg: PsiConfig, guest_ids: Sequence[str], host_ids: Mapping[str, Sequence[str]]) -> Run:
    relayed: list[tuple[str, str, bytes]] = []

    def relay(sender: str, recipient: str, data: bytes) -> bytes:
        relayed.append((sender, recipient, data))
        return data

    guest = PsiGuest(cfg, guest_ids, list(host_ids))
    hosts = {name: PsiHost(cfg, ids, name) for name, ids in host_ids.items()}
    for name, host in hosts.items():
        to_host = relay("guest", name, guest.blinded_for(name).to_bytes())
        to_guest = relay(name, "guest", host.blinded().to_bytes())
        guest.receive_host_ids(BlindedIds.from_bytes(to_guest))
        answer = relay(name, "guest", host.double_blind(BlindedIds.from_bytes(to_host)).to_bytes())
        guest.receive_double_blinded(DoubleBlinded.from_bytes(answer))
    result, alignments = guest.finish()
    host_results = {
        name: host.finish(Alignment.from_bytes(relay("guest", name, alignments[name].to_bytes())))
        for name, host in hosts.items()
    }
    return Run(result, host_results, relayed)


def exchanged(
    cfg: PsiConfig, guest_ids: Sequence[str], host_ids: Sequence[str]
) -> tuple[PsiGuest, PsiHost, BlindedIds, BlindedIds, DoubleBlinded]:
    """A guest and a host after steps 1 and 2 (guest to host, host to guest), not finished."""
    guest = PsiGuest(cfg, guest_ids, ["bank-b"])
    host = PsiHost(cfg, host_ids, "bank-b")
    to_host = guest.blinded_for("bank-b")
    to_guest = host.blinded()
    double = host.double_blind(to_host)
    return guest, host, to_host, to_guest, double


def point(u: int) -> bytes:
    return u.to_bytes(POINT_BYTES, "little")


def twist_point() -> bytes:
    """A u-coordinate on the quadratic twist of Curve25519, not on the curve."""
    u = 2
    while gmpy2.jacobi((u**3 + 486662 * u**2 + u) % P, P) != -1:
        u += 1
    return point(u)


# --- correctness --------------------------------------------------------------------------


def test_intersection_equals_the_set_intersection_and_orders_agree() -> None:
    rng = random.Random(1)
    pool = customer_ids(0, 2000)
    guest_ids = rng.sample(pool, 400)
    host_ids = rng.sample(pool, 300)
    out = run(config(), guest_ids, {"bank-b": host_ids})
    expected = set(guest_ids) & set(host_ids)
    assert expected  # the sample overlaps
    assert set(out.guest.ids) == expected
    assert len(out.guest.ids) == len(expected)
    assert out.hosts["bank-b"].ids == out.guest.ids
    assert [guest_ids[r] for r in out.guest.rows] == list(out.guest.ids)
    assert [host_ids[r] for r in out.hosts["bank-b"].rows] == list(out.guest.ids)


def test_the_shared_order_is_random_not_either_partys_order() -> None:
    ids = customer_ids(0, 200)
    first = run(config(), ids, {"bank-b": ids}).guest
    second = run(config(), ids, {"bank-b": ids}).guest
    assert set(first.ids) == set(ids)
    assert list(first.ids) != ids and list(first.ids) != sorted(ids)
    assert first.ids != second.ids  # a fresh order per run (probability 1/200! of failing)


def test_whitespace_is_trimmed_and_case_kept_unless_the_job_folds_it() -> None:
    guest_ids = ["  alice ", "BOB", "Carol\t", "dave"]
    host_ids = ["alice", "bob", " carol", "\u00a0DAVE\n", "erin"]
    kept = run(config(), guest_ids, {"bank-b": host_ids})
    assert set(kept.guest.ids) == {"alice"}
    assert kept.hosts["bank-b"].ids == kept.guest.ids
    folded = run(config(case_fold=True), guest_ids, {"bank-b": host_ids})
    assert set(folded.guest.ids) == {"alice", "bob", "carol", "dave"}
    assert folded.hosts["bank-b"].ids == folded.guest.ids
    rows = dict(zip(folded.guest.ids, folded.hosts["bank-b"].rows, strict=True))
    assert rows["dave"] == 3 and rows["carol"] == 2


def test_unicode_forms_of_one_identifier_are_the_same_identifier() -> None:
    composed, decomposed = "Jos\u00e9-1", "Jose\u0301-1"
    assert normalize_id(decomposed, case_fold=False) == composed
    assert normalize_id(" STRASSE ", case_fold=True) == "strasse"
    assert normalize_id("Stra\u00dfe", case_fold=True) == "strasse"
    out = run(config(), [composed, "x"], {"bank-b": [decomposed, "y"]})
    assert out.guest.ids == (unicodedata.normalize("NFC", composed),)


def test_several_hosts_align_on_the_ids_every_host_holds() -> None:
    rng = random.Random(2)
    pool = customer_ids(0, 600)
    guest_ids = rng.sample(pool, 400)
    hosts = {name: rng.sample(pool, 350) for name in ("bank-b", "insurer-c", "telco-d")}
    out = run(config(), guest_ids, hosts)
    expected = set(guest_ids).intersection(*map(set, hosts.values()))
    assert set(out.guest.ids) == expected
    for name, ids in hosts.items():
        result = out.hosts[name]
        assert result.ids == out.guest.ids  # same ids, same order, at every party
        assert [ids[r] for r in result.rows] == list(result.ids)
        # the host learns the final set, not its larger intersection with the guest
        assert len(set(guest_ids) & set(ids)) > len(result)


def test_the_guest_may_receive_a_hosts_messages_in_either_order() -> None:
    ids = customer_ids(0, 50)
    guest = PsiGuest(config(), ids, ["bank-b"])
    host = PsiHost(config(), ids[10:], "bank-b")
    guest.receive_double_blinded(host.double_blind(guest.blinded_for("bank-b")))
    guest.receive_host_ids(host.blinded())
    result, alignments = guest.finish()
    assert set(result.ids) == set(ids[10:])
    assert host.finish(alignments["bank-b"]).ids == result.ids
    assert guest.finish()[0] is result  # finishing again gives the same outcome


def test_empty_lists_give_an_empty_result_when_the_job_allows_it() -> None:
    out = run(config(min_intersection=0), [], {"bank-b": customer_ids(0, 5)})
    assert out.guest.ids == () and out.hosts["bank-b"].ids == ()
    out = run(config(min_intersection=0), customer_ids(0, 5), {"bank-b": []})
    assert len(out.guest) == 0 and len(out.hosts["bank-b"]) == 0
    out = run(config(min_intersection=0), customer_ids(0, 5), {"bank-b": customer_ids(5, 9)})
    assert out.guest.ids == ()
    with pytest.raises(PsiError, match="the guest has 0 identifiers, fewer than the job's min"):
        run(config(), [], {"bank-b": ["a"]})
    with pytest.raises(PsiError, match="the host has 0 identifiers, fewer than the job's min"):
        run(config(), ["a"], {"bank-b": []})


def test_lists_too_short_for_the_minimum_are_refused_before_any_work() -> None:
    cfg = config(min_intersection=3)
    small = PsiGuest(config(), ["a", "b"], ["bank-b"]).blinded_for("bank-b")
    with pytest.raises(PsiError, match="the guest sent 2 identifiers, fewer than the job's min"):
        PsiHost(cfg, ["a", "b", "c"], "bank-b").double_blind(small)
    short = PsiHost(config(), ["a", "b"], "bank-b").blinded()
    with pytest.raises(PsiError, match="'bank-b' sent 2 identifiers, fewer than the job's min"):
        PsiGuest(cfg, ["a", "b", "c"], ["bank-b"]).receive_host_ids(short)


def test_messages_round_trip_through_bytes() -> None:
    guest, _host, to_host, to_guest, double = exchanged(config(), ["a", "b"], ["b", "c"])
    for message in (to_host, to_guest, double):
        assert type(message).from_bytes(message.to_bytes()) == message
    guest.receive_host_ids(to_guest)
    guest.receive_double_blinded(double)
    alignment = guest.finish()[1]["bank-b"]
    assert Alignment.from_bytes(alignment.to_bytes()) == alignment
    assert to_host.sender is PsiRole.GUEST and to_guest.sender is PsiRole.HOST
    assert to_host.count == 2 and len(to_host.points) == 2 * POINT_BYTES


# --- refused inputs -----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["guest", "host"])
def test_duplicate_identifiers_are_refused_with_their_count(role: str) -> None:
    ids = ["id-1", "id-2", " id-1", "id-3", "id-2", "id-2 "]
    with pytest.raises(PsiError, match=f"the {role}'s list holds 3 duplicate identifiers") as info:
        if role == "guest":
            PsiGuest(config(), ids, ["bank-b"])
        else:
            PsiHost(config(), ids, "bank-b")
    assert "id-1" not in str(info.value) and "id-2" not in str(info.value)


def test_duplicates_by_case_count_only_when_the_job_folds_case() -> None:
    PsiHost(config(), ["Ann", "ANN", "ann"], "bank-b")
    with pytest.raises(PsiError, match="2 duplicate identifiers after trimming and case folding"):
        PsiHost(config(case_fold=True), ["Ann", "ANN", "ann"], "bank-b")


def test_empty_and_non_string_identifiers_are_refused() -> None:
    with pytest.raises(PsiError, match="2 of the guest's identifiers are empty"):
        PsiGuest(config(), ["a", "  ", ""], ["bank-b"])
    with pytest.raises(PsiError, match="an identifier is a int, not a string"):
        PsiHost(config(), ["a", 7], "bank-b")  # type: ignore[list-item]
    with pytest.raises(PsiError, match="not one string"):
        PsiHost(config(), "abc", "bank-b")


def test_too_many_identifiers_are_refused() -> None:
    with pytest.raises(PsiError, match="the guest has 4 identifiers, more than 3"):
        PsiGuest(config(max_ids=3), ["a", "b", "c", "d"], ["bank-b"])


def test_a_result_below_the_minimum_is_refused_by_the_guest() -> None:
    cfg = config(min_intersection=20)
    guest, _, _, to_guest, double = exchanged(cfg, customer_ids(0, 30), customer_ids(15, 40))
    guest.receive_host_ids(to_guest)
    guest.receive_double_blinded(double)
    with pytest.raises(PsiError, match="15 identifiers, fewer than the job's minimum of 20"):
        guest.finish()


def test_a_result_below_the_minimum_is_refused_by_the_host() -> None:
    # The guest runs with a lower minimum than the host's job: the host still refuses.
    ids = customer_ids(0, 30)
    guest = PsiGuest(config(min_intersection=1), ids, ["bank-b"])
    host = PsiHost(config(min_intersection=20), customer_ids(25, 55), "bank-b")
    guest.receive_host_ids(host.blinded())
    guest.receive_double_blinded(host.double_blind(guest.blinded_for("bank-b")))
    alignment = guest.finish()[1]["bank-b"]
    with pytest.raises(PsiError, match="5 identifiers, fewer than the job's minimum of 20"):
        host.finish(alignment)


def test_the_guest_cannot_finish_before_every_host_answered() -> None:
    guest = PsiGuest(config(), ["a"], ["bank-b", "telco-c"])
    host = PsiHost(config(), ["a"], "bank-b")
    guest.receive_host_ids(host.blinded())
    guest.receive_double_blinded(host.double_blind(guest.blinded_for("bank-b")))
    with pytest.raises(PsiError, match="no complete answer yet from 'telco-c'"):
        guest.finish()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"job_id": ""}, "job id"),
        ({"min_intersection": -1}, "min_intersection"),
        ({"min_intersection": True}, "min_intersection"),
        ({"case_fold": "yes"}, "case_fold"),
        ({"max_ids": 0}, "max_ids"),
        ({"max_ids": 2**40}, "max_ids"),
    ],
)
def test_bad_configs_are_refused(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(PsiError, match=problem):
        config(**changes)


def test_a_guest_needs_distinct_hosts() -> None:
    with pytest.raises(PsiError, match="at least one host"):
        PsiGuest(config(), ["a"], [])
    with pytest.raises(PsiError, match="named twice"):
        PsiGuest(config(), ["a"], ["bank-b", "bank-b"])
    with pytest.raises(PsiError, match="not a host of this alignment"):
        PsiGuest(config(), ["a"], ["bank-b"]).blinded_for("telco-c")


def test_psi_errors_are_fedprop_errors() -> None:
    assert issubclass(PsiError, FedpropError)


# --- malformed and tampered messages ------------------------------------------------------


def frames(
    *,
    label: bytes = PSI_MESSAGE_LABEL,
    kind: bytes = b"host-blinded-ids",
    job: bytes = JOB.encode(),
    host: bytes = b"bank-b",
    count: int = 1,
    payload: bytes | None = None,
) -> bytes:
    """A host's blinded-ids message built by hand, with one field changed."""
    if payload is None:
        payload = hash_to_curve(JOB, ["x"])[0] * count
    return join_frames([label, kind, job, host, count.to_bytes(8, "big"), payload])


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "0 frames"),
        (b"\x00\x00\x00\x09abc", "truncated"),
        (b"garbage that is no message at all", "truncated"),
        (frames()[:-1], "truncated"),
        (frames() + b"\x00", "truncated"),
        (frames() + b"\x00\x00\x00\x00", "7 frames"),
        (frames(label=b"fedprop-psi-v0"), "not a PSI message"),
        (frames(kind=b"double-blinded-ids"), "a b'double-blinded-ids' message"),
        (frames(kind=b"alignment"), "a b'alignment' message"),
        (frames(count=2, payload=bytes(32)), "32 bytes of values, expected 2 x 32"),
        (frames(count=1, payload=bytes(31)), "31 bytes of values"),
        (frames(count=2**40, payload=b""), "more than"),
        (frames(job=b"\xff\xfe"), "not UTF-8"),
        (frames(host=b""), "host name"),
        (join_frames([PSI_MESSAGE_LABEL, b"host-blinded-ids", b"j", b"h", b"\x01", b""]), "count"),
    ],
)
def test_malformed_blinded_ids_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(PsiError, match=problem):
        BlindedIds.from_bytes(data)


def test_each_message_type_parses_only_its_own_kind() -> None:
    _, _, to_host, _, double = exchanged(config(), ["a"], ["a"])
    with pytest.raises(PsiError, match="guest-blinded-ids"):
        DoubleBlinded.from_bytes(to_host.to_bytes())
    with pytest.raises(PsiError, match="double-blinded-ids"):
        Alignment.from_bytes(double.to_bytes())
    with pytest.raises(PsiError, match="must be bytes"):
        BlindedIds.from_bytes(bytearray(to_host.to_bytes()))  # type: ignore[arg-type]


def test_malformed_alignments_are_refused() -> None:
    good = Alignment(JOB, "bank-b", (3, 1, 2)).to_bytes()
    with pytest.raises(PsiError, match="truncated"):
        Alignment.from_bytes(good[:-2])
    header = [PSI_MESSAGE_LABEL, b"alignment", JOB.encode(), b"bank-b", (3).to_bytes(8, "big")]
    broken = join_frames([*header, b"\x00" * 11])
    with pytest.raises(PsiError, match="11 bytes of values, expected 3 x 4"):
        Alignment.from_bytes(broken)
    with pytest.raises(PsiError, match="outside"):
        Alignment(JOB, "bank-b", (-1,))
    with pytest.raises(PsiError, match="tuple of integers"):
        Alignment(JOB, "bank-b", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(PsiError, match="multiple of 32"):
        BlindedIds(JOB, "bank-b", PsiRole.HOST, b"\x01" * 33)


def test_a_flipped_top_bit_or_a_twist_point_is_refused_before_multiplying() -> None:
    guest, _host, to_host, _to_guest, _ = exchanged(config(), customer_ids(0, 10), ["x"])
    points = bytearray(to_host.points)
    points[5 * POINT_BYTES + 31] ^= 0x80  # the top bit of value 5: not a canonical coordinate
    tampered = BlindedIds(JOB, "bank-b", PsiRole.GUEST, bytes(points))
    host2 = PsiHost(config(), ["x"], "bank-b")
    with pytest.raises(PsiError, match="value 5 is not a point of Curve25519"):
        host2.double_blind(tampered)
    twisted = BlindedIds(JOB, "bank-b", PsiRole.HOST, twist_point())
    with pytest.raises(PsiError, match="value 0 is not a point of Curve25519"):
        guest.receive_host_ids(twisted)
    non_canonical = BlindedIds(JOB, "bank-b", PsiRole.HOST, point(P + 2))
    with pytest.raises(PsiError, match="not a point"):
        PsiGuest(config(), ["x"], ["bank-b"]).receive_host_ids(non_canonical)


@pytest.mark.parametrize("u", SMALL_ORDER)
def test_small_order_points_are_refused(u: int) -> None:
    guest = PsiGuest(config(), ["a", "b"], ["bank-b"])
    message = BlindedIds(JOB, "bank-b", PsiRole.HOST, hash_to_curve(JOB, ["z"])[0] + point(u))
    with pytest.raises(PsiError, match="small order"):
        guest.receive_host_ids(message)
    host = PsiHost(config(), ["a"], "bank-b")
    with pytest.raises(PsiError, match="small order"):
        host.double_blind(BlindedIds(JOB, "bank-b", PsiRole.GUEST, point(u)))
    with pytest.raises(PsiError, match="not a point"):
        host.double_blind(BlindedIds(JOB, "bank-b", PsiRole.GUEST, point(0)))


def test_repeated_values_are_refused() -> None:
    guest, _host, to_host, _to_guest, double = exchanged(config(), ["a", "b"], ["b", "c"])
    first = to_host.points[:POINT_BYTES]
    with pytest.raises(PsiError, match="1 repeated values"):
        PsiHost(config(), ["q"], "bank-b").double_blind(
            dataclasses.replace(to_host, points=first * 2)
        )
    with pytest.raises(PsiError, match="1 repeated values"):
        guest.receive_double_blinded(dataclasses.replace(double, points=double.points[:32] * 2))


def test_messages_of_another_job_or_host_are_refused() -> None:
    guest, _host, to_host, to_guest, double = exchanged(config(), ["a", "b"], ["b", "c"])
    other = PsiGuest(config(job_id="vfl-job-8"), ["a", "b"], ["bank-b"])
    with pytest.raises(PsiError, match="of job 'vfl-job-8', expected 'vfl-job-7'"):
        PsiHost(config(), ["b"], "bank-b").double_blind(other.blinded_for("bank-b"))
    with pytest.raises(PsiError, match="of job 'vfl-job-7', expected 'vfl-job-8'"):
        other.receive_host_ids(to_guest)
    with pytest.raises(PsiError, match="meant for 'bank-b', not 'telco-c'"):
        PsiHost(config(), ["b"], "telco-c").double_blind(to_host)
    with pytest.raises(PsiError, match="'telco-c', which is not a host"):
        guest.receive_double_blinded(dataclasses.replace(double, host="telco-c"))


def test_a_message_reflected_to_its_sender_is_refused() -> None:
    guest, _host, to_host, to_guest, _ = exchanged(config(), ["a", "b"], ["b", "c"])
    with pytest.raises(PsiError, match="sent by the guest cannot come from a host"):
        guest.receive_host_ids(to_host)
    with pytest.raises(PsiError, match="sent by a host cannot come from the guest"):
        PsiHost(config(), ["b"], "bank-b").double_blind(to_guest)


def test_replayed_messages_are_refused() -> None:
    guest, host, to_host, to_guest, double = exchanged(config(), ["a", "b"], ["b", "c"])
    with pytest.raises(PsiError, match="already answered"):
        host.double_blind(to_host)
    guest.receive_host_ids(to_guest)
    guest.receive_double_blinded(double)
    with pytest.raises(PsiError, match="received twice"):
        guest.receive_host_ids(to_guest)
    with pytest.raises(PsiError, match="received twice"):
        guest.receive_double_blinded(double)
    alignment = guest.finish()[1]["bank-b"]
    assert host.finish(alignment).ids == ("b",)
    with pytest.raises(PsiError, match="already received"):
        host.finish(alignment)


def test_answers_that_do_not_fit_what_was_sent_are_refused() -> None:
    guest, _host, _to_host, to_guest, double = exchanged(config(), ["a", "b", "c"], ["b", "c"])
    with pytest.raises(PsiError, match="returned 2 double-blinded ids for 3 sent"):
        guest.receive_double_blinded(dataclasses.replace(double, points=double.points[:64]))
    fresh = PsiGuest(config(), ["a"], ["bank-b"])
    with pytest.raises(PsiError, match="who was sent nothing"):
        fresh.receive_double_blinded(double)
    small = PsiGuest(config(max_ids=1), ["a"], ["bank-b"])
    with pytest.raises(PsiError, match="sent 2 ids, more than 1"):
        small.receive_host_ids(to_guest)


def test_alignments_the_host_cannot_map_are_refused() -> None:
    ids = ["a", "b", "c"]
    early = PsiHost(config(), ids, "bank-b")
    with pytest.raises(PsiError, match="before this host's blinded ids were exchanged"):
        early.finish(Alignment(JOB, "bank-b", (0,)))
    for positions, problem in [((0, 3), "position 3 is outside the 3 ids"), ((1, 1), "repeated")]:
        _, host, *_ = exchanged(config(), ids, ids)
        with pytest.raises(PsiError, match=problem):
            host.finish(Alignment(JOB, "bank-b", positions))


def test_the_roles_cannot_be_pickled_and_do_not_print_ids() -> None:
    guest = PsiGuest(config(), ["secret-customer"], ["bank-b"])
    host = PsiHost(config(), ["secret-customer"], "bank-b")
    for role in (guest, host):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(role)
        assert "secret-customer" not in repr(role)
    assert "secret-customer" not in repr(PsiResult(("secret-customer",), (0,)))


# --- unlinkability ------------------------------------------------------------------------


def chunks(blob: bytes) -> set[bytes]:
    return {blob[i : i + POINT_BYTES] for i in range(0, len(blob), POINT_BYTES)}


def test_fresh_keys_make_blinded_values_of_the_same_ids_unrelated() -> None:
    ids = customer_ids(0, 100)
    first = PsiGuest(config(), ids, ["bank-b", "telco-c"])
    second = PsiGuest(config(), ids, ["bank-b"])
    to_b = chunks(first.blinded_for("bank-b").points)
    assert len(to_b) == 100
    assert not to_b & chunks(first.blinded_for("telco-c").points)  # a new scalar per host
    assert not to_b & chunks(second.blinded_for("bank-b").points)  # a new scalar per run
    one = chunks(PsiHost(config(), ids, "bank-b").blinded().points)
    assert not one & chunks(PsiHost(config(), ids, "bank-b").blinded().points)


def test_another_job_id_hashes_the_same_ids_to_unrelated_points() -> None:
    ids = customer_ids(0, 100)
    here, there = set(hash_to_curve(JOB, ids)), set(hash_to_curve("vfl-job-8", ids))
    assert len(here) == len(there) == 100
    assert not here & there
    assert hash_to_curve(JOB, ids) == hash_to_curve(JOB, ids)  # deterministic within a job


def test_every_hashed_point_is_on_the_curve_not_the_twist() -> None:
    for u in hash_to_curve(JOB, customer_ids(0, 300)):
        x = int.from_bytes(u, "little")
        assert x < P and gmpy2.jacobi((x**3 + 486662 * x**2 + x) % P, P) == 1
        X25519PublicKey.from_public_bytes(u)


# --- what each role sees ------------------------------------------------------------------


def plain_hashes(ids: Sequence[str]) -> set[bytes]:
    """Every unkeyed hash of the ids an observer could compute and look for."""
    out: set[bytes] = set(hash_to_curve(JOB, ids))
    for ident in ids:
        raw = ident.encode()
        out |= {
            hashlib.sha256(raw).digest(),
            hashlib.sha512(raw).digest()[:32],
            hashlib.sha512(PSI_HASH_LABEL + raw).digest()[:32],
        }
    return out


def assert_reveals_nothing_about(view: Sequence[bytes], ids: Sequence[str]) -> None:
    blob = b"".join(view)
    for ident in ids:
        assert ident.encode() not in blob
    hashes = plain_hashes(ids)
    aligned = {blob[i : i + POINT_BYTES] for i in range(len(blob) - POINT_BYTES + 1)}
    assert not hashes & aligned  # no hash at any offset


def test_the_coordinator_relays_no_identifier_and_no_plain_hash() -> None:
    rng = random.Random(3)
    pool = customer_ids(0, 300)
    guest_ids, host_ids = rng.sample(pool, 120), rng.sample(pool, 120)
    out = run(config(), guest_ids, {"bank-b": host_ids})
    assert out.guest.ids  # a real intersection was computed
    assert len(out.relayed) == 4  # guest->host, host->guest twice, guest->host
    assert_reveals_nothing_about([data for _, _, data in out.relayed], guest_ids + host_ids)


def test_the_coordinator_sees_the_sizes_only_through_message_lengths() -> None:
    ids = customer_ids(0, 40)
    out = run(config(), ids, {"bank-b": ids[:25]})
    lengths = [len(data) for _, _, data in out.relayed]
    again = run(config(), customer_ids(100, 140), {"bank-b": customer_ids(100, 125)})
    assert lengths == [len(data) for _, _, data in again.relayed]  # same sizes, same lengths


def test_the_host_learns_nothing_about_guest_only_ids() -> None:
    guest_ids = customer_ids(0, 150)
    host_ids = customer_ids(100, 200)
    guest = PsiGuest(config(), guest_ids, ["bank-b"])
    host = PsiHost(config(), host_ids, "bank-b")
    to_host = guest.blinded_for("bank-b")
    double = host.double_blind(to_host)
    guest.receive_host_ids(host.blinded())
    guest.receive_double_blinded(double)
    alignment = guest.finish()[1]["bank-b"]
    result = host.finish(alignment)
    guest_only = guest_ids[:100]
    assert set(result.ids) == set(host_ids[:50])
    assert_reveals_nothing_about([to_host.to_bytes(), alignment.to_bytes()], guest_only)
    # A host trying its own scalar on guessed ids finds none of them in what it saw: the guest's
    # values carry the guest's secret scalar too.
    guesses = _multiply_with_host_key(host, hash_to_curve(JOB, guest_only))
    assert not set(guesses) & (chunks(to_host.points) | chunks(double.points))
    assert not set(hash_to_curve(JOB, guest_only)) & chunks(to_host.points)


def _multiply_with_host_key(host: PsiHost, points: list[bytes]) -> list[bytes]:
    key = host._key  # the attacker is the host: it holds its own scalar
    return [key.exchange(X25519PublicKey.from_public_bytes(p)) for p in points]


def test_the_guest_sees_no_identifier_or_hash_of_host_only_ids() -> None:
    guest_ids = customer_ids(0, 100)
    host_ids = customer_ids(50, 200)
    out = run(config(), guest_ids, {"bank-b": host_ids})
    assert set(out.guest.ids) == set(guest_ids[50:])
    assert_reveals_nothing_about(out.seen_by("guest"), host_ids[50:])


# --- saved state: a node that runs every message in a fresh process -----------------------


def test_roles_saved_and_restored_between_every_message_align_the_same() -> None:
    cfg = config()
    guest_ids, host_ids = customer_ids(0, 300), customer_ids(100, 400)
    guest = PsiGuest(cfg, guest_ids, ["bank-b"])
    to_host = guest.blinded_for("bank-b").to_bytes()
    saved_guest = guest.export_state()
    host = PsiHost(cfg, host_ids, "bank-b")
    to_guest = host.blinded().to_bytes()
    saved_host = host.export_state()
    del guest, host  # each message runs in a fresh process

    host = PsiHost.restore(cfg, host_ids, "bank-b", saved_host)
    double = host.double_blind(BlindedIds.from_bytes(to_host)).to_bytes()
    saved_host = host.export_state()
    guest = PsiGuest.restore(cfg, guest_ids, ["bank-b"], saved_guest)
    guest.receive_host_ids(BlindedIds.from_bytes(to_guest))
    guest = PsiGuest.restore(cfg, guest_ids, ["bank-b"], guest.export_state())
    guest.receive_double_blinded(DoubleBlinded.from_bytes(double))
    guest = PsiGuest.restore(cfg, guest_ids, ["bank-b"], guest.export_state())
    result, alignments = guest.finish()
    host = PsiHost.restore(cfg, host_ids, "bank-b", saved_host)
    host_result = host.finish(Alignment.from_bytes(alignments["bank-b"].to_bytes()))
    assert set(result.ids) == set(guest_ids[100:])
    assert host_result.ids == result.ids
    with pytest.raises(PsiError, match="already answered"):
        PsiHost.restore(cfg, host_ids, "bank-b", saved_host).double_blind(
            BlindedIds.from_bytes(to_host)
        )
    with pytest.raises(PsiError, match="finished"):
        guest.export_state()


def test_saved_state_is_bound_to_the_job_ids_and_role() -> None:
    cfg = config()
    ids = customer_ids(0, 50)
    host = PsiHost(cfg, ids, "bank-b")
    host.blinded()
    saved = host.export_state()
    with pytest.raises(PsiError, match="other settings, ids or name"):
        PsiHost.restore(cfg, customer_ids(1, 51), "bank-b", saved)
    with pytest.raises(PsiError, match="other settings, ids or name"):
        PsiHost.restore(config(job_id="another-job"), ids, "bank-b", saved)
    with pytest.raises(PsiError, match="not a saved guest"):
        PsiGuest.restore(cfg, ids, ["bank-b"], saved)
    for bad in (b"", saved[:-1], saved + b"\x00"):
        with pytest.raises(PsiError, match="saved"):
            PsiHost.restore(cfg, ids, "bank-b", bad)
    # The restored host multiplies with the same secret: the same answer to the same list.
    guest = PsiGuest(cfg, customer_ids(0, 20), ["bank-b"])
    blinded = guest.blinded_for("bank-b")
    first = PsiHost.restore(cfg, ids, "bank-b", saved).double_blind(blinded)
    again = PsiHost.restore(cfg, ids, "bank-b", saved).double_blind(blinded)
    assert first == again
