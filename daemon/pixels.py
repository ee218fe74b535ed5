"""The default pixel decoding path (a built-in plugin, so a GPU decoder can come first)."""

from __future__ import annotations

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
    try:
        return ds.pixel_array
    except Exception as exc:
        raise QuarantineError(decode_failure(ds, exc)) from None


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
