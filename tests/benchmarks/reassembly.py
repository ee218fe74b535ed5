"""Reassembling shuffled pieces, for the attacks on ``scramble`` (:mod:`.attacks`).

- :func:`solve_jigsaw`: square tiles back on their grid from their edges (prediction-based
  dissimilarity, Pomeranz et al. 2011, over the second-best alternative; Kruskal-style
  merging of the cheapest pairs into clusters that fit the grid, after Gallagher 2012;
  then greedy filling around the largest cluster);
- :func:`arrangement`: shuffled positions back on their grid from many observations of
  their values (positions whose values differ least are neighbours; Isomap of
  scikit-learn, assignment to the grid by scipy's ``linear_sum_assignment``, polished by
  pairwise swaps).

Neither knows anything of the key; both give their answer right up to the grid's
symmetries (:func:`dihedral`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def _tiles(a: np.ndarray, block: int) -> np.ndarray:
    """(rows, columns) -> (blocks, B, B) in raster order."""
    r, c = a.shape
    return a.reshape(r // block, block, c // block, block).transpose(0, 2, 1, 3).reshape(-1, block, block)


def _untile(t: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    down, across = grid
    b = t.shape[1]
    return t.reshape(down, across, b, b).transpose(0, 2, 1, 3).reshape(down * b, across * b)


def _dissimilarity(first: np.ndarray, last: np.ndarray, inner_first: np.ndarray, inner_last: np.ndarray):
    """D[i, j]: cost of tile j right after tile i along an axis, from the edges (``last``
    of i, ``first`` of j) and the rows next to them: each side predicts the other's edge
    by linear extrapolation (prediction-based compatibility), summed squared error."""
    pred_j = 2 * last - inner_last  # (n, B): i's prediction of j's first line
    pred_i = 2 * first - inner_first  # j's prediction of i's last line
    d = ((pred_j[:, None, :] - first[None, :, :]) ** 2).sum(-1)
    d += ((last[:, None, :] - pred_i[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return d


def solve_jigsaw(tiles: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Reassemble ``tiles`` (n, B, B) on a ``grid`` (down, across): the largest cluster that
    :func:`merge_clusters` builds from the cheapest pairs, then, repeatedly, the free slot
    with the most placed neighbours (ties: the lowest cost) gets the unplaced tile that fits
    them best (:func:`place`). Returns ``placement`` (down*across,): the tile put at each
    slot (raster order)."""
    t = tiles.astype(np.float64)
    n = len(t)
    down, across = grid
    if n != down * across:
        raise ValueError("as many tiles as grid slots are needed")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    # LR[i, j]: j to the right of i; TB[i, j]: j below i
    lr = _dissimilarity(t[:, :, 0], t[:, :, -1], t[:, :, 1], t[:, :, -2])
    tb = _dissimilarity(t[:, 0, :], t[:, -1, :], t[:, 1, :], t[:, -2, :])
    lr, tb = _confidence(lr), _confidence(tb)
    return place(lr, tb, grid, merge_clusters(lr, tb, grid))


def _confidence(d: np.ndarray) -> np.ndarray:
    """Each pair cost over the second-best alternative of either piece (Gallagher's
    confidence): a pair that is clearly better than the alternatives costs little."""
    n = len(d)
    second_row = np.sort(d, axis=1)[:, 1:2] if n > 2 else np.ones((n, 1))
    second_col = np.sort(d, axis=0)[1:2, :] if n > 2 else np.ones((1, n))
    return d / (np.minimum(second_row, second_col) + 1e-9)


