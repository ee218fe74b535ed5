"""kill -9 in the middle of a burst, restart on the same config: nothing is lost.

500 small images are moved into the watched folder at once; the service is killed with
SIGKILL while it is still taking, processing and delivering them, then started again.
Every object must arrive, byte-identical (the route has no stages). Delivery is
at-least-once: re-sends are allowed only for the few deliveries in flight at the kill.

Two destinations get every object: a folder destination (a re-send overwrites the same
path, so its file count is exact) and the test-only ``e2e-journal`` destination plugin
(tests/e2e/plugin_site), which journals every send, so re-sends can be counted.
"""

from __future__ import annotations

import collections
import os
import time

from e2e_util import folder_config, make_image, pid_alive, sha256, sop_uid, visible_files
from peers import wait_for

N = 500


def test_kill9_mid_burst_loses_nothing(tmp_path, service, journal_plugin):
    kill_after_received = 150  # of 500: some delivered, some in the pipeline, most still in the folder
    gen = tmp_path / "gen"
    expected = {}
    for i in range(N):
        path = gen / f"img{i:04d}.dcm"
        sop = make_image(path, size=64, instance=i + 1)
        expected[sop] = sha256(path)
    out, jout, journal = tmp_path / "out", tmp_path / "jout", tmp_path / "journal.txt"
    cfg = folder_config(
        tmp_path,
        destinations={
            # fsync guards against power loss; a killed process leaves the page cache intact
            "folder": {"type": "folder", "path": str(out), "template": "{SOPInstanceUID}.dcm", "fsync": False},
            "journal": {"type": "e2e-journal", "path": str(jout), "journal": str(journal)},
        },
        routes=[{"name": "all", "to": ["folder", "journal"]}],
    )
    svc = service(cfg).start()
    first_child = svc.log_lines()[-1].get("delivery_pid")
    inbound = tmp_path / "in"

    # the burst: 500 complete files renamed in (same filesystem), as fast as possible
    for p in sorted(gen.iterdir()):
        os.rename(p, inbound / p.name)
    wait_for(lambda: svc.log_text().count('"event": "object received"') >= kill_after_received, 60,
             f"{kill_after_received} objects received", interval=0.005)
    svc.kill()

    left_in_inbound = len(visible_files(inbound))
    delivered_before = svc.log_text().count('"event": "object delivered"')
    # the kill must hit the burst: files still waiting in the folder, deliveries still to do
    assert left_in_inbound > 0 and delivered_before < 2 * N, (left_in_inbound, delivered_before)

    # the orphaned delivery child (if the service uses one) must go away by itself
    if first_child:
        wait_for(lambda: not pid_alive(first_child), 15, "the orphaned delivery process to exit")

    svc.start()
    restart = [x for x in svc.log_lines() if x.get("event") == "pacsguard started"][-1]

    def end_counts() -> collections.Counter:
        return collections.Counter(line.split()[1] for line in journal.read_text().splitlines()
                                   if line.startswith("end "))

    try:
        wait_for(lambda: len(visible_files(out)) >= N and len(end_counts()) >= N, 90,
                 "all 500 objects at both destinations after the restart")
    except AssertionError:
        got = {sop_uid(p) for p in visible_files(out)}
        raise AssertionError(f"after kill -9 and restart, {len(set(expected) - got)} of {N} objects never "
                             f"reached the folder destination, {N - len(end_counts())} never reached the journal "
                             f"destination; {len(visible_files(inbound))} left in the inbound folder; "
                             f"restart: {restart}") from None
    time.sleep(0.3)  # nothing more may arrive
    st = wait_for(lambda: (lambda st: st["jobs"]["done"] >= N and st)(svc.status()), 20, "500 jobs done")
    assert st["jobs"] == {"received": 0, "routed": 0, "done": N, "quarantined": 0}, (st, restart)
    assert st["destinations"]["folder"]["delivered"] == N
    assert st["destinations"]["journal"]["delivered"] == N
    assert visible_files(inbound) == []

    # the folder destination: exactly 500 files, every SOP Instance UID, byte-identical
    files = visible_files(out)
    got = {sop_uid(p): p for p in files}
    missing = set(expected) - set(got)
    assert not missing, f"{len(missing)} objects lost after kill -9 ({restart})"
    assert len(files) == N
    for sop, p in got.items():
        assert sha256(p) == expected[sop], f"{p.name} differs from what was dropped"
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    # temp files of a send interrupted by the kill, left in the destination folder
    assert len(leftovers) <= 1, leftovers

    # the journal destination: every object sent, re-sends only for what was in flight
    ends = end_counts()
    assert set(ends) == set(expected)
    assert {p.name[:-4] for p in visible_files(jout)} == set(expected)
    resent = {sop: n - 1 for sop, n in ends.items() if n > 1}
    # at most the send in flight in the killed process (parallel: 1) and one that the
    # orphaned delivery child was finishing when it noticed its parent was gone
    assert sum(resent.values()) <= 2, f"re-sent after the crash: {resent}"

    assert svc.stop() == 0
