"""The long fuzz sweep, outside the default test suite:

    .venv/bin/python -m tests.fuzz --count 2000 --seed 7      # ~10-20 min on 2 cores

It starts a real ``pacsguard run``, a dcmtk storescp sink, sends the mutations through a
watched folder and over the network while C-ECHO is asked every half second, and prints
what happened: how many were acknowledged, how they ended, the most frequent quarantine
reasons, the worker's peak memory. Exit 1 when a check fails (an object that did not end
delivered or quarantined, a failed C-ECHO, a reason that is not a sentence, memory over
the bound, the good object afterwards not delivered).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz.mutations import mutations
from tests.fuzz.sweep import run_sweep

RSS_BOUND_MIB = 600


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="mutations to send (default 2000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--network-share", type=float, default=0.3, help="fraction sent over DICOM (default 0.3)")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    t0 = time.monotonic()
    muts = mutations(args.seed, args.count)
    print(f"{len(muts)} mutations made in {time.monotonic() - t0:.1f} s (seed {args.seed})")
    with tempfile.TemporaryDirectory(prefix="pacsguard-fuzz-") as tmp:
        work = args.keep or Path(tmp)
        report = run_sweep(work, muts, network_share=args.network_share,
                           settle_timeout=max(300.0, args.count * 0.5))
    print(report.summary())
    problems = []
    if report.echo_failures:
        problems.append(f"{len(report.echo_failures)} C-ECHO failures: {report.echo_failures[:3]}")
    if report.unreadable_reasons:
        problems.append(f"reasons that are not sentences: {sorted(set(report.unreadable_reasons))[:5]}")
    if report.worker_rss_peak_mib > RSS_BOUND_MIB:
        problems.append(f"worker RSS {report.worker_rss_peak_mib:.0f} MiB over {RSS_BOUND_MIB}")
    if not report.good_delivered:
        problems.append("the good object sent afterwards was not delivered")
    for p in problems:
        print(f"FAIL: {p}")
    print(f"done in {time.monotonic() - t0:.0f} s: {'FAIL' if problems else 'OK'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
