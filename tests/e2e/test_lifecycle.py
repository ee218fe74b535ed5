"""SIGTERM: stop intake, drain in-flight work (up to shutdown_timeout), exit 0, leave the
rest in the spool for the next start. And: no patient data in the service log.

A slow destination comes from the test-only ``e2e-journal`` plugin (tests/e2e/plugin_site,
loaded through the ``pacsguard`` entry-point group): it sleeps ``delay`` seconds per send
and journals every send, so drained, interrupted and repeated sends can be counted.
"""

from __future__ import annotations

import collections
import json
import signal
import time

import pytest
from pydicom.uid import generate_uid

from e2e_util import PATIENT_ID, PATIENT_NAME, folder_config, make_image, settled, visible_files
from peers import Pacsguard, wait_for


def _journal(path) -> tuple[collections.Counter, collections.Counter]:
    begins, ends = collections.Counter(), collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            kind, sop = line.split()
            (begins if kind == "begin" else ends)[sop] += 1
    return begins, ends


def _slow_config(tmp_path, delay: float, shutdown_timeout: str) -> str:
    return folder_config(
        tmp_path,
        destinations={"slow": {"type": "e2e-journal", "path": str(tmp_path / "out"),
                               "journal": str(tmp_path / "journal.txt"), "delay": delay}},
        routes=[{"name": "all", "to": ["slow"]}],
        shutdown_timeout=shutdown_timeout,
    )


def _stopped_line(svc) -> dict:
    (line,) = [x for x in svc.log_lines() if x.get("event") == "pacsguard stopped"][-1:]
    return line


def test_sigterm_drains_in_flight_work_and_the_rest_is_delivered_after_restart(tmp_path, service, journal_plugin):
    # 1.5 s per send: SIGTERM lands early in the second send, which leaves the shutdown
    # sequence time to reach the delivery side before that send ends
    svc = service(_slow_config(tmp_path, delay=1.5, shutdown_timeout="20s")).start()
    journal = tmp_path / "journal.txt"
    src = tmp_path / "src"
    sops = []
    for i in range(5):
        p = src / f"img{i}.dcm"
        sops.append(make_image(p, instance=i + 1, patient=PATIENT_NAME, patient_id=PATIENT_ID))
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    # wait until the first object is delivered and the second is being sent
    wait_for(lambda: sum(_journal(journal)[1].values()) == 1 and sum(_journal(journal)[0].values()) == 2,
             30, "the second send to be in flight", interval=0.02)
    in_flight = [s for s, n in _journal(journal)[0].items() if s not in _journal(journal)[1]]
    assert len(in_flight) == 1

    t0 = time.monotonic()
    svc.signal(signal.SIGTERM)
    time.sleep(0.3)
    late = src / "late.dcm"
    late_sop = make_image(late, instance=99, patient=PATIENT_NAME, patient_id=PATIENT_ID)
    (tmp_path / "in" / late.name).write_bytes(late.read_bytes())  # intake is stopped: must stay
    rc = svc.proc.wait(timeout=30)
    elapsed = time.monotonic() - t0
    svc.stop()  # closes the log handle
    assert rc == 0
    assert elapsed < 6.0, f"shutdown took {elapsed:.1f}s for one 1.5 s send in flight"

    begins, ends = _journal(journal)
    assert ends[in_flight[0]] == 1, "the send in flight at SIGTERM was not finished"
    assert sum(ends.values()) == 2 and sum(begins.values()) == 2, "new sends started after SIGTERM"
    stopped = _stopped_line(svc)
    assert stopped["drained"] is True
    assert stopped["left_for_processing"] == 0 and stopped["left_for_delivery"] == 3
    assert [x["signal"] for x in svc.log_lines() if x.get("event") == "stop requested"] == ["SIGTERM"]
    assert (tmp_path / "in" / late.name).exists(), "a file was taken after SIGTERM"
    st = svc.status()
    assert st["jobs"]["done"] == 2 and st["jobs"]["routed"] == 3
    assert st["destinations"]["slow"]["pending"] == 3

    # restart (a fast destination now): the three left in the spool and the late file are
    # delivered, each once
    svc.config_path.write_text(_slow_config(tmp_path, delay=0.0, shutdown_timeout="20s"))
    svc.start()
    wait_for(lambda: sum(_journal(journal)[1].values()) == 6, 30, "all 6 objects delivered")
    begins, ends = _journal(journal)
    assert set(ends) == set(sops) | {late_sop}
    assert all(n == 1 for n in ends.values()) and all(n == 1 for n in begins.values()), (begins, ends)
    wait_for(lambda: settled(svc) == 6, 10, "6 deliveries logged")
    assert svc.status()["jobs"]["done"] == 6
    assert svc.stop() == 0
    assert _stopped_line(svc)["drained"] is True


