"""The service's Intake: an object secured (and so acknowledged) is never dropped, even
when its job row cannot be written at once."""

from __future__ import annotations

import sqlite3
import types
from pathlib import Path

from pydicom.data import get_testdata_file

from pacsguard.daemon.item import TransportFacts
from pacsguard.daemon.service import Intake
from pacsguard.daemon.spool import Spool

CT = Path(get_testdata_file("CT_small.dcm"))
FACTS = TransportFacts(source="dicom", source_type="dicom", calling_ae="CT1", called_ae="PACSGUARD")


def make(tmp_path):
    spool = Spool(tmp_path / "spool")
    received: list[int] = []
    service = types.SimpleNamespace(spool=spool, stopping=False,
                                    _received=lambda job_id, facts: received.append(job_id))
    return Intake(service), spool, received


def secured(intake: Intake, spool: Spool) -> Path:
    partial = intake.new_partial(FACTS)
    partial.write_bytes(CT.read_bytes())
    final = intake.secure(partial, FACTS)
    assert final.is_file() and not partial.exists() and final.read_bytes() == CT.read_bytes()
    assert spool.received_jobs() == []  # secured, not yet recorded
    return final


def test_secure_then_record(tmp_path):
    intake, spool, received = make(tmp_path)
    final = secured(intake, spool)
    job = intake.record(final, FACTS)
    assert received == [job] and spool.received_jobs() == [job]
    assert spool.get_job(job).path == final and spool.get_job(job).facts.calling_ae == "CT1"


def test_a_row_that_cannot_be_written_waits_and_is_recorded_later(tmp_path, monkeypatch):
    intake, spool, received = make(tmp_path)
    final = secured(intake, spool)
    real = spool.record

    def locked(path, facts):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(spool, "record", locked)
    assert intake.record(final, FACTS) is None  # does not raise: the caller has its answer
    assert received == [] and final.is_file()
    assert intake.record_waiting() == 0  # still refused: it keeps waiting
    monkeypatch.setattr(spool, "record", real)
    assert intake.record_waiting() == 1
    assert len(received) == 1 and spool.get_job(received[0]).path == final
    assert intake.record_waiting() == 0  # recorded once, not twice
    assert spool.received_jobs() == received
