"""The carrier: the bytes hidden in the pixels. A small versioned header in clear, then
the payload encrypted and authenticated for one or more recipients.

Layout (integers big-endian)::

    "PGSC"                      magic
    1                           version (1 byte)
    method                      1 byte: 1 reversible (PEE, rhombus predictor), 2 lsb
    n, parameters               1 byte length, then the method's parameters
                                (reversible: 1 = rhombus two-pass; lsb: bits per pixel)
    r                           recipients (1 byte), each:
        key ID                  8 bytes (the 16 hex digits of the key store's key ID)
        wrapping                1 byte: 1 RSA-OAEP-SHA256, 2 HPKE X25519, 3 HPKE ML-KEM-768+X25519
        length, wrapped key     2 bytes, then the data key wrapped for that recipient
    nonce                       12 bytes
    length                      4 bytes: the sealed body's length
    body                        AES-256-GCM(SHA-256 pixel digest || zlib(data set)) + tag

The data key is fresh per object and wrapped per recipient by the encryption plugin's
:mod:`~pacsguard.plugins.encryption.envelope` (context ``PACSGUARD STEGO 1 data key``).
The associated data is the carrier's context (the image geometry, bit depth, padding and
method, as the embedding stage describes it), a zero byte and the whole clear header: a
carrier read from a cropped or re-labelled image, or with a changed header, fails. The
data set is the payload (Explicit VR Little Endian, no file meta), compressed. The pixel
digest lets ``reveal`` check the restored pixels are the original ones bit for bit.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydicom.dataset import Dataset

from pacsguard.daemon.errors import QuarantineError
from pacsguard.plugins.encryption import block
from pacsguard.plugins.encryption.envelope import METHODS as WRAPPINGS
from pacsguard.plugins.encryption.envelope import Wrapped, new_data_key, unwrap, wrap_all

MAGIC = b"PGSC"
VERSION = 1
SCHEME = "PACSGUARD STEGO 1"
WRAP_CONTEXT = b"PACSGUARD STEGO 1 data key"
METHOD_IDS = {"reversible": 1, "lsb": 2}
WRAP_IDS = {WRAPPINGS["rsa"]: 1, WRAPPINGS["x25519"]: 2, WRAPPINGS["pq-hybrid"]: 3}
NONCE_BYTES = 12
DIGEST_BYTES = 32
MAX_PAYLOAD = 16 << 20  # decompressed data set: far above any record of original values

AUTH_FAILED = ("authentication failed: the carrier's pixels or its context (geometry, bit depth, padding) "
               "were changed after embedding")


class NoCarrier(QuarantineError):
    """The bytes are not a carrier (no magic, another version)."""


class Incomplete(Exception):
    """More bytes are needed to read the header (``need``: how many in all)."""

    def __init__(self, need: int):
        super().__init__(need)
        self.need = need


@dataclass(frozen=True)
class Header:
    method: str
    params: bytes
    recipients: list
    nonce: bytes
    body_length: int
    raw: bytes  # the header's bytes, as authenticated

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def total(self) -> int:
        return self.size + self.body_length

    @property
    def key_ids(self) -> list[str]:
        return [w.key_id for w in self.recipients]


@dataclass(frozen=True)
class Sealed:
    data: bytes
    header: Header
    data_key: bytes = field(repr=False)


def _header(method: str, params: bytes, wrapped: list[Wrapped], nonce: bytes, body_length: int) -> bytes:
    out = bytearray(MAGIC + bytes([VERSION, METHOD_IDS[method], len(params)]) + params)
    out.append(len(wrapped))
    for w in wrapped:
        out += bytes.fromhex(w.key_id) + bytes([WRAP_IDS[w.method]]) + struct.pack(">H", len(w.data)) + w.data
    return bytes(out + nonce + struct.pack(">I", body_length))


def seal(payload: Dataset, pixel_digest: bytes, recipients, method: str, params: bytes, context: bytes) -> Sealed:
    """The carrier of ``payload`` for ``recipients`` (keys)."""
    if len(recipients) > 255:
        raise QuarantineError("too many recipients for a carrier (255 at most)")
    try:
        plain = pixel_digest + zlib.compress(block.encode(payload), 9)
    except (TypeError, ValueError) as exc:
        raise QuarantineError(f"cannot encode the payload data set ({type(exc).__name__})") from None
    data_key = new_data_key()
    wrapped = wrap_all(data_key, recipients, WRAP_CONTEXT)
    nonce = os.urandom(NONCE_BYTES)
    body_length = len(plain) + 16
    raw = _header(method, params, wrapped, nonce, body_length)
    body = AESGCM(data_key).encrypt(nonce, plain, _aad(context, raw))
    header = parse_header(raw)
    return Sealed(raw + body, header, data_key)


def _aad(context: bytes, raw: bytes) -> bytes:
    return context + b"\0" + raw


def parse_header(data: bytes) -> Header:
    """The header at the start of ``data``: NoCarrier when it is not one, Incomplete when
    ``data`` ends inside it."""
    view = bytes(data)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(view):
            raise Incomplete(pos + n)
        out = view[pos:pos + n]
        pos += n
        return out

    if view[:4] != MAGIC[:len(view[:4])]:
        raise NoCarrier("no pacsguard carrier in the pixel data")
    take(4)
    version, method_id, n = take(3)
    methods = {v: k for k, v in METHOD_IDS.items()}
    if version != VERSION or method_id not in methods:
        raise NoCarrier(f"a pacsguard carrier of another version ({version}) or method ({method_id})")
    params = take(n)
    count = take(1)[0]
    wraps = {v: k for k, v in WRAP_IDS.items()}
    recipients = []
    for _ in range(count):
        key_id = take(8).hex()
        wrap_id = take(1)[0]
        length = struct.unpack(">H", take(2))[0]
        if wrap_id not in wraps:
            raise NoCarrier("the carrier names an unknown key wrapping")
        recipients.append(Wrapped(key_id, wraps[wrap_id], take(length)))
    nonce = take(NONCE_BYTES)
    body_length = struct.unpack(">I", take(4))[0]
    return Header(methods[method_id], params, recipients, nonce, body_length, view[:pos])


def data_key(header: Header, keys) -> bytes:
    """The data key, unwrapped with one of ``keys`` (QuarantineError naming key IDs)."""
    return unwrap(header.recipients, keys, WRAP_CONTEXT)


def order_key(key: bytes) -> bytes:
    """A key for the pixel order of the lsb method, derived from the data key."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"PACSGUARD STEGO 1 lsb order").derive(key)


def open_(header: Header, body: bytes, key: bytes, context: bytes) -> tuple[Dataset, bytes]:
    """(the payload data set, the pixel digest); QuarantineError when anything changed."""
    if len(body) != header.body_length:
        raise QuarantineError(AUTH_FAILED)
    try:
        plain = AESGCM(key).decrypt(header.nonce, bytes(body), _aad(context, header.raw))
    except InvalidTag:
        raise QuarantineError(AUTH_FAILED) from None
    try:
        d = zlib.decompressobj()
        encoded = d.decompress(plain[DIGEST_BYTES:], MAX_PAYLOAD)
        if not d.eof or d.unconsumed_tail:
            raise ValueError("payload too large")
        payload = block.decode(encoded)  # elements stay raw: restoring copies them as read
    except Exception:  # authenticated, so only a pacsguard bug or a hostile sender gets here
        raise QuarantineError("the carrier authenticated but its payload is not a data set") from None
    return payload, plain[:DIGEST_BYTES]
