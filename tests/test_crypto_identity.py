"""Identities, sealing, signatures and the manifest: what must open opens, nothing else does."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from fedprop.crypto.identity import (
    PUBLIC_FILE,
    SEALING_FILE,
    SIGNING_FILE,
    IdentityError,
    Manifest,
    ManifestError,
    NodeIdentity,
    NodePublicKeys,
    SealedBlob,
    SealError,
    SignatureError,
    check_parties,
    generate_identity,
    load_identity,
    open_sealed,
    save_identity,
    seal,
    sign,
    verify,
)

SECRET = bytes(range(200))
JOB = "job-2026-001"


@pytest.fixture(scope="module")
def nodes() -> dict[str, NodeIdentity]:
    return {name: generate_identity(name) for name in ("bank-a", "bank-b", "bank-c")}


@pytest.fixture(scope="module")
def manifest(nodes: dict[str, NodeIdentity]) -> Manifest:
    coordinator = generate_identity("coordinator")
    return Manifest("test-fed", tuple(n.public for n in nodes.values()), coordinator.public)


def _sealed(nodes: dict[str, NodeIdentity]) -> SealedBlob:
    return seal(SECRET, nodes["bank-b"].public, job_id=JOB, sender=nodes["bank-a"])


# --- signatures -------------------------------------------------------------------------


def test_sign_and_verify(nodes: dict[str, NodeIdentity]) -> None:
    a, b = nodes["bank-a"], nodes["bank-b"]
    signature = sign(a, b"release round 3")
    verify(a.public, b"release round 3", signature)
    with pytest.raises(SignatureError, match="bank-a"):
        verify(a.public, b"release round 4", signature)
    with pytest.raises(SignatureError, match="bank-b"):
        verify(b.public, b"release round 3", signature)
    with pytest.raises(SignatureError):
        verify(a.public, b"release round 3", signature[:-1])


def test_signatures_are_domain_separated(nodes: dict[str, NodeIdentity]) -> None:
    a = nodes["bank-a"]
    raw = a.signing.sign(b"message")  # a bare Ed25519 signature is not a fedprop signature
    with pytest.raises(SignatureError):
        verify(a.public, b"message", raw)
    blob = _sealed(nodes)  # nor is the signature of a sealed blob
    with pytest.raises(SignatureError):
        verify(a.public, blob._signed_message(), blob.signature)


# --- sealing ----------------------------------------------------------------------------


def test_seal_opens_for_its_recipient(nodes: dict[str, NodeIdentity]) -> None:
    blob = _sealed(nodes)
    opened = open_sealed(blob, nodes["bank-b"], job_id=JOB, sender=nodes["bank-a"].public)
    assert opened == SECRET
    again = SealedBlob.from_bytes(blob.to_bytes())
    assert again == blob
    assert open_sealed(again, nodes["bank-b"], job_id=JOB, sender=nodes["bank-a"].public) == SECRET


def test_each_seal_is_fresh(nodes: dict[str, NodeIdentity]) -> None:
    first, second = _sealed(nodes), _sealed(nodes)
    assert first.ephemeral != second.ephemeral
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_another_recipient_cannot_open(nodes: dict[str, NodeIdentity]) -> None:
    blob = _sealed(nodes)
    with pytest.raises(SealError, match="sealed to 'bank-b', not to 'bank-c'"):
        open_sealed(blob, nodes["bank-c"], job_id=JOB, sender=nodes["bank-a"].public)
    # Same name, another key (a node whose keys were replaced): the AEAD refuses.
    impostor = generate_identity("bank-b")
    with pytest.raises(SealError, match="does not open"):
        open_sealed(blob, impostor, job_id=JOB, sender=nodes["bank-a"].public)


def test_job_id_mismatch_fails(nodes: dict[str, NodeIdentity]) -> None:
    blob = _sealed(nodes)
    with pytest.raises(SealError, match="for job 'job-2026-001', not 'job-2026-002'"):
        open_sealed(blob, nodes["bank-b"], job_id="job-2026-002", sender=nodes["bank-a"].public)


def test_wrong_sender_fails(nodes: dict[str, NodeIdentity]) -> None:
    blob = _sealed(nodes)
    with pytest.raises(SealError, match="not signed by 'bank-c'"):
        open_sealed(blob, nodes["bank-b"], job_id=JOB, sender=nodes["bank-c"].public)


def test_a_sender_outside_the_manifest_is_refused(
    nodes: dict[str, NodeIdentity], manifest: Manifest
) -> None:
    outsider = generate_identity("bank-a")  # claims bank-a's name, not its keys
    blob = seal(SECRET, nodes["bank-b"].public, job_id=JOB, sender=outsider)
    with pytest.raises(SealError, match="not signed by 'bank-a'"):
        open_sealed(blob, nodes["bank-b"], job_id=JOB, sender=manifest.node("bank-a"))


def test_every_field_change_is_refused(nodes: dict[str, NodeIdentity]) -> None:
    blob = _sealed(nodes)
    other = _sealed(nodes)
    changes = {
        "job_id": "job-2026-002",
        "sender": "bank-c",
        "recipient": "bank-c",
        "ephemeral": other.ephemeral,
        "nonce": other.nonce,
        "ciphertext": other.ciphertext,
        "signature": other.signature,
    }
    for name, value in changes.items():
        tampered = dataclasses.replace(blob, **{name: value})
        with pytest.raises(SealError):
            open_sealed(tampered, nodes["bank-b"], job_id=JOB, sender=nodes["bank-a"].public)


def test_every_flipped_byte_is_refused(nodes: dict[str, NodeIdentity]) -> None:
    data = _sealed(nodes).to_bytes()
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[i] ^= bit
            with pytest.raises(SealError):
                blob = SealedBlob.from_bytes(bytes(tampered))
                open_sealed(blob, nodes["bank-b"], job_id=JOB, sender=nodes["bank-a"].public)


def test_malformed_blobs_are_refused() -> None:
    for bad in (b"", b"\x00" * 10, b"garbage" * 20):
        with pytest.raises(SealError, match="not a fedprop sealed blob"):
            SealedBlob.from_bytes(bad)


def test_seal_refuses_bad_arguments(nodes: dict[str, NodeIdentity]) -> None:
    with pytest.raises(SealError, match="job id"):
        seal(SECRET, nodes["bank-b"].public, job_id="", sender=nodes["bank-a"])
    with pytest.raises(SealError, match="at most"):
        seal(b"x" * (65 * 1024), nodes["bank-b"].public, job_id=JOB, sender=nodes["bank-a"])


# --- key folders ------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    identity = generate_identity("bank-a")
    folder = tmp_path / "keys" / "bank-a"
    save_identity(identity, folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in (SIGNING_FILE, SEALING_FILE, PUBLIC_FILE):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [SIGNING_FILE, SEALING_FILE, PUBLIC_FILE]
    )
    assert [p.name for p in folder.parent.iterdir()] == ["bank-a"]  # no staging left over
    loaded = load_identity(folder)
    assert loaded.public == identity.public
    verify(identity.public, b"m", sign(loaded, b"m"))
    public = NodePublicKeys.from_json((folder / PUBLIC_FILE).read_text())
    assert public == identity.public


def test_save_into_an_existing_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir(mode=0o755)
    save_identity(generate_identity("bank-a"), folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert load_identity(folder).name == "bank-a"


def test_an_identity_is_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "bank-a"
    first = generate_identity("bank-a")
    save_identity(first, folder)
    with pytest.raises(IdentityError, match="holds an identity; refusing to overwrite"):
        save_identity(generate_identity("bank-a"), folder)
    assert load_identity(folder).public == first.public
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(IdentityError, match="not empty"):
        save_identity(first, other)
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_private_keys_readable_by_others_are_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "bank-a"
    save_identity(generate_identity("bank-a"), folder)
    os.chmod(folder / SIGNING_FILE, mode)
    with pytest.raises(IdentityError, match=f"permissions {mode:04o} are too open"):
        load_identity(folder)


def test_a_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "bank-a"
    save_identity(generate_identity("bank-a"), folder)
    os.chmod(folder, 0o777)
    with pytest.raises(IdentityError, match="too open"):
        load_identity(folder)


def test_missing_and_corrupted_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no key folder"):
        load_identity(tmp_path / "nowhere")
    folder = tmp_path / "bank-a"
    save_identity(generate_identity("bank-a"), folder)
    (folder / SEALING_FILE).unlink()
    with pytest.raises(IdentityError, match="missing"):
        load_identity(folder)

    folder = tmp_path / "bank-b"
    save_identity(generate_identity("bank-b"), folder)
    (folder / SIGNING_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(IdentityError, match="not a valid"):
        load_identity(folder)

    folder = tmp_path / "bank-c"
    save_identity(generate_identity("bank-c"), folder)
    pem = (folder / SIGNING_FILE).read_bytes()
    (folder / SEALING_FILE).write_bytes(pem)  # an Ed25519 key where the X25519 key belongs
    with pytest.raises(IdentityError, match="not an X25519"):
        load_identity(folder)


def test_public_json_must_match_the_keys(tmp_path: Path) -> None:
    folder = tmp_path / "bank-a"
    save_identity(generate_identity("bank-a"), folder)
    (folder / PUBLIC_FILE).write_text(generate_identity("bank-a").public.to_json())
    with pytest.raises(IdentityError, match="does not match the private keys"):
        load_identity(folder)
    (folder / PUBLIC_FILE).write_text("{not json")
    with pytest.raises(IdentityError, match="unreadable"):
        load_identity(folder)


def test_names_are_checked() -> None:
    for bad in ("", "bank a", "../etc", "-bank", "x" * 65):
        with pytest.raises(IdentityError, match="not a valid name"):
            generate_identity(bad)


def test_identity_repr_hides_keys(nodes: dict[str, NodeIdentity]) -> None:
    assert repr(nodes["bank-a"]) == "NodeIdentity(name='bank-a')"


# --- manifest ---------------------------------------------------------------------------


def test_manifest_round_trip_and_fingerprint(manifest: Manifest) -> None:
    text = manifest.to_json()
    again = Manifest.from_json(text)
    assert again == manifest
    assert again.fingerprint() == manifest.fingerprint()
    assert len(manifest.fingerprint()) == 64
    changed = Manifest(manifest.federation, manifest.nodes[:2], manifest.coordinator)
    assert changed.fingerprint() != manifest.fingerprint()
    assert manifest.node("bank-b").name == "bank-b"
    with pytest.raises(ManifestError, match="'bank-z' is not a node"):
        manifest.node("bank-z")


def test_node_fingerprints(nodes: dict[str, NodeIdentity]) -> None:
    a, b = nodes["bank-a"].public, nodes["bank-b"].public
    assert a.fingerprint() != b.fingerprint()
    assert len(a.fingerprint()) == 64
    entry = a.to_dict()
    entry["fingerprint"] = b.fingerprint()
    with pytest.raises(ManifestError, match="fingerprint of 'bank-a' does not match"):
        NodePublicKeys.from_dict(entry)


def test_malformed_manifests_are_refused(manifest: Manifest) -> None:
    doc = json.loads(manifest.to_json())
    bad_docs: list[object] = [
        [],
        {**doc, "extra": 1},
        {k: v for k, v in doc.items() if k != "nodes"},
        {**doc, "format": "other"},
        {**doc, "nodes": "bank-a"},
        {**doc, "nodes": [{**doc["nodes"][0], "signing": "!!"}]},
        {**doc, "nodes": [{**doc["nodes"][0], "sealing": "AAAA"}]},
        {**doc, "nodes": [doc["nodes"][0], doc["nodes"][0]]},
        {**doc, "nodes": [{"name": "x"}]},
        {**doc, "federation": "bad name"},
    ]
    for bad in bad_docs:
        with pytest.raises(ManifestError):
            Manifest.from_json(json.dumps(bad))
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json("{")


def test_manifest_refuses_duplicate_names_and_keys(nodes: dict[str, NodeIdentity]) -> None:
    a = nodes["bank-a"].public
    with pytest.raises(ManifestError, match="more than once: bank-a"):
        Manifest("fed", (a, a))
    copy = NodePublicKeys("bank-x", a.signing, nodes["bank-b"].public.sealing)
    with pytest.raises(ManifestError, match="share a public key"):
        Manifest("fed", (a, copy))
    with pytest.raises(ManifestError, match="more than once"):
        Manifest("fed", (a,), coordinator=a)


def test_check_parties(manifest: Manifest) -> None:
    check_parties(manifest, ["bank-a", "bank-c"])
    with pytest.raises(ManifestError, match="'bank-z'"):
        check_parties(manifest, ["bank-a", "bank-z"])
    with pytest.raises(ManifestError, match="more than once"):
        check_parties(manifest, ["bank-a", "bank-a"])
    with pytest.raises(ManifestError, match="at least one"):
        check_parties(manifest, [])
    with pytest.raises(ManifestError, match="'coordinator'"):
        check_parties(manifest, ["coordinator"])  # the coordinator is not a party
