"""Signed checkpoints: C2SP ``tlog-checkpoint`` bodies in C2SP ``signed-note`` envelopes.

A checkpoint commits a party to the first ``size`` entries of its log: the body is three
lines, each ending in ``"\\n"``::

    <origin>
    <tree size, decimal>
    <base64 of the 32-byte RFC 9162 root hash>

(fedprop writes no extension lines and refuses notes that carry them). The note is the
body, a blank line, then one signature line per signer::

    — <key name> <base64(4-byte key ID || 64-byte Ed25519 signature)>

where the dash is the em dash U+2014 followed by a space, the signature covers the body
exactly (UTF-8, with its final newline), and the key ID is the first four bytes of
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)`` (0x01 is the signed-note type
of Ed25519). The verifier key of a party is written ``<name>+<hex key ID>+<base64(0x01 ||
public key)>``, as in signed-note; :func:`verifier_key` and :func:`parse_verifier_key`
convert it.

Cosignatures: a witness (another party) that checked a checkpoint adds its own signature
line to the same note with :func:`add_signature`. fedprop uses the same plain Ed25519
signed-note signature (type 0x01) for these cosignatures. C2SP ``tlog-cosignature``
defines a different, timestamped variant (type 0x04, signing ``cosignature/v1``, a time
line and the body); fedprop's cosignatures are not in that format, and a cosignature here
states only "this party saw and checked this checkpoint", not when.

:func:`verify_note` requires a valid signature from every key it is given. As
signed-note requires of verifiers, it ignores signature lines whose name and key ID do
not both match a given key (other witnesses, or a key that merely shares a name), and
rejects the note when a line that does match fails to verify. It raises
:class:`CheckpointError`, whose :attr:`~CheckpointError.problem` says which rule failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedprop.errors import FedpropError

__all__ = [
    "MAX_SIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointProblem",
    "NoteSignature",
    "add_signature",
    "format_note",
    "key_id",
    "parse_note",
    "parse_verifier_key",
    "sign_note",
    "signature_line",
    "verifier_key",
    "verify_note",
]

#: Most signature lines a note may carry (the limit of the Go signed-note implementation).
MAX_SIGNATURES = 100

_SIG_PREFIX = "\u2014 "
_ALG_ED25519 = 0x01
_ROOT_SIZE = 32
_KEY_ID_SIZE = 4
_ED25519_SIG_SIZE = 64
_MAX_TREE_SIZE = (1 << 63) - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX_KEY_ID = re.compile(r"[0-9a-f]{8}")


class CheckpointProblem(StrEnum):
    """Which rule a checkpoint note broke."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    MISSING_SIGNER = "missing-signer"
    SPLIT_VIEW = "split-view"


class CheckpointError(FedpropError):
    """A checkpoint or its note is malformed, or its signatures do not verify."""

    def __init__(self, problem: CheckpointProblem, message: str) -> None:
        self.problem = problem
        super().__init__(f"{problem.value}: {message}")


def _malformed(message: str) -> CheckpointError:
    return CheckpointError(CheckpointProblem.MALFORMED, message)


