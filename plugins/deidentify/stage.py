"""The ``deidentify`` stage: its options and the order of its work on one object."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from pacsguard.daemon import rawvalues
from pacsguard.daemon.config import MatchOps, MatchValue  # noqa: F401 (MatchOps: MatchValue refers to it)
from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.extension import Options, Stage
from pacsguard.daemon.keys import KeyUse
from pacsguard.daemon.router import compile_condition, lookup

from . import burned, method, record
from .keyed import Keyed, check_template
from .profile import compile_profile
from .table import OPTION_COLUMNS
from .walker import Run, put

_SECRET = frozenset({"secret"})
#: VL Photographic, Video Photographic Image Storage: photographs, possibly of a face
VISUAL_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1"})
_PIXEL_DATA = 0x7FE00010
_SAFE_PRIVATE = re.compile(r"^([0-9A-Fa-f]{4}),[xX]{2}([0-9A-Fa-f]{2})$")


class CleanPixelRule(Options):
    match: dict[str, MatchValue] = Field(min_length=1, description="conditions that all must hold, as in routes[]"
                                         ".match (DICOM keywords: Manufacturer, ManufacturerModelName, Rows, Columns, ...)")
    rectangles: list[tuple[int, int, int, int]] = Field(min_length=1, description="[x, y, width, height] in pixels "
                                                        "from the top left corner: blanked in every frame")
    fill: int = Field(0, description="the stored pixel value written into the rectangles")

    @field_validator("match")
    @classmethod
    def _keywords(cls, v: dict) -> dict:
        for keyword in v:
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{keyword!r} is not a DICOM keyword")
        return v

    @field_validator("rectangles")
    @classmethod
    def _sizes(cls, v: list) -> list:
        for x, y, w, h in v:
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"rectangle {[x, y, w, h]}: x and y are 0 or more, width and height more than 0")
        return v


class DeidentifyOptions(Options):
    key: str = Field(description="name of a secret key (keys:, type secret): keyed UIDs, pseudonyms, date offsets")
    pseudonym: str = Field("ANON-{hash:8}", description="Patient ID and Patient's Name: a template where {hash} / "
                           "{hash:N} is N hex digits of the keyed hash of the patient's ID; empty: zero length")
    retain_longitudinal_full_dates: bool = Field(False, description="Retain Longitudinal Temporal Information with "
                                                 "Full Dates Option: dates and times kept")
    retain_longitudinal_modified_dates: bool = Field(False, description="Retain Longitudinal Temporal Information with "
                                                     "Modified Dates Option: dates "
                                                     "shifted by a keyed per-patient offset (times kept)")
    max_date_shift_days: int = Field(365, ge=7, le=36500, description="Modified Dates: the offset is 1 to this many "
                                     "days back")
    keep_weekday: bool = Field(False, description="Modified Dates: shift by whole weeks, so weekdays stay")
    retain_patient_characteristics: bool = Field(False, description="Retain Patient Characteristics Option (sex, "
                                                 "age, size, weight, ...)")
    retain_device_identity: bool = Field(False, description="Retain Device Identity Option (serial numbers, "
                                         "station names; AE titles keyed)")
    retain_institution_identity: bool = Field(False, description="Retain Institution Identity Option")
    retain_uids: bool = Field(False, description="Retain UIDs Option: UIDs kept instead of keyed")
    retain_safe_private: dict[str, list[str]] = Field(default_factory=dict, description="Retain Safe Private Option:"
                                                      " private creator -> its elements known to be safe, as "
                                                      "\"gggg,xxee\" (e.g. \"0019,xx0B\"); empty: all private removed")
    clean_descriptors: bool = Field(False, description="Clean Descriptors Option: descriptions kept, the object's "
                                    "own identifiers masked in them")
    clean_structured_content: bool = Field(False, description="Clean Structured Content Option: SR content, "
                                           "acquisition context, specimen preparation kept and cleaned")
    clean_graphics: bool = Field(False, description="Clean Graphics Option: graphic annotations, overlays and "
                                 "curves kept, their text cleaned")
    clean_pixel_data: list[CleanPixelRule] = Field(default_factory=list, description="Clean Pixel Data Option: "
                                                   "rules (the first that matches applies) of rectangles to blank")
    burned_in: Literal["quarantine", "allow"] = Field("quarantine", description="an object likely to carry burned-in"
                                                      " identity that no clean_pixel_data rule matches: quarantine,"
                                                      " or allow (pass with its pixels as they are)")

    visual_features: Literal["quarantine", "allow", "cleaned"] = Field(
        "quarantine", description="Clean Recognizable Visual Features Option (PS3.15 E.3.2): objects whose pixels may "
        "show a face (VL / video photographic, external camera XC, and visual_features_sop_classes): quarantine; "
        "allow (pass, the option NOT claimed); cleaned (the route vouches that its images are already cleaned: the "
        "option is claimed, code 113102, on every object)")
    visual_features_sop_classes: list[str] = Field(default_factory=list, description="more SOP Class UIDs that need "
                                                   "Clean Recognizable Visual Features (e.g. head CT/MR volumes' classes)")

    @field_validator("visual_features_sop_classes")
    @classmethod
    def _uids(cls, v: list) -> list:
        for uid in v:
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid) or len(uid) > 64:
                raise ValueError(f"{uid!r} is not a UID")
        return v

    @field_validator("pseudonym")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v)

    @field_validator("retain_safe_private")
    @classmethod
    def _safe(cls, v: dict) -> dict:
        for creator, elements in v.items():
            if not creator.strip() or len(creator) > 64 or "\\" in creator:
                raise ValueError(f"private creator {creator!r}: 1 to 64 characters, no backslash")
            if not elements:
                raise ValueError(f"private creator {creator!r}: list its safe elements")
            for e in elements:
                m = _SAFE_PRIVATE.match(e)
                if not m or not int(m[1], 16) & 1 or not 0x0009 <= int(m[1], 16) <= 0xFFFD:
                    raise ValueError(f"{e!r}: a private element is \"gggg,xxee\" with gggg an odd group (0009-FFFD)")
        return v

    @model_validator(mode="after")
    def _dates(self):
        if self.retain_longitudinal_full_dates and self.retain_longitudinal_modified_dates:
            raise ValueError("retain_longitudinal_full_dates and retain_longitudinal_modified_dates exclude each other")
        if self.keep_weekday and not self.retain_longitudinal_modified_dates:
            raise ValueError("keep_weekday applies to retain_longitudinal_modified_dates")
        return self


@dataclass(frozen=True)
class Settings:
    """What the walker reads of the options, prepared once."""

    pseudonym: str
    max_date_shift_days: int
    keep_weekday: bool
    retain_longitudinal_modified_dates: bool
    safe_private_set: frozenset


def enabled(options: DeidentifyOptions) -> set[str]:
    return {name for name in OPTION_COLUMNS.values() if getattr(options, name)}


class Deidentify(Stage):
    """De-identify by DICOM PS3.15 Table E.1-1 and its options (keyed, recorded)."""

    name = "deidentify"
    Options = DeidentifyOptions

    def __init__(self, options: DeidentifyOptions):
        super().__init__(options)
        self.enabled = enabled(options)
        self.profile = compile_profile(self.enabled, pseudonyms=bool(options.pseudonym))
        safe = frozenset((int(m[1], 16), creator.strip().upper(), int(m[2], 16))
                         for creator, elements in options.retain_safe_private.items()
                         for m in (_SAFE_PRIVATE.match(e) for e in elements))
        self.settings = Settings(options.pseudonym, options.max_date_shift_days, options.keep_weekday,
                                 options.retain_longitudinal_modified_dates, safe)
        self.rules = [([(k, compile_condition(v)) for k, v in rule.match.items()], rule)
                      for rule in options.clean_pixel_data]
        self._keyed: dict[str, Keyed] = {}
        self._lock = threading.Lock()

    @classmethod
    def key_uses(cls, options: DeidentifyOptions) -> list[KeyUse]:
        return [KeyUse("key", options.key, _SECRET)]

    def keyed(self, key) -> Keyed:
        with self._lock:
            k = self._keyed.get(key.key_id)
            if k is None:
                k = self._keyed[key.key_id] = Keyed(key.secret)
            return k

    def process(self, item):
        key = item.keys.get(self.options.key)
        if key is None or not key.secret:
            raise QuarantineError(f"key {self.options.key!r} is not loaded in the key store (a secret)")
        item.results[self.name] = self.apply(item.dataset, self.keyed(key), item.pixels)
        return item

    def may_show_face(self, ds: Dataset) -> str | None:
        """Why the pixels of ``ds`` may show recognizable visual features, or None."""
        sop_class = str(burned.get(ds, burned.SOP_CLASS, "") or "").strip("\0 ")
        if sop_class in VISUAL_SOP_CLASSES or sop_class in self.options.visual_features_sop_classes:
            return f"SOP Class {sop_class}"
        if str(burned.get(ds, burned.MODALITY, "") or "").strip().upper() == "XC":
            return "modality XC (external camera photography)"
        return None

    def rule_for(self, ds: Dataset) -> CleanPixelRule | None:
        for conditions, rule in self.rules:
            if all(pred(lookup(k, ds, None)) for k, pred in conditions):
                return rule
        return None

    def apply(self, ds: Dataset, keyed: Keyed, pixels=None) -> Dataset:
        """De-identify ``ds`` in place; return the record of original values.
        ``pixels()`` gives the decoded pixels when a Clean Pixel Data rule applies."""
        why = burned.risk(ds)
        rule = self.rule_for(ds) if _PIXEL_DATA in ds._dict else None
        if why and rule is None and self.options.burned_in != "allow":
            raise QuarantineError(f"burned-in identity likely ({why}) and no clean_pixel_data rule matches it "
                                  "(burned_in: allow on the route passes such objects)")
        if self.options.visual_features == "quarantine" and (face := self.may_show_face(ds)):
            raise QuarantineError(f"recognizable visual features possible ({face}): the Clean Recognizable Visual "
                                  "Features Option is not applied (visual_features: cleaned on a route whose images "
                                  "are cleaned, or allow)")
        originals, media_uid = Run(self.profile, keyed, self.settings, ds).top_level(ds)
        rec = record.new_record(ds, originals)
        used = sorted(self.enabled)
        if self.options.visual_features == "cleaned":
            used.append("clean_recognizable_visual_features")
        added: list[int] = []
        if rule is not None:
            burned.blank(ds, pixels() if pixels else ds.pixel_array, rule.rectangles, rule.fill)
            self._set(ds, rec, added, method.element("BurnedInAnnotation", "NO"))
            used.append("clean_pixel_data")
        dates = ("MODIFIED" if self.options.retain_longitudinal_modified_dates
                 else "UNMODIFIED" if self.options.retain_longitudinal_full_dates else "REMOVED")
        for keyword, value in method.values(ds, used, dates):
            self._set(ds, rec, added, method.element(keyword, value))
        record.note(rec, media_uid, added)
        return rec

    @staticmethod
    def _set(ds: Dataset, rec: Dataset, added: list, new) -> None:
        """Set ``new`` (a new element: the original, in the record, stays as it was), its
        original into the record, or its tag noted as added."""
        tag = new.tag
        old = ds._dict.get(tag)
        if old is not None:
            value = rawvalues.of_raw(old, new.VR) if type(old) is RawDataElement else rawvalues.CONVERT
            if value is rawvalues.CONVERT:
                if ds[tag] == new:
                    return
                old = ds[tag]
            elif value == new.value:
                return  # the same already (compared unconverted)
            if tag not in rec._dict:
                rec[tag] = old  # the original as it is (raw: the record converts it when read)
        else:
            added.append(tag)
        put(ds, tag, new)

