"""Values of elements still raw as read, for the simple kinds, without pydicom's conversion.

pydicom converts a raw element when it is first read (``ds[tag]``): a dictionary lookup,
the value's validation, for a private element a search for its creator, and the parsed
element replacing the raw one. For the values the protection stages read back from their
own private blocks and from the image geometry (a nonce, lengths, key IDs, Rows, the SOP
Instance UID), that is most of the cost of reading them. :func:`value` reads them from the
raw bytes where that gives what the conversion gives (same Python value, same type family:
``bytes``, ``int``, ``str``, lists of them) and leaves the element raw; :data:`CONVERT`
otherwise, and the caller converts (``ds[tag].value``).

Taken here: little endian elements whose VR is the one the caller names (explicit), or
absent (implicit VR, where the dictionary gives that VR); values OB/OW (bytes), US/UL/
SS/SL (numbers), AT (tags as ints), and ASCII text of LO/SH/CS/UI split at backslashes,
trailing NULs and spaces stripped as pydicom strips them (LO/SH: each value's; CS/UI: the
whole value's, and each UID of surrounding whitespace, as ``UID`` does). Empty values are left to pydicom.
"""

from __future__ import annotations

import struct

from pydicom.dataelem import RawDataElement

#: the value could not be read here: convert it (``ds[tag].value``)
CONVERT = object()

_NUMBERS = {"US": ("H", 2), "UL": ("L", 4), "SS": ("h", 2), "SL": ("l", 4)}
_TEXT = frozenset({"LO", "SH", "CS", "UI"})
_BYTES = frozenset({"OB", "OW"})  # not UN: pydicom converts it to the dictionary VR


def value(ds, tag: int, vr: str):
    """The value of element ``tag`` of ``ds`` if it is raw and of VR ``vr`` (see the
    module); KeyError when absent; :data:`CONVERT` when pydicom must convert it."""
    raw = ds._dict[tag]
    if type(raw) is not RawDataElement:
        return raw.value  # converted already
    return of_raw(raw, vr)


def of_raw(raw: RawDataElement, vr: str):
    """:func:`value` of one raw element."""
    data = raw.value
    if not raw.is_little_endian or raw.VR not in (vr, None) or type(data) is not bytes or not data:
        return CONVERT
    if vr in _BYTES:
        return data
    number = _NUMBERS.get(vr)
    if number is not None:
        code, size = number
        n, rest = divmod(len(data), size)
        if rest:
            return CONVERT
        values = struct.unpack(f"<{n}{code}", data)
        return values[0] if n == 1 else list(values)
    if vr == "AT":
        n, rest = divmod(len(data), 4)
        if rest:
            return CONVERT
        halves = struct.unpack(f"<{2 * n}H", data)
        tags = [halves[i] << 16 | halves[i + 1] for i in range(0, len(halves), 2)]
        return tags[0] if n == 1 else tags
    if vr in _TEXT:
        if not data.isascii():
            return CONVERT  # the character set decides
        text = data.decode("ascii")
        if vr in ("CS", "UI"):  # pydicom's convert_string / convert_UI: the whole value's padding
            parts = text.rstrip("\0 ").split("\\")
            if vr == "UI":
                parts = [p.strip() for p in parts]  # as UID() does
        else:  # convert_text: each value's padding
            parts = [p.rstrip("\0 ") for p in text.split("\\")]
        return parts[0] if len(parts) == 1 else parts
    return CONVERT
