"""Every row of PS3.15 Table E.1-1, generated from the shipped JSON: an attribute present at
the top level and inside a sequence item gets the action the Basic Profile prescribes, and
the action of each option column the row has when that option is on.

The expected action is worked out here from the JSON itself (and, for rows with
alternatives, from the documented Type 1 / Type 2 lists of ``choice.py``), not by asking
the stage's own compiled table."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources

import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsguard.plugins.deidentify import Deidentify, choice
from pacsguard.plugins.deidentify.keyed import Keyed

SECRET = b"table test secret key, 32 bytes+"
KEYED = Keyed(SECRET)
ROWS = json.loads(resources.files("pacsguard.plugins.deidentify")
                  .joinpath("ps3.15-confidentiality-profile-attributes.json").read_text())
COLUMNS = {"cleanDescOpt": "clean_descriptors", "cleanStructContOpt": "clean_structured_content",
           "cleanGraphOpt": "clean_graphics", "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
           "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
           "rtnPatCharsOpt": "retain_patient_characteristics", "rtnDevIdOpt": "retain_device_identity",
           "rtnInstIdOpt": "retain_institution_identity", "rtnUIDsOpt": "retain_uids",
           "rtnSafePrivOpt": "retain_safe_private"}
SAFE = {"ACME 1": ["0019,xx01"]}
PATIENT_ID = "PID-77"
NESTING = 0x00081115  # Referenced Series Sequence: not in the table, so kept and walked
ORIGINAL = {"PN": "DOE^JOHN", "LO": "LO VALUE OF DOE", "SH": "SH DOE", "LT": "a note about DOE",
            "ST": "short text DOE", "UT": "long text DOE", "UC": "UC DOE", "CS": "CSVALUE",
            "AE": "SECRETAE", "AS": "042Y", "DA": "20200315", "TM": "101010", "DT": "20200315101010",
            "DS": "42.5", "IS": "42", "UI": "1.2.826.0.1.3680043.2.1125.99.1", "UR": "http://secret.example/x",
            "US": 42, "SS": 42, "UL": 42, "SL": 42, "UV": 42, "SV": 42, "FL": 4.5, "FD": 4.5, "AT": 0x00100010,
            "OB": b"SECRETOB", "OW": b"SECRETOW", "UN": b"SECRETUN", "OF": b"\x01\x02\x03\x04",
            "OD": b"\x01" * 8, "OL": b"\x01" * 4, "OV": b"\x01" * 8}
NESTED_UID = "1.2.826.0.1.3680043.2.1125.99.2"


def digest() -> str:
    raw = resources.files("pacsguard.plugins.deidentify").joinpath(
        "ps3.15-confidentiality-profile-attributes.json").read_bytes()
    return hashlib.sha256(raw).hexdigest()


def test_the_shipped_table_is_the_documented_copy():
    assert len(ROWS) == 621
    assert digest() == "a99a35d1278e2bace8d90ff791b11aea2d45f1e3e1230388eb5224c9dbcd29e6"
    provenance = resources.files("pacsguard.plugins.deidentify").joinpath("PROVENANCE.md").read_text()
    assert digest() in provenance and "Innolitics" in provenance


_STAGES: dict = {}


def stage(option: str | None) -> Deidentify:
    if option not in _STAGES:
        opts = {"key": "k"}
        if option == "retain_safe_private":
            opts[option] = SAFE
        elif option:
            opts[option] = True
        _STAGES[option] = Deidentify(Deidentify.Options.model_validate(opts))
    return _STAGES[option]


def expected(row: dict, option: str | None, keyword: str, nested: bool = False) -> str:
    """The action by the table: the option's column, else the Basic Profile (E.3 choice)."""
    col = next((c for c, o in COLUMNS.items() if o == option), None)
    if col and row.get(col):
        return row[col]
    alternatives = row["basicProfile"].split("/")
    if len(alternatives) == 1:
        return alternatives[0]

    def holds(types):
        return keyword in types and types[keyword][1] in ("any", "nested" if nested else "top")

    if holds(choice.TYPE_1):
        return "U" if "U*" in alternatives else "D"
    if holds(choice.TYPE_2):
        return "Z" if "Z" in alternatives else "D"
    return alternatives[0]


