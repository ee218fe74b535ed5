"""The fast data set writer gives pydicom's bytes, on every bundled file, as read and after
the kinds of change stages make."""

from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pydicom.filewriter import write_file_meta_info

from pacsguard.daemon.dicomwrite import encode_dataset, write_dataset_fast, write_file_meta_fast
from tests.conftest import bundled_images

FILES = bundled_images()


def _outcome(fn, *args):
    """The bytes written, or the kind of error (both writers must fail alike on a data set
    pydicom cannot write as read, e.g. raw elements without a VR in an explicit VR file)."""
    try:
        return fn(*args)
    except Exception as exc:
        return type(exc).__name__


def _pydicom_bytes(ds, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    return fp.getvalue()


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _little(ds) -> bool:
    return ds.file_meta.TransferSyntaxUID.is_little_endian


def _change(ds) -> None:
    """What stages do: set and remove attributes, add a private block, new pixel bytes,
    touch a sequence item."""
    ds.PatientName = "ANON^X"
    ds.ImageComments = "changed"
    if "PatientBirthDate" in ds:
        del ds.PatientBirthDate
    block = ds.private_block(0x0011, "TEST WRITER", create=True)
    block.add_new(0x01, "LO", "value")
    block.add_new(0x02, "OB", b"\x01\x02\x03\x04")
    block.add_new(0x03, "UL", [1, 2, 3])
    if "PixelData" in ds and not ds["PixelData"].is_undefined_length:
        ds.PixelData = bytes(len(ds.PixelData))
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "113100", "DCM"
    ds.DeidentificationMethodCodeSequence = Sequence([item])
    for elem in ds:
        if elem.VR == "SQ" and elem.value and elem.tag != 0x00120064:
            elem.value[0].add_new(0x00080100, "SH", "X1")  # CodeValue in the first item
            break


LITTLE = [p for p in FILES if _little(_read(p))]  # big endian goes through pydicom's writer as it is


def test_corpus_has_both_encodings():
    implicit = {_read(p).file_meta.TransferSyntaxUID.is_implicit_VR for p in LITTLE}
    assert implicit == {True, False} and len(LITTLE) > 40


@pytest.mark.parametrize("path", LITTLE, ids=[p.name for p in LITTLE])
def test_same_bytes_as_pydicom(path):
    ds = _read(path)
    implicit = ds.file_meta.TransferSyntaxUID.is_implicit_VR
    assert _outcome(encode_dataset, ds, implicit) == _outcome(_pydicom_bytes, _read(path), implicit)
    changed, reference = _read(path), _read(path)
    for ds in (changed, reference):
        ds.walk(lambda *_: None)  # as stages do before changing a mixed-VR file
        _change(ds)
    assert encode_dataset(changed, implicit) == _pydicom_bytes(reference, implicit)
    assert _written(changed, implicit) == _pydicom_bytes(reference, implicit)


class _Writes(DicomBytesIO):
    """Keeps the objects it was given to write."""

    def __init__(self):
        super().__init__()
        self.given, write = [], self.write  # DicomIO binds its buffer's write to the instance

        def keep(b):
            self.given.append(b)
            return write(b)

        self.write = keep


def _written(ds, implicit: bool, fp=None) -> bytes:
    """What the file writer writes (its large values, the pixel data, written apart)."""
    fp = fp or DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    n = write_dataset_fast(fp, ds)
    out = fp.getvalue()
    assert n == len(out)
    return out


def test_large_values_written_apart_keep_their_place():
    ds = pydicom.Dataset()
    ds.set_original_encoding(False, True, ds._character_set)  # as read: the fast path
    ds.PatientName = "A^B"
    ds.add_new(0x00091010, "OB", bytes(range(256)) * 512)  # 128 KiB, before the pixel data
    ds.add_new(0x7FE00010, "OW", b"\x01\x02" * 40000)
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 70000)  # Data Set Trailing Padding, after it
    reference = pydicom.Dataset()
    reference.update(ds)
    fp = _Writes()
    assert _written(ds, False, fp) == _pydicom_bytes(reference, False) == encode_dataset(ds, False)
    large = [ds[t].value for t in (0x00091010, 0x7FE00010, 0xFFFCFFFC)]
    assert [b for b in fp.given if any(b is v for v in large)] == large  # written as they are, in order


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_same_file_meta_as_pydicom(path):
    ours, theirs = DicomBytesIO(), DicomBytesIO()
    meta = _read(path).file_meta
    write_file_meta_fast(ours, meta)
    reference = _read(path).file_meta
    write_file_meta_info(theirs, reference, enforce_standard=True)
    assert ours.getvalue() == theirs.getvalue()
    assert meta == reference  # the elements pydicom adds are added here too


