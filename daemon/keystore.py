"""Loading the configured keys (``keys:`` in the YAML) and checking the stages' uses of them.

The YAML names where each key lives, never the key: a value that looks like key material
is refused. Every file is read once per config generation, when the config is loaded, and
checked then (exists, parses, owner-only permissions for private keys and secrets), so a
bad key is a config error with its place, never a failure on the first image.

The type of a key is read from its file: one RSA or X25519 private key (PEM, PKCS#8 or
PKCS#1), or for ``pq-hybrid`` the ML-KEM-768 private key then the X25519 private key, two
PEM blocks in one file; the public side alike (``PUBLIC KEY`` blocks), or an X.509
certificate. A secret file holds hex text (what ``pacsguard keys generate`` writes) or raw
bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, rsa, x25519
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .credentials import SecretFileError, SecretPath, check_owner_only, is_credential, read_password, resolve
from .keys import Key, KeyUse, hybrid_key_id, public_key_id, secret_key_id

MIN_RSA_BITS = 3072
MIN_SECRET_BYTES = 32

_INLINE = ("looks like key material written inline: the config names a file, never the key itself;"
           " write it to a file (chmod 600) and give its path (or credential:NAME)")
_MATERIAL_FIELDS = {"key", "material", "pem", "der", "data", "value", "base64", "hex", "bytes",
                    "private_key", "public_key", "secret_key", "password"}
_ENCODED = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
_HEX = re.compile(r"[0-9a-fA-F]{32,}")


def looks_inline(value: str) -> bool:
    """True for a value that is key material rather than a file name: PEM, several lines,
    or (naming no existing file) a run of 32 or more hex digits, or of base64 (mixed case
    and digits, or with ``+`` or ``=``), alone or as a part between slashes."""
    if "-----BEGIN" in value or "\n" in value:
        return True
    if is_credential(value) or not _ENCODED.search(value) or Path(value).exists():
        return False
    if _ENCODED.fullmatch(value) and ("+" in value or value.endswith("=")):
        return True
    for part in value.split("/"):
        if len(part) >= 32 and (_HEX.fullmatch(part) or (
                _ENCODED.fullmatch(part) and any(c.isdigit() for c in part)
                and any(c.islower() for c in part) and any(c.isupper() for c in part))):
            return True
    return False


class KeyConfig(BaseModel):
    """Where one key lives: exactly one of ``private``, ``public`` or ``secret``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    private: Optional[SecretPath] = Field(
        None, description="private key file (PEM; owner-only: chmod 600) or credential:NAME: RSA (3072 bits or more),"
                          " X25519, or pq-hybrid (the ML-KEM-768 key, then the X25519 key, in one file); to decrypt,"
                          " and to encrypt to")
    password_file: Optional[SecretPath] = Field(
        None, description="file whose first line is the password of an encrypted private key (never inline)")
    certificate: Optional[SecretPath] = Field(
        None, description="X.509 certificate (PEM) of the private key (RSA: CMS recipients are named by it)")
    public: Optional[SecretPath] = Field(
        None, description="public key or X.509 certificate (PEM) of a recipient we only encrypt to")
    secret: Optional[SecretPath] = Field(
        None, description="symmetric secret file (64 hex digits or raw bytes, 32 bytes or more; owner-only: chmod 600)"
                          " or credential:NAME: keyed pseudonyms, keyed orders")
    retired: bool = Field(
        False, description="kept to decrypt (or reveal) older objects only: stages may not use it for new ones"
                           " (a rotated key; RSA keys under 3072 bits)")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data):
        if isinstance(data, str) and looks_inline(data):
            raise ValueError(_INLINE)
        if not isinstance(data, dict):
            raise ValueError("expected a mapping: {private: FILE}, {public: FILE} or {secret: FILE}")
        for name in data:
            if name in _MATERIAL_FIELDS:
                raise ValueError(f"{name!r}: keys are never written in the config; put the key in a file and name"
                                 " the file with private:, public: or secret: (with password_file: for a password)")
        return data

    @field_validator("private", "password_file", "certificate", "public", "secret", mode="before")
    @classmethod
    def _not_inline(cls, value):
        if isinstance(value, str) and looks_inline(value):
            raise ValueError(_INLINE)
        return value

    @model_validator(mode="after")
    def _one_kind(self):
        given = [f for f in ("private", "public", "secret") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of private, public (a certificate or public key) or secret"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.private is None and (self.password_file is not None or self.certificate is not None):
            raise ValueError("password_file and certificate go with private (a recipient's certificate: public)")
        if self.retired and self.public is not None:
            raise ValueError("retired keys are kept to decrypt: give the private key, not only the public one")
        return self


class KeyFileError(Exception):
    """A configured key's file cannot be used: ``field`` (private, public, ...) says which."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


# --- reading files ---------------------------------------------------------------------

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), m.group(0)) for m in _PEM.finditer(data)]


def _encrypted(label: str, block: bytes) -> bool:
    return label.startswith("ENCRYPTED") or b"Proc-Type: 4,ENCRYPTED" in block  # PKCS#8, or OpenSSL's PKCS#1


def _read(field: str, path: Path, *, secret: bool) -> bytes:
    try:
        if secret:
            check_owner_only(path)
        real = resolve(path)
        return real.read_bytes()
    except SecretFileError as exc:
        raise KeyFileError(field, str(exc)) from None
    except FileNotFoundError:
        raise KeyFileError(field, f"file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(field, f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _private_keys(field: str, path: Path, data: bytes, password: bytes | None) -> list:
    blocks = _pem_blocks(data)
    if not blocks:
        raise KeyFileError(field, f"{path} is not a PEM private key file")
    others = [label for label, _ in blocks if not label.endswith("PRIVATE KEY")]
    if others:
        raise KeyFileError(field, f"{path} holds {others[0]}, not only private keys"
                                  " (a certificate goes in certificate:)")
    out = []
    for label, block in blocks:
        encrypted = _encrypted(label, block)
        try:
            out.append(serialization.load_pem_private_key(block, password if encrypted else None))
        except TypeError:
            raise KeyFileError(field, f"{path}: the key is encrypted; set password_file") from None
        except UnsupportedAlgorithm:
            raise KeyFileError(field, f"{path}: unsupported key algorithm") from None
        except ValueError:
            why = "wrong password (password_file)" if encrypted else "invalid or unsupported private key data"
            raise KeyFileError(field, f"{path}: {why}") from None
    if password is not None and not any(_encrypted(label, block) for label, block in blocks):
        raise KeyFileError("password_file", f"the key in {path} is not encrypted: remove password_file")
    return out


def _classify(field: str, path: Path, objs: list, private: bool) -> tuple[str, Any]:
    """(type, object) of the key(s) in one file."""
    if private:
        R, X, M = rsa.RSAPrivateKey, x25519.X25519PrivateKey, mlkem.MLKEM768PrivateKey
    else:
        R, X, M = rsa.RSAPublicKey, x25519.X25519PublicKey, mlkem.MLKEM768PublicKey
    if len(objs) == 1 and isinstance(objs[0], R):
        return "rsa", objs[0]
    if len(objs) == 1 and isinstance(objs[0], X):
        return "x25519", objs[0]
    if len(objs) == 2 and isinstance(objs[0], M) and isinstance(objs[1], X):
        return "pq-hybrid", tuple(objs)
    if any(isinstance(o, M) for o in objs):
        raise KeyFileError(field, f"{path}: a pq-hybrid key file holds the ML-KEM-768 key, then the X25519 key")
    kinds = ", ".join(type(o).__name__.removeprefix("_") for o in objs)
    raise KeyFileError(field, f"{path} holds {kinds}: keys are rsa, x25519 or pq-hybrid (ML-KEM-768 + X25519)")


def _public_side(field: str, path: Path, data: bytes) -> tuple[list, Any]:
    """(public key objects, certificate or None) of a public key or certificate file."""
    blocks = _pem_blocks(data)
    if not blocks:
        raise KeyFileError(field, f"{path} is not a PEM public key or certificate file")
    if any(label.endswith("PRIVATE KEY") for label, _ in blocks):
        raise KeyFileError(field, f"{path} holds a private key: name it with private: (and chmod 600 it)")
    try:
        if blocks[0][0] == "CERTIFICATE":  # then any intermediates: the first one is the recipient's
            cert = x509.load_pem_x509_certificate(blocks[0][1])
            return [cert.public_key()], cert
        if any(label != "PUBLIC KEY" and label != "RSA PUBLIC KEY" for label, _ in blocks):
            raise KeyFileError(field, f"{path}: expected one certificate, or PUBLIC KEY blocks")
        return [serialization.load_pem_public_key(b) for _, b in blocks], None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(field, f"{path}: invalid or unsupported public key or certificate data") from None


def _spki(public) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _secret_bytes(path: Path, data: bytes, retired: bool) -> bytes:
    if data.lstrip().startswith(b"-----BEGIN"):
        raise KeyFileError("secret", f"{path} is a PEM file; secret: takes a file of random bytes"
                                     " (pacsguard keys generate NAME --type secret)")
    text = data.strip()
    if re.fullmatch(rb"(?:[0-9a-fA-F]{2})+", text):
        data = bytes.fromhex(text.decode())
    if len(data) < (1 if retired else MIN_SECRET_BYTES):
        raise KeyFileError("secret", f"{path}: a secret needs {MIN_SECRET_BYTES} bytes or more (got {len(data)})")
    return data


# --- loading ---------------------------------------------------------------------------


def load_key(name: str, cfg: KeyConfig) -> Key:
    """Read and check the files of one configured key; raises ``KeyFileError(field, message)``."""
    if cfg.secret is not None:
        secret = _secret_bytes(cfg.secret, _read("secret", cfg.secret, secret=True), cfg.retired)
        return Key(name, "secret", secret_key_id(secret), str(cfg.secret), secret=secret, retired=cfg.retired)
    certificate = None
    if cfg.private is not None:
        field, source = "private", cfg.private
        password = None
        if cfg.password_file is not None:
            try:
                check_owner_only(cfg.password_file)
                password = read_password(cfg.password_file)
            except SecretFileError as exc:
                raise KeyFileError("password_file", str(exc)) from None
        data = _read(field, source, secret=True)
        kind, private = _classify(field, source, _private_keys(field, source, data, password), True)
        public = tuple(k.public_key() for k in private) if kind == "pq-hybrid" else private.public_key()
        if cfg.certificate is not None:
            if kind == "pq-hybrid":
                raise KeyFileError("certificate", "pq-hybrid keys have no X.509 certificate")
            pubs, certificate = _public_side("certificate", cfg.certificate,
                                             _read("certificate", cfg.certificate, secret=False))
            if certificate is None:
                raise KeyFileError("certificate", f"{cfg.certificate} is a public key, not a certificate")
            if _spki(pubs[0]) != _spki(public):
                raise KeyFileError("certificate",
                                   f"the certificate {cfg.certificate} does not belong to the private key")
    else:
        field, source, private = "public", cfg.public, None
        pubs, certificate = _public_side(field, source, _read(field, source, secret=False))
        kind, public = _classify(field, source, pubs, False)
    if kind == "rsa" and public.key_size < MIN_RSA_BITS and not cfg.retired:
        raise KeyFileError(field, f"{source}: RSA key of {public.key_size} bits; new use needs {MIN_RSA_BITS} or more"
                          " (keep an old key with retired: true to decrypt only)")
    if kind == "pq-hybrid":
        parts = public
        key_id = hybrid_key_id(*parts)
        public = hpke.MLKEM768X25519PublicKey(*parts)
        if private is not None:
            private = hpke.MLKEM768X25519PrivateKey(*private)
        return Key(name, kind, key_id, str(source), public=public, parts=parts, private=private,
                   retired=cfg.retired)
    return Key(name, kind, public_key_id(public), str(source), public=public, private=private,
               certificate=certificate, retired=cfg.retired)


def load_keys(raw: Any) -> tuple[dict[str, Key], list[tuple[tuple, str]]]:
    """Load every entry of the raw ``keys:`` mapping; (keys, errors with their place).
    Entries whose structure is invalid are skipped: the config model reports them."""
    keys: dict[str, Key] = {}
    errors: list[tuple[tuple, str]] = []
    if not isinstance(raw, dict):
        return keys, errors
    for name, entry in raw.items():
        try:
            cfg = KeyConfig.model_validate(entry)
        except ValidationError:
            continue
        try:
            keys[name] = load_key(name, cfg)
        except KeyFileError as exc:
            errors.append((("keys", name, exc.field), exc.message))
    return keys, errors


# --- the stages' uses ------------------------------------------------------------------


def _field_loc(text: str) -> tuple:
    """``recipients[1].key`` -> ("recipients", 1, "key"), the form config places take."""
    out: list = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", text or ""):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


def check_uses(stage: str, uses: list[KeyUse], keys: Mapping[str, Key], configured: set,
               loc: tuple) -> list[tuple[tuple, str]]:
    """Errors (place, message) for the keys a stage's options name."""
    errors = []
    for use in uses:
        where = loc + _field_loc(use.field)
        key = keys.get(use.name)
        if use.name not in configured:
            known = ", ".join(sorted(configured)) or "none configured"
            errors.append((where, f"unknown key {use.name!r} (keys: {known})"))
        elif key is None:
            continue  # it did not load: its own error says why
        elif key.type not in use.types:
            errors.append((where, f"keys.{use.name} is a {key.type} key; {stage} needs "
                                  + " or ".join(sorted(use.types))))
        elif use.private and key.type != "secret" and key.private is None:
            errors.append((where, f"keys.{use.name} has only a public key; {stage} needs the private key"))
        elif use.certificate and key.certificate is None:
            errors.append((where, f"keys.{use.name} has no certificate; {stage} needs one"
                                  " (certificate: with private:, or the certificate as public:)"))
        elif key.retired and not use.private:
            errors.append((where, f"keys.{use.name} is retired (kept to decrypt older objects); {stage}"
                                  " cannot use it for new ones"))
    return errors


def describe(key: Key) -> dict:
    """What ``pacsguard keys list`` shows of a key: never its material."""
    out = {"name": key.name, "type": key.type, "key_id": key.key_id,
           "holds": "secret" if key.type == "secret" else "private" if key.private is not None else "public",
           "source": key.source, "retired": key.retired}
    if key.type == "rsa":
        out["bits"] = key.public.key_size
    if key.certificate is not None:
        out["certificate"] = {"subject": key.certificate.subject.rfc4514_string(),
                              "not_after": key.certificate.not_valid_after_utc.isoformat()}
    return out
