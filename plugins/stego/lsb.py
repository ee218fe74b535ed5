"""Keyed LSB embedding (irreversible): the k low bits of chosen pixels are replaced.

Only for routes that allow it explicitly (``method: lsb, reversible: false``): the
replaced bits are gone for good. The pixels that may carry bits are those that are not
padding (judged on ``value >> k``, which replacing the low bits does not change). The
carrier's clear header goes into the first of them in raster order (plane by plane), so
``reveal`` finds it without a key; the sealed body goes into pixels chosen among the rest
in a pseudo-random order derived from the carrier's data key (AES-256-CTR keystream under
HKDF(data key), 64-bit draws modulo the count, repeats dropped), so only a recipient
knows where the bits are. Bits are taken most significant first, k per pixel.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .pee import NoCapacity, Range

MAX_BITS = 4


def positions(flat: np.ndarray, k: int, rng: Range) -> np.ndarray:
    """Flat indices of the pixels that may carry bits, in raster order."""
    if rng.pad_lo is None:
        return np.arange(flat.size)
    high = flat >> k
    return np.flatnonzero((high < rng.pad_lo >> k) | (high > rng.pad_hi >> k))


def _keyed_choice(order: bytes, n: int, m: int) -> np.ndarray:
    """``m`` distinct indices below ``n`` in the keyed order."""
    stream = Cipher(algorithms.AES(order), modes.CTR(b"\0" * 16)).encryptor()
    if 2 * m > n:  # most of them: a keyed permutation of all
        keys = np.frombuffer(stream.update(b"\0" * (8 * n)), "<u8")
        return np.argsort(keys, kind="stable")[:m]
    chosen = np.zeros(0, np.int64)
    while len(chosen) < m:
        draws = np.frombuffer(stream.update(b"\0" * (8 * (2 * (m - len(chosen)) + 16))), "<u8") % np.uint64(n)
        both = np.concatenate([chosen, draws.astype(np.int64)])
        _, first = np.unique(both, return_index=True)
        chosen = both[np.sort(first)]
    return chosen[:m]


def _groups(data: bytes, k: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    bits = np.concatenate([bits, np.zeros(-len(bits) % k, np.uint8)]).reshape(-1, k).astype(np.int64)
    return bits @ (1 << np.arange(k - 1, -1, -1))


def _bytes(values: np.ndarray, k: int, nbytes: int) -> bytes:
    bits = ((values[:, None] >> np.arange(k - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bits[:8 * min(nbytes, len(bits) // 8)]).tobytes()


def _count(nbytes: int, k: int) -> int:
    return -(-8 * nbytes // k)


def embed(X0: np.ndarray, header: bytes, body: bytes, order: bytes, k: int, rng: Range) -> np.ndarray:
    """The planes with ``header`` and ``body`` in their k low bits (``X0`` is not changed)."""
    X = X0.copy()
    flat = X.reshape(-1)
    pos = positions(flat, k, rng)
    h, b = _count(len(header), k), _count(len(body), k)
    if h + b > len(pos):
        raise NoCapacity(8 * (len(header) + len(body)), k * len(pos), f"lsb, {k} bit(s) per pixel")
    where = np.concatenate([pos[:h], pos[h:][_keyed_choice(order, len(pos) - h, b)]])
    values = np.concatenate([_groups(header, k), _groups(body, k)])
    mask = (1 << k) - 1
    flat[where] = (flat[where] & ~mask) | values
    return X


def read_prefix(X: np.ndarray, k: int, rng: Range, nbytes: int) -> bytes:
    """The first ``nbytes`` bytes in raster order (the carrier's header)."""
    pos = positions(X.reshape(-1), k, rng)[:_count(nbytes, k)]
    return _bytes(X.reshape(-1)[pos] & ((1 << k) - 1), k, nbytes)


def read_body(X: np.ndarray, k: int, rng: Range, header_size: int, nbytes: int, order: bytes) -> bytes:
    flat = X.reshape(-1)
    pos = positions(flat, k, rng)
    h, b = _count(header_size, k), _count(nbytes, k)
    if h + b > len(pos):
        return b""
    where = pos[h:][_keyed_choice(order, len(pos) - h, b)]
    return _bytes(flat[where] & ((1 << k) - 1), k, nbytes)


def masked(X: np.ndarray, k: int) -> np.ndarray:
    """The planes without their k low bits: what the lsb carrier's pixel digest covers."""
    return X & ~((1 << k) - 1)
