"""Reading received objects, and saying in words what is wrong with one that cannot be read.

pydicom is lenient by design: it parses lazily (an element's value is converted when first
used, so a broken element raises later, in whatever code touches it), it returns an empty
data set when the file ends inside an element, and it inflates a Deflated Explicit VR
Little Endian body in memory without any limit. A service that must quarantine bad input
with a true reason, and never stall or run out of memory on it, needs more:

- :func:`read_header` parses with large values left in the file; it refuses a deflated
  body that inflates beyond :attr:`ParseLimits.max_inflated` (checked while streaming, in
  bounded memory, before pydicom inflates it), accepts a legacy data set without File
  Meta Information (see :func:`complete_file_meta`), and turns every failure into a
  :class:`QuarantineError` whose reason names the element and what is wrong with it;
- :func:`element_problem` walks a parsed data set, converting every element, and
  describes the first one that cannot be read (used when anything fails unexpectedly on
  an object, so that the reason is about the object, not about pydicom's source lines);
- :func:`check_integrity` refuses objects that parse but are damaged.

Reasons never quote values: they name tags, keywords and kinds of fault (no patient data).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.valuerep import VR

from .errors import QuarantineError, bug_summary

DEFER_SIZE = 8192
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
DEFLATED = "1.2.840.10008.1.2.1.99"
_DEFLATED_BYTES = DEFLATED.encode()

#: This implementation's identity in File Meta Information (a UUID-derived UID, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.273958504213808437402758985714438986756"

#: Transfer syntax of a data set that came without File Meta Information, by its encoding.
_SYNTAX_OF_ENCODING = {(True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1",
                       (False, False): "1.2.840.10008.1.2.2"}


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on what reading one object may cost."""

    #: largest inflated size of a Deflated Explicit VR Little Endian data set
    max_inflated: int = 256 * 1024 * 1024


DEFAULT_LIMITS = ParseLimits()


# --- reading ------------------------------------------------------------------------------------


def read_header(path: Path, limits: ParseLimits = DEFAULT_LIMITS) -> Dataset:
    """Parse the whole structure, leaving large values (pixel data) unread in the file."""
    return _read(Path(path), limits, DEFER_SIZE)


def read_dataset(path: Path, limits: ParseLimits = DEFAULT_LIMITS) -> Dataset:
    """Parse everything, values included."""
    return _read(Path(path), limits, None)


def _read(path: Path, limits: ParseLimits, defer_size) -> Dataset:
    try:
        with open(path, "rb") as fh:  # one open: pydicom reads from it (and re-opens the
            head = fh.read(1024)      # file by name for deferred values)
            if _DEFLATED_BYTES in head:
                _check_inflated_size(path, limits.max_inflated)
            fh.seek(0)
            try:
                ds = pydicom.dcmread(fh, defer_size=defer_size)
            except pydicom.errors.InvalidDicomError:
                if not _looks_like_raw_dataset(head):
                    raise
                fh.seek(0)
                ds = pydicom.dcmread(fh, defer_size=defer_size, force=True)
    except QuarantineError:
        raise
    except Exception as exc:  # pydicom raises many types; translate to a clean reason
        raise QuarantineError(_parse_reason(path, exc)) from None
    if len(ds) == 0:
        # pydicom returns an empty data set (with a warning) when the body cannot be read
        raise QuarantineError(_empty_reason(path, ds))
    return ds


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A data set written without preamble and File Meta Information (legacy exports,
    ACR-NEMA style): it starts with an element of group 0008 (or 0002), in either byte order."""
    if len(head) < 8:
        return False
    group_le, group_be = struct.unpack_from("<H", head)[0], struct.unpack_from(">H", head)[0]
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def _check_inflated_size(path: Path, bound: int) -> None:
    """Refuse a deflated body that inflates beyond ``bound`` bytes; memory stays flat."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:
        return  # not a readable deflated object: pydicom's own error says why
    if meta.get("TransferSyntaxUID") != DEFLATED:
        return
    with open(path, "rb") as fh:
        pydicom.filereader.read_preamble(fh, force=True)
        pydicom.filereader._read_file_meta_info(fh)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while not inflater.eof:
            data = inflater.unconsumed_tail or fh.read(1 << 20)
            if not data:
                break
            try:
                total += len(inflater.decompress(data, 1 << 20))
            except zlib.error:
                raise QuarantineError("the deflated data set is not valid deflate data") from None
            if total > bound:
                raise QuarantineError(
                    f"the deflated data set inflates to more than {_size(bound)} (from {_size(os.path.getsize(path))}"
                    f" received): refused as a deflate bomb (processing.max_inflated)")


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


