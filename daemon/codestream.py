"""Check what compressed pixel data says about itself before anything decodes it.

A decoder trusts the codestream: a JPEG 2000 header claiming 60000x60000 pixels in a
512x512 object makes OpenJPEG allocate and work for a minute before it fails, and the
failure then reads like a codec problem. The geometry every frame's codestream declares
(JPEG 2000 / HTJ2K: the SIZ marker; JPEG, lossless JPEG, JPEG-LS: the SOF marker) is
compared here with Rows, Columns, SamplesPerPixel and NumberOfFrames first, in
microseconds, and a mismatch is refused with a reason that says what is wrong.
"""

from __future__ import annotations

import struct

from .errors import QuarantineError

_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203"}
_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
         "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
#: SOF markers (JPEG baseline/extended/progressive/lossless, JPEG-LS SOF55)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_SCAN_LIMIT = 1 << 16  # a SIZ / SOF marker comes within the first bytes of a frame


def declared_geometry(ts: str, frame: bytes) -> tuple[str, int, int, int] | None:
    """(codec, columns, rows, components) that the first bytes of ``frame`` declare, for
    the transfer syntaxes checked here; None for others. QuarantineError when the frame
    carries no such header."""
    if ts in _J2K:
        return ("JPEG 2000",) + _siz(frame)
    if ts in _JPEG:
        return ("JPEG-LS" if ts.endswith((".80", ".81")) else "JPEG",) + _sof(frame)
    return None


def _siz(frame: bytes) -> tuple[int, int, int]:
    # a bare codestream starts SOC (FF4F) SIZ (FF51); a JP2 file has it in its jp2c box
    at = frame.find(b"\xff\x4f\xff\x51", 0, _SCAN_LIMIT)
    if at < 0 or len(frame) < at + 42:
        raise QuarantineError("the JPEG 2000 pixel data has no codestream header (SIZ marker)")
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", frame, at + 8)
    csiz = struct.unpack_from(">H", frame, at + 40)[0]
    if xosiz > xsiz or yosiz > ysiz:
        raise QuarantineError("the JPEG 2000 codestream header (SIZ) is inconsistent: image offset past its size")
    return xsiz - xosiz, ysiz - yosiz, csiz


def _sof(frame: bytes) -> tuple[int, int, int]:
    if not frame.startswith(b"\xff\xd8"):
        raise QuarantineError("the JPEG pixel data does not start with a JPEG start-of-image marker")
    pos, end = 2, min(len(frame), _SCAN_LIMIT)
    while pos + 4 <= end:
        if frame[pos] != 0xFF:
            raise QuarantineError("the JPEG pixel data has a damaged marker before its frame header")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack_from(">H", frame, pos + 2)[0]
        if marker in _SOF:
            if pos + 10 > len(frame):
                break
            rows, cols, comps = struct.unpack_from(">HHB", frame, pos + 5)
            return cols, rows, comps
        pos += 2 + length
    raise QuarantineError("the JPEG pixel data has no frame header (SOF marker)")


def check_pixel_geometry(ds) -> None:
    """Refuse compressed pixel data whose codestreams disagree with the data set's own
    geometry (or whose frame count exceeds NumberOfFrames). Native data is not checked
    here (its length is checked against the geometry by the decoder)."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _J2K and ts not in _JPEG or "PixelData" not in ds:
        return
    from pydicom.encaps import generate_frames

    rows, cols = ds.get("Rows"), ds.get("Columns")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not rows or not cols:
        raise QuarantineError("compressed pixel data without Rows and Columns")
    data = ds.PixelData
    try:
        for i, frame in enumerate(generate_frames(data, number_of_frames=frames), start=1):
            if i > frames:
                raise QuarantineError(f"the pixel data holds more frames than NumberOfFrames ({frames})")
            found = declared_geometry(ts, frame[:_SCAN_LIMIT])
            if found is None:
                return
            codec, w, h, c = found
            if (w, h) != (cols, rows) or c != samples:
                raise QuarantineError(
                    f"the {codec} codestream of frame {i} declares {w}x{h} pixels with {c} component(s), but the"
                    f" data set says Columns {cols}, Rows {rows}, SamplesPerPixel {samples}")
    except QuarantineError:
        raise
    except Exception as exc:
        raise QuarantineError(f"the encapsulated pixel data is malformed ({type(exc).__name__})") from None
