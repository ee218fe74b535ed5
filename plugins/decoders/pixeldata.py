"""Pixel arrays in and out of a DICOM object, for the stages that rewrite pixels.

What comes out is native, the same geometry: an object received native keeps its transfer
syntax (implicit or explicit VR, little or big endian, deflated); a compressed one becomes
Explicit VR Little Endian. Colour is stored as decoded: YBR decoded to RGB, Planar
Configuration 0.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsguard.daemon.errors import QuarantineError

BITS = (8, 16)
_PIXEL_DATA = Tag("PixelData")
_EXTENDED_OFFSETS = (Tag(0x7FE00001), Tag(0x7FE00002))


def geometry(ds: Dataset) -> tuple[int, int, int, int]:
    """(frames, rows, columns, samples) from the header; QuarantineError when unreadable."""
    try:
        return (int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns),
                int(ds.get("SamplesPerPixel", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        raise QuarantineError("cannot read the image geometry (Rows, Columns, Number of Frames)") from None


def stored_range(ds: Dataset) -> tuple[int, int]:
    """(lo, hi): the values Bits Stored and Pixel Representation allow."""
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def as_frames(arr, ds: Dataset) -> np.ndarray:
    """A decoded pixel array as (frames, rows, columns, samples)."""
    shape = geometry(ds)
    arr = np.asarray(arr)
    if arr.size != int(np.prod(shape)):
        raise QuarantineError(f"decoded pixels have {arr.size} values; the geometry needs {int(np.prod(shape))}")
    return arr.reshape(shape)


def transfer_syntax(ds: Dataset) -> UID:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not ts:
        raise QuarantineError("no Transfer Syntax UID in the file meta information")
    return UID(ts)


def store(ds: Dataset, frames: np.ndarray) -> None:
    """Write ``frames`` (frames, rows, columns, samples) as the object's native Pixel Data."""
    ts = transfer_syntax(ds)
    bits = int(ds.BitsAllocated)
    signed = bool(int(ds.get("PixelRepresentation", 0) or 0))
    order = "<" if ts.is_compressed or ts.is_little_endian else ">"
    dtype = np.dtype(f"{order}{'i' if signed else 'u'}{bits // 8}")
    data = frames.astype(dtype, copy=False).tobytes()
    if len(data) % 2:
        data += b"\0"
    if frames.shape[-1] > 1:
        ds.PlanarConfiguration = 0  # decoders return interleaved samples
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # pydicom's decoders return RGB
    if ts.is_compressed:
        # parse every element while the encoding it was read in still applies (some files
        # mix implicit VR into an explicit VR transfer syntax), then change the encoding
        ds.walk(lambda *_: None)
        for t in _EXTENDED_OFFSETS:
            if t in ds:
                del ds[t]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = data
    elem = ds[_PIXEL_DATA]
    elem.is_undefined_length = False
    elem.VR = "OB" if bits <= 8 else "OW"
