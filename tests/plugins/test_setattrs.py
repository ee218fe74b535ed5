"""The ``set-attributes`` stage: options are checked against the DICOM dictionary at load
time, and ``process`` sets, fills in and removes attributes without touching anything else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file

from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.plugins.setattrs import SetAttributes, SetAttributesOptions

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def ct(tmp_path) -> Path:
    dst = tmp_path / "in" / "ct.dcm"
    dst.parent.mkdir()
    shutil.copyfile(CT_SMALL, dst)
    return dst


def make_item(path: Path) -> Item:
    return Item(1, path, TransportFacts(source="test", source_type="folder"))


def options(**kw) -> SetAttributesOptions:
    return SetAttributes.Options.model_validate(kw)


def error_text(excinfo) -> str:
    return " | ".join(e["msg"] for e in excinfo.value.errors())


# --- options validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"set": {"NotAKeyword": "x"}}, "'NotAKeyword' is not a DICOM keyword", id="unknown-keyword"),
        pytest.param({"set_if_missing": {"PatientNmae": "x"}}, "'PatientNmae' is not a DICOM keyword",
                     id="unknown-keyword-if-missing"),
        pytest.param({"remove": ["NotAKeyword"]}, "'NotAKeyword' is not a DICOM keyword", id="unknown-keyword-remove"),
        pytest.param({"set": {"ReferencedSeriesSequence": "x"}}, "is a sequence", id="sequence"),
        pytest.param({"set": {"TransferSyntaxUID": "1.2.840.10008.1.2"}}, "file meta information", id="file-meta"),
        pytest.param({"remove": ["MediaStorageSOPInstanceUID"]}, "file meta information", id="file-meta-remove"),
        pytest.param({"set": {"PixelData": "x"}}, "pixel data", id="pixel-data"),
        pytest.param({"remove": ["PixelData"]}, "pixel data", id="pixel-data-remove"),
        pytest.param({"set": {"Modality": "X" * 17}}, "exceeds the maximum length of 16 allowed for VR CS",
                     id="too-long-for-CS"),
        pytest.param({"set": {"StudyDate": "2024-01-01"}}, "Invalid value for VR DA", id="bad-date-format"),
        pytest.param({"set": {"StudyDate": "20241399"}}, "Invalid value for VR DA", id="bad-date-month"),
        pytest.param({"set": {"Rows": "512"}}, "Rows (VR US) takes whole numbers", id="string-for-US"),
        pytest.param({"set": {"Rows": True}}, "Rows (VR US) takes whole numbers", id="bool-for-US"),
        pytest.param({"set": {"SliceThickness": {"a": 1}}}, "expected a value or a list of values", id="mapping-value"),
        pytest.param({"set": {"Modality": "CT"}, "remove": ["Modality"]}, "['Modality'] both set and removed",
                     id="set-and-removed"),
        pytest.param({"set_if_missing": {"BodyPartExamined": "HEAD"}, "remove": ["BodyPartExamined"]},
                     "['BodyPartExamined'] both set and removed", id="filled-and-removed"),
        pytest.param({}, "nothing to do", id="empty"),
        pytest.param({"set": {}, "set_if_missing": {}, "remove": []}, "nothing to do", id="all-empty"),
    ],
)
def test_bad_options_are_refused_with_the_reason(raw, expected):
    with pytest.raises(ValidationError) as excinfo:
        options(**raw)
    assert expected in error_text(excinfo)


def test_unknown_option_key_is_refused():
    with pytest.raises(ValidationError) as excinfo:
        options(set={"Modality": "CT"}, overwrite=True)
    errors = excinfo.value.errors()
    assert [e["type"] for e in errors] == ["extra_forbidden"]
    assert errors[0]["loc"] == ("overwrite",)


def test_good_options_are_accepted_and_frozen():
    opts = options(set={"InstitutionName": "St. Elsewhere"}, set_if_missing={"BodyPartExamined": "HEAD"},
                   remove=["OtherPatientIDs"])
    assert opts.set == {"InstitutionName": "St. Elsewhere"}
    assert opts.set_if_missing == {"BodyPartExamined": "HEAD"}
    assert opts.remove == ["OtherPatientIDs"]
    with pytest.raises(ValidationError):
        opts.set = {}  # type: ignore[misc]


@pytest.mark.parametrize(
    ("keyword", "given", "stored"),
    [
        ("StudyDate", 20240101, "20240101"),
        ("SeriesNumber", 7, "7"),
        ("SliceThickness", 2.5, "2.5"),
        ("AccessionNumber", 12345, "12345"),
    ],
)
def test_numbers_for_text_vrs_become_strings(keyword, given, stored):
    opts = options(set={keyword: given})
    assert opts.set[keyword] == stored
    assert isinstance(opts.set[keyword], str)


def test_numeric_vrs_keep_numbers_and_lists_stay_lists():
    opts = options(set={"Rows": 64, "ImageType": ["DERIVED", "SECONDARY"]})
    assert opts.set["Rows"] == 64 and isinstance(opts.set["Rows"], int)
    assert opts.set["ImageType"] == ["DERIVED", "SECONDARY"]


def test_stage_is_registered_under_its_yaml_name():
    assert SetAttributes.name == "set-attributes"
    assert SetAttributes.Options is SetAttributesOptions
    assert SetAttributes.missing_dependencies() == []


# --- process -----------------------------------------------------------------------------


def test_process_sets_fills_and_removes(ct):
    before = pydicom.dcmread(ct)
    assert "BodyPartExamined" not in before  # absent
    assert before.AccessionNumber == ""  # present but empty
    assert before.Modality == "CT" and before.StationName == "CT01_OC0"
    assert "OtherPatientIDs" not in before

    stage = SetAttributes(options(
        set={"InstitutionName": "St. Elsewhere", "StudyDate": 20240101},
        set_if_missing={"BodyPartExamined": "HEAD", "AccessionNumber": "ACC1", "Modality": "MR"},
        remove=["StationName", "OtherPatientIDs"],  # the second is absent: not an error
    ))
    item = make_item(ct)
    assert item.modified is False
    result = stage.process(item)
    assert result is item
    assert item.modified is True

    ds = item.dataset
    assert ds.InstitutionName == "St. Elsewhere"
    assert ds.StudyDate == "20240101"
    assert ds.BodyPartExamined == "HEAD"  # was absent
    assert ds.AccessionNumber == "ACC1"  # was empty
    assert ds.Modality == "CT"  # was present: left alone
    assert "StationName" not in ds
    assert "OtherPatientIDs" not in ds
    assert pydicom.dcmread(ct).InstitutionName == "JFK IMAGING CENTER"  # the spooled original is untouched


def test_written_file_changes_only_the_named_attributes(ct, tmp_path):
    stage = SetAttributes(options(
        set={"InstitutionName": "St. Elsewhere"},
        set_if_missing={"BodyPartExamined": "HEAD", "AccessionNumber": "ACC1", "Modality": "MR"},
        remove=["StationName"],
    ))
    item = stage.process(make_item(ct))
    out = tmp_path / "out" / "ct.dcm"
    size = item.write(out)
    assert size == out.stat().st_size > 0
    assert not list(out.parent.glob("*.part"))

    orig = pydicom.dcmread(ct)
    new = pydicom.dcmread(out)
    touched = {pydicom.datadict.tag_for_keyword(k) for k in
               ("InstitutionName", "BodyPartExamined", "AccessionNumber", "StationName")}
    assert set(orig.keys()) - set(new.keys()) == {pydicom.datadict.tag_for_keyword("StationName")}
    assert set(new.keys()) - set(orig.keys()) == {pydicom.datadict.tag_for_keyword("BodyPartExamined")}
    differing = []
    for tag in set(orig.keys()) & set(new.keys()):
        if tag in touched:
            continue
        a, b = orig.get_item(tag), new.get_item(tag)  # raw elements: the bytes as stored
        if a.VR != b.VR or a.value != b.value:
            differing.append(str(tag))
    assert differing == []
    assert new.PixelData == orig.PixelData
    assert len(new.PixelData) == 128 * 128 * 2
    assert (new.pixel_array == orig.pixel_array).all()
    assert new.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
    assert new.file_meta.MediaStorageSOPInstanceUID == orig.SOPInstanceUID
    assert new.InstitutionName == "St. Elsewhere"
    assert new.BodyPartExamined == "HEAD"
    assert new.AccessionNumber == "ACC1"
    assert new.Modality == "CT"
    assert "StationName" not in new


def test_fill_if_missing_treats_empty_numeric_value_as_missing(ct):
    ds = pydicom.dcmread(ct)
    ds.PlanarConfiguration = None  # present, empty (VR US)
    ds.save_as(ct)
    assert pydicom.dcmread(ct)["PlanarConfiguration"].value is None
    stage = SetAttributes(options(set_if_missing={"PlanarConfiguration": 0, "Rows": 64}))
    item = stage.process(make_item(ct))
    assert item.dataset.PlanarConfiguration == 0
    assert item.dataset.Rows == 128  # present: kept


def test_ambiguous_vr_integer_attribute_can_be_set():
    opts = options(set_if_missing={"PixelPaddingValue": -1000})
    assert opts.set_if_missing == {"PixelPaddingValue": -1000}


def test_set_values_survive_a_write_with_their_vr(ct, tmp_path):
    stage = SetAttributes(options(set={"StudyDate": 20240101, "SeriesNumber": 9, "ImageType": ["DERIVED", "SECONDARY"]}))
    item = stage.process(make_item(ct))
    out = tmp_path / "out.dcm"
    item.write(out)
    new = pydicom.dcmread(out)
    assert new["StudyDate"].VR == "DA" and new.StudyDate == "20240101"
    assert new["SeriesNumber"].VR == "IS" and new.SeriesNumber == 9
    assert list(new.ImageType) == ["DERIVED", "SECONDARY"]
