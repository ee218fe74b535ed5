"""A destination that cannot be written: retries with growing delays, then quarantine;
once the cause is fixed, ``pacsguard quarantine retry`` delivers.

The tests run as root, so permission bits would not stop the service: the destination
folder is made immutable with ``chattr +i`` instead (creating a file in it then fails with
EPERM, which the folder destination treats as retryable).
"""

from __future__ import annotations

import datetime as dt
import json

from e2e_util import PATIENT_ID, PATIENT_NAME, folder_config, make_image, settled, sop_uid, visible_files
from peers import wait_for

RETRY = {"initial": 0.2, "factor": 2, "max_delay": 0.9, "max_attempts": 4, "jitter": 0.1}


def _ts(line: dict) -> float:
    return dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def test_unwritable_destination_retries_then_quarantines_then_retry_delivers(tmp_path, service, immutable):
    out, other = tmp_path / "out", tmp_path / "other"
    out.mkdir()
    immutable(out)
    cfg = folder_config(
        tmp_path,
        destinations={
            "out": {"type": "folder", "path": str(out), "template": "{SOPInstanceUID}.dcm", "retry": RETRY},
            "other": {"type": "folder", "path": str(other), "template": "{SOPInstanceUID}.dcm"},
        },
        routes=[{"name": "all", "to": ["out", "other"]}],
    )
    svc = service(cfg).start()
    src = tmp_path / "src"
    sources = {}
    for i in range(2):
        p = src / f"img{i}.dcm"
        sources[make_image(p, instance=i + 1, patient=PATIENT_NAME, patient_id=PATIENT_ID)] = p
    for p in sources.values():
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())

    def quarantined():
        return len([x for x in svc.log_lines() if x.get("event") == "delivery quarantined"]) >= 2

    wait_for(quarantined, 60, "2 deliveries to be quarantined")
    lines = svc.log_lines()

    # the healthy destination was not held up by the broken one
    other_done = [_ts(x) for x in lines if x.get("event") == "object delivered" and x.get("destination") == "other"]
    first_quarantine = min(_ts(x) for x in lines if x.get("event") == "delivery quarantined")
    assert len(other_done) == 2 and max(other_done) < first_quarantine
    assert {sop_uid(p) for p in visible_files(other)} == set(sources)

    # retries with growing delays, for each delivery: attempts 1..3 fail, the 4th gives up
    failures = [x for x in lines if x.get("event") == "delivery failed, will retry"]
    quarantines = [x for x in lines if x.get("event") == "delivery quarantined"]
    assert all(x["destination"] == "out" for x in failures + quarantines)
    assert all("Operation not permitted" in x["reason"] for x in failures)
    by_job: dict[int, list[dict]] = {}
    for x in failures:
        by_job.setdefault(x["job"], []).append(x)
    assert sorted(by_job) == sorted(x["job"] for x in quarantines)
    for job, fails in by_job.items():
        assert [f["attempt"] for f in fails] == [1, 2, 3], fails
    # The backoff belongs to the destination: while it stays down, each failure waits longer
    # than the one before (0.2, 0.4, 0.8, then max_delay 0.9), whichever job it was. Which
    # job is tried first depends on which one the processing workers routed first.
    streak = sorted(failures, key=_ts)
    delays = [f["retry_in_s"] for f in streak]
    for got, nominal in zip(delays, (0.2, 0.4, 0.8, 0.9, 0.9, 0.9)):
        assert nominal * 0.89 <= got <= nominal * 1.11, delays
    assert len(delays) == 6
    # ... and the attempts really were that far apart
    # (the destination rests after each failure: its next attempt, at any job, comes later)
    events = sorted(failures + quarantines, key=_ts)
    for k, e in enumerate(events[:-1]):
        if "retry_in_s" in e:
            gap = _ts(events[k + 1]) - _ts(e)
            assert gap >= e["retry_in_s"] * 0.9, ([_ts(x) for x in events], delays)
    for q in quarantines:
        assert q["attempts"] == 4
        assert "gave up after 4 attempts" in q["reason"] and "Operation not permitted" in q["reason"]

    # quarantine list
    entries = json.loads(svc.cli("quarantine", "list", "--json").stdout)
    assert len(entries) == 2
    for e in entries:
        assert e["place"] == "destination:out" and e["destination"] == "out" and e["route"] == "all"
        assert "gave up after 4 attempts" in e["reason"]
        assert e["released_at"] is None
        qdir = tmp_path / "spool" / "quarantine"
        assert (qdir / f"{e['id']}.dcm").is_file()
        assert json.loads((qdir / f"{e['id']}.json").read_text())["reason"] == e["reason"]
    st = svc.status()
    assert st["destinations"]["out"]["quarantined"] == 2 and st["destinations"]["out"]["delivered"] == 0
    assert st["destinations"]["other"]["delivered"] == 2
    assert st["jobs"]["quarantined"] == 2 and st["quarantine"]["entries"] == 2
    assert visible_files(out) == []

    # fix the cause, then retry: one by id, the rest with --all
    immutable(out, False)
    ids = [e["id"] for e in entries]
    r = svc.cli("quarantine", "retry", str(ids[0]))
    assert r.stdout.strip() == f"{ids[0]}: delivery back in flow"
    wait_for(lambda: len(visible_files(out)) == 1, 15, "the retried delivery")
    r = svc.cli("quarantine", "retry", str(ids[0]), check=False)
    assert r.returncode == 1 and "already released" in r.stderr
    r = svc.cli("quarantine", "retry", "--all")
    assert sorted(r.stdout.strip().splitlines()) == sorted(f"{i}: delivery back in flow" for i in ids[1:])
    wait_for(lambda: len(visible_files(out)) == 2, 15, "all retried deliveries")
    wait_for(lambda: settled(svc) == 2 + 2 + 2, 10, "2 deliveries to each destination, 2 quarantines")
    st = svc.status()
    assert st["destinations"]["out"] == {**st["destinations"]["out"], "delivered": 2, "quarantined": 0, "pending": 0}
    assert st["quarantine"]["entries"] == 0
    released = json.loads(svc.cli("quarantine", "list", "--all", "--json").stdout)
    assert [e["id"] for e in released] == ids and all(e["released_at"] for e in released)
    for p in visible_files(out):
        assert p.read_bytes() == sources[sop_uid(p)].read_bytes()
    assert not list((tmp_path / "spool" / "quarantine").iterdir())
    assert svc.stop() == 0