def place(lr: np.ndarray, tb: np.ndarray, grid: tuple[int, int],
          start: dict[tuple[int, int], int] | None = None) -> np.ndarray:
    """The greedy placer of :func:`solve_jigsaw` on given costs (``lr[i, j]``: piece j right
    of piece i; ``tb[i, j]``: j below i), growing ``start`` (slot -> piece, relative
    coordinates) when given, else the piece with the most confident neighbour."""
    n = len(lr)
    down, across = grid
    placed = np.zeros(n, dtype=bool)
    if start:
        pos = dict(start)
        placed[list(pos.values())] = True
    else:
        best = np.minimum(lr.min(1), tb.min(1))
        seed = int(np.argmin(best))
        pos = {(0, 0): seed}
        placed[seed] = True
    ys, xs = [y for y, _ in pos], [x for _, x in pos]
    box = [min(ys), max(ys), min(xs), max(xs)]  # min row, max row, min column, max column

    def fits(y, x):
        return (max(box[1], y) - min(box[0], y) < down) and (max(box[3], x) - min(box[2], x) < across)

    while not placed.all():
        best_slot, best_key = None, None
        free = ~placed
        slots = {(y + dy, x + dx) for (y, x) in pos for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))}
        for (y, x) in slots:
            if (y, x) in pos or not fits(y, x):
                continue
            cost = np.zeros(n)
            k = 0
            if (y, x - 1) in pos:
                cost += lr[pos[(y, x - 1)]]
                k += 1
            if (y, x + 1) in pos:
                cost += lr[:, pos[(y, x + 1)]]
                k += 1
            if (y - 1, x) in pos:
                cost += tb[pos[(y - 1, x)]]
                k += 1
            if (y + 1, x) in pos:
                cost += tb[:, pos[(y + 1, x)]]
                k += 1
            cost = np.where(free, cost / k, np.inf)
            j = int(np.argmin(cost))
            key = (-k, cost[j])
            if best_key is None or key < best_key:
                best_key, best_slot = key, ((y, x), j)
        (y, x), j = best_slot
        pos[(y, x)] = j
        placed[j] = True
        box = [min(box[0], y), max(box[1], y), min(box[2], x), max(box[3], x)]
    placement = np.empty(n, dtype=np.int64)
    for (y, x), j in pos.items():
        placement[(y - box[0]) * across + (x - box[2])] = j
    return placement


def merge_clusters(lr: np.ndarray, tb: np.ndarray, grid: tuple[int, int], k: int = 3) -> dict[tuple[int, int], int]:
    """Kruskal-style reassembly (after Gallagher 2012): each piece's ``k`` cheapest right and
    lower neighbours, cheapest first, join two clusters when the pieces do not overlap and
    the union still fits the grid. Returns the largest cluster (slot -> piece)."""
    n = len(lr)
    down, across = grid
    edges = []
    for cost, dy, dx in ((lr, 0, 1), (tb, 1, 0)):
        nearest = np.argsort(cost, axis=1)[:, :k]
        for i in range(n):
            for j in nearest[i]:
                if np.isfinite(cost[i, j]):
                    edges.append((float(cost[i, j]), i, int(j), dy, dx))
    edges.sort()
    owner = list(range(n))
    where = [(0, 0)] * n  # each piece's slot in its cluster's frame
    cells: dict[int, dict[tuple[int, int], int]] = {i: {(0, 0): i} for i in range(n)}
    for _, i, j, dy, dx in edges:
        a, b = owner[i], owner[j]
        if a == b:
            continue
        (yi, xi), (yj, xj) = where[i], where[j]
        sy, sx = yi + dy - yj, xi + dx - xj  # b's frame moved into a's
        if len(cells[b]) > len(cells[a]):  # move the smaller cluster
            a, b, sy, sx = b, a, -sy, -sx
        moved = {(y + sy, x + sx): p for (y, x), p in cells[b].items()}
        if any(c in cells[a] for c in moved):
            continue
        ys = [y for y, _ in cells[a]] + [y for y, _ in moved]
        xs = [x for _, x in cells[a]] + [x for _, x in moved]
        if max(ys) - min(ys) >= down or max(xs) - min(xs) >= across:
            continue
        cells[a].update(moved)
        for c, p in moved.items():
            owner[p], where[p] = a, c
        del cells[b]
    return max(cells.values(), key=len)



# --- the arrangement of shuffled positions ----------------------------------------------------

