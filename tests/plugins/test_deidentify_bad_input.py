"""Bad and unusual input: character sets (ISO_IR 100, ISO_IR 192, ISO 2022 IR 87 and the
rest of pydicom's charset files), values that break their VR's rules, odd private blocks,
deep nesting. Never a crash: what cannot be handled safely is quarantined with the
attribute's tag (never its value), and nothing identifying is left in clear."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.charset import convert_encodings, encode_string
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.keys import Key, secret_key_id
from pacsguard.plugins.deidentify import Deidentify, restore
from pacsguard.plugins.deidentify.keyed import Keyed
from pacsguard.plugins.deidentify.walker import MAX_DEPTH
from tests.plugins.encryption_corpus import differing

SECRET = bytes(range(3, 35))
KEY = Key("pseudo", "secret", secret_key_id(SECRET), "/test/pseudo.key", secret=SECRET)
KEYED = Keyed(SECRET)
FACTS = TransportFacts(source="test", source_type="folder")
STAGE = Deidentify(Deidentify.Options(key="pseudo", burned_in="allow"))
CHARSET_FILES = sorted((Path(DATA_ROOT) / "charset_files").glob("*.dcm"))

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def process(path: Path, tmp_path: Path, stage: Deidentify = STAGE) -> tuple[Path, Dataset]:
    item = Item(1, path, FACTS, keys={"pseudo": KEY})
    stage.process(item)
    out = tmp_path / "out.dcm"
    item.write(out)
    return out, item.results["deidentify"]


def names(ds: Dataset) -> list[tuple[str, list]]:
    """Every person name in the data set, with the encodings in force where it stands."""
    found = []

    def visit(d: Dataset, encodings):
        if "SpecificCharacterSet" in d:
            encodings = convert_encodings(d.SpecificCharacterSet)
        for elem in d:
            if elem.VR == "PN" and elem.value:
                found.append((str(elem.value), encodings))
            elif elem.VR == "SQ":
                for item in elem.value:
                    visit(item, encodings)

    visit(ds, ["iso8859"])
    return found


@pytest.mark.parametrize("path", CHARSET_FILES, ids=lambda p: p.name)
def test_character_sets(path, tmp_path):
    """No person name survives in any encoding (the file's own, UTF-8, Latin-1, UTF-16), and
    the record restores the original exactly."""
    original = pydicom.dcmread(path)
    found = names(original)
    assert found, "the charset files all carry names"
    out, record = process(path, tmp_path)
    data = out.read_bytes()
    for value, encodings in found:
        forms = {encode_string(value, encodings)}
        for part in [value] + value.replace("=", "^").split("^"):
            if len(part) >= 2:
                for codec in ("utf-8", "latin-1", "utf-16-le", "utf-16-be"):
                    try:
                        forms.add(part.encode(codec))
                    except UnicodeEncodeError:
                        pass
        for form in forms:
            if len(form) >= 3:
                assert form not in data, (value, form)
    restored = pydicom.dcmread(out)
    restore(restored, record)
    assert differing(restored, original) == []


def plain(**elements) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = "DOE^JANE", "PID-1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.5.1"
    for k, v in elements.items():
        setattr(ds, k, v)
    return ds


def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(tag, vr, len(value), value, 0, False, True)


def test_a_date_that_cannot_be_shifted_is_quarantined_naming_its_tag():
    st = Deidentify(Deidentify.Options(key="pseudo", retain_longitudinal_modified_dates=True))
    ds = plain()
    ds[0x00080020] = raw(0x00080020, "DA", b"2004-01-32")
    with pytest.raises(QuarantineError) as info:
        st.apply(ds, KEYED)
    assert info.value.reason == "(0008,0020) StudyDate: not a valid DA value, so its date cannot be shifted"
    ds = plain()
    ds[0x00080020] = raw(0x00080020, "DA", b"2004-01-32")
    STAGE.apply(ds, KEYED)  # the Basic Profile empties it: nothing to read
    assert ds.StudyDate == ""


def test_broken_uids_and_numbers_are_replaced_or_kept_without_reading_them():
    ds = plain()
    ds[0x00080018] = raw(0x00080018, "UI", b"1.2.abc.\xff\x00")
    ds[0x00280010] = raw(0x00280010, "US", b"\x01\x02\x03")  # odd length for US: kept, never read
    STAGE.apply(ds, KEYED)
    assert ds.SOPInstanceUID.startswith("2.25.")
    assert ds.get_item(0x00280010).value == b"\x01\x02\x03"


def test_an_unreadable_value_the_stage_must_read_is_quarantined_naming_its_tag():
    ds = plain()
    ds[0x0020000D] = raw(0x0020000D, "FD", b"\x01\x02\x03")  # a Study Instance UID that is no UID
    with pytest.raises(QuarantineError) as info:
        STAGE.apply(ds, KEYED)
    assert info.value.reason == ("(0020,000D) StudyInstanceUID: its value cannot be read (BytesLengthException),"
                                 " so it cannot be de-identified safely")


def test_garbage_in_a_sequence_is_never_a_crash():
    """pydicom parses any bytes of a defined-length sequence as items: whatever they hold is
    walked like any item (unknown elements removed)."""
    for junk in (b"not a sequence", b"\xfe\xff\x00\xe0\x10\x00\x00\x00garbage!",
                 b"\xfe\xff\x00\xe0\xff\xff\xff\xff\x10\x00\x10\x00PN\x05\x00DOE^J"):
        ds = plain()
        ds[0x00081115] = raw(0x00081115, "SQ", junk)
        try:
            STAGE.apply(ds, KEYED)
        except QuarantineError as exc:
            assert exc.reason.startswith("(0008,1115) ReferencedSeriesSequence: ")


def test_an_unreadable_attribute_that_is_removed_anyway_is_recorded_as_bytes():
    ds = plain()
    ds[0x00160075] = raw(0x00160075, "US", b"\x01\x02\x03")  # GPS Altitude Ref (X), 3 bytes of US
    record = STAGE.apply(ds, KEYED)
    assert "GPSAltitudeRef" not in ds
    assert record[0x00160075].VR == "UN" and record[0x00160075].value == b"\x01\x02\x03"


def test_odd_private_blocks_are_removed_and_restored():
    ds = plain()
    ds[0x00090010] = DataElement(0x00090010, "LO", "")  # an empty creator
    ds[0x00091001] = DataElement(0x00091001, "LO", "DOE private")
    ds[0x00111005] = DataElement(0x00111005, "LO", "no creator at all")
    ds[0x00030010] = DataElement(0x00030010, "LO", "illegal odd group")
    inner = Dataset()
    inner.PatientName = "DOE^JANE"
    inner[0x00290010] = DataElement(0x00290010, "LO", "ACME 1")
    inner[0x00291001] = DataElement(0x00291001, "LO", "nested private")
    ds[0x00191010] = DataElement(0x00191010, "SQ", Sequence([inner]))  # a private sequence, no creator
    ds[0x00081115] = DataElement(0x00081115, "SQ", Sequence([inner]))
    before = Dataset({t: ds[t] for t in ds.keys()})
    record = STAGE.apply(ds, KEYED)
    assert not [t for t in ds.keys() if t.group & 1]
    (item,) = ds.ReferencedSeriesSequence
    assert not [t for t in item.keys() if t.group & 1] and item.PatientName != "DOE^JANE"
    restore(ds, record)
    assert differing(ds, before, ignore=("PatientIdentityRemoved",)) == []


def test_safe_private_attributes_are_kept_inside_sequences_too():
    st = Deidentify(Deidentify.Options(key="pseudo", retain_safe_private={"ACME 1": ["0029,xx01"]}))
    inner = Dataset()
    inner[0x00290010] = DataElement(0x00290010, "LO", "ACME 1")
    inner[0x00291001] = DataElement(0x00291001, "LO", "safe")
    inner[0x00291002] = DataElement(0x00291002, "LO", "not listed")
    ds = plain(ReferencedSeriesSequence=Sequence([inner]))
    st.apply(ds, KEYED)
    (item,) = ds.ReferencedSeriesSequence
    assert (item[0x00290010].value, item[0x00291001].value) == ("ACME 1", "safe") and 0x00291002 not in item


def test_nested_private_sequences_of_pydicom():
    path = Path(DATA_ROOT) / "test_files" / "nested_priv_SQ.dcm"
    ds = pydicom.dcmread(path, force=True)
    original = pydicom.dcmread(path, force=True)
    record = STAGE.apply(ds, KEYED)
    assert not [t for t in ds.keys() if t.group & 1]
    restore(ds, record)
    assert differing(ds, original, ignore=("PatientIdentityRemoved", "DeidentificationMethod",
                                           "DeidentificationMethodCodeSequence",
                                           "LongitudinalTemporalInformationModified")) == []


def nest(levels: int) -> Dataset:
    """``levels`` Referenced Series Sequences, one in the other, a patient and a UID at the bottom."""
    bottom = Dataset()
    bottom.PatientName = "DOE^DEEP"
    bottom.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.5.9"
    for _ in range(levels):
        outer = Dataset()
        outer.ReferencedSeriesSequence = Sequence([bottom])
        bottom = outer
    return bottom


def test_nesting_within_the_limit_is_walked_to_the_bottom():
    ds = nest(MAX_DEPTH - 1)
    STAGE.apply(ds, KEYED)
    item = ds
    while "ReferencedSeriesSequence" in item:
        item = item.ReferencedSeriesSequence[0]
    assert item.PatientName != "DOE^DEEP" and item.ReferencedSOPInstanceUID.startswith("2.25.")


def test_deeper_nesting_is_quarantined_with_the_tag(tmp_path):
    with pytest.raises(QuarantineError) as info:
        STAGE.apply(nest(MAX_DEPTH + 5), KEYED)
    assert info.value.reason == f"(0008,1115) ReferencedSeriesSequence: sequences nested deeper than {MAX_DEPTH} levels"
    # the same from a file, 150 levels deep: a quarantine, not a RecursionError
    ds = nest(150)
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    src = tmp_path / "deep.dcm"
    ds.save_as(src, enforce_file_format=True)
    with pytest.raises(QuarantineError, match=r"^\(0008,1115\) ReferencedSeriesSequence: "):
        process(src, tmp_path)
