"""Block-wise keyed scrambling of pixel arrays (numpy only, no DICOM here).

The scheme of block-wise "learnable" encryption for vision transformers (Kiya lab): with
block size B equal to the model's patch size,

- the image is cut into B x B blocks; block positions are permuted with key ``sigma``
  (scrambled block i is plain block ``sigma[i]``, per frame, one order for every frame);
- the B*B*S values of every block (rows, columns, samples, in that order) are permuted
  with one key ``pi`` for all blocks (scrambled value j is plain value ``pi[j]``);
- optionally, the values at the positions of one keyed mask ``flip`` (inside every block,
  after the shuffle) are turned negative-positive over the stored range: v -> lo + hi - v.

All three are exact inverses of themselves given the key. Because ``pi`` and ``flip`` are
the same for every block, a transformer's patch embedding can absorb them (and its
position embeddings ``sigma``): see :mod:`.vit`.

Keys come from a secret: HMAC-SHA256(secret, purpose and geometry) seeds a SHAKE-256
stream whose 64-bit words are sorted (a keyed permutation, ties impossible in practice
and broken by index). Not numpy's ``Generator``: its methods' output may change between
NumPy versions, and an object scrambled today must unscramble after an upgrade.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np

SCHEME = "PACSGUARD SCRAMBLE 1"


@dataclass(frozen=True)
class BlockKey:
    """The keyed permutations for one geometry (see the module docstring)."""

    block: int
    grid: tuple[int, int]  # blocks down, blocks across
    samples: int
    sigma: np.ndarray  # (blocks,) positions
    pi: np.ndarray  # (B*B*S,) values inside a block
    flip: np.ndarray | None  # (B*B*S,) bool, or None without negative-positive

    def __repr__(self) -> str:  # never show key material
        return f"BlockKey(block={self.block}, grid={self.grid}, samples={self.samples}, flip={self.flip is not None})"


def _stream(secret: bytes, purpose: str, n: int, **geometry: int) -> np.ndarray:
    context = "\0".join([SCHEME, purpose, *(f"{k}={v}" for k, v in sorted(geometry.items()))]).encode()
    seed = hmac.new(secret, context, hashlib.sha256).digest()
    return np.frombuffer(hashlib.shake_256(seed).digest(8 * n), dtype="<u8")


def _permutation(secret: bytes, purpose: str, n: int, **geometry: int) -> np.ndarray:
    return np.argsort(_stream(secret, purpose, n, **geometry), kind="stable")


def derive(secret: bytes, *, rows: int, columns: int, samples: int, block: int, flip: bool) -> BlockKey:
    """The key of images of ``rows`` x ``columns`` x ``samples`` in blocks of ``block``.

    ``pi`` and ``flip`` depend on the block size and samples only (one model converts for
    every image size); ``sigma`` on the block grid too."""
    if rows % block or columns % block:
        raise ValueError(f"{rows} x {columns} is not a multiple of the block size {block}")
    grid = (rows // block, columns // block)
    n = block * block * samples
    sigma = _permutation(secret, "sigma", grid[0] * grid[1], down=grid[0], across=grid[1], block=block)
    pi = _permutation(secret, "pi", n, block=block, samples=samples)
    mask = (_stream(secret, "flip", n, block=block, samples=samples) & 1).astype(bool) if flip else None
    return BlockKey(block, grid, samples, sigma, pi, mask)


def to_blocks(a: np.ndarray, block: int) -> np.ndarray:
    """(frames, rows, columns, samples) -> (frames, blocks, B*B*S), blocks in raster order."""
    f, r, c, s = a.shape
    return a.reshape(f, r // block, block, c // block, block, s).transpose(0, 1, 3, 2, 4, 5) \
            .reshape(f, (r // block) * (c // block), block * block * s)


def from_blocks(b: np.ndarray, key: BlockKey) -> np.ndarray:
    f = b.shape[0]
    (down, across), bs, s = key.grid, key.block, key.samples
    return b.reshape(f, down, across, bs, bs, s).transpose(0, 1, 3, 2, 4, 5) \
            .reshape(f, down * bs, across * bs, s)


def _negpos(b: np.ndarray, key: BlockKey, stored: tuple[int, int]) -> np.ndarray:
    lo, hi = stored
    if b.min(initial=lo) < lo or b.max(initial=hi) > hi:
        raise ValueError(f"pixel values lie outside the stored range {lo}..{hi}")
    out = b.copy()
    out[..., key.flip] = (lo + hi) - b[..., key.flip].astype(np.int64)
    return out


def _permute(b: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Both permutations in one gather over each frame's (blocks x values)."""
    f, n, m = b.shape
    return np.take(b.reshape(f, n * m), index, axis=1).reshape(f, n, m)


def _index(key: BlockKey) -> np.ndarray:
    m = key.pi.size
    return (key.sigma[:, None] * m + key.pi[None, :]).ravel()


def scramble(a: np.ndarray, key: BlockKey, stored: tuple[int, int] = (0, 255)) -> np.ndarray:
    """Scramble ``a`` (frames, rows, columns, samples); ``stored`` is the (lo, hi) range of
    the values, for the negative-positive flip. Same shape and dtype."""
    b = _permute(to_blocks(a, key.block), _index(key))
    if key.flip is not None:
        b = _negpos(b, key, stored)
    return from_blocks(b, key)


def unscramble(a: np.ndarray, key: BlockKey, stored: tuple[int, int] = (0, 255)) -> np.ndarray:
    """The exact inverse of :func:`scramble` with the same key."""
    b = np.ascontiguousarray(to_blocks(a, key.block))  # (one copy: the flip's masked reads are slow on a view)
    if key.flip is not None:
        b = _negpos(b, key, stored)
    return from_blocks(_permute(b, _inverse_index(key)), key)


def _inverse_index(key: BlockKey) -> np.ndarray:
    """The inverse of :func:`_index` (what ``np.argsort(_index(key))`` gives) from the
    inverses of its two small permutations: forward, value q of block j comes from value
    pi[q] of block sigma[j]; so position (x, y) goes back to (sigma^-1[x], pi^-1[y])."""
    m = key.pi.size
    inv_sigma, inv_pi = np.argsort(key.sigma), np.argsort(key.pi)
    return (inv_sigma[:, None] * m + inv_pi[None, :]).ravel()
