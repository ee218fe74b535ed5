"""The record of original values (``item.results["deidentify"]``), and :func:`restore`.

The record is a pydicom Dataset that holds, for every top-level attribute the stage
changed or removed, the original element; a sequence in which anything changed, at any
depth, is recorded whole (as DICOM's Modified Attributes Sequence holds originals). Private
attributes removed are recorded with their creators. Two more things make it exact:

- the object's Specific Character Set (unchanged by the stage), so that the record's text
  encodes as the original's did when a later stage serializes it;
- a private block (creator ``PACSGUARD DEIDENTIFY 1`` in group 0011, in a block the record
  leaves free) whose element xx01 (LO) names the scheme, xx10 (AT, 1-n) lists the
  attributes the stage added that the original did not have (Patient Identity Removed,
  De-identification Method, ...: restoring deletes those), and xx11 (UI) holds the
  original Media Storage SOP Instance UID of the file meta when the stage replaced it.

The stage never logs the record nor writes it anywhere: later stages (encrypt with scope
attributes, embed) protect it for the key holder, who gets the header back with
:func:`restore`. Pixel data is not recorded: pixels cleaned of burned-in text stay clean.
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from pacsguard.daemon.elements import new_dataset, new_element

GROUP = 0x0011
CREATOR = "PACSGUARD DEIDENTIFY 1"
SCHEME = "PACSGUARD DEIDENTIFY 1"
_SCHEME, _ADDED, _MEDIA_UID = 0x01, 0x10, 0x11
_CHARSET = 0x00080005


def _first_int(pair) -> int:
    return int(pair[0])  # a BaseTag compares in Python, an int in C


def new_record(ds: Dataset, originals: dict) -> Dataset:
    """The record of ``originals`` (tag -> element, raw or converted) of ``ds``. Its raw
    elements are ``ds``'s, so it has ``ds``'s original encoding: written in that encoding,
    they go out as they were read (not parsed and encoded again)."""
    elements = dict(originals)
    if _CHARSET in ds:
        elements[_CHARSET] = ds[_CHARSET]
    record = new_dataset({t if type(t) is BaseTag else Tag(t): e for t, e in sorted(elements.items(), key=_first_int)})
    implicit, little = ds.original_encoding
    if implicit is not None:
        record.set_original_encoding(implicit, little, ds.original_character_set)
    return record


def _block(record: Dataset) -> int:
    """The marker block's base tag (0011,xx00), the block created if it is not there yet, in
    a block of group 0011 that no recorded original uses (an original private element
    without its creator may sit in any block). Only group 0011 is looked at."""
    used = set()
    for t in record.keys():
        if t >> 16 != GROUP:
            continue
        element = t & 0xFFFF
        if 0x10 <= element <= 0xFF:
            if record[t].value == CREATOR:
                return GROUP << 16 | element << 8
            used.add(element)
        elif element >= 0x1000:
            used.add(element >> 8)
    free = next(b for b in range(0x10, 0x100) if b not in used)
    _add(record, GROUP << 16 | free, "LO", CREATOR)
    base = GROUP << 16 | free << 8
    _add(record, base | _SCHEME, "LO", SCHEME)
    return base


def note(record: Dataset, media_uid: str | None, tags: list[int]) -> None:
    """Note in the marker block the file meta's original Media Storage SOP Instance UID
    (``media_uid``, when the stage replaced it) and the ``tags`` the stage added (absent
    from the original: restoring deletes them)."""
    if media_uid is None and not tags:
        return
    base = _block(record)
    if media_uid is not None:
        _add(record, base | _MEDIA_UID, "UI", media_uid)
    if tags:
        tag = base | _ADDED
        prior = list(_as_list(record[tag].value)) if tag in record else []
        tags = sorted({int(t) for t in prior} | {int(t) for t in tags})
        # the value as pydicom converts an AT list (BaseTags in a MultiValue), made directly
        _add(record, tag, "AT", MultiValue(_same, [BaseTag(t) for t in tags]) if len(tags) > 1 else BaseTag(tags[0]))


def _same(value):
    return value


def _add(record: Dataset, tag: int, vr: str, value) -> None:
    """``record.add_new`` of an element of the marker block (its creator, in group 0011,
    reserved by :func:`_block`), the value not validated (the stage's own: a creator, a
    UID, tags)."""
    element = new_element(tag, vr, value)
    if tag & 0xFF00:
        element.private_creator = CREATOR
    record._dict[element.tag] = element


def _as_list(v) -> list:
    if v is None or v == "":
        return []
    if isinstance(v, int):
        return [v]
    return list(v)


def _marker(record: Dataset):
    try:
        return record.private_block(GROUP, CREATOR)
    except KeyError:
        return None


def is_record(record: Dataset) -> bool:
    """Whether ``record`` carries this stage's marker block (a record :func:`restore` reads)."""
    block = _marker(record)
    return block is not None and _SCHEME in block and block[_SCHEME].value == SCHEME


def added(record: Dataset) -> list[int]:
    block = _marker(record)
    if block is None or _ADDED not in block:
        return []
    return [int(t) for t in _as_list(block[_ADDED].value)]


def originals(record: Dataset, parsed: bool = True) -> list:
    """The recorded original elements (the marker block left out); with ``parsed`` False
    as the record holds them: raw (as read) or parsed."""
    block = _marker(record)
    own = set()
    if block is not None:
        own = {t for t in record.keys() if t.group == GROUP and (t.element & 0xFF00) == block.block_start}
        own.add(GROUP << 16 | block.block_start >> 8)
    get = record.__getitem__ if parsed else record.get_item
    return [get(t) for t in record.keys() if t not in own]


def restore(ds: Dataset, record: Dataset) -> None:
    """Put the original values of ``record`` back into the de-identified ``ds`` (in place):
    the attributes the stage added are deleted, every recorded element is set back (whole
    sequences, private blocks), and the file meta's Media Storage SOP Instance UID too."""
    for tag in added(record):
        if tag in ds:
            del ds[tag]
    # raw elements go back as read where ds was read in the record's encoding and
    # character set (a later write copies their bytes); else parsed, for ds's encoding
    as_read = record.original_encoding == ds.original_encoding and record._character_set == ds._character_set
    for element in originals(record, parsed=False):
        if isinstance(element, RawDataElement) and not as_read:
            element = record[element.tag]
        ds[element.tag] = element
    block = _marker(record)
    meta = getattr(ds, "file_meta", None)
    if block is not None and _MEDIA_UID in block and meta is not None:
        meta.MediaStorageSOPInstanceUID = block[_MEDIA_UID].value
