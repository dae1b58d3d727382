"""Checkpoints and signed notes: the C2SP formats, and notes that must not verify."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedprop.audit.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    CheckpointProblem,
    NoteSignature,
    add_signature,
    format_note,
    key_id,
    parse_note,
    parse_verifier_key,
    sign_note,
    signature_line,
    verifier_key,
    verify_note,
)

ORIGIN = "audit.example/bank-a"
ROOT = hashlib.sha256(b"some tree").digest()

# The example of Go's golang.org/x/mod/sumdb/note package.
GO_SIGNING_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNATURE_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
    "KvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def note(key: Ed25519PrivateKey) -> str:
    return sign_note(Checkpoint(ORIGIN, 42, ROOT).format_body(), "bank-a", key)


def _problem(exc: pytest.ExceptionInfo[CheckpointError]) -> CheckpointProblem:
    return exc.value.problem


# --- formats ---------------------------------------------------------------------------


def test_body_is_origin_size_and_base64_root() -> None:
    body = Checkpoint(ORIGIN, 42, ROOT).format_body()
    assert body == f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n"
    assert Checkpoint.parse_body(body) == Checkpoint(ORIGIN, 42, ROOT)


@pytest.mark.parametrize(
    "body",
    [
        f"{ORIGIN}\n042\n{base64.b64encode(ROOT).decode()}\n",  # leading zero
        f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}",  # no final newline
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\nextension\n",
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31-byte root
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode().rstrip('=')}\n",  # no padding
        f"bank a\n42\n{base64.b64encode(ROOT).decode()}\n",  # space in origin
        f"{ORIGIN}\t\n42\n{base64.b64encode(ROOT).decode()}\n",  # control character
    ],
)
def test_malformed_bodies_are_refused(body: str) -> None:
    with pytest.raises(CheckpointError) as exc:
        Checkpoint.parse_body(body)
    assert _problem(exc) is CheckpointProblem.MALFORMED


def test_signature_line_and_key_id_follow_signed_note(note: str, key: Ed25519PrivateKey) -> None:
    body, _, block = note.partition("\n\n")
    assert body + "\n" == Checkpoint(ORIGIN, 42, ROOT).format_body()
    name, encoded = block.removeprefix("\u2014 ").removesuffix("\n").split(" ")
    raw = base64.b64decode(encoded)
    public = key.public_key().public_bytes_raw()
    assert name == "bank-a"
    assert raw[:4] == hashlib.sha256(b"bank-a\n\x01" + public).digest()[:4]
    assert raw[:4] == key_id("bank-a", key.public_key())
    key.public_key().verify(raw[4:], (body + "\n").encode())


def test_go_note_example_signs_and_verifies_identically() -> None:
    seed = base64.b64decode(GO_SIGNING_KEY.split("+", 4)[4])[1:]
    go_key = Ed25519PrivateKey.from_private_bytes(seed)
    assert signature_line(GO_TEXT, "PeterNeumann", go_key) == GO_SIGNATURE_LINE
    name, public = parse_verifier_key(GO_VERIFIER_KEY)
    assert name == "PeterNeumann"
    assert verifier_key(name, public) == GO_VERIFIER_KEY
    assert key_id(name, public).hex() == "c74f20a3"


@pytest.mark.parametrize(
    "text",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong key ID
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper case
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not Ed25519
    ],
)
def test_malformed_verifier_keys_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        parse_verifier_key(text)


def test_format_note_rebuilds_a_signed_note(note: str) -> None:
    checkpoint, signatures = parse_note(note)
    assert format_note(checkpoint, signatures) == note
    assert NoteSignature.parse("bank-a", signatures[0].encoded) == signatures[0]


# --- verification ----------------------------------------------------------------------


def test_a_signed_note_verifies(note: str, key: Ed25519PrivateKey) -> None:
    assert verify_note(note, {"bank-a": key.public_key()}) == Checkpoint(ORIGIN, 42, ROOT)


def test_a_changed_body_fails(note: str, key: Ed25519PrivateKey) -> None:
    with pytest.raises(CheckpointError) as exc:
        verify_note(note.replace("\n42\n", "\n43\n"), {"bank-a": key.public_key()})
    assert _problem(exc) is CheckpointProblem.BAD_SIGNATURE


def test_a_forged_signature_fails(note: str, key: Ed25519PrivateKey) -> None:
    checkpoint, [sig] = parse_note(note)
    forged = NoteSignature(sig.name, sig.key_id, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    with pytest.raises(CheckpointError) as exc:
        verify_note(format_note(checkpoint, [forged]), {"bank-a": key.public_key()})
    assert _problem(exc) is CheckpointProblem.BAD_SIGNATURE


def test_a_signature_by_another_key_under_the_same_name_is_not_accepted(
    note: str, key: Ed25519PrivateKey
) -> None:
    body = Checkpoint(ORIGIN, 42, ROOT).format_body()
    impostor = sign_note(body, "bank-a", Ed25519PrivateKey.generate())
    with pytest.raises(CheckpointError) as exc:
        verify_note(impostor, {"bank-a": key.public_key()})
    assert _problem(exc) is CheckpointProblem.UNKNOWN_KEY
    # signed-note: a line from an unknown key is ignored when the pinned key also signed.
    both = note + signature_line(body, "bank-a", Ed25519PrivateKey.generate())
    assert verify_note(both, {"bank-a": key.public_key()}).size == 42


def test_every_pinned_signer_is_required(note: str, key: Ed25519PrivateKey) -> None:
    witness = Ed25519PrivateKey.generate()
    keys = {"bank-a": key.public_key(), "coordinator": witness.public_key()}
    with pytest.raises(CheckpointError) as exc:
        verify_note(note, keys)
    assert _problem(exc) is CheckpointProblem.MISSING_SIGNER
    cosigned = add_signature(note, "coordinator", witness)
    assert cosigned.startswith(note)
    assert verify_note(cosigned, keys).size == 42
    with pytest.raises(CheckpointError, match="already carries"):
        add_signature(cosigned, "coordinator", witness)


def test_duplicate_and_too_many_signatures_are_malformed(note: str, key: Ed25519PrivateKey) -> None:
    line = note.partition("\n\n")[2]
    with pytest.raises(CheckpointError) as exc:
        verify_note(note + line, {"bank-a": key.public_key()})
    assert _problem(exc) is CheckpointProblem.MALFORMED
    with pytest.raises(CheckpointError) as exc:
        verify_note(note + line * MAX_SIGNATURES, {"bank-a": key.public_key()})
    assert _problem(exc) is CheckpointProblem.MALFORMED


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n.replace("\u2014 ", "- "),  # not an em dash
        lambda n: n.removesuffix("\n"),  # unterminated signature line
        lambda n: n[: n.rindex(" ") + 1] + "!!!!\n",  # not base64
    ],
)
def test_malformed_notes_are_refused(note: str, key: Ed25519PrivateKey, mangle: object) -> None:
    assert callable(mangle)
    with pytest.raises(CheckpointError) as exc:
        verify_note(mangle(note), {"bank-a": key.public_key()})
    assert _problem(exc) is CheckpointProblem.MALFORMED