def test_values_pydicom_formats_itself():
    """Numbers, a non-ASCII name, multi-valued strings and out-of-range numbers."""
    ds, reference = pydicom.Dataset(), pydicom.Dataset()
    for d in (ds, reference):
        d.set_original_encoding(False, True, ["latin_1"])
        d.SpecificCharacterSet = "ISO_IR 100"
        d.InstitutionName = "Hôpital"
        d.ImageType = ["ORIGINAL", "PRIMARY"]
        d.SliceThickness = 1.25
        d.InstanceNumber = 7
        d.Rows, d.Columns = 512, 511
        d.WindowWidth = [400, 1500]
        d.RescaleSlope = "1.0"
        d.StudyDescription = "odd"
        d.add_new(0x00191001, "FD", 2.5)
    assert encode_dataset(ds, False) == _pydicom_bytes(reference, False)
    assert encode_dataset(ds, True) == _pydicom_bytes(reference, True)
    bad = pydicom.Dataset()
    bad.set_original_encoding(False, True, None)
    bad.Rows = 70000
    with pytest.raises(OSError):  # as pydicom's own writer refuses it
        encode_dataset(bad, False)


def test_other_encoding_goes_through_pydicom():
    """Written in the other VR encoding than read: pydicom's VR correction applies."""
    path = next(p for p in FILES if _little(_read(p)) and not _read(p).file_meta.TransferSyntaxUID.is_implicit_VR)
    ds = _read(path)
    assert encode_dataset(ds, True) == _pydicom_bytes(_read(path), True)


def _raw_meta(**values):
    """A file meta of raw elements, as read: (tag name -> (VR, bytes)); None leaves it out."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import FileMetaDataset
    from pydicom.datadict import tag_for_keyword

    base = {"FileMetaInformationVersion": ("OB", b"\0\1"),
            "MediaStorageSOPClassUID": ("UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
            "MediaStorageSOPInstanceUID": ("UI", b"1.2.3.4"),
            "TransferSyntaxUID": ("UI", b"1.2.840.10008.1.2.1\0"),
            "ImplementationClassUID": ("UI", b"1.2.826.0.1.3680043.9.9\0"),
            "ImplementationVersionName": ("SH", b"TEST 1")}
    base.update(values)
    meta = FileMetaDataset()
    meta.set_original_encoding(False, True, meta._character_set)  # as dcmread leaves it
    for keyword, vr_value in base.items():
        if vr_value is not None:
            tag = tag_for_keyword(keyword)
            vr, value = vr_value
            meta._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return meta


@pytest.mark.parametrize("change", [
    {}, {"MediaStorageSOPInstanceUID": ("UI", b"1.2.3.4 ")}, {"MediaStorageSOPInstanceUID": ("UI", b" 1.2.34")},
    {"MediaStorageSOPInstanceUID": ("UI", b"1.2.3\0\0")}, {"ImplementationClassUID": ("UI", b"\0\0")},
    {"ImplementationClassUID": ("UI", b"\t ")}, {"ImplementationClassUID": None},
    {"ImplementationVersionName": None}, {"FileMetaInformationVersion": ("OB", b"")},
    {"FileMetaInformationVersion": ("OB", b"\0\0")}, {"TransferSyntaxUID": ("UN", b"1.2.840.10008.1.2.1\0")},
    {"MediaStorageSOPClassUID": ("UI", b"1.2\\3.4\0")},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "canonical")
def test_a_file_meta_as_read_gives_pydicoms_bytes_or_its_error(change):
    """The meta writer skips pydicom's check of a complete meta whose values its
    conversion would not change; anything else goes through the check, as pydicom's."""
    ours, theirs = DicomBytesIO(), DicomBytesIO()
    meta, reference = _raw_meta(**change), _raw_meta(**change)
    assert _outcome(write_file_meta_fast, ours, meta) == _outcome(write_file_meta_info, theirs, reference, True)
    assert ours.getvalue() == theirs.getvalue()
