"""Writing a data set with pydicom's encoding, faster where nothing needs encoding.

A stage changes a handful of elements; the other hundred are still the raw bytes pydicom
read (``RawDataElement``). pydicom's ``write_dataset`` sends each of them through its
generic element writer (a buffer object, tag and VR checks, several small writes, three
copies of a large value), which is most of the cost of writing a CT slice. Here, in one
buffer:

- a raw element whose bytes can go out as they came in (same transfer syntax, same
  character set, defined length, a length that fits its length field) is written as tag +
  VR + length + value from one ``struct`` call;
- a byte value (OB, OW, UN: the new Pixel Data, say) of even length is written as it is;
- a sequence is written item by item in the same way, with pydicom's rules for defined
  and undefined lengths;
- a parsed value of the simple kinds (one ASCII string of a UI/CS/AE/AS/UR or text VR,
  numbers of a binary VR) is encoded as pydicom's writers encode it;
- every other element goes through pydicom's own element writer, and a data set that
  must be re-encoded (another transfer syntax or character set: VR correction, text
  re-encoding) through pydicom's ``write_dataset``.

The output is byte for byte what pydicom writes (``tests/daemon/test_dicomwrite.py``
compares the two on the corpus).
"""

from __future__ import annotations

import struct

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO, DicomIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.tag import tag_in_exception

#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_BYTE_VRS = frozenset({"OB", "OW", "UN"})
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2s2xL")
_IMPLICIT = struct.Struct("<HHL")
_UNDEFINED = 0xFFFFFFFF
_ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, _UNDEFINED)
_ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
_DEFAULT_ENCODING = "iso8859"
#: VRs whose single ASCII value pydicom writes as the string itself, padded to even length
_STRING_PAD = {"UI": b"\0", "CS": b" ", "AE": b" ", "AS": b" ", "UR": b" ",
               "LO": b" ", "SH": b" ", "LT": b" ", "ST": b" ", "UT": b" ", "UC": b" "}
_NUMBER_FORMAT = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_GROUP_LENGTH = 0x00020000
#: values this large are written where they lie (a copy of a 512 KiB Pixel Data into the
#: buffer costs more than a write call)
_BIG = 1 << 16
_META_REQUIRED = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013)


def write_dataset_fast(fp: DicomIO, ds: Dataset) -> int:
    """``pydicom.filewriter.write_dataset(fp, ds)``; the number of bytes written.
    ``fp.is_implicit_VR`` and ``fp.is_little_endian`` must be set."""
    implicit, little = fp.is_implicit_VR, fp.is_little_endian
    if not little:
        return write_dataset(fp, ds)
    out, big = bytearray(), []
    _encode(out, ds, implicit, _DEFAULT_ENCODING, big)
    view, start, total = memoryview(out), 0, len(out)
    for at, value in big:  # the large values go out as they are, not copied into the buffer
        fp.write(view[start:at])
        fp.write(value)
        start, total = at, total + len(value)
    fp.write(view[start:])
    view.release()
    return total


def encode_dataset(ds: Dataset, implicit: bool) -> bytes:
    """``ds`` encoded (little endian) as :func:`write_dataset_fast` writes it."""
    out = bytearray()
    _encode(out, ds, implicit, _DEFAULT_ENCODING)
    return bytes(out)


def write_file_meta_fast(fp: DicomIO, meta: Dataset) -> None:
    """``pydicom.filewriter.write_file_meta_info(fp, meta, enforce_standard=True)``."""
    from pydicom.dataset import validate_file_meta
    from pydicom.filewriter import write_file_meta_info

    if not _meta_complete(meta):
        validate_file_meta(meta, enforce_standard=True)  # adds what pydicom adds, refuses what it refuses
    if any(tag not in meta for tag in _META_REQUIRED) or meta.original_character_set != meta._character_set:
        write_file_meta_info(fp, meta, enforce_standard=True)
        return
    body = bytearray()
    elements = meta._dict
    for tag in sorted(elements, key=int):  # ints compare in C; a BaseTag in Python
        if tag != _GROUP_LENGTH and not _fast_element(body, tag, elements[tag], False):
            with tag_in_exception(tag):
                body += _element(meta.get_item(tag), False, _DEFAULT_ENCODING)
    length = DataElement(_GROUP_LENGTH, "UL", len(body))
    meta._dict[length.tag] = length  # meta.FileMetaInformationGroupLength = len(body), without its lookups
    fp.write(_EXPLICIT_SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + body)


#: what ``validate_file_meta(enforce_standard=True)`` wants present and not empty (it adds
#: the first two, and Implementation Version Name, when they are not)
_META_NOT_EMPTY = (0x00020001, 0x00020012, 0x00020002, 0x00020003, 0x00020010)
_IMPLEMENTATION_VERSION_NAME = 0x00020013


def uid_text(elem) -> str | None:
    """The value of a raw single-valued UI element as pydicom's conversion gives it (its
    padding and surrounding whitespace stripped), where converting it would not change
    the bytes written (ASCII, padded with one NUL to even length at most): comparing
    this is comparing the converted values, without the conversion's validation. None
    for anything else (then convert)."""
    if not isinstance(elem, RawDataElement) or elem.VR != "UI":
        return None
    value = elem.value
    if not isinstance(value, bytes) or not value.isascii() or b"\\" in value:
        return None
    text = value.decode("ascii").rstrip("\0 ").strip()
    if value != text.encode("ascii") + b"\0" * (len(text) % 2):
        return None
    return text


