"""The side information of a PEE embedding, as bytes: what extraction must know before
it can undo the passes (see :mod:`.pee`).

Layout: ``"PE" 0x01``, then unsigned LEB128 varints T (threshold), L (the number of
pixels whose least significant bits hold this side information), the payload's length in
bytes, the bits in the cross pass, then per pass V, k (the prefix of the variance order)
and the length of its location map, then the two maps (ranks, delta-coded as 32-bit
little endian integers, zlib-compressed; empty when none).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"PE\x01"


class NotEmbedded(Exception):
    """The pixels carry no PEE side information."""


class Damaged(Exception):
    """The side information is there but the pixels do not agree with it (changed after
    embedding, cropped, or another geometry / bit depth / padding value)."""


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise Damaged("the side information is cut short")
        byte = buf[pos]
        n |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return n, pos


def pack_map(ranks: np.ndarray) -> bytes:
    if not len(ranks):
        return b""
    return zlib.compress(np.diff(ranks, prepend=-1).astype("<u4").tobytes(), 9)


def unpack_map(data: bytes, limit: int) -> np.ndarray:
    if not data:
        return np.zeros(0, np.int64)
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, 4 * limit + 4)
        if d.unconsumed_tail or not d.eof or len(raw) % 4:
            raise Damaged("the location map is damaged")
    except zlib.error:
        raise Damaged("the location map is damaged") from None
    deltas = np.frombuffer(raw, "<u4").astype(np.int64)
    if len(deltas) and deltas.min() < 1:
        raise Damaged("the location map is damaged")
    return np.cumsum(deltas) - 1


@dataclass(frozen=True)
class Aux:
    T: int
    L: int
    length: int
    n1: int
    passes: tuple  # ((V, k, map bytes), (V, k, map bytes))

    def encode(self) -> bytes:
        (v1, k1, m1), (v2, k2, m2) = self.passes
        fields = (self.T, self.L, self.length, self.n1, v1, k1, len(m1), v2, k2, len(m2))
        return MAGIC + b"".join(uvarint(x) for x in fields) + m1 + m2

    @staticmethod
    def side_bits(head: bytes) -> int:
        """L, from the first bytes of the side information."""
        if head[:len(MAGIC)] != MAGIC:
            raise NotEmbedded("no PEE side information")
        pos = len(MAGIC)
        for _ in range(2):
            value, pos = read_uvarint(head, pos)
        return value

    @classmethod
    def decode(cls, buf: bytes) -> "Aux":
        if buf[:len(MAGIC)] != MAGIC:
            raise NotEmbedded("no PEE side information")
        pos, fields = len(MAGIC), []
        for _ in range(10):
            x, pos = read_uvarint(buf, pos)
            fields.append(x)
        T, L, length, n1, v1, k1, l1, v2, k2, l2 = fields
        if pos + l1 + l2 > len(buf) or 8 * (pos + l1 + l2) > L or T < 1:
            raise Damaged("the side information is inconsistent")
        m1, m2 = buf[pos:pos + l1], buf[pos + l1:pos + l1 + l2]
        return cls(T, L, length, n1, ((v1, k1, m1), (v2, k2, m2)))
