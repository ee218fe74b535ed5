"""Raw values read without pydicom's conversion equal what its conversion gives."""

from __future__ import annotations

import copy
import warnings

import pydicom
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from conftest import bundled_images
from pacsguard.daemon.rawvalues import CONVERT, of_raw, value

KINDS = ("OB", "OW", "US", "UL", "SS", "SL", "AT", "LO", "SH", "CS", "UI")


def _plain(v):
    """A converted value in plain types: lists for MultiValue, ints for tags, str for UIDs."""
    if isinstance(v, (MultiValue, list)):
        return [_plain(x) for x in v]
    if isinstance(v, BaseTag):
        return int(v)
    if isinstance(v, str):
        return str(v)
    return v


def _converted(raw: RawDataElement):
    ds = pydicom.Dataset()
    ds._dict[raw.tag] = raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds[raw.tag].value


def test_on_the_corpus_every_value_read_here_is_the_converted_one():
    read, seen_kinds = 0, set()
    for path in bundled_images():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        for tag, raw in list(ds._dict.items()):
            if not isinstance(raw, RawDataElement) or raw.VR not in KINDS or tag >> 16 & 1:
                continue
            mine = of_raw(raw, raw.VR)
            if mine is CONVERT:
                continue
            try:
                theirs = _converted(copy.copy(raw))
            except Exception:
                continue  # pydicom cannot convert it; what is read here is never compared with it
            assert _plain(mine) == _plain(theirs), (path.name, Tag(tag), raw.VR)
            read += 1
            seen_kinds.add(raw.VR)
    assert read > 1000 and {"US", "UL", "UI", "CS", "LO", "SH", "AT", "OW"} <= seen_kinds, (read, seen_kinds)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KINDS), st.binary(max_size=24), st.booleans())
def test_random_values_read_here_equal_the_converted_ones(vr, data, implicit):
    tag = {"OB": 0x00091001, "OW": 0x00091002}.get(vr)
    # standard tags of each VR (their dictionary VR is the one named, as an implicit reader needs)
    tag = tag or {"US": 0x00280010, "UL": 0x00081161, "SS": 0x00189219, "SL": 0x00186020, "AT": 0x00209165,
                  "LO": 0x00081030, "SH": 0x00080050, "CS": 0x00080060, "UI": 0x00080018}[vr]
    if tag >> 16 & 1:
        implicit = False  # a private tag's VR in implicit VR would need its creator
    raw = RawDataElement(Tag(tag), None if implicit else vr, len(data), data, 0, implicit, True)
    mine = of_raw(raw, vr)
    if mine is CONVERT:
        return
    assert _plain(mine) == _plain(_converted(raw))


def test_what_is_left_to_pydicom():
    def raw(vr, data, little=True):
        return RawDataElement(Tag(0x00080060), vr, len(data), data, 0, False, little)

    assert of_raw(raw("CS", "É".encode("latin-1")), "CS") is CONVERT  # the character set decides
    assert of_raw(raw("CS", b""), "CS") is CONVERT  # empty: pydicom's empty value
    assert of_raw(raw("US", b"\x01\x00", little=False), "US") is CONVERT
    assert of_raw(raw("US", b"\x01\x00\x02"), "US") is CONVERT
    assert of_raw(raw("UN", b"MR"), "CS") is CONVERT  # another VR than the one asked for
    assert of_raw(raw("UN", b"MR"), "UN") is CONVERT  # UN: pydicom gives it the dictionary VR
    assert of_raw(raw("DS", b"1.5"), "DS") is CONVERT  # not a kind read here
    ds = pydicom.Dataset()
    ds.Modality = "CT"
    assert value(ds, 0x00080060, "CS") == "CT"  # converted already: its value
