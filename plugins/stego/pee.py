"""Reversible data hiding: prediction-error expansion (PEE), numpy-vectorized.

The pixels are planes of integers (frames x samples, rows, columns: one plane per frame
and colour channel), values in a stored range ``lo..hi``. Each pixel not on a plane's
edge is predicted by the rhombus mean of its four neighbours, ``p = floor((up + down +
left + right) / 4)``, in two checkerboard passes: the cross pixels (row + column even)
first, then the dot pixels (odd) from the changed cross pixels, so a pass never changes
its own predictors, and extraction undoes the dot pass, then the cross pass. For the
prediction error ``e = u - p`` and the threshold ``T``:

- ``-T <= e < T``: expanded, ``e' = 2e + b`` (one payload bit ``b``);
- ``e >= T``: shifted, ``e' = e + T``; ``e < -T``: ``e' = e - T``.

So no pixel moves by more than ``T``; extraction reads ``b = e' mod 2`` back and inverts
exactly. Which pixels: smooth ones first. Each pass's candidates are ordered by the
variance of their four neighbours (which the pass does not change, so extraction
computes the same order), ties in a fixed order (per phase of the checkerboard, plane by
plane, raster); the pass uses the shortest prefix of that order that holds its bits,
written as (V, k): every candidate of variance < V, and the first k of variance == V.
The bits go into the prefix in the fixed order. The smallest threshold that fits is
chosen, the bits split about evenly between the passes.

Padding (PixelPaddingValue, up to PixelPaddingRangeLimit): a value whose half (``v >>
1``) is a padding value's half is never changed. Overflow and underflow: a pixel whose
change could leave the stored range (0..2^BitsStored-1 or the signed range) or make
padding, for either bit, is never changed either ("unsafe", judged on its value and its
error). Extraction sees the same predictions, so a marked pixel that looks safe was
eligible; one that looks unsafe was either left so or changed into that state: the
location map lists, among the candidates that look unsafe after the pass, those that
were changed (ranks, delta-coded, zlib-compressed; usually none or a few, and saturated
regions cost nothing).

The side information (threshold, the (V, k) pairs, the location maps, the lengths) goes
into the least significant bits of the first L non-padding pixels in raster order (plane
by plane, so usually the first row, which is no pass's target anyway). Those pixels are
no pass's targets, and every prediction reads them with their least significant bit
cleared, so no prediction sees the side information change, and their neighbours still
carry. Their original least significant bits are the first L bits of the PEE stream, and
extraction puts them back. Its layout: :mod:`.sideinfo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .sideinfo import Aux, Damaged, NotEmbedded, pack_map, unpack_map  # noqa: F401 (re-exported)

MIN_SIZE = 3  # rows and columns: one pixel with four neighbours
_HEAD = 24  # bytes: enough for the magic, T and L
#: the side information's first size guess (bits): what it takes without location maps
#: (17-20 bytes); each of its pixels costs its neighbours' capacity, so it starts small
#: and grows only when the maps need it
SIDE_BITS = 8 * 20
_CLIP = 8191  # neighbour differences in the variance: int32 holds 4 x 3 x 8191^2


class NoCapacity(Exception):
    """The payload does not fit: ``needed`` bits (the payload's and the side
    information's) and ``available`` bits, and why."""

    def __init__(self, needed: int, available: int, why: str):
        super().__init__(f"needs {needed} bits, {available} available ({why})")
        self.needed, self.available, self.why = needed, available, why


@dataclass(frozen=True)
class Range:
    """The stored value range and the padding values (never changed)."""

    lo: int
    hi: int
    pad_lo: int | None = None
    pad_hi: int | None = None

    @classmethod
    def stored(cls, bits_stored: int, signed: bool, padding: tuple[int, int] | None = None) -> "Range":
        lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
        if padding is None:
            return cls(lo, hi)
        return cls(lo, hi, min(padding), max(padding))

    @property
    def bits(self) -> int:
        return (self.hi - self.lo).bit_length()

    def padding(self, v: np.ndarray) -> np.ndarray | None:
        """Where ``v`` is padding, judged on ``v >> 1`` (so replacing a least significant
        bit never makes or unmakes padding); None when there is none."""
        if self.pad_lo is None:
            return None
        # (v >> 1) in [pad_lo >> 1, pad_hi >> 1], i.e. v in [first, last], as one unsigned comparison
        first, last = (self.pad_lo >> 1) << 1, ((self.pad_hi >> 1) << 1) + 1
        unsigned = np.uint32 if v.dtype == np.int32 else np.uint64
        if v.dtype not in (np.int32, np.int64):
            v = v.astype(np.int64)
        return (v - first).view(unsigned) <= last - first


# -- geometry ------------------------------------------------------------------------------
def _side_positions(flat: np.ndarray, rng: Range, n: int) -> np.ndarray:
    """The flat indices of the first ``n`` non-padding pixels (fewer when there are not)."""
    if rng.pad_lo is None:
        return np.arange(min(n, flat.size))
    found, start, chunk = [], 0, max(4096, 4 * n)
    while start < flat.size and sum(len(f) for f in found) < n:
        part = flat[start:start + chunk]
        found.append(start + np.flatnonzero(~rng.padding(part)))
        start += chunk
    return np.concatenate(found)[:n] if found else np.zeros(0, np.int64)


def _mask(shape: tuple, side: np.ndarray) -> np.ndarray:
    """The side-information pixels, as a mask of the planes."""
    mask = np.zeros(shape, bool)
    mask.reshape(-1)[side] = True
    return mask


_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def _split(X: np.ndarray, dtype) -> dict:
    """The four polyphase components (row parity, column parity), contiguous: the
    neighbours of a pass's targets are then contiguous slices of the other two."""
    return {(ro, co): np.ascontiguousarray(X[:, ro::2, co::2], dtype=dtype) for ro, co in _PHASES}


def _merge(ph: dict, X: np.ndarray) -> None:
    for (ro, co), a in ph.items():
        X[:, ro::2, co::2] = a


def _grids(shape: tuple, parity: int):
    """For the pass of ``parity`` (0: row + column even), per target phase: the phase,
    the targets' slices (every pixel off the edges) and, per neighbour (up, down, left,
    right), its phase and slices, all of one shape."""
    _, rows, cols = shape
    out = []
    for ro, co in (((0, 0), (1, 1)) if parity == 0 else ((0, 1), (1, 0))):
        # targets: row 2i + ro in 1 .. rows - 2, column 2j + co in 1 .. cols - 2
        ni = max(0, (rows - 2) // 2 if ro == 0 else (rows - 1) // 2)
        nj = max(0, (cols - 2) // 2 if co == 0 else (cols - 1) // 2)
        I, J = slice(1 - ro, 1 - ro + ni), slice(1 - co, 1 - co + nj)
        near, far = slice(0, ni), slice(1, 1 + ni)
        left, right = slice(0, nj), slice(1, 1 + nj)
        out.append(((ro, co), (I, J), ((1 - ro, co), (near, J)), ((1 - ro, co), (far, J)),
                    ((ro, 1 - co), (I, left)), ((ro, 1 - co), (I, right))))
    return out


@dataclass
class _Pass:
    """One pass's candidates, in the fixed order: value, prediction, error, order key."""

    parity: int
    u: np.ndarray
    pred: np.ndarray
    e: np.ndarray
    key: np.ndarray
    valid: np.ndarray  # not padding, not side information or next to it
    first: int  # how many of the candidates are the first phase's (the start of the order)

    def flat(self, usable: np.ndarray) -> int:
        """How many of ``usable`` candidates of the first phase have variance 0."""
        return int(np.count_nonzero(usable[:self.first] & (self.key[:self.first] == 0)))


def _pass(ph: dict, shape: tuple, parity: int, rng: Range, near: dict, clip: bool = True) -> _Pass:
    grids = _grids(shape, parity)
    sizes = [ph[phase][:, I, J].size for phase, (I, J), *_ in grids]
    dtype = ph[(0, 0)].dtype
    u, pred, key = (np.empty(sum(sizes), dt) for dt in (dtype, dtype, np.int32))
    excluded = np.empty(sum(sizes), bool)
    pos = 0
    for n, (phase, (I, J), *nbs) in zip(sizes, grids):
        a, b, c, d = (ph[q][:, rows, cols] for q, (rows, cols) in nbs)
        out = slice(pos, pos + n)
        target = ph[phase][:, I, J]
        # written straight into the pass's arrays (views of their slices in the grid's shape)
        u[out].reshape(target.shape)[...] = target
        excluded[out].reshape(target.shape)[...] = near[phase][:, I, J]
        total = pred[out].reshape(target.shape)
        np.add(a, b, out=total)
        total += c
        total += d
        total >>= 2
        _variance(a, b, c, d, key[out].reshape(target.shape), clip)
        pos += n
    pad = rng.padding(u)
    valid = ~excluded if pad is None else ~(excluded | pad)
    return _Pass(parity, u, pred, u - pred, key, valid, sizes[0])


def _variance(a, b, c, d, out: np.ndarray, clip: bool = True) -> np.ndarray:
    """16 x the variance of the four neighbours, in int32 (into ``out``): 4 (db^2 + dc^2 +
    dd^2) - (db + dc + dd)^2 with the differences to ``a`` clipped to +-8191 (exact for
    every neighbourhood whose values lie within 8191 of ``a``, which is where the smooth
    pixels are; rougher ones saturate, which only ties them at the end of the order).
    In place, two scratch arrays: this runs on every candidate of every pass. ``clip``
    False where no difference can exceed 8191 (:func:`_clip_needed`): the same result."""
    total = np.empty(out.shape, np.int32)  # db + dc + dd
    dx = np.empty(out.shape, a.dtype)
    for i, x in enumerate((b, c, d)):
        np.subtract(x, a, out=dx)
        if clip:
            np.clip(dx, -_CLIP, _CLIP, out=dx)
        dx32 = dx if dx.dtype == np.int32 else dx.astype(np.int32)
        if i == 0:
            total[...] = dx32
            np.multiply(dx32, dx32, out=out)
        else:
            total += dx32
            dx32 *= dx32
            out += dx32
    out *= 4
    total *= total
    out -= total
    return out


def _clip_needed(lo: int, hi: int, T: int) -> bool:
    """Whether a neighbour difference may exceed the variance's clip while values in
    ``lo..hi`` move by up to ``T`` (either way, for embedding and for extraction) and the
    side information's pixels lose their least significant bit."""
    return hi - lo + 2 * T + 1 > _CLIP


def _write(ph: dict, shape: tuple, parity: int, values: np.ndarray) -> None:
    pos = 0
    for phase, (I, J), *_ in _grids(shape, parity):
        view = ph[phase][:, I, J]
        n = view.size
        view[...] = values[pos:pos + n].reshape(view.shape)
        pos += n


def _dtype(rng: Range):
    """int32 where four values and a threshold cannot overflow it."""
    return np.int32 if rng.bits <= 28 else np.int64


# -- one pass: plan, select, apply, invert ------------------------------------------------
def _inner(e: np.ndarray, T: int) -> np.ndarray:
    """``-T <= e < T`` in one unsigned comparison (``e + T`` as unsigned is below 2T
    exactly then; the errors are far from the integer type's ends)."""
    return (e + T).view(np.uint32 if e.dtype == np.int32 else np.uint64) < 2 * T


def _changes(u: np.ndarray, e: np.ndarray, T: int):
    """(expandable, the new value for bit 0, for bit 1) of values ``u`` with errors ``e``."""
    inner = _inner(e, T)
    new0 = np.clip(e, -T, T)
    new0 += u  # expanded: u + e (+ b); shifted: u +- T
    return inner, new0, new0 + inner


def _unsafe_all(u: np.ndarray, e: np.ndarray, T: int, rng: Range) -> np.ndarray:
    _, new0, new1 = _changes(u, e, T)
    bad = (new0 < rng.lo) | (new1 > rng.hi)
    if rng.pad_lo is not None:
        bad |= rng.padding(new0) | rng.padding(new1)
    return bad


def _within_reach(u: np.ndarray, T: int, rng: Range) -> np.ndarray:
    """The flat indices of values ``u`` that a change of at most ``T`` could take out of the
    range or into padding (a superset of the unsafe ones: only these need the exact test).
    Usually none or a few, so the exact test runs on a small subset."""
    if rng.hi - rng.lo < 2 * T:
        return np.arange(u.size)
    unsigned = np.uint32 if u.dtype == np.int32 else np.uint64
    # lo + T <= u <= hi - T, as one unsigned comparison (u - lo - T, wrapped below 0)
    near = (u - (rng.lo + T)).view(unsigned) > rng.hi - rng.lo - 2 * T
    if rng.pad_lo is not None:
        first = ((rng.pad_lo >> 1) << 1) - T  # the padding band, widened by T
        near |= (u - first).view(unsigned) <= ((rng.pad_hi >> 1) << 1) + 1 + T - first
    return np.flatnonzero(near)


def _unsafe(u: np.ndarray, e: np.ndarray, T: int, rng: Range) -> np.ndarray:
    """Where changing a value ``u`` of error ``e`` could leave the range or make padding:
    such a pixel is never changed."""
    at = _within_reach(u, T, rng)
    bad = np.zeros(u.shape, bool)
    if len(at):
        bad[at] = _unsafe_all(u[at], e[at], T, rng)
    return bad


@dataclass
class _Plan:
    inner: np.ndarray  # expandable error
    new0: np.ndarray  # the new value for bit 0 (a shifted pixel: its new value)
    eligible: np.ndarray  # may change: a candidate outside the zone
    carrier: np.ndarray  # can carry a bit

    @property
    def capacity(self) -> int:
        return int(np.count_nonzero(self.carrier))


def _plan(p: _Pass, T: int, rng: Range) -> _Plan:
    inner = _inner(p.e, T)
    new0 = np.clip(p.e, -T, T)
    new0 += p.u
    eligible = p.valid & ~_unsafe(p.u, p.e, T, rng)
    return _Plan(inner, new0, eligible, eligible & inner)


def _select(key: np.ndarray, eligible: np.ndarray, carrier: np.ndarray, n: int) -> tuple[int, int, np.ndarray]:
    """The shortest prefix of the order holding ``n`` carriers: (V, k, its mask)."""
    if n == 0:
        return 0, 0, np.zeros(len(key), bool)
    V = int(np.partition(np.compress(carrier, key), n - 1)[n - 1])  # the n-th smallest carrier key
    sel = eligible & (key < V)
    need = n - int(np.count_nonzero(carrier & sel))
    eq = np.flatnonzero(eligible & (key == V))
    k = int(np.searchsorted(np.cumsum(carrier[eq]), need)) + 1
    sel[eq[:k]] = True
    return V, k, sel


def _prefix(key: np.ndarray, eligible: np.ndarray, V: int, k: int) -> np.ndarray:
    sel = eligible & (key < V)
    eq = np.flatnonzero(eligible & (key == V))
    if k > len(eq):
        raise Damaged("the prefix of a pass is longer than its candidates")
    sel[eq[:k]] = True
    return sel


def _apply(p: _Pass, plan: _Plan, sel: np.ndarray, bits: np.ndarray, T: int, rng: Range) -> tuple[np.ndarray, bytes]:
    """The pass's new values and its location map: which of the candidates that look
    unsafe after the pass (as extraction sees them) were changed rather than left."""
    at = np.flatnonzero(sel)
    new = p.u.copy()
    new[at] = plan.new0[at] + (bits if len(bits) == len(at) else _spread(plan.carrier[at], bits))
    at = _within_reach(new, T, rng)  # as _unsafe, but the map needs only these
    at = at[p.valid[at]]
    unsafe = at[_unsafe_all(new[at], new[at] - p.pred[at], T, rng)]
    return new, pack_map(np.flatnonzero(sel[unsafe]))


def _spread(carries: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The bits, in order, at the positions that carry one (0 elsewhere)."""
    out = np.zeros(len(carries), bits.dtype)
    out[carries] = bits
    return out


def _eligible(p: _Pass, T: int, landed: np.ndarray, rng: Range) -> np.ndarray:
    """The candidates that were eligible at embedding, from the marked values and the map:
    one that looks safe was (a value left as it was is eligible exactly when it is safe),
    one that looks unsafe was when the map lists it."""
    at = _within_reach(p.u, T, rng)
    at = at[p.valid[at]]
    zone = at[_unsafe_all(p.u[at], p.e[at], T, rng)]
    if len(landed) and landed[-1] >= len(zone):
        raise Damaged("the location map points past the pixels it can name")
    eligible = p.valid.copy()
    eligible[zone] = False
    eligible[zone[landed]] = True
    return eligible


def _invert(p: _Pass, T: int, sel: np.ndarray, rng: Range) -> tuple[np.ndarray, np.ndarray]:
    """(the original values of the pass's candidates, the bits they carried)."""
    at = np.flatnonzero(sel)  # only the prefix changed: the work is on it alone
    ep = p.e[at]
    inner = _inner(ep, 2 * T)
    bits = (ep[inner] & 1).astype(np.uint8)
    e = np.where(inner, ep >> 1, ep - np.where(ep >= 2 * T, T, -T))
    values = p.pred[at] + e
    new = p.u.copy()
    new[at] = values
    if bool(_unsafe(values, e, T, rng).any()):
        raise Damaged("a restored value could not have been changed (near a range end or padding)")
    return new, bits


# -- embedding and extraction -------------------------------------------------------------
@dataclass
class Embedded:
    """The marked planes and what it cost."""

    planes: np.ndarray
    threshold: int
    side_bits: int  # L: the side information's pixels


def _estimate_start(cross: _Pass, n: int, lo_t: int, hi_t: int) -> int:
    """Where the exact search starts: the threshold below the smallest at which twice the
    cross pass's expandable count reaches ``n`` (the dot pass holds about as much)."""
    for T in range(lo_t, hi_t + 1):
        if 2 * np.count_nonzero(_inner(cross.e, T) & cross.valid) >= n:
            return max(lo_t, T - 1)
    return hi_t


class _Layout:
    """The side information's pixels (the first ``L`` non-padding ones), the passes'
    exclusion mask (those pixels), and the planes the passes work on: ``X`` with their
    least significant bits cleared (what every prediction reads of them)."""

    def __init__(self, X: np.ndarray, rng: Range, L: int, clip: bool = True):
        self.clip = clip
        self.side = _side_positions(X.reshape(-1), rng, L)
        self.near = _split(_mask(X.shape, self.side), bool)
        cleared = X.copy()
        cleared.reshape(-1)[self.side] &= ~1
        self.planes = _split(cleared, _dtype(rng))


def _lsb_bits(X: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return (X.reshape(-1)[positions] & 1).astype(np.uint8)


def embed(X0: np.ndarray, payload: bytes, rng: Range, *, min_threshold: int = 1,
          max_threshold: int = 32) -> Embedded:
    """Embed ``payload`` into ``X0`` (integer planes, not changed); NoCapacity when it
    does not fit at any threshold from ``min_threshold`` up to ``max_threshold``."""
    payload_bits = np.unpackbits(np.frombuffer(payload, np.uint8))
    shape = X0.shape
    if shape[1] < MIN_SIZE or shape[2] < MIN_SIZE:
        raise NoCapacity(len(payload_bits), 0, f"the image is smaller than {MIN_SIZE}x{MIN_SIZE} pixels")
    lo, hi = (int(X0.min()), int(X0.max())) if X0.size else (rng.lo, rng.lo)
    if lo < rng.lo or hi > rng.hi:
        raise ValueError("pixel values outside the stored range")
    clip = _clip_needed(lo, hi, max(min_threshold, max_threshold))
    L, layout, cross = SIDE_BITS, None, None
    T = None
    flat = _flat_start(X0, payload_bits, rng, min_threshold, L, clip) if min_threshold <= max_threshold else None
    if flat is not None:
        return flat
    while True:
        if layout is None or len(layout.side) != L:
            layout = _Layout(X0, rng, L, clip)
            if len(layout.side) < L:
                raise NoCapacity(len(payload_bits) + L, 0, "no room for the side information")
            ph0 = layout.planes
            cross = _pass(ph0, shape, 0, rng, layout.near, clip)
            if T is None:
                T = _estimate_start(cross, len(payload_bits) + L, min_threshold, max_threshold)
        if T > max_threshold:
            break
        done = _try(ph0, shape, cross, T, rng, layout, payload_bits, _lsb_bits(X0, layout.side))
        if done is None:
            T += 1
            continue
        ph, aux = done
        aux_bits = np.unpackbits(np.frombuffer(aux, np.uint8))
        if len(aux_bits) > L:
            L = len(aux_bits) + 16
            continue
        return Embedded(_marked(X0, ph, layout.side, aux_bits, L), T, L)
    tried = {min_threshold, max_threshold} | {t for t in (1, 2, 4, 8, 16, 32, 64) if min_threshold < t < max_threshold}
    available = max(capacity(X0, rng, t, L) for t in tried)
    raise NoCapacity(len(payload_bits) + L, available,
                     f"reversible, thresholds up to {max_threshold}; {L} of the bits needed are side information")


def _marked(X0: np.ndarray, ph: dict, side: np.ndarray, aux_bits: np.ndarray, L: int) -> np.ndarray:
    """``X0`` with the passes' values ``ph`` and the side information's bits."""
    X = X0.copy()
    _merge(ph, X)
    flat = X.reshape(-1)
    bits = np.zeros(L, X.dtype)
    bits[:len(aux_bits)] = aux_bits
    flat[side] = (flat[side] & ~1) | bits
    return X


# -- the flat start: the same result from the first rows alone ------------------------------
# When a pass's bits all fit candidates of variance 0 (four equal neighbours: CT air and
# background, a flat field) of its first phase, its prefix is (V = 0, k): the first k
# eligible flat candidates of that phase, which lie in the first rows of the first plane.
# Nothing below them changes; the predictions, variances, eligibility and location-map
# ranks of those rows depend only on the rows down to the next one; and the search's first
# try (the smallest threshold, half the bits in each pass) is then the one that fits. So
# the first rows alone give the same marked pixels and side information as the whole
# planes (tests/plugins/test_stego_pee.py compares the two), and the rows below are never
# read. (Extraction gains nothing from the same: its two passes, over the rows both
# prefixes reach, cost about what the whole planes cost; it reads the whole planes.) How many
# rows: an estimate from the flat neighbourhoods of the first plane (:class:`_Profile`),
# a pass's own count deciding; a pass the estimate leaves short tries more rows, and where
# the rows run out the whole planes are used.
_FLAT_MARGIN = 4  # rows beyond the estimate: eligibility (range ends, side information) is not in it
_FLAT_TRIES = 3


class _Profile:
    """Per target row of a pass's first phase (row 2i, column 2j + ``co``) of the plane
    ``P``, the cumulative count of targets with four equal neighbours, an expandable error at
    threshold ``T`` and no padding value: the estimate of where the flat prefix ends,
    computed in bands of rows as far down as it is asked for."""

    BAND = 64  # target rows
    #: how far down it looks: first rows beyond this are too many to gain from (and an image
    #: without flat regions costs a look at them only)
    SHARE = 0.75

    def __init__(self, P: np.ndarray, rng: Range, co: int, T: int):
        self.P, self.rng, self.co, self.T = P, rng, co, T
        self.total = int(self.SHARE * max(0, (P.shape[0] - 2) // 2))  # of target rows 2, 4, ..., rows - 2
        self.cumulative = np.zeros(0, np.int64)

    def _more(self) -> bool:
        done = len(self.cumulative)
        if done >= self.total:
            return False
        P, cols, c0 = self.P, self.P.shape[1], 2 - self.co
        r = slice(2 + 2 * done, 2 + 2 * min(self.total, done + self.BAND), 2)  # this band's target rows
        rows = lambda d: slice(r.start + d, r.stop + d, 2)  # noqa: E731
        u, up = P[r, c0:cols - 1:2], P[rows(-1), c0:cols - 1:2]
        flat = up == P[rows(1), c0:cols - 1:2]
        flat &= up == P[r, c0 - 1:cols - 2:2]
        flat &= up == P[r, c0 + 1:cols:2]
        flat &= _inner(u - up, self.T)
        pad = self.rng.padding(u)
        if pad is not None:
            flat &= ~pad
        start = int(self.cumulative[-1]) if done else 0
        self.cumulative = np.concatenate([self.cumulative, start + np.cumsum(np.count_nonzero(flat, axis=1))])
        return True

    def within(self, H: int) -> int:
        """The count in the first ``H`` rows (their target rows, so far computed)."""
        i = min(len(self.cumulative), max(0, (H - 2) // 2)) - 1
        return int(self.cumulative[i]) if i >= 0 else 0

    def reach(self, count: int) -> int | None:
        """The rows (even, with the margin) that hold ``count`` by the estimate; None when
        the plane does not."""
        while not len(self.cumulative) or self.cumulative[-1] < count:
            if not self._more():
                return None
        i = int(np.searchsorted(self.cumulative, count))
        H = 2 * i + 4 + _FLAT_MARGIN  # target row 2i + 2 and the row below it
        return H + H % 2


class _FlatPlane:
    """The first plane with the side information's least significant bits cleared (what
    the passes read), and its first rows as the passes' phases."""

    def __init__(self, X: np.ndarray, rng: Range, L: int, clip: bool = True):
        self.rng, self.dtype, self.clip = rng, _dtype(rng), clip
        self.side = _side_positions(X[0].reshape(-1), rng, L)
        self.Y = np.array(X[0], dtype=self.dtype, order="C")
        self.Y.reshape(-1)[self.side] &= ~1

    def part(self, H: int) -> tuple[dict, dict, tuple]:
        part = self.Y[None, :H]
        return _split(part, self.dtype), _split(_mask(part.shape, self.side), bool), part.shape

    def put(self, ph: dict, H: int) -> None:
        _merge(ph, self.Y[None, :H])

    def planes(self, X: np.ndarray, side_bits: np.ndarray) -> np.ndarray:
        """``X`` with this first plane and ``side_bits`` in the side information's pixels."""
        out = X.copy()
        out[0] = self.Y
        flat = out.reshape(-1)
        flat[self.side] = (flat[self.side] & ~1) | side_bits
        return out


def _flat_pass(fp: _FlatPlane, parity: int, need: int, T: int) -> tuple | None:
    """(phases, shape, pass, plan, rows) of the first rows that hold ``need`` flat carriers
    of the pass at threshold ``T``; None when the rows run out first."""
    rows = fp.Y.shape[0]
    profile = _Profile(fp.Y, fp.rng, parity, T)
    H = profile.reach(need)
    for _ in range(_FLAT_TRIES):
        if H is None or H >= rows - 1:
            return None
        ph, near, shape = fp.part(H)
        p = _pass(ph, shape, parity, fp.rng, near, fp.clip)
        plan = _plan(p, T, fp.rng)
        found = p.flat(plan.carrier)
        if found >= need:
            return ph, shape, p, plan, H
        H = profile.reach(profile.within(H) + need - found)  # the rest from the rows below
    return None


def _flat_start(X0: np.ndarray, payload_bits: np.ndarray, rng: Range, T: int, L: int, clip: bool = True
                ) -> Embedded | None:
    """The embedding at threshold ``T`` with ``L`` side-information pixels, from the first
    rows alone; None when the first rows do not hold it as a flat start."""
    n = L + len(payload_bits)
    n1 = -(-n // 2)
    fp = _FlatPlane(X0, rng, L, clip)
    if len(fp.side) < L:
        return None
    stream = np.concatenate([_lsb_bits(X0[0], fp.side), payload_bits]).astype(fp.dtype)
    passes = []
    for parity, bits in ((0, stream[:n1]), (1, stream[n1:])):
        got = _flat_pass(fp, parity, len(bits), T)
        if got is None:
            return None
        ph, shape, p, plan, H = got
        V, k, sel = _select(p.key, plan.eligible, plan.carrier, len(bits))
        new, packed = _apply(p, plan, sel, bits, T, rng)
        _write(ph, shape, parity, new)
        fp.put(ph, H)
        passes.append((V, k, packed))
    aux = Aux(T, L, len(payload_bits) // 8, n1, tuple(passes)).encode()
    aux_bits = np.unpackbits(np.frombuffer(aux, np.uint8))
    if len(aux_bits) > L:
        return None  # the full search grows L
    side_bits = np.zeros(L, X0.dtype)
    side_bits[:len(aux_bits)] = aux_bits
    return Embedded(fp.planes(X0, side_bits), T, L)


def _try(ph0, shape, cross, T, rng, layout, payload_bits, side_lsb):
    L = len(layout.side)
    n = L + len(payload_bits)
    plan1 = _plan(cross, T, rng)
    cap1 = plan1.capacity
    if 3 * cap1 < n:  # far from fitting (the dot pass rarely holds twice the cross pass's bits)
        return None
    stream = np.concatenate([side_lsb, payload_bits]).astype(cross.u.dtype)
    n1, tried = min(cap1, -(-n // 2)), set()
    while n1 not in tried:  # about half in each pass; when the dot pass holds less, more in the cross pass
        tried.add(n1)
        V1, k1, sel1 = _select(cross.key, plan1.eligible, plan1.carrier, n1)
        new1, map1 = _apply(cross, plan1, sel1, stream[:n1], T, rng)
        ph = {q: a.copy() for q, a in ph0.items()}
        _write(ph, shape, 0, new1)
        dot = _pass(ph, shape, 1, rng, layout.near, layout.clip)
        plan2 = _plan(dot, T, rng)
        cap2 = plan2.capacity
        if cap2 >= n - n1:
            V2, k2, sel2 = _select(dot.key, plan2.eligible, plan2.carrier, n - n1)
            new2, map2 = _apply(dot, plan2, sel2, stream[n1:], T, rng)
            _write(ph, shape, 1, new2)
            aux = Aux(T, L, len(payload_bits) // 8, n1, ((V1, k1, map1), (V2, k2, map2)))
            return ph, aux.encode()
        more = min(cap1, n - cap2 + 64)
        n1 = more if more > n1 and more not in tried else min(cap1, n)
    return None


def capacity(X0: np.ndarray, rng: Range, T: int, side_bits: int = SIDE_BITS) -> int:
    """Bits the two passes hold at threshold ``T`` (the cross pass filled first), with
    ``side_bits`` pixels kept for the side information; its L bits are counted in."""
    shape = X0.shape
    if shape[1] < MIN_SIZE or shape[2] < MIN_SIZE:
        return 0
    layout = _Layout(X0, rng, side_bits)
    ph = layout.planes
    cross = _pass(ph, shape, 0, rng, layout.near)
    plan1 = _plan(cross, T, rng)
    _, _, sel1 = _select(cross.key, plan1.eligible, plan1.carrier, plan1.capacity)
    new1, _ = _apply(cross, plan1, sel1, np.zeros(plan1.capacity, cross.u.dtype), T, rng)
    _write(ph, shape, 0, new1)
    return plan1.capacity + _plan(_pass(ph, shape, 1, rng, layout.near), T, rng).capacity


def read_side_information(Xm: np.ndarray, rng: Range) -> Aux:
    """The side information (NotEmbedded when there is none, Damaged when it is cut)."""
    if Xm.shape[1] < MIN_SIZE or Xm.shape[2] < MIN_SIZE:
        raise NotEmbedded("the image is too small to carry anything")
    flat = Xm.reshape(-1)
    head = np.packbits(_lsb_bits(Xm, _side_positions(flat, rng, 8 * _HEAD))).tobytes()
    L = Aux.side_bits(head)
    if L > flat.size:
        raise Damaged("the side information claims more pixels than there are")
    side = _side_positions(flat, rng, L)
    if len(side) < L:
        raise Damaged("the side information claims more pixels than there are")
    return Aux.decode(np.packbits(_lsb_bits(Xm, side)).tobytes())


def extract(Xm: np.ndarray, rng: Range) -> tuple[bytes, np.ndarray, int]:
    """(the payload, the original planes, the threshold) from marked planes ``Xm`` (not
    changed). NotEmbedded when they carry nothing, Damaged when they disagree with it."""
    aux = read_side_information(Xm, rng)
    shape = Xm.shape
    layout = _Layout(Xm, rng, aux.L, _clip_needed(int(Xm.min()), int(Xm.max()), aux.T))
    ph = layout.planes
    n = aux.L + 8 * aux.length
    if aux.n1 > n:
        raise Damaged("the side information is inconsistent")
    bits = {}
    for parity, (V, k, packed), count in ((1, aux.passes[1], n - aux.n1), (0, aux.passes[0], aux.n1)):
        p = _pass(ph, shape, parity, rng, layout.near, layout.clip)
        sel = _prefix(p.key, _eligible(p, aux.T, unpack_map(packed, len(p.u)), rng), V, k)
        new, got = _invert(p, aux.T, sel, rng)
        if len(got) != count:
            raise Damaged("a pass carries another number of bits than its side information says")
        _write(ph, shape, parity, new)
        bits[parity] = got
    X = Xm.copy()
    _merge(ph, X)
    flat = X.reshape(-1)
    stream = np.concatenate([bits[0], bits[1]])
    flat[layout.side] = (flat[layout.side] & ~1) | stream[:aux.L]
    return np.packbits(stream[aux.L:]).tobytes(), X, aux.T


def distortion(before: np.ndarray, after: np.ndarray, rng: Range) -> dict:
    """Max absolute change and PSNR against the image's own dynamic range (max - min of
    its values, padding aside), not against 2^BitsStored - 1."""
    if not before.size:
        return {"max_abs_change": 0, "psnr_db": None, "dynamic_range": 0, "pixels_changed": 0}
    span = _content_span(before, rng)
    at = np.flatnonzero(before != after)  # few: the pixels a carrier changed
    changed = after.reshape(-1)[at].astype(np.int64) - before.reshape(-1)[at]
    mse = float(np.dot(changed, changed)) / before.size
    psnr = None if mse == 0 else round(10 * math.log10(max(span, 1) ** 2 / mse), 2)
    return {"max_abs_change": int(np.abs(changed).max()) if changed.size else 0, "psnr_db": psnr,
            "dynamic_range": span, "pixels_changed": int(changed.size)}


def _content_span(values: np.ndarray, rng: Range) -> int:
    """max - min of the values that are not padding (0 when all are): a masked reduction
    only for an end that is a padding value."""
    lo, hi = int(values.min()), int(values.max())
    if rng.pad_lo is None:
        return hi - lo
    pad = rng.padding(np.array([lo, hi], values.dtype))
    if not pad.any():
        return hi - lo
    content = ~rng.padding(values)
    if not content.any():
        return 0
    if pad[0]:
        lo = int(values.min(where=content, initial=rng.hi))
    if pad[1]:
        hi = int(values.max(where=content, initial=rng.lo))
    return hi - lo
