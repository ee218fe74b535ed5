"""Burned-in identity: which objects likely carry it, and Clean Pixel Data rectangles.

An object with pixel data is taken to carry burned-in identity when Burned In Annotation
(0028,0301) is YES, or when it is of a kind that usually does: ultrasound, secondary
capture (screen captures and dose reports are stored as these), a workstation capture
(Conversion Type WSD), or an Image Type that says screen capture or dose report. Such an
object is quarantined unless a Clean Pixel Data rule matches it (its rectangles are
blanked) or the route passes such objects (``burned_in: allow``).

Clean Pixel Data, as CTP's DicomPixelAnonymizer does it: rules whose ``match:`` conditions
(Manufacturer, Manufacturer's Model Name, Rows, Columns, ...) select rectangles known to
hold text on that device; the first matching rule's rectangles are blanked in every frame
of the decoded pixels (the item's decoding path), which are then written back native
(Explicit VR Little Endian when the original was compressed or big endian): lossless from
the decoded pixels on. Burned In Annotation is then NO.
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.daemon.errors import QuarantineError

_SECONDARY_CAPTURE = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
}
_ULTRASOUND = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound (retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame (retired)",
}
_CAPTURE_IMAGE_TYPES = {"SCREEN SHOT", "SCREENSHOT", "SCREEN SAVE", "DOSE INFO", "DOSE REPORT"}
_PIXELS = 0x7FE00010
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)


def _values(v) -> list[str]:
    if v is None:
        return []
    return [str(x).strip().upper() for x in (v if isinstance(v, (list, MultiValue)) else [v])]


_BURNED_IN, SOP_CLASS, MODALITY, _CONVERSION_TYPE, _IMAGE_TYPE = (0x00280301, 0x00080016, 0x00080060,
                                                                   0x00080064, 0x00080008)


def get(ds: Dataset, tag: int, default):
    """``ds.get(keyword, default)`` by tag, for the CS and UI attributes read here: an
    unconverted ASCII value is read from its bytes (a list when it has several values,
    trailing padding dropped), not converted (and the original is left as read)."""
    raw = ds._dict.get(tag)
    if raw is None:
        return default
    value = getattr(raw, "value", None)
    if isinstance(raw, RawDataElement) and isinstance(value, bytes) and value.isascii():
        text = value.decode("ascii")
        parts = [v.rstrip("\0 ") for v in text.split("\\")]
        return parts if len(parts) > 1 else parts[0]
    return ds[tag].value


def risk(ds: Dataset) -> str | None:
    """Why ``ds`` likely carries burned-in identity (in words, no values), or None."""
    if _PIXELS not in ds:
        return None
    if str(get(ds, _BURNED_IN, "")).strip().upper() == "YES":
        return "Burned In Annotation is YES"
    sop = str(get(ds, SOP_CLASS, "")).strip()
    if sop in _ULTRASOUND or str(get(ds, MODALITY, "")).strip().upper() == "US":
        return "ultrasound images usually carry burned-in text"
    if sop in _SECONDARY_CAPTURE:
        return f"{_SECONDARY_CAPTURE[sop]} images (screen captures, dose reports) usually carry burned-in text"
    if str(get(ds, _CONVERSION_TYPE, "")).strip().upper() == "WSD":
        return "a workstation screen capture (Conversion Type WSD)"
    if _CAPTURE_IMAGE_TYPES & set(_values(get(ds, _IMAGE_TYPE, None))):
        return "its Image Type marks a screen capture or dose report"
    return None


def blank(ds: Dataset, pixels, rectangles, fill: int = 0) -> int:
    """Blank ``rectangles`` ([x, y, width, height]) in every frame of the decoded
    ``pixels`` and write them back into ``ds`` native. Returns the pixels blanked per frame."""
    import numpy as np

    arr = np.array(pixels, copy=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    count = 0
    for x, y, w, h in rectangles:
        x0, y0, x1, y1 = max(0, x), max(0, y), min(cols, x + w), min(rows, y + h)
        if x0 >= x1 or y0 >= y1:
            continue
        if samples > 1:
            arr[..., y0:y1, x0:x1, :] = fill
        else:
            arr[..., y0:y1, x0:x1] = fill
        count += (x1 - x0) * (y1 - y0)
    _write_native(ds, arr)
    return count


def _write_native(ds: Dataset, arr) -> None:
    import numpy as np

    bits = int(ds.BitsAllocated)
    if bits == 1:
        from pydicom.pixels import pack_bits

        data = pack_bits(arr, pad=False)
    else:
        if arr.dtype.itemsize * 8 != bits:
            raise QuarantineError(f"decoded pixels are {arr.dtype.itemsize * 8}-bit; Bits Allocated is {bits}: "
                                  "cannot write the cleaned pixels back")
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = -(-int(ds.Rows) * int(ds.Columns) * samples * frames * bits // 8)
    if len(data) != expected:
        raise QuarantineError(f"decoded pixel data has {len(data)} bytes; the geometry needs {expected}")
    if len(data) % 2:
        data += b"\0"
    meta = ds.file_meta
    ts = meta.TransferSyntaxUID
    if ts.is_compressed or not ts.is_little_endian:
        # parse every element while the encoding it was read in still applies
        ds.walk(lambda *_: None)
        for tag in _EXTENDED_OFFSETS:
            if tag in ds:
                del ds[tag]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if samples > 1:
        ds.PlanarConfiguration = 0  # decoders return interleaved samples
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # pydicom's decoders return RGB
    ds.PixelData = data
    elem = ds[_PIXELS]
    elem.is_undefined_length = False
    elem.VR = "OB" if bits <= 8 else "OW"
