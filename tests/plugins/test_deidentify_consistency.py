"""Keyed and consistent: a 50-image series de-identified by two stage instances with the same
key (as after a restart, or on a second pacsguard) gets one set of new Study / Series /
Frame of Reference UIDs and pseudonyms, references between the images stay intact, date
intervals within the patient survive; a different key gives unlinkable values."""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.keys import Key, secret_key_id
from pacsguard.plugins.deidentify import Deidentify
from tests.conftest import write_ct_series

FACTS = TransportFacts(source="test", source_type="folder")
KEY_A = bytes(range(5, 37))
KEY_B = bytes(range(6, 38))


def key(secret: bytes) -> Key:
    return Key("pseudo", "secret", secret_key_id(secret), "/test/pseudo.key", secret=secret)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """50 slices; each references the one before it; content dates a day apart."""
    folder = tmp_path_factory.mktemp("series")
    paths = write_ct_series(folder, 50, size=32)
    frame = pydicom.uid.generate_uid()
    previous = None
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = frame
        ds.ContentDate = (dt.date(2024, 1, 2) + dt.timedelta(days=i)).strftime("%Y%m%d")
        if previous is not None:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = previous.SOPClassUID, previous.SOPInstanceUID
            ds.ReferencedImageSequence = Sequence([ref])
        ds.save_as(path, enforce_file_format=True)
        previous = ds
    return paths


def run(paths, secret: bytes, tmp_path, **options) -> list[pydicom.Dataset]:
    stage = Deidentify(Deidentify.Options.model_validate({"key": "pseudo", **options}))  # a fresh instance
    out = []
    for i, path in enumerate(paths):
        item = Item(i, path, FACTS, keys={"pseudo": key(secret)})
        stage.process(item)
        dest = tmp_path / f"{secret[0]}-{i}.dcm"
        item.write(dest)
        out.append(pydicom.dcmread(dest))
    return out


def one(values) -> str:
    (value,) = set(values)
    return value


def test_same_key_same_values_references_intact(series, tmp_path):
    first, second = run(series, KEY_A, tmp_path), run(series, KEY_A, tmp_path)
    originals = [pydicom.dcmread(p) for p in series]
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        assert one(getattr(d, kw) for d in first) == one(getattr(d, kw) for d in second), kw
        assert one(getattr(d, kw) for d in first) != one(getattr(d, kw) for d in originals), kw
    sops = [d.SOPInstanceUID for d in first]
    assert sops == [d.SOPInstanceUID for d in second] and len(set(sops)) == 50
    assert not set(sops) & {d.SOPInstanceUID for d in originals}
    for i in range(1, 50):
        (ref,) = first[i].ReferencedImageSequence
        assert ref.ReferencedSOPInstanceUID == first[i - 1].SOPInstanceUID
        assert ref.ReferencedSOPClassUID == first[i - 1].SOPClassUID


def test_a_different_key_gives_unlinkable_values(series, tmp_path):
    a, b = run(series[:5], KEY_A, tmp_path), run(series[:5], KEY_B, tmp_path)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert one(getattr(d, kw) for d in a) != one(getattr(d, kw) for d in b), kw
    assert not {d.SOPInstanceUID for d in a} & {d.SOPInstanceUID for d in b}


@pytest.mark.parametrize("keep_weekday", [False, True])
def test_modified_dates_keep_intervals_within_the_patient(series, tmp_path, keep_weekday):
    out = run(series[:10], KEY_A, tmp_path, retain_longitudinal_modified_dates=True, keep_weekday=keep_weekday)
    dates = [dt.datetime.strptime(d.ContentDate, "%Y%m%d").date() for d in out]
    assert [(b - a).days for a, b in zip(dates, dates[1:])] == [1] * 9
    shift = (dates[0] - dt.date(2024, 1, 2)).days
    assert -365 <= shift < 0
    assert out[0].StudyDate == (dt.date(2024, 1, 2) + dt.timedelta(days=shift)).strftime("%Y%m%d")
    if keep_weekday:
        assert shift % 7 == 0
    assert one(d.LongitudinalTemporalInformationModified for d in out) == "MODIFIED"