def test_sigterm_with_a_send_longer_than_shutdown_timeout(tmp_path, service, journal_plugin):
    """The send does not finish within shutdown_timeout: the service still exits 0 on
    time, the delivery stays pending and is sent again after the restart."""
    svc = service(_slow_config(tmp_path, delay=3.0, shutdown_timeout="1s")).start()
    journal = tmp_path / "journal.txt"
    p = tmp_path / "src" / "img.dcm"
    sop = make_image(p, patient=PATIENT_NAME, patient_id=PATIENT_ID)
    (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    wait_for(lambda: _journal(journal)[0][sop] == 1, 20, "the send to begin", interval=0.02)
    t0 = time.monotonic()
    rc = svc.stop(timeout=30)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert elapsed < 2.8, f"shutdown took {elapsed:.1f}s with shutdown_timeout 1s (the send takes 3 s)"
    stopped = _stopped_line(svc)
    assert stopped["drained"] is False and stopped["left_for_delivery"] == 1
    assert _journal(journal)[1][sop] == 0
    assert svc.status()["destinations"]["slow"]["pending"] == 1

    svc.config_path.write_text(_slow_config(tmp_path, delay=0.0, shutdown_timeout="1s"))
    svc.start()
    wait_for(lambda: _journal(journal)[1][sop] == 1, 20, "the delivery after the restart")
    assert svc.stop() == 0


# --- no PHI in the log ----------------------------------------------------------------

BIRTH_DATE = "1961-07-04"  # malformed DA (dashes), as some modalities write it
# A UID built from the birth date and the patient number, with a leading zero in a
# component (not a valid UID): it is read, routed and used by the path template.
BAD_STUDY_UID = "1.2.826.0.1.3680043.19610704.04711"


@pytest.fixture(scope="module")
def phi_run(tmp_path_factory):
    """One service run over objects full of patient data, through a pass-through route,
    a set-attributes route, a path template that uses patient attributes, quarantine
    (no route matched) and a destination that fails and is retried."""
    tmp = tmp_path_factory.mktemp("phi")
    cfg = folder_config(
        tmp,
        destinations={
            "by-patient": {"type": "folder", "path": str(tmp / "out"),
                           "template": "{PatientName}/{PatientID}/{PatientBirthDate}/{StudyInstanceUID}/"
                                       "{SOPInstanceUID}.dcm"},
            "plain": {"type": "folder", "path": str(tmp / "plain"), "template": "{SOPInstanceUID}.dcm"},
        },
        routes=[
            {"name": "ct", "match": {"Modality": "CT", "PatientName": {"regex": "DOE"}},
             "pipeline": [{"set-attributes": {"set": {"PatientComments": f"was {PATIENT_NAME}"},
                                              "set_if_missing": {"OtherPatientIDs": PATIENT_ID}}}],
             "to": ["by-patient", "plain"]},
            {"name": "mr", "match": {"Modality": "MR"}, "to": ["by-patient"]},
        ],
        logging={"level": "debug", "format": "json"},
    )
    svc = Pacsguard(tmp / "work", cfg).start()
    uids = set()
    try:
        for i, modality in enumerate(["CT", "CT", "MR", "US"]):  # US: no route matches
            p = tmp / "src" / f"img{i}.dcm"
            study = BAD_STUDY_UID if i == 0 else generate_uid()
            series = generate_uid()
            sop = make_image(p, modality=modality, instance=i + 1, patient=PATIENT_NAME, patient_id=PATIENT_ID,
                             study=study, series=series, PatientBirthDate=BIRTH_DATE,
                             PatientAddress="1 Main Street, Springfield", OtherPatientNames="ROE^JANE")
            uids |= {study, series, sop}
            (tmp / "in" / p.name).write_bytes(p.read_bytes())
        (tmp / "in" / "garbage.dcm").write_bytes(f"{PATIENT_NAME} {PATIENT_ID}\n".encode())
        wait_for(lambda: settled(svc) >= 5, 30, "all objects processed")
        st = svc.status()
    finally:
        rc = svc.stop()
    return {"svc": svc, "status": st, "rc": rc, "text": svc.log_text(), "tmp": tmp, "uids": uids}


def test_no_patient_data_in_the_log(phi_run):
    assert phi_run["rc"] == 0
    assert phi_run["status"]["jobs"] == {"received": 0, "routed": 0, "done": 3, "quarantined": 2}
    assert len(visible_files(phi_run["tmp"] / "out")) == 3  # the template did use the values
    text = phi_run["text"]
    for phi in (PATIENT_NAME, "DOE", PATIENT_ID, BIRTH_DATE, "Main Street", "ROE^JANE"):
        leaks = [line for line in text.splitlines() if phi in line]
        assert not leaks, f"patient data {phi!r} in the service log: {leaks[:3]}"


def test_no_uid_in_clear_in_the_log(phi_run):
    """UIDs are logged hashed (DESIGN.md: "log UIDs hashed or job ids instead")."""
    assert len(phi_run["uids"]) == 12
    text = phi_run["text"]
    leaks = {uid: [line for line in text.splitlines() if uid in line][:2] for uid in phi_run["uids"] if uid in text}
    assert not leaks, f"UIDs in clear in the service log: {leaks}"


def test_the_log_is_json_lines(phi_run):
    """Not on a TTY, every line the service writes is one JSON object (structlog), library
    messages included."""
    bad = []
    for line in phi_run["text"].splitlines():
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or "event" not in obj or "timestamp" not in obj:
                bad.append(line)
        except ValueError:
            bad.append(line)
    assert not bad, f"{len(bad)} log lines are not JSON objects: {bad[:4]}"
