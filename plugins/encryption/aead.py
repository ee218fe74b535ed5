"""AES-256-GCM over a buffer in chunks, tags kept apart, so the ciphertext keeps the
plaintext's length (the Pixel Data keeps its size and geometry).

One-shot AEAD calls refuse inputs of 2^31 bytes or more: a buffer is cut into chunks of
``chunk_size`` bytes. Chunk ``i`` uses the nonce ``base XOR i`` (big-endian) under the
object's own data key (never a nonce twice under one key) and the associated data
``context || 0x00 || "i/n"``, so chunks cannot be reordered, dropped or moved to another
object or context.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
TAG_BYTES = 16
#: below the one-shot limit of 2^31 - 1 bytes, and a round size
DEFAULT_CHUNK = 1 << 30
#: ``update_into`` wants room for a block minus one byte beyond its input
_UPDATE_SLACK = 15


class AuthenticationError(Exception):
    """A tag did not verify: the ciphertext, a tag, the nonce or the context changed."""


def nonce(base: bytes, counter: int) -> bytes:
    return (int.from_bytes(base, "big") ^ counter).to_bytes(NONCE_BYTES, "big")


def chunk_count(length: int, chunk_size: int) -> int:
    return max(1, -(-length // chunk_size))


def _aad(context: bytes, i: int, n: int) -> bytes:
    return context + b"\0" + f"{i}/{n}".encode()


def seal(key: bytes, base: bytes, plain, context: bytes, chunk_size: int = DEFAULT_CHUNK) -> tuple[bytearray, bytes]:
    """(ciphertext of the same length as ``plain``, the tags concatenated)."""
    aes = AESGCM(key)
    view = memoryview(plain)
    n = chunk_count(len(view), chunk_size)
    out = bytearray(len(view) + TAG_BYTES)
    target = memoryview(out)
    tags = []
    for i in range(n):
        start, end = i * chunk_size, min((i + 1) * chunk_size, len(view))
        # each chunk's tag lands just after it, where the next chunk then writes
        aes.encrypt_into(nonce(base, i), view[start:end], _aad(context, i, n), target[start:end + TAG_BYTES])
        tags.append(bytes(target[end:end + TAG_BYTES]))
    target.release()
    del out[len(view):]
    return out, b"".join(tags)


def open_(key: bytes, base: bytes, cipher, tags: bytes, context: bytes, chunk_size: int) -> bytearray:
    """The plaintext; AuthenticationError when any chunk fails (nothing is returned then).

    GCM's streaming decryptor takes each tag apart from its chunk, so the ciphertext is
    decrypted where it lies (the one-shot call wants chunk and tag joined: one more copy
    of the whole chunk). Nothing decrypted leaves this function unless its tag verified."""
    view = memoryview(cipher)
    n = chunk_count(len(view), chunk_size)
    if len(tags) != n * TAG_BYTES or len(base) != NONCE_BYTES:
        raise AuthenticationError()
    out = bytearray(len(view) + _UPDATE_SLACK)
    target = memoryview(out)
    try:
        for i in range(n):
            start, end = i * chunk_size, min((i + 1) * chunk_size, len(view))
            tag = tags[i * TAG_BYTES:(i + 1) * TAG_BYTES]
            dec = Cipher(algorithms.AES(key), modes.GCM(nonce(base, i), tag)).decryptor()
            dec.authenticate_additional_data(_aad(context, i, n))
            dec.update_into(view[start:end], target[start:])
            dec.finalize()
    except InvalidTag:
        raise AuthenticationError() from None
    finally:
        target.release()
    del out[len(view):]
    return out


def seal_small(key: bytes, nonce_: bytes, plain: bytes, context: bytes) -> bytes:
    """One small value (ciphertext + tag)."""
    return AESGCM(key).encrypt(nonce_, plain, context)


def open_small(key: bytes, nonce_: bytes, sealed: bytes, context: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce_, sealed, context)
    except InvalidTag:
        raise AuthenticationError() from None