def cases() -> list:
    return list(_cases())


def _cases():
    for row in ROWS:
        options = [None] + [COLUMNS[c] for c in COLUMNS if row.get(c)]
        for option in options:
            yield pytest.param(row, option, id=f"{row['id']}-{row['name']}-{option or 'basic'}")


def nested_item() -> Dataset:
    """What a sequence attribute holds: a code (kept), a text value, a UID reference."""
    item = Dataset()
    item.CodeValue = "T-12345"
    item.TextValue = "report text about DOE"
    item.ReferencedSOPInstanceUID = NESTED_UID
    return item


def element(tag: int) -> DataElement:
    vr = dictionary_VR(tag).split(" or ")[0]
    if vr == "SQ":
        return DataElement(tag, "SQ", Sequence([nested_item()]))
    value = ORIGINAL[vr]
    if vr == "UI":
        value = f"{value}.{tag}"
    return DataElement(tag, vr, value)


def synthetic(elems: list[DataElement]) -> Dataset:
    """PatientName / PatientID set (the identity the pseudonym and masking use), the row's
    elements at the top level, and again in an item of a kept sequence."""
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = PATIENT_ID
    for e in elems:
        ds[e.tag] = e
    inner = Dataset()
    for e in elems:
        inner[e.tag] = DataElement(e.tag, e.VR, e.value if e.VR != "SQ" else Sequence([nested_item()]))
    ds[NESTING] = DataElement(NESTING, "SQ", Sequence([inner]))
    return ds


def row_elements(row: dict) -> list[DataElement]:
    rid = row["id"]
    if rid == "50xxxxxx":
        return [DataElement(0x50000022, "LO", "curve about DOE"), DataElement(0x50003000, "OB", b"\x01\x02")]
    if rid == "60xx3000":
        return [DataElement(0x60000010, "US", 2), DataElement(0x60000011, "US", 8),
                DataElement(0x60003000, "OW", b"\x01\x02")]
    if rid == "60xx4000":
        return [DataElement(0x60020010, "US", 2), DataElement(0x60024000, "LT", "overlay about DOE")]
    if rid.startswith("gggg"):
        return [DataElement(0x00190010, "LO", "ACME 1"), DataElement(0x00191001, "LO", "SAFE VALUE"),
                DataElement(0x00191002, "LO", "UNSAFE VALUE DOE")]
    return [element(int(rid, 16))]


@pytest.mark.parametrize(("row", "option"), cases())
def test_row(row, option):
    elems = row_elements(row)
    ds = synthetic(elems)
    main = elems[-1] if not row["id"].startswith(("gggg", "60xx4")) else elems[1]
    keyword = keyword_for_tag(main.tag) or ""
    stage(option).apply(ds, KEYED)
    check(row, option, expected(row, option, keyword), elems, ds, top=True)
    (item,) = ds[NESTING].value
    check(row, option, expected(row, option, keyword, nested=True), elems, item, top=False)


def check(row, option, action, elems, ds, *, top):
    rid = row["id"]
    where = "top" if top else "nested"
    if rid.startswith("gggg"):
        creator, safe, unsafe = (e.tag for e in elems)
        assert unsafe not in ds, where
        if action == "C":
            assert ds[safe].value == "SAFE VALUE" and ds[creator].value == "ACME 1", where
        else:
            assert safe not in ds and creator not in ds, where
        return
    if rid in ("50xxxxxx", "60xx3000"):
        for e in elems:
            if action == "X":
                assert e.tag not in ds, (where, e.tag)
            elif isinstance(e.value, str):
                assert ds[e.tag].value == e.value.replace("DOE", "XXX"), (where, e.tag)  # text cleaned
            else:
                assert ds[e.tag].value == e.value, (where, e.tag)
        return
    if rid == "60xx4000":
        rows_, comments = elems
        assert ds[rows_.tag].value == 2, where  # the plane stays
        if action == "X":
            assert comments.tag not in ds, where
        else:
            assert ds[comments.tag].value == "overlay about XXX", where
        return
    (e,) = elems
    if action == "C" and e.VR not in CLEANABLE:
        action = expected(row, None, keyword_for_tag(e.tag), not top)  # nothing to clean: the Basic Profile's
    check_element(e, action, ds, where, option)


