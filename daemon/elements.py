"""New data elements and data sets without pydicom's per-attribute machinery.

``DataElement(tag, vr, value)`` runs the value through its conversion and validation, and
``Dataset()`` sets each of its attributes through ``Dataset.__setattr__``; the protection
stages make dozens of elements per object (replacements, private blocks, markings), for
which that is most of their cost. These build the same objects directly, for values of the
type pydicom's conversion would give them (so nothing is left for it to do).
"""

from __future__ import annotations

from pydicom import config as _pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import PersonName

_NO_VALIDATION = _pydicom_config.IGNORE

#: VRs whose single string value pydicom keeps as the str itself (DA, DT, TM too unless
#: ``config.datetime_conversion``)
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
_DATETIME_VRS = frozenset({"DA", "DT", "TM"})
#: VRs whose value pydicom keeps as given: bytes (not UN: its constructor may give it the
#: dictionary VR), and binary integers (and a Sequence, for SQ)
_BYTE_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV"})
_INT_VRS = frozenset({"US", "UL", "SS", "SL", "UV", "SV"})


def new_element(tag: int, vr: str, value) -> DataElement:
    """``DataElement(tag, vr, value, validation_mode=IGNORE)``: its value of the type
    pydicom's conversion gives (UID, PersonName, MultiValue, ...), not validated (a
    stage's own values: keyed UIDs, dummies, empties, masked text, nonces, lengths)."""
    tag = tag if type(tag) is BaseTag else BaseTag(tag)
    kind = type(value)
    if kind is str and "\\" not in value:  # a single value, converted here (pydicom's rules)
        if vr in _PLAIN_VRS or vr in _DATETIME_VRS and not _pydicom_config.datetime_conversion:
            value_ = value
        elif vr == "UI":
            value_ = UID(value, _NO_VALIDATION)
        elif vr == "PN":
            value_ = PersonName(value, validation_mode=_NO_VALIDATION)
        else:
            return DataElement(tag, vr, value, validation_mode=_NO_VALIDATION)
        return converted(tag, vr, value_)
    if (kind is bytes and vr in _BYTE_VRS) or (kind is int and vr in _INT_VRS) or (vr == "SQ" and kind is Sequence):
        return converted(tag, vr, value)
    if kind is list and len(value) > 1:  # several values: the MultiValue pydicom makes of them
        if vr in _PLAIN_VRS and all(type(v) is str and "\\" not in v for v in value):
            return converted(tag, vr, MultiValue(str, value))
        if vr in _INT_VRS and all(type(v) is int for v in value):
            return converted(tag, vr, MultiValue(int, value))
    if isinstance(value, (MultiValue, BaseTag)) and vr != "UN":  # converted already (a MultiValue of pydicom's, an AT's tag)
        return converted(tag, vr, value)
    return DataElement(tag, vr, value, validation_mode=_NO_VALIDATION)


def converted(tag: BaseTag, vr: str, value) -> DataElement:
    """``DataElement(tag, vr, value, already_converted=True, validation_mode=IGNORE)``
    for a known VR (not UN: nothing for its constructor to correct), its attributes set
    directly."""
    element = DataElement.__new__(DataElement)
    element.__dict__.update(tag=tag, VR=vr, validation_mode=_NO_VALIDATION, _value=value, file_tell=None,
                            is_undefined_length=False, private_creator=None)
    return element


_EMPTY_DATASET = dict(Dataset().__dict__)


def new_dataset(elements: dict | None = None) -> Dataset:
    """``Dataset(elements)`` (``elements``: BaseTag -> element) without its ``__init__``,
    whose attribute sets go through pydicom's ``__setattr__``: a copy of a new Dataset's
    attributes, the mutable ones fresh."""
    ds = Dataset.__new__(Dataset)
    attributes = ds.__dict__  # set here, not through Dataset.__setattr__
    attributes.update(_EMPTY_DATASET)
    attributes.update(_dict={} if elements is None else elements, _private_blocks={}, _pixel_id={},
                      _pixel_array_opts=dict(_EMPTY_DATASET["_pixel_array_opts"]))
    return ds
