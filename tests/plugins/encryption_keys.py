"""Keys for the encryption tests, built with ``cryptography`` as the key store would load
them (:class:`pacsguard.daemon.keys.Key`, key IDs from its fingerprint functions).

Generated once per test session (RSA-3072 takes a while); written to PEM files where a
test needs them on disk (``openssl cms``, ``pacsguard decrypt --key-file``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, rsa, x25519
from cryptography.x509.oid import NameOID

from pacsguard.daemon.keys import Key, hybrid_key_id, public_key_id

TYPES = ("rsa", "x25519", "pq-hybrid")
_HYBRID_PARTS: dict = {}  # key ID -> (ML-KEM-768 private key, X25519 private key)


def _certificate(private, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
            .sign(private, hashes.SHA256()))


@lru_cache(maxsize=None)
def make_key(kind: str, name: str | None = None, bits: int = 3072) -> Key:
    """A fresh key of ``kind`` with its private half (one per kind, name and size)."""
    name = name or f"test-{kind}"
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return Key(name, "rsa", public_key_id(private.public_key()), f"/test/{name}.pem",
                   public=private.public_key(), private=private, certificate=_certificate(private, name))
    if kind == "x25519":
        private = x25519.X25519PrivateKey.generate()
        return Key(name, "x25519", public_key_id(private.public_key()), f"/test/{name}.pem",
                   public=private.public_key(), private=private)
    if kind == "pq-hybrid":
        pq, classic = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        parts = (pq.public_key(), classic.public_key())
        _HYBRID_PARTS[hybrid_key_id(*parts)] = (pq, classic)  # the hybrid object hides them
        return Key(name, "pq-hybrid", hybrid_key_id(*parts), f"/test/{name}",
                   public=hpke.MLKEM768X25519PublicKey(*parts), parts=parts,
                   private=hpke.MLKEM768X25519PrivateKey(pq, classic))
    raise ValueError(kind)


def public_only(key: Key) -> Key:
    """The same key as a sender holds it: no private half."""
    return dataclasses.replace(key, private=None)


def pem_files(key: Key, folder: Path) -> list[Path]:
    """The private key as PKCS#8 PEM (a hybrid as its two parts) and, for RSA, the
    certificate: what ``pacsguard decrypt --key-file`` and ``openssl cms`` read."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    privates = list(_HYBRID_PARTS[key.key_id]) if key.type == "pq-hybrid" else [key.private]
    for i, private in enumerate(privates):
        path = folder / f"{key.name}.{i}.key.pem"
        path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        out.append(path)
    if key.certificate is not None:
        path = folder / f"{key.name}.cert.pem"
        path.write_bytes(key.certificate.public_bytes(serialization.Encoding.PEM))
        out.append(path)
    return out

