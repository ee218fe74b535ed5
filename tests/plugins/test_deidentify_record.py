"""The record of original values: the de-identified output plus ``item.results["deidentify"]``
restores the original header exactly (every attribute, sequences and private blocks), on
every bundled image, also after the record went through DICOM bytes (as a later stage
serializes it); and the record holds nothing the stage did not change."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
import structlog
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.keys import Key, secret_key_id
from pacsguard.plugins.deidentify import Deidentify, restore
from pacsguard.plugins.deidentify.record import added, originals
from tests.conftest import bundled_images
from tests.plugins.encryption_corpus import differing

SECRET = bytes(range(1, 33))
KEY = Key("pseudo", "secret", secret_key_id(SECRET), "/test/pseudo.key", secret=SECRET)
FACTS = TransportFacts(source="test", source_type="folder")
STAGE = Deidentify(Deidentify.Options(key="pseudo", burned_in="allow"))

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    FILES = bundled_images()


def ident(path: Path) -> str:
    return path.name if sum(p.name == path.name for p in FILES) == 1 else f"{path.parent.name}/{path.name}"


def deidentify(path: Path, tmp_path: Path, stage: Deidentify = STAGE) -> tuple[Path, pydicom.Dataset]:
    item = Item(1, path, FACTS, keys={"pseudo": KEY})
    stage.process(item)
    out = tmp_path / "out.dcm"
    item.write(out)
    return out, item.results["deidentify"]


def serialized(record: pydicom.Dataset) -> pydicom.Dataset:
    """The record through Explicit VR Little Endian bytes and back."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, record)
    back = read_dataset(DicomBytesIO(fp.getvalue()), is_implicit_VR=False, is_little_endian=True)
    back.walk(lambda *_: None)
    return back


@pytest.mark.parametrize("path", FILES, ids=ident)
def test_output_and_record_restore_the_original(path, tmp_path):
    original = pydicom.dcmread(path)
    out, record = deidentify(path, tmp_path)
    assert isinstance(record, pydicom.Dataset) and len(record)

    restored = pydicom.dcmread(out)
    restore(restored, record)
    assert differing(restored, original) == []
    assert restored.file_meta.MediaStorageSOPInstanceUID == original.file_meta.MediaStorageSOPInstanceUID

    again = pydicom.dcmread(out)
    restore(again, serialized(record))
    assert differing(again, original) == []

    # only what changed is recorded (and the unchanged character set that its text needs)
    output = pydicom.dcmread(out)
    for element in originals(record):
        if element.keyword == "SpecificCharacterSet":
            assert output[element.tag] == element
            continue
        assert element.tag not in output or output[element.tag] != element, element.keyword or element.tag
    for tag in added(record):
        assert tag in output and tag not in original


def test_nested_changes_record_the_whole_top_level_sequence(tmp_path):
    """A UID changed deep in a sequence: the record holds the original sequence whole."""
    path = next(p for p in FILES if p.name == "rtplan.dcm")
    original = pydicom.dcmread(path)
    out, record = deidentify(path, tmp_path)
    output = pydicom.dcmread(out)
    seq = "ReferencedStructureSetSequence"
    assert record[seq] == original[seq] and output[seq] != original[seq]
    uid = original[seq][0].ReferencedSOPInstanceUID
    assert output[seq][0].ReferencedSOPInstanceUID != uid


def test_the_stage_logs_nothing_of_the_record(tmp_path):
    path = next(p for p in FILES if p.name == "CT_small.dcm")
    with structlog.testing.capture_logs() as logs:
        deidentify(path, tmp_path)
    assert logs == []


def test_encrypt_protects_the_record_and_decrypt_gives_the_originals_back(tmp_path):
    """deidentify -> encrypt (scope attributes, whose default input is this record) ->
    decrypt: the originals are not in the clear output, and come back on decryption."""
    from pacsguard.plugins.encryption.stages import Decrypt, Encrypt
    from tests.plugins.encryption_keys import make_key, public_only

    path = next(p for p in FILES if p.name == "CT_small.dcm")
    rsa = make_key("rsa")
    item = Item(1, path, FACTS, keys={"pseudo": KEY, "r": public_only(rsa)})
    STAGE.process(item)
    record = item.results["deidentify"]
    Encrypt(Encrypt.Options(scope="attributes", recipients=["r"])).process(item)
    item.write(tmp_path / "enc.dcm")
    data = (tmp_path / "enc.dcm").read_bytes()
    original = pydicom.dcmread(path)
    assert original.PatientName.encode() not in data and original.StudyInstanceUID.encode() not in data

    dec = Item(2, tmp_path / "enc.dcm", FACTS, keys={"me": rsa})
    Decrypt(Decrypt.Options(scope="attributes", key="me")).process(dec)
    dec.write(tmp_path / "dec.dcm")
    back = pydicom.dcmread(tmp_path / "dec.dcm")
    for element in originals(record):
        assert back[element.tag] == element, element.keyword
