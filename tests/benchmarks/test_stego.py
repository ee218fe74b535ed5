"""The steganography benchmark's histogram-shifting baseline (Ni et al. 2006) round-trips
and changes no pixel by more than 1, and its capacity table meets the published PEE
figures on CT_small. Behaviour, not speed: a few seconds, no service."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmarks import stego


@pytest.mark.parametrize("seed", range(6))
def test_histogram_shifting_round_trip(seed):
    rng = np.random.default_rng(seed)
    if seed % 2:
        X = np.clip(rng.normal(100, 3, (40, 50)), 0, 255).astype(np.int32)
    else:  # every value in use: the zero value has pixels of its own, recorded and put back
        fill = np.full(2048, 100)
        fill[:seed * 4] = 101  # seed 0: the zero value is next to the peak; 2, 4: one farther
        X = rng.permutation(np.concatenate([np.arange(256).repeat(8), fill])).reshape(64, 64)
        X = X.astype(np.int32)
    peak, zero, cap = stego.hs_choose(X, 0, 255)
    assert cap > 0 and (seed % 2 or (X == zero).any())
    bits = rng.integers(0, 2, cap, dtype=np.uint8)
    Y, side = stego.hs_embed(X, bits, 0, 255)
    assert int(np.abs(Y.astype(np.int64) - X).max()) == 1 and (Y != X).any()
    back, got = stego.hs_extract(Y, side, cap)
    assert np.array_equal(back, X) and np.array_equal(got, bits)
    with pytest.raises(ValueError):
        stego.hs_embed(X, np.zeros(cap + 1, np.uint8), 0, 255)


def test_histogram_shifting_at_the_range_ends_and_around_padding():
    X = np.full((16, 16), 255, np.int32)
    X[0, :4] = 254
    Y, side = stego.hs_embed(X, np.ones(8, np.uint8), 0, 255)  # the peak at the top: shifts down
    assert Y.min() >= 0 and Y.max() <= 255
    back, got = stego.hs_extract(Y, side, 8)
    assert np.array_equal(back, X) and got.tolist() == [1] * 8
    P = np.array([[5, 5, 5, 6, 7, 9, 9, 9, 9]], np.int32)  # 9 is padding: the most frequent, never used
    peak, zero, _ = stego.hs_choose(P, 0, 255, padding=(9, 9))
    assert peak == 5 and not min(peak, zero) <= 9 <= max(peak, zero)


def test_capacity_table_meets_the_published_figures():
    rows = stego.capacity_table(names=("CT_small.dcm",), thresholds=(1, 4, 16))
    judged = [r for r in rows if "meets" in r]
    assert len(judged) == 3 and all(r["meets"] == "yes" for r in judged), judged
    hs = next(r for r in rows if r["method"].startswith("histogram"))
    assert hs["max_abs_change"] == 1 and 0 < hs["bpp"] < judged[0]["bpp"]