def dihedral(block: int) -> list[np.ndarray]:
    """The 8 rotations / reflections of a B x B block, as index arrays over raster order."""
    g = np.arange(block * block).reshape(block, block)
    out = []
    for k in range(4):
        r = np.rot90(g, k)
        out += [r.ravel(), r.T.ravel()]
    return out


def _order_cost(arr: np.ndarray, d: np.ndarray, shape) -> float:
    h, w = (shape, shape) if isinstance(shape, int) else shape
    g = arr.reshape(h, w)
    return float(d[g[:, :-1], g[:, 1:]].sum() + d[g[:-1], g[1:]].sum())


def _snap(coords: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """2-D coordinates of B*B points -> the slot of the B x B grid each takes: the
    assignment of points to slots with the least total squared distance (scipy's
    ``linear_sum_assignment``). Returns the point at each slot."""
    from scipy.optimize import linear_sum_assignment

    points, slots = linear_sum_assignment(((coords[:, None, :] - grid[None, :, :]) ** 2).sum(-1))
    arr = np.empty(len(grid), dtype=np.int64)
    arr[slots] = points
    return arr


def _refine(arr: np.ndarray, d: np.ndarray, shape, passes: int = 4) -> np.ndarray:
    """Pairwise swaps that lower the arrangement's cost, until none does (or ``passes``)."""
    h, w = (shape, shape) if isinstance(shape, int) else shape
    arr = arr.copy()
    n = h * w
    nbrs = [[(y + dy) * w + x + dx for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))
             if 0 <= y + dy < h and 0 <= x + dx < w] for y in range(h) for x in range(w)]

    def local(slot: int, piece: int) -> float:
        return float(sum(d[piece, arr[m]] for m in nbrs[slot]))

    for _ in range(passes):
        improved = False
        for a in range(n):
            for b in range(a + 1, n):
                pa, pb = arr[a], arr[b]
                before = local(a, pa) + local(b, pb)
                arr[a], arr[b] = pb, pa
                after = local(a, pb) + local(b, pa)
                if after < before - 1e-12:
                    improved = True
                else:
                    arr[a], arr[b] = pa, pb
        if not improved:
            break
    return arr


def arrangement(samples: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Lay ``samples`` (n, h*w: n observations of h*w shuffled positions) out on an h x w
    grid so that positions whose (per-observation normalised) values differ least are
    neighbours: Isomap (scikit-learn) in 2-D, whitened and assigned to the grid
    (:func:`_snap`) at the angle and Isomap neighbourhood that make neighbours cheapest,
    polished by pairwise swaps. Returns the position put at each slot, right up to the
    grid's symmetries."""
    from sklearn.manifold import Isomap

    h, w = shape
    m = h * w
    z = np.asarray(samples, dtype=np.float64)
    z = (z - z.mean(1, keepdims=True)) / (z.std(1, keepdims=True) + 1e-9)
    d = np.zeros((m, m))
    for at in range(0, len(z), 128):
        zz = z[at:at + 128]
        d += np.abs(zz[:, :, None] - zz[:, None, :]).sum(0)
    d /= max(len(z), 1)
    grid = np.stack(np.divmod(np.arange(m), w)[::-1], axis=1).astype(np.float64)  # (x, y) of each slot
    grid = (grid - grid.mean(0)) / grid.std(0)
    best = None
    for k in (4, 6, 8, 10):
        if k >= m:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emb = Isomap(n_neighbors=k, n_components=2, metric="precomputed").fit_transform(d)
        u, _, _ = np.linalg.svd(emb - emb.mean(0), full_matrices=False)
        emb = u * math.sqrt(m)  # whitened: unit variance along both axes, like the grid
        for deg in range(0, 180 if h != w else 90, 3):
            th = np.deg2rad(deg)
            arr = _snap(emb @ np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]).T, grid)
            cost = _order_cost(arr, d, shape)
            if best is None or cost < best[0]:
                best = (cost, arr)
    return _refine(best[1], d, shape)