#: VRs whose values clean (dates shift, text is masked, AE titles are keyed, sequences walked)
CLEANABLE = {"DA", "DT", "TM", "AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "SQ"}


def check_element(e: DataElement, action: str, ds: Dataset, where: str, option):
    tag, vr, before = e.tag, e.VR, e.value
    keyword = keyword_for_tag(tag)
    if action == "X":
        assert tag not in ds, where
        return
    assert tag in ds, (where, action)
    after = ds[tag].value
    if vr == "SQ":
        check_sequence(action, after, where, option)
        return
    if keyword in ("PatientName", "PatientID") and action in ("Z", "D"):
        assert re.fullmatch(r"ANON-[0-9A-F]{8}", str(after)), where
        return
    if action == "K":
        assert after == before, where
    elif action == "Z":
        assert after in ("", None, b"", []), where
    elif action == "U" or (action == "D" and vr == "UI"):
        assert after == KEYED.uid(str(before)), where
    elif action == "D":
        assert after not in ("", None, b"") and after != before, where
    elif action == "C":
        check_clean(vr, before, after, where, option)
    else:
        raise AssertionError(action)


def check_clean(vr, before, after, where, option):
    if vr in ("DA", "DT") and option == "retain_longitudinal_modified_dates":
        assert after != before and len(str(after)) == len(str(before)) and str(after).isdigit(), where
    elif vr == "TM":
        assert after == before, where  # whole-day shifts keep the time of day
    elif vr == "AE":
        assert re.fullmatch(r"AE[0-9A-F]{14}", str(after)), where
    elif isinstance(before, str):
        assert "DOE" not in str(after) and len(str(after)) == len(before), where
    else:
        raise AssertionError(f"{vr} cannot be cleaned")


def check_sequence(action, after, where, option):
    if action == "Z":
        assert len(after) == 0, where
        return
    (item,) = after
    assert item.CodeValue == "T-12345", where
    uid = item.ReferencedSOPInstanceUID
    assert uid == (NESTED_UID if option == "retain_uids" else KEYED.uid(NESTED_UID)), where
    text = item.TextValue
    if action == "D":
        assert text == "ANONYMIZED", where
    elif action == "C":
        assert text == "report text about XXX", where
    else:
        assert text == "report text about DOE", where  # K, U: the sequence is kept, free text too


def test_scopes_differ_for_a_sequence_only_inside_items():
    st = stage(None)
    ds = synthetic([element(0x00081110)])  # Referenced Study Sequence: Type 2 only in Referenced Request items
    st.apply(ds, KEYED)
    assert "ReferencedStudySequence" not in ds
    assert len(ds.ReferencedSeriesSequence[0].ReferencedStudySequence) == 0


def test_every_row_is_covered_by_a_case():
    ids = {p.values[0]["id"] for p in cases()}
    assert len(ids) == 621
    assert sum(1 for _ in cases()) == 621 + sum(1 for r in ROWS for c in COLUMNS if r.get(c))


def test_clean_wins_when_two_options_disagree():
    """Date of Last Detector Calibration: Retain Device Identity says K, Modified Dates C."""
    st = Deidentify(Deidentify.Options(key="k", retain_device_identity=True,
                                       retain_longitudinal_modified_dates=True))
    ds = synthetic([DataElement(0x0018700C, "DA", "20200315")])
    st.apply(ds, KEYED)
    assert ds.DateOfLastDetectorCalibration != "20200315"
    offset = KEYED.day_offset(f"id:{PATIENT_ID}", 365, False)
    import datetime as dt
    assert ds.DateOfLastDetectorCalibration == (dt.date(2020, 3, 15) + dt.timedelta(days=offset)).strftime("%Y%m%d")
