"""The keyed mixing of ``neural-encrypt`` (numpy only, no torch, no DICOM here).

The encoder network's 8-bit output ``q`` (frames, 32, 32) is mixed with a key and a
per-object salt, exactly invertibly:

1. inside every 4 x 4 block the 16 values are permuted, each block with its own keyed
   order (block positions are kept: the region-of-interest network reads the layout);
2. the low :data:`LOW_BITS` bits of every value are XORed with a keyed chaotic sequence:
   one logistic map ``x <- r x (1 - x)`` (r = :data:`R`) per pixel, seeded from the key
   stream and iterated :data:`ITERATIONS` times; the keystream byte is taken from the
   middle of the mantissa (the low bits of ``floor(x * 2**24)``), where the map's
   arcsine-shaped distribution no longer shows. The top ``8 - LOW_BITS`` bits are left as the encoder
   made them: they carry the coarse layout the ROI network works on.

Seeds: HMAC-SHA256(secret, scheme, purpose, salt) seeds a SHAKE-256 stream (as in
:mod:`.blocks`: not numpy's Generator, whose output may change between versions); the
logistic map is plain IEEE double arithmetic, the same on every platform.

No cryptographic claim: the chaotic lanes are no stronger than the SHAKE stream they start
from, and two planes of the encoder output are in clear by design. The exact original,
where it is carried, is protected by AES-GCM (:mod:`.neural`), not by this.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np

SCHEME = "PACSGUARD NEURAL 1"
BLOCK = 4
LOW_BITS = 6
R = 3.99996
ITERATIONS = 48


@dataclass(frozen=True)
class MixKey:
    """The keyed orders and keystream of one object (never printed)."""

    orders: np.ndarray  # (blocks, 16): scrambled value j of block b is plain value orders[b, j]
    stream: np.ndarray  # (rows, columns) uint8, only the low LOW_BITS bits set

    def __repr__(self) -> str:
        return f"MixKey(blocks={self.orders.shape[0]})"


def _shake(secret: bytes, purpose: str, salt: bytes, n: int, rows: int, columns: int) -> np.ndarray:
    context = "\0".join([SCHEME, purpose, f"rows={rows}", f"columns={columns}"]).encode() + b"\0" + salt
    seed = hmac.new(secret, context, hashlib.sha256).digest()
    return np.frombuffer(hashlib.shake_256(seed).digest(8 * n), dtype="<u8")


def logistic_stream(seeds: np.ndarray) -> np.ndarray:
    """One keystream value (0 .. 2**LOW_BITS - 1) per 64-bit seed: a logistic map per seed."""
    x = ((seeds >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    for _ in range(ITERATIONS):
        x = R * x * (1.0 - x)
    return (np.floor(x * float(1 << 24)).astype(np.uint64) & np.uint64((1 << LOW_BITS) - 1)).astype(np.uint8)


def derive(secret: bytes, salt: bytes, rows: int, columns: int) -> MixKey:
    """The mixing of one object of ``rows`` x ``columns`` (multiples of :data:`BLOCK`)."""
    if rows % BLOCK or columns % BLOCK:
        raise ValueError(f"{rows} x {columns} is not a multiple of {BLOCK}")
    blocks = (rows // BLOCK) * (columns // BLOCK)
    order = _shake(secret, "orders", salt, blocks * BLOCK * BLOCK, rows, columns).reshape(blocks, BLOCK * BLOCK)
    orders = np.argsort(order, axis=1, kind="stable")
    stream = logistic_stream(_shake(secret, "stream", salt, rows * columns, rows, columns)).reshape(rows, columns)
    return MixKey(orders, stream)


def _to_blocks(a: np.ndarray) -> np.ndarray:
    r, c = a.shape
    return a.reshape(r // BLOCK, BLOCK, c // BLOCK, BLOCK).transpose(0, 2, 1, 3).reshape(-1, BLOCK * BLOCK)


def _from_blocks(b: np.ndarray, rows: int, columns: int) -> np.ndarray:
    return b.reshape(rows // BLOCK, columns // BLOCK, BLOCK, BLOCK).transpose(0, 2, 1, 3).reshape(rows, columns)


def mix(q: np.ndarray, key: MixKey) -> np.ndarray:
    """Cipher image (rows, columns) uint8 from the encoder output ``q`` (same shape, uint8)."""
    r, c = q.shape
    shuffled = _from_blocks(np.take_along_axis(_to_blocks(q), key.orders, axis=1), r, c)
    return shuffled ^ key.stream


def unmix(cipher: np.ndarray, key: MixKey) -> np.ndarray:
    """The exact inverse of :func:`mix` with the same key and salt."""
    r, c = cipher.shape
    b = _to_blocks(cipher ^ key.stream)
    out = np.empty_like(b)
    np.put_along_axis(out, key.orders, b, axis=1)
    return _from_blocks(out, r, c)