def complete_file_meta(ds: Dataset) -> bool:
    """Give a data set that came without File Meta Information one built from its own
    encoding and SOP UIDs (as dcmtk and pydicom do when they read such a file). Returns
    True when it did (the object must then be written out again)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return False
    new = FileMetaDataset()
    new.MediaStorageSOPClassUID = ds.SOPClassUID
    new.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    new.TransferSyntaxUID = _SYNTAX_OF_ENCODING.get(tuple(ds.original_encoding[:2]), "1.2.840.10008.1.2.1")
    new.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta = new
    return True


# --- reasons ------------------------------------------------------------------------------------


def _parse_reason(path: Path, exc: Exception) -> str:
    try:
        size = os.path.getsize(path)
    except OSError:
        return "object file missing from the spool"
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(exc, pydicom.errors.InvalidDicomError):
        return "not a DICOM file (no DICM prefix, and the content does not start like a DICOM data set)"
    if isinstance(exc, EOFError):
        return "truncated DICOM file (ends inside an element)"
    if isinstance(exc, RecursionError):
        return "unreadable DICOM file: sequences nested too deeply"
    try:
        found = _diagnose(path)  # the element it broke on
    except Exception:
        found = None
    return found or f"unreadable DICOM file: {fault_phrase(exc)}"


def _empty_reason(path: Path, ds: Dataset) -> str:
    """Why pydicom found no element in a file that has a body: find the element it broke on."""
    meta = getattr(ds, "file_meta", None)
    if os.path.getsize(path) <= 132 + (len(meta) * 8 if meta else 0):
        return "the file has File Meta Information but no data set"
    return _diagnose(path) or "the data set after the File Meta Information cannot be read"


def _diagnose(path: Path) -> str | None:
    """Walk the top-level elements of a Part-10 file the way pydicom reads them (sequences
    parsed) and describe the one it breaks on; None when none does or it cannot tell."""
    from pydicom.filereader import data_element_generator, read_preamble, _read_file_meta_info

    with open(path, "rb") as fh:
        read_preamble(fh, force=True)
        meta = _read_file_meta_info(fh)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or ts == DEFLATED or not ts.is_transfer_syntax:
        return None

    last = at = None
    try:
        with open(path, "rb") as fh:
            read_preamble(fh, force=True)
            _read_file_meta_info(fh)
            elements = data_element_generator(fh, ts.is_implicit_VR, ts.is_little_endian, defer_size=DEFER_SIZE)
            while True:
                start = fh.tell()
                try:
                    raw = next(elements)
                except StopIteration:
                    break
                except Exception:
                    fh.seek(start)
                    four = fh.read(4)
                    if len(four) == 4:
                        at = struct.unpack("<HH" if ts.is_little_endian else ">HH", four)
                        at = (at[0] << 16) | at[1]
                    raise
                last = raw.tag
    except EOFError as exc:
        where = (f"element {describe_tag(at)}" if at is not None
                 else f"the element after {describe_tag(last)}" if last is not None else "the first element")
        if "delimiter" in str(exc):
            return f"truncated DICOM file: the file ends inside {where}, before its sequence delimiter"
        return f"truncated DICOM file: the file ends inside {where}"
    except Exception as exc:
        where = f" at element {describe_tag(at)}" if at is not None else ""
        return f"unreadable DICOM file{where}: {fault_phrase(exc)}"
    return None


def describe_tag(tag) -> str:
    """'(0008,0016) SOPClassUID', or '(0009,1010) private' for private tags."""
    tag = Tag(tag)
    if tag.is_private:
        return f"{tag} (private)"
    return f"{tag} {keyword_for_tag(tag) or '(unknown to the dictionary)'}"


def fault_phrase(exc: BaseException) -> str:
    """What kind of fault an exception from reading an element means, in words (its
    message is not used: pydicom quotes values in it)."""
    text = str(exc)
    if isinstance(exc, NotImplementedError) and "Value Representation" in text:
        return "its value representation (VR) is not a valid DICOM VR"
    if isinstance(exc, UnicodeError):
        return "its text cannot be decoded in the declared character set"
    if isinstance(exc, RecursionError):
        return "its sequences are nested too deeply"
    if isinstance(exc, EOFError):
        return "the file ends inside it"
    if isinstance(exc, OSError) and "No tag to read" in text:
        return "one of its sequences ends early (no element where an item should be)"
    if isinstance(exc, LookupError) and "encoding" in text.lower():
        return "its character set is unknown"
    if type(exc).__name__ == "BytesLengthException":
        return "its length is not a whole number of values of its value representation"
    if isinstance(exc, (ValueError, TypeError, struct.error, OverflowError, IndexError)):
        return "its value does not match its value representation or length"
    return f"it cannot be read ({type(exc).__name__})"


#: deepest sequence nesting walked by :func:`element_problem`
MAX_DEPTH = 128


def element_problem(ds: Dataset) -> str | None:
    """The first element of ``ds`` (into sequences) whose value cannot be read, described
    as a sentence ("element (0008,0016) SOPClassUID: its value representation ..."), or
    None when every element reads. Deferred large values are not loaded."""
    # (data set, depth, the top-level sequence it is in)
    stack: list[tuple[Dataset, int, str]] = [(ds, 0, "")]
    while stack:
        current, depth, inside = stack.pop()
        where = f" (at nesting depth {depth}, inside {inside})" if depth else ""
        try:
            tags = list(current.keys())
        except Exception as exc:
            return f"a sequence item{where}: {fault_phrase(exc)}"
        for tag in tags:
            try:
                raw = current.get_item(tag, keep_deferred=True)
                vr = getattr(raw, "VR", None)
                if vr is not None and str(vr) not in _VRS:
                    raise NotImplementedError("Unknown Value Representation")
                if getattr(raw, "value", b"") is None:
                    continue  # deferred (a large value left in the file)
                elem = current[tag]
                if elem.VR == "SQ":
                    if depth + 1 > MAX_DEPTH:
                        return f"element {describe_tag(tag)}{where}: its sequences are nested too deeply"
                    for item in elem.value:
                        stack.append((item, depth + 1, inside or describe_tag(tag)))
                else:
                    _ = elem.value
            except Exception as exc:
                return f"element {describe_tag(tag)}{where}: {fault_phrase(exc)}"
    return None


_VRS = frozenset(v.value for v in VR) | {"OB or OW", "US or SS", "US or OW", "US or SS or OW"}

_TAG_IN_MESSAGE = re.compile(r"With tag \(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")


def object_fault(ds: Dataset | None, exc: BaseException, doing: str) -> str:
    """A reason for an unexpected failure while ``doing`` something with an object: the
    element at fault when one cannot be read, else the failure's kind."""
    if ds is not None:
        try:
            problem = element_problem(ds)
        except Exception:
            problem = None
        if problem:
            return f"{doing}: {problem}"
    if isinstance(exc, RecursionError):
        return f"{doing}: its sequences are nested too deeply"
    tagged = _TAG_IN_MESSAGE.search(str(exc))  # pydicom names the element it failed on
    if tagged:
        tag = int(tagged.group(1) + tagged.group(2), 16)
        return f"{doing}: element {describe_tag(tag)}: {fault_phrase(exc.__cause__ or exc)}"
    return f"{doing} failed unexpectedly ({bug_summary(exc)}; the traceback is in the log)"


