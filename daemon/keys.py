"""The key store: named keys, loaded once per config generation, read-only for stages.

A key lives in a file (or a systemd credential); the YAML names where, never the material.
Every protection stage gets the loaded keys through ``item.keys`` (name -> :class:`Key`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from cryptography.hazmat.primitives import serialization

#: What a key is used for: RSA (OAEP wrap, CMS recipients), X25519 (HPKE), the
#: post-quantum hybrid ML-KEM-768 + X25519 (HPKE), a symmetric secret (keyed pseudonyms,
#: keyed orders).
KeyType = Literal["rsa", "x25519", "pq-hybrid", "secret"]

KEY_ID_LENGTH = 16  # hex characters of the fingerprint


@dataclass(frozen=True, repr=False)
class Key:
    """One loaded key. ``repr`` never shows material.

    - ``public``: the public key object (``RSAPublicKey``, ``X25519PublicKey``,
      ``hpke.MLKEM768X25519PublicKey``), None for a secret;
    - ``parts``: for ``pq-hybrid``, the component public keys (``MLKEM768PublicKey``,
      ``X25519PublicKey``): the HPKE hybrid object exposes neither bytes nor parts;
    - ``private``: the private key object, or None for a recipient we only encrypt to;
    - ``certificate``: the X.509 certificate (RSA; CMS recipients need one), or None;
    - ``secret``: the bytes of a symmetric secret, or None;
    - ``retired``: kept to decrypt (or reveal) older objects only (``retired: true`` in
      the config); the config check refuses it to uses that make new protected data.

    A stage finds its keys in ``item.keys`` by the names its options give
    (``item.keys[name]``), checked at config load against what :meth:`Stage.key_uses`
    declared; a decrypting stage finds the key of an older object by the key ID written
    into it: :func:`by_key_id`.
    """

    name: str
    type: KeyType
    key_id: str
    source: str  # where it came from: a path or credential:NAME (for `keys list`)
    public: Any = None
    parts: tuple = ()
    private: Any = field(default=None, compare=False)
    certificate: Any = None
    secret: bytes | None = field(default=None, compare=False)
    retired: bool = False

    @property
    def can_decrypt(self) -> bool:
        return self.private is not None

    def __repr__(self) -> str:
        return f"Key(name={self.name!r}, type={self.type!r}, key_id={self.key_id!r}, source={self.source!r})"


def fingerprint(data: bytes) -> str:
    """A stable, short key ID: SHA-256 of the public key's bytes."""
    return hashlib.sha256(data).hexdigest()[:KEY_ID_LENGTH]


def public_key_id(public) -> str:
    """Key ID of a public key: SHA-256 of its SubjectPublicKeyInfo (DER)."""
    return fingerprint(public.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo))


def hybrid_key_id(mlkem_public, x25519_public) -> str:
    """Key ID of an ML-KEM-768 + X25519 hybrid: SHA-256 of both raw public keys, in order."""
    return fingerprint(b"pq-hybrid\0" + mlkem_public.public_bytes_raw() + x25519_public.public_bytes_raw())


def secret_key_id(secret: bytes) -> str:
    """Key ID of a symmetric secret: a keyed hash that does not reveal the secret."""
    return fingerprint(hashlib.sha256(b"pacsguard key id\0" + secret).digest())


def by_key_id(keys: Mapping[str, Key], key_id: str) -> Key | None:
    """The configured key with this key ID (as written into a protected object), or None:
    how a decrypting stage finds the key of an older object after a rotation."""
    return next((k for k in keys.values() if k.key_id == key_id), None)


@dataclass(frozen=True)
class KeyUse:
    """A key a stage needs, as its options name it: checked when the config is loaded
    (the key exists, is of one of ``types``, has its private half or a certificate where
    needed), with ``field`` (the option's place, e.g. ``recipients[1]``) in the error.

    ``private=True`` marks a use that undoes protection (decrypt, reveal): it needs the
    private half (a secret always has its material), and it is the only kind of use a
    ``retired`` key may have. ``private=False`` (encrypt to, pseudonymize, sign order)
    makes new protected data."""

    field: str
    name: str
    types: frozenset
    private: bool = False
    certificate: bool = False


def loaded(keys, names) -> list:
    """The loaded keys ``names`` of a key mapping (``item.keys``), in order; a
    :class:`QuarantineError` naming the first one that is not loaded."""
    from .errors import QuarantineError

    try:
        return [keys[n] for n in names]
    except KeyError as exc:
        raise QuarantineError(f"key {exc.args[0]!r} is not loaded in the key store") from None
