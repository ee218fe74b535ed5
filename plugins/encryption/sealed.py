"""File scope: a whole Part-10 object sealed in a ``.pgenc`` envelope, streamed in
bounded memory whatever its size.

Layout (all integers big-endian)::

    magic        8 bytes   "PGENC" 0D 0A 1A  (a text-mode copy or a truncated head shows)
    version      1 byte    1
    header_len   4 bytes   length of the header (at most 1 MiB)
    header       JSON, UTF-8: {"scheme": "PACSGUARD FILE 1", "content": "application/dicom",
                 "chunk_size": N, "base_nonce": base64 (12 bytes),
                 "recipients": [{"key_id", "method", "wrapped": base64}, ...]}
    chunks       AES-256-GCM ciphertext of N plaintext bytes + 16-byte tag, repeated; the
                 last chunk holds 0..N bytes

Chunk ``i`` uses the nonce ``base_nonce XOR i`` under the file's own data key and the
associated data ``SHA-256(magic .. header) || i (8 bytes) || final (1 byte, 1 on the last
chunk only)`` (the STREAM construction): a changed header, a reordered, dropped or
truncated chunk, and a file cut at a chunk boundary all fail. Data keys are wrapped per
recipient as in :mod:`.envelope` (context ``PACSGUARD FILE 1 data key``).

Each chunk is authenticated before its plaintext is written, but only the final chunk
proves the file complete: :func:`unseal_file` writes to a temporary file and renames it
only then.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pacsguard.daemon.errors import QuarantineError

from . import aead
from .envelope import Wrapped, new_data_key, unwrap, wrap_all

MAGIC = b"PGENC\r\n\x1a"
VERSION = 1
SCHEME = "PACSGUARD FILE 1"
SUFFIX = ".pgenc"
WRAP_CONTEXT = b"PACSGUARD FILE 1 data key"
DEFAULT_CHUNK = 1 << 20
MAX_HEADER = 1 << 20
_PREFIX = struct.Struct(">8sBI")

NOT_SEALED = "not a .pgenc file (no PGENC magic)"
CHANGED = "authentication failed: the .pgenc file was changed (or cut short) after encryption"


def is_sealed(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class Sealer:
    """Seals one object for ``recipients``: the data key is made and wrapped here (so a
    bad recipient fails in the stage), the bytes are sealed when the object is written."""

    def __init__(self, recipients, chunk_size: int = DEFAULT_CHUNK):
        self._key = new_data_key()
        self.wrapped = wrap_all(self._key, recipients, WRAP_CONTEXT)
        self.chunk_size = chunk_size

    @property
    def key_ids(self) -> list[str]:
        return [w.key_id for w in self.wrapped]

    def __call__(self, src: BinaryIO, dst: BinaryIO) -> int:
        """Stream ``src`` (plaintext) into ``dst`` sealed; returns the bytes written."""
        base = os.urandom(aead.NONCE_BYTES)
        header = json.dumps({
            "scheme": SCHEME, "content": "application/dicom", "chunk_size": self.chunk_size,
            "base_nonce": base64.b64encode(base).decode(),
            "recipients": [{"key_id": w.key_id, "method": w.method, "wrapped": base64.b64encode(w.data).decode()}
                           for w in self.wrapped],
        }, separators=(",", ":")).encode()
        head = _PREFIX.pack(MAGIC, VERSION, len(header)) + header
        dst.write(head)
        written = len(head)
        digest = hashlib.sha256(head).digest()
        aes = AESGCM(self._key)
        i, chunk = 0, src.read(self.chunk_size)
        while True:
            following = src.read(self.chunk_size) if len(chunk) == self.chunk_size else b""
            final = not following
            sealed = aes.encrypt(aead.nonce(base, i), chunk, _aad(digest, i, final))
            dst.write(sealed)
            written += len(sealed)
            if final:
                return written
            i, chunk = i + 1, following


def _aad(digest: bytes, i: int, final: bool) -> bytes:
    return digest + struct.pack(">QB", i, 1 if final else 0)


def read_header(fh: BinaryIO) -> tuple[dict, bytes]:
    """(the header, the bytes it was read from); QuarantineError when it is not one."""
    prefix = fh.read(_PREFIX.size)
    if not prefix or prefix[:len(MAGIC)] != MAGIC[:len(prefix)]:
        raise QuarantineError(NOT_SEALED)
    if len(prefix) < _PREFIX.size:
        raise QuarantineError("truncated .pgenc file (ends inside its header)")
    magic, version, length = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise QuarantineError(f".pgenc version {version} is not supported (this is version {VERSION})")
    if length > MAX_HEADER:
        raise QuarantineError(f".pgenc header of {length} bytes is over the {MAX_HEADER}-byte limit")
    raw = fh.read(length)
    if len(raw) < length:
        raise QuarantineError("truncated .pgenc file (ends inside its header)")
    try:
        header = json.loads(raw)
        if header.get("scheme") != SCHEME or int(header["chunk_size"]) < 1:
            raise ValueError
        header["recipients"] = [Wrapped(str(r["key_id"]), str(r["method"]), base64.b64decode(r["wrapped"]))
                                for r in header["recipients"]]
        header["base_nonce"] = base64.b64decode(header["base_nonce"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise QuarantineError("the .pgenc header is damaged (not the expected JSON)") from None
    return header, prefix + raw


def unseal(src: BinaryIO, dst: BinaryIO, keys) -> int:
    """Stream the plaintext of ``src`` into ``dst``; returns its length. On any failure
    QuarantineError, with ``dst`` holding a partial plaintext: use :func:`unseal_file`."""
    header, head = read_header(src)
    key = unwrap(header["recipients"], keys, WRAP_CONTEXT)
    base, size = header["base_nonce"], int(header["chunk_size"])
    if len(base) != aead.NONCE_BYTES:
        raise QuarantineError(CHANGED)
    digest = hashlib.sha256(head).digest()
    aes = AESGCM(key)
    step = size + aead.TAG_BYTES
    i, total, block = 0, 0, src.read(step)
    while True:
        following = src.read(step) if len(block) == step else b""
        final = not following
        try:
            plain = aes.decrypt(aead.nonce(base, i), block, _aad(digest, i, final))
        except (InvalidTag, ValueError):
            raise QuarantineError(_why(aes, base, digest, i, block, final)) from None
        dst.write(plain)
        total += len(plain)
        if final:
            return total
        i, block = i + 1, following


def _why(aes, base: bytes, digest: bytes, i: int, block: bytes, final: bool) -> str:
    """Tell a file cut short from a changed one."""
    if not block:
        return "truncated .pgenc file (no chunk after the header)"
    if final and len(block) < aead.TAG_BYTES:
        return f"truncated .pgenc file (ends inside chunk {i})"
    if final:
        try:
            aes.decrypt(aead.nonce(base, i), block, _aad(digest, i, False))
            return f"truncated .pgenc file (ends after chunk {i}; its final chunk is missing)"
        except (InvalidTag, ValueError):
            pass
    return CHANGED


def unseal_file(src: Path, dst: Path, keys) -> int:
    """Unseal ``src`` into ``dst`` atomically: ``dst`` appears only once the final chunk
    authenticated; on failure nothing is left behind."""
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            n = unseal(fin, fout, keys)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
        return n
    finally:
        tmp.unlink(missing_ok=True)
