"""Cipher-image statistics of the pixel-scope output, next to their ideal values.

What image-encryption papers report (../shared/REFERENCE.md, "Cipher-image statistics"):
NPCR and UACI between two cipher images, the entropy of the value histogram, and the
correlation of adjacent pixels. AES-GCM meets them all, and so do broken chaotic
ciphers: they say the output looks like noise, nothing about whether it can be undone
without the key or changed unnoticed. That is what AES-GCM's key and tag are for, so
these figures are reported for comparison with the literature, not as a security claim.

Ideal values are computed for each image's size and bit depth: NPCR and UACI of two
independent uniform images exactly, their acceptance bounds after Wu, Noonan & Agaian
(2011), and the *expected plug-in* entropy of a uniform image of that many pixels
(below the bit depth: at 512x512 16-bit there are only 4 samples per histogram bin).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

DIRECTIONS = ("horizontal", "vertical", "diagonal")


def _pair(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images of different shapes: {a.shape} and {b.shape}")
    return a.astype(np.int64), b.astype(np.int64)


def npcr(a, b) -> float:
    """Number of Pixels Change Rate, %: the share of positions where ``a`` and ``b`` differ."""
    a, b = _pair(a, b)
    return 100.0 * float(np.count_nonzero(a != b)) / a.size


def uaci(a, b, bits: int) -> float:
    """Unified Average Changing Intensity, %: the mean absolute difference over the
    largest possible one (2^bits - 1)."""
    a, b = _pair(a, b)
    return 100.0 * float(np.abs(a - b).mean()) / (2 ** bits - 1)


def entropy(img) -> float:
    """Shannon entropy (bits per pixel) of the histogram of the values of ``img``."""
    _, counts = np.unique(np.asarray(img).ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0 for a constant image


def correlation(img, direction: str) -> float:
    """Pearson correlation of all pairs of adjacent pixels in ``direction`` (nan for a
    constant image)."""
    x = np.asarray(img, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("a two-dimensional image (one frame, one sample) is needed")
    first, second = {
        "horizontal": (x[:, :-1], x[:, 1:]),
        "vertical": (x[:-1, :], x[1:, :]),
        "diagonal": (x[:-1, :-1], x[1:, 1:]),
    }[direction]
    a, b = first.ravel() - first.mean(), second.ravel() - second.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den else float("nan")


# --- ideal values ---------------------------------------------------------------------------

def ideal_npcr(bits: int) -> float:
    return 100.0 * (1 - 2.0 ** -bits)


def ideal_uaci(bits: int) -> float:
    """E|X-Y| / (L-1) for X, Y independent and uniform over L = 2^bits values: (L+1)/(3L)."""
    levels = 2 ** bits
    return 100.0 * (levels + 1) / (3 * levels)


def npcr_critical(bits: int, pixels: int, alpha: float = 0.05) -> float:
    """The NPCR below which the hypothesis 'as random as it gets' is rejected at ``alpha``."""
    f = 2 ** bits - 1
    sigma = math.sqrt(f / pixels) / (f + 1)
    return 100.0 * (f / (f + 1) - NormalDist().inv_cdf(1 - alpha) * sigma)


def uaci_interval(bits: int, pixels: int, alpha: float = 0.05) -> tuple[float, float]:
    """The UACI interval outside which that hypothesis is rejected at ``alpha``."""
    f = 2 ** bits - 1
    mu = (f + 2) / (3 * f + 3)
    sigma = math.sqrt((f + 2) * (f * f + 2 * f + 3) / (18 * (f + 1) ** 2 * pixels * f))
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return 100.0 * (mu - z * sigma), 100.0 * (mu + z * sigma)


def ideal_entropy(bits: int, pixels: int) -> float:
    """The expected plug-in entropy of ``pixels`` independent values uniform over 2^bits:
    -L * E[(c/n) log2(c/n)], the count c of one value being Binomial(n, 1/L)."""
    levels, n = 2 ** bits, pixels
    p = 1.0 / levels
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    lo, hi = max(1, int(mean - 12 * sd)), min(n, int(mean + 12 * sd) + 1)
    total = 0.0
    for c in range(lo, hi + 1):
        log_pmf = (math.lgamma(n + 1) - math.lgamma(c + 1) - math.lgamma(n - c + 1)
                   + c * math.log(p) + (n - c) * math.log1p(-p))
        total += math.exp(log_pmf) * (c / n) * math.log2(c / n)
    return -levels * total


def ideal(bits: int, pixels: int) -> dict:
    lo, hi = uaci_interval(bits, pixels)
    return {"npcr_pct": round(ideal_npcr(bits), 6), "npcr_critical_pct": round(npcr_critical(bits, pixels), 4),
            "uaci_pct": round(ideal_uaci(bits), 6), "uaci_interval_pct": [round(lo, 4), round(hi, 4)],
            "entropy_bits": round(ideal_entropy(bits, pixels), 4),
            **{f"correlation_{d}": 0.0 for d in DIRECTIONS},
            "correlation_bound": round(3 / math.sqrt(pixels), 4)}


def image_stats(img) -> dict:
    """Entropy and adjacent-pixel correlations of one image."""
    return {"entropy_bits": round(entropy(img), 4),
            **{f"correlation_{d}": round(correlation(img, d), 5) for d in DIRECTIONS}}


def compare(first, second, bits: int) -> dict:
    """NPCR/UACI between two cipher images of the same plain image (fresh keys)."""
    return {"npcr_pct": round(npcr(first, second), 6), "uaci_pct": round(uaci(first, second, bits), 6)}