def check_integrity(path: Path, header: Dataset) -> None:
    """Refuse objects that parse but are damaged: truncated values, no (valid) SOP UIDs."""
    for keyword, tag in (("SOPClassUID", 0x00080016), ("SOPInstanceUID", 0x00080018)):
        try:
            value = header.get(keyword)
        except Exception as exc:
            raise QuarantineError(f"element {describe_tag(tag)}: {fault_phrase(exc)}") from None
        if not value:
            raise QuarantineError(f"not a DICOM composite object (no {keyword} {Tag(tag)})")
    size = os.path.getsize(path)
    meta = getattr(header, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    deflated = ts == DEFLATED  # offsets refer to the inflated stream
    if PIXEL_DATA in header and ts is not None and ts.is_transfer_syntax:
        length = getattr(header.get_item(PIXEL_DATA, keep_deferred=True), "length", None)
        if ts.is_compressed and length != UNDEFINED:
            raise QuarantineError(f"the transfer syntax is {ts.name}, but the pixel data (7FE0,0010) is not"
                                  " encapsulated (it has a defined length)")
        if not ts.is_compressed and length == UNDEFINED:
            raise QuarantineError(f"the transfer syntax is {ts.name} (native), but the pixel data (7FE0,0010)"
                                  " is encapsulated (undefined length)")
    for tag in list(header.keys()):
        raw = header.get_item(tag, keep_deferred=True)
        if tag >> 16 in (0x0000, 0x0002):
            where = "a DIMSE command" if tag >> 16 == 0 else "the File Meta Information"
            raise QuarantineError(f"element {describe_tag(tag)} belongs in {where}, not in the data set")
        vr = getattr(raw, "VR", None)
        if vr is not None and str(vr) not in _VRS:
            raise QuarantineError(f"element {describe_tag(tag)}: its value representation (VR) is not a valid DICOM VR")
        length = getattr(raw, "length", None)
        if length in (None, UNDEFINED):
            continue
        value = getattr(raw, "value", b"")
        tell = getattr(raw, "value_tell", None)
        if value is None and tell is not None and not deflated:
            have = max(size - tell, 0)  # deferred: compare with what the file holds
        elif isinstance(value, (bytes, bytearray)):
            have = len(value)  # read: a short read means the file ended early
        else:
            continue
        if have < length:
            raise QuarantineError(
                f"truncated DICOM file: element {describe_tag(tag)} has {have} of its {length} bytes")