def _check_text(text: str, what: str) -> None:
    """signed-note text: valid UTF-8 and no control character other than newline."""
    for ch in text:
        if (ch < " " and ch != "\n") or ch == "\x7f":
            raise _malformed(f"{what} contains the control character {ch!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _malformed(f"{what} is not valid UTF-8") from exc


def _check_name(name: str, what: str) -> None:
    """A signed-note key name: non-empty, no Unicode space, no '+', no control character."""
    if not isinstance(name, str) or not name:
        raise _malformed(f"{what} must be a non-empty string")
    if any(ch.isspace() or ch == "+" for ch in name):
        raise _malformed(f"{what} {name!r} contains a space or '+'")
    _check_text(name, what)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 with padding; refuses anything that does not re-encode identically."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise _malformed(f"{what} is not valid base64") from exc
    if _b64(raw) != text:
        raise _malformed(f"{what} is not canonical base64")
    return raw


def _public_bytes(public_key: Ed25519PublicKey) -> bytes:
    if not isinstance(public_key, Ed25519PublicKey):
        raise TypeError("an Ed25519PublicKey is required")
    return public_key.public_bytes_raw()


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte signed-note key ID: ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``."""
    _check_name(name, "key name")
    material = name.encode("utf-8") + b"\n" + bytes([_ALG_ED25519]) + _public_bytes(public_key)
    return hashlib.sha256(material).digest()[:_KEY_ID_SIZE]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The signed-note verifier key string ``<name>+<hex key ID>+<base64(0x01 || key)>``."""
    raw = bytes([_ALG_ED25519]) + _public_bytes(public_key)
    return f"{name}+{key_id(name, public_key).hex()}+{_b64(raw)}"


def parse_verifier_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """Read a verifier key string; return the key name and the Ed25519 public key."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise _malformed("a verifier key is '<name>+<hex key ID>+<base64 key>'")
    name, hex_id, encoded = parts
    _check_name(name, "key name")
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise _malformed("the key ID of a verifier key is 8 lowercase hex digits")
    raw = _b64decode_strict(encoded, "verifier key")
    if len(raw) != 1 + 32 or raw[0] != _ALG_ED25519:
        raise _malformed("the verifier key is not an Ed25519 key (type 0x01, 32 bytes)")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if key_id(name, public_key).hex() != hex_id:
        raise _malformed(f"the key ID {hex_id} does not match the key of {name!r}")
    return name, public_key


@dataclass(frozen=True)
class Checkpoint:
    """The head of one party's log: ``size`` entries with Merkle root ``root``.

    ``origin`` names the log; it follows the signed-note key name rules (no spaces, no
    '+', no control characters), like a schema-less URL such as ``bank-a.example/audit``.
    """

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        _check_name(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise _malformed("tree size must be an integer")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise _malformed(f"tree size {self.size} is out of range")
        if not isinstance(self.root, bytes) or len(self.root) != _ROOT_SIZE:
            raise _malformed(f"root hash must be {_ROOT_SIZE} bytes")

    def format_body(self) -> str:
        """The ``tlog-checkpoint`` body: origin, size and base64 root, each line ending in \\n."""
        return f"{self.origin}\n{self.size}\n{_b64(self.root)}\n"

    @classmethod
    def parse_body(cls, text: str) -> Checkpoint:
        """Read a checkpoint body written by :meth:`format_body`; refuse anything else."""
        if not isinstance(text, str):
            raise _malformed("a checkpoint body is text")
        _check_text(text, "checkpoint")
        if not text.endswith("\n"):
            raise _malformed("a checkpoint body ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) != 3:
            raise _malformed(
                f"a checkpoint body has 3 lines (origin, size, root), this one has {len(lines)}"
            )
        origin, size_text, root_text = lines
        if not _DECIMAL.fullmatch(size_text):
            raise _malformed(f"tree size {size_text!r} is not a decimal number")
        root = _b64decode_strict(root_text, "root hash")
        return cls(origin=origin, size=int(size_text), root=root)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key ID and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    @classmethod
    def parse(cls, name: str, encoded: str) -> NoteSignature:
        """Read the base64 part of a signature line (``base64(key ID || signature)``)."""
        _check_name(name, "signer name")
        raw = _b64decode_strict(encoded, f"signature of {name!r}")
        if len(raw) <= _KEY_ID_SIZE:
            raise _malformed(f"signature of {name!r} is too short")
        return cls(name=name, key_id=raw[:_KEY_ID_SIZE], signature=raw[_KEY_ID_SIZE:])

    @property
    def encoded(self) -> str:
        """``base64(key ID || signature)``, as written in the signature line."""
        return _b64(self.key_id + self.signature)

    def format_line(self) -> str:
        """The signature line, ending in a newline."""
        return f"{_SIG_PREFIX}{self.name} {self.encoded}\n"


def format_note(checkpoint: Checkpoint, signatures: Sequence[NoteSignature]) -> str:
    """The signed note of ``checkpoint`` with these signature lines (none verified here)."""
    if not signatures:
        raise _malformed("a signed note has at least one signature")
    lines = "".join(s.format_line() for s in signatures)
    return checkpoint.format_body() + "\n" + lines


def signature_line(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed-note signature line of ``name`` over ``text`` (any valid note text)."""
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError("an Ed25519PrivateKey is required")
    _check_name(name, "key name")
    _check_text(text, "note text")
    if not text.endswith("\n"):
        raise _malformed("note text ends with a newline")
    signature = private_key.sign(text.encode("utf-8"))
    kid = key_id(name, private_key.public_key())
    return NoteSignature(name=name, key_id=kid, signature=signature).format_line()


def sign_note(body: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign a checkpoint body (:meth:`Checkpoint.format_body`); return the signed note."""
    Checkpoint.parse_body(body)
    return body + "\n" + signature_line(body, name, private_key)


def _split_note(text: str) -> tuple[str, list[NoteSignature]]:
    if not isinstance(text, str):
        raise _malformed("a note is text")
    _check_text(text, "note")
    split = text.rfind("\n\n")
    if split < 0:
        raise _malformed("no blank line between the checkpoint and its signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block.endswith("\n"):
        raise _malformed("the signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(f"more than {MAX_SIGNATURES} signatures")
    signatures: list[NoteSignature] = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise _malformed("a signature line starts with an em dash and a space")
        name, sep, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep:
            raise _malformed("a signature line is '— <name> <base64 signature>'")
        signatures.append(NoteSignature.parse(name, encoded))
    return body, signatures


def parse_note(text: str) -> tuple[Checkpoint, list[NoteSignature]]:
    """Split a signed note into its checkpoint and signature lines, verifying nothing."""
    body, signatures = _split_note(text)
    return Checkpoint.parse_body(body), signatures


def add_signature(note: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Add ``name``'s signature (a cosignature) to a signed checkpoint note.

    The existing signatures are kept as they are and not verified here: a witness
    verifies the note first (:func:`verify_note`), then cosigns it.
    """
    body, signatures = _split_note(note)
    Checkpoint.parse_body(body)
    kid = key_id(name, private_key.public_key())
    if any(s.name == name and s.key_id == kid for s in signatures):
        raise _malformed(f"the note already carries a signature by {name!r}")
    if len(signatures) >= MAX_SIGNATURES:
        raise _malformed(f"the note already carries {MAX_SIGNATURES} signatures")
    return note + signature_line(body, name, private_key)


def verify_note(text: str, verifiers: Mapping[str, Ed25519PublicKey]) -> Checkpoint:
    """Verify a signed checkpoint note; return its checkpoint.

    Every key in ``verifiers`` (key name -> pinned Ed25519 public key) must have signed
    the note. Lines whose name and key ID do not both match a pinned key are ignored. When
    a pinned name has no valid signature but carries one under another key ID, the error
    is ``unknown-key`` (signed with a key other than the pinned one); with no line at all
    for that name it is ``missing-signer``.
    """
    if not verifiers:
        raise ValueError("verify_note needs at least one verifier key")
    expected: dict[str, tuple[bytes, Ed25519PublicKey]] = {
        name: (key_id(name, key), key) for name, key in verifiers.items()
    }
    body, signatures = _split_note(text)
    checkpoint = Checkpoint.parse_body(body)
    where = f"checkpoint {checkpoint.origin} size {checkpoint.size}"
    message = body.encode("utf-8")
    seen: set[str] = set()
    other_keys: dict[str, bytes] = {}
    for sig in signatures:
        if sig.name not in expected:
            continue
        kid, key = expected[sig.name]
        if sig.key_id != kid:
            other_keys.setdefault(sig.name, sig.key_id)
            continue
        if sig.name in seen:
            raise _malformed(f"{where}: two signatures by {sig.name!r}")
        try:
            if len(sig.signature) != _ED25519_SIG_SIZE:
                raise InvalidSignature
            key.verify(sig.signature, message)
        except InvalidSignature:
            raise CheckpointError(
                CheckpointProblem.BAD_SIGNATURE,
                f"{where}: the signature by {sig.name!r} does not verify",
            ) from None
        seen.add(sig.name)
    for name in sorted(set(expected) - seen):
        if name in other_keys:
            raise CheckpointError(
                CheckpointProblem.UNKNOWN_KEY,
                f"{where}: signed by {name!r} only with key ID {other_keys[name].hex()}, "
                f"not with the pinned key (key ID {expected[name][0].hex()})",
            )
        raise CheckpointError(
            CheckpointProblem.MISSING_SIGNER, f"{where}: no signature by {name!r}"
        )
    return checkpoint
