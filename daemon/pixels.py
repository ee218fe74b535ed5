"""The default pixel decoding path (a built-in plugin, so a GPU decoder can come first)."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .codestream import check_pixel_geometry
from .errors import QuarantineError
from .hookspecs import hookimpl


@hookimpl(trylast=True)
def pacsguard_decode_pixels_batch(items):
    """One by one, through each item's own decoding path."""
    return [item.pixels() for item in items]


@hookimpl(trylast=True)
def pacsguard_decode_pixels(item):
    """Decode with pydicom's pixel backends; fail closed with a clear reason."""
    item.load_pixel_data()
    ds = item.dataset
    check_pixel_geometry(ds)  # before a decoder trusts what a codestream declares
    arr = native_array(ds)
    if arr is not None:
        return arr
    try:
        return ds.pixel_array
    except Exception as exc:
        raise QuarantineError(decode_failure(ds, exc)) from None


_NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
_PLAIN_ELEMENTS = ("FloatPixelData", "DoubleFloatPixelData")


def native_array(ds):
    """``ds.pixel_array`` of the common native kinds, without pydicom's decoding machinery
    (about 0.9 ms of a 512x512 slice, for what is a view of the bytes): little endian,
    8/16/32 bits allocated, monochrome or RGB with interleaved samples, Pixel Data of
    exactly the length the geometry needs. Like pydicom it returns a writeable copy, shaped
    (frames, rows, columns, samples) without the axes of size one among frames and
    samples, with the unused high bits corrected (masked, or sign-extended where Pixel
    Representation is 1). None for anything else: pydicom decodes it
    (tests/daemon/test_native_pixels.py compares the two on the corpus)."""
    import numpy as np

    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in _NATIVE or "PixelData" not in ds \
            or any(k in ds for k in _PLAIN_ELEMENTS):
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.PixelRepresentation)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.PhotometricInterpretation).strip()
        planar = int(ds.get("PlanarConfiguration", 0) or 0) if samples > 1 else 0
    except (AttributeError, TypeError, ValueError):
        return None
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated or signed not in (0, 1) \
            or rows < 1 or cols < 1 or frames < 1:
        return None
    if not ((samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"))
            or (samples == 3 and photometric == "RGB" and planar == 0)):
        return None
    data = ds.PixelData
    size = allocated // 8
    count = rows * cols * samples * frames
    if not isinstance(data, bytes) or len(data) != count * size + (count * size) % 2:
        return None
    arr = np.frombuffer(data, np.dtype(f"<{'i' if signed else 'u'}{size}"), count).copy()
    shape = ((frames,) if frames > 1 else ()) + (rows, cols) + ((samples,) if samples > 1 else ())
    arr = arr.reshape(shape)
    if stored < allocated and arr.size:
        lo, hi = (-(1 << stored - 1), (1 << stored - 1) - 1) if signed else (0, (1 << stored) - 1)
        if arr.min() < lo or arr.max() > hi:  # the unused bits hold something: pydicom's correction
            shift = allocated - stored
            np.left_shift(arr, shift, out=arr)
            np.right_shift(arr, shift, out=arr)
    return arr


def decode_failure(ds, exc: BaseException) -> str:
    """Why pixel data could not be decoded, in words: a missing codec, or bad data."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    name = getattr(ts, "name", None) or str(ts or "unknown transfer syntax")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "the object has no pixel data"
    if ts is not None and getattr(ts, "is_compressed", False):
        try:
            from pydicom.pixels import get_decoder

            decoder = get_decoder(ts)
            available = decoder is not None and decoder.is_available
        except Exception:
            available = False
        if not available:
            return f"cannot decode pixel data ({name}): no decoder for it is installed (pip install pacsguard[codecs])"
        return f"cannot decode pixel data ({name}): the compressed data is damaged or inconsistent ({type(exc).__name__})"
    return (f"cannot decode pixel data ({name}): it does not match Rows, Columns, SamplesPerPixel, BitsAllocated"
            f" and NumberOfFrames ({type(exc).__name__})")
