"""fedprop's cryptography: packed Paillier sums, node identities, sealing, the manifest.

- :mod:`fedprop.crypto.params`: every security parameter, in one place.
- :mod:`fedprop.crypto.packing`: the fixed-point packing codec (no encryption).
- :mod:`fedprop.crypto.paillier`: job key pairs, encryption, the homomorphic sum,
  decryption and ciphertext serialization. The coordinator holds only the public key:
  it adds ciphertexts and learns nothing of the plaintexts.
- :mod:`fedprop.crypto.identity`: Ed25519/X25519 node identities, sealing a secret to
  one participant for one job, signatures, and the federation manifest.

Primitives come from python-paillier/gmpy2 and from ``cryptography``; nothing here
invents one. Each module's docstring states what each role learns.
"""

from fedprop.crypto.identity import (
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
from fedprop.crypto.packing import PackingError, PackingSpec, clipped_fraction, pack, unpack_sum
from fedprop.crypto.paillier import (
    CiphertextError,
    KeyFormatError,
    KeySizeError,
    PaillierError,
    PlaintextRangeError,
    PrivateKey,
    PublicKey,
    add_ciphertexts,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    decrypt,
    decrypt_many,
    encrypt,
    encrypt_many,
    generate_keypair,
)

__all__ = [
    "CiphertextError",
    "IdentityError",
    "KeyFormatError",
    "KeySizeError",
    "Manifest",
    "ManifestError",
    "NodeIdentity",
    "NodePublicKeys",
    "PackingError",
    "PackingSpec",
    "PaillierError",
    "PlaintextRangeError",
    "PrivateKey",
    "PublicKey",
    "SealError",
    "SealedBlob",
    "SignatureError",
    "add_ciphertexts",
    "check_parties",
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "clipped_fraction",
    "decrypt",
    "decrypt_many",
    "encrypt",
    "encrypt_many",
    "generate_identity",
    "generate_keypair",
    "load_identity",
    "open_sealed",
    "pack",
    "save_identity",
    "seal",
    "sign",
    "unpack_sum",
    "verify",
]
