"""Paths and small helpers shared by the harness modules.

``tests/`` goes on ``sys.path`` here so the harness can use the test peers
(``tests/peers.py``) and the corpus generator (``tests/conftest.py``) as plain modules.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent
REPO_ROOT = TESTS_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

os.environ.setdefault("TCP_NODELAY", "1")  # dcmtk tools stall on delayed ACKs without it

import peers  # noqa: E402  (tests/peers.py)

MB = 1e6


def now() -> float:
    """Wall-clock seconds (the clock file mtimes use, so they compare directly)."""
    return time.time()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, q: float):
    """Linear-interpolated percentile (q in 0..100) of ``values``; None when empty."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
