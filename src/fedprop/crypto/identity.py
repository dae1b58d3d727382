"""Node identities, sealed secrets, signatures and the federation manifest.

Each participant (every node, and the coordinator) has a :class:`NodeIdentity`: an
Ed25519 signing key (it signs what it sends and releases) and an X25519 sealing key
(others seal secrets to it, such as a job's Paillier private key). Its public half,
:class:`NodePublicKeys`, goes into the federation :class:`Manifest`; each node pins the
manifest it accepted and trusts no key that is not in it.

Sealing (:func:`seal`, :func:`open_sealed`), for each blob:

- a fresh ephemeral X25519 key pair; ``shared = X25519(ephemeral, recipient)``;
- ``key = HKDF-SHA256(shared, salt = ephemeral_pub || recipient_pub,
  info = label || job_id)``, 32 bytes;
- AES-256-GCM under that key with a random 96-bit nonce; the associated data binds a
  label, the job id, the sender's and recipient's names, the ephemeral key and the
  recipient's sealing key;
- the sender signs every field of the blob (canonical encoding) with Ed25519.

What each role learns: the recipient learns the secret and that the named sender sealed
it for this job. Anyone else, including the coordinator that relays the blob, learns
only the names, the job id and the secret's length; without the recipient's X25519 key
the AES key is unknown (X25519 CDH + HKDF), and AES-GCM hides the secret and refuses any
change. :func:`open_sealed` checks the signature first, then the names and job, then
decrypts; any tampered byte, another recipient, another job or another sender raises
:class:`SealError`, never returns garbage. Sealing is not forward secret against a later
theft of the recipient's long-term key: the blob should be short-lived (one job).

Key storage (:func:`save_identity`, :func:`load_identity`): a folder with mode 0700 and
private keys in unencrypted PKCS#8 PEM files with mode 0600, plus ``public.json``.
:func:`load_identity` refuses private key files that group or others can read, as ssh
does. Encrypting the disk, or holding the keys in an HSM, is the operator's job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedprop.crypto.params import (
    IDENTITY_DIR_MODE,
    IDENTITY_FILE_MODE,
    MAX_SEALED_SECRET_BYTES,
    SEAL_AD_LABEL,
    SEAL_AEAD_KEY_BYTES,
    SEAL_AEAD_NONCE_BYTES,
    SEAL_HKDF_HASH,
    SEAL_HKDF_INFO_LABEL,
    SEAL_SIGNATURE_LABEL,
    SIGNATURE_LABEL,
)
from fedprop.errors import FedpropError

__all__ = [
    "PUBLIC_FILE",
    "SEALING_FILE",
    "SIGNING_FILE",
    "IdentityError",
    "Manifest",
    "ManifestError",
    "NodeIdentity",
    "NodePublicKeys",
    "SealError",
    "SealedBlob",
    "SignatureError",
    "check_parties",
    "generate_identity",
    "load_identity",
    "open_sealed",
    "save_identity",
    "seal",
    "sign",
    "verify",
]

#: Files of a key folder.
SIGNING_FILE: Final = "signing.pem"
SEALING_FILE: Final = "sealing.pem"
PUBLIC_FILE: Final = "public.json"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_BYTES: Final = 32  # raw Ed25519 and X25519 public keys
_SIGNATURE_BYTES: Final = 64  # Ed25519
_GCM_TAG_BYTES: Final = 16
_MAX_JOB_ID_BYTES: Final = 256
_PUBLIC_FORMAT: Final = "fedprop-node-public-keys-v1"
_MANIFEST_FORMAT: Final = "fedprop-manifest-v1"
_BLOB_MAGIC: Final = b"fedprop-sealed-blob-v1"
_FINGERPRINT_LABEL: Final = b"fedprop-node-fingerprint-v1"


class IdentityError(FedpropError):
    """A key folder that is missing, unsafe, corrupted, or would be overwritten."""


class SignatureError(FedpropError):
    """A signature that does not verify."""


class SealError(FedpropError):
    """A sealed blob that is malformed or does not open for this recipient, job and sender."""


class ManifestError(FedpropError):
    """A malformed federation manifest, or a party it does not list."""


# --- canonical encoding -------------------------------------------------------------------


def _frames(parts: Sequence[bytes]) -> bytes:
    """Length-prefixed concatenation (4-byte big-endian lengths): unambiguous and canonical."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _split(data: bytes, count: int) -> list[bytes] | None:
    """Inverse of :func:`_frames` for exactly ``count`` frames; None if malformed."""
    parts, pos = [], 0
    for _ in range(count):
        if len(data) < pos + 4:
            return None
        (length,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if len(data) < pos + length:
            return None
        parts.append(data[pos : pos + length])
        pos += length
    return parts if pos == len(data) else None


def _raw(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check_name(name: object, what: str, error: type[FedpropError]) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise error(
            f"{what} {name!r} is not a valid name (1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)"
        )
    return name


# --- public keys and identities -----------------------------------------------------------


@dataclass(frozen=True)
class NodePublicKeys:
    """A participant's public keys, as the manifest lists them: raw 32-byte keys."""

    name: str
    signing: bytes
    sealing: bytes

    def __post_init__(self) -> None:
        _check_name(self.name, "node name", ManifestError)
        for what, key in (("signing", self.signing), ("sealing", self.sealing)):
            if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
                raise ManifestError(f"{what} key of '{self.name}' must be {_KEY_BYTES} raw bytes")
        try:
            Ed25519PublicKey.from_public_bytes(self.signing)
            X25519PublicKey.from_public_bytes(self.sealing)
        except ValueError:
            raise ManifestError(f"public keys of '{self.name}' are not valid keys") from None

    def signing_key(self) -> Ed25519PublicKey:
        """The Ed25519 key that verifies this participant's signatures."""
        return Ed25519PublicKey.from_public_bytes(self.signing)

    def sealing_key(self) -> X25519PublicKey:
        """The X25519 key secrets are sealed to."""
        return X25519PublicKey.from_public_bytes(self.sealing)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the name and both keys; compare it out of band before pinning."""
        data = _frames([_FINGERPRINT_LABEL, self.name.encode(), self.signing, self.sealing])
        return hashlib.sha256(data).hexdigest()

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form: base64 keys and the fingerprint (checked when read back)."""
        return {
            "name": self.name,
            "signing": base64.b64encode(self.signing).decode("ascii"),
            "sealing": base64.b64encode(self.sealing).decode("ascii"),
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, entry: object) -> NodePublicKeys:
        """Parse :meth:`to_dict` output; :class:`ManifestError` naming the problem."""
        if not isinstance(entry, Mapping):
            raise ManifestError("a node entry must be a JSON object")
        required, optional = {"name", "signing", "sealing"}, {"fingerprint"}
        keys = set(entry)
        if not required <= keys or not keys <= required | optional:
            raise ManifestError(
                f"a node entry needs exactly name, signing, sealing (and optionally "
                f"fingerprint); got {', '.join(sorted(map(str, keys)))}"
            )
        name = _check_name(entry["name"], "node name", ManifestError)
        decoded = []
        for what in ("signing", "sealing"):
            text = entry[what]
            try:
                if not isinstance(text, str):
                    raise TypeError
                decoded.append(base64.b64decode(text, validate=True))
            except (binascii.Error, TypeError, ValueError):
                raise ManifestError(f"{what} key of '{name}' is not base64") from None
        keys_ = cls(name, decoded[0], decoded[1])
        if "fingerprint" in entry and entry["fingerprint"] != keys_.fingerprint():
            raise ManifestError(f"fingerprint of '{name}' does not match its keys")
        return keys_

    def to_json(self) -> str:
        """The ``public.json`` a node hands to whoever assembles the manifest."""
        return json.dumps({"format": _PUBLIC_FORMAT, **self.to_dict()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> NodePublicKeys:
        """Parse :meth:`to_json` output; :class:`ManifestError` naming the problem."""
        doc = _load_json(text, "public keys")
        if not isinstance(doc, dict) or doc.pop("format", None) != _PUBLIC_FORMAT:
            raise ManifestError(f"not a fedprop public-keys file (format {_PUBLIC_FORMAT})")
        return cls.from_dict(doc)


@dataclass(frozen=True, eq=False)
class NodeIdentity:
    """A participant's private keys. Its repr shows only the name."""

    name: str
    signing: Ed25519PrivateKey = field(repr=False)
    sealing: X25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "node name", IdentityError)
        if not isinstance(self.signing, Ed25519PrivateKey):
            raise TypeError("signing must be an Ed25519PrivateKey")
        if not isinstance(self.sealing, X25519PrivateKey):
            raise TypeError("sealing must be an X25519PrivateKey")

    @property
    def public(self) -> NodePublicKeys:
        """The public half, for the manifest."""
        return NodePublicKeys(
            self.name, _raw(self.signing.public_key()), _raw(self.sealing.public_key())
        )


def generate_identity(name: str) -> NodeIdentity:
    """Fresh Ed25519 and X25519 keys for the participant ``name``."""
    _check_name(name, "node name", IdentityError)
    return NodeIdentity(name, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())


# --- key folders --------------------------------------------------------------------------


def _pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # exact mode, whatever the umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_identity(identity: NodeIdentity, folder: Path) -> None:
    """Write ``identity`` to a new key folder, atomically; never overwrite.

    The folder gets mode 0700; ``signing.pem`` and ``sealing.pem`` (PKCS#8 PEM,
    unencrypted) mode 0600; ``public.json`` (the public keys and fingerprint) mode 0600
    as well, it can be copied freely. The files are written to a temporary folder beside
    ``folder`` and renamed into place, so a crash leaves either no identity or a whole
    one. :class:`IdentityError` if ``folder`` exists and is not empty.
    """
    if not isinstance(identity, NodeIdentity):
        raise TypeError("identity must be a NodeIdentity")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "holds an identity" if (folder / SIGNING_FILE).exists() else "is not empty"
        raise IdentityError(f"{folder}: {what}; refusing to overwrite it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.chmod(staging, IDENTITY_DIR_MODE)
        _write_new(staging / SIGNING_FILE, _pem(identity.signing), IDENTITY_FILE_MODE)
        _write_new(staging / SEALING_FILE, _pem(identity.sealing), IDENTITY_FILE_MODE)
        _write_new(staging / PUBLIC_FILE, identity.public.to_json().encode(), IDENTITY_FILE_MODE)
        _fsync_dir(staging)
        try:
            # rename(2) replaces an empty directory and refuses a non-empty one.
            staging.rename(folder)
        except OSError as exc:
            raise IdentityError(f"{folder}: cannot create the key folder: {exc}") from None
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_mode(path: Path, *, folder: bool, forbidden: int) -> None:
    """Refuse a missing path, the wrong kind, or permission bits in ``forbidden``."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"{path}: missing") from None
    if stat.S_ISDIR(info.st_mode) != folder:
        raise IdentityError(f"{path}: expected a {'folder' if folder else 'file'}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & forbidden:
        fix = f"{IDENTITY_DIR_MODE:o}" if folder else f"{IDENTITY_FILE_MODE:o}"
        raise IdentityError(
            f"{path}: permissions {mode:04o} are too open (group or others have access); "
            f"keys must be accessible by their owner only: run chmod {fix} '{path}'"
        )


def load_identity(folder: Path) -> NodeIdentity:
    """Read a key folder written by :func:`save_identity`.

    :class:`IdentityError` naming the problem if the folder or a file is missing, if a
    private key file can be read or written by group or others (or the folder written by
    them), if a key does not parse, or if ``public.json`` does not match the keys.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IdentityError(f"{folder}: no key folder (create one with `fedprop node keygen`)")
    _check_mode(folder, folder=True, forbidden=0o022)
    keys: list[object] = []
    for name in (SIGNING_FILE, SEALING_FILE):
        path = folder / name
        _check_mode(path, folder=False, forbidden=0o077)
        try:
            keys.append(serialization.load_pem_private_key(path.read_bytes(), password=None))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise IdentityError(f"{path}: not a valid unencrypted PEM private key") from None
    signing, sealing = keys
    if not isinstance(signing, Ed25519PrivateKey):
        raise IdentityError(f"{folder / SIGNING_FILE}: not an Ed25519 private key")
    if not isinstance(sealing, X25519PrivateKey):
        raise IdentityError(f"{folder / SEALING_FILE}: not an X25519 private key")
    public_path = folder / PUBLIC_FILE
    _check_mode(public_path, folder=False, forbidden=0o022)
    try:
        public = NodePublicKeys.from_json(public_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ManifestError) as exc:
        raise IdentityError(f"{public_path}: unreadable: {exc}") from None
    identity = NodeIdentity(public.name, signing, sealing)
    if identity.public != public:
        raise IdentityError(f"{public_path}: does not match the private keys in {folder}")
    return identity


# --- signatures ---------------------------------------------------------------------------


def sign(identity: NodeIdentity, message: bytes) -> bytes:
    """Ed25519 signature of ``message`` (domain-separated: the key signs a fixed label
    followed by ``message``). Verify with :func:`verify`."""
    return identity.signing.sign(SIGNATURE_LABEL + bytes(message))


def verify(public: NodePublicKeys, message: bytes, signature: bytes) -> None:
    """Return if ``signature`` is ``public``'s over ``message``; else :class:`SignatureError`."""
    try:
        public.signing_key().verify(bytes(signature), SIGNATURE_LABEL + bytes(message))
    except (InvalidSignature, TypeError, ValueError):
        raise SignatureError(f"signature of '{public.name}' does not verify") from None


# --- sealing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedBlob:
    """A secret sealed by ``sender`` to ``recipient`` for one job (see the module docs)."""

    job_id: str
    sender: str
    recipient: str
    ephemeral: bytes
    nonce: bytes
    ciphertext: bytes
    signature: bytes

    def _fields(self) -> list[bytes]:
        return [
            _BLOB_MAGIC,
            self.job_id.encode(),
            self.sender.encode(),
            self.recipient.encode(),
            self.ephemeral,
            self.nonce,
            self.ciphertext,
        ]

    def _signed_message(self) -> bytes:
        return SEAL_SIGNATURE_LABEL + _frames(self._fields())

    def to_bytes(self) -> bytes:
        """Canonical bytes: every field, length-prefixed, then the signature."""
        return _frames([*self._fields(), self.signature])

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedBlob:
        """Parse :meth:`to_bytes` output; :class:`SealError` if malformed."""
        frames = _split(bytes(data), 8)
        if frames is None or frames[0] != _BLOB_MAGIC:
            raise SealError("not a fedprop sealed blob (malformed or truncated)")
        try:
            job_id, sender, recipient = (f.decode("utf-8", errors="strict") for f in frames[1:4])
        except UnicodeDecodeError:
            raise SealError("sealed blob has malformed names") from None
        ephemeral, nonce, ciphertext, signature = frames[4:]
        if (
            len(ephemeral) != _KEY_BYTES
            or len(nonce) != SEAL_AEAD_NONCE_BYTES
            or len(signature) != _SIGNATURE_BYTES
            or not _GCM_TAG_BYTES <= len(ciphertext) <= MAX_SEALED_SECRET_BYTES + _GCM_TAG_BYTES
        ):
            raise SealError("sealed blob has fields of the wrong size")
        return cls(job_id, sender, recipient, ephemeral, nonce, ciphertext, signature)


def _check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not job_id or len(job_id.encode()) > _MAX_JOB_ID_BYTES:
        raise SealError(f"job id must be a non-empty string of at most {_MAX_JOB_ID_BYTES} bytes")
    return job_id


def _associated_data(
    job_id: str, sender: str, recipient: str, ephemeral: bytes, recipient_key: bytes
) -> bytes:
    fields = [SEAL_AD_LABEL, job_id.encode(), sender.encode(), recipient.encode()]
    return _frames([*fields, ephemeral, recipient_key])


def _seal_key(shared: bytes, ephemeral: bytes, recipient_key: bytes, job_id: str) -> bytes:
    return HKDF(
        algorithm=SEAL_HKDF_HASH(),
        length=SEAL_AEAD_KEY_BYTES,
        salt=ephemeral + recipient_key,
        info=SEAL_HKDF_INFO_LABEL + job_id.encode(),
    ).derive(shared)


def seal(
    secret: bytes, recipient: NodePublicKeys, *, job_id: str, sender: NodeIdentity
) -> SealedBlob:
    """Seal ``secret`` so that only ``recipient`` can open it, for ``job_id``, signed by
    ``sender``. A fresh ephemeral key and nonce for every call."""
    if not isinstance(secret, bytes | bytearray) or len(secret) > MAX_SEALED_SECRET_BYTES:
        raise SealError(f"a sealed secret must be bytes, at most {MAX_SEALED_SECRET_BYTES}")
    if not isinstance(recipient, NodePublicKeys) or not isinstance(sender, NodeIdentity):
        raise TypeError("recipient must be NodePublicKeys and sender a NodeIdentity")
    job_id = _check_job_id(job_id)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = _raw(ephemeral.public_key())
    try:
        shared = ephemeral.exchange(recipient.sealing_key())
    except ValueError:
        raise SealError(f"sealing key of '{recipient.name}' is unusable") from None
    key = _seal_key(shared, ephemeral_pub, recipient.sealing, job_id)
    nonce = os.urandom(SEAL_AEAD_NONCE_BYTES)
    ad = _associated_data(job_id, sender.name, recipient.name, ephemeral_pub, recipient.sealing)
    ciphertext = AESGCM(key).encrypt(nonce, bytes(secret), ad)
    unsigned = SealedBlob(
        job_id, sender.name, recipient.name, ephemeral_pub, nonce, ciphertext, b""
    )
    signature = sender.signing.sign(unsigned._signed_message())
    return SealedBlob(
        job_id, sender.name, recipient.name, ephemeral_pub, nonce, ciphertext, signature
    )


def open_sealed(
    blob: SealedBlob, recipient: NodeIdentity, *, job_id: str, sender: NodePublicKeys
) -> bytes:
    """The secret in ``blob``, if ``sender`` sealed it to ``recipient`` for ``job_id``.

    Checks in order: ``sender``'s signature over the whole blob, the names and job id,
    then AES-GCM decryption. Anything else raises :class:`SealError`.
    """
    if not isinstance(blob, SealedBlob):
        raise TypeError("blob must be a SealedBlob (parse bytes with SealedBlob.from_bytes)")
    if not isinstance(recipient, NodeIdentity) or not isinstance(sender, NodePublicKeys):
        raise TypeError("recipient must be a NodeIdentity and sender NodePublicKeys")
    job_id = _check_job_id(job_id)
    try:
        sender.signing_key().verify(blob.signature, blob._signed_message())
    except InvalidSignature:
        raise SealError(
            f"sealed blob is not signed by '{sender.name}' (it names sender '{blob.sender}'); "
            "it was tampered with or sealed by someone else"
        ) from None
    if blob.sender != sender.name:
        raise SealError(f"blob was sealed by '{blob.sender}', expected '{sender.name}'")
    if blob.recipient != recipient.name:
        raise SealError(f"blob is sealed to '{blob.recipient}', not to '{recipient.name}'")
    if blob.job_id != job_id:
        raise SealError(f"blob is for job '{blob.job_id}', not '{job_id}'")
    recipient_key = recipient.public.sealing
    try:
        shared = recipient.sealing.exchange(X25519PublicKey.from_public_bytes(blob.ephemeral))
        key = _seal_key(shared, blob.ephemeral, recipient_key, job_id)
        ad = _associated_data(job_id, blob.sender, blob.recipient, blob.ephemeral, recipient_key)
        return AESGCM(key).decrypt(blob.nonce, blob.ciphertext, ad)
    except (InvalidTag, ValueError):
        raise SealError(
            f"sealed blob does not open with the key of '{recipient.name}' "
            "(sealed to another key, or corrupted)"
        ) from None


# --- the federation manifest --------------------------------------------------------------


def _load_json(text: str, what: str) -> object:
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError(f"{what} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class Manifest:
    """The federation's participants and their public keys, as each node pins them.

    Node names are unique, and no two entries share a key (a copied entry would let one
    participant speak for another); the coordinator, when listed, is not also a node.
    """

    federation: str
    nodes: tuple[NodePublicKeys, ...]
    coordinator: NodePublicKeys | None = None

    def __post_init__(self) -> None:
        _check_name(self.federation, "federation name", ManifestError)
        object.__setattr__(self, "nodes", tuple(self.nodes))
        entries = self.participants
        if any(not isinstance(e, NodePublicKeys) for e in entries):
            raise ManifestError("manifest entries must be NodePublicKeys")
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ManifestError(f"manifest lists a name more than once: {', '.join(twice)}")
        keys = [k for e in entries for k in (e.signing, e.sealing)]
        if len(set(keys)) != len(keys):
            raise ManifestError("two manifest entries share a public key")

    @property
    def participants(self) -> tuple[NodePublicKeys, ...]:
        """Every node, then the coordinator where the manifest lists one."""
        return (*self.nodes, *((self.coordinator,) if self.coordinator is not None else ()))

    def node(self, name: str) -> NodePublicKeys:
        """The public keys of node ``name``; :class:`ManifestError` if it is not listed."""
        for entry in self.nodes:
            if entry.name == name:
                return entry
        raise ManifestError(f"'{name}' is not a node of federation '{self.federation}'")

    def _document(self) -> dict[str, object]:
        return {
            "format": _MANIFEST_FORMAT,
            "federation": self.federation,
            "nodes": [n.to_dict() for n in self.nodes],
            "coordinator": None if self.coordinator is None else self.coordinator.to_dict(),
        }

    def to_json(self) -> str:
        """Readable JSON (sorted keys, two-space indent, final newline)."""
        return json.dumps(self._document(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse :meth:`to_json` output; :class:`ManifestError` naming the problem."""
        doc = _load_json(text, "manifest")
        expected = {"format", "federation", "nodes", "coordinator"}
        if not isinstance(doc, dict) or set(doc) != expected:
            raise ManifestError(f"a manifest needs exactly: {', '.join(sorted(expected))}")
        if doc["format"] != _MANIFEST_FORMAT:
            raise ManifestError(f"unsupported manifest format {doc['format']!r}")
        if not isinstance(doc["nodes"], list):
            raise ManifestError("manifest 'nodes' must be a list")
        coordinator = doc["coordinator"]
        return cls(
            _check_name(doc["federation"], "federation name", ManifestError),
            tuple(NodePublicKeys.from_dict(n) for n in doc["nodes"]),
            None if coordinator is None else NodePublicKeys.from_dict(coordinator),
        )

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical compact JSON: the value parties compare."""
        canonical = json.dumps(self._document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_parties(manifest: Manifest, parties: Sequence[str]) -> None:
    """Refuse (:class:`ManifestError`) a party list that is empty, repeats a party, or
    names a party that ``manifest`` does not list as a node."""
    if isinstance(parties, str):
        raise TypeError("parties must be a sequence of names, not one string")
    if not parties:
        raise ManifestError("a job needs at least one party")
    repeated = sorted({p for p in parties if list(parties).count(p) > 1})
    if repeated:
        raise ManifestError(f"parties listed more than once: {', '.join(repeated)}")
    known = {n.name for n in manifest.nodes}
    unknown = [p for p in parties if p not in known]
    if unknown:
        raise ManifestError(
            f"not in the pinned manifest of federation '{manifest.federation}': "
            + ", ".join(repr(p) for p in unknown)
        )
