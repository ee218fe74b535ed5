"""The default pixel decoding path (a built-in plugin, so a GPU decoder can come first)."""

from __future__ import annotations

from .errors import QuarantineError
from .hookspecs import hookimpl


@hookimpl(trylast=True)
def pacsguard_decode_pixels(item):
    """Decode with pydicom's pixel backends; fail closed with a clear reason."""
    try:
        return item.dataset.pixel_array
    except Exception as exc:
        ts = getattr(getattr(item.header, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise QuarantineError(f"cannot decode pixel data (transfer syntax {ts}: {type(exc).__name__})") from exc
