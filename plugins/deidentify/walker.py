"""One pass over a data set, applying the compiled profile and recording what it changes.

The top level is changed in place; the original element of every attribute changed or
removed goes into the record. Below it nothing is changed in place: an item in which
something changes is rebuilt as a new item (its unchanged elements shared, not copied),
so that the original sequence stays intact for the record, whole. Elements the profile
keeps are never converted from their raw bytes (and large ones are never read), so the
cost is that of the attributes it touches.

Anything that cannot be read or de-identified safely raises QuarantineError naming the
attribute's tag, never its value.
"""

from __future__ import annotations

from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag, repeater_has_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import VR as VR_

from pacsguard.daemon.elements import new_element
from pacsguard.daemon.errors import QuarantineError

from . import values
from .keyed import Keyed, render
from .profile import Profile

KEEP, REMOVE = object(), object()
NORMAL, CLEAN, DUMMY = 0, 1, 2  # how free text not covered by a row is treated, inside sequences
MAX_DEPTH = 32
_PIXEL_GROUP = 0x7FE0
_PATIENT_ID, _PATIENT_NAME, _MEDIA_SOP_INSTANCE_UID = 0x00100020, 0x00100010, 0x00020003

#: Top-level attributes whose values are the object's identifiers (masked in cleaned text).
IDENTIFYING = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "AccessionNumber",
    "StudyID", "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord", "RequestingPhysician", "OperatorsName", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "IssuerOfPatientID",
)
_IDENTIFYING_TAGS = tuple(tag_for_keyword(k) for k in IDENTIFYING)


