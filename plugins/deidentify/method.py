"""What the object says about its de-identification (PS3.15 E.1, PS3.3 SOP Common module).

- Patient Identity Removed (0012,0062) = YES;
- De-identification Method (0012,0063): earlier values kept, then ``pacsguard deidentify:
  PS3.15 Basic Profile`` and the name of each option used;
- De-identification Method Code Sequence (0012,0064): earlier items kept, then one item
  per profile and option used, from CID 7050 "De-identification Method" (DICOM PS3.16;
  the codes, scheme DCM, and meanings are taken from pydicom's copy of PS3.16,
  ``pydicom.sr.codedict.codes.DCM``): 113100 Basic Application Confidentiality Profile,
  113101 Clean Pixel Data, 113102 Clean Recognizable Visual Features (claimed only with
  ``visual_features: cleaned``, the route vouching for its images), 113103 Clean Graphics, 113104 Clean Structured Content, 113105 Clean
  Descriptors, 113106 / 113107 Retain Longitudinal Temporal Information Full / Modified
  Dates, 113108 Retain Patient Characteristics, 113109 Retain Device Identity, 113110
  Retain UIDs, 113111 Retain Safe Private, 113112 Retain Institution Identity;
- Longitudinal Temporal Information Modified (0028,0303): MODIFIED (dates shifted),
  UNMODIFIED (full dates retained) or REMOVED.
"""

from __future__ import annotations

from functools import lru_cache

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

from pacsguard.daemon.elements import new_dataset, new_element

#: stage option -> CID 7050 keyword in pydicom's DCM codes, in the order written
OPTION_CODES = (
    ("clean_pixel_data", "CleanPixelDataOption"),
    ("clean_recognizable_visual_features", "CleanRecognizableVisualFeaturesOption"),
    ("clean_graphics", "CleanGraphicsOption"),
    ("clean_structured_content", "CleanStructuredContentOption"),
    ("clean_descriptors", "CleanDescriptorsOption"),
    ("retain_longitudinal_full_dates", "RetainLongitudinalTemporalInformationFullDatesOption"),
    ("retain_longitudinal_modified_dates", "RetainLongitudinalTemporalInformationModifiedDatesOption"),
    ("retain_patient_characteristics", "RetainPatientCharacteristicsOption"),
    ("retain_device_identity", "RetainDeviceIdentityOption"),
    ("retain_uids", "RetainUidsOption"),
    ("retain_safe_private", "RetainSafePrivateOption"),
    ("retain_institution_identity", "RetainInstitutionIdentityOption"),
)
BASIC = "BasicApplicationConfidentialityProfile"
METHOD_TEXT = "pacsguard deidentify: PS3.15 Basic Profile"


_CODE_VALUE, _SCHEME, _MEANING = 0x00080100, 0x00080102, 0x00080104
_METHOD, _METHOD_CODES = 0x00120063, 0x00120064


@lru_cache(maxsize=None)
def _code(keyword: str) -> tuple[str, str, str]:
    c = getattr(codes.DCM, keyword)
    return c.value, c.scheme_designator, c.meaning


def code(keyword: str):
    return getattr(codes.DCM, keyword)


def _item(keyword: str) -> Dataset:
    value, scheme, meaning = _code(keyword)
    elements = {}
    for tag, vr, v in ((_CODE_VALUE, "SH", value), (_SCHEME, "SH", scheme), (_MEANING, "LO", meaning)):
        e = new_element(tag, vr, v)
        elements[e.tag] = e  # new elements in a new item: nothing for __setitem__ to do
    return new_dataset(elements)


def values(ds: Dataset, used: list[str], dates: str) -> list[tuple[str, object]]:
    """The method attributes (:data:`MARKED`, in order) for the options ``used``."""
    keywords = [BASIC] + [kw for option, kw in OPTION_CODES if option in used]
    prior_text = []
    if _METHOD in ds._dict:
        value = ds[_METHOD].value
        prior_text = [str(v) for v in (value if isinstance(value, (list, MultiValue)) else [value]) if v]
    texts = [METHOD_TEXT] + [_code(kw)[2] for kw in keywords[1:]]
    prior = list(ds[_METHOD_CODES].value or []) if _METHOD_CODES in ds._dict else []
    have = {(i.get("CodeValue"), i.get("CodingSchemeDesignator")) for i in prior}
    items = prior + [_item(kw) for kw in keywords if (_code(kw)[0], "DCM") not in have]
    text = [t for t in prior_text if t not in texts] + texts
    return [("PatientIdentityRemoved", "YES"), ("DeidentificationMethod", text if len(text) > 1 else text[0]),
            ("DeidentificationMethodCodeSequence", Sequence(items)),
            ("LongitudinalTemporalInformationModified", dates)]


@lru_cache(maxsize=None)
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    return tag, dictionary_VR(tag)


def element(keyword: str, value) -> DataElement:
    tag, vr = _tag_vr(keyword)
    return new_element(tag, vr, value)
