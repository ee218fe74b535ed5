"""Data keys: a fresh 256-bit AES key per object, wrapped once per recipient.

Wrapping by recipient type (any one recipient's private key unwraps):

- ``rsa``: RSA-OAEP with SHA-256 (MGF1-SHA-256), the context as the OAEP label; RSA-3072
  or larger, so a wrap is 384 bytes or more;
- ``x25519``: HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
  AES-256-GCM, the context as HPKE ``info``: 80 bytes;
- ``pq-hybrid``: HPKE with the ML-KEM-768 + X25519 hybrid KEM, same KDF and AEAD:
  1,168 bytes.

The context names the scheme (``PACSGUARD PIXELS 1``...), so a wrapped key taken from one
kind of envelope does not open in another. Reasons name key IDs, never key material.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import padding

from pacsguard.daemon.errors import QuarantineError

DATA_KEY_BYTES = 32
MIN_RSA_BITS = 3072

#: recipient key type -> the wrapping method's name, as recorded beside each wrapped key
METHODS = {
    "rsa": "RSA-OAEP-SHA256",
    "x25519": "HPKE-X25519-SHA256-AES256GCM",
    "pq-hybrid": "HPKE-MLKEM768X25519-SHA256-AES256GCM",
}
WRAP_TYPES = frozenset(METHODS)

_SUITES = {
    "x25519": hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    "pq-hybrid": hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}


@dataclass(frozen=True)
class Wrapped:
    """One recipient's copy of the data key: its key ID, the method, the wrapped bytes."""

    key_id: str
    method: str
    data: bytes


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def _oaep(context: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=context)


def check_rsa_size(key) -> None:
    bits = key.public.key_size
    if bits < MIN_RSA_BITS:
        raise QuarantineError(f"recipient key ID {key.key_id} is RSA-{bits}; RSA-{MIN_RSA_BITS} or larger is required")


def wrap(data_key: bytes, key, context: bytes) -> Wrapped:
    """Wrap ``data_key`` for the recipient ``key`` (a :class:`pacsguard.daemon.keys.Key`)."""
    if key.type not in METHODS or key.public is None:
        raise QuarantineError(f"recipient key ID {key.key_id} ({key.type}) cannot receive a wrapped data key")
    if key.type == "rsa":
        check_rsa_size(key)
        data = key.public.encrypt(data_key, _oaep(context))
    else:
        data = _SUITES[key.type].encrypt(data_key, key.public, context)
    return Wrapped(key.key_id, METHODS[key.type], data)


def wrap_all(data_key: bytes, recipients, context: bytes) -> list[Wrapped]:
    if not recipients:
        raise QuarantineError("no recipients to encrypt for")
    return [wrap(data_key, key, context) for key in recipients]


def unwrap(wrapped: list[Wrapped], keys, context: bytes) -> bytes:
    """The data key, from the first of ``wrapped`` that one of ``keys`` (with their private
    halves) opens; QuarantineError naming key IDs when none is for these keys or none opens."""
    by_id = {k.key_id: k for k in keys if k.private is not None}
    recipients = ", ".join(w.key_id for w in wrapped) or "none"
    mine = [w for w in wrapped if w.key_id in by_id]
    if not mine:
        ours = ", ".join(sorted(by_id)) or "none with a private key"
        raise QuarantineError(f"not encrypted for key ID {ours} (recipients: {recipients})")
    for w in mine:
        key = by_id[w.key_id]
        if w.method != METHODS.get(key.type):
            continue
        try:
            if key.type == "rsa":
                data_key = key.private.decrypt(w.data, _oaep(context))
            else:
                data_key = _SUITES[key.type].decrypt(w.data, key.private, context)
        except Exception:  # InvalidTag, ValueError (OAEP decoding): the same reason for all
            continue
        if len(data_key) == DATA_KEY_BYTES:
            return data_key
    ids = ", ".join(w.key_id for w in mine)
    raise QuarantineError(f"the wrapped data key for key ID {ids} does not open with that key "
                          "(changed after encryption, or another key with the same ID)")
