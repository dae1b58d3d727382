"""Every security parameter of fedprop's cryptography, in one place.

Changing a value here changes it everywhere: key generation, the checks that
refuse weak keys received from others, the packing codec, identity sealing and
signatures. Each constant says why it has its value. Labels and context strings
end in a version; bumping one makes old blobs and signatures unreadable on
purpose rather than silently reinterpreted.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "ALLOWED_PAILLIER_BITS",
    "CHANNEL_AD_LABEL",
    "CHANNEL_AEAD_KEY_BYTES",
    "CHANNEL_AEAD_NONCE_BYTES",
    "CHANNEL_HKDF_HASH",
    "CHANNEL_HKDF_INFO_LABEL",
    "CHANNEL_MAX_BYTES",
    "CHANNEL_MAX_MESSAGES",
    "CHANNEL_MAX_PAYLOAD_BYTES",
    "CHANNEL_PENDING_STATE_LABEL",
    "CHANNEL_SIGNATURE_LABEL",
    "CHANNEL_STATE_LABEL",
    "CHANNEL_TRANSCRIPT_LABEL",
    "DEFAULT_FRAC_BITS",
    "DEFAULT_PAILLIER_BITS",
    "IDENTITY_DIR_MODE",
    "IDENTITY_FILE_MODE",
    "JOB_STATE_DIR_MODE",
    "JOB_STATE_FILE_LABEL",
    "JOB_STATE_FILE_MODE",
    "MAX_SEALED_SECRET_BYTES",
    "MIN_PAILLIER_BITS",
    "NODE_AUTH_CURVE",
    "PRIME_TEST_ROUNDS",
    "PSI_HASH_LABEL",
    "PSI_HASH_TRIES",
    "PSI_MAX_IDS",
    "PSI_MESSAGE_LABEL",
    "PSI_STATE_LABEL",
    "RANDOMNESS_EXPONENT_BITS",
    "SEAL_AD_LABEL",
    "SEAL_AEAD_KEY_BYTES",
    "SEAL_AEAD_NONCE_BYTES",
    "SEAL_HKDF_HASH",
    "SEAL_HKDF_INFO_LABEL",
    "SEAL_SIGNATURE_LABEL",
    "SIGNATURE_LABEL",
    "SLOT_GUARD_BITS",
    "VFL_MESSAGE_LABEL",
    "VFL_MIN_BATCH_ROWS",
    "VFL_MIN_TEST_ROWS",
    "VFL_STATE_LABEL",
]

# --- Paillier ---------------------------------------------------------------------------

#: Size of the modulus n of a new job key. 2048-bit factoring is rated at 112-bit security
#: (NIST SP 800-57 Part 1 Rev. 5, table 2), acceptable for keys that live for one job.
DEFAULT_PAILLIER_BITS: Final = 2048

#: Smallest modulus fedprop generates or accepts from anyone. Below 2048 bits the factoring
#: security falls under 112 bits (1024-bit RSA-size moduli are disallowed by NIST since 2013).
MIN_PAILLIER_BITS: Final = 2048

#: The only modulus sizes fedprop generates or accepts: 2048 (112-bit security) and 3072
#: (128-bit security, NIST SP 800-57). A closed list keeps every party's policy checkable and
#: the ciphertext width predictable.
ALLOWED_PAILLIER_BITS: Final = (2048, 3072)

#: Miller-Rabin rounds (gmpy2.is_prime) when a private key is loaded from bytes: the chance that
#: a composite passes is below 4**-40 = 2**-80, and a loaded key's p and q must be prime for
#: decryption (and the security argument) to hold.
PRIME_TEST_ROUNDS: Final = 40

#: Encryption randomness (Damgard, Jurik and Nielsen, "A generalization of Paillier's
#: public-key system with applications to electronic voting", IJIS 2010, section 4.2): each
#: encrypting party picks its own ``h = -x^2 mod n`` (``x`` uniform in ``Z_n^*``), fixes
#: ``h_s = h^n mod n^2``, and encrypts with ``r^n := h_s^alpha`` for a fresh, uniform
#: ``alpha`` of this many bits (half the modulus, as in the paper and in the DJN modes of
#: Intel's Paillier library, SecretFlow HEU and ABY). Security rests on the DCR assumption
#: and on DJN's assumption that ``h_s^alpha`` with such a short ``alpha`` cannot be told
#: from a random element of the group ``h_s`` generates; the best known attack on a
#: ``k/2``-bit exponent costs about ``2^(k/4)`` steps (``2^512`` at 2048 bits), far
#: above the 112-bit level of the modulus itself.
RANDOMNESS_EXPONENT_BITS: Final = MappingProxyType(
    {bits: bits // 2 for bits in ALLOWED_PAILLIER_BITS}
)

# --- packing ----------------------------------------------------------------------------

#: Default fractional bits of the fixed-point encoding: one encoded value is off by at most
#: 2**-25 (about 3e-8), finer than float32 model weights resolve (2**-24 relative).
DEFAULT_FRAC_BITS: Final = 24

#: Extra bits on top of the width an exact sum of max_summands slots needs. A sum can never
#: carry into the next slot even without it (the width already holds the largest sum); the
#: guard bit makes a slot that holds more than that (a wrong summand count, a corrupted
#: aggregate) detectable when it is unpacked instead of silently wrapping.
SLOT_GUARD_BITS: Final = 1

# --- identities, sealing and signatures -------------------------------------------------

#: Hash of the HKDF (RFC 5869) that turns an X25519 shared secret into an AES key. SHA-256
#: gives a 256-bit pseudo-random key, the strength of X25519 (~128-bit) with margin.
SEAL_HKDF_HASH: Final = hashes.SHA256

#: HKDF ``info`` prefix for sealing keys; the job id follows it, so a key derived for one job
#: (or for another protocol using the same identity keys) is never the key of another.
SEAL_HKDF_INFO_LABEL: Final = b"fedprop-seal-key-v1:"

#: First field of the AES-GCM associated data of a sealed blob (domain separation).
SEAL_AD_LABEL: Final = b"fedprop-seal-ad-v1"

#: AES-256-GCM key size in bytes: 256-bit keys keep a margin against multi-target attacks.
SEAL_AEAD_KEY_BYTES: Final = 32

#: AES-GCM nonce size in bytes: the 96-bit nonce NIST SP 800-38D recommends. Each sealing key
#: comes from a fresh ephemeral X25519 key and encrypts one message, so a random nonce can
#: never repeat under one key.
SEAL_AEAD_NONCE_BYTES: Final = 12

#: Largest secret a sealed blob may carry (a 3072-bit Paillier private key is ~400 bytes);
#: bounds the memory a malformed blob can make a node allocate.
MAX_SEALED_SECRET_BYTES: Final = 64 * 1024

#: Prefix of every message signed with :func:`fedprop.crypto.identity.sign`. Signatures made for
#: sealed blobs use another prefix, so neither can be passed off as the other.
SIGNATURE_LABEL: Final = b"fedprop-signature-v1\x00"

#: Prefix of the message a sender signs over a sealed blob.
SEAL_SIGNATURE_LABEL: Final = b"fedprop-sealed-blob-v1\x00"

#: A node's key folder: owner only (like ~/.ssh). Private keys are stored unencrypted in it;
#: protecting the disk (full-disk encryption, an HSM, access control) is the operator's job.
IDENTITY_DIR_MODE: Final = 0o700

#: Each private key file: owner read/write only; load refuses files others can read.
IDENTITY_FILE_MODE: Final = 0o600

#: Curve of a node's Flower node-authentication key (the SuperLink admits only registered
#: keys): NIST P-384, 192-bit security, the curve Flower's own guide uses.
NODE_AUTH_CURVE: Final = ec.SECP384R1

# --- end-to-end channel between two parties ---------------------------------------------

#: Prefix of the message a party signs over its channel offer (its ephemeral X25519 key), after
#: the generic signature label: a channel offer can never pass for another signed object.
CHANNEL_SIGNATURE_LABEL: Final = b"fedprop-channel-offer-v1\x00"

#: Hash of the HKDF (RFC 5869) that turns the channel's X25519 shared secrets into its two AES
#: keys. SHA-256 gives 256-bit pseudo-random keys, the strength of X25519 (~128-bit) with margin.
CHANNEL_HKDF_HASH: Final = hashes.SHA256

#: First field of the handshake transcript, the HKDF salt (the federation, job, both names, both
#: ephemeral and both static keys follow it): domain separation from every other derivation.
CHANNEL_TRANSCRIPT_LABEL: Final = b"fedprop-channel-transcript-v1"

#: HKDF ``info`` prefix of a channel key; the sender's and recipient's names follow it, so the
#: two directions get independent keys and a message cannot be reflected back to its sender.
CHANNEL_HKDF_INFO_LABEL: Final = b"fedprop-channel-key-v1:"

#: First field of the AES-GCM associated data of a channel message (domain separation).
CHANNEL_AD_LABEL: Final = b"fedprop-channel-ad-v1"

#: AES-256-GCM key size in bytes: 256-bit keys keep a margin against multi-target attacks.
CHANNEL_AEAD_KEY_BYTES: Final = 32

#: AES-GCM nonce size in bytes: the 96-bit nonce NIST SP 800-38D recommends. Channel nonces are
#: the message counter of one direction (big-endian), never random, so none repeats under a key.
CHANNEL_AEAD_NONCE_BYTES: Final = 12

#: Messages one direction of a channel may carry; sending more is refused (open a new channel).
#: Far above any job; it is the per-key limit NIST SP 800-38D (section 8.3) sets for random
#: nonces, conservative for counter nonces (which cannot collide below 2**96).
CHANNEL_MAX_MESSAGES: Final = 2**32

#: Payload bytes one direction of a channel may carry, 256 GiB. RFC 8446 (section 5.5) lets TLS
#: 1.3 encrypt 2**24.5 full records (2**38.5 bytes) under one AES-GCM key for a confidentiality
#: margin of about 2**-57; staying under it keeps the same margin.
CHANNEL_MAX_BYTES: Final = 2**38

#: Largest payload of one channel message, 512 MiB: partial predictions for 100k rows as
#: 2048-bit Paillier ciphertexts are about 50 MB. Bounds what a malformed message can make a
#: party allocate; far under AES-GCM's limit for one message (64 GiB).
CHANNEL_MAX_PAYLOAD_BYTES: Final = 512 * 2**20

#: First frame of a saved channel (its two direction keys and counters, for a node that runs
#: every message in a fresh process): a blob of another kind or version is refused.
CHANNEL_STATE_LABEL: Final = b"fedprop-channel-state-v1"

#: First frame of a saved handshake in progress (the ephemeral private key and the offer sent).
CHANNEL_PENDING_STATE_LABEL: Final = b"fedprop-channel-pending-v1"

# --- private set intersection (entity alignment) ------------------------------------------

#: First field of the hash that maps an identifier to a Curve25519 point (the job id and the
#: identifier, each length-prefixed, and a one-byte try counter follow it): the points of one
#: job are unrelated to those of any other job or of any other use of SHA-512.
PSI_HASH_LABEL: Final = b"fedprop-psi-hash-to-curve-v1\x00"

#: First frame of every PSI message: a message of another protocol (or of another version of
#: this one) is refused instead of being parsed as a set of points.
PSI_MESSAGE_LABEL: Final = b"fedprop-psi-v1"

#: Most identifiers one party may bring or receive in one job. A blinded set of this many ids
#: (32 bytes each) is 512 MiB, the size of the largest channel payload
#: (``CHANNEL_MAX_PAYLOAD_BYTES``), so a set near it needs more than one channel message;
#: positions travel as 32-bit integers, far above it. Bounds what a malformed message can make
#: a party allocate.
PSI_MAX_IDS: Final = 2**24

#: Tries of the hash-to-curve (try-and-increment) before giving up: each try lands on
#: Curve25519 itself (not its twist) with probability about 1/2, so all of them fail with
#: probability 2**-64 per identifier, far below the chance of a hardware error.
PSI_HASH_TRIES: Final = 64

#: First frame of a saved PSI role (its secret scalars and shuffles between two messages).
PSI_STATE_LABEL: Final = b"fedprop-psi-state-v1"

# --- vertical logistic regression (hetero LR) --------------------------------------------

#: Fewest rows in one mini-batch of vertical training. Each party learns its own gradient
#: ``X^T d`` of every batch: as many linear equations in the batch's residuals (and so its
#: labels) as it has columns. A batch of a few rows gives them away (one row: ``d = g / x``);
#: a hundred rows or more, and more rows than any party's columns (checked as well), leave the
#: system far from determined. Hardy et al. (2017) and FATE both train on batches of hundreds.
VFL_MIN_BATCH_ROWS: Final = 100

#: First frame of every vertical-training message: a message of another protocol (or of
#: another version of this one) is refused instead of being parsed as this one's.
VFL_MESSAGE_LABEL: Final = b"fedprop-vfl-v1"

#: Fewest held-out rows a vertical job's guest releases metrics of (AUC, KS, lift). Metrics
#: of a handful of rows come close to telling which of them are positive; a hundred rows or
#: more keep each metric an aggregate (and the job's minimum intersection bounds it too).
VFL_MIN_TEST_ROWS: Final = 100

#: First frame of a saved vertical-training party (weights, step, masks between messages).
VFL_STATE_LABEL: Final = b"fedprop-vfl-state-v1"

# --- a node's state between the messages of one job ----------------------------------------

#: A node's folder of per-job state: owner only (like the identity folder). Between two
#: messages of a vertical job it holds the job's secrets (PSI scalars, channel keys and
#: counters, gradient masks); they are removed when the job ends.
JOB_STATE_DIR_MODE: Final = 0o700

#: Each file of a node's per-job state: owner read/write only.
JOB_STATE_FILE_MODE: Final = 0o600

#: First bytes of every per-job state file (a SHA-256 of the content follows): a truncated,
#: altered or foreign file is reported as corrupt instead of being parsed.
JOB_STATE_FILE_LABEL: Final = b"fedprop-job-state-v1\x00"