def _meta_complete(meta: Dataset) -> bool:
    """Whether ``validate_file_meta(meta, enforce_standard=True)`` would neither add nor
    refuse anything: group 0002 alone, the elements it wants there with a value (looked at
    unconverted: converting validates each value). False sends it to pydicom's check."""
    elements = meta._dict
    if any(tag >> 16 != 0x0002 for tag in elements) or _IMPLEMENTATION_VERSION_NAME not in elements:
        return False
    for tag in _META_NOT_EMPTY:
        elem = elements.get(tag)
        if elem is None:
            return False
        if isinstance(elem, RawDataElement):
            # converting it would not change what is written: the version's bytes (OB), a
            # UID in its canonical form
            if tag == 0x00020001:
                if elem.VR != "OB" or not isinstance(elem.value, bytes) or not elem.value:
                    return False
            elif not uid_text(elem):
                return False
        elif elem.is_empty:
            return False
    return True


def _pydicom(ds: Dataset, implicit: bool, parent_encoding) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds, parent_encoding)
    return fp.getvalue()


def _element(elem, implicit: bool, encoding) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_data_element(fp, elem, encoding)
    return fp.getvalue()


def _header(out: bytearray, tag: int, vr: str, size: int, implicit: bool) -> bool:
    """Append the element header; False where this module does not write that header."""
    if implicit:
        out += _IMPLICIT.pack(tag >> 16, tag & 0xFFFF, size)
    elif vr in _LONG_VRS:
        out += _EXPLICIT_LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), size)
    elif vr is not None and len(vr) == 2 and size <= 0xFFFF:
        out += _EXPLICIT_SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), size)
    else:
        return False
    return True


def _as_read(ds: Dataset, implicit: bool) -> bool:
    """Can ``ds`` go out without pydicom's re-encoding step (VR correction, raw elements
    parsed for another encoding or character set)?"""
    if ds.original_encoding == (implicit, True):
        return ds.original_character_set == ds._character_set
    if ds.original_encoding != (None, None):
        return False
    # made here, not read (no original character set either): pydicom's step matters
    # only for raw elements and ambiguous VRs
    return not any(isinstance(e, RawDataElement) or (e.VR is not None and len(e.VR) != 2)
                   for e in ds._dict.values())


def _encode(out: bytearray, ds: Dataset, implicit: bool, parent_encoding, big: list | None = None) -> None:
    """Append ``ds`` encoded to ``out``. With ``big``, a top-level value of
    :data:`_BIG` bytes or more (the pixel data) is not appended: (its offset in ``out``,
    the value) goes into ``big``, for the writer to write in its place."""
    if not _as_read(ds, implicit):
        out += _pydicom(ds, implicit, parent_encoding)  # re-encoding: pydicom's own path
        return
    encoding = ds.get("SpecificCharacterSet", parent_encoding)
    elements = ds._dict
    for tag in sorted(elements, key=int):  # ints compare in C; a BaseTag in Python
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        elem = elements[tag]
        if elem.VR == "SQ" and not isinstance(elem, RawDataElement):
            if _sequence(out, tag, elem, implicit, encoding):
                continue
        elif _fast_element(out, tag, elem, implicit, big):
            continue
        with tag_in_exception(tag):
            out += _element(ds.get_item(tag), implicit, encoding)


def _fast_element(out: bytearray, tag: int, elem, implicit: bool, big: list | None = None) -> bool:
    """Append a raw or simple element as pydicom writes it; False to leave it to pydicom."""
    if isinstance(elem, RawDataElement):
        value = elem.value
        if value is None or elem.length == _UNDEFINED:
            return False
    else:
        value, vr = elem._value, elem.VR
        if elem.is_undefined_length:
            return False
        kind = type(value)
        if vr in _BYTE_VRS:
            if kind is not bytes or len(value) % 2:
                return False
        elif vr in _STRING_PAD and (kind is str or isinstance(value, str)):
            if not value.isascii():
                return False  # the character set decides: pydicom's writer
            value = value.encode("ascii")
            if len(value) % 2:
                value += _STRING_PAD[vr]
        elif vr in _NUMBER_FORMAT and (kind is int or kind is float):
            try:
                value = struct.pack("<" + _NUMBER_FORMAT[vr], value)
            except struct.error:
                return False  # out of range: pydicom's error
        else:
            return False
    if not _header(out, tag, elem.VR, len(value), implicit):
        return False
    if big is not None and len(value) >= _BIG:
        big.append((len(out), value))
    else:
        out += value
    return True


def _sequence(out: bytearray, tag: int, elem, implicit: bool, encoding) -> bool:
    """Append a sequence element as pydicom writes it; False to leave it to pydicom."""
    body = bytearray()
    for item in elem.value:
        if not isinstance(item, Dataset):
            return False
        start = len(body)
        body += _ITEM
        _encode(body, item, implicit, encoding)
        if getattr(item, "is_undefined_length_sequence_item", False):
            body += _ITEM_END
        else:
            body[start + 4:start + 8] = struct.pack("<L", len(body) - start - 8)
    undefined = elem.is_undefined_length
    if not _header(out, tag, "SQ", _UNDEFINED if undefined else len(body), implicit):
        return False
    out += body
    if undefined:
        out += _SEQUENCE_END
    return True