def tag_text(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" + (f" {keyword}" if keyword else "")


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _real_vr(vr: str | None, tag: int) -> str:
    """A VR to write a replacement with: the element's own, else the dictionary's."""
    if vr and vr != "UN" and " or " not in vr:
        return vr
    known = _dictionary_vr(tag)
    if known is None:
        return vr or "UN"
    return known.split(" or ")[0]


def _strings(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


#: the VRs of an attribute the profile's plain keep set passes over: every VR but SQ (the
#: walk looks into it), UN, none and the dictionary's ambiguous ones ("US or SS": resolved by the walk)
_KEEP_TEST_VRS = frozenset(vr.value for vr in VR_ if " or " not in vr.value) - {"SQ", "UN"}
_ID_TEXT_VRS = frozenset({None, "UN", "LO", "PN"})  # Patient ID (LO), Patient's Name (PN) read raw
_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "UV": 8, "SV": 8}


def _raw_is_safe(raw) -> bool:
    """Whether a raw element can go into the record unconverted: its VR is explicit, and
    reading it later cannot fail (not a sequence, a length that fits the VR), so that no
    conversion is paid for what is removed."""
    if not isinstance(raw, RawDataElement) or raw.value is None or raw.VR is None:
        return False  # converted elements, deferred values (read from the file), implicit VR
    if raw.VR == "SQ" or raw.VR == "UN" and raw.length == 0xFFFFFFFF:
        return False
    size = _SIZES.get(raw.VR)
    return size is None or len(raw.value) % size == 0


def _changed_copy(item: Dataset, changes: dict) -> Dataset:
    """A new item: ``item``'s elements (shared, raw ones left unconverted, in its reading
    context: character set, encoding, pixel representation) with ``changes`` applied."""
    new = Dataset.__new__(Dataset)
    new.__dict__.update(item.__dict__)
    new._dict = {t: e for t, e in item._dict.items() if changes.get(t) is not REMOVE}
    new._private_blocks, new._pixel_array, new._pixel_id = {}, None, {}
    new._pixel_array_opts = dict(item._pixel_array_opts)
    for tag, out in changes.items():
        if out is not REMOVE:
            put(new, tag, out)
    return new


def put(ds: Dataset, tag: BaseTag, new: DataElement) -> None:
    """``ds[tag] = new`` for a replacement of an element of ``ds``: what pydicom's
    ``__setitem__`` adds (private creators, pixel caches, nested sequences' pixel
    representation) concerns only private, pixel and sequence elements, which go through it."""
    if tag >> 16 & 1 or tag >> 16 == _PIXEL_GROUP:
        ds[tag] = new
    elif new.VR == "SQ" and isinstance(new.value, Sequence):
        ds._dict[tag] = new
        ds._set_pixel_representation(new)  # what __setitem__ adds for a standard sequence
    elif new.VR == "SQ":
        ds[tag] = new
    else:
        ds._dict[tag] = new


def _same_raw(raw: RawDataElement, new: DataElement) -> bool:
    """:func:`_same` for an unconverted original: an empty one (padding only) emptied."""
    value = new.value
    empty = value is None or (hasattr(value, "__len__") and len(value) == 0)
    return empty and raw.VR == new.VR and not raw.value.strip(b" \0")


def _same(original: DataElement, new: DataElement) -> bool:
    """A replacement equal to the original (an empty attribute emptied): no change. A
    sequence the walk returns is a changed one (unchanged ones are kept), so only emptied
    empty sequences are compared (not item by item)."""
    if original.VR == "SQ" and new.VR == "SQ":
        return not original.value and not new.value
    return original.VR == new.VR and original.value == new.value


class Run:
    """The de-identification of one object (per-object state; the profile is shared)."""

    def __init__(self, profile: Profile, keyed: Keyed, options, ds: Dataset):
        self.profile = profile
        self.actions = profile.actions
        self.nested = profile.nested
        self.keyed = keyed
        self.options = options
        self.identity = self._identity(ds)
        self._pseudonym = None
        self._offset = None
        # the object's own identifiers, read before anything changes (masked in cleaned text)
        self.pattern = self._identifiers(ds) if profile.cleans else None
        self._private_kept: dict[int, set] = {}

    # -- the object's patient --------------------------------------------------------------
    def _identity(self, ds: Dataset) -> str:
        pid = self._text(ds, _PATIENT_ID)
        if pid.strip():
            return "id:" + pid.strip()
        name = self._text(ds, _PATIENT_NAME)
        return "name:" + name.strip() if name.strip() else ""

    def _text(self, ds: Dataset, tag: int) -> str:
        raw = ds._dict.get(tag)
        if raw is None:
            return ""
        value = getattr(raw, "value", None)
        if isinstance(raw, RawDataElement) and raw.VR in _ID_TEXT_VRS and isinstance(value, bytes) \
                and value.isascii() and b"\\" not in value:
            return value.decode("ascii").rstrip(" \0")  # as pydicom's conversion gives it, without converting
        value = self.convert(ds, tag).value
        return "\\".join(_strings(value))

    def pseudonym(self, identity: str | None = None) -> str:
        if identity is None:
            if self._pseudonym is None:
                self._pseudonym = render(self.options.pseudonym, self.keyed.patient_hash(self.identity))
            return self._pseudonym
        return render(self.options.pseudonym, self.keyed.patient_hash(identity))

    @property
    def offset(self) -> int:
        if self._offset is None:
            self._offset = self.keyed.day_offset(self.identity, self.options.max_date_shift_days,
                                                 self.options.keep_weekday)
        return self._offset

    def _identifiers(self, ds: Dataset):
        found = []
        for tag in _IDENTIFYING_TAGS:
            if tag in ds and self.actions.get(tag) not in (None, "K"):
                for v in _strings(self.convert(ds, tag).value):
                    found.append(v)
                    found.extend(v.replace("=", "^").split("^"))
        return values.identifier_pattern(found)

    # -- reading -----------------------------------------------------------------------------
    @staticmethod
    def convert(ds: Dataset, tag: int) -> DataElement:
        try:
            return ds[tag]
        except QuarantineError:
            raise
        except BaseException as exc:  # pydicom's conversion errors, RecursionError on deep nesting
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise QuarantineError(f"{tag_text(tag)}: its value cannot be read ({type(exc).__name__}), "
                                  "so it cannot be de-identified safely") from None

    # -- the walk ----------------------------------------------------------------------------
    def top_level(self, ds: Dataset) -> tuple[dict, str | None]:
        """De-identify ``ds`` in place. Returns the original of each change (tag -> element;
        removed ones may stay raw, unconverted: the record converts them when read, with
        their creators and character set beside them) and the file meta's original Media
        Storage SOP Instance UID if the stage replaced it."""
        originals, removed, implicit = {}, [], []
        plain = self.profile.plain_keep
        for tag, raw in list(ds._dict.items()):
            # the common case, inline: a standard attribute no action names, not a sequence
            if int(tag) in plain and raw.VR in _KEEP_TEST_VRS:
                continue
            if raw.VR is None and raw.value is not None:
                implicit.append(tag)
            out = self.element(ds, tag, 0, NORMAL)
            if out is KEEP:
                continue
            if out is REMOVE:
                raw = ds._dict.get(tag)
                originals[tag] = raw if _raw_is_safe(raw) else self._original(ds, tag, out)
                removed.append(tag)
                continue
            raw = ds._dict.get(tag)
            if _raw_is_safe(raw):  # recorded unconverted (a PN's conversion alone costs more than its change)
                if not _same_raw(raw, out):
                    originals[tag] = raw
                    put(ds, tag, out)
                continue
            original = self._original(ds, tag, out)
            if not _same(original, out):
                originals[tag] = original
                put(ds, tag, out)
        for tag in removed:  # after the walk: a private element is read with its creator in place
            del ds[tag]
        if implicit and not ds.original_encoding[0]:
            self._explicit_vrs(ds, implicit)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and _MEDIA_SOP_INSTANCE_UID in meta and self.actions.get(_MEDIA_SOP_INSTANCE_UID) == "U":
            raw = meta._dict.get(_MEDIA_SOP_INSTANCE_UID)
            value = getattr(raw, "value", None)
            if isinstance(raw, RawDataElement) and isinstance(value, bytes) and value.isascii() \
                    and b"\\" not in value:
                original = value.decode("ascii").rstrip("\0").strip()  # as pydicom's conversion gives it
            else:
                original = str(meta[_MEDIA_SOP_INSTANCE_UID].value or "")
            if original:
                replaced = new_element(_MEDIA_SOP_INSTANCE_UID, "UI", self.keyed.uid(original))
                meta._dict[replaced.tag] = replaced  # a UI element of group 0002 (what its __setattr__ checks)
                return originals, original
        return originals, None

    def _explicit_vrs(self, ds: Dataset, tags: list) -> None:
        """Some files mix implicit VR elements into an explicit VR data set: convert those
        (``tags``, the walk's elements without a VR) still there and unconverted now, while
        the encoding they were read in still applies, so the object can be written."""
        for tag in tags:
            raw = ds._dict.get(tag)
            if getattr(raw, "VR", "") is None and getattr(raw, "value", None) is not None:
                self.convert(ds, tag)

    def _original(self, ds: Dataset, tag: int, out) -> DataElement:
        try:
            return self.convert(ds, tag)
        except QuarantineError:
            raw = ds._dict.get(tag)
            if out is not REMOVE or not isinstance(getattr(raw, "value", None), bytes):
                raise
            # removed anyway: its bytes go into the record as they were (VR UN)
            element = DataElement(tag, "UN", raw.value)
            element.VR = "UN"  # pydicom's constructor puts the dictionary VR back
            return element

    def element(self, ds: Dataset, tag: int, depth: int, mode: int):
        group, number = tag >> 16, tag & 0xFFFF
        if group & 1:
            return KEEP if tag in self._private(ds) else REMOVE
        if group == _PIXEL_GROUP or number == 0:  # pixel data (a pixel stage's), group lengths
            return KEEP
        if 0x5000 <= group <= 0x501E:
            return self._graphic(ds, tag, self.profile.curve)
        if 0x6000 <= group <= 0x601E:
            if self.profile.overlay_data == "X" and (group << 16 | 0x3000) in ds:
                return REMOVE  # the overlay plane goes whole: its other elements need the data
            action = {0x3000: self.profile.overlay_data, 0x4000: self.profile.overlay_comments}.get(number)
            return self._graphic(ds, tag, action) if action else KEEP
        key = int(tag)  # plain int keys: a BaseTag compares in Python, an int in C
        action = (self.nested if depth else self.actions).get(key)
        if action is not None:
            return self.apply(ds, tag, action, depth, mode)
        if key not in DicomDictionary and not repeater_has_tag(key):
            return REMOVE  # not a standard attribute pydicom knows: nothing says it is safe
        vr = self._vr(ds, tag)
        if vr == "SQ":
            return self.sequence(ds, tag, depth, mode)
        if mode != NORMAL and vr in values.FREE_TEXT_VRS:
            return self.apply(ds, tag, "D" if mode == DUMMY else "C", depth, mode)
        return KEEP

    def _graphic(self, ds: Dataset, tag: int, action: str):
        """Curves and overlays: removed (X), or kept with their text cleaned (Clean Graphics)."""
        if action == "X":
            return REMOVE
        vr = self._vr(ds, tag)
        return self._clean(ds, tag, vr, 0, CLEAN) if vr in values.TEXT_VRS else KEEP

    def _vr(self, ds: Dataset, tag: int) -> str:
        raw = ds._dict.get(tag)
        vr = getattr(raw, "VR", None)
        return _real_vr(vr, tag)

    def apply(self, ds: Dataset, tag: int, action: str, depth: int, mode: int):
        if action == "X":
            return REMOVE
        vr = self._vr(ds, tag)
        if action == "K":
            return self.sequence(ds, tag, depth, mode) if vr == "SQ" else KEEP
        if action == "U":
            if vr == "SQ":
                return self.sequence(ds, tag, depth, mode)
            return self._uid(ds, tag, vr)
        if action == "Z":
            raw = ds._dict.get(tag)
            if _raw_is_safe(raw) and raw.VR == vr and not raw.value.strip(b" \0"):
                return KEEP  # already empty (padding only): nothing to change, nothing to record
            if vr == "SQ":
                return new_element(tag, "SQ", Sequence())
            return new_element(tag, vr, empty_value_for_VR(vr))
        if action == "D":
            if vr == "SQ":
                return self.sequence(ds, tag, depth, DUMMY)
            if vr == "UI":
                return self._uid(ds, tag, vr)
            return new_element(tag, vr, values.dummy(vr))
        if action == "P":
            identity = None
            if depth:  # a nested patient: its own identity
                identity = self._identity(ds) if (_PATIENT_ID in ds or _PATIENT_NAME in ds) else None
            name = self.pseudonym(identity)
            return new_element(tag, vr, name) if name else new_element(tag, vr, empty_value_for_VR(vr))
        if action == "C":
            return self._clean(ds, tag, vr, depth, mode)
        raise AssertionError(f"unknown action {action!r}")

    def _uid(self, ds: Dataset, tag: int, vr: str):
        raw = ds._dict.get(tag)
        if _raw_is_safe(raw) and raw.VR == "UI" and raw.value.isascii():  # no conversion: the raw original is recorded
            uids = [u for u in raw.value.decode("ascii").rstrip("\0 ").split("\\") if u.strip(" \0")]
        else:
            uids = [u for u in _strings(self.convert(ds, tag).value) if u.strip(" \0")]
        if not uids:
            return KEEP  # empty: nothing to replace
        new = [self.keyed.uid(u) for u in uids]
        return new_element(tag, "UI", new if len(new) > 1 else new[0])

    def _clean(self, ds: Dataset, tag: int, vr: str, depth: int, mode: int):
        if vr == "SQ":
            return self.sequence(ds, tag, depth, max(mode, CLEAN))
        if vr == "TM":
            return KEEP
        if vr in ("DA", "DT") and self.options.retain_longitudinal_modified_dates:
            shift = values.shift_da if vr == "DA" else values.shift_dt
            old = _strings(self.convert(ds, tag).value)
            new = [shift(v, self.offset) if v.strip() else v for v in old]
            if any(n is None for n in new):
                raise QuarantineError(f"{tag_text(tag)}: not a valid {vr} value, so its date cannot be shifted")
            if new == old:
                return KEEP
            return new_element(tag, vr, new if len(new) > 1 else (new[0] if new else ""))
        if vr == "AE":
            old = _strings(self.convert(ds, tag).value)
            new = [self.keyed.ae_title(v) if v.strip() else v for v in old]
            return new_element(tag, vr, new if len(new) > 1 else (new[0] if new else ""))
        if vr in values.TEXT_VRS:
            element = self.convert(ds, tag)
            old = _strings(element.value)
            new = [values.mask(v, self.pattern) for v in old]
            if new == old:
                return KEEP
            value = new if len(new) > 1 else new[0]
            return new_element(tag, vr, value)
        fallback = self.profile.fallback.get(tag, "X")
        return self.apply(ds, tag, fallback, depth, mode) if fallback != "C" else REMOVE

    # -- sequences and private blocks ------------------------------------------------------------
    def sequence(self, ds: Dataset, tag: int, depth: int, mode: int):
        element = self.convert(ds, tag)
        if element.VR != "SQ" or not isinstance(element.value, Sequence):
            raise QuarantineError(f"{tag_text(tag)}: a sequence that cannot be parsed as one, "
                                  "so its items cannot be de-identified")
        if depth + 1 > MAX_DEPTH:
            raise QuarantineError(f"{tag_text(tag)}: sequences nested deeper than {MAX_DEPTH} levels")
        items = element.value
        new_items = None
        for i, item in enumerate(items):
            new = self.item(item, depth + 1, mode)
            if new is not None and new_items is None:
                new_items = list(items[:i])
            if new_items is not None:
                new_items.append(item if new is None else new)
        if new_items is None:
            return KEEP
        seq = Sequence(new_items)
        seq.is_undefined_length = getattr(items, "is_undefined_length", False)
        out = DataElement(tag, "SQ", seq, is_undefined_length=element.is_undefined_length)
        return out

    def item(self, item: Dataset, depth: int, mode: int) -> Dataset | None:
        changes = {}
        plain = self.profile.plain_keep_nested if mode == NORMAL else ()
        for tag, raw in list(item._dict.items()):
            if int(tag) in plain and raw.VR in _KEEP_TEST_VRS:
                continue  # as in top_level
            out = self.element(item, tag, depth, mode)
            if out is KEEP:
                continue
            if out is not REMOVE:
                raw = item._dict.get(tag)
                if _same_raw(raw, out) if _raw_is_safe(raw) else _same(self.convert(item, tag), out):
                    continue
            changes[tag] = out
        if not changes:
            return None
        return _changed_copy(item, changes)

    def _private(self, ds: Dataset) -> set:
        """The private tags of ``ds`` to keep (Retain Safe Private), computed once per data set."""
        key = id(ds)
        kept = self._private_kept.get(key)
        if kept is not None:
            return kept
        kept = set()
        safe = self.options.safe_private_set
        if self.profile.private == "C" and safe:
            creators = {}
            for tag in ds.keys():
                if tag >> 16 & 1 and 0x10 <= (tag & 0xFFFF) <= 0xFF:
                    try:
                        value = ds[tag].value
                    except Exception:
                        continue  # an unreadable creator reserves nothing we can trust
                    if isinstance(value, str):
                        creators[(tag >> 16, tag & 0xFF)] = value.strip().upper()
            for tag in ds.keys():
                group, number = tag >> 16, tag & 0xFFFF
                if group & 1 and number >= 0x1000:
                    creator = creators.get((group, number >> 8))
                    if creator is not None and (group, creator, number & 0xFF) in safe:
                        kept.add(tag)
                        kept.add(group << 16 | number >> 8)
        self._private_kept[key] = kept
        return kept
