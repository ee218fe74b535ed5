"""The ``set-attributes`` stage: admins coerce attributes on the way through.

Example::

    - set-attributes:
        set: {InstitutionName: "St. Elsewhere", ImageComments: "via pacsguard"}
        set_if_missing: {BodyPartExamined: "UNKNOWN"}
        remove: [OtherPatientIDs]

``set`` overwrites, ``set_if_missing`` only fills absent or empty attributes, ``remove``
deletes. Keywords and values are checked against the DICOM dictionary when the config is
loaded (a bad value is a config error, not a runtime surprise).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.valuerep import validate_value

from pacsguard.daemon.extension import Options, Stage
from pacsguard.daemon.hookspecs import hookimpl

_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_INT_VRS = {"US", "SS", "UL", "SL", "UV", "SV"}
_FLOAT_VRS = {"FL", "FD"}


def _check_keyword(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    if (tag >> 16) == 0x0002:
        raise ValueError(f"{keyword!r} is file meta information, which pacsguard manages")
    if (tag >> 16) == 0x7FE0:
        raise ValueError(f"{keyword!r} is pixel data: use a pixel stage")
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        raise ValueError(f"{keyword!r} is a sequence: only plain attributes can be set")
    return vr


def _coerce(keyword: str, value: Any) -> Any:
    vr = _check_keyword(keyword)
    # Some attributes have a VR that depends on the data set ("US or SS"): take the value
    # when it is valid for any of them; pydicom resolves the VR when it writes.
    candidates = vr.split(" or ")
    kind = _kind(candidates[0])
    if kind is None or any(_kind(c) != kind for c in candidates):
        raise ValueError(f"{keyword} has VR {vr}, which set-attributes does not write")
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, (dict, list)) or v is None:
            raise ValueError(f"{keyword}: expected a value or a list of values")
        if kind == "text":
            v = str(v)
        elif kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{keyword} (VR {vr}) takes whole numbers")
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{keyword} (VR {vr}) takes numbers")
            v = float(v)
        problems = []
        for candidate in candidates:
            try:
                validate_value(candidate, v, pydicom_config.RAISE)
                break
            except ValueError as exc:
                problems.append(str(exc).split(" Please see")[0])
        else:
            raise ValueError(f"{keyword}: {problems[0]}")
        out.append(v)
    return out if isinstance(value, list) else out[0]


def _kind(vr: str) -> str | None:
    if vr in _TEXT_VRS:
        return "text"
    if vr in _INT_VRS:
        return "int"
    if vr in _FLOAT_VRS:
        return "float"
    return None


class SetAttributesOptions(Options):
    set: dict[str, Any] = Field(default_factory=dict, description="keyword: value to write (overwrites)")
    set_if_missing: dict[str, Any] = Field(default_factory=dict,
                                           description="keyword: value, written only if absent or empty")
    remove: list[str] = Field(default_factory=list, description="keywords to delete")

    @field_validator("set", "set_if_missing")
    @classmethod
    def _values(cls, v: dict[str, Any]) -> dict[str, Any]:
        return {k: _coerce(k, val) for k, val in v.items()}

    @field_validator("remove")
    @classmethod
    def _removals(cls, v: list[str]) -> list[str]:
        for k in v:
            _check_keyword(k)
        return v

    @model_validator(mode="after")
    def _no_conflict(self):
        both = (set(self.set) | set(self.set_if_missing)) & set(self.remove)
        if both:
            raise ValueError(f"{sorted(both)} both set and removed")
        if not (self.set or self.set_if_missing or self.remove):
            raise ValueError("nothing to do: give set, set_if_missing or remove")
        return self


class SetAttributes(Stage):
    """Set, fill in or remove DICOM attributes by keyword."""

    name = "set-attributes"
    Options = SetAttributesOptions

    def process(self, item):
        ds = item.dataset
        for keyword, value in self.options.set.items():
            setattr(ds, keyword, value)
        for keyword, value in self.options.set_if_missing.items():
            if keyword not in ds or ds[keyword].value in (None, "", []):
                setattr(ds, keyword, value)
        for keyword in self.options.remove:
            if keyword in ds:
                delattr(ds, keyword)
        return item


@hookimpl
def pacsguard_register_stages(register):
    register(SetAttributes)
