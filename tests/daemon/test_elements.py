"""The direct element constructors make what pydicom's constructors make."""

from __future__ import annotations

import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsguard.daemon.dicomwrite import encode_dataset
from pacsguard.daemon.elements import new_dataset, new_element

CASES = [
    (0x00080060, "CS", "CT"), (0x00100010, "PN", "DOE^JANE"), (0x00080018, "UI", "1.2.3.4"),
    (0x00082111, "ST", "text"), (0x00204000, "LT", "a longer text"), (0x00080020, "DA", "20260101"),
    (0x00280010, "US", 512), (0x00111004, "UL", 1 << 30), (0x00189219, "SS", -5), (0x00111003, "OB", b"\x01\x02"),
    (0x7FE00010, "OW", b"\x00\x01" * 8), (0x00111010, "LO", ["k1", "k2", "k3"]), (0x00111012, "UL", [80, 1168]),
    (0x00080008, "CS", ["ORIGINAL", "PRIMARY"]), (0x00111020, "AT", [0x00082111, 0x00204000]),
    (0x00080050, "SH", ["single"]), (0x00280030, "DS", ["0.5", "0.5"]), (0x00200013, "IS", "7"),
    (0x00111010, "LO", ["a\\b", "c"]), (0x00111012, "UL", [7]),
]


@pytest.mark.parametrize("tag,vr,value", CASES, ids=[f"{c[1]}-{c[2]!r}"[:40] for c in CASES])
def test_same_element_as_pydicoms(tag, vr, value):
    ours = new_element(tag, vr, value)
    theirs = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    assert (ours.tag, ours.VR, type(ours.value)) == (theirs.tag, theirs.VR, type(theirs.value))
    assert ours.value == theirs.value
    if isinstance(theirs.value, MultiValue):
        assert [type(v) for v in ours.value] == [type(v) for v in theirs.value]
    a, b = Dataset(), Dataset()
    for ds, e in ((a, ours), (b, theirs)):
        ds.set_original_encoding(False, True, ds._character_set)
        ds._dict[e.tag] = e
    assert encode_dataset(a, False) == encode_dataset(b, False)


def test_a_new_dataset_is_an_empty_dataset():
    ds, reference = new_dataset(), Dataset()
    assert ds.__dict__ == reference.__dict__
    ds.PatientName = "A^B"
    assert "PatientName" not in new_dataset() and len(Dataset()) == 0  # nothing shared
